"""Would a sentence-level reranker win on real text? An upper bound on MedPix Findings -> case.

    python benchmarks/rerank_probe.py      # needs ../shared/realdata/medpix2_test

Writes benchmarks/results/rerank_probe.json and rerank_probe.md.

The candidate (issue 15, deliverable 2): a second stage over the fused top N that looks at the
query and each candidate together, with the text encoder the index already has (MiniLM), so no
weights to download: ColBERT-like late interaction at sentence granularity. The dense channel sees
one vector per document, cut at the encoder's 256 tokens; this looks at every sentence. Features of
a candidate, each standardised over the N candidates of the query:

    maxsim      mean over the query's sentences of the best cosine with one of the candidate's sentences
    best        the whole query's best cosine with one of the candidate's sentences
    window W    the whole query's best cosine with a window of W consecutive sentences (W = 2, 4, 8)

and the reranked score is z(log fused score) + lambda * z(feature). A shipped reranker would fit
lambda on pseudo-queries from the corpus; here lambda is instead chosen on the test queries
themselves (the best over a grid), which no fitted lambda can beat on this metric. So if that upper
bound does not clear the fused ranking by more than noise, the reranker cannot win on this data, and
it is not worth shipping or fitting.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from retrieval import REALDATA, RESULTS, _commit, medpix_cases, summarise  # benchmarks/retrieval.py

from rag.index_build import build_index, document_text  # noqa: E402  (retrieval put the repository on the path)
from rag.reporting import machine_description, now  # noqa: E402
from rag.retriever import Retriever  # noqa: E402
from rag.text import sentences  # noqa: E402

TOP_N = 20
LAMBDAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 1e6)  # 1e6: the feature alone, the fused score only breaks ties
WINDOWS = (2, 4, 8)


def _units(text: str, window: int | None) -> list[str]:
    """Sentences of `text` (window None) or windows of `window` consecutive sentences, half overlapping."""
    parts = sentences(text) or [text]
    if window is None:
        return parts
    step = max(1, window // 2)
    return [" ".join(parts[i:i + window]) for i in range(0, max(1, len(parts) - window + 1), step)]


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def probe(work: Path) -> dict[str, Any]:
    corpus, questions = medpix_cases(work / "medpix")
    build_index(corpus, work / "idx", progress=False)
    retriever = Retriever.load(work / "idx")
    docs = retriever.bundle.docs
    number_of = {d.id: n for n, d in docs.items()}
    encode = retriever.text_encoder.encode
    findings = [q for q in questions if not q.image]
    # per unit kind: the encoded units and their owners
    units: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, window in [("sentence", None)] + [(f"window {w}", w) for w in WINDOWS]:
        texts, owners = [], []
        for n, doc in docs.items():
            for unit in _units(document_text(doc), window):
                texts.append(unit)
                owners.append(n)
        units[name] = encode(texts, batch_size=64), np.asarray(owners)
    rows: list[tuple[dict[str, np.ndarray], int | None]] = []
    for item in findings:
        hits = retriever.retrieve(item.question, k=TOP_N).hits
        numbers = [h.doc_number for h in hits]
        query_sentences = encode(sentences(item.question) or [item.question])
        query = encode([item.question])[0]
        sims = {name: vectors @ query for name, (vectors, _) in units.items()}
        sentence_vectors, sentence_owner = units["sentence"]
        features = {"fused": np.log([h.score for h in hits]),
                    "maxsim": np.asarray([(query_sentences @ sentence_vectors[sentence_owner == n].T).max(1).mean()
                                          for n in numbers]),
                    "best": np.asarray([sims["sentence"][sentence_owner == n].max() for n in numbers])}
        for w in WINDOWS:
            owner = units[f"window {w}"][1]
            features[f"window {w}"] = np.asarray([sims[f"window {w}"][owner == n].max() for n in numbers])
        gold = number_of[item.doc_id]
        rows.append((features, numbers.index(gold) if gold in numbers else None))
    out: dict[str, Any] = {"n_documents": len(docs), "n_queries": len(rows), "top_n": TOP_N,
                           "fused": summarise([gold for _, gold in rows]), "features": {}}
    for feature in ["maxsim", "best"] + [f"window {w}" for w in WINDOWS]:
        per_lambda = {}
        for lam in LAMBDAS:
            ranks: list[int | None] = []
            for features, gold in rows:
                if gold is None:  # not in the top N: a reranker cannot bring it back
                    ranks.append(None)
                    continue
                score = _z(features["fused"]) + lam * _z(features[feature])
                ranks.append(int((score > score[gold]).sum()))
            per_lambda[str(lam)] = summarise(ranks)
        best = max(per_lambda, key=lambda lam: (per_lambda[lam]["recall@1"], per_lambda[lam]["mrr"]))
        out["features"][feature] = {"per_lambda": per_lambda, "best_lambda_on_test": best}
    return out


def markdown(report: dict[str, Any]) -> str:
    fused = report["fused"]
    lines = ["# Sentence-level reranker probe: MedPix 2.0 Findings -> case", "",
             f"- command: `{report['run']['command']}`", f"- machine: {report['run']['machine']}",
             f"- date: {report['run']['date']}", f"- git commit: {report['run']['commit']}", "",
             f"{report['n_documents']} case documents, {report['n_queries']} Findings queries, top {report['top_n']} "
             f"fused candidates reranked. Fused ranking (the system, uncalibrated): R@1 {fused['recall@1']:.3f} "
             f"[{fused['recall@1_ci95'][0]:.2f}, {fused['recall@1_ci95'][1]:.2f}], R@5 {fused['recall@5']:.3f}, "
             f"MRR {fused['mrr']:.3f}.", "",
             "lambda chosen on the test queries themselves (an upper bound for any fitted lambda); "
             "lambda 1e6 is the feature alone.", "",
             "| feature | best lambda | R@1 [95% CI] | R@5 | MRR | R@1 at lambda 0.25 / 0.5 / 1 / 2 / 4 / 1e6 |",
             "|---|---|---|---|---|---|"]
    for feature, result in report["features"].items():
        m = result["per_lambda"][result["best_lambda_on_test"]]
        sweep = " / ".join(f"{result['per_lambda'][str(lam)]['recall@1']:.3f}" for lam in LAMBDAS[1:])
        ci = m["recall@1_ci95"]
        lines.append(f"| {feature} | {result['best_lambda_on_test']} | "
                     f"{m['recall@1']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}] | "
                     f"{m['recall@5']:.3f} | {m['mrr']:.3f} | {sweep} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if not (REALDATA / "medpix2_test").is_dir():
        print(f"needs {REALDATA / 'medpix2_test'}", file=sys.stderr)
        return 1
    run = {"command": "python benchmarks/rerank_probe.py", "machine": machine_description(), "date": now(),
           "commit": _commit()}
    with tempfile.TemporaryDirectory() as work:
        report = {"run": run, **probe(Path(work))}
    out = RESULTS / "rerank_probe"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
