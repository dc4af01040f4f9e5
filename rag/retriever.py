"""The domain-aware retriever (docs/design.md §5 steps 1–3).

A query runs through three stages, in this order:

1. **Search**: encode the question and/or image and search every channel the query can use, over
   every domain (or only the domains the caller names), `depth` hits per channel:

       text   question -> document text, dense (text encoder)
       bm25   question -> document text, lexical with TCM name aliases and CJK tokens
       joint  image -> document text, in the aligner's joint space (or the encoder's own, for CLIP)
       image  image -> similar corpus images, returning their documents

2. **Fuse** the channel rankings into one flat ranking: a weighted sum of each channel's
   standardised scores, weights per kind of query, from the corpus by default and calibrated on a
   QA file when there is one (`rag.fusion`).
3. **Route**: the router heads' domain probabilities, sharpened by where the fused ranking found its
   best evidence, pick one domain, or the top two when unsure (`rag.routing`); the fused ranking is
   then restricted to the routed domains (scores stay those of the flat fusion).

`routing=False` keeps the flat ranking over every domain: the no-routing baseline. Named `domains`
are searched as given, without routing. Selecting how many hits to keep comes after retrieval
(`rag.selection.select_hits`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from rag.corpus import Document
from rag.encoders import (ImageEncoder, ImageInput, TextEncoder, create_image_encoder, create_text_encoder,
                          resolve_device)
from rag.fusion import CHANNELS, Hit, fuse, query_kind, usable_channels
from rag.index_bundle import IndexBundle, load_bundle
from rag.routing import Routing, route

if TYPE_CHECKING:  # only for the annotation
    from rag.selection import Selection


@dataclass
class RetrievalResult:
    hits: list[Hit]
    routing: Routing
    channels: list[str]
    timings: dict[str, float]

    def to_json(self, selection: Selection | None = None) -> dict[str, Any]:
        """The ranked hits, routing, channels and timings; with `selection`, also where it cut and why
        (what `medrag retrieve --json` prints and `POST /api/retrieve` returns)."""
        data = {"routing": self.routing.to_json(), "channels": self.channels,
                "timings_ms": {k: round(v * 1000, 2) for k, v in self.timings.items()},
                "hits": [h.to_json() for h in self.hits]}
        if selection is not None:
            data["selection"] = selection.to_json()
        return data


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
        bundle.check_encoders(text_encoder.fingerprint, image_encoder.fingerprint)
        self.bundle = bundle
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder

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
        names = bundle.encoder_names
        if text_encoder is None or isinstance(text_encoder, str):
            text_encoder = create_text_encoder(text_encoder or names["text"], device)
        if image_encoder is None or isinstance(image_encoder, str):
            image_encoder = create_image_encoder(image_encoder or names["image"], device)
        return cls(bundle, text_encoder, image_encoder)

    def route(self, image_features: np.ndarray | None, text_features: np.ndarray | None,
              fused: list[Hit] | None = None) -> Routing:
        """The routing decision for a query's features and its fused hits (see `rag.routing.route`)."""
        return route(self.bundle.router, self.bundle.domains, self.bundle.routing_threshold, image_features,
                     text_features, fused)

    def retrieve(self, question: str | None = None, image: ImageInput | None = None, k: int = 10,
                 domains: Sequence[str] | None = None, channels: Sequence[str] | None = None,
                 routing: bool = True, filters: dict[str, Any] | None = None, depth: int = 50) -> RetrievalResult:
        """Search the channels, fuse them, route (see the module docstring); the best `k` fused hits."""
        available = self._check_query(question, image, k, domains, channels)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        text_features, image_features, per_channel = self.search_channels(question, image, available, domains,
                                                                           filters, depth, timings)
        t = time.perf_counter()
        # Calibrated weights are for the full channel mix; a caller who names channels gets them equally.
        fused = fuse(per_channel, {} if channels else self.fusion_weights(question, image), self.bundle.docs,
                     self.bundle.unaligned)
        timings["fuse"] = time.perf_counter() - t
        t = time.perf_counter()
        decision = self.route(image_features, text_features, fused)
        if domains:
            decision.searched, decision.mode = list(domains), "given"
        elif not routing:
            decision.searched, decision.mode = list(self.bundle.domains), "flat"
        else:  # routed: the flat fused ranking, restricted to the routed domains
            fused = [h for h in fused if h.doc.domain in decision.searched]
        timings["route"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        return RetrievalResult(hits=fused[:k], routing=decision, channels=available, timings=timings)

    def _check_query(self, question: str | None, image: ImageInput | None, k: int, domains: Sequence[str] | None,
                     channels: Sequence[str] | None) -> list[str]:
        """Reject a malformed query; the channels it will search."""
        if not question and image is None:
            raise ValueError("retrieve needs a question, an image, or both")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        unknown = [d for d in domains or [] if d not in self.bundle.domains]
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; this index has {self.bundle.domains}")
        available = usable_channels(question, image, self.bundle.joint_searchable)
        if channels:
            bad = [c for c in channels if c not in CHANNELS]
            if bad:
                raise ValueError(f"unknown channel(s) {bad}; choose from {list(CHANNELS)}")
            available = [c for c in channels if c in available]
            if not available:
                raise ValueError(f"channels {list(channels)} need a {'question' if image is not None else 'an image'}")
        return available

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
        """Per-channel fusion weights for this kind of query (calibrated, else the corpus defaults)."""
        return self.bundle.fusion_weights(query_kind(question, image))

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
        elif channel == "joint" and not self.bundle.joint_native:
            query = self.bundle.aligner.project_images(image_features[None])[0]
        else:
            query = self.bundle.whitening.apply(image_features[None])[0]
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
