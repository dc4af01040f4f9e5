"""The factuality experiment of docs/design.md §7, end to end, with the run time of every step.

    .venv/bin/python benchmarks/factuality.py                 # the committed run (defaults below)
    .venv/bin/python benchmarks/factuality.py --quick         # a smoke run: few questions, few steps

Steps, each a `medrag` command run as a subprocess and timed:

0. `medrag demo --questions 0` when the sample corpus or the default index is missing, and
   `medrag finetune align` when the projector-aligned VLM (the base every stage starts from) is;
1. the "added" index: a copy of the default index plus `data/sample/corpus_added.jsonl`
   (`medrag index add`), standing for documents that arrive after training;
2. Stage A, `medrag finetune rag-sft` (retrieval-augmented instruction tuning; chooses the scoring
   rule on val); `--reuse-stage-a` keeps an earlier run's model;
3. with `--stage-b`: Stage B, `medrag finetune pairs` with the Stage A model, then `finetune dpo` on top;
4. `medrag finetune sft` (knowledge SFT) with as many optimiser steps and examples per step as the
   tuned model got in all (the fair baseline);
5. `medrag eval qa` on stratified samples of the test and added splits, which writes
   `benchmarks/results/<name>.{json,md,png}` with the commands and run times of all steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEDRAG = [sys.executable, "-m", "rag.cli"]
ALIGNED = "data/models/medvlm-aligned"


def run(step: str, args: list[str], steps: list[dict]) -> None:
    command = "medrag " + " ".join(args)
    print(f"\n== {step}: {command}", flush=True)
    started = time.perf_counter()
    subprocess.run(MEDRAG + args, cwd=ROOT, check=True)
    seconds = round(time.perf_counter() - started, 1)
    steps.append({"step": step, "command": command, "seconds": seconds})
    print(f"== {step} took {seconds} s", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-questions", type=int, default=0, help="questions per split, test and added (0: all)")
    parser.add_argument("--generate", type=int, default=10, help="questions per split also answered in free text")
    parser.add_argument("--stage-a-steps", type=int, default=200, help="Stage A optimiser steps (batch 4)")
    parser.add_argument("--stage-a-lr", default="5e-4")
    parser.add_argument("--reuse-stage-a", action="store_true", help="keep WORK/medvlm-reader from an earlier run")
    parser.add_argument("--stage-b", action="store_true", help="also run Stage B (pairs + DPO on the Stage A model)")
    parser.add_argument("--pair-questions", type=int, default=300, help="train questions run to build pairs")
    parser.add_argument("--dpo-steps", type=int, default=50, help="Stage B optimiser steps (batch 4)")
    parser.add_argument("--dpo-lr", default="5e-5")
    parser.add_argument("--skip-sft", action="store_true", help="leave out the knowledge-SFT baseline (its rows "
                        "and the targets against it are then missing from the report)")
    parser.add_argument("--work", default="data/experiment", help="where models and the added index go")
    parser.add_argument("--out", default="benchmarks/results", help="report folder")
    parser.add_argument("--name", default="factuality", help="report file stem")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 training steps, 6 questions per split, "
                        "report named <name>-quick")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work, steps = ROOT / args.work, []
    rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731  (short paths in the report)
    quick = args.quick
    a_steps, b_steps = (2, 2) if quick else (args.stage_a_steps, args.dpo_steps)
    if not (ROOT / "indexes/sample/CURRENT").is_file():
        run("sample corpus and index", ["demo", "--questions", "0"], steps)
    if not (ROOT / ALIGNED / "config.json").is_file():
        run("projector alignment", ["finetune", "align", "--out", ALIGNED, "--max-steps", "40"], steps)
    added = work / "index-added"
    shutil.rmtree(added, ignore_errors=True)
    shutil.copytree(ROOT / "indexes/sample", added, symlinks=True)
    run("index the added documents", ["index", "add", rel(added), "--corpus", "data/sample/corpus_added.jsonl"], steps)

    reader, ragpt, sft, pairs = work / "medvlm-reader", work / "medvlm-ragpt", work / "medvlm-sft", work / "pairs"
    if not (args.reuse_stage_a and (reader / "merged" / "config.json").is_file()):
        shutil.rmtree(reader, ignore_errors=True)  # checkpoints of an earlier run must not be resumed by accident
        run("Stage A (rag-sft)", ["finetune", "rag-sft", "--base", ALIGNED, "--out", rel(reader), "--lora-rank", "8",
                                  "--lora-alpha", "16", "--lr", args.stage_a_lr, "--batch-size", "4", "--max-steps",
                                  str(a_steps), "--val-questions", "6" if quick else "60"], steps)
    tuned_steps = a_steps
    if args.stage_b:
        shutil.rmtree(ragpt, ignore_errors=True)
        run("Stage B pairs", ["finetune", "pairs", "--generator", rel(reader / "merged"), "--replacement",
                              "other-domain", "--questions", "12" if quick else str(args.pair_questions),
                              "--out", rel(pairs)], steps)
        run("Stage B (DPO)", ["finetune", "dpo", "--base", rel(reader / "merged"), "--pairs", rel(pairs), "--out",
                              rel(ragpt), "--lr", args.dpo_lr, "--batch-size", "4", "--max-steps", str(b_steps)], steps)
        tuned_steps += b_steps
    models = ["--reader", rel(reader / "merged")]
    if not args.skip_sft:
        shutil.rmtree(sft, ignore_errors=True)
        run("knowledge SFT", ["finetune", "sft", "--base", ALIGNED, "--out", rel(sft), "--lora-rank", "8",
                              "--lora-alpha", "16", "--lr", args.stage_a_lr, "--batch-size", "4",
                              "--max-steps", str(tuned_steps)], steps)
        models += ["--sft", rel(sft / "merged")]
    steps_file = work / "steps.json"
    steps_file.write_text(json.dumps(steps, indent=1), encoding="utf-8")
    if args.stage_b:
        models += ["--rag-pt", rel(ragpt / "merged")]
    name = f"{args.name}-quick" if quick else args.name
    run("evaluation", ["eval", "qa", "--base", ALIGNED, *models, "--added-index", rel(added),
                       "--questions", "6" if quick else str(args.eval_questions), "--generate",
                       str(min(args.generate, 2 if quick else args.generate)), "--steps", rel(steps_file),
                       "--out", args.out, "--name", name], steps)
    print(f"\nwhole experiment: {sum(s['seconds'] for s in steps) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
