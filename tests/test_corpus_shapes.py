"""What a user brings first builds and answers: text only, one domain, one document, no QA file.

Each shape is cut from the small sample corpus, built with the real offline encoders and queried:
a document's own title finds it among the first three, and an image query on a corpus without images finds nothing
instead of ranking documents by an image-text space that was never trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.corpus import copy_corpus_slice
from rag.index_build import build_index
from rag.index_bundle import load_bundle
from rag.retriever import Retriever

pytestmark = pytest.mark.slow


def _shape(small_corpus: Path, target: Path, name: str) -> Path:
    """A corpus file in `target` of the shape `name`, with the images it keeps."""
    lines = (small_corpus / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    radiology = [i for i, r in enumerate(records) if r["domain"] == "radiology"]
    rows = {"text_only": slice(0, 8), "one_document": slice(radiology[0], radiology[0] + 1),
            "one_document_text_only": slice(radiology[0], radiology[0] + 1),
            "one_domain": slice(radiology[0], radiology[-1] + 1)}[name]
    corpus = copy_corpus_slice(small_corpus, target, "corpus.jsonl", rows)
    if name.endswith("text_only"):
        stripped = [{**json.loads(line), "images": []} for line in corpus.read_text(encoding="utf-8").splitlines()]
        corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in stripped), encoding="utf-8")
    return corpus


@pytest.mark.parametrize("shape", ["text_only", "one_document", "one_document_text_only", "one_domain"])
def test_corpus_shape_builds_and_answers(shape: str, small_corpus: Path, encoders, tmp_path: Path) -> None:
    corpus = _shape(small_corpus, tmp_path / "corpus", shape)
    records = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    out = tmp_path / "index"
    build_index(corpus, out, progress=False, text_encoder=encoders[0], image_encoder=encoders[1])  # no QA file
    bundle = load_bundle(out)
    assert len(bundle.docs) == len(records)
    assert bundle.selection.calibration.get("n") == 0  # nothing to calibrate on, and the manifest says so
    retriever = Retriever(bundle, *encoders)
    for record in records[:3]:
        found = [h.doc.id for h in retriever.retrieve(record["title"], k=3).hits]
        assert record["id"] in found, (record["title"], found)

    with_images = [r for r in records if r["images"]]
    query_image = next(iter((small_corpus / "queries").rglob("*.png")))
    result = retriever.retrieve(None, image=query_image, k=3)
    if with_images:
        assert "joint" in result.channels and result.hits
    else:
        assert "joint" not in result.channels and result.hits == []
