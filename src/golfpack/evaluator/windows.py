"""The window plan: which windows the evaluator runs and which of their targets it scores.

Pure index arithmetic, no torch. Token positions are indexes into the val token stream t[0..N).
Target j (1 <= j <= M) is t[j] predicted from the tokens before it. A window starting at s feeds
inputs t[s : s+L] and predicts targets s+1 .. s+L; offset i of the window predicts target s+i+1
with a context of i+1 tokens.

Scored target range (both modes): M = ((N - 1) // L) * L, the challenge's truncation, so a
sliding-window run scores exactly the targets the non-overlapping run scores.

Windows, stride S (S divides L):
- window 0 starts at 0 and scores all L targets (offsets 0..L-1);
- window k >= 1 starts at k*S and scores only its last S offsets (L-S..L-1), i.e. targets
  k*S+L-S+1 .. k*S+L, each with a context of L-S+1..L tokens;
- the last window ends exactly at M (M - L is a multiple of S because M is a multiple of L).
For a target count that is not on the stride grid (only reachable through `plan_windows`
directly), one final window ending at M scores just the targets not yet scored.
With S == L this is the reference non-overlapping evaluation: M/L windows scoring all L.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from golfpack.errors import DataError, UsageError


@dataclass(frozen=True)
class WindowPlan:
    """Windows of `seq_len` inputs; window w scores offsets score_from[w] .. seq_len-1."""

    seq_len: int  # L: inputs per window
    stride: int  # S: start-to-start distance of consecutive windows
    num_targets: int  # M: targets 1..M are scored, each exactly once (over all ranks)
    starts: np.ndarray  # int64 (W,): first input position of each window
    score_from: np.ndarray  # int64 (W,): first scored offset within each window

    @property
    def num_windows(self) -> int:
        return int(self.starts.size)

    @property
    def scored(self) -> int:
        """Targets this plan (or this rank's share of it) scores."""
        return int((self.seq_len - self.score_from).sum())

    def shard(self, rank: int, world_size: int) -> WindowPlan:
        """This rank's contiguous share of the windows (ranks may get none when windows < ranks)."""
        n = self.num_windows
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        return WindowPlan(self.seq_len, self.stride, self.num_targets, self.starts[lo:hi], self.score_from[lo:hi])

    def targets(self) -> np.ndarray:
        """Every scored target position, in window order (for tests and audits)."""
        if not self.num_windows:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(s + f + 1, s + self.seq_len + 1) for s, f in zip(self.starts, self.score_from)])


def check_stride(seq_len: int, stride: int | None) -> int:
    """The stride to use (None -> seq_len, the non-overlapping eval); GolfpackError if unusable."""
    if seq_len <= 0:
        raise UsageError(f"seq_len must be positive, got {seq_len}", param="seq_len")
    if stride is None:
        return seq_len
    if stride <= 0 or stride > seq_len or seq_len % stride:
        divs = divisors(seq_len)
        shown = divs if len(divs) <= 12 else divs[:5] + ["..."] + divs[-6:]
        why = "must be positive" if stride <= 0 else ("must not exceed seq_len" if stride > seq_len else f"must divide seq_len {seq_len}")
        raise UsageError(f"stride {stride} {why}; valid strides for seq_len {seq_len}: {', '.join(map(str, shown))}", param="stride")
    return stride


def divisors(n: int) -> list[int]:
    """Divisors of n > 0 in increasing order, in O(sqrt n) (a huge seq_len must not stall the error)."""
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]


def usable_targets(num_tokens: int, seq_len: int) -> int:
    """M = ((N - 1) // L) * L, the reference truncation; GolfpackError if not even one window fits."""
    m = ((num_tokens - 1) // seq_len) * seq_len if num_tokens > 0 else 0
    if m < seq_len:
        raise DataError(
            f"too few val tokens: {num_tokens} given, one window of seq_len {seq_len} needs {seq_len + 1}; "
            "lower seq_len or raise max_tokens"
        )
    return m


def plan_windows(num_targets: int, seq_len: int, stride: int) -> WindowPlan:
    """Windows scoring targets 1..num_targets exactly once, each with the longest context the grid allows."""
    L, S, M = seq_len, stride, num_targets
    if not 0 < S <= L:
        raise ValueError(f"stride {S} must be in 1..{L}")
    if M < L:
        raise ValueError(f"num_targets {M} is shorter than one window ({L})")
    starts = np.arange(0, M - L + 1, S, dtype=np.int64)
    score_from = np.full(starts.size, L - S, dtype=np.int64)
    score_from[0] = 0
    covered = int(starts[-1]) + L  # targets 1..covered are scored
    if covered < M:  # tail off the stride grid: one window ending at M, scoring only the new targets
        starts = np.append(starts, M - L)
        score_from = np.append(score_from, L - (M - covered))
    return WindowPlan(L, S, M, starts, score_from)


__all__ = ["WindowPlan", "check_stride", "divisors", "plan_windows", "usable_targets"]
