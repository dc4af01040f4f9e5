"""Index integrity: damaged, foreign or inconsistent bundles are refused on load and by `medrag index verify`."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.cli import main
from rag.index_bundle import MANIFEST_DIGEST, POINTER, BundleError, load_bundle, resolve_version, verify_bundle
from rag.retriever import Retriever

# What a refusal must tell the user to do.
REMEDY = ("medrag index build", "medrag index verify")


@pytest.fixture(scope="module")
def bundle(small_index: Path, tmp_path_factory) -> Path:
    """A private copy; tests damage it and put it back."""
    target = tmp_path_factory.mktemp("integrity") / "index"
    shutil.copytree(small_index, target, symlinks=True)
    return target


def _files(bundle: Path) -> list[Path]:
    version = resolve_version(bundle)
    return [bundle / POINTER] + sorted(p for p in version.rglob("*") if p.is_file())


def _verify_cli(bundle: Path, *flags: str) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["index", "verify", str(bundle), "--json", *flags])
    return code, json.loads(out.getvalue())


def _resign(version: Path, manifest: dict) -> None:
    """Rewrite checksums and the manifest as a writer would: the damage is then semantic, not a checksum."""
    manifest["files"] = {rel: hashlib.sha256((version / rel).read_bytes()).hexdigest() for rel in manifest["files"]}
    (version / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (version / MANIFEST_DIGEST).write_text(hashlib.sha256((version / "manifest.json").read_bytes()).hexdigest())


def test_a_sound_bundle_verifies(bundle: Path) -> None:
    assert verify_bundle(bundle) == []
    assert _verify_cli(bundle) == (0, {"path": str(bundle), "ok": True, "problems": []})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_flipped_byte_anywhere_is_refused(bundle: Path, data: st.DataObject) -> None:
    files = _files(bundle)
    target = data.draw(st.sampled_from(files), label="file")
    original = target.read_bytes()
    offset = data.draw(st.integers(0, len(original) - 1), label="offset")
    damaged = bytearray(original)
    damaged[offset] ^= data.draw(st.integers(1, 255), label="mask")
    target.write_bytes(bytes(damaged))
    try:
        try:
            loaded = load_bundle(bundle)
        except BundleError as exc:
            assert any(remedy in str(exc) for remedy in REMEDY), str(exc)
            assert verify_bundle(bundle, encoders=False)
        else:
            # Only a change that leaves the text identical after stripping whitespace is harmless: the
            # pointer's or digest's trailing newline turned into another whitespace character.
            assert target.name in (POINTER, MANIFEST_DIGEST)
            assert bytes(damaged).strip() == original.strip()
            assert loaded.root == resolve_version(bundle)
    finally:
        target.write_bytes(original)


def test_a_missing_file_is_refused(bundle: Path) -> None:
    for target in _files(bundle):
        moved = target.with_name(target.name + ".moved")
        target.rename(moved)
        try:
            problems = verify_bundle(bundle, encoders=False)
            assert problems and any(target.name in p or "no manifest.json" in p or POINTER in p for p in problems)
            if target.name != MANIFEST_DIGEST:  # loading tolerates bundles written before the digest existed
                with pytest.raises(BundleError, match="medrag index build"):
                    load_bundle(bundle)
        finally:
            moved.rename(target)
    assert verify_bundle(bundle, encoders=False) == []


def test_another_format_version_is_refused(bundle: Path) -> None:
    version = resolve_version(bundle)
    original = (version / "manifest.json").read_bytes()
    try:
        manifest = json.loads(original)
        manifest["format_version"] = 99
        (version / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match="format version 99.*rebuild it with `medrag index build`"):
            load_bundle(bundle)
        code, report = _verify_cli(bundle, "--no-encoders")
        assert code == 1 and len(report["problems"]) == 1 and "format version 99" in report["problems"][0]
    finally:
        (version / "manifest.json").write_bytes(original)


def test_other_encoders_are_refused(bundle: Path, encoders) -> None:
    version = resolve_version(bundle)
    saved = {p: p.read_bytes() for p in (version / "manifest.json", version / MANIFEST_DIGEST)}
    try:
        manifest = json.loads(saved[version / "manifest.json"])
        manifest["encoders"]["image"]["fingerprint"] = "0123456789abcdef"
        _resign(version, manifest)
        with pytest.raises(BundleError, match="built with the image encoder .* rebuild the index"):
            Retriever(load_bundle(bundle), *encoders)
        problems = verify_bundle(bundle)
        assert len(problems) == 1 and "fingerprint" in problems[0] and "0123456789abcdef" in problems[0]
        assert verify_bundle(bundle, encoders=False) == []
    finally:
        for path, data in saved.items():
            path.write_bytes(data)


def test_verify_finds_inconsistencies_behind_valid_checksums(bundle: Path) -> None:
    version = resolve_version(bundle)
    saved = {p: p.read_bytes() for p in version.rglob("*") if p.is_file()}
    try:
        manifest = json.loads(saved[version / "manifest.json"])
        # a text index with one vector fewer than the domain has documents
        path = version / "radiology" / "text.faiss"
        index = faiss.read_index(str(path))
        index.remove_ids(np.asarray([int(faiss.vector_to_array(index.id_map)[0])], dtype=np.int64))
        faiss.write_index(index, str(path))
        manifest["counts"]["documents"] += 1
        _resign(version, manifest)
        (version / "notes.txt").write_text("added by hand")
        problems = verify_bundle(bundle, encoders=False)
        assert any("unexpected file notes.txt" in p for p in problems)
        (version / "notes.txt").unlink()
        problems = verify_bundle(bundle, encoders=False)
        assert any("radiology/text.faiss holds" in p for p in problems)
        assert any("counts" in p for p in problems)
        code, report = _verify_cli(bundle, "--no-encoders")
        assert code == 1 and report["problems"] == problems
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
    assert verify_bundle(bundle, encoders=False) == []


def test_verify_of_no_bundle_says_how_to_make_one(tmp_path: Path) -> None:
    code, report = _verify_cli(tmp_path / "nothing")
    assert code == 1 and "medrag index build" in report["problems"][0]
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / POINTER).write_text("v-gone\n")
    code, report = _verify_cli(tmp_path / "half")
    assert code == 1 and "points at 'v-gone'" in report["problems"][0]
