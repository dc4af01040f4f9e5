"""Adaptive context selection (docs/design.md §5 step 3): how many retrieved candidates the model sees.

Too little evidence misses the gold document; too much buries it and breaks a small model's
instruction following (MMed-RAG saw this at k = 6-10). Four rules decide k from one question's
ranked, fused scores S_1 >= S_2 >= ...:

- ``gap``: MMed-RAG's rule, cut after the first i with log(S_i / S_{i+1}) > gamma, i.e. where the
  scores fall off a cliff;
- ``relative``: keep every candidate scoring at least rho times the top one;
- ``fixed``: keep a fixed k;
- ``rule``: keep RULE's calibrated k (Xia et al., EMNLP 2024).

No threshold is a hand-picked constant: :func:`calibrate` sets gamma, rho and k on a validation
split so that the miss rate of the gold evidence (gold document not among those kept, our
retrieval-level stand-in for factuality risk) has a one-sided Clopper-Pearson upper bound of at
most alpha at confidence 1 - delta. For each rule the kept set only grows as its parameter is
loosened, so the miss rate and its bound are monotone and the parameters that meet the target form
one contiguous run. For k, picking the smallest passing value is therefore the same as testing
k_max, k_max - 1, ... in a fixed sequence, which keeps the 1 - delta guarantee without a
multiple-testing correction. For gamma and rho the grid itself comes from the validation scores,
so their bound is an honest estimate rather than a strict guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol, TypeVar

import numpy as np
from scipy.stats import beta

RULES: tuple[str, ...] = ("gap", "relative", "fixed", "rule")


class _Scored(Protocol):
    score: float


Ranked = TypeVar("Ranked", bound=_Scored)   # a retrieval hit, or anything else ranked by a positive score


@dataclass(frozen=True)
class Selection:
    """How many ranked candidates to keep, which rule decided, and why in one sentence."""

    k: int
    rule: str
    reason: str
    cut_scores: tuple[float, float] | None = None
    """(S_k, S_{k+1}) when candidates were cut; None when everything retrieved was kept."""

    def to_json(self) -> dict[str, Any]:
        """What `medrag retrieve --json` and `POST /api/retrieve` report about the cut."""
        return {"k": self.k, "rule": self.rule, "reason": self.reason}


@dataclass
class SelectionConfig:
    """The selection rule and its calibrated parameters; stored as JSON in the index bundle."""

    rule: str = "gap"
    gamma: float | None = None
    rho: float | None = None
    k: int | None = None
    k_max: int = 10
    k_min: int = 1
    alpha: float = 0.1
    delta: float = 0.1
    calibration: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_rule(self.rule)
        _check_k_range(self.k_min, self.k_max)
        if self.k is not None and not self.k_min <= self.k <= self.k_max:
            raise ValueError(f"k must lie in [k_min, k_max] = [{self.k_min}, {self.k_max}]; got k = {self.k}")
        if self.gamma is not None:
            _check_gamma(self.gamma)
        if self.rho is not None:
            _check_rho(self.rho)
        _check_probability("alpha", self.alpha)
        _check_probability("delta", self.delta)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SelectionConfig:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown SelectionConfig fields {unknown}; was the bundle written by a newer version?")
        return cls(**data)


def select(scores: Sequence[float], config: SelectionConfig, rule: str | None = None) -> Selection:
    """Apply `rule` (default: the config's) with the config's calibrated parameters."""
    rule = config.rule if rule is None else rule
    _check_rule(rule)
    if rule == "gap":
        return gap_cut(scores, _calibrated("gamma", config.gamma), config.k_min, config.k_max)
    if rule == "relative":
        return relative_cut(scores, _calibrated("rho", config.rho), config.k_min, config.k_max)
    chosen = fixed_cut(scores, _calibrated("k", config.k))
    note = _calibration_note(config)
    if rule == "fixed":
        return chosen if note is None else replace(chosen, reason=f"{chosen.reason} ({note})")
    return replace(chosen, rule="rule", reason=f"RULE: {chosen.reason} ({note or 'k set by hand, not calibrated'})")


def select_hits(hits: Sequence[Ranked], config: SelectionConfig, rule: str | None = None) -> tuple[list[Ranked], Selection]:
    """The query path's selection stage: keep the first k of the ranked hits, by their `score`."""
    selection = select([h.score for h in hits], config, rule=rule)
    return list(hits[:selection.k]), selection


def gap_cut(scores: Sequence[float], gamma: float, k_min: int = 1, k_max: int = 10) -> Selection:
    """MMed-RAG's rule: cut after the first i (k_min <= i < k_max) with log(S_i/S_{i+1}) > gamma.

    Without such a gap keep min(k_max, len(scores)).
    """
    _check_gamma(gamma)
    _check_k_range(k_min, k_max)
    values = _checked_scores(scores, "scores", ratios_for="the gap rule")
    if not values.size:
        return _nothing_retrieved("gap")
    log_ratios = _gap_log_ratios(values, k_min, k_max)
    k = int(_gap_kept(np.maximum.accumulate(log_ratios), gamma, k_min, len(values)))
    cut = _cut_scores(values, k)
    if cut is not None and k < k_max:
        gap = log_ratios[k - k_min]
        return Selection(k, "gap", f"cut after {k}: log(S{k}/S{k + 1}) = {gap:.4g} > gamma = {gamma:.4g}", cut)
    if len(values) <= k_min:
        return Selection(k, "gap", f"kept all {k}: the list ends before any cut position i >= k_min = {k_min}", None)
    span = f"for {k_min} <= i < {min(k_max, len(values))}"
    if cut is not None:
        return Selection(k, "gap", f"kept k_max = {k}: no log(S_i/S_(i+1)) > gamma = {gamma:.4g} {span}", cut)
    return Selection(k, "gap", f"kept all {k}: no log(S_i/S_(i+1)) > gamma = {gamma:.4g} {span}", None)


def relative_cut(scores: Sequence[float], rho: float, k_min: int = 1, k_max: int = 10) -> Selection:
    """Keep the candidates with S_i >= rho * S_1, at least k_min and at most k_max of them."""
    _check_rho(rho)
    _check_k_range(k_min, k_max)
    values = _checked_scores(scores, "scores", ratios_for="the relative rule")
    if not values.size:
        return _nothing_retrieved("relative")
    ratios = _relative_ratios(values, k_max)
    above = int(np.sum(ratios >= rho))
    k = int(_relative_kept(ratios, rho, k_min, len(values)))
    cut = _cut_scores(values, k)
    if cut is None:
        return Selection(k, "relative", f"kept all {k}: every S_i >= rho * S1 (rho = {rho:.4g})", None)
    if k == above < k_max:
        return Selection(k, "relative", f"cut after {k}: S{k + 1}/S1 = {ratios[k]:.4g} < rho = {rho:.4g}", cut)
    if k > above:
        return Selection(k, "relative", f"kept k_min = {k}: only {above} of S_i >= rho * S1 (rho = {rho:.4g})", cut)
    return Selection(k, "relative", f"kept k_max = {k}: S1..S{k} are all >= rho * S1 (rho = {rho:.4g})", cut)


def fixed_cut(scores: Sequence[float], k: int) -> Selection:
    """Keep the top k (all of them when fewer were retrieved)."""
    if k < 1:
        raise ValueError(f"k must be >= 1; got k = {k}")
    values = _checked_scores(scores, "scores", ratios_for=None)
    if not values.size:
        return _nothing_retrieved("fixed")
    kept = min(k, len(values))
    reason = f"fixed k = {k}" if kept == k else f"fixed k = {k}, but only {kept} retrieved: kept all"
    return Selection(kept, "fixed", reason, _cut_scores(values, kept))


def calibrate(ranked_scores: list[Sequence[float]], gold_ranks: list[int | None], alpha: float = 0.1,
              delta: float = 0.1, k_max: int = 10, k_min: int = 1) -> SelectionConfig:
    """Calibrate gamma, rho and RULE's k on validation questions (see the module docstring).

    `ranked_scores[q]` are question q's candidate scores in rank order; `gold_ranks[q]` is the
    0-based rank of its gold document among them, or None when it was not retrieved (a miss for
    every rule, so a retriever that loses more than alpha of the gold documents cannot meet the
    target whatever the selection). Each parameter is the one that keeps the fewest candidates on
    average while the miss rate's upper bound stays <= alpha; when none gets there, the one with
    the lowest bound, and `calibration[rule]["target_met"]` is False.
    """
    if len(ranked_scores) != len(gold_ranks):
        raise ValueError(f"ranked_scores and gold_ranks must have one entry per question; "
                         f"got {len(ranked_scores)} and {len(gold_ranks)}")
    if not ranked_scores:
        raise ValueError("ranked_scores is empty: calibration needs at least one validation question")
    _check_probability("alpha", alpha)
    _check_probability("delta", delta)
    _check_k_range(k_min, k_max)
    lists = [_checked_scores(s, f"ranked_scores[{q}]", ratios_for="the gap and relative rules")
             for q, s in enumerate(ranked_scores)]
    lengths = np.array([len(v) for v in lists])
    gold = np.array([_checked_gold_rank(q, rank, len(v)) for q, (rank, v) in enumerate(zip(gold_ranks, lists))])

    def choose(name: str, grid: np.ndarray, kept_for: Callable[[Any], np.ndarray]) -> dict[str, Any]:
        return _choose(name, grid, kept_for, gold, alpha, delta)

    rule = choose("k", np.arange(k_min, k_max + 1), lambda k: np.minimum(k, lengths))

    gap_running_max = np.maximum.accumulate(np.stack([_gap_log_ratios(v, k_min, k_max) for v in lists]), axis=1)
    # A list's kept size changes only where gamma crosses a running maximum of its log-ratios, so
    # those observed values (and 0, where every strict drop is a cut) are the whole grid.
    gammas = np.unique(np.append(gap_running_max[np.isfinite(gap_running_max)], 0.0))
    gap = choose("gamma", gammas, lambda g: _gap_kept(gap_running_max, g, k_min, lengths))

    ratios = np.stack([_relative_ratios(v, k_max) for v in lists])
    # Descending, so that among equally cheap thresholds the stricter comes first.
    rhos = np.unique(np.append(ratios[np.isfinite(ratios)], 1.0))[::-1]
    relative = choose("rho", rhos, lambda r: _relative_kept(ratios, r, k_min, lengths))

    calibration = {"n": len(lists), "gold_not_retrieved": int(np.sum(np.isinf(gold))),
                   "rule": rule, "gap": gap, "relative": relative}
    return SelectionConfig(gamma=gap["gamma"], rho=relative["rho"], k=rule["k"], k_max=k_max, k_min=k_min,
                           alpha=alpha, delta=delta, calibration=calibration)


def miss_rate_upper_bound(misses: int, n: int, delta: float) -> float:
    """One-sided Clopper-Pearson upper bound on a miss rate, at confidence 1 - delta.

    It is <= alpha exactly when the binomial test of "risk > alpha" rejects at level delta,
    which is RULE's criterion.
    """
    if misses >= n:
        return 1.0
    return float(beta.ppf(1 - delta, misses + 1, n - misses))


def _choose(name: str, grid: np.ndarray, kept_for: Callable[[Any], np.ndarray], gold: np.ndarray,
            alpha: float, delta: float) -> dict[str, Any]:
    """Evaluate every parameter value in `grid` and pick the cheapest that meets the target."""
    evaluated = []
    bounds: dict[int, float] = {}  # scipy's ppf is slow per call and the grid repeats miss counts
    for value in grid:
        kept = kept_for(value)
        misses = int(np.sum(gold >= kept))
        if misses not in bounds:
            bounds[misses] = miss_rate_upper_bound(misses, len(gold), delta)
        evaluated.append({name: value.item(), "miss_rate": misses / len(gold),
                          "miss_rate_upper_bound": bounds[misses], "mean_kept": float(np.mean(kept))})
    feasible = [e for e in evaluated if e["miss_rate_upper_bound"] <= alpha]
    if feasible:
        return {**min(feasible, key=lambda e: e["mean_kept"]), "target_met": True}
    return {**min(evaluated, key=lambda e: (e["miss_rate_upper_bound"], e["mean_kept"])), "target_met": False}


def _gap_log_ratios(values: np.ndarray, k_min: int, k_max: int) -> np.ndarray:
    """log(S_i/S_{i+1}) at the cut positions i = k_min .. k_max-1 the gap rule may use.

    Where S_{i+1} does not exist the entry is +inf: the list ends there, which is a cut after i.
    """
    log_ratios = np.full(k_max - k_min, np.inf)
    last = min(k_max, len(values)) - 1  # the last position i (1-based) that has an S_{i+1}
    if last >= k_min:
        log_ratios[: last - k_min + 1] = np.log(values[k_min - 1:last] / values[k_min:last + 1])
    return log_ratios


def _gap_kept(running_max: np.ndarray, gamma: float, k_min: int, lengths: np.ndarray | int) -> np.ndarray:
    """Kept sizes from running maxima of `_gap_log_ratios` (one row per list, or a single row).

    The first log-ratio above gamma is where their running maximum first exceeds it, and the
    running maximum is sorted, so counting the entries <= gamma finds the cut for all lists at once.
    """
    return np.minimum(k_min + np.sum(running_max <= gamma, axis=-1), lengths)


def _relative_ratios(values: np.ndarray, k_max: int) -> np.ndarray:
    """S_i/S_1 for i = 1..k_max, -inf where S_i does not exist (never kept)."""
    ratios = np.full(k_max, -np.inf)
    top = values[:k_max]
    if top.size:
        ratios[: top.size] = top / top[0]
    return ratios


def _relative_kept(ratios: np.ndarray, rho: float, k_min: int, lengths: np.ndarray | int) -> np.ndarray:
    """Kept sizes from `_relative_ratios`; the scores are sorted, so the kept ones are a prefix."""
    return np.minimum(np.maximum(np.sum(ratios >= rho, axis=-1), k_min), lengths)


def _cut_scores(values: np.ndarray, k: int) -> tuple[float, float] | None:
    return (float(values[k - 1]), float(values[k])) if k < len(values) else None


def _nothing_retrieved(rule: str) -> Selection:
    return Selection(0, rule, "no candidates retrieved", None)


def _calibration_note(config: SelectionConfig) -> str | None:
    """What calibration measured for the config's k, if k came from calibration."""
    measured = config.calibration.get("rule")
    if not measured or measured.get("k") != config.k:
        return None
    relation = "<=" if measured["target_met"] else "> (target not met)"
    return (f"calibrated on {config.calibration['n']} validation questions: miss-rate upper bound "
            f"{measured['miss_rate_upper_bound']:.3g} {relation} alpha {config.alpha:g} at delta {config.delta:g}")


def _checked_scores(scores: Sequence[float], name: str, ratios_for: str | None) -> np.ndarray:
    """Scores as a float array, refused when not finite, not sorted descending, or (where the
    rule named by `ratios_for` divides by them) not positive."""
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of scores; got an array of shape {values.shape}")
    for i, value in enumerate(values, start=1):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite; got S{i} = {value}")
        if ratios_for is not None and value <= 0:
            raise ValueError(f"{name} must be positive for {ratios_for}; got S{i} = {value:g} "
                             f"— use RRF scores or shift cosine similarities")
    rises = np.flatnonzero(np.diff(values) > 0)
    if rises.size:
        i = int(rises[0]) + 1
        raise ValueError(f"{name} must be sorted in descending order; got S{i} = {values[i - 1]:g} "
                         f"< S{i + 1} = {values[i]:g}")
    return values


def _checked_gold_rank(question: int, rank: int | None, length: int) -> float:
    """The gold rank as a float, +inf when not retrieved, so `gold >= kept` marks every miss."""
    if rank is None:
        return math.inf
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < length:
        raise ValueError(f"gold_ranks[{question}] must be None or a 0-based rank in 0..{length - 1} of "
                         f"ranked_scores[{question}]; got {rank!r}")
    return float(rank)


def _calibrated(name: str, value: float | None) -> float:
    if value is None:
        raise ValueError(f"{name} is not calibrated: build the index (it calibrates on the val split) or pass {name}")
    return value


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(map(repr, RULES))}; got {rule!r}")


def _check_k_range(k_min: int, k_max: int) -> None:
    if not 1 <= k_min <= k_max:
        raise ValueError(f"k_min and k_max must satisfy 1 <= k_min <= k_max; got k_min = {k_min}, k_max = {k_max}")


def _check_gamma(gamma: float) -> None:
    # Log-ratios of descending scores are >= 0, so a negative gamma would cut after k_min always.
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite log-ratio >= 0; got gamma = {gamma}")


def _check_rho(rho: float) -> None:
    if not 0 < rho <= 1:
        raise ValueError(f"rho must lie in (0, 1] (a fraction of the top score); got rho = {rho}")


def _check_probability(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1; got {name} = {value}")
