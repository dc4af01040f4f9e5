"""Choosing a model's scoring rule on the val split (docs/design.md §7).

Every rule of `rag.scoring` is tried on the same questions under two conditions: the evidence that
retrieval and selection gathered ("retrieved", what a user gets) and the same evidence with the
question's own document put in ("gold", does the model read a document that holds the answer).
Each question's option log-probabilities are computed once per prompt and reused by every rule.
Accuracy is broken down by question kind (yes/no, multiple choice) and by whether the question has
an image. Each kind gets the rule with the best retrieved-evidence accuracy on it (ties: gold-evidence
accuracy); on yes/no every rule is first given its best "yes" bias, fitted on the same questions.
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
from rag.scoring import GROUPS, KINDS, RULES, ScoringChoice, baseline_prompt, combine, write_rule

CONDITIONS = ("retrieved", "gold")


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
    """Accuracy of every rule under both conditions, per group, with Wilson 95% intervals, and the choice:
    per question kind the rule with the best retrieved-evidence accuracy (ties: gold), where each rule's
    yes/no accuracy is taken with the yes bias fitted for it (`fit_yes_bias`)."""
    docs = {doc.id: doc for doc in rag.retriever.bundle.docs.values()}
    right: dict[tuple[str, str, str], list[bool]] = {}
    margins: dict[tuple[str, str], list[float]] = {}   # yes/no: (condition, rule) -> score(yes) - score(no)
    says_yes: list[bool] = []                           # yes/no: whether "yes" is the right answer
    for item in tqdm(items, desc="scoring rules", unit="q", disable=not progress):
        if item.doc_id not in docs:
            raise ValueError(f"QA item {item.id}: document {item.doc_id!r} is not in the index; "
                             "compare rules on questions about indexed documents")
        picture = qa_picture(item, qa_dir)
        context = rag.gather(item.question, picture, item.options)
        gold = with_gold(context, docs[item.doc_id], item.question, item.options)
        answer = item.options.index(item.answer)
        yes_no = question_kind(item) == "yes_no"
        if yes_no:
            says_yes.append(item.answer.strip().lower() == "yes")
        for condition, ctx in zip(CONDITIONS, (context, gold)):
            evidence = [EvidenceText(e.number, e.title, e.snippet) for e in ctx.evidence]
            for rule, scores in rule_scores(generator, item.question, evidence, picture, item.options).items():
                hit = max(range(len(scores)), key=scores.__getitem__) == answer
                for group in _groups(item):
                    right.setdefault((condition, rule, group), []).append(hit)
                if yes_no:
                    yes = [o.strip().lower() for o in item.options].index("yes")
                    margins.setdefault((condition, rule), []).append(scores[yes] - scores[1 - yes])
    table: dict[str, Any] = {}
    for (condition, rule, group), flags in sorted(right.items()):
        table.setdefault(condition, {}).setdefault(rule, {})[group] = _rate(flags)
    biased, biased_hits = {}, {}
    if says_yes:
        for rule in RULES:
            bias = fit_yes_bias(margins[("retrieved", rule)], says_yes, margins[("gold", rule)])
            biased[rule] = {"yes_bias": round(bias, 4)}
            for condition in CONDITIONS:
                hits = biased_hits[(condition, rule)] = [(m > bias) == y
                                                         for m, y in zip(margins[(condition, rule)], says_yes)]
                yes_rate = sum(m > bias for m in margins[(condition, rule)]) / len(says_yes)
                biased[rule][condition] = {**_rate(hits), "yes_rate": round(yes_rate, 4)}

    def best(kind: str) -> str:
        if kind == "yes_no" and biased:
            return max(RULES, key=lambda r: (biased[r]["retrieved"]["accuracy"], biased[r]["gold"]["accuracy"]))
        group = kind if kind in table["retrieved"][RULES[0]] else "all"
        return max(RULES, key=lambda r: (table["retrieved"][r][group]["accuracy"], table["gold"][r][group]["accuracy"]))

    rules = {kind: best(kind) for kind in KINDS}
    choice = ScoringChoice(rules, biased[rules["yes_no"]]["yes_bias"] if biased else 0.0)
    under_choice = {}   # the accuracy a user gets with the choice: each kind under its own rule (and bias)
    for condition in CONDITIONS:
        kinds = {"multiple_choice": right.get((condition, rules["multiple_choice"], "multiple_choice"), []),
                 "yes_no": biased_hits.get((condition, rules["yes_no"]), [])}
        under_choice[condition] = {"all": _rate(kinds["multiple_choice"] + kinds["yes_no"]),
                                   **{kind: _rate(hits) for kind, hits in kinds.items() if hits}}
    return {"chosen": choice.describe(), "summary": choice.summary(), "questions": len(items),
            "accuracy_chosen": under_choice, "accuracy": table, "yes_no_biased": biased,
            "yes_rate_gold": round(sum(says_yes) / len(says_yes), 4) if says_yes else None}


def fit_yes_bias(margins: list[float], says_yes: list[bool], tie_margins: list[float]) -> float:
    """The bias b (answer "yes" when score(yes) - score(no) > b) with the most right answers on `margins`,
    ties broken by `tie_margins` (the same questions under another condition), then by the smallest |b|.
    Candidates: 0 and the midpoints between neighbouring margins, so every distinct cut is tried once."""
    cuts = sorted(set(margins))
    candidates = [0.0] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] + ([cuts[0] - 1.0, cuts[-1] + 1.0] if cuts else [])

    def right(values: list[float], b: float) -> int:
        return sum((m > b) == y for m, y in zip(values, says_yes))

    return max(candidates, key=lambda b: (right(margins, b), right(tie_margins, b), -abs(b)))


def _rate(flags: list[bool]) -> dict[str, Any]:
    low, high = wilson_interval(sum(flags), len(flags))
    return {"accuracy": round(sum(flags) / len(flags), 4), "n": len(flags), "ci95": [round(low, 4), round(high, 4)]}


def choose_rule(rag: MedRAG, model_dir: str, qa: str | Path, n: int, seed: int = 0, save: bool = True,
                progress: bool = True) -> dict[str, Any]:
    """Compare the rules on `n` val questions of `qa` with the model at `model_dir`; save the choice beside it."""
    report = compare_rules(rag, create_generator(model_dir), closed_questions(qa, ["val"], n, seed),
                           Path(qa).parent, progress)
    if save:
        chosen = report["chosen"]
        write_rule(model_dir, ScoringChoice(chosen["rules"], chosen["yes_bias"]),
                   {"chosen_on": f"{report['questions']} val questions of {qa}",
                    **{k: report[k] for k in ("accuracy_chosen", "accuracy", "yes_no_biased", "yes_rate_gold")}})
    return report
