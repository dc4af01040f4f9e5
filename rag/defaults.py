"""The paths and model names commands and notebooks default to.

Every default lives here once, so that `medrag`, the benchmarks and the notebooks agree on where the
sample corpus, the default index and the trained models are. Paths are relative to the repository
root, where the commands run. Importing this module costs nothing: `medrag --help` shows these.
"""

from __future__ import annotations

import sys
from pathlib import Path

SAMPLE_DIR = Path("data/sample")                    # `medrag corpus sample` writes here
SAMPLE_CORPUS = SAMPLE_DIR / "corpus.jsonl"
SAMPLE_QA = SAMPLE_DIR / "qa.jsonl"
SAMPLE_SPEC = Path("indexes/sample.yaml")           # the default index's specification
SAMPLE_INDEX = Path("indexes/sample")               # ... and where it is built
ALIGNED_VLM = Path("data/models/medvlm-sample")     # the VLM whose projector `medrag demo` aligned
PAIRS_DIR = Path("data/finetune/pairs")             # RAG-PT preference pairs
RAGPT_DIR = Path("data/models/medvlm-ragpt")        # the DPO-tuned VLM (RAG-PT)
SFT_DIR = Path("data/models/medvlm-sft")            # the knowledge-SFT baseline


def resolve_generator_name(name: str | None) -> str:
    """`name` if given; else the projector trained by `medrag demo` if it exists, else the untrained default."""
    from rag.vlm import DEFAULT_VLM  # imported here: rag.vlm loads torch

    if name:
        return name
    if (ALIGNED_VLM / "config.json").is_file():
        return str(ALIGNED_VLM)
    print(f"note: {ALIGNED_VLM} not found, using {DEFAULT_VLM} with an untrained projector; "
          "run `medrag finetune align` (or `medrag demo`) to train it", file=sys.stderr)
    return DEFAULT_VLM
