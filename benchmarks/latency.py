"""Latency of the question-answering pipeline with the default VLM, plus the abstention check.

Measures: cold load time of `MedRAG.load` (index + encoders + VLM), then warm end-to-end `ask`
latency p50/p95 for closed questions (options scored by log-probability) and open questions (free
generation), each with and without an image, on the sample test split. It also records how often
answers cite existing evidence, and the dense-similarity distributions behind the abstention
thresholds (answerable val questions vs off-topic questions and noise images).

    .venv/bin/python benchmarks/latency.py [--index indexes/sample] [--n 20]

Writes benchmarks/results/latency.{json,md,png}. Needs the sample index (`make demo` builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rag.defaults import resolve_generator_name  # noqa: E402
from rag.corpus import read_qa  # noqa: E402
from rag.pipeline import MedRAG  # noqa: E402
from rag.reporting import machine_description, new_figure, now, save_figure  # noqa: E402
from rag.selection import select_hits  # noqa: E402

OFF_TOPIC = ["What is the capital of France?", "How do I change the oil in a motorbike gearbox?",
             "Which football club won the 1998 league?", "How many strings does a violin have?",
             "What is the boiling point of ethanol at sea level?", "Who wrote the novel Moby-Dick?",
             "How do I reset a wireless router?", "What is the best time to plant tulip bulbs?",
             "Which programming language has the borrow checker?", "How long should pasta boil?"]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def best_similarities(rag: MedRAG, question: str, image) -> tuple[float, float, float]:
    result = rag.retriever.retrieve(question, image, k=rag.retriever.bundle.selection.k_max)
    kept, _ = select_hits(result.hits, rag.retriever.bundle.selection)
    return rag.best_similarities(kept, question, image)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default="indexes/sample")
    parser.add_argument("--qa", default="data/sample/qa.jsonl")
    parser.add_argument("--generator", help="default: the default VLM with its shipped weights")
    parser.add_argument("--n", type=int, default=20, help="questions per kind")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    generator = resolve_generator_name(args.generator)
    started = time.perf_counter()
    rag = MedRAG.load(args.index, generator=generator)
    load_seconds = time.perf_counter() - started
    root = Path(args.qa).parent
    items = read_qa(args.qa)
    test = [q for q in items if q.split == "test" and q.options]
    rng = random.Random(0)
    rng.shuffle(test)
    rag.ask(test[0].question, options=test[0].options)  # warm-up: first calls allocate and fill caches

    kinds = {"closed+image": [q for q in test if q.image], "closed": [q for q in test if not q.image],
             "open+image": [q for q in test if q.image], "open": [q for q in test if not q.image]}
    latency, cited_ok, answered, correct = {}, 0, 0, {}
    for kind, pool in kinds.items():
        times, right = [], 0
        for item in pool[:args.n]:
            closed = kind.startswith("closed")
            answer = rag.ask(item.question, image=root / item.image if item.image and "image" in kind else None,
                             options=item.options if closed else None)
            times.append(answer.timings["total"])
            if not answer.abstained:
                answered += 1
                ids = {e.id for e in answer.evidence}
                cited_ok += bool(answer.citations) and all(c.evidence_id in ids for c in answer.citations)
            right += closed and answer.option is not None and item.options[answer.option] == item.answer
        latency[kind] = {"n": len(times), "p50_s": round(percentile(times, 50), 3),
                         "p95_s": round(percentile(times, 95), 3), "all_s": [round(t, 3) for t in times]}
        if kind.startswith("closed"):
            correct[kind] = round(right / max(len(times), 1), 3)
        print(f"{kind:<13} p50 {latency[kind]['p50_s']:.2f} s  p95 {latency[kind]['p95_s']:.2f} s  (n={len(times)})")

    val = [q for q in items if q.split == "val"]
    rng.shuffle(val)
    answerable = [best_similarities(rag, q.question, root / q.image if q.image else None) for q in val[:60]]
    noise = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    from PIL import Image

    off_topic = [best_similarities(rag, q, None) for q in OFF_TOPIC]
    off_topic += [best_similarities(rag, q, Image.fromarray(noise)) for q in OFF_TOPIC[:5]]
    abstained_off = sum(rag.evidence_is_weak(*s) for s in off_topic)
    abstained_val = sum(rag.evidence_is_weak(*s) for s in answerable)
    report = {
        "command": "python benchmarks/latency.py " + " ".join(sys.argv[1:]),
        "date": now(), "machine": machine_description(), "torch_threads": __import__("torch").get_num_threads(),
        "generator": generator, "index": args.index, "load_seconds": round(load_seconds, 2), "latency": latency,
        "closed_accuracy_on_these_questions": correct,
        "answers_citing_existing_evidence": f"{cited_ok}/{answered}",
        "abstention": {"min_text_similarity": rag.min_text_similarity, "min_image_similarity": rag.min_image_similarity,
                       "min_lexical_score": rag.min_lexical_score,
                       "off_topic_best_lexical_max": round(max(s[2] for s in off_topic), 3),
                       "val_answerable_abstained": f"{abstained_val}/{len(answerable)}",
                       "off_topic_abstained": f"{abstained_off}/{len(off_topic)}",
                       "val_best_text_similarity_p5_p50": [round(percentile([s[0] for s in answerable], 5), 3),
                                                           round(percentile([s[0] for s in answerable], 50), 3)],
                       "off_topic_best_text_similarity_max": round(max(s[0] for s in off_topic), 3)},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(latency, out / "latency.png")
    (out / "latency.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def plot(latency: dict, path: Path) -> None:
    fig, ax = new_figure(figsize=(6, 3.2))
    ax.boxplot([v["all_s"] for v in latency.values()], tick_labels=list(latency))
    ax.axhline(3.0, color="tab:red", linestyle="--", label="target p50 ≤ 3 s (closed)")
    ax.set_ylabel("warm ask latency (s)")
    ax.legend()
    save_figure(fig, path)


def markdown(r: dict) -> str:
    rows = "\n".join(f"| {k} | {v['n']} | {v['p50_s']:.2f} | {v['p95_s']:.2f} |" for k, v in r["latency"].items())
    a = r["abstention"]
    return f"""# QA latency (default VLM, CPU)

Command: `{r['command']}` — {r['date']} — {r['machine']} (torch threads {r['torch_threads']}).
Generator: `{r['generator']}`; index `{r['index']}`.

Cold load (`MedRAG.load`: index, encoders, VLM): **{r['load_seconds']:.1f} s**.

| question kind | n | p50 (s) | p95 (s) |
|---|---|---|---|
{rows}

Closed questions score the options by log-probability; open ones generate up to 48 tokens.
Answers citing existing evidence: {r['answers_citing_existing_evidence']}. Closed accuracy on these
questions (not the experiment; see `medrag eval qa`): {r['closed_accuracy_on_these_questions']}.

Abstention (thresholds text {a['min_text_similarity']}, image {a['min_image_similarity']}, BM25
{a['min_lexical_score']}): answerable
val questions abstained {a['val_answerable_abstained']}; off-topic questions (10 text-only, 5 with a
noise image) abstained {a['off_topic_abstained']}. Best kept question→text similarity on val: p5
{a['val_best_text_similarity_p5_p50'][0]}, median {a['val_best_text_similarity_p5_p50'][1]}; highest
off-topic {a['off_topic_best_text_similarity_max']} (BM25 {a['off_topic_best_lexical_max']}).

![latency](latency.png)
"""


if __name__ == "__main__":
    sys.exit(main())
