"""Reproducible, batch-independent draws: sample i of a call takes its randomness from its own
generator, seeded from ``(seed, i)``, drawn ahead a chunk of steps at a time, and each row's token is
picked by inverse CDF on its own uniform number, so the first k samples of a call do not depend on n."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Uniforms", "draw_tokens"]


class Uniforms:
    """The uniform numbers behind each sampled row's draws, drawn ahead a chunk of steps at a time.

    Row i's number at step s is the s-th draw of its own generator (seeded from ``(seed, i)``), as
    one draw per step would give; a chunk goes to the device in one copy, made right after a step's
    sync so it waits on nothing.
    """

    CHUNK = 64

    def __init__(self, seed: int, rows: int, steps: int, device: torch.device) -> None:
        self.generators = [_row_generator(seed, i) for i in range(rows)]
        self.steps = steps
        self.device = device
        self.start = 0
        self.block = self._draw(0)

    def _draw(self, start: int) -> torch.Tensor:
        size = min(self.CHUNK, self.steps - start)
        block = torch.stack([torch.rand(size, generator=g, dtype=torch.float64) for g in self.generators])
        return block.to(self.device)

    def prefetch(self, step: int) -> None:
        """Have the chunk holding ``step`` on the device."""
        if step >= self.start + self.block.shape[1] and step < self.steps:
            self.start = step
            self.block = self._draw(step)

    def at(self, step: int) -> torch.Tensor:
        """Every row's number for ``step`` (shape: rows)."""
        return self.block[:, step - self.start]


def draw_tokens(
    raw: torch.Tensor, temperature: float, top_p: float, top_k: int, uniforms: torch.Tensor
) -> torch.Tensor:
    """One token per row from the warped distribution, by inverse CDF on each row's own uniform draw.

    One uniform number per row (from that row's generator) makes a row's draw independent of the
    other rows, hence of the batch size.
    """
    warped = raw / temperature
    if 0 < top_k < warped.shape[-1]:
        kth = torch.topk(warped, top_k, dim=-1).values[:, -1:]
        warped = warped.masked_fill(warped < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(warped, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        # Keep a token while the mass of the tokens ranked above it is still below top_p.
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        warped = warped.masked_fill(drop, float("-inf"))
    cdf = torch.softmax(warped.double(), dim=-1).cumsum(dim=-1)
    uniforms = uniforms[:, None] * cdf[:, -1:]
    # side="right": the first index whose cdf exceeds u, always a token with positive probability.
    chosen = torch.searchsorted(cdf, uniforms, right=True)[:, 0]
    return chosen.clamp_(max=cdf.shape[-1] - 1)


def _row_generator(seed: int, index: int) -> torch.Generator:
    """Sample ``index``'s own generator; SeedSequence mixes (seed, index) so no two calls share rows."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))
