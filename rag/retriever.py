"""The domain-aware retriever (DESIGN §5 steps 1–3).

Route the query to a domain (soft: the top two when unsure), search up to four channels inside
the routed domains, and fuse their rankings with Reciprocal Rank Fusion:

    text   question -> document text, dense (text encoder)
    bm25   question -> document text, lexical with TCM name aliases and CJK tokens
    joint  image -> document text, in the aligner's joint space (or the encoder's own, for CLIP)
    image  image -> similar corpus images, returning their documents

`routing=False` searches every domain as one flat collection: the no-routing baseline.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag.corpus import Document
from rag.encoders import (ImageEncoder, ImageInput, TextEncoder, create_image_encoder, create_text_encoder,
                          resolve_device)
from rag.index_bundle import IndexBundle, check_encoders, load_bundle

CHANNELS = ("text", "bm25", "joint", "image")
RRF_K = 60  # Cormack et al. (2009): robust across collections; ranks, not raw scores, are fused
# How many fused hits vote on the domain during routing. Only the best one: lower-ranked hits mostly
# reflect how many documents a domain has (a big domain collects more weak matches), not relevance.
EVIDENCE_HITS = 1


def query_kind(question: str | None, image: object | None) -> str:
    """Queries with and without an image weigh channels differently (see `Retriever.fusion_weights`)."""
    return "image+text" if (question and image is not None) else ("image" if image is not None else "text")


@dataclass
class Hit:
    doc_number: int
    doc: Document
    score: float                                   # fused RRF score, positive, descending
    ranks: dict[str, int] = field(default_factory=dict)      # channel -> 0-based rank
    channel_scores: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.doc.id, "title": self.doc.title, "domain": self.doc.domain, "score": round(self.score, 6),
                "ranks": self.ranks, "channel_scores": {k: round(v, 4) for k, v in self.channel_scores.items()},
                "images": self.doc.images}


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


@dataclass
class RetrievalResult:
    hits: list[Hit]
    routing: Routing
    channels: list[str]
    timings: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"routing": self.routing.to_json(), "channels": self.channels,
                "timings_ms": {k: round(v * 1000, 2) for k, v in self.timings.items()},
                "hits": [h.to_json() for h in self.hits]}


def metadata_matches(doc: Document, filters: dict[str, Any]) -> bool:
    """Equality filters on metadata; a list value means "any of these"."""
    for key, wanted in filters.items():
        value = doc.metadata.get(key)
        if isinstance(wanted, (list, tuple, set)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


class Retriever:
    def __init__(self, bundle: IndexBundle, text_encoder: TextEncoder, image_encoder: ImageEncoder):
        check_encoders(bundle.manifest, text_encoder.fingerprint, image_encoder.fingerprint)
        self.bundle = bundle
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.joint_native = bool(bundle.manifest.get("joint_native", False))

    @classmethod
    def load(cls, bundle_dir: str | Path, text_encoder: TextEncoder | str | None = None,
             image_encoder: ImageEncoder | str | None = None, device: str | None = None,
             verify: bool = True, search_params: dict[str, int] | None = None) -> "Retriever":
        """Load a bundle and its encoders (by default the ones named in its manifest).

        `search_params` overrides the approximate-search settings stored at build time, e.g.
        {"nprobe": 32} (IVF lists visited) or {"ef_search": 128} (HNSW candidates): higher is more
        accurate and slower. On CUDA with faiss-gpu, the vector indexes are searched on the GPU.
        """
        bundle = load_bundle(bundle_dir, verify=verify)
        bundle.set_search_params(search_params or {})
        if resolve_device(device) == "cuda" and faiss.get_num_gpus() > 0:
            bundle.use_gpu()
        names = bundle.manifest["encoders"]
        if text_encoder is None or isinstance(text_encoder, str):
            text_encoder = create_text_encoder(text_encoder or names["text"]["name"], device)
        if image_encoder is None or isinstance(image_encoder, str):
            image_encoder = create_image_encoder(image_encoder or names["image"]["name"], device)
        return cls(bundle, text_encoder, image_encoder)

    # --- routing ----------------------------------------------------------------------------------

    def route(self, image_features: np.ndarray | None, text_features: np.ndarray | None,
              fused: list["Hit"] | None = None) -> Routing:
        """Router heads, sharpened by where the flat retrieval found its best evidence.

        The heads see only the query; a question such as "which formula was recommended for the
        45-year-old woman with fatigue?" names no domain, but its best-matching documents do.
        Evidence is each domain's share of the fused score among the top EVIDENCE_HITS hits, smoothed
        so that a domain with no hit is down-weighted, not ruled out.
        """
        domains = self.bundle.domains
        probs = self.bundle.router.probabilities(
            None if image_features is None else image_features[None],
            None if text_features is None else text_features[None])[0].astype(np.float64)
        if fused:
            evidence = np.full(len(domains), 1.0 / (10 * len(domains)))
            top = fused[:EVIDENCE_HITS]
            total = sum(h.score for h in top)
            for h in top:
                evidence[domains.index(h.doc.domain)] += h.score / total
            probs = probs * evidence
            probs = probs / probs.sum()
        order = np.argsort(-probs)
        threshold = float(self.bundle.manifest["routing"]["threshold"])
        top_domain = domains[order[0]]
        soft = probs[order[0]] < threshold and len(domains) > 1
        return Routing(domain=top_domain, confidence=float(probs[order[0]]),
                       probabilities={d: float(p) for d, p in zip(domains, probs)},
                       searched=[domains[i] for i in order[:2]] if soft else [top_domain],
                       mode="soft" if soft else "routed")

    # --- retrieval --------------------------------------------------------------------------------

    def retrieve(self, question: str | None = None, image: ImageInput | None = None, k: int = 10,
                 domains: Sequence[str] | None = None, channels: Sequence[str] | None = None,
                 routing: bool = True, filters: dict[str, Any] | None = None, depth: int = 50) -> RetrievalResult:
        if not question and image is None:
            raise ValueError("retrieve needs a question, an image, or both")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        unknown = [d for d in domains or [] if d not in self.bundle.domains]
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; this index has {self.bundle.domains}")
        available = [c for c in CHANNELS if (c in ("text", "bm25") and question) or (c in ("joint", "image") and image is not None)]
        if channels:
            bad = [c for c in channels if c not in CHANNELS]
            if bad:
                raise ValueError(f"unknown channel(s) {bad}; choose from {list(CHANNELS)}")
            available = [c for c in channels if c in available]
            if not available:
                raise ValueError(f"channels {list(channels)} need a {'question' if image is not None else 'an image'}")

        timings: dict[str, float] = {}
        started = time.perf_counter()
        text_features, image_features, per_channel = self.search_channels(question, image, available, domains,
                                                                           filters, depth, timings)
        t = time.perf_counter()
        # Calibrated weights are for the full channel mix; a caller who names channels gets them equally.
        fused = self._fuse(per_channel, {} if channels else self.fusion_weights(question, image))
        timings["fuse"] = time.perf_counter() - t
        t = time.perf_counter()
        route = self.route(image_features, text_features, fused)
        if domains:
            route.searched, route.mode = list(domains), "given"
        elif not routing:
            route.searched, route.mode = list(self.bundle.domains), "flat"
        else:
            # The flat ranking restricted to the routed domains is exactly the per-domain search.
            fused = [h for h in fused if h.doc.domain in route.searched]
        timings["route"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        return RetrievalResult(hits=fused[:k], routing=route, channels=available, timings=timings)

    def search_channels(self, question: str | None, image: ImageInput | None, channels: Sequence[str],
                        domains: Sequence[str] | None = None, filters: dict[str, Any] | None = None,
                        depth: int = 50, timings: dict[str, float] | None = None):
        """Encode the query and search each channel over `domains` (default all): the unfused rankings."""
        timings = {} if timings is None else timings
        t = time.perf_counter()
        text_features = self.text_encoder.encode([question])[0] if question else None
        image_features = self.image_encoder.encode([image])[0] if image is not None else None
        timings["encode"] = time.perf_counter() - t
        t = time.perf_counter()
        searched = list(domains) if domains else list(self.bundle.domains)
        allowed = self._allowed_numbers(searched, filters)
        per_channel = {c: self._search_channel(c, question, text_features, image_features, searched, allowed, depth)
                       for c in channels}
        timings["search"] = time.perf_counter() - t
        return text_features, image_features, per_channel

    def fusion_weights(self, question: str | None, image: ImageInput | None) -> dict[str, float]:
        """Per-channel RRF weights for this kind of query, calibrated on the val split at build time."""
        kind = query_kind(question, image)
        return self.bundle.manifest.get("fusion", {}).get(kind, {})

    def _allowed_numbers(self, domains: list[str], filters: dict[str, Any] | None) -> set[int] | None:
        if not filters:
            return None
        return {n for n, d in self.bundle.docs.items() if d.domain in domains and metadata_matches(d, filters)}

    def _search_channel(self, channel: str, question: str | None, text_features: np.ndarray | None,
                        image_features: np.ndarray | None, domains: list[str], allowed: set[int] | None,
                        depth: int) -> list[tuple[int, float]]:
        """(doc number, score) pairs of one channel over the searched domains, best first."""
        if channel == "bm25":
            mask = np.zeros(len(self.bundle.lexical), dtype=bool)
            numbers = allowed if allowed is not None else (n for n, d in self.bundle.docs.items() if d.domain in domains)
            for n in numbers:
                mask[n] = True
            if not mask.any():
                return []
            rows, scores = self.bundle.lexical.search(question, k=depth, allowed=mask)
            return [(int(r), float(s)) for r, s in zip(rows, scores) if s > 0]

        if channel == "text":
            query = text_features
        elif channel == "joint":
            query = image_features if self.joint_native else self.bundle.aligner.project_images(image_features[None])[0]
        else:
            query = image_features
        scored: dict[int, float] = {}
        for domain in domains:
            index = self.bundle.vectors.get((domain, channel))
            if index is None or index.ntotal == 0:
                continue
            allowed_ids = None
            if allowed is not None:
                allowed_ids = self._allowed_ids(channel, allowed, domain)
                if not len(allowed_ids):
                    continue
            scores, ids = index.search(query[None], min(depth * (4 if channel == "image" else 1), index.ntotal),
                                       self.bundle.search_params, allowed=allowed_ids)
            for score, row in zip(scores[0], ids[0]):
                if row < 0:
                    continue
                number = self.bundle.image_owner[int(row)] if channel == "image" else int(row)
                # image channel: a document is as close as its closest image
                if score > scored.get(number, -np.inf):
                    scored[number] = float(score)
        return sorted(scored.items(), key=lambda x: -x[1])[:depth]

    def _allowed_ids(self, channel: str, allowed: set[int], domain: str) -> np.ndarray:
        if channel == "image":
            return np.asarray([i for i, n in self.bundle.image_owner.items() if n in allowed], dtype=np.int64)
        return np.asarray([n for n in allowed if self.bundle.docs[n].domain == domain], dtype=np.int64)

    def _fuse(self, per_channel: dict[str, list[tuple[int, float]]], weights: dict[str, float]) -> list[Hit]:
        fused: dict[int, float] = defaultdict(float)
        ranks: dict[int, dict[str, int]] = defaultdict(dict)
        scores: dict[int, dict[str, float]] = defaultdict(dict)
        for channel, ranked in per_channel.items():
            weight = weights.get(channel, 1.0)
            for rank, (number, score) in enumerate(ranked):
                fused[number] += weight / (RRF_K + rank + 1)
                ranks[number][channel] = rank
                scores[number][channel] = score
        order = sorted((n for n in fused if fused[n] > 0), key=lambda n: (-fused[n], n))
        return [Hit(doc_number=n, doc=self.bundle.docs[n], score=fused[n], ranks=ranks[n], channel_scores=scores[n])
                for n in order]
