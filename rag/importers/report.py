"""What every importer shares: the import report and the link from a dataset's images to a corpus.

An import never stops at the first bad record: like corpus validation, it records every problem
with the source file, line and record id, skips (or trims) the record, and goes on, so one run
tells a researcher everything that is wrong with a download.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.corpus import CorpusError, Problem, check_image, resolve_image


@dataclass
class ImportReport:
    """Counts and problems of one import.

    `read`, `imported` and `skipped` count *source records* (JSONL lines, CSV rows): a record is
    imported when it contributed to a written document. `documents` counts the written documents
    by kind (e.g. {"case": 69, "image": 200}). A problem on a record that was still imported (an
    image dropped from a case) says so in its message.
    """

    dataset: str
    corpus: str
    read: int = 0
    imported: int = 0
    documents: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.read - self.imported

    def add_problem(self, path: Path, line: int, record_id: str | None, message: str) -> None:
        self.problems.append(Problem(str(path), line, record_id, message))

    def problems_in_file_order(self) -> list[Problem]:
        """Problems sorted by line within each source file, files in the order they were read.

        Importers find some problems late (a case's missing image, a patient with nothing usable),
        but a reader fixes a file top to bottom.
        """
        files: dict[str, int] = {}
        for p in self.problems:
            files.setdefault(p.path, len(files))
        return sorted(self.problems, key=lambda p: (files[p.path], p.line))

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "corpus": self.corpus, "read": self.read, "imported": self.imported,
            "skipped": self.skipped, "documents": dict(self.documents),
            "problems": [asdict(p) for p in self.problems_in_file_order()],
        }

    def summary(self, limit: int | None = 20) -> str:
        """Human-readable counts, then the first `limit` problems (all with `limit=None`)."""
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.documents.items()) or "none"
        lines = [
            f"{self.dataset}: {self.read} records read, {self.imported} imported, {self.skipped} skipped; "
            f"{sum(self.documents.values())} documents ({kinds}) written to {self.corpus}",
            f"{len(self.problems)} problem(s)" + (":" if self.problems else ""),
        ]
        problems = self.problems_in_file_order()
        shown = problems if limit is None else problems[:limit]
        lines += [f"  {p}" for p in shown]
        if len(shown) < len(self.problems):
            lines.append(f"  … and {len(self.problems) - len(shown)} more (see the JSON report)")
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


class SourceImages:
    """A dataset's images folder as seen from the output corpus folder.

    Each image is checked once (found, decodes, stays inside the images folder) and given the path a
    document stores. Without `copy` that path points at the source file, relative to `out_dir`;
    with `copy` the file is copied to `out_dir/images/` first. Corpus image paths must stay inside
    the corpus folder (`rag.corpus.resolve_image` refuses '../' escapes), so without `copy` the
    images folder has to lie inside `out_dir`; that is checked before any work is done.
    """

    def __init__(self, images_dir: Path, out_dir: Path, copy: bool) -> None:
        if not images_dir.is_dir():
            raise CorpusError(f"images folder not found: {images_dir}")
        self.root = images_dir.resolve()
        self.out_dir = out_dir.resolve()
        self.copy = copy
        if not copy and self.out_dir != self.root and self.out_dir not in self.root.parents:
            raise CorpusError(
                f"images folder {self.root} is outside the output folder {self.out_dir}, and corpus image "
                "paths must stay inside the corpus folder; copy the images (copy_images=True, --copy-images) "
                "or choose an output folder that contains the images folder")
        self._placed: dict[str, tuple[str | None, str | None]] = {}

    def place(self, name: str) -> tuple[str | None, str | None]:
        """Return (corpus path, None) for a usable image file name, or (None, why it is not usable)."""
        if name not in self._placed:
            self._placed[name] = self._place(name)
        return self._placed[name]

    def _place(self, name: str) -> tuple[str | None, str | None]:
        source, why = resolve_image(self.root, name)
        if why:
            return None, f"image name '{name}' points outside the images folder {self.root}"
        why = check_image(source)
        if why:
            return None, why
        if not self.copy:
            return Path(os.path.relpath(source, self.out_dir)).as_posix(), None
        relpath = Path("images", source.relative_to(self.root))
        target = self.out_dir / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copying onto itself happens when out_dir/images *is* the source folder.
        if target.resolve() != source:
            shutil.copyfile(source, target)
        return relpath.as_posix(), None


_SEXES = {"female": "female", "f": "female", "male": "male", "m": "male"}


def sex_field(value: str) -> str | None:
    """'female', 'male', or None for blanks and the datasets' 'N/A'; datasets spell it 'F' or 'female'."""
    return _SEXES.get(value.strip().lower())


def age_field(value: str) -> int | None:
    """Age in years, or None when blank or not a plausible number of years."""
    try:
        age = float(value)
    except ValueError:
        return None
    return int(age) if 0 <= age < 130 else None
