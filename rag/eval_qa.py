"""The factuality experiment of docs/design.md §7: does teaching the VLM to use evidence beat teaching it facts?

Systems (a system is a model plus how much evidence it sees):

    majority       the answer most often right on the train split, whatever the question
    no_retrieval   the base VLM without evidence
    fixed_k        the base VLM with the top `fixed_k` items
    adaptive       the base VLM with adaptively selected evidence
    rag_pt         the DPO-tuned VLM (RAG-PT) with adaptive evidence
    sft            the knowledge-SFT VLM without evidence
    sft_retrieval  the knowledge-SFT VLM with adaptive evidence

Splits: `test` (documents in the index at training time, never trained on by RAG-PT), and `added`
(documents added to the index after training: knowledge fine-tuning cannot know them, retrieval can).

Metrics, per system, split and domain:

* accuracy: the option with the highest mean log-probability is the answer (Wilson 95% interval);
  `generated_accuracy` parses free text to an option on a subset (`generate_n` questions);
* F1: token-level F1 between the predicted and the reference answer text (SQuAD style), averaged;
* citation correctness: of answers that used evidence and cite it, the share citing the question's
  source document;
* copy-reference rate: of image questions answered right with the real image, the share still right
  with the image replaced (noise or another domain's image) over the same evidence (lower: the model
  looks at the image);
* over-reliance rate: of questions the same model answers right without evidence, the share it gets
  wrong with evidence (lower: evidence does less harm).

Each question is retrieved once per split; every model then answers over the same gathered evidence.
Abstention is off: every closed question gets an answer, so accuracies are comparable.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from rag.corpus import QAItem, read_qa
from rag.counterfactual import replaced_image
from rag.generator import Generator, create_generator
from rag.pipeline import Answer, MedRAG
from rag.qa_inputs import closed_questions, image_pool, qa_picture
from rag.reporting import machine_description, new_figure, now, save_figure
from rag.retriever import Retriever
from rag.text import words

SYSTEMS = ("majority", "no_retrieval", "fixed_k", "adaptive", "rag_pt", "sft", "sft_retrieval")
# system -> (model, evidence): model "base" / "rag_pt" / "sft"; evidence "none" / "fixed" / "adaptive"
SYSTEM_SETUP = {"no_retrieval": ("base", "none"), "fixed_k": ("base", "fixed"), "adaptive": ("base", "adaptive"),
                "rag_pt": ("rag_pt", "adaptive"), "sft": ("sft", "none"), "sft_retrieval": ("sft", "adaptive")}
# The systems whose generated (free-text) answers are also scored on the generate_n subset.
GENERATED_SYSTEMS = ("no_retrieval", "adaptive", "rag_pt", "sft")


@dataclass
class Outcome:
    """One system's answer to one question."""

    system: str
    split: str
    qa_id: str
    domain: str
    has_image: bool
    answer: str                        # the reference
    predicted: str
    correct: bool
    gold_doc: str
    n_evidence: int = 0
    cited: list[str] = field(default_factory=list)
    correct_alone: bool | None = None      # the same model without evidence (over-reliance)
    correct_replaced: bool | None = None   # the same model and evidence, image replaced (copy-reference)
    generated_correct: bool | None = None  # free-text answer parsed to the right option (subset only)


# --- inputs ---------------------------------------------------------------------------------------

def majority_answers(train: Iterable[QAItem]) -> Counter[str]:
    """How often each answer text is right on the train split (the majority-class baseline's prior)."""
    return Counter(item.answer for item in train)


def majority_choice(options: Sequence[str], prior: Counter[str]) -> str:
    """The option most often right on the train split; ties go to the first option."""
    return max(options, key=lambda o: (prior[o], -options.index(o)))


# --- metrics --------------------------------------------------------------------------------------

def token_f1(predicted: str, reference: str) -> float:
    """SQuAD-style token F1 (lower-cased word tokens, bag overlap)."""
    p, r = words(predicted), words(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sensible at small n and near 0 or 1)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _rate(flags: list[bool]) -> dict[str, Any]:
    n, k = len(flags), int(sum(flags))
    low, high = wilson_interval(k, n)
    return {"value": round(k / n, 4) if n else None, "n": n,
            "ci95": [round(low, 4), round(high, 4)] if n else None}


def metrics(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Every metric of the experiment over one group of outcomes (one system on one split or domain)."""
    used = [o for o in outcomes if o.n_evidence > 0 and o.cited]
    right_with_image = [o for o in outcomes if o.has_image and o.correct and o.correct_replaced is not None]
    right_alone = [o for o in outcomes if o.correct_alone]
    generated = [o for o in outcomes if o.generated_correct is not None]
    return {
        "n": len(outcomes),
        "accuracy": _rate([o.correct for o in outcomes]),
        "f1": round(float(np.mean([token_f1(o.predicted, o.answer) for o in outcomes])), 4) if outcomes else None,
        "citation_correctness": _rate([o.gold_doc in o.cited for o in used]),
        "copy_reference_rate": _rate([bool(o.correct_replaced) for o in right_with_image]),
        "over_reliance_rate": _rate([not o.correct for o in right_alone]),
        "generated_accuracy": _rate([bool(o.generated_correct) for o in generated]),
        "mean_evidence_items": round(float(np.mean([o.n_evidence for o in outcomes])), 2) if outcomes else None,
    }


def paired_difference(a: Sequence[Outcome], b: Sequence[Outcome], n_boot: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """Accuracy of system a minus system b on the same questions, with a paired bootstrap 95% interval."""
    right_b = {o.qa_id: o.correct for o in b}
    pairs = np.array([(o.correct, right_b[o.qa_id]) for o in a if o.qa_id in right_b], dtype=float)
    if len(pairs) == 0:
        return {"difference": None, "n": 0, "ci95": None}
    diffs = pairs[:, 0] - pairs[:, 1]
    rng = np.random.default_rng(seed)
    boots = diffs[rng.integers(0, len(diffs), (n_boot, len(diffs)))].mean(axis=1)
    return {"difference": round(float(diffs.mean()), 4), "n": int(len(diffs)),
            "ci95": [round(float(np.percentile(boots, 2.5)), 4), round(float(np.percentile(boots, 97.5)), 4)]}


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """metrics() per split and system, overall and per domain."""
    out: dict[str, Any] = {}
    for split in sorted({o.split for o in outcomes}):
        out[split] = {}
        for system in SYSTEMS:
            group = [o for o in outcomes if o.split == split and o.system == system]
            if not group:
                continue
            out[split][system] = {"overall": metrics(group), "by_domain": {
                d: metrics([o for o in group if o.domain == d]) for d in sorted({o.domain for o in group})}}
    return out


# --- running the systems --------------------------------------------------------------------------

@dataclass
class EvalSettings:
    fixed_k: int = 5
    generate_n: int = 20          # questions per split also answered in free text (costly on CPU)
    max_new_tokens: int = 16      # enough for an option's text
    replacement: str = "mixed"


def _correct(answer: Answer, item: QAItem) -> bool:
    return answer.option is not None and item.options[answer.option] == item.answer


def _outcome(system: str, split: str, item: QAItem, answer: Answer) -> Outcome:
    predicted = item.options[answer.option] if answer.option is not None else answer.text
    return Outcome(system, split, item.id, item.domain, bool(item.image), item.answer, predicted,
                   _correct(answer, item), item.doc_id, len(answer.evidence),
                   [c.evidence_id for c in answer.citations])


def run_split(rag: MedRAG, generators: dict[str, Generator], items: list[QAItem], split: str, qa_dir: Path,
              prior: Counter[str], settings: EvalSettings, progress: bool = True) -> list[Outcome]:
    """Answer `items` with every system whose model is in `generators` ("base", "rag_pt", "sft")."""
    pool = image_pool(rag.retriever.bundle.docs.values())
    systems = [s for s, (model, _) in SYSTEM_SETUP.items() if model in generators]
    outcomes: list[Outcome] = []
    for i, item in enumerate(tqdm(items, desc=f"{split}: {len(systems) + 1} systems", unit="q",
                                  disable=not progress)):
        if not item.options or item.answer not in item.options:
            raise ValueError(f"QA item {item.id}: the experiment needs closed questions whose answer is an option")
        guess = majority_choice(item.options, prior)
        outcomes.append(Outcome("majority", split, item.id, item.domain, bool(item.image), item.answer, guess,
                                guess == item.answer, item.doc_id))
        picture = qa_picture(item, qa_dir)
        contexts = {"none": rag.gather(item.question, None, retrieval=False),
                    "adaptive": rag.gather(item.question, picture, item.options)}
        if "fixed_k" in systems:
            contexts["fixed"] = rag.gather(item.question, picture, item.options, k=settings.fixed_k)
        replaced = (replaced_image(picture, item.id, item.domain, settings.replacement, pool)[0]
                    if picture is not None else None)
        alone: dict[str, bool] = {}
        for system in systems:
            model, evidence = SYSTEM_SETUP[system]
            generator = generators[model]
            answer = rag.respond(item.question, picture, item.options, contexts[evidence], "options", generator)
            outcome = _outcome(system, split, item, answer)
            if evidence == "none":
                alone[model] = outcome.correct
            else:
                if model not in alone:
                    alone[model] = _correct(rag.respond(item.question, picture, item.options, contexts["none"],
                                                        "options", generator), item)
                outcome.correct_alone = alone[model]
                if evidence == "adaptive" and replaced is not None:
                    outcome.correct_replaced = _correct(
                        rag.respond(item.question, replaced, item.options, contexts[evidence], "options", generator),
                        item)
            if i < settings.generate_n and system in GENERATED_SYSTEMS:
                free = rag.respond(item.question, picture, item.options, contexts[evidence], "generate", generator,
                                   max_new_tokens=settings.max_new_tokens)
                outcome.generated_correct = _correct(free, item)
            outcomes.append(outcome)
    return outcomes


# --- report ---------------------------------------------------------------------------------------

# (a, b, split, target in accuracy points): the targets, as paired differences
TARGETS = (("rag_pt", "adaptive", "test", 5.0), ("rag_pt", "no_retrieval", "test", 20.0),
           ("rag_pt", "sft", "added", 20.0))


def comparisons(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    rows = []
    for a, b, split, target in TARGETS:
        group_a = [o for o in outcomes if o.system == a and o.split == split]
        group_b = [o for o in outcomes if o.system == b and o.split == split]
        if not group_a or not group_b:
            continue
        diff = paired_difference(group_a, group_b)
        points = None if diff["difference"] is None else round(100 * diff["difference"], 1)
        rows.append({"a": a, "b": b, "split": split, "target_points": target, "points": points,
                     "ci95_points": [round(100 * v, 1) for v in diff["ci95"]] if diff["ci95"] else None,
                     "n": diff["n"], "met": points is not None and points >= target})
    return rows


def over_reliance_change(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The over-reliance rate of RAG-PT against the base model's (adaptive) on the test split."""
    test = summary.get("test", {})
    if "rag_pt" not in test or "adaptive" not in test:
        return None
    before = test["adaptive"]["overall"]["over_reliance_rate"]["value"]
    after = test["rag_pt"]["overall"]["over_reliance_rate"]["value"]
    return {"before": before, "after": after, "fell": None if None in (before, after) else after < before}


def write_report(report: dict[str, Any], out: Path, name: str = "factuality") -> list[Path]:
    """`<name>.json`, `<name>.md` and `<name>.png` (accuracy per system and split, 95% intervals)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = report["summary"]
    splits = [s for s in ("test", "added") if s in summary]
    fig, axes = new_figure(len(splits) + 1, figsize=(6 * (len(splits) + 1), 4.2))
    for ax, split in zip(axes, splits):
        systems = [s for s in SYSTEMS if s in summary[split]]
        acc = [summary[split][s]["overall"]["accuracy"] for s in systems]
        values = [a["value"] for a in acc]
        errors = [[v - a["ci95"][0] for v, a in zip(values, acc)], [a["ci95"][1] - v for v, a in zip(values, acc)]]
        colours = ["#999999" if s == "majority" else "#d62728" if s == "rag_pt" else
                   "#2ca02c" if s.startswith("sft") else "#1f77b4" for s in systems]
        ax.bar(systems, values, yerr=errors, color=colours, capsize=3)
        ax.set(ylim=(0, 1), ylabel="accuracy (option log-prob)", title=f"{split} split (n={acc[0]['n']})")
        ax.tick_params(axis="x", rotation=40)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[-1]
    test = summary.get("test", {})
    rate_systems = [s for s in ("adaptive", "rag_pt", "sft_retrieval") if s in test]
    width = 0.38
    for j, metric in enumerate(("over_reliance_rate", "copy_reference_rate")):
        vals = [test[s]["overall"][metric]["value"] or 0 for s in rate_systems]
        ax.bar(np.arange(len(rate_systems)) + (j - 0.5) * width, vals, width, label=metric.replace("_", " "))
    ax.set_xticks(np.arange(len(rate_systems)), rate_systems)
    ax.set(ylim=(0, 1), title="alignment rates, test split (lower is better)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, out / f"{name}.png")

    (out / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(markdown(report, name), encoding="utf-8")
    return [out / f"{name}.{ext}" for ext in ("json", "md", "png")]


def _fmt(rate: dict[str, Any]) -> str:
    if rate is None or rate.get("value") is None:
        return "–"
    low, high = rate["ci95"]
    return f"{rate['value']:.3f} [{low:.2f}, {high:.2f}] (n={rate['n']})"


def markdown(report: dict[str, Any], name: str = "factuality") -> str:
    summary = report["summary"]
    lines = ["# Factuality experiment: RAG preference tuning vs knowledge fine-tuning (docs/design.md §7)", "",
             f"Date: {report['date']}  ", f"Machine: {report['machine']}  ",
             f"Total wall time: {report['total_seconds'] / 60:.1f} min", ""]
    if report.get("steps"):
        lines += ["## Commands and run times", "", "| step | command | seconds |", "|---|---|---|"]
        lines += [f"| {s['step']} | `{s['command']}` | {s['seconds']} |" for s in report["steps"]]
        command = report["command"].split(" --note ")[0] + (" --note …" if " --note " in report["command"] else "")
        lines += [f"| evaluation | `{command}` | {round(sum(report['eval_seconds'].values()), 1)} |", ""]
    lines += ["## Settings", "", "```json", json.dumps(report["settings"], indent=2), "```", ""]
    for split in [s for s in ("test", "added") if s in summary]:
        lines += [f"## {split} split", "",
                  "| system | accuracy [95% CI] | F1 | citation correctness | copy-reference rate | "
                  "over-reliance rate | generated accuracy | evidence items |",
                  "|---|---|---|---|---|---|---|---|"]
        for system, data in summary[split].items():
            m = data["overall"]
            lines.append(f"| {system} | {_fmt(m['accuracy'])} | {m['f1']} | {_fmt(m['citation_correctness'])} | "
                         f"{_fmt(m['copy_reference_rate'])} | {_fmt(m['over_reliance_rate'])} | "
                         f"{_fmt(m['generated_accuracy'])} | {m['mean_evidence_items']} |")
        domains = sorted({d for data in summary[split].values() for d in data["by_domain"]})
        lines += ["", f"Accuracy per domain ({split}):", "",
                  "| system | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
        for system, data in summary[split].items():
            cells = [data["by_domain"].get(d, {}).get("accuracy", {}) for d in domains]
            lines.append(f"| {system} | " + " | ".join(
                f"{c['value']:.2f} (n={c['n']})" if c.get("value") is not None else "–" for c in cells) + " |")
        lines.append("")
    if report.get("comparisons"):
        lines += ["## Targets (paired differences in accuracy points, bootstrap 95% CI)", "",
                  "| comparison | split | target | measured | 95% CI | n | met |", "|---|---|---|---|---|---|---|"]
        for c in report["comparisons"]:
            ci = f"[{c['ci95_points'][0]}, {c['ci95_points'][1]}]" if c["ci95_points"] else "–"
            lines.append(f"| {c['a']} − {c['b']} | {c['split']} | ≥ +{c['target_points']} | {c['points']} | {ci} "
                         f"| {c['n']} | {'yes' if c['met'] else 'no'} |")
        lines.append("")
    change = report.get("over_reliance")
    if change:
        lines += [f"Over-reliance rate on test, base model with adaptive evidence → RAG-PT: {change['before']} → "
                  f"{change['after']} ({'fell' if change['fell'] else 'did not fall'}).", ""]
    lines += [f"![accuracy per system and split]({name}.png)", ""]
    if report.get("notes"):
        lines += ["## Notes", "", *(f"- {n}" for n in report["notes"]), ""]
    return "\n".join(lines)


def outcomes_to_json(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    return [asdict(o) for o in outcomes]


# --- the experiment end to end --------------------------------------------------------------------

def run_factuality(qa: str | Path, base: str, index: str | Path, *, added_index: str | Path | None = None,
                   rag_pt: str | None = None, sft: str | None = None, splits: Sequence[str] = ("test", "added"),
                   questions: int = 0, seed: int = 0, settings: EvalSettings | None = None,
                   steps: Sequence[dict[str, Any]] = (), notes: Sequence[str] = (), command: str = "",
                   out: str | Path = "benchmarks/results", name: str = "factuality",
                   progress: bool = True) -> tuple[dict[str, Any], list[Path]]:
    """The whole experiment: every system whose model is given (`base`; `rag_pt`, `sft` optional) on
    `questions` closed questions per split (0: all), stratified by domain. The `test` split is retrieved
    from `index`, the `added` split from `added_index` (the index that also holds the documents added
    after training). Writes `out/name.{json,md,png}` and returns the report and those paths.

    `steps` are earlier steps ({step, command, seconds}, e.g. training) whose run times the report adds
    to its own; `command` is how the run was started, for the report's header."""
    started = time.perf_counter()
    settings = settings or EvalSettings()
    indexes = {"test": str(index), "added": str(added_index) if added_index else None}
    # Checked before any model loads: a typo should not cost the minutes the first split takes.
    for split in splits:
        if split not in indexes:
            raise ValueError(f"--splits takes test and/or added, got {split!r}")
        if not indexes[split]:
            raise ValueError("the added split needs --added-index: the index with the added documents "
                             "(`medrag index add`), built after training")
    models = {"base": base, "rag_pt": rag_pt, "sft": sft}
    generators = {model: create_generator(path) for model, path in models.items() if path}
    prior = majority_answers(q for q in read_qa(qa) if q.split == "train")
    outcomes: list[Outcome] = []
    timings: dict[str, float] = {}
    for split in splits:
        split_started = time.perf_counter()
        rag = MedRAG(Retriever.load(indexes[split]), generators["base"])
        items = closed_questions(qa, [split], questions, seed)
        outcomes += run_split(rag, generators, items, split, Path(qa).parent, prior, settings, progress=progress)
        timings[split] = round(time.perf_counter() - split_started, 1)
    summary = summarise(outcomes)
    report = {"date": now(), "machine": machine_description(), "command": command,
              "settings": {**asdict(settings), "questions_per_split": questions, "seed": seed,
                           "models": models, "indexes": indexes, "qa": str(qa)},
              "eval_seconds": timings, "steps": list(steps),
              "total_seconds": round(sum(s["seconds"] for s in steps) + time.perf_counter() - started, 1),
              "summary": summary, "comparisons": comparisons(outcomes), "over_reliance": over_reliance_change(summary),
              "notes": list(notes), "outcomes": outcomes_to_json(outcomes)}
    return report, write_report(report, Path(out), name)
