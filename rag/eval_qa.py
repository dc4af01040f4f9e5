"""The factuality experiment of docs/design.md §7: does teaching the VLM to use evidence beat teaching it facts?

Models: `base` (the projector-aligned VLM, never taught to answer), `reader` (Stage A: retrieval-
augmented instruction tuning), `rag_pt` (Stage A + B: preference tuning on top), `sft` (knowledge
fine-tuning, the baseline that puts the documents' facts into the weights). Each model answers with
no evidence, with the evidence retrieval and adaptive selection gathered ("+rag"), and, for the
models that read, with the question's own document put among those items ("+gold", the oracle row:
does the model read a document that holds the answer). `majority` answers the option most often
right on the train split.

Splits: `test` (documents in the index at training time, never trained on), and `added` (documents
added to the index after training: knowledge fine-tuning cannot know them, retrieval can).

Every metric is reported overall and per group: question kind (yes/no, multiple choice), with or
without an image, the templates held out of all training (`rag.qa_inputs.HELD_OUT_TOPICS`), and the
domain. Metrics:

* accuracy: the option with the best score under the model's scoring rule (Wilson 95% interval);
  `generated_accuracy` parses free text to an option on a subset (`generate_n` questions);
* yes rate: of yes/no questions, the share answered "yes" (answer collapse shows here; compare
  the gold "yes" rate);
* citation correctness: of answers that used evidence and cite it, the share citing the question's
  source document, counted separately for citations the model wrote and ones attributed afterwards;
* copy-reference rate: of image questions answered right with the real image, the share still right
  with a real image from another case or domain over the same evidence (lower: the model looks);
* over-reliance rate: of questions the same model answers right without evidence, the share it gets
  wrong with evidence (lower: evidence does less harm).

Comparisons are paired over the same questions: the difference in accuracy points with a bootstrap
95% interval that resamples documents, and the McNemar exact p-value (`rag.eval_stats`). Each
question is retrieved once per split; every model answers over the same gathered evidence.
Abstention is off: every closed question gets an answer, so accuracies are comparable.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.colors import to_rgba
from tqdm import tqdm

from rag.corpus import QAItem, read_qa
from rag.counterfactual import replaced_image
from rag.eval_stats import clustered_difference, rate
from rag.evidence_variants import with_gold
from rag.generator import Generator, create_generator
from rag.pipeline import Answer, Context, MedRAG
from rag.qa_inputs import closed_questions, image_pool, is_held_out, qa_picture, question_kind
from rag.reporting import machine_description, new_figure, now, save_figure
from rag.retriever import Retriever
from rag.text import words

MODELS = ("base", "reader", "rag_pt", "sft")
MODEL_LABELS = {"base": "base", "reader": "stage_a", "rag_pt": "stage_ab", "sft": "sft"}
# The evidence conditions each model is asked under; "gold" only for the models trained to read.
CONDITIONS = {"base": ("none", "rag", "gold"), "reader": ("none", "rag", "gold"), "rag_pt": ("none", "rag", "gold"),
              "sft": ("none", "rag")}
SYSTEM_SETUP = {MODEL_LABELS[m] + ("" if c == "none" else f"+{c}"): (m, c) for m in MODELS for c in CONDITIONS[m]}
SYSTEMS = ("majority", *SYSTEM_SETUP)
GROUPS = ("yes_no", "multiple_choice", "image", "text", "held_out")


@dataclass
class Outcome:
    """One system's answer to one question."""

    system: str
    split: str
    qa_id: str
    domain: str
    kind: str                          # "yes_no" or "multiple_choice"
    has_image: bool
    held_out: bool                     # a template no training stage saw
    answer: str                        # the reference
    predicted: str
    correct: bool
    gold_doc: str
    n_evidence: int = 0
    cited: list[str] = field(default_factory=list)
    cited_by_model: bool = False           # the citations are the model's own [n], not attributed afterwards
    correct_alone: bool | None = None      # the same model without evidence (over-reliance)
    correct_replaced: bool | None = None   # the same model and evidence, image replaced (copy-reference)
    generated_correct: bool | None = None  # free-text answer parsed to the right option (subset only)

    def groups(self) -> list[str]:
        return [self.kind, "image" if self.has_image else "text"] + (["held_out"] if self.held_out else [])


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


def metrics(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Every metric of the experiment over one group of outcomes (one system on one split or group)."""
    used = [o for o in outcomes if o.n_evidence > 0 and o.cited]
    right_with_image = [o for o in outcomes if o.has_image and o.correct and o.correct_replaced is not None]
    right_alone = [o for o in outcomes if o.correct_alone]
    generated = [o for o in outcomes if o.generated_correct is not None]
    yes_no = [o for o in outcomes if o.kind == "yes_no"]
    return {
        "n": len(outcomes),
        "accuracy": rate([o.correct for o in outcomes]),
        "f1": round(float(np.mean([token_f1(o.predicted, o.answer) for o in outcomes])), 4) if outcomes else None,
        "yes_rate": rate([o.predicted.strip().lower() == "yes" for o in yes_no]),
        "gold_yes_rate": rate([o.answer.strip().lower() == "yes" for o in yes_no]),
        "citation_correctness": rate([o.gold_doc in o.cited for o in used]),
        "model_citation_correctness": rate([o.gold_doc in o.cited for o in used if o.cited_by_model]),
        "copy_reference_rate": rate([bool(o.correct_replaced) for o in right_with_image]),
        "over_reliance_rate": rate([not o.correct for o in right_alone]),
        "generated_accuracy": rate([bool(o.generated_correct) for o in generated]),
        "mean_evidence_items": round(float(np.mean([o.n_evidence for o in outcomes])), 2) if outcomes else None,
    }


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """metrics() per split and system: overall, per group (kind, image, held-out) and per domain."""
    out: dict[str, Any] = {}
    for split in sorted({o.split for o in outcomes}):
        out[split] = {}
        for system in SYSTEMS:
            group = [o for o in outcomes if o.split == split and o.system == system]
            if not group:
                continue
            out[split][system] = {
                "overall": metrics(group),
                "by_group": {g: metrics([o for o in group if g in o.groups()]) for g in GROUPS},
                "by_domain": {d: metrics([o for o in group if o.domain == d]) for d in sorted({o.domain for o in group})}}
    return out


def paired(outcomes: Sequence[Outcome], a: str, b: str, split: str, group: str | None = None) -> dict[str, Any]:
    """System a minus system b on the questions both answered (optionally one group), clustered by document."""
    right_b = {o.qa_id: o.correct for o in outcomes if o.system == b and o.split == split}
    rows = [o for o in outcomes if o.system == a and o.split == split and o.qa_id in right_b
            and (group is None or group in o.groups())]
    return clustered_difference([o.correct for o in rows], [right_b[o.qa_id] for o in rows], [o.gold_doc for o in rows])


# --- running the systems --------------------------------------------------------------------------

@dataclass
class EvalSettings:
    generate_n: int = 10          # questions per split also answered in free text (costly on CPU)
    max_new_tokens: int = 16      # enough for an option's text and a citation
    replacement: str = "other-domain"   # a real image from another domain, not noise


def _correct(answer: Answer, item: QAItem) -> bool:
    return answer.option is not None and item.options[answer.option] == item.answer


def answer_outcome(system: str, split: str, item: QAItem, answer: Answer) -> Outcome:
    """One system's answer to one closed question as an experiment outcome (also used by benchmarks)."""
    predicted = item.options[answer.option] if answer.option is not None else answer.text
    return Outcome(system, split, item.id, item.domain, question_kind(item), bool(item.image), is_held_out(item),
                   item.answer, predicted, _correct(answer, item), item.doc_id, len(answer.evidence),
                   [c.evidence_id for c in answer.citations], any(c.how == "model" for c in answer.citations))


@dataclass
class Question:
    """One question with everything every model answers it over: its picture, the three evidence
    contexts, and the replaced image."""

    item: QAItem
    picture: Any
    contexts: dict[str, Context]
    replaced: Any


def _model_outcomes(rag: MedRAG, generator: Generator, model: str, split: str, q: Question, generate: bool,
                    settings: EvalSettings) -> list[Outcome]:
    """One model's answers under each of its conditions; "none" first, the over-reliance reference."""
    item, outcomes, alone = q.item, [], None
    for condition in CONDITIONS[model]:
        system = MODEL_LABELS[model] + ("" if condition == "none" else f"+{condition}")
        answer = rag.respond(item.question, q.picture, item.options, q.contexts[condition], "options", generator)
        outcome = answer_outcome(system, split, item, answer)
        if condition == "none":
            alone = outcome.correct
        else:
            outcome.correct_alone = alone
        if condition == "rag" and q.replaced is not None:
            outcome.correct_replaced = _correct(rag.respond(item.question, q.replaced, item.options, q.contexts["rag"],
                                                            "options", generator), item)
        if generate and condition != "gold":
            free = rag.respond(item.question, q.picture, item.options, q.contexts[condition], "generate", generator,
                               max_new_tokens=settings.max_new_tokens)
            outcome.generated_correct = _correct(free, item)
        outcomes.append(outcome)
    return outcomes


def run_split(rag: MedRAG, generators: dict[str, Generator], items: list[QAItem], split: str, qa_dir: Path,
              prior: Counter[str], settings: EvalSettings, progress: bool = True) -> list[Outcome]:
    """Answer `items` with every system whose model is in `generators`."""
    pool = image_pool(rag.retriever.bundle.docs.values())
    docs = {doc.id: doc for doc in rag.retriever.bundle.docs.values()}
    outcomes: list[Outcome] = []
    for i, item in enumerate(tqdm(items, desc=f"{split}: {len(generators)} models", unit="q", disable=not progress)):
        if not item.options or item.answer not in item.options:
            raise ValueError(f"QA item {item.id}: the experiment needs closed questions whose answer is an option")
        if item.doc_id not in docs:
            raise ValueError(f"QA item {item.id}: its document {item.doc_id!r} is not in the {split} index")
        guess = majority_choice(item.options, prior)
        outcomes.append(Outcome("majority", split, item.id, item.domain, question_kind(item), bool(item.image),
                                is_held_out(item), item.answer, guess, guess == item.answer, item.doc_id))
        picture = qa_picture(item, qa_dir)
        retrieved = rag.gather(item.question, picture, item.options)
        contexts = {"none": rag.gather(item.question, None, retrieval=False), "rag": retrieved,
                    "gold": with_gold(retrieved, docs[item.doc_id], item.question, item.options)}
        replaced = (replaced_image(picture, item.id, item.domain, settings.replacement, pool)[0]
                    if picture is not None else None)
        question = Question(item, picture, contexts, replaced)
        for model in MODELS:
            if model in generators:
                outcomes += _model_outcomes(rag, generators[model], model, split, question, i < settings.generate_n,
                                            settings)
    return outcomes


# --- targets --------------------------------------------------------------------------------------

def default_label(outcomes: Sequence[Outcome]) -> str:
    """The trained default the targets are about: Stage A + B when it ran, else Stage A."""
    return "stage_ab" if any(o.system.startswith("stage_ab") for o in outcomes) else "stage_a"


def targets(outcomes: Sequence[Outcome], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each met only when the lower bound of its 95% interval clears it."""
    model = default_label(outcomes)
    rows: list[dict[str, Any]] = []
    for split in [s for s in ("test", "added") if s in summary]:
        for group, level in (("yes_no", 0.90), ("multiple_choice", 0.90), ("held_out", 0.85)):
            acc = summary[split].get(f"{model}+gold", {}).get("by_group", {}).get(group, {}).get("accuracy")
            if acc and acc["n"]:
                rows.append({"target": f"{model}+gold accuracy, {group}", "split": split, "needed": f"≥ {level}",
                             "measured": acc["value"], "ci95": acc["ci95"], "n": acc["n"],
                             "met": acc["ci95"][0] >= level})
    for a, b, split, points, floor in ((f"{model}+rag", "base", "test", 30, 20), (f"{model}+rag", "sft", "added", 30, 20),
                                       (f"{model}+rag", "sft+rag", "added", 0, 0), ("stage_ab+rag", "stage_a+rag", "test", 0, 0)):
        diff = paired(outcomes, a, b, split)
        if not diff["n"]:
            continue
        low = 100 * diff["ci95"][0]
        rows.append({"target": f"{a} − {b}", "split": split, "needed": f"≥ +{points} points, lower bound ≥ {floor}",
                     "measured": round(100 * diff["difference"], 1), "ci95": [round(100 * v, 1) for v in diff["ci95"]],
                     "n": diff["n"], "clusters": diff["clusters"], "mcnemar_p": diff["mcnemar_p"],
                     "met": 100 * diff["difference"] >= points and low >= floor if points else low > 0})
    for split in [s for s in ("test", "added") if "stage_ab+rag" in summary.get(s, {})]:
        rows += stage_b_targets(summary[split], paired(outcomes, "stage_ab+rag", "stage_a+rag", split), split)
    return rows


def stage_b_targets(split_summary: dict[str, Any], diff: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """Stage B against Stage A, both with retrieval: over-reliance at least halved with accuracy not
    lower (the upper bound of B's over-reliance under half A's rate, the accuracy difference's lower
    bound above -5 points), and no answer collapse (the whole interval of B's yes rate within 10 points
    of the gold yes rate)."""
    a, b = split_summary["stage_a+rag"]["overall"], split_summary["stage_ab+rag"]["overall"]
    rows = []
    reliance_a, reliance_b = a["over_reliance_rate"], b["over_reliance_rate"]
    if reliance_a["n"] and reliance_b["n"]:
        half = reliance_a["value"] / 2
        rows.append({"target": "stage_ab+rag over-reliance", "split": split,
                     "needed": f"≤ half of stage_a+rag's {reliance_a['value']:.3f}, accuracy not lower",
                     "measured": reliance_b["value"], "ci95": reliance_b["ci95"], "n": reliance_b["n"],
                     "met": reliance_b["ci95"][1] <= half and diff["n"] > 0 and diff["ci95"][0] > -0.05})
    yes, gold = b["yes_rate"], b["gold_yes_rate"]
    if yes["n"]:
        rows.append({"target": "stage_ab+rag yes rate", "split": split,
                     "needed": f"within 10 points of the gold rate {gold['value']:.3f}",
                     "measured": yes["value"], "ci95": yes["ci95"], "n": yes["n"],
                     "met": gold["value"] - 0.10 <= yes["ci95"][0] and yes["ci95"][1] <= gold["value"] + 0.10})
    return rows


# --- report ---------------------------------------------------------------------------------------

COLOURS = {"majority": "#999999", "base": "#1f77b4", "sft": "#2ca02c", "stage_a": "#ff7f0e", "stage_ab": "#d62728"}


def write_report(report: dict[str, Any], out: Path, name: str = "factuality") -> list[Path]:
    """`<name>.json`, `<name>.md` and `<name>.png` (accuracy per system and split, 95% intervals)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = report["summary"]
    splits = [s for s in ("test", "added") if s in summary]
    fig, axes = new_figure(len(splits), figsize=(7 * len(splits), 4.4))
    for ax, split in zip(np.atleast_1d(axes), splits):
        systems = [s for s in SYSTEMS if s in summary[split]]
        acc = [summary[split][s]["overall"]["accuracy"] for s in systems]
        values = [a["value"] for a in acc]
        errors = [[v - a["ci95"][0] for v, a in zip(values, acc)], [a["ci95"][1] - v for v, a in zip(values, acc)]]
        ax.bar(systems, values, yerr=errors, capsize=3,
               color=[to_rgba(COLOURS[s.split("+")[0]], 0.45 if s.endswith("+gold") else 1.0) for s in systems])
        ax.set(ylim=(0, 1), ylabel="accuracy", title=f"{split} split (n={acc[0]['n']}); +gold: oracle evidence")
        ax.tick_params(axis="x", rotation=50)
        ax.grid(axis="y", alpha=0.3)
    save_figure(fig, out / f"{name}.png")
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(markdown(report, name), encoding="utf-8")
    return [out / f"{name}.{ext}" for ext in ("json", "md", "png")]


def _fmt(value: dict[str, Any] | None, interval: bool = True) -> str:
    if not value or value.get("value") is None:
        return "–"
    if not interval:
        return f"{value['value']:.3f}"
    low, high = value["ci95"]
    return f"{value['value']:.3f} [{low:.2f}, {high:.2f}]"


def _split_table(split: str, systems: dict[str, Any]) -> list[str]:
    lines = [f"## {split} split", "",
             "| system | accuracy [95% CI] | yes/no | multiple choice | image | text | held-out templates | "
             "yes rate (gold) | model-cited correct | copy-reference | over-reliance | generated | items |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for system, data in systems.items():
        m, g = data["overall"], data["by_group"]
        groups = " | ".join(f"{_fmt(g[k]['accuracy'], False)} ({g[k]['n']})" for k in GROUPS)
        lines.append(f"| {system} | {_fmt(m['accuracy'])} (n={m['n']}) | {groups} | "
                     f"{_fmt(m['yes_rate'], False)} ({_fmt(m['gold_yes_rate'], False)}) | "
                     f"{_fmt(m['model_citation_correctness'])} | {_fmt(m['copy_reference_rate'])} | "
                     f"{_fmt(m['over_reliance_rate'])} | {_fmt(m['generated_accuracy'])} | {m['mean_evidence_items']} |")
    return lines + [""]


def markdown(report: dict[str, Any], name: str = "factuality") -> str:
    summary = report["summary"]
    lines = ["# Factuality experiment: teaching the VLM to use evidence vs teaching it facts (docs/design.md §7)", "",
             f"Date: {report['date']}  ", f"Machine: {report['machine']}  ",
             f"Total wall time: {report['total_seconds'] / 60:.1f} min", ""]
    if report.get("steps"):
        lines += ["## Commands and run times", "", "| step | command | seconds |", "|---|---|---|"]
        lines += [f"| {s['step']} | `{s['command']}` | {s['seconds']} |" for s in report["steps"]]
        command = report["command"].split(" --note ")[0] + (" --note …" if " --note " in report["command"] else "")
        lines += [f"| evaluation | `{command}` | {round(sum(report['eval_seconds'].values()), 1)} |", ""]
    lines += ["## Settings", "", "```json", json.dumps(report["settings"], indent=2), "```", ""]
    for split in [s for s in ("test", "added") if s in summary]:
        lines += _split_table(split, summary[split])
    if report.get("targets"):
        lines += ["## Targets (met only when the 95% interval's lower bound clears the bar)", "",
                  "| target | split | needed | measured | 95% CI | n | McNemar p | met |", "|---|---|---|---|---|---|---|---|"]
        for t in report["targets"]:
            lines.append(f"| {t['target']} | {t['split']} | {t['needed']} | {t['measured']} | {t['ci95']} | {t['n']} "
                         f"| {t.get('mcnemar_p', '–')} | {'yes' if t['met'] else 'no'} |")
        lines.append("")
    lines += [f"![accuracy per system and split]({name}.png)", ""]
    if report.get("notes"):
        lines += ["## Notes", "", *(f"- {n}" for n in report["notes"]), ""]
    return "\n".join(lines)


# --- the experiment end to end --------------------------------------------------------------------

def run_factuality(qa: str | Path, models: dict[str, str | None], index: str | Path, *,
                   added_index: str | Path | None = None, splits: Sequence[str] = ("test", "added"),
                   questions: int = 0, seed: int = 0, settings: EvalSettings | None = None,
                   steps: Sequence[dict[str, Any]] = (), notes: Sequence[str] = (), command: str = "",
                   out: str | Path = "benchmarks/results", name: str = "factuality",
                   progress: bool = True) -> tuple[dict[str, Any], list[Path]]:
    """The whole experiment: every model given in `models` (keys of `MODELS`; "base" required) on
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
            raise ValueError(f"splits are test and/or added, got {split!r}")
        if not indexes[split]:
            raise ValueError("the added split needs an added index: the index with the documents added "
                             "after training (`medrag index add`)")
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models.get("base"):
        raise ValueError(f"models must name a base model and may name {MODELS[1:]}; got {sorted(models)}")
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
              "settings": {**asdict(settings), "questions_per_split": questions, "seed": seed, "models": models,
                           "scoring_rules": {m: g.scoring.describe() for m, g in generators.items()},
                           "indexes": indexes, "qa": str(qa)},
              "eval_seconds": timings, "steps": list(steps),
              "total_seconds": round(sum(s["seconds"] for s in steps) + time.perf_counter() - started, 1),
              "summary": summary, "targets": targets(outcomes, summary), "notes": list(notes),
              "outcomes": [asdict(o) for o in outcomes]}
    return report, write_report(report, Path(out), name)
