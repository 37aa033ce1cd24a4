"""The simulator's metrics against values computed by hand on tiny tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulator import metrics as M

NAN = math.nan


def test_mean_ci_is_the_student_t_half_width() -> None:
    mean, half = M.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))  # t(0.975, 2) · s / √n
    assert M.mean_ci([5.0]) == (5.0, None)
    assert M.mean_ci([NAN, 4.0, 6.0])[0] == 5.0


def test_oracle_picks_the_best_reward_among_available_models_and_the_cheaper_on_ties() -> None:
    quality = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.2, 0.9, NAN], [NAN, NAN, NAN]])
    cost = np.array([[0.01, 0.001, 0.0], [0.0, 0.02, 0.01], [0.0, 0.01, 0.0], [0.0, 0.0, 0.0]])
    available = np.isfinite(quality)
    # λ = 0: row 0 ties between models 0 and 1 → the cheaper (1); row 1 ties 1 and 2 → 2; row 2 → 1; row 3 none.
    assert M.oracle_choice(quality, cost, available, 0.0).tolist() == [1, 2, 1, -1]
    # λ = 100: row 1: rewards 0, −1, 0 → tie of 0 and 2 → the cheaper (0); row 2: 0.2 vs 0.9 − 1.0 → model 0.
    assert M.oracle_choice(quality, cost, available, 100.0).tolist() == [1, 0, 0, -1]


def test_fixed_model_falls_back_to_the_cheapest_available_model() -> None:
    available = np.array([[True, True, True], [False, True, True], [False, False, True]])
    order = M.fallback_order([5.0, 1.0, 3.0])  # model 1 is cheapest, then 2
    assert order.tolist() == [1, 2, 0]
    assert M.fixed_choice(available, 0, order).tolist() == [0, 1, 2]


def test_take_regret_and_shares() -> None:
    values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert M.take(values, np.array([1, 0, -1]))[:2].tolist() == [2.0, 3.0]
    assert math.isnan(M.take(values, np.array([1, 0, -1]))[2])
    assert M.cumulative_regret(np.array([1.0, 1.0, 1.0]), np.array([0.5, 1.0, NAN])).tolist() == [0.5, 0.5, 0.5]
    edges, shares = M.model_shares(np.array([0, 0, 1, 1, 1, -1]), 2, 2)
    assert edges.tolist() == [0, 3, 6]
    assert shares.tolist() == [[2 / 3, 1 / 3], [0.0, 1.0]]


def test_steps_until_share_uses_the_window_after_the_event() -> None:
    hit = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], dtype=bool)
    # windows of 2 starting at step 2: [2,3] 0%, [3,4] 50%, [4,5] 100% → 2 steps after the event.
    assert M.steps_until_share(hit, 2, 2, 0.8) == 2
    assert M.steps_until_share(~hit, 2, 2, 0.05, above=False) == 2
    assert M.steps_until_share(hit, 0, 2, 0.8, end=4) is None


# -- two models: a router with points (20%, 0.72) and (50%, 0.78); weak 0.6, strong 0.8 -------------------
SHARES, QUALITIES, WEAK, STRONG = [0.2, 0.5], [0.72, 0.78], 0.6, 0.8


def test_pgr_and_apgr_by_hand() -> None:
    assert M.pgr(0.7, WEAK, STRONG) == pytest.approx(0.5)
    # PGR at 10%…100% on the curve (0, .6) (.2, .72) (.5, .78) (1, .8):
    # .3 .6 .7 .8 .9 .92 .94 .96 .98 1.0 → mean 0.81
    assert M.apgr(SHARES, QUALITIES, WEAK, STRONG) == pytest.approx(0.81)
    # trapezoid over PGR points (0, 0) (.2, .6) (.5, .9) (1, 1): .06 + .225 + .475
    assert M.apgr_trapz(SHARES, QUALITIES, WEAK, STRONG) == pytest.approx(0.76)


def test_cpt_and_share_for_95_percent_by_hand() -> None:
    # CPT(50%): q = 0.7 on the first segment: 0.2 · 0.1 / 0.12
    assert M.cpt(SHARES, QUALITIES, WEAK, STRONG, 0.5) == pytest.approx(0.2 * 0.1 / 0.12)
    # CPT(80%): q = 0.76 on the second segment: 0.2 + 0.3 · 0.04 / 0.06
    assert M.cpt(SHARES, QUALITIES, WEAK, STRONG, 0.8) == pytest.approx(0.4)
    # 95% of 0.8 = 0.76: the same point
    assert M.strong_share_for_quality(SHARES, QUALITIES, WEAK, STRONG, 0.95) == pytest.approx(0.4)
    # a curve that never reaches the target
    assert M.share_at_quality([0.0, 1.0], [0.5, 0.6], 0.7) is None


def test_cost_saving_at_95_percent_by_hand() -> None:
    # weak costs 0.1 of strong; a router at (0.4 of strong's cost, 0.78): the curve (0.1, .6) (.4, .78) (1, .8)
    # reaches 0.76 = 95% of 0.8 at 0.1 + 0.3 · 0.16 / 0.18
    share = M.cost_share_for_quality([0.004], [0.78], c_weak=0.001, c_strong=0.01, q_weak=0.6, q_strong=0.8)
    assert share == pytest.approx(0.1 + 0.3 * 0.16 / 0.18)


def test_random_router_has_the_textbook_apgr() -> None:
    # a random router sits on the diagonal between weak and strong
    assert M.apgr([0.5], [0.7], WEAK, STRONG) == pytest.approx(0.55)
    assert M.apgr_trapz([0.5], [0.7], WEAK, STRONG) == pytest.approx(0.5)
    assert M.cpt([0.5], [0.7], WEAK, STRONG, 0.5) == pytest.approx(0.5)


def test_oracle_share_curve_is_routellm_optimal_accuracy() -> None:
    q_strong = np.array([1.0, 1.0, 0.0, 1.0])
    q_weak = np.array([0.0, 1.0, 0.0, 0.0])
    shares, qualities = M.oracle_share_curve(q_strong, q_weak)
    assert shares.tolist() == [0.0, 0.25, 0.5, 1.0]
    assert qualities.tolist() == [0.25, 0.5, 0.75, 0.75]


# -- K models: hull and AIQ ----------------------------------------------------------------------------
def test_upper_hull_drops_points_under_it_and_the_decreasing_tail() -> None:
    points = np.array([[1, 0.5], [2, 0.7], [3, 0.6], [4, 0.9], [2.5, 0.65], [2, 0.4]])
    assert M.upper_hull(points).tolist() == [[1, 0.5], [2, 0.7], [4, 0.9]]
    tail = np.array([[1, 0.5], [2, 0.9], [3, 0.8]])
    assert M.upper_hull(tail).tolist() == [[1, 0.5], [2, 0.9]]


def test_aiq_by_hand() -> None:
    points = np.array([[1, 0.5], [2, 0.7], [3, 0.6], [4, 0.9], [2.5, 0.65]])
    # area: [1,2] 0.6 + [2,4] 1.6 + [4,5] flat 0.9 = 3.1, divided by c_max − c_min = 5
    assert M.aiq(points, c_max=5.0) == pytest.approx(0.62)
    # non-decreasing: the hull stops at (2, 0.9), extended flat to 3: (0.7 + 0.9) / 3
    assert M.aiq(np.array([[1, 0.5], [2, 0.9], [3, 0.8]]), c_max=3.0) == pytest.approx(1.6 / 3)
    # c_max inside the hull: cut there, (0.5 + 0.6) / 2 · 1 over a range of 2
    assert M.aiq(np.array([[1, 0.5], [3, 0.7]]), c_max=2.0) == pytest.approx(0.55 / 2)
    # a single model: quality × (c_max − c) / c_max
    assert M.aiq(np.array([[1.0, 0.8]]), c_max=4.0) == pytest.approx(0.8 * 3 / 4)


def test_regret_per_step_whole_and_second_half() -> None:
    cumulative = np.cumsum([1.0, 1.0, 0.0, -1.0])  # R = 1, 2, 2, 1
    assert M.regret_per_step(cumulative) == pytest.approx(0.25)
    assert M.regret_per_step(cumulative, start=2) == pytest.approx(-0.5)  # (R(4) − R(2)) / 2


@pytest.mark.parametrize(
    ("gaps", "expected"),
    [
        ([1.0, 1.0, -1.0, -1.0, -1.0], 4),  # R = 1, 2, 1, 0, −1: ≤ 0 from step 4 on
        ([-1.0, 2.0, -2.0], 3),  # behind at step 2, caught up at step 3
        ([-1.0, -1.0], 1),  # never behind
        ([-1.0, 2.0], None),  # behind at the end
    ],
)
def test_break_even_step(gaps: list[float], expected: int | None) -> None:
    assert M.break_even_step(np.cumsum(gaps)) == expected


def test_pgr_and_cost_saving_are_undefined_without_a_gap_or_a_cost() -> None:
    assert math.isnan(M.apgr([0.5], [0.7], 0.7, 0.7))  # equally good models: no gap to recover (was 0/0)
    assert M.cpt([0.5], [0.7], 0.7, 0.7, 0.5) is None  # was 0.0: every level of an undefined PGR "reached" at once
    assert M.cost_share_for_quality([0.0], [0.8], c_weak=0.0, c_strong=0.0, q_weak=0.6, q_strong=0.8) is None


def test_pgr_apgr_and_cpt_are_undefined_where_the_strong_model_is_worse() -> None:
    """A seed where the model called strong (the better one over all seeds) is worse: the target of every PGR level
    lies below q_weak, so CPT read 0.0, a level "reached" with no strong call, and PGR ranked a higher quality as
    less recovered. No gap to recover, as for equally good models."""
    assert M.cpt([0.5], [0.65], 0.7, 0.6, 0.5) is None and M.cpt([0.5], [0.65], 0.7, 0.6, 0.8) is None  # were 0.0
    assert math.isnan(M.apgr([0.5], [0.65], 0.7, 0.6)) and math.isnan(M.apgr_trapz([0.5], [0.65], 0.7, 0.6))
    assert math.isnan(float(M.pgr(0.65, 0.7, 0.6)))
