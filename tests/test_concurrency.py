"""Concurrency: many threads on one retriever agree with serial calls; readers see old or new during an add."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rag.corpus import copy_corpus_slice, read_documents, read_qa
from rag.index_build import add_documents
from rag.index_bundle import BundleError, load_bundle
from rag.lexical import LexicalIndex
from rag.retriever import Retriever

REPO = Path(__file__).resolve().parents[1]


def _queries(small_corpus: Path) -> list[tuple[str, str | None]]:
    items = [q for q in read_qa(small_corpus / "qa.jsonl") if q.split == "test"][:10]
    return [(q.question, str(small_corpus / q.image) if q.image else None) for q in items]


def _answer(retriever: Retriever, query: tuple[str, str | None]) -> list[tuple[str, float]]:
    result = retriever.retrieve(query[0], image=query[1], k=10)
    return [(h.doc.id, round(h.score, 9)) for h in result.hits]


def test_threads_agree_with_serial_calls(small_index: Path, small_corpus: Path, encoders) -> None:
    queries = _queries(small_corpus)
    # A freshly loaded bundle: its lexical index is rebuilt by the first search, which the threads race for.
    shared = Retriever(load_bundle(small_index), *encoders)
    work = [q for q in queries for _ in range(2)]
    random.Random(0).shuffle(work)
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda q: (q, _answer(shared, q)), work))
    serial_retriever = Retriever(load_bundle(small_index), *encoders)
    serial = {q: _answer(serial_retriever, q) for q in queries}
    for query, answer in concurrent:
        assert answer == serial[query], query


def test_lexical_first_search_from_many_threads() -> None:
    """The lazy BM25 rebuild used to race: threads saw a half-built bm25s index (AttributeError)."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(2000)]
    texts = [" ".join(rng.choices(words, k=60)) for _ in range(3000)]
    expected = LexicalIndex.build(texts).search("w1 w2 w3", k=5)[0].tolist()
    for _ in range(3):
        index = LexicalIndex.build(texts)
        barrier = threading.Barrier(6)

        def search() -> list[int]:
            barrier.wait()
            return index.search("w1 w2 w3", k=5)[0].tolist()

        with ThreadPoolExecutor(max_workers=6) as pool:
            results = [f.result() for f in [pool.submit(search) for _ in range(6)]]
        assert results == [expected] * 6


@pytest.mark.slow
def test_concurrent_adds_both_land(small_index: Path, small_corpus: Path, tmp_path: Path) -> None:
    """Two `index add` runs at once: each loads, changes and saves under the update lock, so the second
    starts from the first one's version and neither addition is lost."""
    bundle_dir = tmp_path / "index"
    shutil.copytree(small_index, bundle_dir, symlinks=True)
    before = {d.id for d in load_bundle(bundle_dir).docs.values()}
    added = read_documents(small_corpus / "corpus_added.jsonl", check_images=False)
    middle = len(added) // 2
    halves = [copy_corpus_slice(small_corpus, tmp_path / f"half{i}", "added.jsonl", rows,
                                source="corpus_added.jsonl")
              for i, rows in enumerate((slice(0, middle), slice(middle, None)))]
    barrier = threading.Barrier(2)

    def add(corpus: Path) -> dict:
        barrier.wait()  # both start together: without the lock both would load the same version
        return add_documents(bundle_dir, corpus, progress=False)

    with ThreadPoolExecutor(max_workers=2) as pool:
        totals = sorted(r["documents_total"] for r in pool.map(add, halves))
    after = {d.id for d in load_bundle(bundle_dir).docs.values()}
    assert after == before | {d.id for d in added}
    assert totals[1] == len(after) and totals[0] in (len(before) + middle, len(before) + len(added) - middle)


@pytest.mark.slow
def test_readers_see_old_or_new_while_add_runs(small_index: Path, small_corpus: Path, tmp_path: Path) -> None:
    bundle_dir = tmp_path / "index"
    shutil.copytree(small_index, bundle_dir, symlinks=True)
    old = len(load_bundle(bundle_dir).docs)
    new = old + len(read_documents(small_corpus / "corpus_added.jsonl", check_images=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    writer = subprocess.Popen([sys.executable, "-m", "rag.cli", "index", "add", str(bundle_dir), "--corpus",
                               str(small_corpus / "corpus_added.jsonl"), "--json"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: list[int] = []
    failures: list[str] = []
    while writer.poll() is None:
        try:
            seen.append(len(load_bundle(bundle_dir).docs))     # full checksum verification on every load
        except (BundleError, OSError, ValueError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.02)                                    # leave the writer CPU on a 2-core machine
    out, err = writer.communicate()
    assert writer.returncode == 0, err.decode()
    assert json.loads(out)["documents_total"] == new
    seen.append(len(load_bundle(bundle_dir).docs))
    assert not failures, failures[:3]
    assert set(seen) <= {old, new} and seen[0] == old and seen[-1] == new
    assert seen == sorted(seen)                              # once a reader sees the new bundle, never the old
