"""Shared fixtures: a small sample corpus and an index built from it with the offline default encoders.

Built once per test session (two domains, one corpus image and one query image per case) so the
suite stays fast while exercising the real build path: validation, embedding, head training,
calibration and the atomic bundle write.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMALL_DOMAINS = ("tcm_tongue", "radiology")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    from rag.sample_corpus.build import build_sample_corpus

    out = tmp_path_factory.mktemp("sample") / "corpus"
    build_sample_corpus(out, seed=0, images_per_doc=2, query_images_per_doc=1, domains=SMALL_DOMAINS, progress=False)
    return out


@pytest.fixture(scope="session")
def encoders():
    from rag.encoders import create_image_encoder, create_text_encoder

    return create_text_encoder(), create_image_encoder()


@pytest.fixture(scope="session")
def small_index(small_corpus: Path, encoders, tmp_path_factory) -> Path:
    from rag.index_build import build_index

    out = tmp_path_factory.mktemp("index") / "small"
    text, image = encoders
    build_index(small_corpus / "corpus.jsonl", out, qa=small_corpus / "qa.jsonl", progress=False,
                text_encoder=text, image_encoder=image)
    return out

