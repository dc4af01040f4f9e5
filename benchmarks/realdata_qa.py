"""Closed questions on real data nobody here wrote: MedPix 2.0 image questions and Chinese TCM multiple
choice, each system with and without evidence, beside the majority class and chance (issue 14, item 8).

    python benchmarks/realdata_qa.py                         # Stage A: the shipped default VLM
    python benchmarks/realdata_qa.py --base data/models/medvlm-aligned --model stage_ab=data/models/rag-pt
    python benchmarks/realdata_qa.py --limit 10 --blocks medpix   # a quick look at 10 questions

Writes benchmarks/results/realdata_qa.{json,md,png} (command, machine, date, every answer).

Blocks (the data lives in ../shared/realdata, or $MEDRAG_REALDATA; nothing is copied into the repository):

- `medpix`: the MedPix 2.0 test cases as `benchmarks/retrieval.py` prepares them (`medpix_cases`: one
  document per case without its Findings, the first image of every multi-image case held out of the
  index). Each held-out image is asked its case's diagnosis (among distractors from the case's own
  differential), its modality and its plane (`rag.importers.medpix.closed_questions`). Evidence is
  retrieved from an index of those cases, built in a temporary folder; the question's image is in no
  document of it, so it cannot simply be looked up.
- `tcmbench`: the materia-medica (中药学) questions of the TCMBench sample (A1/A2, A3/A4, B1; 5 options);
- `cmmlu`: CMMLU's traditional_chinese_medicine test questions (4 options).
  The TCM questions are answered without evidence and with evidence retrieved from the sample index
  (`--tcm-index`, the sample corpus's herb monographs); their questions come with no gold document.

Every answer goes the project's own way: `MedRAG.gather` once per question, then `MedRAG.respond`
(mode "options", the model's saved scoring rule) per model and condition; abstention is off, so every
question is answered. Metrics (`rag.eval_qa.metrics`): accuracy with its 95% Wilson interval per block
and per question kind, the over-reliance rate (right alone, wrong with evidence) and the share of
questions answered the same with and without evidence. Baselines: `majority` (in-sample: per kind, the
answer most often right when the kind has one fixed option set; else the answer position most often
right over the block's questions whose options vary; an optimistic constant guesser), `longest` (the
longest option: the length bias of option scoring shows against it) and chance (the mean of 1 / number
of options).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.retrieval import REALDATA, medpix_cases  # noqa: E402
from rag.corpus import QAItem  # noqa: E402
from rag.eval_qa import Outcome, answer_outcome, majority_answers, majority_choice, metrics, paired  # noqa: E402
from rag.eval_stats import rate  # noqa: E402
from rag.importers.medpix import closed_questions  # noqa: E402
from rag.importers.tcm_mcq import read_cmmlu, read_tcmbench  # noqa: E402
from rag.qa_inputs import qa_picture, question_kind, stratified_sample  # noqa: E402
from rag.reporting import machine_description, new_figure, now, save_figure  # noqa: E402
from rag.vlm import DEFAULT_VLM  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
BLOCKS = ("medpix", "tcmbench", "cmmlu")
TCMBENCH_FILES = ("FKU_A1A2_sample300.json", "CVR_A3A4_sample50.json", "KHC_B1_sample50.json")
CMMLU_FILE = "test_traditional_chinese_medicine.csv"
BASELINES = ("majority", "longest")


def kind_of(item: QAItem) -> str:
    """The question kind a block is broken down by: MedPix's topic, or the TCM question's source file."""
    return item.metadata.get("topic") or item.metadata.get("source") or question_kind(item)


# --- the questions ----------------------------------------------------------------------------------

def medpix_block(work: Path) -> tuple[list[QAItem], Path, Path]:
    """(questions, the folder their image paths are relative to, the corpus to index).

    The held-out images are `medpix_cases`'s; only they are asked about, so no question's image is in
    the index."""
    corpus, queries = medpix_cases(work / "medpix")
    held_out = {q.image for q in queries if q.image}
    questions = closed_questions(work / "medpix" / "corpus.jsonl", images=held_out)
    missing = sorted(held_out - {q.image for q in questions})
    if missing:
        raise RuntimeError(f"no closed question was built for held-out image(s) {missing[:3]}")
    return questions, work / "medpix", corpus


def tcm_questions(block: str, root: Path = REALDATA) -> list[QAItem]:
    if block == "tcmbench":
        return [q for name in TCMBENCH_FILES for q in read_tcmbench(root / "tcmbench_sample" / name)]
    return read_cmmlu(root / "cmmlu_tcm" / CMMLU_FILE)


# --- baselines --------------------------------------------------------------------------------------

def majority_guesses(items: list[QAItem]) -> dict[str, str]:
    """qa id -> the majority-class guess. A kind whose questions all share one option set (modality,
    plane) guesses its answer most often right (`rag.eval_qa.majority_choice`). Questions whose options
    differ per question (diagnosis, TCM) guess the answer position most often right over all of them
    (ties: the first), pooled across kinds: a position fitted on a kind of five questions would flatter it."""
    guesses: dict[str, str] = {}
    varying: list[QAItem] = []
    for kind in sorted({kind_of(q) for q in items}):
        group = [q for q in items if kind_of(q) == kind]
        if len({tuple(q.options) for q in group}) > 1:
            varying += group
            continue
        prior = majority_answers(group)
        guesses.update({q.id: majority_choice(q.options, prior) for q in group})
    if varying:
        positions = Counter(q.options.index(q.answer) for q in varying)
        best = max(positions, key=lambda p: (positions[p], -p))
        guesses.update({q.id: q.options[min(best, len(q.options) - 1)] for q in varying})
    return guesses


def _baseline(system: str, block: str, item: QAItem, guess: str) -> Outcome:
    return Outcome(system, block, item.id, item.domain, question_kind(item), bool(item.image), False, item.answer,
                   guess, guess == item.answer, item.doc_id)


def baseline_outcomes(block: str, items: list[QAItem]) -> list[Outcome]:
    majority = majority_guesses(items)
    return [o for q in items for o in (_baseline("majority", block, q, majority[q.id]),
                                       _baseline("longest", block, q, max(q.options, key=len)))]


def chance(items: list[QAItem]) -> float | None:
    return round(sum(1 / len(q.options) for q in items) / len(items), 4) if items else None


# --- answering ----------------------------------------------------------------------------------------

def named_documents(item: QAItem, names: dict[str, str]) -> list[str]:
    """The index's documents whose Chinese name (a herb's, in the sample corpus) the question or its
    options write: evidence that can help a question without a gold document."""
    text = item.question + " " + " ".join(item.options or [])
    return sorted(doc_id for doc_id, name in names.items() if name in text)


def answer_block(block: str, items: list[QAItem], qa_dir: Path | None, index: Path, generators: dict[str, Any],
                 log_every: int = 10) -> tuple[list[Outcome], dict[str, dict[str, Any]]]:
    """Every model's answers without and with retrieved evidence ("+rag"), and per question what the
    evidence held: the gold document's rank among the kept items (MedPix), the evidence titles."""
    from rag.pipeline import MedRAG
    from rag.retriever import Retriever

    rag = MedRAG(Retriever.load(index), next(iter(generators.values())))
    names = {d.id: d.names["zh"] for d in rag.retriever.bundle.docs.values() if d.names.get("zh")}
    outcomes: list[Outcome] = []
    evidence: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for i, item in enumerate(items):
        picture = qa_picture(item, qa_dir) if item.image else None
        contexts = {"": rag.gather(item.question, None, retrieval=False),
                    "+rag": rag.gather(item.question, picture, item.options)}
        kept = [e.id for e in contexts["+rag"].evidence]
        named = named_documents(item, names)
        evidence[item.id] = {"kept": kept, "gold_rank": kept.index(item.doc_id) + 1 if item.doc_id in kept else None,
                             "titles": [e.title for e in contexts["+rag"].evidence], "named": named,
                             "named_kept": [d for d in kept if d in named]}
        for name, generator in generators.items():
            alone = None
            for condition, context in contexts.items():
                answer = rag.respond(item.question, picture, item.options, context, "options", generator)
                outcome = answer_outcome(name + condition, block, item, answer)
                if condition:
                    outcome.correct_alone = alone
                else:
                    alone = outcome.correct
                outcomes.append(outcome)
        if (i + 1) % log_every == 0 or i + 1 == len(items):
            print(f"  {block}: {i + 1}/{len(items)} questions, {time.perf_counter() - started:.0f} s", flush=True)
    return outcomes, evidence


# --- summary ------------------------------------------------------------------------------------------

def same_answer_rate(outcomes: list[Outcome], model: str) -> dict[str, Any]:
    """Of the questions a model answered both ways, the share answered the same with and without evidence."""
    alone = {o.qa_id: o.predicted for o in outcomes if o.system == model}
    return rate([o.predicted == alone[o.qa_id] for o in outcomes if o.system == f"{model}+rag" and o.qa_id in alone])


def _shares(answers: list[str]) -> dict[str, float]:
    counts = Counter(answers)
    return {a: round(n / len(answers), 3) for a, n in sorted(counts.items())}


def summarise_block(items: list[QAItem], outcomes: list[Outcome], evidence: dict[str, dict[str, Any]],
                    models: list[str]) -> dict[str, Any]:
    kinds = sorted({kind_of(q) for q in items})
    kind = {q.id: kind_of(q) for q in items}
    systems = [*BASELINES, *(f"{m}{c}" for m in models for c in ("", "+rag"))]
    out: dict[str, Any] = {"n": len(items), "kinds": {k: sum(kind[q.id] == k for q in items) for k in kinds},
                           "chance": {"overall": chance(items),
                                      **{k: chance([q for q in items if kind[q.id] == k]) for k in kinds}},
                           "systems": {}}
    for system in systems:
        rows = [o for o in outcomes if o.system == system]
        out["systems"][system] = {"overall": metrics(rows),
                                  "by_kind": {k: metrics([o for o in rows if kind[o.qa_id] == k]) for k in kinds}}
    out["same_answer_with_and_without_evidence"] = {m: same_answer_rate(outcomes, m) for m in models}
    # Where a kind has one option set, how often each system picks each option: a model that always
    # says "MRI" scores the MR share, and evidence that only flips it to "CT" is not being read.
    out["answer_shares"] = {k: {"gold": _shares([q.answer for q in items if kind[q.id] == k]),
                                **{s: _shares([o.predicted for o in outcomes if o.system == s and kind[o.qa_id] == k])
                                   for s in systems if s not in BASELINES}}
                            for k in kinds if len({tuple(q.options) for q in items if kind[q.id] == k}) == 1}
    gold = [evidence[q.id]["gold_rank"] for q in items if q.id in evidence and not q.metadata.get("no_document")]
    out["gold_document_in_evidence"] = rate([r is not None for r in gold]) if gold else None
    named = [q for q in items if evidence.get(q.id, {}).get("named")]
    if any(q.metadata.get("no_document") for q in items):
        # Questions without a gold document: how often the evidence is about a herb they name, and the
        # models on those questions alone (where evidence could help at all).
        out["question_names_an_indexed_herb"] = rate([bool(evidence[q.id]["named"]) for q in items if q.id in evidence])
        out["evidence_about_a_named_herb"] = rate([bool(evidence[q.id]["named_kept"]) for q in items if q.id in evidence])
        relevant = {q.id for q in named if evidence[q.id]["named_kept"]}
        out["on_questions_with_evidence_about_a_named_herb"] = {
            s: metrics([o for o in outcomes if o.system == s and o.qa_id in relevant]) for s in systems}
    # Paired over the same questions, clustered by document (a MedPix case; a TCM question is its own):
    # what evidence changes for each model, and each model against the majority class.
    pairs = [(f"{m}+rag", m) for m in models] + [(f"{m}{c}", "majority") for m in models for c in ("", "+rag")]
    out["paired"] = {f"{a} − {b}": paired(outcomes, a, b, outcomes[0].split) for a, b in pairs}
    out["mean_evidence_items"] = round(sum(len(e["kept"]) for e in evidence.values()) / len(evidence), 2) if evidence else None
    return out


# --- report ---------------------------------------------------------------------------------------------

def _acc(m: dict[str, Any]) -> str:
    a = m["accuracy"]
    if a["value"] is None:
        return "–"
    return f"{a['value']:.3f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}] ({a['n']})"


def block_table(name: str, block: dict[str, Any]) -> list[str]:
    kinds = list(block["kinds"])
    lines = [f"## {name} ({block['n']} questions: " + ", ".join(f"{k} {n}" for k, n in block["kinds"].items()) + ")", "",
             f"Index: `{block['index']}`; evidence items kept per question: {block['mean_evidence_items']}; "
             + (f"gold case document among them: {_rate(block['gold_document_in_evidence'])}."
                if block.get("gold_document_in_evidence") else "no gold document (the questions come without one)."),
             "", "| system | accuracy [95% CI] (n) | " + " | ".join(kinds) + " | over-reliance | same answer ± evidence |",
             "|---" * (4 + len(kinds)) + "|",
             f"| chance | {block['chance']['overall']:.3f} | " + " | ".join(f"{block['chance'][k]:.3f}" for k in kinds)
             + " | | |"]
    for system, m in block["systems"].items():
        same = block["same_answer_with_and_without_evidence"].get(system.removesuffix("+rag"))
        lines.append(f"| {system} | {_acc(m['overall'])} | " + " | ".join(_acc(m["by_kind"][k]) for k in kinds)
                     + f" | {_rate(m['overall']['over_reliance_rate']) if system.endswith('+rag') else ''}"
                     + f" | {_rate(same) if system.endswith('+rag') and same else ''} |")
    lines += ["", "Paired differences (accuracy points, 95% bootstrap interval over documents, McNemar p): "
              + "; ".join(f"{name} {100 * d['difference']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
                          f" p={d['mcnemar_p']}" for name, d in block["paired"].items() if d["n"]) + "."]
    for k, shares in block.get("answer_shares", {}).items():
        lines += ["", f"Answers picked, {k}: " + "; ".join(f"{s} `{json.dumps(v)}`" for s, v in shares.items()) + "."]
    if "evidence_about_a_named_herb" in block:
        subset = block["on_questions_with_evidence_about_a_named_herb"]
        lines += ["", f"Questions that name a herb of the index (its Chinese name): {_rate(block['question_names_an_indexed_herb'])}; "
                  f"questions whose evidence is about a herb they name: {_rate(block['evidence_about_a_named_herb'])}. "
                  "On those questions alone: " + "; ".join(f"{s} {_acc(m)}" for s, m in subset.items()
                                                          if s not in BASELINES) + "."]
    return lines + [""]


def _rate(r: dict[str, Any] | None) -> str:
    if not r or r.get("value") is None:
        return "–"
    return f"{r['value']:.3f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] (n={r['n']})"


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Closed questions on real data: MedPix 2.0 and Chinese TCM multiple choice", "",
             f"- command: `{report['command']}`", f"- machine: {report['machine']}", f"- date: {report['date']}",
             f"- models: `{json.dumps(report['models'])}`; scoring rules: `{json.dumps(report['scoring_rules'])}`",
             f"- wall time: {report['seconds']} s", "",
             "`majority`: the answer most often right per kind (fixed option sets), or the answer position most "
             "often right over the block (options that differ per question), fitted on the block itself: an "
             "optimistic constant guesser. `longest`: the longest option (the first of equals). `+rag`: with "
             "the evidence retrieval and adaptive selection kept. Over-reliance: of the questions the model gets "
             "right without evidence, the share it gets wrong with it.", ""]
    for name, block in report["blocks"].items():
        lines += block_table(name, block)
    lines += ["![accuracy per block and system](realdata_qa.png)", ""]
    if report.get("examples"):
        lines += ["## One question of each kind", ""]
        lines += [f"- **{e['kind']}** ({e['id']}): {e['question']!r} options {e['options']} → answer "
                  f"**{e['answer']}**" for e in report["examples"]]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    blocks = list(report["blocks"])
    fig, axes = new_figure(len(blocks), figsize=(4.6 * len(blocks), 3.8))
    for ax, name in zip(axes if len(blocks) > 1 else [axes], blocks):
        systems = report["blocks"][name]["systems"]
        acc = [systems[s]["overall"]["accuracy"] for s in systems]
        values = [a["value"] or 0 for a in acc]
        errors = [[v - (a["ci95"] or [v])[0] for v, a in zip(values, acc)],
                  [(a["ci95"] or [0, v])[1] - v for v, a in zip(values, acc)]]
        ax.bar(list(systems), values, yerr=errors, capsize=3,
               color=["#999999" if s in BASELINES else ("#ff7f0e" if s.endswith("+rag") else "#1f77b4") for s in systems])
        ax.axhline(report["blocks"][name]["chance"]["overall"], color="k", ls=":", lw=1, label="chance")
        ax.set(ylim=(0, 1), ylabel="accuracy", title=f"{name} (n={report['blocks'][name]['n']})")
        ax.tick_params(axis="x", rotation=45)
        ax.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)


# --- main -------------------------------------------------------------------------------------------------

def report_json(report: dict[str, Any]) -> str:
    """The report as JSON, indented, with one line per answer (thousands of them: indented, they would
    make the file several times longer and no easier to read)."""
    head = json.dumps({k: v for k, v in report.items() if k != "outcomes"}, indent=2, ensure_ascii=False)
    rows = ",\n".join("    " + json.dumps(o, ensure_ascii=False) for o in report["outcomes"])
    return head[:-2] + ',\n  "outcomes": [\n' + rows + "\n  ]\n}\n"


def parse_models(pairs: list[str], base: str | None) -> dict[str, str]:
    models: dict[str, str] = {}
    for pair in pairs or [f"stage_a={DEFAULT_VLM}"]:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path or "+" in name or name in BASELINES:
            raise SystemExit(f"--model takes NAME=PATH (NAME without '+', not {BASELINES}), got {pair!r}")
        models[name] = path
    if base:
        models = {"base": base, **models}
    return models


def run(args: argparse.Namespace, models: dict[str, str], work: Path) -> dict[str, Any]:
    from rag.generator import create_generator
    from rag.index_build import build_index

    generators = {name: create_generator(path, progress=False) for name, path in models.items()}
    report: dict[str, Any] = {"scoring_rules": {n: g.scoring.describe() for n, g in generators.items()}, "blocks": {},
                              "outcomes": [], "evidence": {}, "examples": []}
    for block in args.blocks:
        started = time.perf_counter()
        if block == "medpix":
            items, qa_dir, corpus = medpix_block(work)
            index = work / "medpix-index"
            build_index(corpus, index, progress=False)
        else:
            items, qa_dir, index = tcm_questions(block), None, Path(args.tcm_index)
        items = stratified_sample(items, args.limit, args.seed) if args.limit else items
        print(f"{block}: {len(items)} questions, evidence from {index}", flush=True)
        outcomes, evidence = answer_block(block, items, qa_dir, index, generators)
        outcomes += baseline_outcomes(block, items)
        summary = summarise_block(items, outcomes, evidence, list(models))
        summary["index"] = str(index) if block != "medpix" else "MedPix cases, built in a temporary folder"
        summary["seconds"] = round(time.perf_counter() - started, 1)
        report["blocks"][block] = summary
        report["outcomes"] += [asdict(o) for o in outcomes]
        report["evidence"][block] = evidence
        seen: set[str] = set()
        report["examples"] += [{"kind": kind_of(q), "id": q.id, "question": q.question, "options": q.options,
                                "answer": q.answer} for q in items if not (kind_of(q) in seen or seen.add(kind_of(q)))]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help=f"a system to answer with, repeatable (default: stage_a={DEFAULT_VLM})")
    parser.add_argument("--base", help="the base model (projector-aligned only), reported as 'base'")
    parser.add_argument("--blocks", default=",".join(BLOCKS), help=f"comma-separated, of {BLOCKS}")
    parser.add_argument("--tcm-index", default=str(REPO / "indexes" / "sample"), help="evidence for the TCM blocks")
    parser.add_argument("--limit", type=int, default=0, help="at most this many questions per block (seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", default=str(RESULTS / "realdata_qa"), help="output path without suffix")
    args = parser.parse_args()
    args.blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    if unknown := sorted(set(args.blocks) - set(BLOCKS)):
        parser.error(f"unknown block(s) {unknown}; choose from {BLOCKS}")
    if not REALDATA.is_dir():
        parser.error(f"{REALDATA} not found: set MEDRAG_REALDATA to the folder with medpix2_test, tcmbench_sample, cmmlu_tcm")
    models = parse_models(args.model, args.base)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    header = {"command": "python benchmarks/realdata_qa.py " + " ".join(sys.argv[1:]), "machine": machine_description(),
              "date": now(), "models": models}
    with tempfile.TemporaryDirectory() as work:
        report = {**header, **run(args, models, Path(work))}
    report["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(report_json(report), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    plot(report, out.with_suffix(".png"))
    print(markdown(report))
    print(f"wrote {out.with_suffix('.json')}, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
