"""The Ray build engine: on a small local Ray instance it must write the bundle the local engine writes."""

from __future__ import annotations

import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from rag.index_build import build_index
from rag.index_bundle import IndexBundle, load_bundle, read_manifest


def _contents(bundle: IndexBundle, domain: str, channel: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of a flat channel, by id."""
    (shard,) = bundle.vectors[(domain, channel)].shards
    ids = faiss.vector_to_array(shard.id_map)
    order = np.argsort(ids)
    return ids[order], shard.index.reconstruct_n(0, shard.ntotal)[order]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'medvlm-rag[ray]'")
    pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data: pip install 'medvlm-rag[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024 ** 2)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_build_matches_local_build(local_ray, small_corpus: Path, small_index: Path, encoders,
                                       tmp_path: Path) -> None:
    text, image = encoders
    out = tmp_path / "ray-index"
    build_index(small_corpus / "corpus.jsonl", out, qa=small_corpus / "qa.jsonl", progress=False,
                text_encoder=text, image_encoder=image, engine="ray")
    local, remote = load_bundle(small_index), load_bundle(out)
    assert remote.manifest.engine == "ray" and local.manifest.engine == "local"

    # what the engine is responsible for: documents and their numbers, images, BM25, vectors and ids
    local_files, remote_files = read_manifest(small_index)["files"], read_manifest(out)["files"]
    for rel in ("docs.jsonl", "images.json", "lexical/lexical.json"):
        assert remote_files[rel] == local_files[rel], rel
    assert remote.domains == local.domains and set(remote.vectors) == set(local.vectors)
    for domain in local.domains:
        for channel in ("text", "image"):
            local_ids, local_vectors = _contents(local, domain, channel)
            remote_ids, remote_vectors = _contents(remote, domain, channel)
            assert len(local_ids) > 0 and np.array_equal(local_ids, remote_ids)
            np.testing.assert_allclose(remote_vectors, local_vectors, atol=1e-5)
        # the joint channel is the aligner's projection: trained with the same seed on the same features
        local_ids, local_vectors = _contents(local, domain, "joint")
        remote_ids, remote_vectors = _contents(remote, domain, "joint")
        assert np.array_equal(local_ids, remote_ids)
        np.testing.assert_allclose(remote_vectors, local_vectors, atol=1e-3)


def test_missing_ray_says_how_to_install(monkeypatch) -> None:
    from rag.ray_build import ray_encoders

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when Ray is not installed
    with pytest.raises(ImportError, match=r"pip install 'medvlm-rag\[ray\]'"):
        ray_encoders(None, None)
