"""The window plan: every target scored exactly once, with the longest context the grid allows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golfpack.errors import GolfpackError
from golfpack.evaluator.windows import check_stride, divisors, plan_windows, usable_targets


@st.composite
def grid(draw):
    L = draw(st.integers(1, 64))
    divs = [d for d in range(1, L + 1) if L % d == 0]
    S = draw(st.sampled_from(divs))
    n_tokens = draw(st.integers(L + 1, 12 * L + 5))
    return L, S, n_tokens


@given(grid())
@settings(max_examples=300, deadline=None)
def test_each_target_once_on_the_reference_range(case):
    L, S, n_tokens = case
    M = usable_targets(n_tokens, L)
    assert M == ((n_tokens - 1) // L) * L  # the reference truncation
    plan = plan_windows(M, L, S)
    tg = plan.targets()
    assert np.array_equal(np.sort(tg), np.arange(1, M + 1))  # each of 1..M exactly once
    assert plan.scored == M
    assert (plan.starts >= 0).all() and (plan.starts + L <= M).all()  # windows stay inside tokens[0..M]
    # context of a scored target = its offset + 1: all L for window 0, at least L-S+1 afterwards
    ctx = np.concatenate([np.arange(f, L) + 1 for f in plan.score_from])
    first = L - plan.score_from[0]
    assert np.array_equal(ctx[:first], np.arange(1, L + 1))
    assert (ctx[first:] >= L - S + 1).all()
    if S == L:  # non-overlapping reference: consecutive chunks scored in full
        assert np.array_equal(plan.starts, np.arange(0, M, L)) and (plan.score_from == 0).all()


@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 500))
@settings(max_examples=300, deadline=None)
def test_off_grid_tail_scored_once(L, S, extra):
    S = min(S, L)
    M = L + extra
    plan = plan_windows(M, L, S)
    assert np.array_equal(np.sort(plan.targets()), np.arange(1, M + 1))
    assert (plan.starts + L <= M).all()


@given(grid(), st.integers(1, 7))
@settings(max_examples=150, deadline=None)
def test_rank_shards_partition_the_windows(case, world):
    L, S, n_tokens = case
    plan = plan_windows(usable_targets(n_tokens, L), L, S)
    parts = [plan.shard(r, world) for r in range(world)]
    assert sum(p.scored for p in parts) == plan.scored
    assert np.array_equal(np.concatenate([p.starts for p in parts]), plan.starts)


def test_counts_for_the_issue_setting():
    plan = plan_windows(usable_targets(65_537, 256), 256, 64)
    assert plan.num_targets == 65_536 and plan.scored == 65_536
    assert plan.num_windows == (65_536 - 256) // 64 + 1 == 1021


@pytest.mark.parametrize(
    "stride,msg",
    [(0, "must be positive"), (-4, "must be positive"), (300, "must not exceed"), (100, "must divide seq_len 256")],
)
def test_bad_strides(stride, msg):
    with pytest.raises(GolfpackError, match=msg) as e:
        check_stride(256, stride)
    assert "valid strides for seq_len 256: 1, 2, 4, 8, 16, 32, 64, 128, 256" in str(e.value)
    assert e.value.param == "stride" and "--" not in str(e.value)


def test_default_stride_and_too_few_tokens():
    assert check_stride(1024, None) == 1024
    with pytest.raises(GolfpackError, match="too few val tokens: 256 given.*needs 257"):
        usable_targets(256, 256)


@given(st.integers(1, 5000))
@settings(max_examples=200, deadline=None)
def test_divisors_match_brute_force(n):
    assert divisors(n) == [d for d in range(1, n + 1) if n % d == 0]


def test_huge_seq_len_stride_error_is_fast():
    import time

    t0 = time.perf_counter()
    with pytest.raises(GolfpackError) as e:
        check_stride(100_000_000, 3)  # 10^8 = 2^8 * 5^8: 81 divisors
    assert time.perf_counter() - t0 < 0.5  # was ~12 s scanning 1..L
    assert str(e.value) == ("stride 3 must divide seq_len 100000000; valid strides for seq_len 100000000: "
                            "1, 2, 4, 5, 8, ..., 10000000, 12500000, 20000000, 25000000, 50000000, 100000000")
    assert len(divisors(100_000_000)) == 81 and divisors(10**12 + 39) == [1, 10**12 + 39]  # a prime: 10^6 steps
