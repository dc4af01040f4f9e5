"""Both QA notebooks execute end to end on the offline defaults (docs/design.md §10: notebooks are tested)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture(scope="module")
def five_domain_index(tmp_path_factory, encoders) -> tuple[Path, Path]:
    """Every sample domain, one corpus image and one query image per case: small but complete."""
    from rag.index_build import build_index
    from sample_corpus.build import build_sample_corpus

    root = tmp_path_factory.mktemp("nb")
    corpus = root / "corpus"
    build_sample_corpus(corpus, seed=0, images_per_doc=1, query_images_per_doc=1, progress=False)
    text, image = encoders
    build_index(corpus / "corpus.jsonl", root / "index", qa=corpus / "qa.jsonl", progress=False,
                text_encoder=text, image_encoder=image)
    return root / "index", corpus / "qa.jsonl"


@pytest.mark.parametrize("name", ["quickstart_qa.ipynb", "tcm_qa.ipynb"])
def test_notebook_executes(name, five_domain_index, monkeypatch):
    from rag.vlm import DEFAULT_VLM

    index, qa = five_domain_index
    monkeypatch.setenv("MEDRAG_INDEX", str(index))
    monkeypatch.setenv("MEDRAG_QA", str(qa))
    monkeypatch.setenv("MEDRAG_GENERATOR", DEFAULT_VLM)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}, env=dict(os.environ)).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "cites [" in text and "A: " in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # evidence pictures and selection plots
