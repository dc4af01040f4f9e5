"""Crash safety: `medrag index build` and `index add` killed with SIGKILL leave the old or the new bundle.

Each writer runs as a real process and is killed either after a random delay within its run or the
moment its staging folder appears (inside the write path). Set CRASH_SEED to vary the kill points. Afterwards the bundle at the output path
must load and be exactly the old or exactly the new one, and a rerun must clean up what the killed
writers left behind. Seeded, so a failure can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag.corpus import copy_corpus_slice
from rag.index_build import build_index
from rag.index_bundle import POINTER, load_bundle, verify_bundle

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("CRASH_SEED", "0"))


def _ids(bundle_dir: Path) -> frozenset[str]:
    return frozenset(d.id for d in load_bundle(bundle_dir).docs.values())


def _start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "rag.cli", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL `proc` after `delay` seconds; False if it finished first."""
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True


def _kill_when_staging(proc: subprocess.Popen, bundle_dir: Path, rng: random.Random) -> bool:
    """SIGKILL `proc` within ~30 ms of its staging folder appearing: a kill inside the write path."""
    known = set(bundle_dir.glob(".tmp-v-*"))
    while proc.poll() is None:
        if set(bundle_dir.glob(".tmp-v-*")) - known:
            time.sleep(rng.uniform(0, 0.03))
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.002)
    return False


@pytest.fixture(scope="module")
def corpora(small_corpus: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crash")
    return {"old": copy_corpus_slice(small_corpus, root, "old.jsonl", slice(0, 8)),
            "new": copy_corpus_slice(small_corpus, root, "new.jsonl", slice(8, 14)),
            "extra": copy_corpus_slice(small_corpus, root, "extra.jsonl", slice(14, 17))}


def _assert_old_or_new(bundle_dir: Path, old: frozenset[str], new: frozenset[str]) -> frozenset[str]:
    ids = _ids(bundle_dir)                       # loads with full checksum verification
    assert ids in (old, new), sorted(ids)
    assert verify_bundle(bundle_dir, encoders=False) == []
    return ids


def test_sigkill_during_build_and_add_keeps_a_whole_bundle(corpora: dict[str, Path], encoders, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    out = tmp_path / "index"

    def build_old() -> frozenset[str]:
        build_index(corpora["old"], out, progress=False, text_encoder=encoders[0], image_encoder=encoders[1])
        return _ids(out)

    old = build_old()
    new_build = frozenset(json.loads(line)["id"] for line in corpora["new"].read_text().splitlines())
    added = old | frozenset(json.loads(line)["id"] for line in corpora["extra"].read_text().splitlines())

    # Random kills land anywhere in a run (start-up, model loading, embedding, training, writing, which
    # take ~10 s together on 2 cores); kills at the staging folder land inside the write path.
    killed = 0
    for how in ("random", "staging"):
        proc = _start(["index", "build", "--corpus", str(corpora["new"]), "--out", str(out)])
        killed += _kill_after(proc, rng.uniform(1.0, 8.0)) if how == "random" else _kill_when_staging(proc, out, rng)
        if _assert_old_or_new(out, old, new_build) != old:
            build_old()                          # a kill that came too late: `add` below needs the old bundle
    for how in ("random", "staging"):
        proc = _start(["index", "add", str(out), "--corpus", str(corpora["extra"])])
        killed += _kill_after(proc, rng.uniform(1.0, 6.0)) if how == "random" else _kill_when_staging(proc, out, rng)
        if _assert_old_or_new(out, old, added) == added:
            break                                # a kill that came too late; the add is done
    assert killed >= 2, "no run was killed: the kill points never fell inside a run"

    # A clean writer run after the kills completes and removes what the killed writers left behind.
    argv = (["index", "add", str(out), "--corpus", str(corpora["extra"])] if _ids(out) == old
            else ["index", "remove", str(out), sorted(added - old)[0]])
    proc = _start(argv)
    assert proc.wait() == 0, proc.stderr.read().decode()
    assert _ids(out) in (added, added - {sorted(added - old)[0]})
    assert not list(out.glob(".tmp-v-*")) and not list(out.glob(f".{POINTER}.tmp-*"))
    assert len(list(out.glob("v-*"))) <= 2


_SWAPPER = """
import sys
from pathlib import Path

from rag.atomic import atomic_save_dir

target, n = Path(sys.argv[1]), 0
while True:
    n += 1

    def write(folder, n=n):
        for part in range(30):
            (folder / f"part{part}").write_text(str(n))

    atomic_save_dir(target, write)
"""


def test_a_killed_folder_swap_leaves_the_old_or_the_new_folder(tmp_path: Path) -> None:
    """Checkpoints, converted models and pairs are swapped in by `atomic_save_dir`: killed at any moment
    (most kills land inside a swap, since the writer does nothing else), the target is one whole folder."""
    from rag.atomic import atomic_save_dir

    target = tmp_path / "model"
    atomic_save_dir(target, lambda folder: [(folder / f"part{p}").write_text("0") for p in range(30)])
    rng = random.Random(SEED)
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", _SWAPPER, str(target)], cwd=REPO)
        time.sleep(rng.uniform(0.3, 0.8))
        proc.kill()
        proc.wait()
        contents = {p.name: p.read_text() for p in target.iterdir()}
        assert sorted(contents) == sorted(f"part{p}" for p in range(30)), sorted(contents)
        assert len(set(contents.values())) == 1, "parts of two versions in one folder"
    atomic_save_dir(target, lambda folder: (folder / "done").write_text("yes"))
    assert [p.name for p in target.iterdir()] == ["done"]
