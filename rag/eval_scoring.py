"""Choosing a model's scoring rule on the val split (docs/design.md §7).

Every rule of `rag.scoring` is tried on the same questions under two conditions: the evidence that
retrieval and selection gathered ("retrieved", what a user gets) and the same evidence with the
question's own document put in ("gold", does the model read a document that holds the answer).
Each question's option log-probabilities are computed once per prompt and reused by every rule.
Accuracy is broken down by question kind (yes/no, multiple choice) and by whether the question has
an image. The rule with the best retrieved-evidence accuracy wins (ties: gold-evidence accuracy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from rag.corpus import QAItem
from rag.eval_stats import wilson_interval
from rag.evidence_variants import with_gold
from rag.generator import Generator, create_generator
from rag.pipeline import MedRAG
from rag.prompt import EvidenceText, build_prompt
from rag.qa_inputs import closed_questions, qa_picture, question_kind
from rag.scoring import RULES, baseline_prompt, combine, write_rule

CONDITIONS = ("retrieved", "gold")
GROUPS = ("all", "yes_no", "multiple_choice", "image", "text")


def rule_scores(generator: Generator, question: str, evidence: list[EvidenceText], picture: Image.Image | None,
                options: list[str]) -> dict[str, list[float]]:
    """The options' scores under every rule, from one pass over each distinct prompt."""
    main = generator.option_logprobs(build_prompt(question, evidence, picture, options), options)
    out = {}
    for rule in RULES:
        base = baseline_prompt(rule, question, evidence, picture, options)
        out[rule] = combine(rule, main, generator.option_logprobs(base, options) if base is not None else None)
    return out


def _groups(item: QAItem) -> list[str]:
    return ["all", question_kind(item), "image" if item.image else "text"]


def compare_rules(rag: MedRAG, generator: Generator, items: list[QAItem], qa_dir: Path,
                  progress: bool = True) -> dict[str, Any]:
    """Accuracy of every rule under both conditions, per group, with Wilson 95% intervals, and the choice."""
    docs = {doc.id: doc for doc in rag.retriever.bundle.docs.values()}
    right: dict[tuple[str, str, str], list[bool]] = {}
    for item in tqdm(items, desc="scoring rules", unit="q", disable=not progress):
        if item.doc_id not in docs:
            raise ValueError(f"QA item {item.id}: document {item.doc_id!r} is not in the index; "
                             "compare rules on questions about indexed documents")
        picture = qa_picture(item, qa_dir)
        context = rag.gather(item.question, picture, item.options)
        gold = with_gold(context, docs[item.doc_id], item.question, item.options)
        answer = item.options.index(item.answer)
        for condition, ctx in zip(CONDITIONS, (context, gold)):
            evidence = [EvidenceText(e.number, e.title, e.snippet) for e in ctx.evidence]
            for rule, scores in rule_scores(generator, item.question, evidence, picture, item.options).items():
                hit = max(range(len(scores)), key=scores.__getitem__) == answer
                for group in _groups(item):
                    right.setdefault((condition, rule, group), []).append(hit)
    table: dict[str, Any] = {}
    for (condition, rule, group), flags in sorted(right.items()):
        low, high = wilson_interval(sum(flags), len(flags))
        table.setdefault(condition, {}).setdefault(rule, {})[group] = {
            "accuracy": round(sum(flags) / len(flags), 4), "n": len(flags), "ci95": [round(low, 4), round(high, 4)]}
    chosen = max(RULES, key=lambda r: (table["retrieved"][r]["all"]["accuracy"], table["gold"][r]["all"]["accuracy"]))
    return {"chosen": chosen, "questions": len(items), "accuracy": table}


def choose_rule(rag: MedRAG, model_dir: str, qa: str | Path, n: int, seed: int = 0, save: bool = True,
                progress: bool = True) -> dict[str, Any]:
    """Compare the rules on `n` val questions of `qa` with the model at `model_dir`; save the best beside it."""
    report = compare_rules(rag, create_generator(model_dir), closed_questions(qa, ["val"], n, seed),
                           Path(qa).parent, progress)
    if save:
        write_rule(model_dir, report["chosen"], {"chosen_on": f"{report['questions']} val questions of {qa}",
                                                 "accuracy": report["accuracy"]})
    return report


def format_rule_table(report: dict[str, Any]) -> str:
    """A Markdown table: one row per condition and rule, one column per group."""
    lines = ["| evidence | rule | " + " | ".join(GROUPS) + " |", "|---|---|" + "---|" * len(GROUPS)]
    for condition, rules in report["accuracy"].items():
        for rule, groups in rules.items():
            cells = [f"{groups[g]['accuracy']:.3f} (n={groups[g]['n']})" if g in groups else "–" for g in GROUPS]
            mark = " **chosen**" if rule == report["chosen"] else ""
            lines.append(f"| {condition} | {rule}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
