"""Retrieval benchmark: the sample corpus and real MedPix 2.0 cases, the system beside its baselines.

    python benchmarks/retrieval.py                    # both datasets
    python benchmarks/retrieval.py --dataset sample   # the sample corpus (generated if missing)
    python benchmarks/retrieval.py --dataset medpix   # MedPix (needs ../shared/realdata/medpix2_test)

Writes benchmarks/results/retrieval.json and retrieval.md (command, machine, date, tables).

Every question is searched once per channel (`Retriever.search_channels`); the baselines are
rankings made from those channel lists: each single channel, BM25 + dense text by RRF (k = 60), and
RRF over every channel the query can use (the fusion before score-aware fusion). The system rows
run the full query path (`Retriever.retrieve`: search, fuse, route) and are timed, each stage too;
the first text and the first image question warm up first, untimed. Recall comes with a 95% Wilson interval.

Sample corpus: the test split on an index built without the QA file ("uncalibrated") and with it
("calibrated"); then the `added` documents (corpus_added.jsonl) are added with `index add` to both
indexes, and the added split's image and text questions are reported apart, beside an index
built over both corpora at once (the most that refitting the router and aligner at `index add` could give).

MedPix (nothing is copied into the repository; everything is built in a temporary folder): one
document per case (every section but the Findings, and the case's images except the first one of a
multi-image case, which is held out). Queries: each case's Findings (text), and each held-out image
asked "What is the diagnosis for this image?". Uncalibrated: one index, every query. Calibrated:
the QA file's val split is one half of the cases, the other half is tested (`--folds 2` swaps the
halves too and pools both, so every query is answered by an index that never calibrated on it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rag.corpus import Document, QAItem, read_documents, read_qa, write_jsonl  # noqa: E402
from rag.fusion import usable_channels  # noqa: E402
from rag.index_build import IndexSpec, add_documents, build_index  # noqa: E402
from rag.reporting import machine_description, now  # noqa: E402
from rag.retriever import Retriever  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
REALDATA = Path(os.environ.get("MEDRAG_REALDATA", REPO.parent / "shared" / "realdata"))
KS = (1, 5, 10)
IMAGE_QUESTION = "What is the diagnosis for this image?"
RRF_K = 60  # the RRF baselines (Cormack et al., 2009)
Ranking = list[int]


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 0.0
    p = hits / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return round((centre - half) / (1 + z * z / n), 3), round((centre + half) / (1 + z * z / n), 3)


def summarise(ranks: list[int | None], latencies: list[float] | None = None,
              stage_timings: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """Recall@k with Wilson intervals and MRR; with timings, latency p50/p95 and each stage's p50 (ms)."""
    n = len(ranks)
    out: dict[str, Any] = {"n": n}
    for k in KS:
        hits = sum(r is not None and r < k for r in ranks)
        out[f"recall@{k}"] = round(hits / n, 4) if n else 0.0
        out[f"recall@{k}_ci95"] = wilson(hits, n)
    out["mrr"] = round(sum(1.0 / (r + 1) for r in ranks if r is not None) / n, 4) if n else 0.0
    if latencies:
        out["latency_ms_p50"] = round(float(np.percentile(latencies, 50)) * 1000, 1)
        out["latency_ms_p95"] = round(float(np.percentile(latencies, 95)) * 1000, 1)
    if stage_timings:
        names = [s for s in stage_timings[0] if s != "total"]
        out["stage_ms_p50"] = {s: round(float(np.percentile([t.get(s, 0.0) for t in stage_timings], 50)) * 1000, 2)
                               for s in names}
    return out


def rrf(lists: list[list[tuple[int, float]]]) -> Ranking:
    """Reciprocal Rank Fusion with equal weights (Cormack et al., 2009)."""
    fused: dict[int, float] = defaultdict(float)
    for ranked in lists:
        for rank, (number, _) in enumerate(ranked):
            fused[number] += 1.0 / (RRF_K + rank + 1)
    return sorted(fused, key=lambda n: (-fused[n], n))


BASELINES: dict[str, Callable[[dict[str, list[tuple[int, float]]]], Ranking | None]] = {
    **{f"channel: {c}": (lambda per, c=c: [n for n, _ in per[c]] if c in per else None)
       for c in ("bm25", "text", "joint", "image")},
    "rrf bm25+dense": lambda per: rrf([per[c] for c in ("bm25", "text") if c in per]) if "text" in per else None,
    "rrf all channels": lambda per: rrf(list(per.values())),
}


def evaluate(systems: dict[str, Retriever], questions: list[QAItem], qa_dir: Path,
             baselines_from: str | None = None, k: int = 10) -> dict[str, dict[str, Any]]:
    """{system or baseline: {group: summary}}; groups: all, text questions, image questions.

    `systems` are timed full retrievals; the baselines are made from the channel lists of
    `systems[baselines_from]`."""
    ranks: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    times: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    stages: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))  # where the time goes
    for name, retriever in systems.items():
        number_of = {d.id: n for n, d in retriever.bundle.docs.items()}
        # Warm up once per kind of query: the first text query builds BM25 lazily, the first image
        # query runs the image encoder for the first time; neither belongs in a warm latency.
        for first in {bool(q.image): q for q in reversed(questions)}.values():
            retriever.retrieve(first.question or None, image=qa_dir / first.image if first.image else None, k=k)
        for item in questions:
            image = qa_dir / item.image if item.image else None
            group = "image questions" if image else "text questions"
            started = time.perf_counter()
            result = retriever.retrieve(item.question or None, image=image, k=k)
            elapsed = time.perf_counter() - started
            ranking = [h.doc_number for h in result.hits]
            gold = number_of.get(item.doc_id)
            for g in ("all", group):
                ranks[name][g].append(ranking.index(gold) if gold in ranking else None)
                times[name][g].append(elapsed)
                stages[name][g].append(result.timings)
            if name == baselines_from:
                _baseline_ranks(retriever, item, image, gold, group, ranks)
    return {name: {g: summarise(r, times.get(name, {}).get(g), stages.get(name, {}).get(g))
                   for g, r in groups.items()}
            for name, groups in ranks.items()}


def _baseline_ranks(retriever: Retriever, item: QAItem, image: Path | None, gold: int | None, group: str,
                    ranks: dict[str, dict[str, list]]) -> None:
    channels = usable_channels(item.question or None, image, retriever.bundle.joint_searchable)
    _, _, per_channel = retriever.search_channels(item.question or None, image, channels)
    for name, make in BASELINES.items():
        ranking = make(per_channel)
        if ranking is not None:
            for g in ("all", group):
                ranks[name][g].append(ranking.index(gold) if gold in ranking else None)


def timed_build(corpus: Path, out: Path, qa: Path | None = None, spec: IndexSpec | None = None) -> float:
    started = time.perf_counter()
    build_index(corpus, out, spec=spec, qa=qa, progress=False)
    return round(time.perf_counter() - started, 1)


def run_sample(work: Path, corpus_dir: Path, limit: int | None = None) -> dict[str, Any]:
    """The sample corpus: uncalibrated and calibrated indexes, test split, then the added split after `index add`.

    `limit`: at most this many questions per split (a seeded sample), for a quicker run."""
    spec = IndexSpec.from_file(REPO / "indexes" / "sample.yaml")
    if not (corpus_dir / "corpus.jsonl").is_file():
        from sample_corpus.build import build_sample_corpus

        build_sample_corpus(corpus_dir, seed=spec.sample_seed)
    corpus, qa = corpus_dir / "corpus.jsonl", corpus_dir / "qa.jsonl"
    out: dict[str, Any] = {"build_seconds": {"without_qa": timed_build(corpus, work / "sample-noqa", spec=spec),
                                             "with_qa": timed_build(corpus, work / "sample-qa", qa, spec)}}
    systems = {"system (uncalibrated)": Retriever.load(work / "sample-noqa"),
               "system (calibrated)": Retriever.load(work / "sample-qa")}
    out["build_stages"] = {name: r.bundle.manifest.build_stages for name, r in systems.items()}
    questions = read_qa(qa)
    test = _at_most([q for q in questions if q.split == "test"], limit)
    out["test"] = evaluate(systems, test, corpus_dir, baselines_from="system (uncalibrated)")
    out["fusion"] = {name: {kind: r.bundle.fusion_weights(kind) for kind in ("text", "image", "image+text")}
                     for name, r in systems.items()}
    out["channel_reliability"] = systems["system (uncalibrated)"].bundle.manifest.channel_reliability
    out["abstention"] = systems["system (uncalibrated)"].bundle.manifest.abstention
    grown = {}
    for name, built in (("uncalibrated", "sample-noqa"), ("calibrated", "sample-qa")):
        started = time.perf_counter()
        add_documents(work / built, corpus_dir / "corpus_added.jsonl", progress=False)
        out.setdefault("add_seconds", {})[name] = round(time.perf_counter() - started, 1)
        grown[f"system after add ({name})"] = Retriever.load(work / built)
    # What refitting the heads at `index add` could reach at most: one build over both corpora.
    both = _joined_corpus(corpus_dir, work / "both")
    out["build_seconds"]["corpus_and_added"] = timed_build(both, work / "sample-both", spec=spec)
    grown["system rebuilt with the added documents (uncalibrated)"] = Retriever.load(work / "sample-both")
    added = _at_most([q for q in questions if q.split == "added"], limit)
    out["added"] = evaluate(grown, added, corpus_dir, baselines_from="system after add (uncalibrated)")
    return out


def _joined_corpus(corpus_dir: Path, out: Path) -> Path:
    """corpus.jsonl followed by corpus_added.jsonl, with the images beside them (a corpus's image paths
    are relative to its own folder and may not leave it)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(corpus_dir / "images", out / "images", dirs_exist_ok=True)
    joined = out / "corpus.jsonl"
    joined.write_text("".join((corpus_dir / name).read_text(encoding="utf-8").rstrip("\n") + "\n"
                              for name in ("corpus.jsonl", "corpus_added.jsonl")), encoding="utf-8")
    return joined


def _at_most(questions: list[QAItem], limit: int | None, seed: int = 0) -> list[QAItem]:
    if limit is None or len(questions) <= limit:
        return questions
    keep = sorted(np.random.default_rng(seed).choice(len(questions), size=limit, replace=False))
    return [questions[i] for i in keep]


def medpix_cases(work: Path, seed: int = 0) -> tuple[Path, list[QAItem]]:
    """The MedPix case corpus (held-out images left out) and its queries, split in two halves ("a", "b")."""
    from rag.importers.medpix import import_medpix

    root = REALDATA / "medpix2_test"
    import_medpix(root / "descriptions_test.jsonl", root / "cases_test.jsonl", root / "images", work,
                  copy_images=True)
    cases = [d for d in read_documents(work / "corpus.jsonl") if d.metadata["kind"] == "case"]
    half = {cases[i].id for i in np.random.default_rng(seed).permutation(len(cases))[: len(cases) // 2]}
    docs, questions = [], []
    for doc in cases:
        sections = doc.metadata["sections"]
        rest = "\n\n".join(f"{k.replace('_', ' ').title()}: {v}" for k, v in sections.items() if k != "findings")
        if not rest:  # a case with nothing but its Findings has no document to find
            continue
        held_out = doc.images[0] if len(doc.images) > 1 else None
        docs.append(Document(id=doc.id, domain="radiology", title=doc.title, text=rest,
                             images=doc.images[1:] if held_out else doc.images, source=doc.source,
                             metadata={"case_id": doc.metadata["case_id"]}))
        fold = "a" if doc.id in half else "b"
        if sections.get("findings"):
            questions.append(QAItem(id=f"{doc.id}-findings", question=sections["findings"], answer=doc.title,
                                    doc_id=doc.id, domain="radiology", split=fold))
        if held_out:
            questions.append(QAItem(id=f"{doc.id}-image", question=IMAGE_QUESTION, answer=doc.title, doc_id=doc.id,
                                    domain="radiology", split=fold, image=held_out))
    write_jsonl(work / "cases.jsonl", docs)
    return work / "cases.jsonl", questions


def run_medpix(work: Path, folds: int = 1) -> dict[str, Any]:
    corpus, questions = medpix_cases(work / "medpix")
    out: dict[str, Any] = {"n_documents": len(read_documents(corpus)),
                           "build_seconds": timed_build(corpus, work / "medpix-idx")}
    uncalibrated = Retriever.load(work / "medpix-idx")
    out["uncalibrated"] = evaluate({"system (uncalibrated)": uncalibrated}, questions, corpus.parent,
                                   baselines_from="system (uncalibrated)")
    out["channel_reliability"] = uncalibrated.bundle.manifest.channel_reliability
    out["abstention"] = uncalibrated.bundle.manifest.abstention
    fold_reports: list[dict[str, dict[str, Any]]] = []
    out["fusion_calibrated"] = {}
    for calibrate_on, test_on in (("a", "b"), ("b", "a"))[:folds]:
        qa = corpus.parent / f"qa-{calibrate_on}.jsonl"
        write_jsonl(qa, [QAItem(**{**q.to_json(), "split": "val" if q.split == calibrate_on else "test"})
                         for q in questions])
        build_index(corpus, work / f"medpix-idx-{calibrate_on}", qa=qa, progress=False)
        retriever = Retriever.load(work / f"medpix-idx-{calibrate_on}")
        out["fusion_calibrated"][calibrate_on] = retriever.bundle.manifest.fusion
        fold_reports.append(evaluate({"system (calibrated, cross-fitted)": retriever},
                              [q for q in questions if q.split == test_on], corpus.parent))
    out["calibrated"] = _merge_folds(fold_reports)
    return out


def _merge_folds(folds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Pool two cross-fitted folds' summaries: recall and MRR weighted by n, intervals recomputed."""
    merged: dict[str, dict[str, Any]] = {}
    for name in folds[0]:
        merged[name] = {}
        for group in folds[0][name]:
            parts = [f[name][group] for f in folds if group in f[name]]
            n = sum(p["n"] for p in parts)
            m: dict[str, Any] = {"n": n}
            for key in [f"recall@{k}" for k in KS] + ["mrr"]:
                m[key] = round(sum(p[key] * p["n"] for p in parts) / n, 4)
            for k in KS:
                m[f"recall@{k}_ci95"] = wilson(round(m[f"recall@{k}"] * n), n)
            m["latency_ms_p50"] = round(float(np.mean([p["latency_ms_p50"] for p in parts])), 1)
            m["latency_ms_p95"] = round(float(max(p["latency_ms_p95"] for p in parts)), 1)
            merged[name][group] = m
    return merged


def table(report: dict[str, dict[str, Any]]) -> str:
    lines = ["| system | group | n | R@1 [95% CI] | R@5 [95% CI] | R@10 | MRR | p50 ms | p95 ms | p50 ms per stage |",
             "|---" * 10 + "|"]
    for system, groups in report.items():
        for group, m in groups.items():
            ci1, ci5 = m["recall@1_ci95"], m["recall@5_ci95"]
            lines.append(f"| {system} | {group} | {m['n']} | {m['recall@1']:.3f} [{ci1[0]:.2f}, {ci1[1]:.2f}] | "
                         f"{m['recall@5']:.3f} [{ci5[0]:.2f}, {ci5[1]:.2f}] | {m['recall@10']:.3f} | "
                         f"{m['mrr']:.3f} | {m.get('latency_ms_p50', '')} | {m.get('latency_ms_p95', '')} | "
                         f"{_stages(m.get('stage_ms_p50'))} |")
    return "\n".join(lines)


def _stages(stage_ms: dict[str, float] | None) -> str:
    return ", ".join(f"{name} {ms}" for name, ms in stage_ms.items()) if stage_ms else ""


def _loaded(run: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`measure()`'s results with the run facts and the machine's load average before and after.

    Latency and build time depend on what else the machine runs (on a shared 2-core machine a
    training job doubles the encoders' time), so the report says how busy it was."""
    before = round(os.getloadavg()[0], 2)
    results = measure()
    return {"run": {**run, "load_average_1min": [before, round(os.getloadavg()[0], 2)]}, **results}


def _run_facts(run: dict[str, Any]) -> list[str]:
    load = run.get("load_average_1min")
    return [f"- command: `{run['command']}`", f"- machine: {run['machine']}", f"- date: {run['date']}",
            f"- git commit: {run['commit']}",
            *([f"- load average (1 min) before / after: {load[0]} / {load[1]}"]
              if load else []), ""]


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Retrieval benchmark", ""]
    if "sample" in results:
        s = results["sample"]
        lines += ["## Sample corpus, test split", "", *_run_facts(s["run"]),
                  f"Build: {s['build_seconds']['without_qa']} s without the QA file, {s['build_seconds']['with_qa']} s "
                  f"with it ({s['build_seconds'].get('corpus_and_added', '-')} s over corpus + added); stages (s) `{json.dumps(s['build_stages'])}`. Fusion weights: `{json.dumps(s['fusion'])}`; channel reliability "
                  f"`{json.dumps(s['channel_reliability'])}`.", "", table(s["test"]), "",
                  "## Sample corpus, added split (documents added with `index add`)", "",
                  f"`index add` took {s['add_seconds']} s.", "", table(s["added"]), ""]
    if "medpix" in results:
        m = results["medpix"]
        lines += ["## MedPix 2.0 test cases: Findings -> case, held-out image -> case", "", *_run_facts(m["run"]),
                  f"{m['n_documents']} case documents; index built in {m['build_seconds']} s; channel reliability "
                  f"`{json.dumps(m['channel_reliability'])}`.", "", "Uncalibrated (no QA file), every query:", "",
                  table(m["uncalibrated"]), "", f"Calibrated on the other half of the cases ({len(m['fusion_calibrated'])} fold(s), pooled):", "",
                  table(m["calibrated"]), "", f"Calibrated weights per fold: `{json.dumps(m['fusion_calibrated'])}`", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["sample", "medpix", "all"], default="all")
    parser.add_argument("--corpus-dir", default=str(REPO / "data" / "sample"))
    parser.add_argument("--out", default=str(RESULTS / "retrieval"))
    parser.add_argument("--folds", type=int, choices=[1, 2], default=1, help="MedPix calibration folds")
    parser.add_argument("--limit", type=int, default=None, help="at most this many sample questions per split")
    args = parser.parse_args()
    out = Path(args.out)
    results: dict[str, Any] = {}
    run = {"command": "python benchmarks/retrieval.py " + " ".join(sys.argv[1:]), "machine": machine_description(),
           "date": now(), "commit": _commit()}
    with tempfile.TemporaryDirectory() as work:
        if args.dataset in ("sample", "all"):
            results["sample"] = _loaded(run, lambda: run_sample(Path(work), Path(args.corpus_dir), args.limit))
            print(table(results["sample"]["test"]), table(results["sample"]["added"]), sep="\n\n")
        if args.dataset in ("medpix", "all"):
            if not (REALDATA / "medpix2_test").is_dir():
                print(f"skipping MedPix: {REALDATA / 'medpix2_test'} not found", file=sys.stderr)
            else:
                results["medpix"] = _loaded(run, lambda: run_medpix(Path(work), args.folds))
                print(table(results["medpix"]["uncalibrated"]), table(results["medpix"]["calibrated"]), sep="\n\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    # A run of one dataset keeps the other's last results (read now, not at the start, so two runs of
    # different datasets can overlap); each dataset carries its own run facts.
    if out.with_suffix(".json").is_file():
        results = {**json.loads(out.with_suffix(".json").read_text(encoding="utf-8")), **results}
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(results), encoding="utf-8")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
