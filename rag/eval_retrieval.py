"""Retrieval evaluation: Recall@k, MRR, routing accuracy and latency, per domain, channel and system.

One run compares the domain-aware retriever with the baselines of the issue on the same questions:
BM25 only and dense text only (both over all domains), and all channels over one flat collection
(no routing). For exact inner-product search, searching every per-domain index and merging is the
same ranking as one flat index over all documents, so "flat" is exactly the no-routing baseline.
Each single channel is also run with routing, to show what each contributes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rag.corpus import QAItem
from rag.retriever import Retriever

KS = (1, 5, 10)


@dataclass(frozen=True)
class System:
    name: str
    channels: tuple[str, ...] | None  # None = every channel the query allows
    routing: bool


SYSTEMS = (
    System("domain-aware", None, True),
    System("flat (no routing)", None, False),
    System("bm25 only", ("bm25",), False),
    System("dense text only", ("text",), False),
    System("channel: text", ("text",), True),
    System("channel: bm25", ("bm25",), True),
    System("channel: joint", ("joint",), True),
    System("channel: image", ("image",), True),
)


def _summarise(ranks: list[int | None], routed_ok: list[bool], latencies: list[float]) -> dict[str, Any]:
    n = len(ranks)
    if n == 0:
        return {"n": 0}
    out: dict[str, Any] = {"n": n}
    for k in KS:
        out[f"recall@{k}"] = round(sum(r is not None and r < k for r in ranks) / n, 4)
    out["mrr"] = round(sum(1.0 / (r + 1) for r in ranks if r is not None) / n, 4)
    out["routing_accuracy"] = round(sum(routed_ok) / n, 4)
    lat = np.asarray(latencies) * 1000
    out["latency_ms_p50"] = round(float(np.percentile(lat, 50)), 2)
    out["latency_ms_p95"] = round(float(np.percentile(lat, 95)), 2)
    return out


def evaluate_retrieval(retriever: Retriever, questions: list[QAItem], qa_dir: Path, k: int = 10,
                       systems: tuple[System, ...] = SYSTEMS, progress: bool = True) -> dict[str, Any]:
    """Run every system on every question; group results by system, domain and question kind."""
    number_of = {d.id: n for n, d in retriever.bundle.docs.items()}
    missing = sorted({q.doc_id for q in questions if q.doc_id not in number_of})
    questions = [q for q in questions if q.doc_id in number_of]
    # warm-up, so the first timed query does not pay one-off costs (BM25 build, thread pools)
    if questions:
        first = questions[0]
        retriever.retrieve(first.question, image=str(qa_dir / first.image) if first.image else None, k=k)
    results: dict[str, Any] = {}
    for system in systems:
        groups: dict[str, tuple[list, list, list]] = defaultdict(lambda: ([], [], []))
        for item in tqdm(questions, desc=system.name, disable=not progress, unit="q"):
            image = str(qa_dir / item.image) if item.image else None
            if system.channels and not _applicable(system.channels, item.question, image):
                continue
            started = time.perf_counter()
            result = retriever.retrieve(item.question, image=image, k=k, channels=system.channels,
                                        routing=system.routing)
            elapsed = time.perf_counter() - started
            gold = number_of[item.doc_id]
            rank = next((i for i, h in enumerate(result.hits) if h.doc_number == gold), None)
            kind = "image questions" if image else "text questions"
            for group in ("all", f"domain:{item.domain}", kind):
                ranks, routed, lat = groups[group]
                ranks.append(rank)
                routed.append(result.routing.domain == item.domain)
                lat.append(elapsed)
        results[system.name] = {g: _summarise(*v) for g, v in sorted(groups.items())}
    return {"n_questions": len(questions), "skipped_missing_docs": missing, "k": k, "systems": results}


def _applicable(channels: tuple[str, ...], question: str | None, image: str | None) -> bool:
    needs_image = {"joint", "image"}
    return any((c in needs_image and image) or (c not in needs_image and question) for c in channels)


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'system':<20} {'group':<26} {'n':>5} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR':>6} "
             f"{'route':>6} {'p50 ms':>7} {'p95 ms':>7}"]
    for system, groups in report["systems"].items():
        for group, m in groups.items():
            if not m.get("n"):
                continue
            lines.append(f"{system:<20} {group:<26} {m['n']:>5} {m['recall@1']:>6.3f} {m['recall@5']:>6.3f} "
                         f"{m['recall@10']:>6.3f} {m['mrr']:>6.3f} {m['routing_accuracy']:>6.3f} "
                         f"{m['latency_ms_p50']:>7.1f} {m['latency_ms_p95']:>7.1f}")
    return "\n".join(lines)
