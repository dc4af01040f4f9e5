"""Stage A, retrieval-augmented instruction tuning (`medrag finetune rag-sft`, docs/design.md §7).

The projector-aligned VLM has never been taught to answer a question from numbered evidence; preference
tuning cannot refine a skill that is not there. This stage teaches it, RAFT-style (Zhang et al., 2024):
every train question is asked in exactly the test-time prompt (the evidence that retrieval and
adaptive selection gather, the same prompt builder), in one of three forms drawn at random:

* gold among distractors: the question's own document is in the evidence (put in, at a random
  place, when retrieval missed it), and the answer cites its number: "<answer> [n]";
* distractors only: the own document taken out; the answer is still the right one, as in RAFT;
* no evidence: the no-retrieval prompt.

Yes/no questions are balanced (the larger answer class is sampled down to the smaller), so the
model cannot win by a prior; question templates held out for the phrasing check
(`rag.qa_inputs.is_held_out`) are never trained on.

`ReaderMix.kind_weights` repeats or thins question kinds: verifying a yes/no claim against the
evidence is the skill a first pass teaches least (docs/design.md §7), so a continuation can see
each yes/no question several times, each time in a freshly drawn form and gold position, beside a
share of the multiple-choice questions that keeps that skill from fading.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from finetune.pairs import text_messages
from rag.corpus import QAItem
from rag.evidence_variants import gold_position, with_gold, without_gold
from rag.pipeline import MedRAG
from rag.prompt import EvidenceText
from rag.qa_inputs import is_held_out, qa_picture, question_kind

FORMS = ("gold", "distractors", "none")


@dataclass
class ReaderMix:
    """Shares of the three prompt forms (normalised)."""

    gold: float = 0.7
    distractors: float = 0.15
    none: float = 0.15
    seed: int = 0
    # question kind -> how many prompts each question of that kind gives: 2.0 twice, 0.25 one in four
    kind_weights: dict[str, float] = field(default_factory=dict)

    def draw(self, rng: random.Random) -> str:
        return rng.choices(FORMS, weights=(self.gold, self.distractors, self.none))[0]

    def repeats(self, item: QAItem, rng: random.Random) -> int:
        weight = self.kind_weights.get(question_kind(item), 1.0)
        whole, part = int(weight), weight - int(weight)
        return whole + (part > 0 and rng.random() < part)  # whole weights draw nothing: runs stay reproducible


def parse_kind_weights(text: str) -> dict[str, float]:
    """"yes_no=3,multiple_choice=0.25" as a dict, checked."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, value = part.partition("=")
        if kind not in ("yes_no", "multiple_choice"):
            raise ValueError(f"--kind-weights: unknown question kind {kind!r} in {text!r}; use yes_no or multiple_choice")
        try:
            weights[kind] = float(value)
        except ValueError:
            raise ValueError(f"--kind-weights: {part!r} needs a number after '=' (like yes_no=3)") from None
        if weights[kind] < 0:
            raise ValueError(f"--kind-weights: weight of {kind} must not be negative, got {value}")
    return weights


def balance_yes_no(items: list[QAItem], seed: int = 0) -> list[QAItem]:
    """The items with yes/no questions sampled down so that "yes" and "no" are equally often right."""
    rng = random.Random(seed)
    yes_no = [i for i in items if question_kind(i) == "yes_no"]
    by_answer: dict[str, list[QAItem]] = {}
    for item in yes_no:
        by_answer.setdefault(item.answer.strip().lower(), []).append(item)
    if len(by_answer) < 2:
        return [i for i in items if question_kind(i) != "yes_no"]
    smallest = min(len(group) for group in by_answer.values())
    kept = {id(i) for group in by_answer.values() for i in rng.sample(group, smallest)}
    return [i for i in items if question_kind(i) != "yes_no" or id(i) in kept]


def reader_rows(rag: MedRAG, items: list[QAItem], qa_dir: Path, mix: ReaderMix,
                progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Prompt-completion rows, one per usable train question (more or fewer per `mix.kind_weights`),
    and counts of what was built."""
    rng = random.Random(mix.seed)
    docs = {doc.id: doc for doc in rag.retriever.bundle.docs.values()}
    usable = balance_yes_no([i for i in items if not is_held_out(i) and i.doc_id in docs], mix.seed)
    rows: list[dict[str, Any]] = []
    forms: Counter[str] = Counter()
    prompts = [item for item in usable for _ in range(mix.repeats(item, rng))]
    for item in tqdm(prompts, desc="building reader prompts", unit="prompt", disable=not progress):
        picture = qa_picture(item, qa_dir)
        form = mix.draw(rng)
        context = rag.gather(item.question, picture, item.options, retrieval=form != "none")
        if form == "gold":
            place = rng.randrange(max(1, len(context.kept)))
            context = with_gold(context, docs[item.doc_id], item.question, item.options, place)
        elif form == "distractors":
            context = without_gold(context, item.doc_id, item.question, item.options)
        number = gold_position(context, item.doc_id)
        forms[form if context.evidence or form == "none" else "none"] += 1
        evidence = [EvidenceText(e.number, e.title, e.snippet) for e in context.evidence]
        answer = item.answer + (f" [{number}]" if number else "")
        rows.append({"prompt": text_messages(item.question, evidence, item.options),
                     "completion": [{"role": "assistant", "content": answer}],
                     "images": [picture] if picture is not None else []})
    counts = {"questions": len(items), "used": len(usable), "prompts": len(rows),
              "held_out": sum(1 for i in items if is_held_out(i)), "forms": dict(forms),
              "yes_no_answers": dict(Counter(i.answer for i in usable if question_kind(i) == "yes_no"))}
    return rows, counts
