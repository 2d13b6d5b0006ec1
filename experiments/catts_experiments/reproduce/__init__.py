"""Reproduce the paper's findings on the organism: ``catts reproduce``.

One command, on CPU, from the shipped checkpoints (``catts train organism`` rebuilds those):

1. ``models``      clean and noised accuracy of the base and expert organisms, per question kind;
2. ``probe``       the probing experiment before CDRL: accuracy and confidence under noise,
                   occlusion, viewpoint and mosaic (:mod:`catts_graph.eval.probe`);
3. ``cdrl``        CDRL on the base organism with the training pipeline (TRL GRPO,
                   ``training/configs/organism_cdrl.yaml``), then the same probe on the result;
4. ``thresholds``  the adaptive planner's thresholds tuned on the *validation* split;
5. ``scaling``     test-time scaling for N = 1..32: majority voting, DeepConf and CA-TTS with the base
                   organism as its own expert and with the larger expert organism, the adaptive
                   policy's accuracy against the tokens it spent;
6. ``ablations``   CA-TTS without each module / each boost, at one N;
7. then self-reflection, step repair, the step signals and MMBoundary.

Every step stores its rows in ``<out>`` as it goes (the harness's SQLite stores, the CDRL checkpoint,
JSON files) and is skipped or resumed when run again, so an interrupted run loses nothing. The end
writes ``results.json``, ``results.md`` (the tables of ``docs/organism.md``) and ``figures/*.png``
and prints the tables.

The modules, one concern each: :mod:`~.plan` (what runs: :class:`Plan`, with the generator
``level`` the items are asked at), :mod:`~.steps`, :mod:`~.scaling` and :mod:`~.training` (the
experiment steps), :mod:`~.statistics` (intervals, ratios, slopes; the math is
:mod:`catts_graph.metrics`), :mod:`~.results` (typed results, their JSON), :mod:`~.render` (the
Markdown), :mod:`~.figures`, and :mod:`~.run` (the order of the steps, resuming).

The organism plays the expert through :class:`~catts_graph.organism.expert.OrganismExpert` (Voter
and Critic; it has no Planner, so ``paper`` plans fall back to the default order, recorded in each
trace). Expert retries are off: a reply the organism cannot give is not going to come on a retry.
"""

from catts_experiments.reproduce.plan import Plan
from catts_experiments.reproduce.results import CDRLEffect, Results
from catts_experiments.reproduce.run import cdrl_effect, reproduce

__all__ = ["CDRLEffect", "Plan", "Results", "cdrl_effect", "reproduce"]
