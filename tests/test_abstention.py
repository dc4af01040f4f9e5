"""Abstention thresholds calibrated at build time (rag/abstention.py) and used by MedRAG, with the old constants
as the fallback for bundles built before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rag.abstention import shuffled_patches
from rag.encoders import load_rgb
from rag.generator import create_generator
from rag.index_bundle import load_bundle
from rag.pipeline import MIN_IMAGE_SIMILARITY, MIN_LEXICAL_SCORE, MIN_TEXT_SIMILARITY, MedRAG
from rag.retriever import Retriever

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rag(small_index: Path, encoders, tiny_vlm_dir: Path) -> MedRAG:
    return MedRAG(Retriever(load_bundle(small_index), *encoders), create_generator(str(tiny_vlm_dir)))


def _weak(rag: MedRAG, question: str, image=None) -> bool:
    context = rag.gather(question, image)
    return rag.evidence_is_weak(*rag.best_similarities(context.kept, question, image))


def test_thresholds_come_from_the_bundle_and_separate_corpus_queries_from_noise(rag: MedRAG,
                                                                                small_corpus: Path) -> None:
    stored = rag.retriever.bundle.manifest.abstention
    assert {"text", "bm25", "image"} <= set(stored) and stored["evidence"]["text"]["probes"]["n"] > 0
    assert (rag.min_text_similarity, rag.min_lexical_score, rag.min_image_similarity) == (
        stored["text"], stored["bm25"], stored["image"])
    records = [json.loads(line) for line in (small_corpus / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not _weak(rag, records[0]["text"].split(".")[0])            # a document's own sentence is answered
    assert _weak(rag, "quarterly earnings of the semiconductor industry rose sharply")  # off-topic is refused
    for channel in ("text", "bm25", "image"):  # just above noise, never above what answerable queries reach
        evidence = stored["evidence"][channel]
        assert stored[channel] <= evidence["probes"]["p99"] + 1e-4
        assert "answerable" not in evidence or stored[channel] <= evidence["answerable"]["p05"] + 1e-4


def test_shuffled_patches_keep_the_colours_and_lose_the_picture(small_corpus: Path) -> None:
    path = next((small_corpus / "images").rglob("*.png"))
    original = np.asarray(load_rgb(path).resize((224, 224)), dtype=np.float64)
    shuffled = np.asarray(shuffled_patches(str(path), np.random.default_rng(3)), dtype=np.float64)
    assert shuffled.shape == original.shape
    assert np.allclose(np.sort(shuffled.ravel()), np.sort(original.ravel()))  # the same pixels ...
    assert np.abs(shuffled - original).mean() > 1.0                          # ... elsewhere


def test_a_bundle_without_calibrated_thresholds_keeps_the_constants(rag: MedRAG) -> None:
    bundle = rag.retriever.bundle
    saved, bundle.manifest.abstention = bundle.manifest.abstention, None
    try:
        old = MedRAG(rag.retriever, rag.generator)
        assert (old.min_text_similarity, old.min_image_similarity, old.min_lexical_score) == (
            MIN_TEXT_SIMILARITY, MIN_IMAGE_SIMILARITY, MIN_LEXICAL_SCORE)
        assert MedRAG(rag.retriever, rag.generator, min_text_similarity=0.9).min_text_similarity == 0.9
    finally:
        bundle.manifest.abstention = saved
