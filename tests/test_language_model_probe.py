"""benchmarks/language_model_probe.py: what it measures of each command, and how it states the gap."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def probe(load_benchmark):
    return load_benchmark("language_model_probe")


def test_a_commands_peak_memory_is_its_own_not_the_parents(probe) -> None:
    # Linux keeps the parent's size in a child's ru_maxrss across fork and exec: with 800 MB held here,
    # wait4 said every child used at least 800 MB. VmHWM belongs to the child's own address space.
    held = bytearray(800 * 1024 * 1024)
    held[::4096] = b"\1" * len(held[::4096])
    child = ("import time; b = bytearray(200 * 1024 * 1024); b[::4096] = b'\\1' * len(b[::4096]); "
             "time.sleep(0.5); print('done')")
    run = probe.measured([sys.executable, "-c", child])
    assert run["stdout"] == "done\n"
    assert 200 <= run["peak_rss_mb"] < 600
    assert probe.high_water_kb(os.getpid()) > 800 * 1024
    del held


def test_a_failed_command_stops_the_probe(probe) -> None:
    with pytest.raises(SystemExit, match="failed with status 2"):
        probe.medrag("no-such-command")


def test_a_finished_training_run_is_reused_with_its_recorded_costs(probe, tmp_path: Path) -> None:
    reader = tmp_path / "tiny-reader"
    (reader / "merged").mkdir(parents=True)
    (reader / "merged" / "config.json").write_text("{}", encoding="utf-8")
    recorded = {"align_steps": 40, "stage_a_steps": 100, "align_seconds": 1.0, "stage_a_seconds": 2.0,
                "stage_a_seconds_per_step": 0.02, "training_peak_rss_mb": 3, "date": "then"}
    (reader / "training.json").write_text(json.dumps(recorded), encoding="utf-8")
    merged, training = probe.train_stage_a("tiny", tmp_path / "untuned", 100, tmp_path)
    assert merged == reader / "merged" and training == recorded


def test_the_gap_between_two_models_comes_with_its_interval(probe) -> None:
    row = {"chosen_accuracy": {"gold": {"all": 0.8}}, "n": 100}
    text = probe.gap({**row, "model": "a"}, {**row, "model": "b", "chosen_accuracy": {"gold": {"all": 0.7}}})
    # 1.96 * sqrt(0.8*0.2/100 + 0.7*0.3/100) = 0.119
    assert text.startswith("Gold-evidence difference, a − b: +10.0 points [-1.9, +21.9]")
