"""RAG-PT preference pairs (docs/design.md §7), built by running the current VLM on the train split.

For each train question the model answers three times over the same gathered evidence: with
retrieval, without it, and (image questions) with the image replaced by noise or an image from
another domain. The ground truth is always *chosen*; what is rejected depends on which of MMed-RAG's
three failure modes the answers show:

* cross-modality: right with the real image and still right with the replaced one, so the model
  copied the evidence. Rejected is that same answer, given with the replaced image (the collator in
  `finetune.dpo` swaps the rejected side's pixels), so DPO rewards answers that depend on the image.
* helpful evidence: wrong without retrieval, right with it. Rejected is the no-retrieval answer.
* harmful evidence: right without retrieval, wrong with it. Rejected is the with-retrieval answer.

Prompts hold exactly what the answering pipeline shows at test time: the same prompt builder, the
same adaptive selection (or the same fixed k), hence the same number of evidence items. The output is
a TRL conversational preference dataset (prompt / chosen / rejected messages plus `images` and
`rejected_images`) in Parquet, with a JSON summary of the counts.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rag.corpus import QAItem
from rag.counterfactual import replaced_image
from rag.pipeline import MedRAG
from rag.prompt import EvidenceText, build_prompt
from rag.qa_inputs import image_pool, qa_picture

PAIR_KINDS = ("cross_modality", "helpful_evidence", "harmful_evidence")


@dataclass
class PairSettings:
    n_questions: int = 0            # train questions to run (0: all), drawn stratified by domain
    k: int | None = None            # evidence items per prompt: None = adaptive selection, as at test time
    replacement: str = "mixed"      # "noise", "other-domain" or "mixed"
    seed: int = 0


@dataclass
class PairSummary:
    questions: int
    image_questions: int
    counts: dict[str, int]
    by_domain: dict[str, dict[str, int]]
    accuracy_with_retrieval: float
    accuracy_without_retrieval: float
    evidence_items: dict[str, int]  # how many prompts carried n items
    seconds: float
    generator: str
    settings: dict[str, Any] = field(default_factory=dict)


def pair_kinds(right_with: bool, right_without: bool, right_replaced: bool | None) -> list[str]:
    """Which pairs one question yields. `right_replaced` is None for a question without an image."""
    kinds = []
    if right_with and right_replaced:
        kinds.append("cross_modality")
    if right_with and not right_without:
        kinds.append("helpful_evidence")
    if right_without and not right_with:
        kinds.append("harmful_evidence")
    return kinds


def text_messages(question: str, evidence: list[EvidenceText], options: list[str] | None) -> list[dict[str, Any]]:
    """The prompt as TRL conversational messages: string contents, the image given separately in
    `images` (TRL inserts its block before the text, exactly where `build_prompt` puts it)."""
    prompt = build_prompt(question, evidence, None, options)
    return [{"role": m["role"], "content": "".join(b["text"] for b in m["content"] if b["type"] == "text")}
            for m in prompt.messages]


def build_pairs(rag: MedRAG, items: list[QAItem], qa_dir: Path, settings: PairSettings,
                progress: bool = True) -> tuple[list[dict[str, Any]], PairSummary, list[dict[str, Any]]]:
    """Run the VLM on `items` (closed questions of the train split).

    Returns the pair rows, the counts, and one trace per question (its answers in each condition),
    saved beside the pairs so every pair can be checked against the condition that produced it."""
    started = time.perf_counter()
    pool = image_pool(rag.retriever.bundle.docs.values())
    rows: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    by_domain: dict[str, Counter[str]] = {}
    n_items: Counter[str] = Counter()
    right = {"with": 0, "without": 0}
    n_image = 0
    traces: list[dict[str, Any]] = []
    for item in tqdm(items, desc="answering train questions", unit="q", disable=not progress):
        if not item.options or item.answer not in item.options:
            raise ValueError(f"QA item {item.id}: preference pairs need a closed question whose answer is one of "
                             "its options")
        picture = qa_picture(item, qa_dir)
        context = rag.gather(item.question, picture, item.options, k=settings.k)
        with_answer = rag.respond(item.question, picture, item.options, context, mode="options")
        without_answer = rag.respond(item.question, picture, item.options,
                                     rag.gather(item.question, None, retrieval=False), mode="options")
        given_with, given_without = item.options[with_answer.option], item.options[without_answer.option]
        replaced, replaced_what, right_replaced = None, "", None
        if picture is not None:
            n_image += 1
            replaced, replaced_what = replaced_image(picture, item.id, item.domain, settings.replacement, pool)
            right_replaced = item.options[rag.respond(item.question, replaced, item.options, context,
                                                      mode="options").option] == item.answer
        right["with"] += given_with == item.answer
        right["without"] += given_without == item.answer
        evidence = [EvidenceText(e.number, e.title, e.snippet) for e in context.evidence]
        n_items[str(len(evidence))] += 1
        kinds = pair_kinds(given_with == item.answer, given_without == item.answer, right_replaced)
        traces.append({"qa_id": item.id, "answer": item.answer, "with_retrieval": given_with,
                       "without_retrieval": given_without, "right_with_replaced_image": right_replaced,
                       "replaced_with": replaced_what, "evidence": [e.id for e in context.evidence], "pairs": kinds})
        for kind in kinds:
            rejected = {"cross_modality": given_with, "helpful_evidence": given_without,
                        "harmful_evidence": given_with}[kind]
            images = [picture] if picture is not None else []
            rows.append({
                "prompt": text_messages(item.question, evidence, item.options),
                "chosen": [{"role": "assistant", "content": item.answer}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "images": images,
                "rejected_images": [replaced] if kind == "cross_modality" else images,
                "pair_type": kind, "qa_id": item.id, "domain": item.domain, "n_evidence": len(evidence),
                "replaced_with": replaced_what if kind == "cross_modality" else "",
            })
            counts[kind] += 1
            by_domain.setdefault(item.domain, Counter())[kind] += 1
    summary = PairSummary(
        questions=len(items), image_questions=n_image, counts={k: counts[k] for k in PAIR_KINDS},
        by_domain={d: {k: c[k] for k in PAIR_KINDS} for d, c in sorted(by_domain.items())},
        accuracy_with_retrieval=round(right["with"] / max(1, len(items)), 4),
        accuracy_without_retrieval=round(right["without"] / max(1, len(items)), 4),
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
