"""No unsafe loading in the source tree: no pickle, no remote code, torch.load only with weights_only=True.

The scanner is tested on snippets first, so a rule that silently stopped matching fails here too.
See SECURITY.md for why these are forbidden.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("rag", "finetune", "benchmarks", "tests", "notebooks")

RULES: dict[str, re.Pattern[str]] = {
    "pickle-family import (executes code on load)": re.compile(
        r"^\s*(import|from)\s+(pickle|cPickle|_pickle|dill|cloudpickle|joblib|shelve|marshal)\b"),
    "pickle-based loader": re.compile(r"\b(read_pickle|pickle\.loads?|torch\.serialization\.load)\s*\("),
    "trust_remote_code=True (runs code from the model repository)": re.compile(r"trust_remote_code\s*=\s*True"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "yaml.load without SafeLoader": re.compile(r"\byaml\.load\s*\((?![^)]*SafeLoader)"),
    "eval/exec of data": re.compile(r"(?<![\w.])(eval|exec)\s*\("),
    "shell=True": re.compile(r"shell\s*=\s*True"),
}


def _torch_load_calls(text: str) -> list[tuple[int, str]]:
    """Each torch.load(...) call (arguments across lines included) with its line number."""
    calls = []
    for match in re.finditer(r"\btorch\.load\s*\(", text):
        depth, end = 1, match.end()
        while depth and end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        calls.append((text.count("\n", 0, match.start()) + 1, text[match.start():end]))
    return calls


def forbidden(text: str) -> list[tuple[int, str]]:
    """(line, rule) for every forbidden construct in Python source `text`."""
    found = [(number, rule) for number, line in enumerate(text.splitlines(), start=1)
             for rule, pattern in RULES.items() if pattern.search(line.split("#", 1)[0])]
    found += [(number, "torch.load without weights_only=True (unpickles arbitrary objects)")
              for number, call in _torch_load_calls(text) if not re.search(r"weights_only\s*=\s*True", call)]
    return sorted(found)


def _sources() -> list[tuple[Path, str]]:
    files = []
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*")):
            if path.resolve() == Path(__file__).resolve() or ".ipynb_checkpoints" in path.parts:
                continue
            if path.suffix == ".py":
                files.append((path, path.read_text(encoding="utf-8")))
            elif path.suffix == ".ipynb":
                cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
                files.append((path, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")))
    return files + [(p, p.read_text(encoding="utf-8")) for p in sorted(REPO.glob("*.py"))]


def test_the_scanner_catches_each_rule() -> None:
    bad = {
        "import pickle": 1, "from joblib import load": 1, "import dill as d": 1,
        "df = pd.read_pickle(path)": 1, "obj = pickle.loads(blob)": 1,
        "AutoModel.from_pretrained(name, trust_remote_code=True)": 1,
        "np.load(path, allow_pickle=True)": 1, "cfg = yaml.load(fh)": 1, "eval(line)": 1,
        "subprocess.run(cmd, shell=True)": 1,
        "state = torch.load(path)": 1, "state = torch.load(path, weights_only=False)": 1,
        "state = torch.load(\n    path,\n    map_location='cpu',\n)": 1,
    }
    for snippet, count in bad.items():
        assert len(forbidden(snippet)) == count, snippet
    good = ["state = torch.load(path, map_location='cpu', weights_only=True)",
            "state = torch.load(\n    path, weights_only=True)", "model.eval()", "cfg = yaml.safe_load(fh)",
            "cfg = yaml.load(fh, Loader=yaml.SafeLoader)", "np.load(path)", "x = 1  # import pickle is banned",
            "from_pretrained(path, trust_remote_code=False)", "retrieval = evaluate_retrieval(r)"]
    for snippet in good:
        assert forbidden(snippet) == [], snippet


def test_source_tree_has_no_unsafe_loading() -> None:
    sources = _sources()
    assert any(path.name == "encoders.py" for path, _ in sources)   # the scan reaches the package
    problems = [f"{path.relative_to(REPO)}:{line}: {rule}" for path, text in sources for line, rule in forbidden(text)]
    assert not problems, "\n".join(problems)
