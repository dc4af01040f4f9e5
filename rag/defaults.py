"""The paths and model names commands and notebooks default to.

Every default lives here once, so that `medrag`, the benchmarks and the notebooks agree on where the
sample corpus, the default index and the trained models are. Paths are relative to the repository
root, where the commands run. Importing this module costs nothing: `medrag --help` shows these.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path("data/sample")                    # `medrag corpus sample` writes here
SAMPLE_CORPUS = SAMPLE_DIR / "corpus.jsonl"
SAMPLE_QA = SAMPLE_DIR / "qa.jsonl"
SAMPLE_SPEC = Path("indexes/sample.yaml")           # the default index's specification
SAMPLE_INDEX = Path("indexes/sample")               # ... and where it is built
ALIGNED_VLM = Path("data/models/medvlm-aligned")    # the VLM whose projector `finetune align` trained
READER_DIR = Path("data/models/medvlm-reader")      # Stage A: the VLM taught to answer from evidence
PAIRS_DIR = Path("data/finetune/pairs")             # RAG-PT preference pairs
RAGPT_DIR = Path("data/models/medvlm-ragpt")        # the DPO-tuned VLM (RAG-PT)
SFT_DIR = Path("data/models/medvlm-sft")            # the knowledge-SFT baseline


def resolve_generator_name(name: str | None) -> str:
    """`name` if given, else the default VLM (with the trained projector and adapter it ships with)."""
    from rag.vlm import DEFAULT_VLM  # imported here: rag.vlm loads torch

    return name or DEFAULT_VLM


def aligned_base(name: str | None) -> str:
    """The model Stage A and the knowledge-SFT baseline start from: `name`, else the projector-aligned VLM."""
    if name:
        return name
    if not (ALIGNED_VLM / "config.json").is_file():
        raise FileNotFoundError(f"{ALIGNED_VLM} not found: train the projector first with `medrag finetune align` "
                                "(or pass --base)")
    return str(ALIGNED_VLM)
