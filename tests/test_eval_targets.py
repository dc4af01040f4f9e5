"""The Stage B vs Stage A targets of the factuality report, on hand-made summaries (no model)."""

from __future__ import annotations

from rag.eval_qa import stage_b_targets
from rag.eval_stats import rate


def _summary(reliance_a: list[bool], reliance_b: list[bool], yes_b: list[bool], gold_yes: list[bool]) -> dict:
    def system(reliance: list[bool], yes: list[bool]) -> dict:
        return {"overall": {"over_reliance_rate": rate(reliance), "yes_rate": rate(yes), "gold_yes_rate": rate(gold_yes)}}

    return {"stage_a+rag": system(reliance_a, gold_yes), "stage_ab+rag": system(reliance_b, yes_b)}


def test_over_reliance_must_halve_with_its_whole_interval_and_accuracy_must_hold():
    gold = [True, False] * 100
    flat = {"n": 200, "difference": 0.0, "ci95": [-0.03, 0.03]}
    halved = stage_b_targets(_summary([True] * 40 + [False] * 160, [True] * 4 + [False] * 196, gold, gold), flat,
                             "test")
    reliance, yes = halved
    assert reliance["target"] == "stage_ab+rag over-reliance" and reliance["met"]          # 0.02 [0.01, 0.05] <= 0.10
    assert yes["met"]                                                                     # exactly the gold rate
    worse = {"n": 200, "difference": -0.10, "ci95": [-0.15, -0.05]}
    assert not stage_b_targets(_summary([True] * 40 + [False] * 160, [False] * 200, gold, gold), worse, "test")[0]["met"]
    # halved on its point estimate but not over its interval: not met
    few = stage_b_targets(_summary([True] * 4 + [False] * 16, [True] * 1 + [False] * 19, gold[:20], gold[:20]), flat,
                          "test")
    assert few[0]["measured"] == 0.05 and not few[0]["met"]


def test_a_collapsed_yes_rate_misses():
    gold = [True, False] * 50
    rows = stage_b_targets(_summary([False] * 10, [False] * 10, [False] * 100, gold), {"n": 0}, "added")
    yes = next(r for r in rows if r["target"] == "stage_ab+rag yes rate")
    assert yes["measured"] == 0.0 and not yes["met"] and "0.500" in yes["needed"]
