"""`medrag eval retrieval|scoring|qa`: retrieval metrics against baselines, the choice of a model's
scoring rule, and the factuality experiment."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rag.cli.output import print_json
from rag.defaults import ALIGNED_VLM, SAMPLE_INDEX, SAMPLE_QA, resolve_generator_name


def register(commands: argparse._SubParsersAction) -> None:
    evals = commands.add_parser("eval", help="measure retrieval and answering").add_subparsers(dest="what", required=True)
    for add in (_add_retrieval, _add_scoring, _add_qa):
        add(evals)


# --- eval retrieval -------------------------------------------------------------------------------

def _add_retrieval(evals: argparse._SubParsersAction) -> None:
    p = evals.add_parser("retrieval", help="Recall@1/5/10, MRR, routing accuracy, latency; with baselines")
    p.add_argument("--index", default=str(SAMPLE_INDEX))
    p.add_argument("--qa", required=True, help="QA JSONL (image paths relative to it)")
    # No list default: argparse would append the given splits to it. Not given means ["test"].
    p.add_argument("--split", action="append", default=None, help="split(s) to evaluate (default: test)")
    p.add_argument("--system", action="append", help="only these systems (default: all)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_retrieval)


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from rag.corpus import read_qa
    from rag.eval_retrieval import SYSTEMS, evaluate_retrieval, format_table
    from rag.retriever import Retriever

    splits = args.split or ["test"]
    retriever = Retriever.load(args.index)
    questions = [q for q in read_qa(args.qa) if q.split in splits]
    if not questions:
        raise ValueError(f"{args.qa} has no questions in split(s) {splits}")
    systems = tuple(s for s in SYSTEMS if not args.system or s.name in args.system)
    report = evaluate_retrieval(retriever, questions, Path(args.qa).parent, k=args.k, systems=systems,
                                progress=not args.json)
    report.update({"index": str(args.index), "qa": str(args.qa), "splits": splits})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_json(report) if args.json else print(format_table(report))
    return 0


# --- eval scoring --------------------------------------------------------------------------------

def _add_scoring(evals: argparse._SubParsersAction) -> None:
    p = evals.add_parser("scoring", help="compare the option-scoring rules (sum, mean, calibrated, pmi) on val "
                         "questions, with retrieved and with gold evidence; --save keeps the best with the model")
    p.add_argument("--index", default=str(SAMPLE_INDEX))
    p.add_argument("--qa", default=str(SAMPLE_QA), help="QA JSONL (image paths relative to it)")
    p.add_argument("--generator", help="VLM to score with (default: the default VLM)")
    p.add_argument("--questions", type=int, default=120, help="val questions, stratified by domain (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", action="store_true", help="write the choice to the model folder's scoring.json")
    p.add_argument("--ship", action="store_true", help="with the default VLM: also ship the choice with its weights "
                   "(rag/weights: scoring.json and the model card's figures); implies --save")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_scoring)


def cmd_eval_scoring(args: argparse.Namespace) -> int:
    from rag.eval_scoring import choose_rule
    from rag.scoring import format_rule_table
    from rag.generator import model_folder
    from rag.pipeline import MedRAG
    from rag.vlm import DEFAULT_VLM

    generator = resolve_generator_name(args.generator)
    if args.ship and generator != DEFAULT_VLM:
        raise ValueError(f"--ship updates the default VLM's shipped weights; leave out --generator (got {generator!r})")
    folder = model_folder(generator)
    save = args.save or args.ship
    if save and not folder.is_dir():
        raise ValueError(f"--save writes into the model's folder; {generator!r} is not a folder")
    rag = MedRAG.load(args.index, generator=generator)
    report = choose_rule(rag, str(folder), args.qa, args.questions, args.seed, save=save, progress=not args.json)
    if args.ship:
        from rag.shipped import ship_scoring

        command = f"medrag eval scoring --index {args.index} --qa {args.qa} --questions {args.questions} --ship"
        report["shipped_to"] = str(ship_scoring(folder, command))
    if args.json:
        print_json(report)
    else:
        print(format_rule_table(report))
        print(f"chosen: {report['summary']}" + (f" (saved to {folder}/scoring.json)" if save else "")
              + (f"; shipped in {report['shipped_to']}" if args.ship else ""))
    return 0


# --- eval qa --------------------------------------------------------------------------------------

def _add_qa(evals: argparse._SubParsersAction) -> None:
    p = evals.add_parser("qa", help="the factuality experiment: base, Stage A, Stage A + B and knowledge SFT, each "
                         "without evidence, with retrieved and with gold evidence, on the test and added splits; "
                         "JSON, Markdown and a plot")
    p.add_argument("--index", default=str(SAMPLE_INDEX), help="index for the test split")
    p.add_argument("--added-index", help="index that also holds the documents added after training")
    p.add_argument("--qa", default=str(SAMPLE_QA))
    p.add_argument("--base", default=str(ALIGNED_VLM), help="the untuned (projector-aligned) VLM (default: %(default)s)")
    p.add_argument("--reader", help="Stage A model (e.g. data/models/medvlm-reader/merged)")
    p.add_argument("--rag-pt", help="Stage A + B model (e.g. data/models/medvlm-ragpt/merged)")
    p.add_argument("--sft", help="knowledge-SFT model (e.g. data/models/medvlm-sft/merged)")
    p.add_argument("--splits", default="test,added", help="comma-separated: test, added (default: %(default)s)")
    p.add_argument("--questions", type=int, default=0, help="questions per split, stratified by domain (0: all)")
    p.add_argument("--generate", type=int, default=10, help="questions per split also answered in free text")
    p.add_argument("--replacement", default="other-domain", choices=["noise", "other-domain", "mixed"],
                   help="what replaces the image for the copy-reference rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", help="JSON list of earlier steps {step, command, seconds} to put in the report")
    p.add_argument("--note", action="append", help="a note for the report (repeatable)")
    p.add_argument("--out", default="benchmarks/results", help="report folder (default: %(default)s)")
    p.add_argument("--name", default="factuality", help="report file stem (default: %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_qa)


def cmd_eval_qa(args: argparse.Namespace) -> int:
    from rag.eval_qa import EvalSettings, run_factuality

    steps = json.loads(Path(args.steps).read_text(encoding="utf-8")) if args.steps else []
    settings = EvalSettings(generate_n=args.generate, replacement=args.replacement)
    models = {"base": args.base, "reader": args.reader, "rag_pt": args.rag_pt, "sft": args.sft}
    report, paths = run_factuality(
        args.qa, {k: v for k, v in models.items() if v}, args.index, added_index=args.added_index,
        splits=args.splits.split(","), questions=args.questions, seed=args.seed, settings=settings,
        steps=steps, notes=args.note or [], command="medrag " + " ".join(sys.argv[1:]), out=args.out,
        name=args.name, progress=not args.json)
    if args.json:
        print_json({k: v for k, v in report.items() if k != "outcomes"})
    else:
        print(Path(paths[1]).read_text(encoding="utf-8"))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0
