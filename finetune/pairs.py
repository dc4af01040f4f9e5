"""RAG-PT preference pairs (docs/design.md §7), built by running the current VLM (Stage A) on the train split.

For each train question the model answers over the evidence that retrieval and selection gather,
without evidence, with the image replaced by a real image from another case or domain, and over
wrong evidence (the question's own document taken out, the next retrieved items in its place). The
ground truth is always *chosen*; what is rejected depends on the failure the answers show:

* cross_modality (MMed-RAG): right with the real image and still right with the replaced one, so the
  answer was read off the evidence and not the picture. Rejected: the option the model likes best,
  after the truth, with the replaced image (the collator in `finetune.dpo` gives the rejected side
  that image), so the margin grows only where the answer depends on the picture.
* helpful_evidence (MMed-RAG): wrong without retrieval, right with it. Rejected: the no-retrieval answer.
* harmful_evidence (MMed-RAG): right without retrieval, wrong with it. Rejected: the retrieved-evidence answer.
* misread_evidence: the question's own document is in the evidence and the model is wrong both with
  and without it: it does not read. Rejected: its answer with the evidence.
* wrong_evidence: right without evidence, wrong over the wrong evidence: it follows evidence that
  does not hold the answer (over-reliance). Rejected: the answer over the wrong evidence.

A pair whose chosen and rejected answers are the same text is never built: it teaches nothing but
the picture swap, and it made DPO push whole answer classes down. Then the pairs are balanced
(`balance_pairs`): within each type, yes/no pairs are sampled down so that "yes" is chosen as often
as "no" (the answer collapse of an unbalanced run: every yes/no answered "no"), and no type is more
than `max_type_share` of all pairs. When the question's own document is in the prompt, both answers
end with its citation " [n]", as Stage A was taught to answer; the same suffix on both sides leaves
the preference about the answer.

Prompts hold exactly what the answering pipeline shows at test time: the same prompt builder, the
same adaptive selection (or the same fixed k), hence the same number of evidence items. Question
templates held out for the phrasing check (`rag.qa_inputs.is_held_out`) are never used. The output
is a TRL conversational preference dataset (prompt / chosen / rejected messages plus `images` and
`rejected_images`) in Parquet, with a JSON summary of the counts.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rag.corpus import QAItem
from rag.counterfactual import replaced_image
from rag.evidence_variants import gold_position, without_gold
from rag.pipeline import Answer, Context, MedRAG
from rag.prompt import EvidenceText, build_prompt
from rag.qa_inputs import image_pool, is_held_out, qa_picture, question_kind

PAIR_KINDS = ("cross_modality", "helpful_evidence", "harmful_evidence", "misread_evidence", "wrong_evidence")


@dataclass
class PairSettings:
    n_questions: int = 0            # train questions to run (0: all), drawn stratified by domain
    k: int | None = None            # evidence items per prompt: None = adaptive selection, as at test time
    replacement: str = "other-domain"   # "noise", "other-domain" or "mixed"
    max_type_share: float = 0.4     # no pair type is more than this share of all pairs
    seed: int = 0


@dataclass
class PairSummary:
    questions: int
    image_questions: int
    counts: dict[str, int]          # pairs kept, per type
    found: dict[str, int]           # pairs the answers gave, per type, before balancing
    by_domain: dict[str, dict[str, int]]
    chosen_yes_no: dict[str, int]   # kept yes/no pairs by their chosen answer
    accuracy_with_retrieval: float
    accuracy_without_retrieval: float
    accuracy_wrong_evidence: float
    evidence_items: dict[str, int]  # how many prompts carried n items
    seconds: float
    generator: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """Whether the model was right in each condition (None: the condition could not be asked)."""

    with_retrieval: bool
    without_retrieval: bool
    replaced_image: bool | None     # None: a question without an image
    wrong_evidence: bool | None     # None: no wrong evidence could be gathered
    gold_in_evidence: bool


def pair_kinds(o: Outcome) -> list[str]:
    """Which pair types one question's answers give."""
    kinds = []
    if o.with_retrieval and o.replaced_image:
        kinds.append("cross_modality")
    if o.with_retrieval and not o.without_retrieval:
        kinds.append("helpful_evidence")
    if o.without_retrieval and not o.with_retrieval:
        kinds.append("harmful_evidence")
    if o.gold_in_evidence and not o.with_retrieval and not o.without_retrieval:
        kinds.append("misread_evidence")
    if o.without_retrieval and o.wrong_evidence is False:
        kinds.append("wrong_evidence")
    return kinds


def text_messages(question: str, evidence: list[EvidenceText], options: list[str] | None) -> list[dict[str, Any]]:
    """The prompt as TRL conversational messages: string contents, the image given separately in
    `images` (TRL inserts its block before the text, exactly where `build_prompt` puts it)."""
    prompt = build_prompt(question, evidence, None, options)
    return [{"role": m["role"], "content": "".join(b["text"] for b in m["content"] if b["type"] == "text")}
            for m in prompt.messages]


def wrong_evidence(rag: MedRAG, item: QAItem, picture: Any, context: Context) -> Context | None:
    """As many items as `context` holds (at least one), with the question's own document taken out and
    the next retrieved items in its place; None when retrieval finds nothing else."""
    n = max(1, len(context.kept))
    wider = without_gold(rag.gather(item.question, picture, item.options, k=n + 1), item.doc_id,
                         item.question, item.options)
    if not wider.kept:
        return None
    return replace(wider, kept=wider.kept[:n], evidence=wider.evidence[:n])


def runner_up(answer: Answer, truth: int) -> int:
    """The option the model scored highest apart from the truth."""
    scores = answer.option_scores or []
    return max((i for i in range(len(scores)) if i != truth), key=scores.__getitem__)


def _row(item: QAItem, kind: str, context: Context, rejected: str, images: list[Any],
         rejected_images: list[Any], replaced_what: str) -> dict[str, Any]:
    evidence = [EvidenceText(e.number, e.title, e.snippet) for e in context.evidence]
    number = gold_position(context, item.doc_id)
    cite = f" [{number}]" if number else ""
    return {"prompt": text_messages(item.question, evidence, item.options),
            "chosen": [{"role": "assistant", "content": item.answer + cite}],
            "rejected": [{"role": "assistant", "content": rejected + cite}],
            "images": images, "rejected_images": rejected_images, "pair_type": kind, "qa_id": item.id,
            "domain": item.domain, "n_evidence": len(evidence), "chosen_answer": item.answer,
            "kind": question_kind(item), "replaced_with": replaced_what}


def type_cap(counts: list[int], share: float) -> int:
    """The largest per-type count m such that no type holds more than `share` of the pairs when every
    type is cut to m; with too few types for that share, the smallest type's count."""
    for m in range(max(counts, default=0), 0, -1):
        if m <= share * sum(min(c, m) for c in counts):
            return m
    return min(counts, default=0)


def balance_pairs(rows: list[dict[str, Any]], max_type_share: float, seed: int = 0) -> list[dict[str, Any]]:
    """Drop identical pairs, balance yes/no pairs by chosen answer within each type, cap each type
    (cutting "yes", "no" and multiple-choice pairs in proportion, so the cap keeps the balance)."""
    rng = random.Random(seed)
    rows = [r for r in rows if r["chosen"][0]["content"] != r["rejected"][0]["content"]]
    strata: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for kind in dict.fromkeys(r["pair_type"] for r in rows):
        group = [r for r in rows if r["pair_type"] == kind]
        yes = [r for r in group if r["kind"] == "yes_no" and r["chosen_answer"].lower() == "yes"]
        no = [r for r in group if r["kind"] == "yes_no" and r["chosen_answer"].lower() != "yes"]
        keep = min(len(yes), len(no))
        strata[kind] = (rng.sample(yes, keep), rng.sample(no, keep), [r for r in group if r["kind"] != "yes_no"])
    cap = type_cap([len(y) + len(n) + len(m) for y, n, m in strata.values()], max_type_share)
    kept: list[dict[str, Any]] = []
    for yes, no, other in strata.values():
        total = len(yes) + len(no) + len(other)
        pairs = len(yes) if total <= cap else min(len(yes), round(len(yes) * cap / total))
        kept += yes[:pairs] + no[:pairs] + other[:min(len(other), cap - 2 * pairs)]
    rng.shuffle(kept)
    return kept


def build_pairs(rag: MedRAG, items: list[QAItem], qa_dir: Path, settings: PairSettings,
                progress: bool = True) -> tuple[list[dict[str, Any]], PairSummary, list[dict[str, Any]]]:
    """Run the VLM on `items` (closed questions of the train split; held-out templates are skipped).

    Returns the kept pair rows, the counts, and one trace per question (its answers in each condition),
    saved beside the pairs so every pair can be checked against the condition that produced it."""
    started = time.perf_counter()
    pool = image_pool(rag.retriever.bundle.docs.values())
    items = [i for i in items if not is_held_out(i)]
    found: list[dict[str, Any]] = []
    n_items: Counter[str] = Counter()
    right: Counter[str] = Counter()
    n_image, n_wrong = 0, 0
    traces: list[dict[str, Any]] = []
    for item in tqdm(items, desc="answering train questions", unit="q", disable=not progress):
        if not item.options or item.answer not in item.options:
            raise ValueError(f"QA item {item.id}: preference pairs need a closed question whose answer is one of "
                             "its options")
        truth = item.options.index(item.answer)
        picture = qa_picture(item, qa_dir)
        context = rag.gather(item.question, picture, item.options, k=settings.k)
        with_answer = rag.respond(item.question, picture, item.options, context, mode="options")
        without_answer = rag.respond(item.question, picture, item.options,
                                     rag.gather(item.question, None, retrieval=False), mode="options")
        replaced, replaced_what, replaced_answer = None, "", None
        if picture is not None:
            n_image += 1
            replaced, replaced_what = replaced_image(picture, item.id, item.domain, settings.replacement, pool)
            replaced_answer = rag.respond(item.question, replaced, item.options, context, mode="options")
        wrong = wrong_evidence(rag, item, picture, context)
        wrong_answer = rag.respond(item.question, picture, item.options, wrong, mode="options") if wrong else None
        outcome = Outcome(with_answer.option == truth, without_answer.option == truth,
                          None if replaced_answer is None else replaced_answer.option == truth,
                          None if wrong_answer is None else wrong_answer.option == truth,
                          gold_position(context, item.doc_id) is not None)
        right.update(k for k, v in (("with", outcome.with_retrieval), ("without", outcome.without_retrieval),
                                     ("wrong", outcome.wrong_evidence)) if v)
        n_wrong += wrong_answer is not None
        n_items[str(len(context.evidence))] += 1
        kinds = pair_kinds(outcome)
        images = [picture] if picture is not None else []
        for kind in kinds:
            if kind == "cross_modality":
                row = _row(item, kind, context, item.options[runner_up(replaced_answer, truth)], images,
                           [replaced], replaced_what)
            elif kind == "helpful_evidence":
                row = _row(item, kind, context, item.options[without_answer.option], images, images, "")
            elif kind == "wrong_evidence":
                row = _row(item, kind, wrong, item.options[wrong_answer.option], images, images, "")
            else:   # harmful and misread: the answer given over the retrieved evidence is rejected
                row = _row(item, kind, context, item.options[with_answer.option], images, images, "")
            found.append(row)
        traces.append({"qa_id": item.id, "answer": item.answer, "with_retrieval": item.options[with_answer.option],
                       "without_retrieval": item.options[without_answer.option],
                       "right_with_replaced_image": outcome.replaced_image, "replaced_with": replaced_what,
                       "wrong_evidence_answer": item.options[wrong_answer.option] if wrong_answer else None,
                       "gold_in_evidence": outcome.gold_in_evidence, "evidence": [e.id for e in context.evidence],
                       "wrong_evidence": [e.id for e in wrong.evidence] if wrong else [], "pairs": kinds})
    rows = balance_pairs(found, settings.max_type_share, settings.seed)
    kept: dict[str, list[str]] = {}
    for row in rows:
        kept.setdefault(row["qa_id"], []).append(row["pair_type"])
    for trace in traces:   # which of each question's pairs survived balancing
        trace["kept"] = sorted(kept.get(trace["qa_id"], []))
    by_domain: dict[str, Counter[str]] = {}
    for row in rows:
        by_domain.setdefault(row["domain"], Counter())[row["pair_type"]] += 1
    count = Counter(r["pair_type"] for r in rows)
    summary = PairSummary(
        questions=len(items), image_questions=n_image, counts={k: count[k] for k in PAIR_KINDS},
        found={k: sum(1 for r in found if r["pair_type"] == k) for k in PAIR_KINDS},
        by_domain={d: {k: c[k] for k in PAIR_KINDS} for d, c in sorted(by_domain.items())},
        chosen_yes_no=dict(Counter(r["chosen_answer"] for r in rows if r["kind"] == "yes_no")),
        accuracy_with_retrieval=round(right["with"] / max(1, len(items)), 4),
        accuracy_without_retrieval=round(right["without"] / max(1, len(items)), 4),
        accuracy_wrong_evidence=round(right["wrong"] / max(1, n_wrong), 4),
        evidence_items=dict(sorted(n_items.items(), key=lambda kv: int(kv[0]))),
        seconds=round(time.perf_counter() - started, 1), generator=rag.generator.name, settings=asdict(settings))
    return rows, summary, traces


def save_pairs(rows: list[dict[str, Any]], summary: PairSummary, traces: list[dict[str, Any]], out: Path) -> Path:
    """Write `pairs.parquet` (images embedded), `pairs.json` (counts) and `answers.jsonl` (traces) into
    `out`, replacing the folder only when all are written, so a failed run leaves the previous pairs."""
    import datasets

    from rag.atomic import atomic_save_dir

    if not rows:
        raise ValueError("no preference pairs were produced: every answer was right (or wrong) in every "
                         "condition; run on more train questions (--questions) or start from a weaker model")

    features = datasets.Features({
        "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "chosen": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "rejected": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "images": datasets.Sequence(datasets.Image()),
        "rejected_images": datasets.Sequence(datasets.Image()),
        "pair_type": datasets.Value("string"), "qa_id": datasets.Value("string"),
        "domain": datasets.Value("string"), "n_evidence": datasets.Value("int32"),
        "chosen_answer": datasets.Value("string"), "kind": datasets.Value("string"),
        "replaced_with": datasets.Value("string"),
    })

    def write(tmp: Path) -> None:
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(tmp / "pairs.parquet"))
        (tmp / "pairs.json").write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
        (tmp / "answers.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in traces),
                                           encoding="utf-8")

    return atomic_save_dir(Path(out), write)


def load_pairs(path: str | Path) -> Any:
    """The pair dataset written by `save_pairs` (a folder or its pairs.parquet), images decoded to PIL."""
    import datasets

    path = Path(path)
    parquet = path / "pairs.parquet" if path.is_dir() else path
    if not parquet.is_file():
        raise FileNotFoundError(f"no preference pairs at {path}; build them with `medrag finetune pairs --out {path}`")
    return datasets.Dataset.from_parquet(str(parquet))
