"""`medrag demo`: the main job on offline defaults, from an empty checkout to cited answers.

The building and answering steps are `rag.demo`'s. The VLM is the default one with the projector and
Stage A adapter it ships with (`rag.shipped`), so the demo trains nothing.
"""

from __future__ import annotations

import argparse
import time

from rag.defaults import SAMPLE_SPEC


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("demo", help="the main job on offline defaults: sample corpus, index, VLM, cited answers")
    p.add_argument("--spec", default=str(SAMPLE_SPEC), help="index spec to build and query (default: %(default)s)")
    p.add_argument("--generator", help="VLM to answer with (default: the default VLM and its shipped weights)")
    p.add_argument("--questions", type=int, default=6, help="how many test questions to answer")
    p.add_argument("--rebuild", action="store_true", help="regenerate cached artefacts")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Sample corpus -> validated -> default index -> the trained default VLM -> cited answers to test questions."""
    from rag.defaults import resolve_generator_name
    from rag.demo import answer_test_questions, prepare
    from rag.generator import create_generator
    from rag.index_build import IndexSpec

    started = time.perf_counter()
    spec = IndexSpec.from_file(args.spec)
    if not prepare(spec, rebuild=args.rebuild):
        return 1
    name = resolve_generator_name(args.generator)
    print(f"[4/5] loading the VLM {name}")
    answer_test_questions(spec, create_generator(name, progress=False), args.questions)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    return 0
