"""The planner's decision rules, as pure functions of the run so far.

A decision names the graph nodes to run next and says why, with the numbers it used; the planner
node writes it to the trace. Module names are those of :data:`catts_graph.config.MODULES` and
``step_repair``, plus ``more_samples`` (another wave from the base model) in plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from catts_graph.config import MODULES, STEP_REPAIR, CATTSConfig
from catts_graph.scoring import Tally

MORE_SAMPLES = "more_samples"
ONE_SAMPLE = "one_sample"
"""The plan source of :func:`one_sample`'s one-step plan (the reflection alone at one sample)."""
PLAN_STEPS = (MORE_SAMPLES, *MODULES, STEP_REPAIR)
"""What the Planner expert may choose from (``expert`` policy); ``paper`` plans take MODULES."""
DEFAULT_ORDER = list(MODULES)

# The graph node that starts each module.
ENTRY_NODE = {
    MORE_SAMPLES: "base_model",
    "self_consistency": "self_consistency",
    "self_reflection": "critic",
    "visual_self_check": "visual_self_check",
    STEP_REPAIR: STEP_REPAIR,
}


@dataclass(frozen=True)
class Decision:
    route: str
    """The next node: base_model, step_repair, self_consistency, critic, visual_self_check or
    aggregate."""
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    pending: list[str] | None = None
    """The plan steps still to run after this one (plan-driven policies), when it changes."""


@dataclass(frozen=True)
class Situation:
    """What every policy decides on."""

    tally: Tally
    drawn: int
    done: frozenset[str]
    disabled: frozenset[str]
    score_margin: float
    n_candidates: int
    has_critic: bool
    can_repair: bool = False
    """Whether the base model can continue a reply from a prefix (``continue_reply``), which
    ``step_repair`` needs."""

    def numbers(self) -> dict[str, Any]:
        return {
            "samples_drawn": self.drawn,
            "samples_voting": self.tally.voters,
            "top_share": round(self.tally.top_share, 4),
            "share_margin": round(self.tally.margin(), 4),
            "score_margin": round(self.score_margin, 4),
            "candidates": self.n_candidates,
        }


def wave_size(drawn: int, config: CATTSConfig) -> int:
    """Samples the next wave may draw within the budget (0 when it is spent)."""
    return max(0, min(config.wave_size, config.max_samples - drawn))


def one_sample(situation: Situation, config: CATTSConfig) -> Decision | None:
    """``skip_modules_at_one_sample``: with one sample drawn and no more to come (the ``paper``
    policy draws exactly ``n_samples``; the others stop when the budget is spent) there is nothing
    to vote on, so no vote-fusing module runs and no Planner is asked.

    At the default taus no boost among the votes can change the answer: its candidate holds the
    whole vote (1), a new answer gets at most tau2 + tau3 = 1, and ties go to the higher vote.
    Aggregate at once, except under ``reflection_boost='override'``, where the Critic's ``incorrect`` verdict
    on that sample hands the lead to the reflection: then the Critic (and the reflection) alone
    runs, when a critic expert exists and the module is enabled. None when the option is off or more
    samples can come.
    """
    more = config.policy != "paper" and wave_size(situation.drawn, config) > 0
    if not config.skip_modules_at_one_sample or situation.drawn != 1 or more:
        return None
    reflect = (
        config.reflection_boost == "override"
        and situation.has_critic
        and situation.tally.voters > 0
        and "self_reflection" not in situation.disabled
        and "self_reflection" not in situation.done
    )
    if reflect:
        return Decision(
            ENTRY_NODE["self_reflection"],
            "one sample and no more to come: nothing to vote on; only the Critic's verdict can "
            "change the answer (reflection_boost='override'), so only self_reflection runs "
            "(skip_modules_at_one_sample)",
            situation.numbers(),
            pending=[],
        )
    return Decision(
        "aggregate",
        "one sample and no more to come: nothing to vote on, so no module runs and no expert is "
        "called (skip_modules_at_one_sample)",
        situation.numbers(),
        pending=[],
    )


def adaptive(situation: Situation, config: CATTSConfig) -> Decision:
    """The default policy: spend compute only while the samples disagree.

    1. No sample answered: another wave while the budget allows, else give up.
    2. Fast path: the leader's vote share and its samples' mean confidence both reach their
       thresholds (and, with ``step_floor``, the weakest step of its samples reaches the floor):
       aggregate at once, with no expert call.
    3. Contested (leader's share below ``contested_share``): another wave while the budget allows.
    4. Step repair, with ``step_floor`` set: when the leader's weakest step is below the floor, the
       budget allows and the base model can continue a reply (no expert call).
    5. Self-consistency (and its Voter), with the Critic and self-reflection alongside.
    6. Visual self-check when the top two final scores are still closer than ``close_margin``.
    7. Aggregate.

    Steps 1-4 apply until the first module has run; modules in ``disabled_modules`` are skipped.
    """
    s, t, numbers = situation, situation.tally, situation.numbers()
    finished = s.done | s.disabled
    if not s.done & {*MODULES, STEP_REPAIR}:
        if t.voters == 0:
            if wave_size(s.drawn, config):
                return Decision("base_model", "no sample gave an answer; drawing another wave", numbers)
            return Decision("aggregate", "no sample gave an answer and the sample budget is spent", numbers)
        leader = next(iter(t.votes))
        leader_confidence = t.mean_confidence[leader]
        numbers["leader_confidence"] = round(leader_confidence, 4)
        floor = config.step_floor
        weakest = t.weakest_fused.get(leader)
        if floor is not None:
            numbers["leader_weakest_step"] = None if weakest is None else round(weakest, 4)
        # A leader whose samples have no steps (no log-probs) cannot show it reaches the floor.
        steps_hold = floor is None or (weakest is not None and weakest >= floor)
        if t.top_share >= config.fast_path_share and leader_confidence >= config.fast_path_confidence:
            if steps_hold:
                return Decision(
                    "aggregate",
                    f"fast path: leader holds {t.top_share:.2f} of the vote (>= {config.fast_path_share}) "
                    f"at mean confidence {leader_confidence:.2f} (>= {config.fast_path_confidence})"
                    + ("" if floor is None else f", weakest step {weakest:.2f} (>= {floor})"),
                    numbers,
                )
            numbers["fast_path_blocked"] = "step_floor"
        if t.top_share < config.contested_share and wave_size(s.drawn, config):
            return Decision(
                "base_model",
                f"contested: leader holds {t.top_share:.2f} of the vote (< {config.contested_share}); "
                f"drawing {wave_size(s.drawn, config)} more samples",
                numbers,
            )
        if not steps_hold and weakest is not None and STEP_REPAIR not in finished:
            if not s.can_repair:
                numbers[STEP_REPAIR] = "skipped: the base model cannot continue a reply from a prefix"
            elif not wave_size(s.drawn, config):
                numbers[STEP_REPAIR] = "skipped: the sample budget is spent"
            else:
                return Decision(
                    STEP_REPAIR,
                    f"the leader's weakest step has fused confidence {weakest:.2f} (< step_floor "
                    f"{floor}): resampling the weakest samples from their weakest step",
                    numbers,
                )
    reflect = s.has_critic and "self_reflection" not in finished and t.voters > 0
    if "self_consistency" not in finished:
        return Decision(
            "self_consistency",
            "samples disagree or are unsure: weighted vote"
            + (" with the Voter, and Critic + self-reflection alongside" if reflect else ""),
            numbers,
            pending=["self_reflection"] if reflect else [],
        )
    if reflect:
        return Decision("critic", "Critic + self-reflection on the least confident sample", numbers)
    if "visual_self_check" not in finished and s.n_candidates >= 2 and s.score_margin < config.close_margin:
        return Decision(
            "visual_self_check",
            f"top two final scores are close ({s.score_margin:.3f} < {config.close_margin}): "
            "checking which answer rests on the image",
            numbers,
        )
    return Decision("aggregate", "modules done and the leader is clear, or nothing is left to try", numbers)


def follow_plan(
    situation: Situation, pending: Sequence[str], config: CATTSConfig, *, source: str
) -> Decision:
    """Run the plan's next step (``paper`` and ``expert`` policies); skip steps that cannot run."""
    s, numbers = situation, situation.numbers()
    remaining = list(pending)
    skipped: list[str] = []
    while remaining:
        step = remaining.pop(0)
        if step in s.done:
            continue
        if step in s.disabled:
            skipped.append(f"{step} (disabled)")
            continue
        if step == MORE_SAMPLES and not wave_size(s.drawn, config):
            skipped.append(f"{step} (sample budget spent)")
            continue
        if step == "self_reflection" and not s.has_critic:
            skipped.append(f"{step} (no critic expert)")
            continue
        if step == STEP_REPAIR and not s.can_repair:
            skipped.append(f"{step} (the base model cannot continue a reply from a prefix)")
            continue
        if step == STEP_REPAIR and not wave_size(s.drawn, config):
            skipped.append(f"{step} (sample budget spent)")
            continue
        if step in ("self_consistency", "self_reflection", STEP_REPAIR) and s.tally.voters == 0:
            skipped.append(f"{step} (no sample gave an answer)")
            continue
        if step == "visual_self_check" and s.n_candidates < 2:
            skipped.append(f"{step} (fewer than two candidates)")
            continue
        reason = f"{source} plan: {step}"
        if skipped:
            reason += "; skipped " + ", ".join(skipped)
        return Decision(ENTRY_NODE[step], reason, numbers, pending=remaining)
    reason = f"{source} plan complete"
    if skipped:
        reason += "; skipped " + ", ".join(skipped)
    return Decision("aggregate", reason, numbers, pending=[])


def validate_plan(modules: Sequence[str], *, policy: str) -> list[str]:
    """A plan from the Planner expert, checked against the steps ``policy`` allows."""
    allowed = MODULES if policy == "paper" else PLAN_STEPS
    plan = list(modules)
    unknown = [m for m in plan if m not in allowed]
    if unknown:
        raise ValueError(f"unknown plan steps {unknown}; allowed: {list(allowed)}")
    if policy == "paper" and sorted(plan) != sorted(MODULES):
        raise ValueError(f"the paper policy runs all three modules once; got {plan}")
    return plan
