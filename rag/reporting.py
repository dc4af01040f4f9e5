"""What every report says about where and when it was made, and how its figures are saved.

Benchmarks, the factuality experiment and the training commands all describe the machine the same
way and write their plots through `save_figure`, so reports made months apart can be compared.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model as the kernel names it (falls back to what `platform` knows)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_facts() -> dict[str, Any]:
    """CPU, cores, memory, accelerator and library versions, for a report's JSON."""
    import torch

    try:
        ram_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        ram_gb = None
    return {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "ram_gb": ram_gb,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}


def machine_description() -> str:
    """One line for a report's header: CPU, cores, memory, GPU, torch and its thread count."""
    facts = machine_facts()
    return (f"{facts['cpu']}, {facts['logical_cpus']} logical CPUs, {facts['ram_gb']} GB RAM, "
            f"{facts['gpu'] or 'no GPU'}, torch {facts['torch']} ({facts['torch_threads']} threads), "
            f"Python {facts['python']}")


def now() -> str:
    """The report's timestamp, in UTC."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def new_figure(ncols: int = 1, figsize: tuple[float, float] = (6, 3.5)) -> tuple[Any, Any]:
    """A matplotlib figure drawn off-screen (reports are written on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=figsize)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write as PNG at 120 dpi and release the figure's memory."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
