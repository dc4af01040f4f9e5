"""Adaptive context selection: the gap, relative, fixed and RULE rules, calibration, and their errors."""

from __future__ import annotations

import json
import math

import pytest
from scipy.stats import beta

from rag.selection import Selection, SelectionConfig, calibrate, fixed_cut, gap_cut, relative_cut, select

# log-ratios of consecutive scores: 0.1054, 0.5878, 0.1054, 1.504
SCORES = [1.0, 0.9, 0.5, 0.45, 0.1]

# The constructed calibration case. "Sharp" questions have their gold first and a cliff right after
# it; "shallow" questions have their gold second behind a small drop (log(1/0.8) = 0.2231), with the
# cliff after it. The cheapest gamma that never cuts the shallow gold away is log(1/0.8), the
# loosest rho 0.8; both keep 1 candidate for sharp and 2 for shallow questions.
SHARP = [1.0, 0.5, 0.45, 0.4]
SHALLOW = [1.0, 0.8, 0.2, 0.19]


def _constructed(n_sharp: int, n_shallow: int) -> tuple[list[list[float]], list[int | None]]:
    return [SHARP] * n_sharp + [SHALLOW] * n_shallow, [0] * n_sharp + [1] * n_shallow


def test_gap_cut_stops_at_first_log_ratio_above_gamma():
    assert gap_cut(SCORES, gamma=0.5) == Selection(2, "gap", "cut after 2: log(S2/S3) = 0.5878 > gamma = 0.5", (0.9, 0.5))
    assert gap_cut(SCORES, gamma=1.0).k == 4
    assert gap_cut(SCORES, gamma=1.0).cut_scores == (0.45, 0.1)
    kept_all = gap_cut(SCORES, gamma=2.0)
    assert (kept_all.k, kept_all.cut_scores) == (5, None)
    assert kept_all.reason.startswith("kept all 5")


def test_gap_cut_needs_a_strictly_larger_log_ratio():
    # log(1/0.5) and log(0.5/0.25) are exactly log 2: no cut at gamma = log 2.
    assert gap_cut([1.0, 0.5, 0.25], gamma=math.log(2)).k == 3
    assert gap_cut([1.0, 0.5, 0.25], gamma=math.log(2) - 1e-9).k == 1


def test_gap_cut_respects_k_min_and_k_max():
    cliff_first = [1.0, 0.1, 0.09, 0.08, 0.07]
    assert gap_cut(cliff_first, gamma=0.5).k == 1
    assert gap_cut(cliff_first, gamma=0.5, k_min=2).k == 5  # the cliff at i = 1 is below k_min
    capped = gap_cut(cliff_first, gamma=0.5, k_min=2, k_max=3)
    assert (capped.k, capped.cut_scores) == (3, (0.09, 0.08))
    assert capped.reason.startswith("kept k_max = 3")
    # i = k_max is never a cut position: the cliff after S3 is only reached through the cap.
    assert gap_cut([1.0, 0.95, 0.9, 0.1], gamma=0.5, k_max=3).reason.startswith("kept k_max = 3")
    assert gap_cut([1.0], gamma=0.5, k_min=2).k == 1


def test_relative_cut():
    scores = [1.0, 0.9, 0.6, 0.5, 0.2]
    assert relative_cut(scores, rho=0.55) == Selection(3, "relative", "cut after 3: S4/S1 = 0.5 < rho = 0.55", (0.6, 0.5))
    assert relative_cut(scores, rho=0.5).k == 4  # S_i >= rho * S_1 is inclusive
    assert relative_cut(scores, rho=0.95, k_min=2).k == 2
    assert relative_cut(scores, rho=0.1, k_max=2).cut_scores == (0.9, 0.6)
    assert relative_cut(scores, rho=0.1) == Selection(5, "relative", "kept all 5: every S_i >= rho * S1 (rho = 0.1)")


def test_fixed_cut_takes_the_top_k_and_accepts_any_sorted_scores():
    assert fixed_cut([0.3, -0.1, -0.5], k=2) == Selection(2, "fixed", "fixed k = 2", (-0.1, -0.5))
    assert (fixed_cut([3.0, 2.0, 1.0], k=5).k, fixed_cut([3.0, 2.0, 1.0], k=5).cut_scores) == (3, None)


def test_empty_scores_keep_nothing():
    config = SelectionConfig(gamma=0.3, rho=0.5, k=3)
    for rule in ("gap", "relative", "fixed", "rule"):
        chosen = select([], config, rule)
        assert (chosen.k, chosen.rule, chosen.cut_scores) == (0, rule, None)


def test_rule_k_is_the_smallest_k_whose_miss_rate_bound_meets_alpha():
    ranked = [[1.0 - 0.05 * i for i in range(10)]] * 100
    gold = [0] * 97 + [3] * 3
    bound_k1 = beta.ppf(0.9, 3 + 1, 100 - 3)  # 3 misses of 100, Clopper-Pearson at 1 - delta = 0.9
    assert bound_k1 == pytest.approx(0.065586, abs=1e-6)

    loose = calibrate(ranked, gold, alpha=0.1, delta=0.1)
    assert loose.k == 1
    assert loose.calibration["rule"] == pytest.approx(
        {"k": 1, "miss_rate": 0.03, "miss_rate_upper_bound": bound_k1, "mean_kept": 1.0, "target_met": True})

    # At alpha = 0.05, k = 1..3 miss 3 (bound 0.066) and k = 4 misses none: bound 1 - delta^(1/n).
    strict = calibrate(ranked, gold, alpha=0.05, delta=0.1)
    assert strict.k == 4
    assert strict.calibration["rule"]["miss_rate_upper_bound"] == pytest.approx(1 - 0.1 ** (1 / 100))
    assert select(ranked[0], strict, "rule").reason == (
        "RULE: fixed k = 4 (calibrated on 100 validation questions: miss-rate upper bound 0.0228 <= alpha 0.05 "
        "at delta 0.1)")


def test_rule_k_falls_back_to_the_lowest_bound_when_the_target_is_out_of_reach():
    ranked = [[1.0, 0.9, 0.8, 0.7]] * 20
    gold = [None] * 5 + [2] * 15  # a quarter of the gold documents were never retrieved
    config = calibrate(ranked, gold, alpha=0.1, delta=0.1, k_max=4)
    assert config.calibration["gold_not_retrieved"] == 5
    assert config.k == 3  # the smallest k that reaches the floor of 5 misses
    assert config.calibration["rule"]["miss_rate"] == 0.25
    assert config.calibration["rule"]["target_met"] is False
    assert "target not met" in select(ranked[0], config, "rule").reason


def test_gamma_and_rho_calibration_pick_the_cheapest_safe_threshold():
    ranked, gold = _constructed(20, 10)
    config = calibrate(ranked, gold, alpha=0.1, delta=0.1)
    assert config.gamma == pytest.approx(math.log(1 / 0.8))
    assert config.rho == pytest.approx(0.8)
    assert config.k == 2
    zero_miss_bound = 1 - 0.1 ** (1 / 30)
    for rule in ("gap", "relative"):
        measured = config.calibration[rule]
        assert measured["miss_rate"] == 0.0
        assert measured["miss_rate_upper_bound"] == pytest.approx(zero_miss_bound)
        assert measured["mean_kept"] == pytest.approx(40 / 30)
        assert measured["target_met"] is True
    # The calibrated parameters reproduce, question by question, what calibration measured.
    assert [select(s, config, "gap").k for s in (SHARP, SHALLOW)] == [1, 2]
    assert [select(s, config, "relative").k for s in (SHARP, SHALLOW)] == [1, 2]


def test_gamma_calibration_reports_an_unmet_target():
    # With 10 questions even zero misses only bound the miss rate by 1 - 0.1^(1/10) = 0.206 > alpha.
    ranked, gold = _constructed(5, 5)
    config = calibrate(ranked, gold, alpha=0.1, delta=0.1)
    assert config.calibration["gap"]["target_met"] is False
    assert config.calibration["gap"]["miss_rate_upper_bound"] == pytest.approx(0.2056718, abs=1e-6)
    assert config.gamma == pytest.approx(math.log(1 / 0.8))  # among the lowest bounds, still the cheapest


def test_config_json_round_trip():
    ranked, gold = _constructed(20, 10)
    config = calibrate(ranked, gold)
    restored = SelectionConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert restored == config
    assert select(SHALLOW, restored) == select(SHALLOW, config)
    with pytest.raises(ValueError, match=r"unknown SelectionConfig fields \['beta'\]"):
        SelectionConfig.from_json({**config.to_json(), "beta": 1.0})


def test_score_errors_name_the_problem():
    with pytest.raises(ValueError, match="scores must be positive for the gap rule; got S3 = -0.2 — use RRF scores"):
        gap_cut([1.0, 0.5, -0.2], gamma=0.3)
    with pytest.raises(ValueError, match="scores must be positive for the relative rule; got S2 = 0"):
        relative_cut([1.0, 0.0], rho=0.5)
    with pytest.raises(ValueError, match="scores must be sorted in descending order; got S2 = 0.5 < S3 = 0.7"):
        fixed_cut([1.0, 0.5, 0.7], k=2)
    with pytest.raises(ValueError, match="scores must be finite; got S2 = nan"):
        fixed_cut([1.0, float("nan")], k=1)
    with pytest.raises(ValueError, match=r"ranked_scores\[1\] must be positive for the gap and relative rules"):
        calibrate([[1.0, 0.5], [1.0, -0.5]], [0, 0])
    with pytest.raises(ValueError, match=r"gold_ranks\[1\] must be None or a 0-based rank in 0..1"):
        calibrate([[1.0, 0.5], [1.0, 0.5]], [0, 2])
    with pytest.raises(ValueError, match="one entry per question; got 2 and 1"):
        calibrate([[1.0], [1.0]], [0])


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="gamma is not calibrated: build the index .* or pass gamma"):
        select([1.0, 0.5], SelectionConfig())
    with pytest.raises(ValueError, match="rho is not calibrated"):
        select([1.0, 0.5], SelectionConfig(), "relative")
    with pytest.raises(ValueError, match="k is not calibrated"):
        select([1.0, 0.5], SelectionConfig(), "rule")
    with pytest.raises(ValueError, match="rule must be one of 'gap', 'relative', 'fixed', 'rule'; got 'top_p'"):
        select([1.0, 0.5], SelectionConfig(gamma=0.3), "top_p")
    with pytest.raises(ValueError, match="rule must be one of"):
        SelectionConfig(rule="top_p")
    with pytest.raises(ValueError, match=r"k must lie in \[k_min, k_max\] = \[1, 10\]; got k = 12"):
        SelectionConfig(k=12)
    with pytest.raises(ValueError, match="rho must lie in"):
        relative_cut([1.0], rho=1.5)
    with pytest.raises(ValueError, match="alpha must lie strictly between 0 and 1"):
        calibrate([[1.0]], [0], alpha=0.0)
