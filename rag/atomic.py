"""Folders written whole or not at all: checkpoints, converted models, preference pairs.

A folder is written beside its target under a temporary name, then swapped in. On Linux the swap is
one `renameat2(RENAME_EXCHANGE)`: the target path always names a complete folder, the old one until
the instant the new one takes its place, so a process killed at any moment leaves one or the other.
Where the file system cannot exchange, the old folder is renamed aside (never deleted) before the new
one is renamed in, and removed only after.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the C library or file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def atomic_save_dir(target: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(folder)` on a fresh temporary folder beside `target`, then swap it in for `target`.

    If `write` fails or the process dies, `target` is as it was; a leftover temporary folder is named
    `.<target name>-*` and holds nothing that is live."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        if not target.exists():
            os.replace(tmp, target)
        elif not _exchange(tmp, target):
            aside = tmp.with_name(tmp.name + "-previous")
            os.replace(target, aside)
            os.replace(tmp, target)
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after an exchange it holds the previous version
    return target
