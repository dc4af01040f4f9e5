"""Fuzzed ingestion: damaged records and images are reported by line, skipped or fatal, never a crash.

Each example writes a small corpus mixing good records with damaged ones (truncated JSON, wrong
types, missing fields, invalid UTF-8, unpaired surrogates, deep nesting, escaping or unresolvable
image paths, symlinks, non-images named .png, decompression bombs). Validation and the CLI must
name exactly the damaged lines; `--skip-bad` keeps exactly the good ones; a refused build or add
leaves the index already at the output path byte-for-byte as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rag.cli import main
from rag.corpus import DOMAINS, CorpusError, copy_corpus_slice, validate_corpus, write_jsonl
from rag.index_build import document_text, load_corpus
from rag.index_bundle import load_bundle, read_manifest
from rag.lexical import LexicalIndex

pytestmark = pytest.mark.slow

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD_IMAGE = "images/good.png"
BAD_PATHS = ("../outside.png", "images/../../outside.png", "/etc/passwd", "images/link_out.png", "images/loop.png",
             "images/a\x00b.png", "images/" + "x" * 300 + ".png", "images/missing.png", "", "images")
BAD_IMAGES = ("images/text.png", "images/truncated.png", "images/random.png", "images/empty.png",
              "images/bomb.png", "images/bomb_header.png")
DAMAGES = ("truncated", "wrong_type", "missing_field", "invalid_utf8", "surrogate", "deep", "not_object",
           "bad_path", "bad_image", "names_not_text", "image_not_text", "duplicate_id", "unknown_domain", "blank")
_names = itertools.count()


def _png_with_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is one tiny compressed row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """A corpus folder with one good image and every kind of bad one, shared by all examples."""
    root = tmp_path_factory.mktemp("fuzz") / "corpus"
    images = root / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (24, 24), (200, 40, 40)).save(images / "good.png")
    Image.new("RGB", (8, 8)).save(root.parent / "outside.png")
    (images / "text.png").write_text("a text file named .png")
    (images / "truncated.png").write_bytes((images / "good.png").read_bytes()[:60])
    (images / "random.png").write_bytes(os.urandom(2048))
    (images / "empty.png").write_bytes(b"")
    Image.new("1", (9000, 9000)).save(images / "bomb.png")            # 81 MP in a few kB
    (images / "bomb_header.png").write_bytes(_png_with_header_only(100_000, 100_000))
    (images / "link_out.png").symlink_to(root.parent / "outside.png")
    (images / "loop.png").symlink_to(images / "loop.png")
    return root


def _good_line(i: int, text: str, ascii_json: bool) -> bytes:
    record = {"id": f"doc-{i}", "domain": DOMAINS[i % len(DOMAINS)], "title": f"Case {i}", "text": f"finding {text}",
              "images": [GOOD_IMAGE], "names": {"zh": "枸杞子", "pinyin": "Gou Qi Zi"} if i % 2 else {},
              "source": "fuzz", "metadata": {"n": i, "note": text}}
    return json.dumps(record, ensure_ascii=ascii_json).encode("utf-8")


def _damaged_line(kind: str, i: int, data: st.DataObject) -> bytes:
    record = {"id": f"bad-{i}", "domain": "radiology", "title": "t", "text": "report", "images": [GOOD_IMAGE]}
    if kind == "truncated":
        text = json.dumps(record)
        return text[:data.draw(st.integers(1, len(text) - 1))].encode()
    if kind == "wrong_type":
        key = data.draw(st.sampled_from(["id", "domain", "title", "text", "images", "names", "source", "metadata"]))
        wrong = {"images": "images/good.png", "names": ["zh"], "metadata": [1, 2]}.get(key)
        record[key] = wrong if wrong is not None else data.draw(st.sampled_from([5, 2.5, True, ["x"], {"a": "b"}]))
    elif kind == "missing_field":
        del record[data.draw(st.sampled_from(["id", "domain", "title", "text"]))]
    elif kind == "invalid_utf8":
        encoded = json.dumps({**record, "text": "@@"}).encode()
        return encoded.replace(b"@@", data.draw(st.sampled_from([b"caf\xe9", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80"])))
    elif kind == "surrogate":
        record["text"] = "lone \ud800 surrogate"
        return json.dumps(record).encode()                               # written as the escape \ud800
    elif kind == "deep":
        depth = data.draw(st.sampled_from([5_000, 100_000]))
        return json.dumps(record)[:-1].encode() + b', "metadata": {"x": ' + b"[" * depth + b"]" * depth + b"}}"
    elif kind == "not_object":
        return data.draw(st.sampled_from([b"[1, 2]", b"42", b'"text"', b"null", b"true"]))
    elif kind == "bad_path":
        record["images"] = [GOOD_IMAGE, data.draw(st.sampled_from(BAD_PATHS))]
    elif kind == "bad_image":
        record["images"] = [data.draw(st.sampled_from(BAD_IMAGES))]
    elif kind == "names_not_text":
        record["names"] = {"zh": data.draw(st.sampled_from([5, None, ["a"], {"x": "y"}]))}
    elif kind == "image_not_text":
        record["images"] = [data.draw(st.sampled_from([5, None, ["images/good.png"]]))]
    elif kind == "duplicate_id":
        record["id"] = "doc-0"                                           # line 1 is always doc-0
    elif kind == "unknown_domain":
        record["domain"] = data.draw(st.sampled_from(["dermatology", "Radiology", ""]))
    elif kind == "blank":
        record[data.draw(st.sampled_from(["id", "text"]))] = data.draw(st.sampled_from(["", "   ", "\t\n"]))
    return json.dumps(record, ensure_ascii=data.draw(st.booleans())).encode("utf-8")


def _write_damaged_corpus(assets: Path, data: st.DataObject, min_bad: int = 0) -> tuple[Path, list[str], list[int]]:
    """Write a corpus into `assets`; returns (path, ids of good records in order, line numbers of bad ones)."""
    lines = [_good_line(0, "first", True)]
    good_ids, bad_lines = ["doc-0"], []
    plan = data.draw(st.lists(st.one_of(st.none(), st.sampled_from(DAMAGES)), min_size=max(1, min_bad), max_size=7))
    plan += [data.draw(st.sampled_from(DAMAGES)) for _ in range(min_bad - sum(k is not None for k in plan))]
    for i, kind in enumerate(plan, start=1):
        if kind is None:
            lines.append(_good_line(i, data.draw(st.text(max_size=20)), data.draw(st.booleans())))
            good_ids.append(f"doc-{i}")
        else:
            lines.append(_damaged_line(kind, i, data))
            bad_lines.append(i + 1)
    newline = data.draw(st.sampled_from([b"\n", b"\r\n"]))
    raw = newline.join(lines) + newline
    if data.draw(st.booleans()):
        raw = b"\xef\xbb\xbf" + raw                                      # a byte-order mark is not damage
    path = assets / f"corpus-{next(_names)}.jsonl"
    path.write_bytes(raw)
    return path, good_ids, bad_lines


@FUZZ
@given(data=st.data())
def test_every_damaged_line_is_reported_and_skipped(assets: Path, data: st.DataObject) -> None:
    path, good_ids, bad_lines = _write_damaged_corpus(assets, data)
    report = validate_corpus(path)
    assert report.bad_lines() == set(bad_lines), [str(p) for p in report.problems]
    assert all(p.message for p in report.problems)

    docs, skipped = load_corpus(path, on_bad_record="skip")
    assert [d.id for d in docs] == good_ids
    assert {int(s.split(f"{path}:")[1].split(" ")[0].split(":")[0]) for s in skipped} == set(bad_lines)
    for doc in docs:  # what survives is usable downstream: typed fields, storable as UTF-8, indexable
        assert isinstance(doc.images, list) and isinstance(doc.names, dict) and isinstance(doc.metadata, dict)
        json.dumps(doc.to_json(), ensure_ascii=False).encode("utf-8")
    LexicalIndex.build([document_text(d) for d in docs], [d.names for d in docs])

    if bad_lines:
        with pytest.raises(CorpusError) as refused:
            load_corpus(path, on_bad_record="stop")
        for line in bad_lines:
            assert f"{path}:{line}" in str(refused.value)
        assert "--skip-bad" in str(refused.value)


def _snapshot(bundle: Path) -> dict[str, str]:
    """Every file of a bundle directory (CURRENT included) with its digest; the writers' lock file aside."""
    return {str(p.relative_to(bundle)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def live_index(small_index: Path, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("live") / "index"
    shutil.copytree(small_index, target, symlinks=True)
    return target


def _run_cli(argv: list[str]) -> tuple[int, str]:
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = main(argv)
    return code, stderr.getvalue()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cli_refuses_damaged_corpus_and_keeps_the_index(assets: Path, live_index: Path, data: st.DataObject) -> None:
    path, _, bad_lines = _write_damaged_corpus(assets, data, min_bad=1)
    before = _snapshot(live_index)
    for argv, expected in ((["corpus", "validate", str(path)], 1),
                           (["index", "build", "--corpus", str(path), "--out", str(live_index)], 2),
                           (["index", "add", str(live_index), "--corpus", str(path)], 2)):
        code, stderr = _run_cli(argv)
        assert code == expected, (argv, stderr)
        assert "Traceback" not in stderr
        for line in bad_lines:
            assert f"{path}:{line}" in stderr, (argv, line, stderr)
    assert _snapshot(live_index) == before
    load_bundle(live_index)


def test_skip_bad_builds_and_adds_only_the_good_records(small_corpus: Path, small_index: Path, tmp_path: Path) -> None:
    corpus_dir = tmp_path / "corpus"
    lines = copy_corpus_slice(small_corpus, corpus_dir, "sample.jsonl", slice(0, 14)).read_bytes().splitlines()
    (corpus_dir / "images" / "fake.png").write_text("not an image")
    bad = [b'{"id": "x1", "domain": "radiology", "title": "t", "text": ', b"[]",
           json.dumps({"id": "x2", "domain": "radiology", "title": "t", "text": "r", "images": ["../../etc/passwd"]}).encode(),
           json.dumps({"id": "x3", "domain": "radiology", "title": "t", "text": "r", "images": ["images/fake.png"]}).encode()]
    (corpus_dir / "first.jsonl").write_bytes(b"\n".join(lines[:10] + bad[:2]) + b"\n")
    (corpus_dir / "more.jsonl").write_bytes(b"\n".join(lines[10:] + bad[2:]) + b"\n")

    out = tmp_path / "index"
    code, stderr = _run_cli(["index", "build", "--corpus", str(corpus_dir / "first.jsonl"), "--out", str(out),
                             "--skip-bad", "--json"])
    assert code == 0, stderr
    manifest = read_manifest(out)
    assert manifest["counts"]["documents"] == 10
    assert [s.split(": ")[0] for s in manifest["skipped_records"]] == [f"{corpus_dir / 'first.jsonl'}:{n}" for n in (11, 12)]

    code, stderr = _run_cli(["index", "add", str(out), "--corpus", str(corpus_dir / "more.jsonl"), "--skip-bad", "--json"])
    assert code == 0, stderr
    bundle = load_bundle(out)
    assert sorted(d.id for d in bundle.docs.values()) == sorted(json.loads(line)["id"] for line in lines)


def test_qa_file_problems_are_listed_like_corpus_problems(small_corpus: Path, tmp_path: Path) -> None:
    """A malformed QA line stops the build, named with its line; --skip-bad leaves it out and lists it in
    the manifest. Questions about documents outside the corpus (the added split's) are no problem."""
    corpus = copy_corpus_slice(small_corpus, tmp_path / "corpus", "corpus.jsonl", slice(0, 8))
    ids = {json.loads(line)["id"] for line in corpus.read_text(encoding="utf-8").splitlines()}
    items = [line for line in (small_corpus / "qa.jsonl").read_text(encoding="utf-8").splitlines()
             if json.loads(line)["doc_id"] in ids and not json.loads(line).get("image")]
    added = next(line for line in (small_corpus / "qa.jsonl").read_text(encoding="utf-8").splitlines()
                 if json.loads(line)["split"] == "added")
    bad = ['{"id": "q-bad-1", "question": ', json.dumps({"id": "q-bad-2", "question": "Which?", "doc_id": "x"})]
    qa = tmp_path / "corpus" / "qa.jsonl"
    qa.write_text("\n".join([*items[:20], bad[0], added, bad[1]]) + "\n", encoding="utf-8")
    out = tmp_path / "index"

    code, stderr = _run_cli(["index", "build", "--corpus", str(corpus), "--qa", str(qa), "--out", str(out)])
    assert code == 2 and f"{qa}:21" in stderr and f"{qa}:23" in stderr and "--skip-bad" in stderr, stderr
    assert f"{qa}:22" not in stderr and not out.exists()

    code, stderr = _run_cli(["index", "build", "--corpus", str(corpus), "--qa", str(qa), "--out", str(out),
                             "--skip-bad", "--json"])
    assert code == 0, stderr
    listed = {s.split(": ")[0].split(" [")[0] for s in read_manifest(out)["skipped_records"]}
    assert listed == {f"{qa}:21", f"{qa}:23"}


def test_real_process_reports_without_traceback(assets: Path, live_index: Path) -> None:
    """The installed entry point, in its own process: exit code and stderr are what a shell sees."""
    lines = [_good_line(0, "ok", True), b'{"id": "d1", "text": "caf\xe9"}',
             b'{"id": "d2", "domain": "radiology", "title": "t", "text": "' + b"x" * 10 + b'", "metadata": '
             + b"[" * 200_000 + b"]" * 200_000 + b"}",
             json.dumps({"id": "d3", "domain": "radiology", "title": "t", "text": "r",
                         "images": ["images/loop.png", "images/bomb_header.png"]}).encode()]
    path = assets / "process.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    before = _snapshot(live_index)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for argv, expected in ((["corpus", "validate", str(path)], 1),
                           (["index", "build", "--corpus", str(path), "--out", str(live_index)], 2)):
        proc = subprocess.run([sys.executable, "-m", "rag.cli", *argv], capture_output=True, text=True, env=env,
                              timeout=120, cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == expected, proc.stderr
        assert "Traceback" not in proc.stderr
        for line in (2, 3, 4):
            assert f"{path}:{line}" in proc.stderr
        assert "invalid UTF-8" in proc.stderr and "nested too deeply" in proc.stderr
        assert "Symlink loop" in proc.stderr and "decompression bomb" in proc.stderr
    assert _snapshot(live_index) == before


def test_unreadable_inputs_get_one_clear_line(assets: Path, live_index: Path, tmp_path: Path) -> None:
    """OS refusals and a bad query image: one `medrag: error:` line, exit 2, no traceback."""
    code, stderr = _run_cli(["retrieve", "--index", str(live_index), "--image", str(assets / GOOD_IMAGE.replace(
        "good", "text")), "what is it?"])
    assert code == 2 and "medrag: error:" in stderr and "text.png" in stderr and "Traceback" not in stderr
    code, stderr = _run_cli(["retrieve", "--index", str(live_index), "--image", str(assets / "images/bomb_header.png"),
                             "what is it?"])
    assert code == 2 and "decompression bomb" in stderr
    code, stderr = _run_cli(["index", "info", str(tmp_path / "nowhere")])
    assert code == 2 and "no index at" in stderr and "medrag index build" in stderr
    write_jsonl(tmp_path / "c.jsonl", [])
    (tmp_path / "c.jsonl").chmod(0)
    if os.access(tmp_path / "c.jsonl", os.R_OK):
        pytest.skip("running as a user who can read any file (root): no permission error to provoke")
    code, stderr = _run_cli(["corpus", "validate", str(tmp_path / "c.jsonl")])
    assert code == 2 and "Permission denied" in stderr
