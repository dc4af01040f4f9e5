"""`medrag corpus validate|sample` and `medrag import medpix|covid-cxr`: corpora in, checked, generated."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rag.cli.output import print_json
from rag.defaults import SAMPLE_DIR


def register(commands: argparse._SubParsersAction) -> None:
    corpus = commands.add_parser("corpus", help="validate or generate corpora").add_subparsers(dest="action", required=True)
    for add in (_add_validate, _add_sample):
        add(corpus)
    imports = commands.add_parser("import", help="import public datasets into the corpus format").add_subparsers(
        dest="source", required=True)
    for add in (_add_import_medpix, _add_import_covid):
        add(imports)


# --- corpus validate ------------------------------------------------------------------------------

def _add_validate(corpus: argparse._SubParsersAction) -> None:
    p = corpus.add_parser("validate", help="check a corpus JSONL (and optionally a QA JSONL); exit 1 on any problem")
    p.add_argument("corpus", help="corpus JSONL file; image paths are relative to its folder")
    p.add_argument("--qa", help="QA JSONL file to check against the corpus")
    p.add_argument("--extra-corpus", action="append", help="further corpus files whose ids QA items may cite")
    p.add_argument("--no-images", action="store_true", help="skip opening image files (faster)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_corpus_validate)


def cmd_corpus_validate(args: argparse.Namespace) -> int:
    from rag.corpus import format_problems, read_documents, validate_corpus, validate_qa

    reports = [validate_corpus(args.corpus, check_images=not args.no_images)]
    if args.qa:
        doc_ids = None  # a broken corpus has no trustworthy ids: check the QA file on its own
        if reports[0].ok:
            doc_ids = {d.id for d in read_documents(args.corpus, check_images=False)}
            for extra in args.extra_corpus or []:
                doc_ids |= {d.id for d in read_documents(extra, check_images=False)}
        reports.append(validate_qa(args.qa, doc_ids=doc_ids, check_images=not args.no_images))
    ok = all(r.ok for r in reports)
    if args.json:
        print_json({"ok": ok, "files": [
            {"path": r.path, "records": r.records, "problems": [
                {"line": p.line, "id": p.record_id, "message": p.message} for p in r.problems]}
            for r in reports]})
    else:
        for r in reports:
            if r.ok:
                print(f"OK {r.path}: {r.records} records, no problems")
            else:
                print(format_problems(r), file=sys.stderr)
    return 0 if ok else 1


# --- corpus sample --------------------------------------------------------------------------------

def _add_sample(corpus: argparse._SubParsersAction) -> None:
    p = corpus.add_parser("sample", help="generate the multi-domain sample corpus with images and a QA set")
    p.add_argument("--out", default=str(SAMPLE_DIR), help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images-per-doc", type=int, default=4)
    p.add_argument("--query-images-per-doc", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="drawing processes (default: up to 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_corpus_sample)


def cmd_corpus_sample(args: argparse.Namespace) -> int:
    from sample_corpus.build import build_sample_corpus, summary_table

    summary = build_sample_corpus(args.out, seed=args.seed, images_per_doc=args.images_per_doc,
                                  query_images_per_doc=args.query_images_per_doc, workers=args.workers,
                                  progress=not args.json)
    if args.json:
        print_json(summary.to_json())
    else:
        print(f"Sample corpus written to {args.out} in {summary.seconds:.1f} s (seed {args.seed})")
        print(summary_table(summary))
    return 0


# --- import medpix | covid-cxr --------------------------------------------------------------------

def _add_import_medpix(imports: argparse._SubParsersAction) -> None:
    p = imports.add_parser("medpix", help="MedPix 2.0 (descriptions + cases JSONL + images)")
    p.add_argument("--root", help="folder holding descriptions_test.jsonl, cases_test.jsonl and images/")
    p.add_argument("--descriptions")
    p.add_argument("--cases")
    p.add_argument("--images")
    p.add_argument("--out", required=True, help="output folder for corpus.jsonl and import_report.json")
    p.add_argument("--no-copy-images", dest="copy_images", action="store_false",
                   help="refer to the images in place instead of copying them into OUT/images "
                        "(only possible when the images folder is inside OUT)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import_medpix)


def cmd_import_medpix(args: argparse.Namespace) -> int:
    from rag.importers.medpix import import_medpix

    root = Path(args.root) if args.root else None
    descriptions = args.descriptions or (root / "descriptions_test.jsonl" if root else None)
    cases = args.cases or (root / "cases_test.jsonl" if root else None)
    images = args.images or (root / "images" if root else None)
    if not (descriptions and cases and images):
        raise SystemExit("medrag import medpix: give --root DIR or all of --descriptions, --cases and --images")
    report = import_medpix(Path(descriptions), Path(cases), Path(images), Path(args.out), copy_images=args.copy_images)
    return _report_import(report, args.json)


def _add_import_covid(imports: argparse._SubParsersAction) -> None:
    p = imports.add_parser("covid-cxr", help="COVID-19 image data collection (metadata.csv + images)")
    p.add_argument("--metadata", required=True, help="metadata.csv")
    p.add_argument("--images", required=True, help="images folder")
    p.add_argument("--out", required=True, help="output folder for corpus.jsonl and import_report.json")
    p.add_argument("--no-copy-images", dest="copy_images", action="store_false",
                   help="refer to the images in place (only possible when the images folder is inside OUT)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import_covid)


def cmd_import_covid(args: argparse.Namespace) -> int:
    from rag.importers.covid_cxr import import_covid_cxr

    report = import_covid_cxr(Path(args.metadata), Path(args.images), Path(args.out), copy_images=args.copy_images)
    return _report_import(report, args.json)


def _report_import(report: Any, as_json: bool) -> int:
    """Both importers' reports print alike; nothing imported is a failure (exit 1)."""
    if as_json:
        print_json(report.to_json())
    else:
        print(report.summary())
    return 0 if report.imported else 1
