"""Soft domain routing (docs/design.md §5 step 1), decided after the channels are searched and fused.

The retriever searches every domain it may search and fuses the channels first (`rag.fusion`);
routing then picks the domain from two kinds of evidence:

1. the router heads' probabilities for the query (image head and text head, see `rag.heads`),
2. sharpened by where the fused ranking found its best evidence: each domain's share of the fused
   score among the top EVIDENCE_HITS hits, smoothed so that a domain without a hit is down-weighted,
   not ruled out.

The most probable domain is searched alone when its probability reaches the bundle's calibrated
threshold, else the top two are (soft routing). The retriever then keeps the fused hits of the
searched domains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag.fusion import Hit
from rag.heads import DomainRouter

# How many fused hits vote on the domain. Only the best one: lower-ranked hits mostly reflect how
# many documents a domain has (a big domain collects more weak matches), not relevance.
EVIDENCE_HITS = 1


@dataclass
class Routing:
    domain: str
    confidence: float
    probabilities: dict[str, float]
    searched: list[str]
    mode: str  # "routed", "soft" (top two), "given" (caller named domains), "flat" (routing off)

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "confidence": round(self.confidence, 4), "mode": self.mode,
                "searched": self.searched, "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()}}


def route(router: DomainRouter, domains: Sequence[str], threshold: float, image_features: np.ndarray | None,
          text_features: np.ndarray | None, fused: list[Hit] | None = None) -> Routing:
    """Router heads, sharpened by the fused hits' evidence, then the soft top-two rule.

    The heads see only the query; a question such as "which formula was recommended for the
    45-year-old woman with fatigue?" names no domain, but its best-matching documents do.
    """
    probs = router.probabilities(None if image_features is None else image_features[None],
                                 None if text_features is None else text_features[None])[0].astype(np.float64)
    if fused:
        probs = sharpen_with_evidence(probs, domains, fused)
    return soft_top_two(probs, domains, threshold)


def sharpen_with_evidence(probs: np.ndarray, domains: Sequence[str], fused: list[Hit]) -> np.ndarray:
    """`probs` times each domain's smoothed share of the fused score of the top EVIDENCE_HITS hits, renormalised."""
    evidence = np.full(len(domains), 1.0 / (10 * len(domains)))
    top = fused[:EVIDENCE_HITS]
    total = sum(h.score for h in top)
    for h in top:
        evidence[list(domains).index(h.doc.domain)] += h.score / total
    probs = probs * evidence
    return probs / probs.sum()


def soft_top_two(probs: np.ndarray, domains: Sequence[str], threshold: float) -> Routing:
    """The most probable domain, or the top two when its probability is below `threshold`."""
    order = np.argsort(-probs)
    top_domain = domains[order[0]]
    soft = probs[order[0]] < threshold and len(domains) > 1
    return Routing(domain=top_domain, confidence=float(probs[order[0]]),
                   probabilities={d: float(p) for d, p in zip(domains, probs)},
                   searched=[domains[i] for i in order[:2]] if soft else [top_domain],
                   mode="soft" if soft else "routed")
