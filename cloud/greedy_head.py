"""Greedy ids from a large float32 LM head at bf16 cost: a bf16 screen, then float32 on the few ids
that can still win.

Why. A verification pass of a handful of tokens spends most of its time in the LM head when the
vocabulary is large: Gemma 3's is 262,144 × 640, and on one core of this CPU float32 `linear`
takes 51 ms for 1 row, 123 ms for 5 and 194 ms for 9 (MKL's kernels for skinny matrices; argmax
included), while the same product in bf16 on AMX takes 44-48 ms for any of them. Greedy decoding and greedy
verification need only each row's argmax, not the logits.

How, and why the answer is still the float32 argmax. For a hidden row h and vocabulary row w_i:
- a_i is the screen: bf16(h) · bf16(w_i), products exact in float32, summed in float32 (AMX or
  AVX512-BF16), the result rounded to bf16;
- s_i is the float32 logit: the dot product of h and w_i in float32.
Both are within a known distance of the real product z_i = Σ h_k w_ik:
- rounding h and w to bf16 (unit roundoff 2^-8 each) moves each product by at most
  (2·2^-8 + 2^-16)·|h_k w_ik|;
- each float32 sum of d products is off by at most about d·2^-24·Σ|h_k w_ik| (twice: the screen's
  and s_i's);
- rounding a_i to bf16 moves it by at most 2^-8·|a_i|;
- and Σ|h_k w_ik| ≤ ‖h‖·‖w_i‖ (Cauchy-Schwarz).
So |a_i - s_i| ≤ e_i = 2·[(2^-7 + 2^-16 + 2.02·d·2^-24)·‖h‖·‖w_i‖ + 2^-8·|a_i|] + 1e-30. The
factor 2 is margin; the absolute 1e-30 covers denormals, which AMX reads as zero.
Let j be the id with the largest a_j - e_j, and L = a_j - e_j ≤ s_j. Any id with a_i + e_i < L has
s_i < s_j, so it is neither the argmax nor tied with it. Only the candidates, the ids with
a_i + e_i ≥ L, get float32 logits s_i. The answer is their argmax, the lowest id among ties, as
torch.argmax and numpy's would give over the whole row.

On Gemma's hidden states, the median row leaves 1 candidate and the worst of 108 rows left 79.
With the argmax, the 5-row head costs 59 ms instead of 123, and the 9-row head 67 ms instead of
194.

What it changes. Greedy ids are the argmax of s_i, which is each logit's float32 dot product, the
same for a row whatever else is in the pass. The full logits (sampling, numpy()) stay the plain
float32 `linear`, so the two can differ only where two logits tie to within float32's last bits.
tests/test_greedy_head.py checks that the screen agrees with the full argmax, and that near-ties
which bf16 alone gets wrong come out right.
"""

from __future__ import annotations

import torch

BF16_UNIT = 2.0 ** -8
FP32_UNIT = 2.0 ** -24
MARGIN = 2.0
ABSOLUTE = 1e-30
NORM_ROWS = 16384  # vocabulary rows per float64 slice when the norms are taken at load
ROWS_PER_SCREEN = 32  # rows screened at once: [32, vocab] float32 temporaries, ~34 MB for Gemma
# Below this many weights (vocab × hidden), float32's full head is cheap and the screen gains nothing.
WORTH_SCREENING = 1 << 24


def slack_per_norm(hidden_size: int) -> float:
    """e_i's factor on ‖h‖·‖w_i‖ (see the module docstring)."""
    return MARGIN * (2 * BF16_UNIT + BF16_UNIT ** 2 + 2.02 * hidden_size * FP32_UNIT)


class ScreenedHead:
    """A bias-free float32 LM head ([vocab, hidden]) that gives exact greedy ids through a bf16 screen."""

    def __init__(self, weight: torch.Tensor):
        if weight.dtype != torch.float32 or weight.dim() != 2:
            raise ValueError(f"a screened head needs a 2-D float32 weight, not {weight.dtype} {tuple(weight.shape)}")
        self.weight = weight
        self.screen = weight.to(torch.bfloat16)
        # float64 norms, rounded up into float32: the bound must never be short. In slices, so that
        # loading does not hold a float64 copy of the whole head (1.3 GB for Gemma).
        norms = torch.cat([weight[i:i + NORM_ROWS].double().norm(dim=1) for i in range(0, weight.shape[0], NORM_ROWS)])
        self.norms = torch.nextafter(norms.float(), torch.tensor(float("inf")))
        self.per_norm = slack_per_norm(weight.shape[1])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The full float32 logits of `hidden` ([rows, hidden] -> [rows, vocab])."""
        return torch.nn.functional.linear(hidden, self.weight)

    def argmax(self, hidden: torch.Tensor) -> list[int]:
        """Each row's greedy id: the argmax of its float32 logits (the lowest id among ties)."""
        if hidden.shape[0] == 0:
            return []
        if not torch.isfinite(hidden).all():
            return self.logits(hidden).argmax(dim=-1).tolist()  # no bound holds; the plain way
        ids: list[int] = []
        for start in range(0, hidden.shape[0], ROWS_PER_SCREEN):
            ids.extend(self._argmax(hidden[start:start + ROWS_PER_SCREEN]))
        return ids

    def _argmax(self, hidden: torch.Tensor) -> list[int]:
        screen = torch.nn.functional.linear(hidden.to(torch.bfloat16), self.screen).float()
        slack = screen.abs().mul_(MARGIN * BF16_UNIT).add_(ABSOLUTE)
        slack.addcmul_(hidden.norm(dim=1, keepdim=True).mul_(self.per_norm), self.norms[None, :])
        floor = (screen - slack).max(dim=1, keepdim=True).values
        rows, cols = (screen.add_(slack) >= floor).nonzero(as_tuple=True)  # row-major: ids ascend per row
        exact = (self.weight[cols] * hidden[rows]).sum(dim=1)
        count = hidden.shape[0]
        best = torch.full((count,), float("-inf")).scatter_reduce(0, rows, exact, "amax")
        winners = exact == best[rows]
        first = torch.full((count,), self.weight.shape[0], dtype=torch.long)
        return first.scatter_reduce(0, rows[winners], cols[winners], "amin").tolist()
