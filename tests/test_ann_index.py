"""Approximate and sharded vector indexes: every type builds, searches, grows and shrinks; bundles with them
round-trip with checksums; search parameters are stored and overridable; shards search as one."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from rag.corpus import read_documents, read_qa
from rag.index_build import IndexSpec, add_documents, remove_documents
from rag.index_bundle import BundleError, load_bundle, read_manifest, resolve_version, save_bundle
from rag.retriever import Retriever
from rag.vector_index import INDEX_TYPES, ChannelIndex, VectorIndexConfig

DIM = 32


def _sphere(n: int, seed: int) -> np.ndarray:
    """Uniform on the unit sphere: no cluster structure, so a too-small nprobe / efSearch visibly loses recall."""
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exact(base: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :k]]


def _some_questions(corpus: Path, n: int = 12):
    """A few test questions with an image and a few without: retrieval on CPU costs ~0.1 s each."""
    test = [q for q in read_qa(corpus / "qa.jsonl") if q.split == "test"]
    return [q for q in test if q.image][:n] + [q for q in test if not q.image][:n]


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)]))


@pytest.mark.parametrize("kind", INDEX_TYPES)
def test_each_type_searches_grows_and_shrinks(kind: str) -> None:
    base, ids = _sphere(3000, 0), np.arange(3000, dtype=np.int64) * 7 + 5  # sparse ids, as after removals
    queries = _sphere(40, 1)
    # 6-bit PQ codes: 3000 vectors are enough to train 64-centroid codebooks (8 bits would need 9984)
    config = VectorIndexConfig(type=kind, nlist=16, nprobe=16, pq_m=16, pq_bits=6, ef_search=128)
    index = ChannelIndex.build(base, ids, DIM, config)
    assert index.ntotal == 3000 and index.describe()["type"] == [kind] and index.note is None
    truth = _exact(base, ids, queries, 10)
    scores, got = index.search(queries, 10, config.search_params())
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    # nprobe = nlist visits every list: IVF-Flat is then exact; PQ codes are approximate by design
    assert _recall(got, truth) >= {"ivf-pq": 0.6}.get(kind, 0.95)

    # query-time parameters are honoured: a starved search loses recall
    if kind != "flat":
        starved = {"nprobe": 1, "ef_search": 10}
        assert _recall(index.search(queries, 10, starved)[1], truth) < _recall(got, truth)

    # filtered search only returns allowed ids
    allowed = ids[::3]
    _, filtered = index.search(queries, 10, config.search_params(), allowed=allowed)
    assert set(filtered[filtered >= 0].ravel()) <= set(allowed.tolist())

    # add: new vectors are found under their new ids (IVF uses the lists trained at build)
    extra, extra_ids = _sphere(50, 2), np.arange(100_000, 100_050, dtype=np.int64)
    index.add(extra, extra_ids)
    assert index.ntotal == 3050
    assert np.mean(index.search(extra, 1, config.search_params())[1][:, 0] == extra_ids) >= 0.9

    # remove: gone from results (HNSW rebuilds its graph without them)
    doomed = np.concatenate([ids[:100], extra_ids[:10]])
    index.remove(doomed)
    assert index.ntotal == 2940 and index.describe()["type"] == [kind]
    _, after = index.search(np.concatenate([base[:100], extra[:10]]), 10, config.search_params())
    assert not set(after.ravel()) & set(doomed.tolist())


def test_small_channels_fall_back_and_say_so() -> None:
    few = _sphere(100, 3)
    ids = np.arange(100, dtype=np.int64)
    index = ChannelIndex.build(few, ids, DIM, VectorIndexConfig(type="ivf-flat", nlist=64))
    assert index.describe()["type"] == ["flat"] and "too few" in index.note
    index = ChannelIndex.build(_sphere(1000, 4), np.arange(1000), DIM, VectorIndexConfig(type="ivf-flat", nlist=64))
    assert index.describe()["shards"][0]["nlist"] == 1000 // 39 and "nlist 64" in index.note
    index = ChannelIndex.build(_sphere(1000, 4), np.arange(1000), DIM, VectorIndexConfig(type="ivf-pq"))
    assert index.describe()["type"] == ["ivf-flat"] and "PQ codebooks" in index.note
    assert ChannelIndex.build(few[:0], ids[:0], DIM, VectorIndexConfig(type="hnsw")).ntotal == 0


def test_shards_search_as_one_exact_index() -> None:
    base, ids, queries = _sphere(2000, 5), np.arange(2000, dtype=np.int64), _sphere(30, 6)
    params = VectorIndexConfig().search_params()
    one = ChannelIndex.build(base, ids, DIM, VectorIndexConfig())
    three = ChannelIndex.build(base, ids, DIM, VectorIndexConfig(shards=3))
    assert [s.ntotal for s in three.shards] == [667, 667, 666]
    for allowed in (None, ids[::5]):
        s1, i1 = one.search(queries, 10, params, allowed)
        s3, i3 = three.search(queries, 10, params, allowed)
        np.testing.assert_array_equal(i1, i3)
        np.testing.assert_allclose(s1, s3, rtol=1e-6)
    three.remove(ids[:30])
    assert three.ntotal == 1970 and not set(three.search(base[:30], 5, params)[1].ravel()) & set(range(30))


def test_bad_configuration_is_refused_with_the_field_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vector_index.type must be one of"):
        VectorIndexConfig(type="annoy")
    with pytest.raises(ValueError, match="vector_index.shards must be a positive integer"):
        VectorIndexConfig(shards=0)
    with pytest.raises(ValueError, match="pq_m=5 must divide the vector dimension 32"):
        ChannelIndex.build(_sphere(20_000, 7), np.arange(20_000), DIM, VectorIndexConfig(type="ivf-pq", pq_m=5))
    spec = tmp_path / "spec.yaml"
    spec.write_text("corpus: c.jsonl\nvector_index:\n  type: hnsw\n  efsearch: 10\n")
    with pytest.raises(ValueError, match=r"spec.yaml: vector_index: unknown field\(s\) \['efsearch'\]"):
        IndexSpec.from_file(spec)
    spec.write_text("corpus: c.jsonl\nvector_index:\n  type: ivf-pq\n  shards: 2\n  nprobe: 8\n")
    loaded = IndexSpec.from_file(spec).vector_index
    assert (loaded.type, loaded.shards, loaded.nprobe) == ("ivf-pq", 2, 8)


@pytest.mark.slow
def test_resharded_bundle_round_trips_and_matches_unsharded(small_index: Path, small_corpus: Path, encoders,
                                                            tmp_path: Path) -> None:
    """The same vectors in three flat shards per channel: same files checked, same answers."""
    bundle = load_bundle(small_index)
    flat = Retriever(load_bundle(small_index), *encoders)
    for key, index in bundle.vectors.items():
        (shard,) = index.shards
        ids = faiss.vector_to_array(shard.id_map)
        bundle.vectors[key] = ChannelIndex.build(shard.index.reconstruct_n(0, shard.ntotal), ids, index.d,
                                                 VectorIndexConfig(shards=3))
    bundle.vector_config = VectorIndexConfig(shards=3)
    save_bundle(bundle, tmp_path / "sharded")
    manifest = read_manifest(tmp_path / "sharded")
    assert manifest["format_version"] == 2 and manifest["vector_index"]["shards"] == 3
    assert {f"radiology/text.0{s}.faiss" for s in range(3)} <= set(manifest["files"])
    assert not any(name.endswith("/text.faiss") for name in manifest["files"])
    sharded = Retriever(load_bundle(tmp_path / "sharded"), *encoders)
    assert all(len(index.shards) == 3 for index in sharded.bundle.vectors.values())
    for item in _some_questions(small_corpus):
        image = str(small_corpus / item.image) if item.image else None
        expected = flat.retrieve(item.question, image=image, k=10)
        got = sharded.retrieve(item.question, image=image, k=10)
        assert [h.doc.id for h in got.hits] == [h.doc.id for h in expected.hits]

    shard_file = resolve_version(tmp_path / "sharded") / "radiology" / "image.01.faiss"
    shard_file.write_bytes(shard_file.read_bytes()[:-8])
    with pytest.raises(BundleError, match="checksum mismatch in radiology/image.01.faiss"):
        load_bundle(tmp_path / "sharded")


def test_format_1_bundles_still_load(small_index: Path, tmp_path: Path, encoders) -> None:
    """A bundle written before approximate indexes (no vector_index block) loads as exact, unsharded."""
    old = tmp_path / "old"
    shutil.copytree(small_index, old, symlinks=True)
    version = resolve_version(old)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["vector_index"]
    (version / "manifest.json").write_text(json.dumps(manifest))
    digest = version / "manifest.sha256"
    if digest.is_file():
        digest.write_text(hashlib.sha256((version / "manifest.json").read_bytes()).hexdigest() + "\n")
    bundle = load_bundle(old)
    assert bundle.vector_config == VectorIndexConfig() and bundle.search_params == {"nprobe": 16, "ef_search": 64}
    assert Retriever(bundle, *encoders).retrieve("What formula was recommended?").hits


@pytest.fixture(scope="module")
def hnsw_index(small_corpus: Path, tmp_path_factory) -> Path:
    """A real build through the CLI: HNSW, two shards per channel, a non-default efSearch."""
    from rag.cli import main

    out = tmp_path_factory.mktemp("ann") / "hnsw"
    assert main(["index", "build", "--corpus", str(small_corpus / "corpus.jsonl"), "--qa", str(small_corpus / "qa.jsonl"),
                 "--out", str(out), "--index-type", "hnsw", "--shards", "2", "--ef-search", "48", "--json"]) == 0
    return out


@pytest.mark.slow
def test_hnsw_bundle_built_by_the_cli(hnsw_index: Path, small_corpus: Path, encoders, capsys) -> None:
    from rag.cli import main

    capsys.readouterr()
    manifest = read_manifest(hnsw_index)
    vector_index = manifest["vector_index"]
    assert (vector_index["type"], vector_index["shards"], vector_index["ef_search"]) == ("hnsw", 2, 48)
    assert all(c["type"] == ["hnsw"] and len(c["shards"]) == 2 for c in vector_index["channels"].values())
    assert {"tcm_tongue/joint.00.faiss", "tcm_tongue/joint.01.faiss"} <= set(manifest["files"])

    retriever = Retriever.load(hnsw_index)
    assert retriever.bundle.search_params == {"nprobe": 16, "ef_search": 48}
    items = _some_questions(small_corpus)
    found = 0
    for item in items:
        image = str(small_corpus / item.image) if item.image else None
        found += item.doc_id in [h.doc.id for h in retriever.retrieve(item.question, image=image, k=5).hits]
    assert found / len(items) >= 0.8

    assert Retriever.load(hnsw_index, search_params={"ef_search": 200}).bundle.search_params["ef_search"] == 200
    with pytest.raises(ValueError, match=r"unknown search parameter\(s\) \['efSearch'\]"):
        Retriever.load(hnsw_index, search_params={"efSearch": 10})
    assert main(["retrieve", "--index", str(hnsw_index), "--ef-search", "100", "What formula was recommended?",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"]
    assert main(["retrieve", "--index", str(hnsw_index), "--nprobe", "0", "x"]) == 2
    assert "nprobe must be a positive integer" in capsys.readouterr().err


def test_hnsw_bundle_add_and_remove(hnsw_index: Path, small_corpus: Path, encoders, tmp_path: Path) -> None:
    index_dir = tmp_path / "hnsw"
    shutil.copytree(hnsw_index, index_dir, symlinks=True)
    added = read_documents(small_corpus / "corpus_added.jsonl")
    assert add_documents(index_dir, small_corpus / "corpus_added.jsonl", progress=False)["added"] == len(added)
    retriever = Retriever(load_bundle(index_dir), *encoders)
    item = next(q for q in read_qa(small_corpus / "qa.jsonl") if q.split == "added" and q.image)
    image = str(small_corpus / item.image)
    assert item.doc_id in [h.doc.id for h in retriever.retrieve(item.question, image=image, k=5).hits]

    remove_documents(index_dir, [item.doc_id])
    bundle = load_bundle(index_dir)
    assert bundle.vector_config.type == "hnsw"
    assert all(index.describe()["type"] == ["hnsw"] for index in bundle.vectors.values())
    retriever = Retriever(bundle, *encoders)
    for channels in (None, ["image"], ["joint"], ["text"]):
        hits = retriever.retrieve(item.question, image=image, k=50, channels=channels).hits
        assert item.doc_id not in [h.doc.id for h in hits]
