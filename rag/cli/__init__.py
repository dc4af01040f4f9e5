"""The `medrag` command line. Heavy libraries are imported inside the commands so `--help` is instant."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

DEFAULT_SAMPLE_DIR = Path("data/sample")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# --- corpus ---------------------------------------------------------------------------------------

def cmd_corpus_validate(args: argparse.Namespace) -> int:
    from rag.corpus import format_problems, validate_corpus, validate_qa, read_documents

    reports = [validate_corpus(args.corpus, check_images=not args.no_images)]
    if args.qa:
        doc_ids = None
        if reports[0].ok:
            doc_ids = {d.id for d in read_documents(args.corpus, check_images=False)}
            for extra in args.extra_corpus or []:
                doc_ids |= {d.id for d in read_documents(extra, check_images=False)}
        reports.append(validate_qa(args.qa, doc_ids=doc_ids, check_images=not args.no_images))
    ok = all(r.ok for r in reports)
    if args.json:
        _print_json({"ok": ok, "files": [
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


def cmd_corpus_sample(args: argparse.Namespace) -> int:
    from rag.sample_corpus.build import build_sample_corpus, summary_table

    summary = build_sample_corpus(args.out, seed=args.seed, images_per_doc=args.images_per_doc,
                                  query_images_per_doc=args.query_images_per_doc, workers=args.workers,
                                  progress=not args.json)
    if args.json:
        _print_json(summary.to_json())
    else:
        print(f"Sample corpus written to {args.out} in {summary.seconds:.1f} s (seed {args.seed})")
        print(summary_table(summary))
    return 0


# --- importers ------------------------------------------------------------------------------------

def _report_import(report: Any, as_json: bool) -> int:
    if as_json:
        _print_json(report.to_json())
    else:
        print(report.summary())
    return 0 if report.imported else 1


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


def cmd_import_covid(args: argparse.Namespace) -> int:
    from rag.importers.covid_cxr import import_covid_cxr

    report = import_covid_cxr(Path(args.metadata), Path(args.images), Path(args.out), copy_images=args.copy_images)
    return _report_import(report, args.json)


# --- index ----------------------------------------------------------------------------------------

DEFAULT_SPEC = Path("indexes/sample.yaml")
# `index build` flag (argparse dest) -> field of the spec's vector_index block
VECTOR_INDEX_FLAGS = {"index_type": "type", "shards": "shards", "nlist": "nlist", "nprobe": "nprobe",
                      "hnsw_m": "hnsw_m", "ef_construction": "ef_construction", "ef_search": "ef_search",
                      "pq_m": "pq_m", "pq_bits": "pq_bits", "train_size": "train_size"}


def _spec_from_args(args: argparse.Namespace):
    from rag.index_build import IndexSpec

    from rag.vector_index import VectorIndexConfig

    spec = IndexSpec.from_file(args.spec) if args.spec else IndexSpec()
    for field in ("corpus", "qa", "out", "text_encoder", "image_encoder", "seed"):
        value = getattr(args, field, None)
        if value is not None:
            setattr(spec, field, value)
    overrides = {key: getattr(args, flag) for flag, key in VECTOR_INDEX_FLAGS.items() if getattr(args, flag, None) is not None}
    if overrides:
        spec.vector_index = VectorIndexConfig.from_json({**spec.vector_index.to_json(), **overrides}, "medrag index build")
    if not spec.corpus:
        raise ValueError("medrag index build: give --corpus C.jsonl or --spec FILE naming a corpus")
    if not spec.out:
        raise ValueError("medrag index build: give --out DIR (or `out:` in the spec)")
    return spec


def ensure_sample_corpus(spec) -> None:
    """A spec with `generate_sample: true` creates the sample corpus when it is missing."""
    from rag.sample_corpus.build import build_sample_corpus

    if spec.generate_sample and not Path(spec.corpus).is_file():
        print(f"{spec.corpus} not found: generating the sample corpus (seed {spec.sample_seed})", file=sys.stderr)
        build_sample_corpus(Path(spec.corpus).parent, seed=spec.sample_seed)


def cmd_index_build(args: argparse.Namespace) -> int:
    from rag.index_build import build_index, bundle_info

    spec = _spec_from_args(args)
    ensure_sample_corpus(spec)
    started = time.perf_counter()
    try:
        build_index(spec.corpus, spec.out, spec=spec, qa=spec.qa, on_bad_record="skip" if args.skip_bad else "stop",
                    progress=not args.json, engine=args.engine, ray_address=args.ray_address, device=args.device)
    except ImportError as exc:
        if args.engine != "ray":
            raise
        print(f"medrag: error: {exc}", file=sys.stderr)  # the message says how to install Ray
        return 2
    info = bundle_info(spec.out)
    info["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        _print_json(info)
    else:
        _print_info(info)
    return 0


def _print_info(info: dict) -> None:
    print(f"index {info['path']} ({info['version']}, format {info['format_version']})")
    enc = info["encoders"]
    print(f"  encoders: text {enc['text']['name']} [{enc['text']['fingerprint']}], "
          f"image {enc['image']['name']} [{enc['image']['fingerprint']}]")
    counts = info.get("counts") or {}
    print(f"  {counts.get('documents', 0)} documents, {counts.get('images', 0)} images")
    for domain, c in (counts.get("per_domain") or {}).items():
        print(f"    {domain:<14} docs {c['documents']:>5}  text {c['text']:>5}  joint {c['joint']:>5}  image {c['image']:>6}")
    vector_index = info.get("vector_index") or {}
    if vector_index:
        built = sorted({t for c in vector_index.get("channels", {}).values() for t in c["type"]})
        print(f"  vector index: {vector_index['type']} x{vector_index['shards']} shard(s)"
              + (f", built as {'/'.join(built)}" if built and built != [vector_index["type"]] else ""))
    print(f"  router val accuracy: {info['heads']['router_val_accuracy']}, "
          f"aligner val recall@1: {info['heads']['aligner_val_recall_at_1']}")
    routing = info.get("routing") or {}
    print(f"  routing threshold {routing.get('threshold')} (calibrated on {routing.get('calibrated_on', 0)} val questions)")
    sel = info.get("selection") or {}
    print(f"  selection: rule {sel.get('rule')}, gamma {sel.get('gamma')}, rho {sel.get('rho')}, k {sel.get('k')}, "
          f"alpha {sel.get('alpha')}")
    if info.get("seconds") is not None:
        print(f"  built in {info['seconds']} s")


def cmd_index_info(args: argparse.Namespace) -> int:
    from rag.index_build import bundle_info

    info = bundle_info(args.index)
    _print_json(info) if args.json else _print_info(info)
    return 0


def cmd_index_verify(args: argparse.Namespace) -> int:
    from rag.index_bundle import verify_bundle

    problems = verify_bundle(args.index, encoders=not args.no_encoders)
    if args.json:
        _print_json({"path": str(args.index), "ok": not problems, "problems": problems})
    elif problems:
        print("\n".join([f"{len(problems)} problem(s) in {args.index}:"] + [f"  {p}" for p in problems]),
              file=sys.stderr)
    else:
        checked = "pointer, manifest, checksums, FAISS indexes, counts" + ("" if args.no_encoders else ", encoders")
        print(f"OK {args.index}: {checked}")
    return 1 if problems else 0


def cmd_index_add(args: argparse.Namespace) -> int:
    from rag.index_build import add_documents

    result = add_documents(args.index, args.corpus, on_bad_record="skip" if args.skip_bad else "stop",
                           progress=not args.json)
    _print_json(result) if args.json else print(f"added {result['added']} documents ({result['images']} images); "
                                                f"{result['documents_total']} in the index")
    return 0


def cmd_index_remove(args: argparse.Namespace) -> int:
    from rag.index_build import remove_documents

    ids = list(args.ids)
    if args.ids_file:
        ids += [line.strip() for line in Path(args.ids_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError("medrag index remove: name document ids, or --ids-file FILE")
    result = remove_documents(args.index, ids)
    _print_json(result) if args.json else print(f"removed {result['removed']} documents; "
                                                f"{result['documents_total']} in the index")
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from rag.retriever import Retriever
    from rag.selection import select_hits

    search_params = {k: v for k, v in (("nprobe", args.nprobe), ("ef_search", args.ef_search)) if v is not None}
    retriever = Retriever.load(args.index, search_params=search_params)
    filters = dict(f.split("=", 1) for f in args.filter or [])
    result = retriever.retrieve(args.question, image=args.image, k=args.k, domains=args.domain or None,
                                channels=args.channel or None, routing=not args.no_routing, filters=filters or None)
    kept, selection = select_hits(result.hits, retriever.bundle.selection, rule=args.rule)
    if args.json:
        data = result.to_json()
        data["selection"] = {"k": selection.k, "rule": selection.rule, "reason": selection.reason}
        _print_json(data)
        return 0
    r = result.routing
    print(f"routed to {r.domain} (confidence {r.confidence:.2f}, {r.mode}; searched {', '.join(r.searched)})")
    print(f"channels: {', '.join(result.channels)}; {result.timings['total'] * 1000:.1f} ms")
    for i, hit in enumerate(result.hits, 1):
        mark = "*" if i <= selection.k else " "
        print(f"{mark}{i:>2}. {hit.score:.4f}  {hit.doc.id:<28} {hit.doc.title[:60]}")
    print(f"selection: keep {selection.k} ({selection.reason})")
    return 0


# --- eval ---------------------------------------------------------------------------------------

def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from rag.corpus import read_qa
    from rag.eval_retrieval import SYSTEMS, evaluate_retrieval, format_table
    from rag.retriever import Retriever

    retriever = Retriever.load(args.index)
    questions = [q for q in read_qa(args.qa) if q.split in args.split]
    if not questions:
        raise ValueError(f"{args.qa} has no questions in split(s) {args.split}")
    systems = tuple(s for s in SYSTEMS if not args.system or s.name in args.system)
    report = evaluate_retrieval(retriever, questions, Path(args.qa).parent, k=args.k, systems=systems,
                                progress=not args.json)
    report.update({"index": str(args.index), "qa": str(args.qa), "splits": args.split})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print_json(report) if args.json else print(format_table(report))
    return 0


# --- answering --------------------------------------------------------------------------------------

DEFAULT_ALIGNED_VLM = Path("data/models/medvlm-sample")


def resolve_generator_name(name: str | None) -> str:
    """No --generator: the projector trained by `medrag demo` if it exists, else the untrained default."""
    from rag.vlm import DEFAULT_VLM

    if name:
        return name
    if (DEFAULT_ALIGNED_VLM / "config.json").is_file():
        return str(DEFAULT_ALIGNED_VLM)
    print(f"note: {DEFAULT_ALIGNED_VLM} not found, using {DEFAULT_VLM} with an untrained projector; "
          "run `medrag finetune align` (or `medrag demo`) to train it", file=sys.stderr)
    return DEFAULT_VLM


def print_answer(answer: Any, gold: str | None = None) -> None:
    where = f"routed to {answer.domain} ({answer.domain_confidence:.2f})" if answer.domain else "no retrieval"
    print(f"  {where}; kept {len(answer.evidence)} evidence item(s): {answer.selection}")
    cited = {c.number for c in answer.citations}
    for e in answer.evidence:
        mark = "*" if e.number in cited else " "
        print(f"   {mark}[{e.number}] {e.score:.4f} {e.id:<28} {e.title[:56]}")
    print(f"  A: {answer.text}" + (f"   (gold: {gold})" if gold is not None else ""))
    if answer.citations:
        print("  cites: " + ", ".join(f"[{c.number}] {c.evidence_id} ({c.how})" for c in answer.citations))
    print(f"  {answer.timings['total'] * 1000:.0f} ms ({answer.mode})")


def cmd_ask(args: argparse.Namespace) -> int:
    from rag.pipeline import MedRAG

    rag = MedRAG.load(args.index, generator=resolve_generator_name(args.generator))
    answer = rag.ask(args.question, image=args.image, options=args.option or None, mode=args.mode, k=args.k,
                     retrieval=not args.no_retrieval, abstain=not args.no_abstain, max_new_tokens=args.max_new_tokens)
    if args.json:
        _print_json(answer.to_json())
    else:
        print(f"Q: {args.question}")
        print_answer(answer)
    return 0


def cmd_finetune_align(args: argparse.Namespace) -> int:
    from finetune.projector import AlignConfig, save_aligned, train_projector
    from rag.generator import default_vlm_dir
    from rag.vlm import load_vlm

    model, processor = load_vlm(args.base or default_vlm_dir())
    config = AlignConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps,
                         val_fraction=args.val_fraction, eval_every=args.eval_every, seed=args.seed)
    log = train_projector(model, processor, args.corpus, config, progress=not args.json)
    out = save_aligned(model, processor, log, args.out)
    summary = {"out": str(out), "steps": len(log.steps), "seconds": round(log.seconds, 1), "n_train": log.n_train,
               "n_val": log.n_val, "val_loss_first": round(log.val_loss[0], 4), "val_loss_last": round(log.val_loss[-1], 4),
               "plot": str(out / "align_loss.png")}
    if args.json:
        _print_json(summary)
    else:
        print(f"projector trained for {summary['steps']} steps in {summary['seconds']} s on {log.n_train} pairs; "
              f"validation loss {summary['val_loss_first']} -> {summary['val_loss_last']}; saved to {out} "
              f"(loss curve: {summary['plot']})")
    return 0


DEFAULT_PAIRS = Path("data/finetune/pairs")
DEFAULT_RAGPT = Path("data/models/medvlm-ragpt")
DEFAULT_SFT = Path("data/models/medvlm-sft")


def _qa_split(path: str, splits: list[str], n: int, seed: int) -> list:
    from finetune.pairs import stratified_sample
    from rag.corpus import read_qa

    items = [q for q in read_qa(path) if q.split in splits and q.options and q.answer in q.options]
    if not items:
        raise ValueError(f"{path} has no closed questions (answer among the options) in split(s) {splits}")
    return stratified_sample(items, n, seed)


def cmd_finetune_pairs(args: argparse.Namespace) -> int:
    from finetune.pairs import PairSettings, build_pairs, save_pairs
    from rag.pipeline import MedRAG

    settings = PairSettings(n_questions=args.questions, k=args.k, replacement=args.replacement, seed=args.seed)
    items = _qa_split(args.qa, [args.split], args.questions, args.seed)
    rag = MedRAG.load(args.index, generator=resolve_generator_name(args.generator))
    rows, summary, traces = build_pairs(rag, items, Path(args.qa).parent, settings, progress=not args.json)
    out = save_pairs(rows, summary, traces, Path(args.out))
    if args.json:
        _print_json({"out": str(out), **asdict(summary)})
    else:
        print(f"{len(rows)} preference pairs from {summary.questions} {args.split} questions "
              f"({summary.image_questions} with an image) in {summary.seconds:.0f} s -> {out}")
        for kind, count in summary.counts.items():
            print(f"  {kind:<18} {count}")
        print(f"  accuracy with retrieval {summary.accuracy_with_retrieval:.3f}, without "
              f"{summary.accuracy_without_retrieval:.3f}; evidence items per prompt {summary.evidence_items}")
    return 0


def _tune_settings(args: argparse.Namespace):
    from finetune.lora import TuneSettings

    return TuneSettings.load(args.config, learning_rate=args.lr, epochs=args.epochs, max_steps=args.max_steps,
                             batch_size=args.batch_size, grad_accum=args.grad_accum, lora_rank=args.lora_rank,
                             lora_alpha=args.lora_alpha, lora_targets=args.lora_targets, save_steps=args.save_steps,
                             seed=args.seed, beta=getattr(args, "beta", None))


def _report_tuning(result: dict, as_json: bool) -> int:
    info = result["info"]
    summary = {"adapter": str(result.get("adapter")), "merged": str(result.get("merged")),
               "plot": str(result.get("plot")), **{k: v for k, v in info.items() if k != "history"},
               "final_loss": info["history"][-1]["loss"] if info.get("history") else None}
    if as_json:
        _print_json(summary)
    else:
        print(f"{info['title']}: {info.get('steps')} steps on {info['examples']} examples in {info['seconds']} s; "
              f"final loss {summary['final_loss']}")
        print(f"  adapter: {summary['adapter']}\n  merged model (use as --generator): {summary['merged']}\n"
              f"  loss curve: {summary['plot']}")
    return 0


def cmd_finetune_dpo(args: argparse.Namespace) -> int:
    from finetune.dpo import train_dpo

    result = train_dpo(resolve_generator_name(args.base), args.pairs, args.out, _tune_settings(args),
                       resume=args.resume or False)
    return _report_tuning(result, args.json)


def cmd_finetune_sft(args: argparse.Namespace) -> int:
    from finetune.sft import train_sft
    from rag.corpus import read_documents

    docs = read_documents(args.corpus)
    items = _qa_split(args.qa, ["train"], args.questions, args.seed or 0)
    result = train_sft(resolve_generator_name(args.base), docs, items, Path(args.qa).parent, args.out,
                       _tune_settings(args), resume=args.resume or False)
    return _report_tuning(result, args.json)


def cmd_eval_qa(args: argparse.Namespace) -> int:
    from rag.corpus import read_qa
    from rag.eval_qa import (EvalSettings, comparisons, machine_description, majority_answers, now,
                             outcomes_to_json, over_reliance_change, run_split, summarise, write_report)
    from rag.generator import create_generator
    from rag.pipeline import MedRAG
    from rag.retriever import Retriever

    started = time.perf_counter()
    settings = EvalSettings(fixed_k=args.fixed_k, generate_n=args.generate, replacement=args.replacement)
    models = {"base": resolve_generator_name(args.base), "rag_pt": args.rag_pt, "sft": args.sft}
    generators = {name: create_generator(path) for name, path in models.items() if path}
    prior = majority_answers(q for q in read_qa(args.qa) if q.split == "train")
    indexes = {"test": args.index, "added": args.added_index}
    outcomes, timings = [], {}
    for split in args.splits.split(","):
        if split not in indexes:
            raise ValueError(f"--splits takes test and/or added, got {split!r}")
        if not indexes[split]:
            raise ValueError("the added split needs --added-index: the index with the added documents "
                             "(`medrag index add`), built after training")
        t = time.perf_counter()
        rag = MedRAG(Retriever.load(indexes[split]), generators["base"])
        items = _qa_split(args.qa, [split], args.questions, args.seed)
        outcomes += run_split(rag, generators, items, split, Path(args.qa).parent, prior, settings,
                              progress=not args.json)
        timings[split] = round(time.perf_counter() - t, 1)
    summary = summarise(outcomes)
    steps = json.loads(Path(args.steps).read_text(encoding="utf-8")) if args.steps else []
    report = {"date": now(), "machine": machine_description(), "command": "medrag " + " ".join(sys.argv[1:]),
              "settings": {**asdict(settings), "questions_per_split": args.questions, "seed": args.seed,
                           "models": models, "indexes": indexes, "qa": args.qa},
              "eval_seconds": timings, "steps": steps,
              "total_seconds": round(sum(s["seconds"] for s in steps) + time.perf_counter() - started, 1),
              "summary": summary, "comparisons": comparisons(outcomes), "over_reliance": over_reliance_change(summary),
              "notes": args.note or [], "outcomes": outcomes_to_json(outcomes)}
    paths = write_report(report, Path(args.out), args.name)
    if args.json:
        _print_json({k: v for k, v in report.items() if k != "outcomes"})
    else:
        print(Path(paths[1]).read_text(encoding="utf-8"))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


# --- demo -----------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    """Sample corpus -> validated -> default index -> aligned VLM -> cited answers to test questions."""
    from finetune.projector import AlignConfig, save_aligned, train_projector
    from rag.corpus import format_problems, read_qa, validate_corpus, validate_qa
    from rag.generator import Generator, default_vlm_dir
    from rag.index_build import IndexSpec, build_index, bundle_info
    from rag.pipeline import MedRAG
    from rag.retriever import Retriever
    from rag.sample_corpus.build import SampleSummary, build_sample_corpus, summary_table
    from rag.vlm import load_vlm

    started = time.perf_counter()
    spec = IndexSpec.from_file(args.spec)
    corpus_dir = Path(spec.corpus).parent
    if args.rebuild or not (corpus_dir / "summary.json").is_file():
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
            return 1

    index_dir = Path(spec.out)
    if args.rebuild or not (index_dir / "CURRENT").is_file():
        print(f"[3/5] building the default index in {index_dir} …")
        build_index(spec.corpus, index_dir, spec=spec, qa=spec.qa)
    else:
        print(f"[3/5] using the cached index in {index_dir}")
    _print_info(bundle_info(index_dir))

    model_dir = Path(args.model_dir)
    if args.rebuild or not (model_dir / "config.json").is_file():
        print(f"[4/5] aligning the VLM projector on the corpus images ({args.align_steps} steps) …")
        model, processor = load_vlm(default_vlm_dir())
        log = train_projector(model, processor, spec.corpus, AlignConfig(max_steps=args.align_steps))
        save_aligned(model, processor, log, model_dir)
        print(f"  validation loss {log.val_loss[0]:.3f} -> {log.val_loss[-1]:.3f} in {log.seconds:.0f} s; "
              f"saved to {model_dir} (loss curve: {model_dir / 'align_loss.png'})")
    else:
        print(f"[4/5] using the aligned VLM in {model_dir}")
        model, processor = load_vlm(model_dir)

    print("[5/5] answering test questions from retrieved evidence")
    rag = MedRAG(Retriever.load(index_dir), Generator(model, processor, str(model_dir)))
    tests = [q for q in read_qa(corpus_dir / "qa.jsonl") if q.split == "test"]
    shown: set[tuple[str, bool]] = set()
    for item in tests:
        key = (item.domain, bool(item.image))
        if key in shown or len(shown) >= args.questions:
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
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    return 0


# --- parser ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medrag", description="Evidence-grounded medical VLM: corpora, indexes, "
                                     "retrieval, answering and preference tuning.")
    commands = parser.add_subparsers(dest="command", required=True)

    corpus = commands.add_parser("corpus", help="validate or generate corpora").add_subparsers(dest="action", required=True)
    p = corpus.add_parser("validate", help="check a corpus JSONL (and optionally a QA JSONL); exit 1 on any problem")
    p.add_argument("corpus", help="corpus JSONL file; image paths are relative to its folder")
    p.add_argument("--qa", help="QA JSONL file to check against the corpus")
    p.add_argument("--extra-corpus", action="append", help="further corpus files whose ids QA items may cite")
    p.add_argument("--no-images", action="store_true", help="skip opening image files (faster)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_corpus_validate)

    p = corpus.add_parser("sample", help="generate the multi-domain sample corpus with images and a QA set")
    p.add_argument("--out", default=str(DEFAULT_SAMPLE_DIR), help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images-per-doc", type=int, default=4)
    p.add_argument("--query-images-per-doc", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="drawing processes (default: up to 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_corpus_sample)

    imports = commands.add_parser("import", help="import public datasets into the corpus format").add_subparsers(
        dest="source", required=True)
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

    p = imports.add_parser("covid-cxr", help="COVID-19 image data collection (metadata.csv + images)")
    p.add_argument("--metadata", required=True, help="metadata.csv")
    p.add_argument("--images", required=True, help="images folder")
    p.add_argument("--out", required=True, help="output folder for corpus.jsonl and import_report.json")
    p.add_argument("--no-copy-images", dest="copy_images", action="store_false",
                   help="refer to the images in place (only possible when the images folder is inside OUT)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import_covid)

    index = commands.add_parser("index", help="build and maintain index bundles").add_subparsers(dest="action", required=True)
    p = index.add_parser("build", help="validate, embed, train heads, calibrate, and write a bundle atomically")
    p.add_argument("--spec", help=f"index spec (YAML/JSON); e.g. {DEFAULT_SPEC} builds the sample index")
    p.add_argument("--corpus", help="corpus JSONL (overrides the spec)")
    p.add_argument("--qa", help="QA JSONL: train questions teach the text router, val calibrates selection")
    p.add_argument("--out", help="bundle folder, e.g. indexes/NAME")
    p.add_argument("--text-encoder", help="text encoder name (default all-MiniLM-L6-v2; any sentence-transformers "
                                          "id/path or open_clip:NAME[@TAG])")
    p.add_argument("--image-encoder", help="image encoder name (default efficientnet-lite0, or open_clip:NAME[@TAG])")
    p.add_argument("--seed", type=int)
    p.add_argument("--skip-bad", action="store_true", help="leave out bad records (reported) instead of stopping")
    p.add_argument("--json", action="store_true")
    g = p.add_argument_group("vector index (override the spec's vector_index block)")
    g.add_argument("--index-type", choices=["flat", "hnsw", "ivf-flat", "ivf-pq"],
                   help="exact flat (default; < ~100k vectors per channel), hnsw (lowest latency), ivf-flat, "
                        "or ivf-pq (least memory)")
    g.add_argument("--shards", type=int, help="FAISS files per domain-channel, searched as one (default 1)")
    g.add_argument("--nlist", type=int, help="IVF lists per shard (default ~4*sqrt(vectors); fewer when too few "
                                             "vectors to train them)")
    g.add_argument("--nprobe", type=int, help="IVF lists searched per query (default 16; retrieve --nprobe overrides)")
    g.add_argument("--hnsw-m", type=int, help="HNSW links per node (default 32)")
    g.add_argument("--ef-construction", type=int, help="HNSW build-time candidate list (default 40)")
    g.add_argument("--ef-search", type=int, help="HNSW query-time candidate list (default 64; retrieve --ef-search "
                                                 "overrides)")
    g.add_argument("--pq-m", type=int, help="IVF-PQ sub-quantizers, must divide the dimension (default dim/4)")
    g.add_argument("--pq-bits", type=int, help="IVF-PQ bits per code (default 8)")
    g.add_argument("--train-size", type=int, help="vectors sampled to train IVF (default 50 per list)")
    g = p.add_argument_group("build engine")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="embed in this process (default) or with Ray Data on a Ray cluster (pip install 'medvlm-rag[ray]')")
    g.add_argument("--ray-address", help="Ray cluster to join: 'auto' (after `ray start --head`), ray://HOST:10001; "
                                         "default: start a local Ray")
    g.add_argument("--device", help="encoder device, e.g. cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_index_build)

    p = index.add_parser("info", help="show what a bundle holds")
    p.add_argument("index")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index_info)

    p = index.add_parser("verify", help="check a bundle's files, checksums, FAISS indexes, counts and encoders; "
                                        "exit 1 listing the problems")
    p.add_argument("index")
    p.add_argument("--no-encoders", action="store_true",
                   help="skip loading the encoders to compare fingerprints (faster; for machines without them)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index_verify)

    p = index.add_parser("add", help="add the documents of a corpus file without rebuilding")
    p.add_argument("index")
    p.add_argument("--corpus", required=True)
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index_add)

    p = index.add_parser("remove", help="remove documents by id without rebuilding")
    p.add_argument("index")
    p.add_argument("ids", nargs="*")
    p.add_argument("--ids-file", help="file with one document id per line")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index_remove)

    p = commands.add_parser("retrieve", help="retrieve evidence for a question and/or an image")
    p.add_argument("question", nargs="?", default=None)
    p.add_argument("--index", default="indexes/sample")
    p.add_argument("--image", help="query image file")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--domain", action="append", help="search only this domain (repeatable); skips routing")
    p.add_argument("--channel", action="append", choices=["text", "bm25", "joint", "image"])
    p.add_argument("--no-routing", action="store_true", help="search all domains as one flat collection")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="metadata equality filter (repeatable)")
    p.add_argument("--rule", choices=["gap", "relative", "fixed", "rule"], help="context selection rule")
    p.add_argument("--nprobe", type=int, help="IVF indexes: lists searched per query (default: the bundle's)")
    p.add_argument("--ef-search", type=int, help="HNSW indexes: candidate list per query (default: the bundle's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retrieve)

    evals = commands.add_parser("eval", help="measure retrieval and answering").add_subparsers(dest="what", required=True)
    p = evals.add_parser("retrieval", help="Recall@1/5/10, MRR, routing accuracy, latency; with baselines")
    p.add_argument("--index", default="indexes/sample")
    p.add_argument("--qa", required=True, help="QA JSONL (image paths relative to it)")
    p.add_argument("--split", action="append", default=None, help="split(s) to evaluate (default: test)")
    p.add_argument("--system", action="append", help="only these systems (default: all)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_retrieval)

    p = evals.add_parser("qa", help="the factuality experiment: majority, no retrieval, fixed k, adaptive, RAG-PT, "
                         "SFT, SFT + retrieval on the test and added splits; JSON, Markdown and a plot")
    p.add_argument("--index", default="indexes/sample", help="index for the test split")
    p.add_argument("--added-index", help="index that also holds the documents added after training")
    p.add_argument("--qa", default="data/sample/qa.jsonl")
    p.add_argument("--base", help=f"base VLM (default: {DEFAULT_ALIGNED_VLM} if present)")
    p.add_argument("--rag-pt", help="merged RAG-PT model (e.g. data/models/medvlm-ragpt/merged)")
    p.add_argument("--sft", help="merged knowledge-SFT model (e.g. data/models/medvlm-sft/merged)")
    p.add_argument("--splits", default="test,added", help="comma-separated: test, added (default: %(default)s)")
    p.add_argument("--questions", type=int, default=0, help="questions per split, stratified by domain (0: all)")
    p.add_argument("--fixed-k", type=int, default=5, help="evidence items for the fixed-k system")
    p.add_argument("--generate", type=int, default=20, help="questions per split also answered in free text")
    p.add_argument("--replacement", default="mixed", choices=["noise", "other-domain", "mixed"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", help="JSON list of earlier steps {step, command, seconds} to put in the report")
    p.add_argument("--note", action="append", help="a note for the report (repeatable)")
    p.add_argument("--out", default="benchmarks/results", help="report folder (default: %(default)s)")
    p.add_argument("--name", default="factuality", help="report file stem (default: %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_qa)

    p = commands.add_parser("ask", help="answer a question (optionally about an image) from evidence, with citations")
    p.add_argument("question")
    p.add_argument("--index", default="indexes/sample")
    p.add_argument("--image", help="image file the question is about")
    p.add_argument("--option", action="append", help="an answer option of a closed question (repeatable)")
    p.add_argument("--mode", choices=["auto", "generate", "options"], default="auto",
                   help="options: score each option by log-probability; generate: free text (default: auto)")
    p.add_argument("--generator", help=f"default VLM name, saved model folder or HF model id "
                   f"(default: {DEFAULT_ALIGNED_VLM} if present, else the untrained default VLM)")
    p.add_argument("-k", type=int, help="keep exactly k evidence items (default: adaptive selection)")
    p.add_argument("--no-retrieval", action="store_true", help="answer without evidence (baseline)")
    p.add_argument("--no-abstain", action="store_true", help="answer even when the evidence is weak")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ask)

    finetune = commands.add_parser("finetune", help="train the VLM").add_subparsers(dest="action", required=True)
    p = finetune.add_parser("align", help="train the VLM projector on corpus image-caption pairs (LM frozen)")
    p.add_argument("--corpus", default="data/sample/corpus.jsonl")
    p.add_argument("--out", default=str(DEFAULT_ALIGNED_VLM), help="where to save the model (default: %(default)s)")
    p.add_argument("--base", help="saved MedVLM to start from (default: the offline default VLM)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, help="stop after this many steps (a short run on CPU)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-fraction", type=float, default=0.1, help="documents held out for the validation loss")
    p.add_argument("--eval-every", type=int, default=10, help="steps between validation losses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_finetune_align)

    def training_flags(p: argparse.ArgumentParser, dpo: bool) -> None:
        p.add_argument("--base", help=f"MedVLM folder to tune (default: {DEFAULT_ALIGNED_VLM} if present)")
        p.add_argument("--config", help="YAML/JSON file of training settings (flags override it)")
        if dpo:
            p.add_argument("--beta", type=float, help="DPO beta (default 0.1)")
        p.add_argument("--lr", type=float, help="learning rate (default 2e-4)")
        p.add_argument("--epochs", type=float, help="epochs (default 1)")
        p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
        p.add_argument("--batch-size", type=int, help="examples per device and step (default 4)")
        p.add_argument("--grad-accum", type=int, help="gradient accumulation steps (default 1)")
        p.add_argument("--lora-rank", type=int, help="LoRA rank (default 16)")
        p.add_argument("--lora-alpha", type=int, help="LoRA alpha (default 32)")
        p.add_argument("--lora-targets", help="regex over module names; must stay in the language model "
                       "(default: the decoder's attention and MLP projections)")
        p.add_argument("--save-steps", type=int, help="checkpoint every n steps (default 25)")
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--resume", nargs="?", const="latest",
                       help="continue from the latest checkpoint under OUT/checkpoints, or from the one named")
        p.add_argument("--json", action="store_true")

    p = finetune.add_parser("pairs", help="build RAG-PT preference pairs (cross-modality, helpful and harmful "
                            "evidence) by running the VLM on the train split")
    p.add_argument("--index", default="indexes/sample")
    p.add_argument("--qa", default="data/sample/qa.jsonl", help="QA JSONL (image paths relative to it)")
    p.add_argument("--generator", help=f"VLM to run (default: {DEFAULT_ALIGNED_VLM} if present)")
    p.add_argument("--split", default="train")
    p.add_argument("--questions", type=int, default=0, help="questions to run, stratified by domain (0: all)")
    p.add_argument("-k", type=int, help="fixed evidence count (default: adaptive selection, as at test time)")
    p.add_argument("--replacement", default="mixed", choices=["noise", "other-domain", "mixed"],
                   help="what replaces the image for cross-modality pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_PAIRS), help="output folder (default: %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_finetune_pairs)

    p = finetune.add_parser("dpo", help="RAG-PT: DPO with LoRA on the language model over the preference pairs; "
                            "saves OUT/adapter and OUT/merged (works under `accelerate launch`)")
    p.add_argument("--pairs", default=str(DEFAULT_PAIRS), help="folder written by `finetune pairs`")
    p.add_argument("--out", default=str(DEFAULT_RAGPT), help="output folder (default: %(default)s)")
    training_flags(p, dpo=True)
    p.set_defaults(func=cmd_finetune_dpo)

    p = finetune.add_parser("sft", help="knowledge fine-tuning baseline: LoRA SFT on the documents' facts as "
                            "question-answer pairs, no retrieval")
    p.add_argument("--corpus", default="data/sample/corpus.jsonl", help="documents whose facts are taught")
    p.add_argument("--qa", default="data/sample/qa.jsonl", help="its train split teaches the answer format")
    p.add_argument("--questions", type=int, default=0, help="train questions to include (0: all)")
    p.add_argument("--out", default=str(DEFAULT_SFT), help="output folder (default: %(default)s)")
    training_flags(p, dpo=False)
    p.set_defaults(func=cmd_finetune_sft)

    p = commands.add_parser("demo", help="the main job on offline defaults: sample corpus, index, VLM, cited answers")
    p.add_argument("--spec", default=str(DEFAULT_SPEC), help="index spec to build and query (default: %(default)s)")
    p.add_argument("--model-dir", default=str(DEFAULT_ALIGNED_VLM), help="where the aligned VLM is cached")
    p.add_argument("--align-steps", type=int, default=40, help="projector training steps when no model is cached")
    p.add_argument("--questions", type=int, default=6, help="how many test questions to answer")
    p.add_argument("--rebuild", action="store_true", help="regenerate cached artefacts")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "split", "unset") is None:
        args.split = ["test"]
    try:
        return args.func(args)
    except KeyboardInterrupt:
        # Every write is atomic, so an interrupted command changed nothing; say so instead of a traceback.
        print("medrag: interrupted; nothing was changed", file=sys.stderr)
        return 130
    except Exception as exc:
        # Bad input or a bad environment gets one clear message, not a traceback; bugs still raise.
        if not isinstance(exc, _user_error_types()):
            raise
        print(f"medrag: error: {exc}", file=sys.stderr)
        return 2


def _user_error_types() -> tuple[type[Exception], ...]:
    """Errors that mean bad input, a damaged index, a missing model or an OS refusal (disk full,
    permission, unreadable image). Looked up in sys.modules: a module never imported cannot have
    raised its error, and importing it here would cost seconds."""
    types: list[type[Exception]] = [ValueError, OSError]
    for module, name in (("rag.index_bundle", "BundleError"), ("rag.encoders", "ModelNotAvailableError"),
                         ("PIL.Image", "DecompressionBombError")):
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    return tuple(types)


if __name__ == "__main__":
    sys.exit(main())
