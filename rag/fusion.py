"""Fusion of the retrieval channels (docs/design.md §5 step 2): weighted Reciprocal Rank Fusion.

The retriever searches every channel the query can use over every domain it may search, and
`fuse` merges those rankings into one flat list: a document scores the sum, over the channels that
found it, of the channel's weight / (RRF_K + its rank + 1). Routing comes after fusion and looks at
the fused list (`rag.routing`).

The weights depend on the kind of query (`query_kind`: text, image, or image+text) and are
calibrated when the bundle is built: `calibrate_fusion` tries every combination of FUSION_GRID per
kind on the validation questions and keeps the one that ranks their gold documents best.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rag.corpus import Document, QAItem

# text / bm25: question -> document text, dense / lexical; joint / image: image -> text / similar images
CHANNELS = ("text", "bm25", "joint", "image")
RRF_K = 60  # Cormack et al. (2009): robust across collections; ranks, not raw scores, are fused
FUSION_GRID = (0.0, 0.5, 1.0, 2.0, 4.0)


def query_kind(question: str | None, image: object | None) -> str:
    """Queries with and without an image weigh channels differently (see `calibrate_fusion`)."""
    return "image+text" if (question and image is not None) else ("image" if image is not None else "text")


def usable_channels(question: str | None, image: object | None, joint: bool = True) -> list[str]:
    """The channels a query can search: the text ones need a question, the image ones an image, and the
    joint one (image -> text) an image-text space that was learned (`joint`)."""
    return [c for c in CHANNELS
            if (c in ("text", "bm25") and question) or (c == "image" and image is not None)
            or (c == "joint" and image is not None and joint)]


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


def fuse(per_channel: Mapping[str, list[tuple[int, float]]], weights: Mapping[str, float],
         docs: Mapping[int, Document]) -> list[Hit]:
    """One ranking from the channels' (doc number, score) rankings; a channel without a weight weighs 1."""
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
    return [Hit(doc_number=n, doc=docs[n], score=fused[n], ranks=ranks[n], channel_scores=scores[n]) for n in order]


def calibrate_fusion(retriever, val: list[QAItem], qa_dir: Path | None, depth: int = 50,
                     progress: bool = True) -> dict[str, dict[str, float]]:
    """Per query kind, the channel weights of weighted RRF that maximise val MRR of the gold document.

    A question about "the herb in this image" carries no text signal, so its text channels only add
    noise to the fused ranking; a question naming a herb is best served by BM25. Rather than guess,
    each kind of query gets the grid point with the best validation MRR (ties: closest to equal weights).
    `retriever` is a `rag.retriever.Retriever`: its unfused channel rankings are searched once per question.
    """
    number_of = {d.id: n for n, d in retriever.bundle.docs.items()}
    by_kind: dict[str, list[tuple[list[str], np.ndarray, int | None]]] = {}
    for item in tqdm(val, desc="calibrating fusion", disable=not progress, unit="q"):
        image = str(qa_dir / item.image) if item.image and qa_dir else None
        channels = usable_channels(item.question, image, retriever.bundle.joint_searchable)
        _, _, per_channel = retriever.search_channels(item.question, image, channels, depth=depth)
        candidates = sorted({n for ranked in per_channel.values() for n, _ in ranked})
        position = {n: i for i, n in enumerate(candidates)}
        contrib = np.zeros((len(candidates), len(channels)))
        for j, c in enumerate(channels):
            for rank, (n, _) in enumerate(per_channel[c]):
                contrib[position[n], j] = 1.0 / (RRF_K + rank + 1)
        gold = position.get(number_of.get(item.doc_id, -1))
        by_kind.setdefault(query_kind(item.question, image), []).append((channels, contrib, gold))
    return {kind: _best_weights(rows) for kind, rows in by_kind.items()}


def _best_weights(rows: list[tuple[list[str], np.ndarray, int | None]]) -> dict[str, float]:
    """The FUSION_GRID point with the best MRR over one query kind's questions, with val_mrr and n."""
    channels = rows[0][0]
    grid = np.asarray([w for w in itertools.product(FUSION_GRID, repeat=len(channels)) if any(w)])
    mrr = np.zeros(len(grid))
    for _, contrib, gold in rows:
        if gold is None or not len(contrib):
            continue
        fused = contrib @ grid.T                       # candidates x grid
        rank = (fused > fused[gold]).sum(axis=0)       # 0-based rank of the gold document
        mrr += np.where(fused[gold] > 0, 1.0 / (rank + 1), 0.0)
    mrr /= len(rows)
    spread = np.abs(grid / grid.max(axis=1, keepdims=True) - 1).sum(axis=1)
    best = int(np.lexsort((spread, -np.round(mrr, 6)))[0])
    weights = {c: float(w) for c, w in zip(channels, grid[best])}
    weights["val_mrr"] = round(float(mrr[best]), 4)
    weights["n"] = len(rows)
    return weights
