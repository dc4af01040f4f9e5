"""Property tests: whatever shape of corpus a user brings, it builds, retrieves and answers.

Hypothesis draws the shape (which domains, how many documents, with all, some or no images, full
text or only a title-like line, with or without a QA file); each example is cut from the small
sample corpus, built with the real offline encoders, and asked about its own documents.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.generator import create_generator
from rag.index_build import build_index
from rag.index_bundle import load_bundle
from rag.pipeline import MedRAG
from rag.retriever import Retriever

pytestmark = pytest.mark.slow

SHAPES = st.fixed_dictionaries({
    "domains": st.sampled_from([("radiology",), ("tcm_tongue",), ("radiology", "tcm_tongue")]),
    "n_docs": st.integers(min_value=1, max_value=6),
    "images": st.sampled_from(["all", "some", "none"]),
    "text": st.sampled_from(["full", "title only"]),
    "qa": st.booleans(),
})


def _write_shape(small_corpus: Path, target: Path, shape: dict) -> tuple[Path, Path | None, list[dict]]:
    """The corpus (and QA file) of `shape`, with the images it keeps copied beside it (corpus image paths
    are relative to the corpus folder)."""
    records = [json.loads(line) for line in (small_corpus / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    chosen = []
    for domain in shape["domains"]:
        chosen += [r for r in records if r["domain"] == domain][: shape["n_docs"]]
    for i, record in enumerate(chosen):
        keep = shape["images"] == "all" or (shape["images"] == "some" and i % 2 == 0)
        record["images"] = record["images"] if keep else []
        for rel in record["images"]:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes((small_corpus / rel).read_bytes())
        if shape["text"] == "title only":
            record["text"] = record["title"]
    target.mkdir(parents=True, exist_ok=True)
    corpus = target / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen), encoding="utf-8")
    qa = None
    if shape["qa"]:
        ids = {r["id"] for r in chosen}
        lines = [line for line in (small_corpus / "qa.jsonl").read_text(encoding="utf-8").splitlines()
                 if json.loads(line)["doc_id"] in ids]
        qa = target / "qa.jsonl"
        qa.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        for rel in {json.loads(line).get("image") for line in lines} - {None}:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes((small_corpus / rel).read_bytes())
    return corpus, qa, chosen


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shape=SHAPES)
def test_any_corpus_shape_builds_retrieves_and_answers(shape: dict, small_corpus: Path, encoders, tiny_vlm_dir: Path,
                                                       tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("shape")
    corpus, qa, records = _write_shape(small_corpus, work / "corpus", shape)
    build_index(corpus, work / "index", qa=qa, progress=False, text_encoder=encoders[0], image_encoder=encoders[1])
    bundle = load_bundle(work / "index")
    assert len(bundle.docs) == len(records)
    retriever = Retriever(bundle, *encoders)

    for record in records[:3]:  # a document's title finds it
        found = [h.doc.id for h in retriever.retrieve(record["title"], k=5).hits]
        assert record["id"] in found, (shape, record["title"], found)
    with_images = [r for r in records if r["images"]]
    for record in with_images[:2]:  # a document's own image finds it, with or without a question
        for question in (None, "What does this image show?"):
            found = [h.doc.id for h in retriever.retrieve(question, image=corpus.parent / record["images"][0],
                                                           k=5).hits]
            assert record["id"] in found, (shape, question, found)
    if not with_images:
        assert retriever.retrieve(None, image=next((small_corpus / "queries").rglob("*.png")), k=3).hits == []

    rag = MedRAG(retriever, create_generator(str(tiny_vlm_dir)))
    answer = rag.ask(records[0]["title"], options=["yes", "no"])
    assert {e.id for e in answer.evidence} <= {r["id"] for r in records}
    assert answer.abstained or answer.option in (0, 1)
