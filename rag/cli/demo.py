"""`medrag demo`: the main job on offline defaults, from an empty checkout to cited answers.

The building and answering steps are `rag.demo`'s; aligning the VLM projector (step 4) is training,
and only the command line may reach into `finetune`, so that step is here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rag.defaults import ALIGNED_VLM, SAMPLE_SPEC

if TYPE_CHECKING:  # for annotations only: the VLM loads torch when the command runs
    from rag.generator import Generator
    from rag.index_build import IndexSpec


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("demo", help="the main job on offline defaults: sample corpus, index, VLM, cited answers")
    p.add_argument("--spec", default=str(SAMPLE_SPEC), help="index spec to build and query (default: %(default)s)")
    p.add_argument("--model-dir", default=str(ALIGNED_VLM), help="where the aligned VLM is cached")
    p.add_argument("--align-steps", type=int, default=40, help="projector training steps when no model is cached")
    p.add_argument("--questions", type=int, default=6, help="how many test questions to answer")
    p.add_argument("--rebuild", action="store_true", help="regenerate cached artefacts")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Sample corpus -> validated -> default index -> aligned VLM -> cited answers to test questions."""
    from rag.demo import answer_test_questions, prepare
    from rag.index_build import IndexSpec

    started = time.perf_counter()
    spec = IndexSpec.from_file(args.spec)
    if not prepare(spec, rebuild=args.rebuild):
        return 1
    generator = _aligned_vlm(spec, Path(args.model_dir), args.align_steps, args.rebuild)
    answer_test_questions(spec, generator, args.questions)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    return 0


def _aligned_vlm(spec: IndexSpec, model_dir: Path, align_steps: int, rebuild: bool) -> Generator:
    """Step 4: the default VLM with its projector aligned on the corpus images, cached in `model_dir`."""
    from finetune.projector import AlignConfig, save_aligned, train_projector
    from rag.generator import Generator, default_vlm_dir
    from rag.vlm import load_vlm

    if rebuild or not (model_dir / "config.json").is_file():
        print(f"[4/5] aligning the VLM projector on the corpus images ({align_steps} steps) …")
        model, processor = load_vlm(default_vlm_dir())
        log = train_projector(model, processor, spec.corpus, AlignConfig(max_steps=align_steps))
        save_aligned(model, processor, log, model_dir)
        print(f"  validation loss {log.val_loss[0]:.3f} -> {log.val_loss[-1]:.3f} in {log.seconds:.0f} s; "
              f"saved to {model_dir} (loss curve: {model_dir / 'align_loss.png'})")
    else:
        print(f"[4/5] using the aligned VLM in {model_dir}")
        model, processor = load_vlm(model_dir)
    return Generator(model, processor, str(model_dir))
