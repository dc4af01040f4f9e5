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

The rule is chosen on the val split (`choose_rule`) and saved beside the model as `scoring.json`,
which `rag.generator.create_generator` reads back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from rag.prompt import EvidenceText, Prompt, build_prompt

RULES = ("sum", "mean", "calibrated", "pmi")
DEFAULT_RULE = "mean"            # for a model saved without a choice, as it was scored before rules existed
RULE_FILE = "scoring.json"
CONTENT_FREE = "N/A"


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


def read_rule(model_dir: str | Path) -> str:
    """The rule saved with a model (`scoring.json`), else the default."""
    path = Path(model_dir) / RULE_FILE
    if not path.is_file():
        return DEFAULT_RULE
    try:
        rule = json.loads(path.read_text(encoding="utf-8"))["rule"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a scoring choice (a JSON object with a 'rule' key): {err}; "
                         "delete it or run `medrag eval scoring --save` again") from err
    return check_rule(rule)


def write_rule(model_dir: str | Path, rule: str, evidence: dict[str, Any]) -> Path:
    """Save the chosen rule beside the model with the val figures it was chosen on."""
    path = Path(model_dir) / RULE_FILE
    path.write_text(json.dumps({"rule": check_rule(rule), **evidence}, indent=1) + "\n", encoding="utf-8")
    return path
