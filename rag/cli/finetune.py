"""`medrag finetune align|pairs|dpo|sft`: training the VLM. The command line is the one way from `rag`
into the `finetune` package (training imports the library, never the reverse)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.cli.output import print_json
from rag.defaults import (ALIGNED_VLM, PAIRS_DIR, RAGPT_DIR, READER_DIR, SAMPLE_CORPUS, SAMPLE_INDEX, SAMPLE_QA,
                          SFT_DIR, aligned_base, resolve_generator_name)

if TYPE_CHECKING:  # for annotations only: training libraries load when a command runs
    from finetune.lora import TuneSettings


def register(commands: argparse._SubParsersAction) -> None:
    finetune = commands.add_parser("finetune", help="train the VLM").add_subparsers(dest="action", required=True)
    for add in (_add_align, _add_rag_sft, _add_export, _add_pairs, _add_dpo, _add_sft):
        add(finetune)


# --- finetune align -------------------------------------------------------------------------------

def _add_align(finetune: argparse._SubParsersAction) -> None:
    p = finetune.add_parser("align", help="train the VLM projector on corpus image-caption pairs (LM frozen)")
    p.add_argument("--corpus", default=str(SAMPLE_CORPUS))
    p.add_argument("--out", default=str(ALIGNED_VLM), help="where to save the model (default: %(default)s)")
    p.add_argument("--base", help="saved MedVLM to start from (default: the untrained offline assembly)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, help="stop after this many steps (a short run on CPU)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-fraction", type=float, default=0.1, help="documents held out for the validation loss")
    p.add_argument("--eval-every", type=int, default=10, help="steps between validation losses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_finetune_align)


def cmd_finetune_align(args: argparse.Namespace) -> int:
    from finetune.projector import AlignConfig, save_aligned, train_projector
    from rag.generator import default_vlm_dir
    from rag.vlm import load_vlm

    model, processor = load_vlm(args.base or default_vlm_dir(shipped=False))
    config = AlignConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps,
                         val_fraction=args.val_fraction, eval_every=args.eval_every, seed=args.seed)
    log = train_projector(model, processor, args.corpus, config, progress=not args.json)
    out = save_aligned(model, processor, log, args.out)
    summary = {"out": str(out), "steps": len(log.steps), "seconds": round(log.seconds, 1), "n_train": log.n_train,
               "n_val": log.n_val, "val_loss_first": round(log.val_loss[0], 4), "val_loss_last": round(log.val_loss[-1], 4),
               "plot": str(out / "align_loss.png")}
    if args.json:
        print_json(summary)
    else:
        print(f"projector trained for {summary['steps']} steps in {summary['seconds']} s on {log.n_train} pairs; "
              f"validation loss {summary['val_loss_first']} -> {summary['val_loss_last']}; saved to {out} "
              f"(loss curve: {summary['plot']})")
    return 0


# --- finetune rag-sft ------------------------------------------------------------------------------

def _add_rag_sft(finetune: argparse._SubParsersAction) -> None:
    p = finetune.add_parser("rag-sft", help="Stage A: teach the VLM to answer from retrieved evidence (RAFT-style "
                            "LoRA SFT on train questions in the test-time prompt); then choose its scoring rule on val")
    p.add_argument("--index", default=str(SAMPLE_INDEX))
    p.add_argument("--qa", default=str(SAMPLE_QA), help="QA JSONL (image paths relative to it)")
    p.add_argument("--questions", type=int, default=0, help="train questions, stratified by domain (0: all)")
    p.add_argument("--gold-share", type=float, default=0.7, help="prompts with the question's own document")
    p.add_argument("--distractor-share", type=float, default=0.15, help="prompts with other documents only")
    p.add_argument("--none-share", type=float, default=0.15, help="prompts without evidence")
    p.add_argument("--kind-weights", default="", help="prompts per question of a kind, like "
                   "'yes_no=3,multiple_choice=0.25' (default: one each)")
    p.add_argument("--val-questions", type=int, default=120,
                   help="val questions the scoring rule is chosen on (0: skip the choice)")
    p.add_argument("--out", default=str(READER_DIR), help="output folder (default: %(default)s)")
    _training_flags(p, dpo=False)
    p.set_defaults(func=cmd_finetune_rag_sft)


def cmd_finetune_rag_sft(args: argparse.Namespace) -> int:
    from finetune.reader import ReaderMix, parse_kind_weights, reader_rows
    from finetune.sft import prompt_completion_dataset, run_sft
    from rag.pipeline import MedRAG
    from rag.qa_inputs import closed_questions

    base = aligned_base(args.base)
    seed = args.seed or 0
    mix = ReaderMix(args.gold_share, args.distractor_share, args.none_share, seed, parse_kind_weights(args.kind_weights))
    items = closed_questions(args.qa, ["train"], args.questions, seed)
    rag = MedRAG.load(args.index, generator=base)
    rows, counts = reader_rows(rag, items, Path(args.qa).parent, mix, progress=not args.json)
    result = run_sft(base, prompt_completion_dataset(rows), args.out, _tune_settings(args),
                     "Stage A: retrieval-augmented instruction tuning (RAFT-style LoRA SFT)",
                     f"{counts['used']} train questions of {args.qa}" + (
                         f" ({counts['prompts']} prompts, kind weights {args.kind_weights})" if args.kind_weights else ""),
                     resume=args.resume or False,
                     details={"reader_data": counts})
    if args.val_questions:
        from rag.eval_scoring import choose_rule

        result["info"]["scoring"] = choose_rule(rag, str(result["merged"]), args.qa, args.val_questions, seed,
                                                save=True, progress=not args.json)
    return _report_tuning(result, args.json)


# --- finetune export ------------------------------------------------------------------------------

def _add_export(finetune: argparse._SubParsersAction) -> None:
    p = finetune.add_parser("export", help="make a trained run the default VLM's shipped weights (projector, "
                            "LoRA adapter, scoring rule, model card) in rag/weights/")
    p.add_argument("--run", default=str(READER_DIR),
                   help="a `finetune rag-sft` or `dpo` output folder, with merged/ and adapter/ (default: %(default)s)")
    p.add_argument("--out", help="where to write the weights (default: the package's rag/weights/<default VLM>)")
    p.add_argument("--command", action="append", default=[],
                   help="a command that reproduced this run, for the model card (repeatable, in order)")
    p.add_argument("--on-top", action="store_true",
                   help="the run was trained with the shipped default VLM as --base: keep the shipped adapters "
                        "and add this run's after them (its model card section too)")
    p.set_defaults(func=cmd_finetune_export)


def cmd_finetune_export(args: argparse.Namespace) -> int:
    from rag.shipped import SHIPPED_DIR, export_default, model_card

    run = Path(args.run)
    if not (run / "merged" / "config.json").is_file():
        raise FileNotFoundError(f"{run}/merged is not a saved model; pass the output folder of `medrag finetune "
                                "rag-sft` (or `dpo`) as --run")
    folder = Path(args.out) if args.out else SHIPPED_DIR
    earlier = folder / "README.md"
    if args.on_top and not earlier.is_file():
        raise FileNotFoundError(f"{folder} has no shipped weights (README.md) to export on top of; "
                                "export the first run without --on-top")
    card = model_card(run, args.command, earlier.read_text(encoding="utf-8") if args.on_top else None)
    out = export_default(run / "merged", run / "adapter", card, folder, on_top=args.on_top)
    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    print(f"shipped weights written to {out}:")
    for name, size in sizes.items():
        print(f"  {name:<40} {size / 1e6:6.2f} MB")
    return 0


# --- finetune pairs -------------------------------------------------------------------------------

def _add_pairs(finetune: argparse._SubParsersAction) -> None:
    p = finetune.add_parser("pairs", help="build RAG-PT preference pairs (cross-modality, helpful, harmful, "
                            "misread and wrong evidence) by running the VLM on the train split")
    p.add_argument("--index", default=str(SAMPLE_INDEX))
    p.add_argument("--qa", default=str(SAMPLE_QA), help="QA JSONL (image paths relative to it)")
    p.add_argument("--generator", help="VLM to run (default: the default VLM with its shipped Stage A weights)")
    p.add_argument("--split", default="train")
    p.add_argument("--questions", type=int, default=0, help="questions to run, stratified by domain (0: all)")
    p.add_argument("-k", type=int, help="fixed evidence count (default: adaptive selection, as at test time)")
    p.add_argument("--replacement", default="other-domain", choices=["noise", "other-domain", "mixed"],
                   help="what replaces the image for cross-modality pairs (default: %(default)s, a real image)")
    p.add_argument("--max-type-share", type=float, default=0.4,
                   help="no pair type is more than this share of the pairs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(PAIRS_DIR), help="output folder (default: %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_finetune_pairs)


def cmd_finetune_pairs(args: argparse.Namespace) -> int:
    from finetune.pairs import PairSettings, build_pairs, save_pairs
    from rag.pipeline import MedRAG
    from rag.qa_inputs import closed_questions

    if not 0 < args.max_type_share <= 1:
        raise ValueError(f"--max-type-share must be in (0, 1], got {args.max_type_share}")
    settings = PairSettings(n_questions=args.questions, k=args.k, replacement=args.replacement,
                            max_type_share=args.max_type_share, seed=args.seed)
    items = closed_questions(args.qa, [args.split], args.questions, args.seed)
    rag = MedRAG.load(args.index, generator=resolve_generator_name(args.generator))
    rows, summary, traces = build_pairs(rag, items, Path(args.qa).parent, settings, progress=not args.json)
    out = save_pairs(rows, summary, traces, Path(args.out))
    if args.json:
        print_json({"out": str(out), **asdict(summary)})
    else:
        print(f"{len(rows)} preference pairs from {summary.questions} {args.split} questions "
              f"({summary.image_questions} with an image) in {summary.seconds:.0f} s -> {out}")
        for kind, count in summary.counts.items():
            print(f"  {kind:<18} {count} kept of {summary.found[kind]} found")
        print(f"  yes/no pairs by chosen answer {summary.chosen_yes_no}")
        print(f"  accuracy with retrieval {summary.accuracy_with_retrieval:.3f}, without "
              f"{summary.accuracy_without_retrieval:.3f}, over wrong evidence {summary.accuracy_wrong_evidence:.3f}; "
              f"evidence items per prompt {summary.evidence_items}")
    return 0


# --- finetune dpo | sft: LoRA on the language model, the same training flags ----------------------

def _add_dpo(finetune: argparse._SubParsersAction) -> None:
    p = finetune.add_parser("dpo", help="RAG-PT: DPO with LoRA on the language model over the preference pairs; "
                            "saves OUT/adapter and OUT/merged (works under `accelerate launch`)")
    p.add_argument("--pairs", default=str(PAIRS_DIR), help="folder written by `finetune pairs`")
    p.add_argument("--out", default=str(RAGPT_DIR), help="output folder (default: %(default)s)")
    _training_flags(p, dpo=True)
    p.set_defaults(func=cmd_finetune_dpo)


def cmd_finetune_dpo(args: argparse.Namespace) -> int:
    from finetune.dpo import train_dpo

    from rag.generator import model_folder

    result = train_dpo(model_folder(resolve_generator_name(args.base)), args.pairs, args.out, _tune_settings(args),
                       resume=args.resume or False)
    return _report_tuning(result, args.json)


def _add_sft(finetune: argparse._SubParsersAction) -> None:
    p = finetune.add_parser("sft", help="knowledge fine-tuning baseline: LoRA SFT on the documents' facts as "
                            "question-answer pairs, no retrieval")
    p.add_argument("--corpus", default=str(SAMPLE_CORPUS), help="documents whose facts are taught")
    p.add_argument("--qa", default=str(SAMPLE_QA), help="its train split teaches the answer format")
    p.add_argument("--questions", type=int, default=0, help="train questions to include (0: all)")
    p.add_argument("--out", default=str(SFT_DIR), help="output folder (default: %(default)s)")
    _training_flags(p, dpo=False)
    p.set_defaults(func=cmd_finetune_sft)


def cmd_finetune_sft(args: argparse.Namespace) -> int:
    from finetune.sft import train_sft
    from rag.corpus import read_documents
    from rag.qa_inputs import closed_questions

    docs = read_documents(args.corpus)
    items = closed_questions(args.qa, ["train"], args.questions, args.seed or 0)
    result = train_sft(aligned_base(args.base), docs, items, Path(args.qa).parent, args.out,
                       _tune_settings(args), resume=args.resume or False)
    return _report_tuning(result, args.json)


def _training_flags(p: argparse.ArgumentParser, dpo: bool) -> None:
    """The flags of `finetune dpo` and `finetune sft`; unset ones fall back to --config, then TuneSettings."""
    p.add_argument("--base", help=f"MedVLM folder to tune (default: {ALIGNED_VLM} for rag-sft and sft, the "
                   "default VLM for dpo)")
    p.add_argument("--config", help="YAML/JSON file of training settings (flags override it)")
    if dpo:
        p.add_argument("--beta", type=float, help="DPO beta (default 0.1)")
        p.add_argument("--sft-weight", type=float, help="weight of the SFT anchor (NLL of the chosen answer) "
                       "beside the DPO loss; 0 turns it off (default 1)")
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


def _tune_settings(args: argparse.Namespace) -> TuneSettings:
    from finetune.lora import TuneSettings

    return TuneSettings.load(args.config, learning_rate=args.lr, epochs=args.epochs, max_steps=args.max_steps,
                             batch_size=args.batch_size, grad_accum=args.grad_accum, lora_rank=args.lora_rank,
                             lora_alpha=args.lora_alpha, lora_targets=args.lora_targets, save_steps=args.save_steps,
                             seed=args.seed, beta=getattr(args, "beta", None),
                             sft_weight=getattr(args, "sft_weight", None))


def _report_tuning(result: dict[str, Any], as_json: bool) -> int:
    """What `train_dpo` and `train_sft` return, as a summary: where the adapter, merged model and plot are."""
    info = result["info"]
    summary = {"adapter": str(result.get("adapter")), "merged": str(result.get("merged")),
               "plot": str(result.get("plot")), **{k: v for k, v in info.items() if k != "history"},
               "final_loss": info["history"][-1]["loss"] if info.get("history") else None}
    if as_json:
        print_json(summary)
    else:
        print(f"{info['title']}: {info.get('steps')} steps on {info['examples']} examples in {info['seconds']} s; "
              f"final loss {summary['final_loss']}")
        print(f"  adapter: {summary['adapter']}\n  merged model (use as --generator): {summary['merged']}\n"
              f"  loss curve: {summary['plot']}")
        if "scoring" in info:
            from rag.scoring import format_rule_table

            print(f"  scoring chosen on val: {info['scoring']['summary']}\n" + format_rule_table(info["scoring"]))
    return 0
