"""Retrieval benchmark: the sample corpus and the real MedPix 2.0 sample, with baselines.

    python benchmarks/retrieval.py                    # both datasets
    python benchmarks/retrieval.py --dataset sample   # only the sample corpus (builds it and the index if needed)
    python benchmarks/retrieval.py --dataset medpix   # only MedPix (needs ../shared/realdata/medpix2_test)

Writes benchmarks/results/retrieval.json and retrieval.md (command, machine, date, tables).

MedPix protocols (no MedPix text or image is copied into the repository; everything is built in a
temporary folder):
* case retrieval: the query is a case's Findings section; the document is the rest of the case
  (history, exam, differential, diagnosis, treatment, discussion) with its images. Half of the
  cases' queries (seeded) calibrate the fusion weights and selection; the other half are the test.
* image -> caption: documents are the 200 image captions. Images of the calibration half of the
  cases stay attached to their caption documents (the aligner trains on them); images of the test
  half are removed from the index and used as queries, so the image must find its caption through
  the joint space alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rag.corpus import Document, QAItem, read_documents, read_qa, write_jsonl  # noqa: E402
from rag.eval_retrieval import SYSTEMS, System, evaluate_retrieval, format_table  # noqa: E402
from rag.index_build import IndexSpec, build_index  # noqa: E402
from rag.reporting import machine_description, now  # noqa: E402
from rag.retriever import Retriever  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
REALDATA = Path(os.environ.get("MEDRAG_REALDATA", REPO.parent / "shared" / "realdata"))


def run_sample(index_dir: Path, corpus_dir: Path) -> dict:
    spec = IndexSpec.from_file(REPO / "indexes" / "sample.yaml")
    build_seconds = None
    if not (index_dir / "CURRENT").is_file():
        from sample_corpus.build import ensure_sample_corpus

        ensure_sample_corpus(spec.corpus, spec.sample_seed)
        started = time.perf_counter()
        build_index(spec.corpus, index_dir, spec=spec, qa=spec.qa)
        build_seconds = round(time.perf_counter() - started, 1)
    retriever = Retriever.load(index_dir)
    questions = [q for q in read_qa(corpus_dir / "qa.jsonl") if q.split == "test"]
    report = evaluate_retrieval(retriever, questions, corpus_dir)
    report["build_seconds"] = build_seconds or retriever.bundle.manifest.build_seconds
    report["routing"] = retriever.bundle.manifest.routing.to_json()
    report["fusion"] = retriever.bundle.manifest.fusion
    return report


def _medpix_corpus(work: Path, seed: int) -> tuple[list[Document], list[Document], set[str]]:
    from rag.importers.medpix import import_medpix

    root = REALDATA / "medpix2_test"
    report = import_medpix(root / "descriptions_test.jsonl", root / "cases_test.jsonl", root / "images",
                           work / "medpix", copy_images=True)
    print(report.summary())
    docs = read_documents(work / "medpix" / "corpus.jsonl")
    cases = [d for d in docs if d.metadata["kind"] == "case"]
    images = [d for d in docs if d.metadata["kind"] == "image"]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cases))
    calibration_cases = {cases[i].metadata["case_id"] for i in order[: len(cases) // 2]}
    return cases, images, calibration_cases


def run_medpix(work: Path, seed: int = 0) -> dict:
    cases, images, calibration_cases = _medpix_corpus(work, seed)
    base = work / "medpix"
    out: dict = {}

    # --- case retrieval: Findings -> rest of the case
    case_docs, questions = [], []
    for doc in cases:
        sections = doc.metadata["sections"]
        findings = sections.get("findings", "").strip()
        rest = "\n\n".join(f"{k.replace('_', ' ').title()}: {v}" for k, v in sections.items()
                           if k != "findings" and v)
        if not findings or not rest:
            continue
        case_docs.append(Document(id=doc.id, domain="radiology", title=doc.title, text=rest, images=doc.images,
                                  source=doc.source, metadata={"case_id": doc.metadata["case_id"]}))
        split = "val" if doc.metadata["case_id"] in calibration_cases else "test"
        questions.append(QAItem(id=f"{doc.id}-findings", question=findings, answer=doc.title, doc_id=doc.id,
                                domain="radiology", split=split))
    write_jsonl(base / "cases.jsonl", case_docs)
    write_jsonl(base / "cases_qa.jsonl", questions)
    build_index(base / "cases.jsonl", work / "idx-cases", qa=base / "cases_qa.jsonl", progress=False)
    retriever = Retriever.load(work / "idx-cases")
    test = [q for q in questions if q.split == "test"]
    systems = tuple(s for s in SYSTEMS if s.name in ("domain-aware", "bm25 only", "dense text only"))
    out["case_retrieval"] = evaluate_retrieval(retriever, test, base, systems=systems, progress=False)
    out["case_retrieval"]["fusion"] = retriever.bundle.manifest.fusion
    out["case_retrieval"]["n_documents"] = len(case_docs)

    # --- image -> caption through the joint space
    caption_docs, image_questions = [], []
    for doc in images:
        keep_image = doc.metadata["case_id"] in calibration_cases
        caption_docs.append(Document(id=doc.id, domain="radiology", title=doc.title, text=doc.text,
                                     images=doc.images if keep_image else [], source=doc.source,
                                     metadata={"case_id": doc.metadata["case_id"]}))
        image_questions.append(QAItem(id=f"{doc.id}-img", question="", answer=doc.text, doc_id=doc.id,
                                      domain="radiology", split="val" if keep_image else "test",
                                      image=doc.images[0]))
    write_jsonl(base / "captions.jsonl", caption_docs)
    build_index(base / "captions.jsonl", work / "idx-captions", progress=False)
    retriever = Retriever.load(work / "idx-captions")
    test_images = [q for q in image_questions if q.split == "test"]
    joint_only = (System("joint (image->caption)", ("joint",), False),)
    out["image_to_caption"] = evaluate_retrieval(retriever, test_images, base, systems=joint_only, progress=False)
    out["image_to_caption"]["n_documents"] = len(caption_docs)
    out["image_to_caption"]["chance_recall@10"] = round(10 / len(caption_docs), 4)
    out["image_to_caption"]["aligner"] = retriever.bundle.manifest.heads.aligner
    return out


def markdown(results: dict, command: str) -> str:
    lines = ["# Retrieval benchmark", "", f"- command: `{command}`", f"- machine: {machine_description()}",
             f"- date: {now()}",
             f"- git commit: {results.get('commit', '?')}", ""]
    if "sample" in results:
        s = results["sample"]
        lines += ["## Sample corpus, test split", "",
                  f"{s['n_questions']} questions; index built in {s['build_seconds']} s; routing {s['routing']}; "
                  f"fusion weights {s['fusion']}", "", "```", format_table(s), "```", ""]
    if "medpix" in results:
        m = results["medpix"]
        lines += ["## MedPix 2.0 test sample: case retrieval (Findings -> rest of the case)", "",
                  f"{m['case_retrieval']['n_questions']} test cases (queries) over {m['case_retrieval']['n_documents']} "
                  f"case documents; fusion weights {m['case_retrieval']['fusion']}", "",
                  "```", format_table(m["case_retrieval"]), "```", "",
                  "## MedPix 2.0: image -> caption (joint space only, held-out images)", "",
                  f"{m['image_to_caption']['n_questions']} query images over {m['image_to_caption']['n_documents']} "
                  f"captions; chance Recall@10 = {m['image_to_caption']['chance_recall@10']}", "",
                  "```", format_table(m["image_to_caption"]), "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["sample", "medpix", "all"], default="all")
    parser.add_argument("--index", default=str(REPO / "indexes" / "sample"))
    parser.add_argument("--corpus-dir", default=str(REPO / "data" / "sample"))
    parser.add_argument("--out", default=str(RESULTS / "retrieval"))
    args = parser.parse_args()
    results: dict = {}
    try:
        results["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    if args.dataset in ("sample", "all"):
        results["sample"] = run_sample(Path(args.index), Path(args.corpus_dir))
        print(format_table(results["sample"]))
    if args.dataset in ("medpix", "all"):
        if not (REALDATA / "medpix2_test").is_dir():
            print(f"skipping MedPix: {REALDATA / 'medpix2_test'} not found", file=sys.stderr)
        else:
            with tempfile.TemporaryDirectory() as work:
                results["medpix"] = run_medpix(Path(work))
            print(format_table(results["medpix"]["case_retrieval"]))
            print(format_table(results["medpix"]["image_to_caption"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(results, "python " + " ".join(sys.argv)), encoding="utf-8")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
