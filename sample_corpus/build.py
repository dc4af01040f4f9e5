"""Build the multi-domain sample corpus: documents, drawn images and a closed QA set.

Deterministic from one seed. Splits are assigned per *document* (train/val/test, plus `added`:
documents held out of all training and out of the first index, to be added later — docs/design.md §7).
Each document gets `images_per_doc` corpus images; questions that need an image are asked with
separate held-out *query* images of the same case, so retrieval never matches a query image to
its own copy in the index.

Layout written to `out_dir` (atomically: built beside it, then swapped in):
    corpus.jsonl         documents of the first index (train, val, test)
    corpus_added.jsonl   documents to add to the index later (split `added`)
    qa.jsonl             questions for every split
    images/<domain>/     corpus images;  queries/<domain>/  query images
    summary.json         counts per domain and split
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rag.corpus import Document, QAItem, write_jsonl
from sample_corpus.domain import DomainGenerator, SampleCase

# Each domain is the module (or subpackage) of this package named by its key. The order is part of
# the seed: a domain's rngs are seeded with its position here.
DOMAINS: tuple[str, ...] = ("tcm_herb", "tcm_tongue", "radiology", "ophthalmology", "pathology")
ID_PREFIX: dict[str, str] = {
    "tcm_herb": "herb", "tcm_tongue": "tongue", "radiology": "cxr", "ophthalmology": "fundus",
    "pathology": "histo",
}
# Fractions of each domain's documents; the rest is train. `added` documents play "new knowledge".
SPLIT_FRACTIONS: dict[str, float] = {"val": 0.10, "test": 0.20, "added": 0.15}


@dataclass
class SampleSummary:
    out_dir: str
    seed: int
    seconds: float = 0.0
    documents: dict[str, dict[str, int]] = field(default_factory=dict)  # domain -> split -> n
    images: dict[str, int] = field(default_factory=dict)  # domain -> corpus images
    query_images: dict[str, int] = field(default_factory=dict)
    qa: dict[str, dict[str, int]] = field(default_factory=dict)  # domain -> split -> n

    def totals(self) -> dict[str, int]:
        return {
            "documents": sum(sum(v.values()) for v in self.documents.values()),
            "images": sum(self.images.values()) + sum(self.query_images.values()),
            "qa": sum(sum(v.values()) for v in self.qa.values()),
        }

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "seed": self.seed, "seconds": round(self.seconds, 2),
                "documents": self.documents, "images": self.images, "query_images": self.query_images,
                "qa": self.qa, "totals": self.totals()}


def generator_for(domain: str) -> DomainGenerator:
    return importlib.import_module(f"sample_corpus.{domain}").GENERATOR


def assign_splits(keys: list[str], rng: np.random.Generator) -> dict[str, str]:
    """Split one domain's documents; every split gets at least one document when there are enough."""
    order = [keys[i] for i in rng.permutation(len(keys))]
    splits: dict[str, str] = {}
    start = 0
    for split, fraction in SPLIT_FRACTIONS.items():
        n = max(1, round(fraction * len(keys))) if len(keys) >= 8 else 0
        for key in order[start:start + n]:
            splits[key] = split
        start += n
    for key in order[start:]:
        splits[key] = "train"
    return splits


# Worker state is set before the pool forks (or in the initializer under spawn), so each task
# only ships small tuples instead of pickling cases per call.
_WORKER_CASES: dict[str, list[SampleCase]] = {}


def _init_worker(cases: dict[str, list[SampleCase]]) -> None:
    _WORKER_CASES.update(cases)


def _render(task: tuple[str, int, int, int, str]) -> str:
    domain, case_index, image_index, seed, out_path = task
    case = _WORKER_CASES[domain][case_index]
    domain_index = DOMAINS.index(domain)
    rng = np.random.default_rng([seed, domain_index, case_index, image_index])
    image = generator_for(domain).draw(case, rng)
    image.save(out_path, format="PNG", compress_level=1)
    return out_path


def _document(domain: str, case: SampleCase, split: str, images: list[str], queries: list[str]) -> Document:
    metadata = dict(case.metadata)
    metadata.update({"split": split, "case_key": case.key, "params": case.params, "query_images": queries})
    return Document(id=f"{ID_PREFIX[domain]}-{case.key}", domain=domain, title=case.title, text=case.text,
                    images=images, names=dict(case.names), source=case.source, metadata=metadata)


def _questions(doc: Document, case: SampleCase, split: str, queries: list[str]) -> list[QAItem]:
    items = []
    image_turn = 0
    for number, template in enumerate(case.questions):
        image = None
        if template.uses_image:
            image = queries[image_turn % len(queries)]
            image_turn += 1
        items.append(QAItem(
            id=f"{doc.id}-q{number:02d}", question=template.question, answer=template.answer,
            doc_id=doc.id, domain=doc.domain, split=split, image=image, options=list(template.options),
            metadata={"kind": template.kind, "topic": template.topic, "uses_image": template.uses_image},
        ))
    return items


def build_sample_corpus(out_dir: str | Path, seed: int = 0, images_per_doc: int = 4,
                        query_images_per_doc: int = 2, workers: int | None = None,
                        domains: tuple[str, ...] = DOMAINS, progress: bool = True) -> SampleSummary:
    """Generate the sample corpus into `out_dir`, replacing it only once the new one is complete."""
    if images_per_doc < 1 or query_images_per_doc < 1:
        raise ValueError("images_per_doc and query_images_per_doc must be at least 1")
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; choose from {list(DOMAINS)}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        summary = _build_into(staging, seed, images_per_doc, query_images_per_doc, workers, domains, progress)
        summary.out_dir = str(out_dir)
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary.seconds = time.perf_counter() - started
    (out_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    return summary


def ensure_sample_corpus(corpus: str | Path, seed: int = 0) -> bool:
    """Generate the sample corpus into the folder of `corpus` (its corpus.jsonl) when `corpus` is
    missing, replacing that folder; returns whether it generated. This lets a spec or the demo
    name the sample corpus before anyone has built it."""
    corpus = Path(corpus)
    if corpus.exists():
        return False
    print(f"{corpus} not found: generating the sample corpus (seed {seed})", file=sys.stderr)
    build_sample_corpus(corpus.parent, seed=seed)
    return True


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace out_dir by staging with two renames; the old corpus survives until the new one is whole."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build_into(root: Path, seed: int, images_per_doc: int, query_images_per_doc: int,
                workers: int | None, domains: tuple[str, ...], progress: bool) -> SampleSummary:
    summary = SampleSummary(out_dir=str(root), seed=seed)
    cases: dict[str, list[SampleCase]] = {}
    splits: dict[str, dict[str, str]] = {}
    for domain in domains:
        domain_index = DOMAINS.index(domain)
        cases[domain] = generator_for(domain).cases(np.random.default_rng([seed, domain_index]))
        keys = [c.key for c in cases[domain]]
        if len(set(keys)) != len(keys):
            raise ValueError(f"domain {domain} produced duplicate case keys")
        splits[domain] = assign_splits(keys, np.random.default_rng([seed, domain_index, 1_000_003]))

    tasks: list[tuple[str, int, int, int, str]] = []
    layout: dict[tuple[str, int], tuple[list[str], list[str]]] = {}
    for domain in domains:
        (root / "images" / domain).mkdir(parents=True)
        (root / "queries" / domain).mkdir(parents=True)
        for ci, case in enumerate(cases[domain]):
            corpus_rel = [f"images/{domain}/{case.key}_{i}.png" for i in range(images_per_doc)]
            query_rel = [f"queries/{domain}/{case.key}_q{j}.png" for j in range(query_images_per_doc)]
            layout[(domain, ci)] = (corpus_rel, query_rel)
            for image_index, rel in enumerate(corpus_rel + query_rel):
                tasks.append((domain, ci, image_index, seed, str(root / rel)))

    workers = workers or min(2, os.cpu_count() or 1)
    bar = tqdm(total=len(tasks), desc="drawing images", unit="img", disable=not progress)
    if workers > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(cases,)) as pool:
            for _ in pool.imap_unordered(_render, tasks, chunksize=8):
                bar.update()
    else:
        _init_worker(cases)
        for task in tasks:
            _render(task)
            bar.update()
    bar.close()

    first_index: list[Document] = []
    added: list[Document] = []
    qa: list[QAItem] = []
    for domain in domains:
        doc_counts: Counter[str] = Counter()
        qa_counts: Counter[str] = Counter()
        for ci, case in enumerate(cases[domain]):
            split = splits[domain][case.key]
            corpus_rel, query_rel = layout[(domain, ci)]
            doc = _document(domain, case, split, corpus_rel, query_rel)
            (added if split == "added" else first_index).append(doc)
            items = _questions(doc, case, split, query_rel)
            qa.extend(items)
            doc_counts[split] += 1
            qa_counts[split] += len(items)
        summary.documents[domain] = dict(doc_counts)
        summary.qa[domain] = dict(qa_counts)
        summary.images[domain] = len(cases[domain]) * images_per_doc
        summary.query_images[domain] = len(cases[domain]) * query_images_per_doc

    write_jsonl(root / "corpus.jsonl", first_index)
    write_jsonl(root / "corpus_added.jsonl", added)
    write_jsonl(root / "qa.jsonl", qa)
    return summary


def summary_table(summary: SampleSummary) -> str:
    """A plain-text table of documents / images / QA items per domain and split."""
    split_names = ["train", "val", "test", "added"]
    rows = [f"{'domain':<14} {'docs':>5} {'images':>7} {'qa':>6}   " + "  ".join(f"{s:>11}" for s in split_names)]
    per_split: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for domain in summary.documents:
        docs, qa = summary.documents[domain], summary.qa[domain]
        cells = []
        for s in split_names:
            cells.append(f"{docs.get(s, 0):>4}d/{qa.get(s, 0):>4}q")
            per_split[s][0] += docs.get(s, 0)
            per_split[s][1] += qa.get(s, 0)
        images = summary.images[domain] + summary.query_images[domain]
        rows.append(f"{domain:<14} {sum(docs.values()):>5} {images:>7} {sum(qa.values()):>6}   " + "  ".join(cells))
    totals = summary.totals()
    rows.append(f"{'total':<14} {totals['documents']:>5} {totals['images']:>7} {totals['qa']:>6}   "
                + "  ".join(f"{per_split[s][0]:>4}d/{per_split[s][1]:>4}q" for s in split_names))
    return "\n".join(rows)
