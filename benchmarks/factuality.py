"""The factuality experiment of docs/design.md §7, end to end, with the run time of every step.

    .venv/bin/python benchmarks/factuality.py                 # the committed run (defaults below)
    .venv/bin/python benchmarks/factuality.py --quick         # a smoke run: few questions, few steps

Steps, each a `medrag` command run as a subprocess and timed:

0. `medrag demo --questions 0` when the sample corpus or the default index is missing, and
   `medrag finetune align` when the projector-aligned VLM (the base every stage starts from) is;
1. the "added" index: a copy of the default index plus `data/sample/corpus_added.jsonl`
   (`medrag index add`), standing for documents that arrive after training;
2. Stage A: by default the model the default VLM ships with (rag/weights, made by
   `make default-weights`); `--stage-a train` runs `medrag finetune rag-sft` (retrieval-augmented
   instruction tuning; chooses the scoring rule on val), `--stage-a reuse` keeps WORK/medvlm-reader;
3. with `--stage-b`: Stage B, `medrag finetune pairs` with the Stage A model, then `finetune dpo` on top
   once per `--dpo-grid` setting (learning rate : beta); each is scored on val questions
   (`medrag eval scoring`, the model's own rule, retrieved evidence; ties: gold evidence) and the
   best one is the Stage A + B that the test and added splits see;
4. `medrag finetune sft` (knowledge SFT) with as many optimiser steps and examples per step as the
   tuned model got in all (the fair baseline; for the shipped default, the steps of all its adapters,
   `rag.shipped.shipped_steps`); `--reuse-sft` keeps an earlier run of that many steps;
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
sys.path.insert(0, str(ROOT))
MEDRAG = [sys.executable, "-m", "rag.cli"]
ALIGNED = "data/models/medvlm-aligned"


def run(step: str, args: list[str], steps: list[dict]) -> str:
    """Run one `medrag` command, timed; its standard output is returned (and shown unless it is --json)."""
    command = "medrag " + " ".join(args)
    print(f"\n== {step}: {command}", flush=True)
    started = time.perf_counter()
    out = subprocess.run(MEDRAG + args, cwd=ROOT, check=True, stdout=subprocess.PIPE if "--json" in args else None,
                         text=True).stdout or ""
    seconds = round(time.perf_counter() - started, 1)
    steps.append({"step": step, "command": command, "seconds": seconds})
    print(f"== {step} took {seconds} s", flush=True)
    return out


def rel(path: Path) -> str:
    """A path as the report shows it: relative to the repository when inside it (the shipped Stage A
    lives in the user's cache, outside)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def reusable(run_dir: Path, steps: int) -> bool:
    """Whether `run_dir` holds a finished tuning run (merged model, training log) of exactly `steps` steps."""
    log = run_dir / "adapter" / "train_log.json"
    if not ((run_dir / "merged" / "config.json").is_file() and log.is_file()):
        return False
    trained = json.loads(log.read_text(encoding="utf-8")).get("steps")
    if trained != steps:
        print(f"{rel(run_dir)} was trained for {trained} steps, not {steps}: training it again", flush=True)
    return trained == steps


def grid(text: str) -> list[tuple[str, str]]:
    """"5e-5:0.1,2e-4:0.1" -> [("5e-5", "0.1"), ("2e-4", "0.1")]."""
    points = [tuple(p.split(":")) for p in text.split(",") if p]

    def valid(point: tuple[str, ...]) -> bool:
        try:
            return len(point) == 2 and float(point[0]) > 0 and float(point[1]) > 0
        except ValueError:
            return False

    if not points or not all(valid(p) for p in points):
        raise SystemExit(f"--dpo-grid {text!r}: give learning-rate:beta pairs separated by commas, e.g. 5e-5:0.1")
    return points  # type: ignore[return-value]


def stage_b(args: argparse.Namespace, reader: Path, work: Path, steps: list[dict], b_steps: int,
            quick: bool) -> tuple[Path, list[dict]]:
    """Pairs from the Stage A model, one DPO run per grid setting, the best on val: its merged model
    and every setting's val figures."""
    pairs = work / "pairs"
    if not (args.reuse_pairs and (pairs / "pairs.parquet").is_file()):
        run("Stage B pairs", ["finetune", "pairs", "--generator", rel(reader), "--replacement", "other-domain",
                              "--questions", "12" if quick else str(args.pair_questions), "--out", rel(pairs)], steps)
    tried = []
    for lr, beta in grid(args.dpo_grid):
        out = work / f"medvlm-ragpt-lr{lr}-beta{beta}"
        shutil.rmtree(out, ignore_errors=True)
        run(f"Stage B (DPO, lr {lr}, beta {beta})",
            ["finetune", "dpo", "--base", rel(reader), "--pairs", rel(pairs), "--out", rel(out), "--lr", lr,
             "--beta", beta, "--sft-weight", args.sft_weight, "--batch-size", "4", "--max-steps", str(b_steps)], steps)
        report = json.loads(run(f"Stage B val (lr {lr}, beta {beta})",
                                ["eval", "scoring", "--generator", rel(out / "merged"), "--save", "--questions",
                                 "6" if quick else str(args.val_questions), "--json"], steps))
        tried.append({"lr": lr, "beta": beta, "scoring": report["summary"], "model": rel(out / "merged"),
                      "val": report["accuracy_chosen"]})
    best = max(tried, key=lambda t: (t["val"]["retrieved"]["all"]["accuracy"], t["val"]["gold"]["all"]["accuracy"]))
    best["chosen"] = True
    return ROOT / best["model"], tried


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-questions", type=int, default=0, help="questions per split, test and added (0: all)")
    parser.add_argument("--generate", type=int, default=10, help="questions per split also answered in free text")
    parser.add_argument("--stage-a-steps", type=int, default=200, help="Stage A optimiser steps (batch 4)")
    parser.add_argument("--stage-a-lr", default="5e-4")
    parser.add_argument("--stage-a", choices=["shipped", "train", "reuse"], default="shipped",
                        help="Stage A: the default VLM's shipped weights, a new rag-sft run, or WORK/medvlm-reader")
    parser.add_argument("--stage-b", action="store_true", help="also run Stage B (pairs + DPO on the Stage A model)")
    parser.add_argument("--pair-questions", type=int, default=240, help="train questions run to build pairs")
    parser.add_argument("--reuse-pairs", action="store_true", help="keep WORK/pairs from an earlier run")
    parser.add_argument("--dpo-steps", type=int, default=40, help="Stage B optimiser steps (batch 4)")
    parser.add_argument("--dpo-grid", default="5e-5:0.1,2e-4:0.1",
                        help="learning-rate:beta settings tried, the best chosen on val (default: %(default)s)")
    parser.add_argument("--sft-weight", default="1.0", help="weight of Stage B's SFT anchor (default: %(default)s)")
    parser.add_argument("--val-questions", type=int, default=60, help="val questions Stage B settings are chosen on")
    parser.add_argument("--skip-sft", action="store_true", help="leave out the knowledge-SFT baseline (its rows "
                        "and the targets against it are then missing from the report)")
    parser.add_argument("--reuse-sft", action="store_true", help="keep WORK/medvlm-sft when it was trained for "
                        "as many steps as the tuned model got")
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

    sft = work / "medvlm-sft"
    if args.stage_a == "shipped":
        from rag.generator import default_vlm_dir

        reader = default_vlm_dir(progress=False)     # the shipped weights merged once, in the user's cache
    else:
        reader = work / "medvlm-reader" / "merged"
    if args.stage_a == "train" or not (reader / "config.json").is_file():
        shutil.rmtree(reader.parent, ignore_errors=True)  # checkpoints of an earlier run must not be resumed
        run("Stage A (rag-sft)", ["finetune", "rag-sft", "--base", ALIGNED, "--out", rel(reader.parent), "--lora-rank",
                                  "8", "--lora-alpha", "16", "--lr", args.stage_a_lr, "--batch-size", "4", "--max-steps",
                                  str(a_steps), "--val-questions", "6" if quick else "60"], steps)
    if args.stage_a == "shipped" and not quick:
        from rag.shipped import shipped_steps

        tuned_steps = shipped_steps()   # all the shipped adapters' steps: Stage A and what was trained on top
    else:
        tuned_steps = a_steps
    grid_report: list[dict] = []
    if args.stage_b:
        ragpt, grid_report = stage_b(args, reader, work, steps, b_steps, quick)
        tuned_steps += b_steps
    models = ["--reader", str(reader)]
    if not args.skip_sft:
        if not (args.reuse_sft and reusable(sft, tuned_steps)):
            shutil.rmtree(sft, ignore_errors=True)
            run("knowledge SFT", ["finetune", "sft", "--base", ALIGNED, "--out", rel(sft), "--lora-rank", "8",
                                  "--lora-alpha", "16", "--lr", args.stage_a_lr, "--batch-size", "4",
                                  "--max-steps", str(tuned_steps)], steps)
        models += ["--sft", rel(sft / "merged")]
    steps_file = work / "steps.json"
    steps_file.write_text(json.dumps(steps, indent=1), encoding="utf-8")
    notes = []
    if args.stage_b:
        models += ["--rag-pt", rel(ragpt)]
        notes = ["Stage B settings tried, chosen on val (" + ", ".join(
            f"lr {t['lr']} beta {t['beta']}: retrieved {t['val']['retrieved']['all']['accuracy']:.3f} "
            f"(yes/no {t['val']['retrieved'].get('yes_no', {}).get('accuracy', float('nan')):.3f}), gold "
            f"{t['val']['gold']['all']['accuracy']:.3f}" + (" **chosen**" if t.get("chosen") else "")
            for t in grid_report) + f"; n={grid_report[0]['val']['retrieved']['all']['n']} val questions)"]
        (work / "stage_b_grid.json").write_text(json.dumps(grid_report, indent=1), encoding="utf-8")
    name = f"{args.name}-quick" if quick else args.name
    run("evaluation", ["eval", "qa", "--base", ALIGNED, *models, "--added-index", rel(added),
                       "--questions", "6" if quick else str(args.eval_questions), "--generate",
                       str(min(args.generate, 2 if quick else args.generate)), "--steps", rel(steps_file),
                       "--out", args.out, "--name", name, *[a for n in notes for a in ("--note", n)]], steps)
    print(f"\nwhole experiment: {sum(s['seconds'] for s in steps) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
