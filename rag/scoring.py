"""How closed questions are answered by scoring (docs/design.md §5 step 4): one score per option.

A small model's raw log-probability of an option is a poor reader. Every option is also printed in
the prompt, so the tail of a long option is cheap to copy and "mean log-probability per token" picks
the longest option far more often than it is right; "yes" is likelier than "no" whatever the
evidence says. The rules:

    sum         summed log-probability of the option's tokens
    mean        the same per token (the old default; favours long options)
    calibrated  sum minus the sum under a content-free prompt ("N/A", same options, no evidence,
                no image): contextual calibration (Zhao et al., 2021), removes the option's prior
    pmi         sum minus the sum under the same prompt without its evidence: what the evidence adds
                (evidence-PMI). A prompt without evidence falls back to `calibrated`.

A rule is chosen per question kind (yes/no, multiple choice) on the val split
(`rag.eval_scoring.choose_rule`): a rule that reads 4-option questions well can lean to "yes" on
claims. Yes/no questions also get a bias, subtracted from the "yes" score and fitted on the same val
questions: the one free threshold of a two-way choice, which removes the prior that no rule takes
out completely. The choice is saved beside the model as `scoring.json`, which
`rag.generator.create_generator` reads back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from rag.prompt import EvidenceText, Prompt, build_prompt

RULES = ("sum", "mean", "calibrated", "pmi")
DEFAULT_RULE = "mean"            # for a model saved without a choice, as it was scored before rules existed
RULE_FILE = "scoring.json"
CONTENT_FREE = "N/A"
KINDS = ("yes_no", "multiple_choice")
GROUPS = ("all", "yes_no", "multiple_choice", "image", "text")   # the columns of a rule comparison
LABELS = {"yes_no": "yes/no", "multiple_choice": "multiple choice"}


@dataclass(frozen=True)
class OptionLogProb:
    total: float      # summed log-probability of the option's tokens after the prompt
    tokens: int
    # log-probability of each evidence number 1..n as the citation written after the option,
    # "<option> [n": how the model itself would cite this answer (empty unless asked for)
    citation: tuple[float, ...] = ()


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"unknown scoring rule {rule!r}; choose one of {RULES}")
    return rule


def baseline_prompt(rule: str, question: str, evidence: list[EvidenceText], image: Image.Image | None,
                    options: list[str]) -> Prompt | None:
    """The prompt whose option log-probabilities `rule` subtracts, or None for rules that subtract nothing."""
    check_rule(rule)
    if rule == "pmi" and evidence:
        return build_prompt(question, [], image, options)
    if rule in ("pmi", "calibrated"):
        return build_prompt(CONTENT_FREE, [], None, options)
    return None


def combine(rule: str, main: list[OptionLogProb], baseline: list[OptionLogProb] | None) -> list[float]:
    """Scores under `rule` from the options' log-probabilities with the prompt and under its baseline."""
    check_rule(rule)
    if rule == "mean":
        return [m.total / m.tokens for m in main]
    if rule == "sum":
        return [m.total for m in main]
    if baseline is None:
        raise ValueError(f"scoring rule {rule!r} needs the baseline prompt's log-probabilities "
                         "(rag.scoring.baseline_prompt)")
    return [m.total - b.total for m, b in zip(main, baseline)]


def options_kind(options: list[str]) -> str:
    """"yes_no" when the options are exactly yes and no (any case or order), else "multiple_choice"."""
    return "yes_no" if sorted(o.strip().lower() for o in options) == ["no", "yes"] else "multiple_choice"


@dataclass(frozen=True)
class ScoringChoice:
    """How a model answers closed questions: a rule per question kind and the yes/no bias."""

    rules: dict[str, str] = field(default_factory=lambda: {kind: DEFAULT_RULE for kind in KINDS})
    yes_bias: float = 0.0    # subtracted from the "yes" option's score on yes/no questions

    def __post_init__(self) -> None:
        if set(self.rules) != set(KINDS):
            raise ValueError(f"a scoring choice names one rule for each of {KINDS}; got {sorted(self.rules)}")
        for rule in self.rules.values():
            check_rule(rule)

    @classmethod
    def single(cls, rule: str) -> "ScoringChoice":
        return cls({kind: rule for kind in KINDS})

    def rule_for(self, options: list[str]) -> str:
        return self.rules[options_kind(options)]

    def adjust(self, options: list[str], scores: list[float]) -> list[float]:
        """`scores` under `rule_for(options)` with the yes/no bias applied."""
        if options_kind(options) != "yes_no" or not self.yes_bias:
            return list(scores)
        return [s - self.yes_bias if o.strip().lower() == "yes" else s for o, s in zip(options, scores)]

    def summary(self) -> str:
        """For people: "yes/no: sum, yes bias +0.50; multiple choice: pmi"."""
        return f"yes/no: {self.rules['yes_no']}, yes bias {self.yes_bias:+.2f}; multiple choice: {self.rules['multiple_choice']}"

    def describe(self) -> dict[str, Any]:
        """The choice as reports and `scoring.json` show it."""
        return {"rules": dict(self.rules), "yes_bias": round(self.yes_bias, 4)}


def read_rule(model_dir: str | Path) -> ScoringChoice:
    """The scoring choice saved with a model (`scoring.json`), else the default rule for both kinds.
    A file from before per-kind rules (one "rule") applies that rule to both kinds, with no bias."""
    path = Path(model_dir) / RULE_FILE
    if not path.is_file():
        return ScoringChoice()
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if "rules" in saved:
            return ScoringChoice(dict(saved["rules"]), float(saved.get("yes_bias", 0.0)))
        return ScoringChoice.single(saved["rule"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a scoring choice (a JSON object with 'rules' per question kind): {err}; "
                         "delete it or run `medrag eval scoring --save` again") from err


def write_rule(model_dir: str | Path, choice: ScoringChoice, evidence: dict[str, Any]) -> Path:
    """Save the scoring choice beside the model with the val figures it was chosen on."""
    path = Path(model_dir) / RULE_FILE
    path.write_text(json.dumps({**choice.describe(), **evidence}, indent=1) + "\n", encoding="utf-8")
    return path


def format_rule_table(report: dict[str, Any]) -> str:
    """Markdown: accuracy per condition and rule (one column per group), marked where a rule was chosen,
    then each rule's yes/no figures with the bias fitted for it."""
    chosen = report["chosen"]["rules"]
    lines = []
    for condition, groups in (report.get("accuracy_chosen") or {}).items():
        lines.append(f"- under this choice, {condition} evidence: " + ", ".join(
            f"{LABELS.get(g, g)} {r['accuracy']:.3f} (n={r['n']})" for g, r in groups.items()))
    accuracy = report.get("accuracy") or {}   # absent from a choice saved without its val figures
    if not accuracy:
        return "\n".join(lines or ["(no val figures were saved with this choice)"])
    lines += [""] if lines else []
    lines += ["| evidence | rule | " + " | ".join(LABELS.get(g, g) for g in GROUPS) + " |",
              "|---|---|" + "---|" * len(GROUPS)]
    for condition, rules in accuracy.items():
        for rule, groups in rules.items():
            cells = [f"{groups[g]['accuracy']:.3f} (n={groups[g]['n']})" if g in groups else "–" for g in GROUPS]
            kinds = [LABELS[k] for k in KINDS if chosen.get(k) == rule]
            mark = f" **chosen: {', '.join(kinds)}**" if kinds else ""
            lines.append(f"| {condition} | {rule}{mark} | " + " | ".join(cells) + " |")
    biased = report.get("yes_no_biased") or {}
    if biased:
        lines += ["", f"Yes/no with the bias fitted per rule (gold answers say yes on {report['yes_rate_gold']:.3f}):",
                  "", "| rule | yes bias | retrieved | yes rate | gold | yes rate |", "|---|---|---|---|---|---|"]
        for rule, fit in biased.items():
            mark = " **chosen**" if chosen.get("yes_no") == rule else ""
            lines.append(f"| {rule}{mark} | {fit['yes_bias']:+.3f} | {fit['retrieved']['accuracy']:.3f} | "
                         f"{fit['retrieved']['yes_rate']:.3f} | {fit['gold']['accuracy']:.3f} | "
                         f"{fit['gold']['yes_rate']:.3f} |")
    return "\n".join(lines)
