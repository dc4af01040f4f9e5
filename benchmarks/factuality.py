"""The factuality experiment of docs/design.md §7, end to end, with the run time of every step.

    .venv/bin/python benchmarks/factuality.py                 # the committed run (defaults below)
    .venv/bin/python benchmarks/factuality.py --quick         # a smoke run: few questions, few steps

Steps, each a `medrag` command run as a subprocess and timed:

0. `medrag demo` when the sample corpus, the default index or the aligned VLM is missing;
1. the "added" index: a copy of the default index plus `data/sample/corpus_added.jsonl`
   (`medrag index add`), standing for documents that arrive after training;
2. `medrag finetune pairs` on a stratified sample of the train split (the aligned VLM answers);
3. `medrag finetune dpo` (RAG-PT) on those pairs;
4. `medrag finetune sft` (knowledge SFT) on the indexed documents' facts;
5. `medrag eval qa` on stratified samples of the test and added splits, which writes
   `benchmarks/results/factuality.{json,md,png}` with the commands and run times of all steps.

Sample sizes are chosen so the whole experiment fits in 90 minutes on 2 CPU cores; the report
gives 95% intervals for every rate and for the target differences.
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


def run(step: str, args: list[str], steps: list[dict]) -> None:
    command = "medrag " + " ".join(args)
    print(f"\n== {step}: {command}", flush=True)
    started = time.perf_counter()
    subprocess.run(MEDRAG + args, cwd=ROOT, check=True)
    seconds = round(time.perf_counter() - started, 1)
    steps.append({"step": step, "command": command, "seconds": seconds})
    print(f"== {step} took {seconds} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair-questions", type=int, default=300, help="train questions run to build pairs")
    parser.add_argument("--eval-questions", type=int, default=80, help="questions per split (test, added)")
    parser.add_argument("--generate", type=int, default=12, help="questions per split also answered in free text")
    parser.add_argument("--dpo-epochs", default="2")
    parser.add_argument("--dpo-lr", default="5e-4")
    parser.add_argument("--dpo-steps", type=int, help="cap on DPO optimizer steps (batch 4)")
    parser.add_argument("--sft-steps", type=int, default=40,
                        help="cap on SFT optimizer steps (batch 8); about 0.2 epoch, to fit in 90 minutes")
    parser.add_argument("--reuse-pairs", action="store_true",
                        help="keep the pairs of an earlier run in WORK/pairs (their build time is taken from its steps.json)")
    parser.add_argument("--sft-epochs", default="1")
    parser.add_argument("--sft-questions", type=int, default=200, help="train questions in the SFT data")
    parser.add_argument("--work", default="data/experiment", help="where pairs, models and the added index go")
    parser.add_argument("--out", default="benchmarks/results", help="report folder")
    parser.add_argument("--name", default="factuality", help="report file stem")
    parser.add_argument("--quick", action="store_true", help="smoke run: 12 pair questions, 2 training steps, "
                        "6 questions per split, report named factuality-quick")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = ROOT / args.work
    steps: list[dict] = []
    limit = ["--max-steps", "2"] if args.quick else []
    pair_n, eval_n = (12, 6) if args.quick else (args.pair_questions, args.eval_questions)
    name = f"{args.name}-quick" if args.quick else args.name

    base = "data/models/medvlm-sample"
    if not ((ROOT / base / "config.json").is_file() and (ROOT / "indexes/sample/CURRENT").is_file()):
        run("demo (corpus, index, aligned VLM)", ["demo"], steps)

    added = work / "index-added"
    if added.exists():
        shutil.rmtree(added)
    started = time.perf_counter()
    shutil.copytree(ROOT / "indexes/sample", added, symlinks=True)
    steps.append({"step": "copy the index", "command": f"cp -r indexes/sample {added.relative_to(ROOT)}",
                  "seconds": round(time.perf_counter() - started, 1)})
    run("index the added documents", ["index", "add", str(added.relative_to(ROOT)), "--corpus", "data/sample/corpus_added.jsonl"],
        steps)
    pairs, ragpt, sft = work / "pairs", work / "medvlm-ragpt", work / "medvlm-sft"
    for old in (ragpt, sft):  # checkpoints of an earlier run must not be resumed by accident
        shutil.rmtree(old, ignore_errors=True)
    rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731  (short paths in the report)
    if args.reuse_pairs:
        earlier = json.loads((work / "steps.json").read_text(encoding="utf-8"))
        steps.append(next(s for s in earlier if s["step"] == "preference pairs"))
    else:
        run("preference pairs", ["finetune", "pairs", "--generator", base,
                                 "--questions", str(pair_n), "--out", rel(pairs)], steps)
    dpo_limit = limit or (["--max-steps", str(args.dpo_steps)] if args.dpo_steps else [])
    sft_limit = limit or (["--max-steps", str(args.sft_steps)] if args.sft_steps else [])
    run("RAG-PT (DPO)", ["finetune", "dpo", "--base", base, "--pairs", rel(pairs), "--out", rel(ragpt),
                         "--epochs", args.dpo_epochs, "--lr", args.dpo_lr, *dpo_limit], steps)
    run("knowledge SFT", ["finetune", "sft", "--base", base, "--questions", str(args.sft_questions),
                          "--out", rel(sft), "--epochs", args.sft_epochs, "--batch-size", "8", *sft_limit], steps)
    steps_file = work / "steps.json"
    steps_file.write_text(json.dumps(steps, indent=1), encoding="utf-8")
    pairs_summary = json.loads((pairs / "pairs.json").read_text(encoding="utf-8"))
    notes = [f"Preference pairs from {pairs_summary['questions']} train questions: "
             + ", ".join(f"{k} {v}" for k, v in pairs_summary["counts"].items())
             + f"; the aligned VLM was right on {pairs_summary['accuracy_with_retrieval']:.3f} of them with "
               f"retrieval and {pairs_summary['accuracy_without_retrieval']:.3f} without; evidence items per "
               f"prompt {pairs_summary['evidence_items']}."]
    run("evaluation", ["eval", "qa", "--base", base, "--rag-pt", rel(ragpt / "merged"), "--sft", rel(sft / "merged"),
                       "--added-index", rel(added), "--questions", str(eval_n), "--generate",
                       str(min(args.generate, eval_n)), "--steps", rel(steps_file), "--out", args.out,
                       "--name", name, *[x for n in notes for x in ("--note", n)]], steps)
    print(f"\nwhole experiment: {sum(s['seconds'] for s in steps) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
