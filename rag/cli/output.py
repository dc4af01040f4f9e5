"""What every command's `--json` flag prints: one indented JSON document on stdout, non-ASCII kept."""

from __future__ import annotations

import json
from typing import Any


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))
