"""The steps of `medrag demo` that build and answer, on the offline defaults.

    1. the sample corpus (generated, or the cached one)    2. validated
    3. the default index (built, or the cached one)         5. test questions answered with citations

Step 4 loads the VLM (`rag.cli.demo`), which hands the generator to `answer_test_questions`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rag.console import print_answer, print_index_info
from rag.corpus import format_problems, read_qa, validate_corpus, validate_qa
from rag.generator import Generator
from rag.index_build import IndexSpec, build_index, bundle_info
from rag.pipeline import MedRAG
from rag.retriever import Retriever
from sample_corpus.build import SampleSummary, build_sample_corpus, summary_table


def prepare(spec: IndexSpec, rebuild: bool = False) -> bool:
    """Steps 1-3: the spec's sample corpus and index, cached unless `rebuild`. False (problems printed to
    stderr) when the corpus does not validate."""
    corpus_dir = Path(spec.corpus).parent
    if rebuild or not (corpus_dir / "summary.json").is_file():
        print(f"[1/5] building the sample corpus in {corpus_dir} …")
        summary = build_sample_corpus(corpus_dir, seed=spec.sample_seed)
    else:
        print(f"[1/5] using the cached sample corpus in {corpus_dir} (--rebuild to regenerate)")
        data = json.loads((corpus_dir / "summary.json").read_text(encoding="utf-8"))
        summary = SampleSummary(**{k: data[k] for k in ("out_dir", "seed", "seconds", "documents", "images",
                                                          "query_images", "qa")})
    print(summary_table(summary))

    print("[2/5] validating")
    for report in (validate_corpus(corpus_dir / "corpus.jsonl"), validate_corpus(corpus_dir / "corpus_added.jsonl"),
                   validate_qa(corpus_dir / "qa.jsonl")):
        print(f"  {report.path}: {report.records} records, " + ("no problems" if report.ok else "PROBLEMS"))
        if not report.ok:
            print(format_problems(report, limit=10), file=sys.stderr)
            return False

    index_dir = Path(spec.out)
    if rebuild or not (index_dir / "CURRENT").is_file():
        print(f"[3/5] building the default index in {index_dir} …")
        build_index(spec.corpus, index_dir, spec=spec, qa=spec.qa)
    else:
        print(f"[3/5] using the cached index in {index_dir}")
    print_index_info(bundle_info(index_dir))
    return True


def answer_test_questions(spec: IndexSpec, generator: Generator, questions: int = 6) -> None:
    """Step 5: up to `questions` closed test questions (one per domain and with/without image), one open
    question, and one from outside the corpus, answered by `generator` over the spec's index."""
    print("[5/5] answering test questions from retrieved evidence")
    corpus_dir = Path(spec.corpus).parent
    rag = MedRAG(Retriever.load(spec.out), generator)
    tests = [q for q in read_qa(corpus_dir / "qa.jsonl") if q.split == "test"]
    shown: set[tuple[str, bool]] = set()
    for item in tests:
        key = (item.domain, bool(item.image))
        if key in shown or len(shown) >= questions:
            continue
        shown.add(key)
        image = str(corpus_dir / item.image) if item.image else None
        print(f"\nQ [{item.domain}{', image ' + item.image if image else ''}]: {item.question}")
        print("  options: " + " | ".join(item.options or []))
        print_answer(rag.ask(item.question, image=image, options=item.options), gold=item.answer)
    print("\nQ (open, generated): " + tests[0].question)
    print_answer(rag.ask(tests[0].question, image=str(corpus_dir / tests[0].image) if tests[0].image else None))
    print("\nQ (outside the corpus): What is the capital of France?")
    print_answer(rag.ask("What is the capital of France?"))
