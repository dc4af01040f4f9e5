"""The lexical retrieval channel (docs/design.md §5, step 2): question → text with BM25.

Three things matter for a medical corpus that mixes English reports with Chinese herb monographs:

* **CJK-aware tokens.** Chinese has no spaces, so runs of Han characters become character unigrams
  *and* bigrams (standard CJK IR practice; no segmenter, no dictionary). Latin script is
  case-folded, stripped of diacritics (pinyin tone marks included) and split into words; English
  stopwords (bm25s's list) are dropped.
* **Name aliases.** A herb is asked about as 枸杞子, Gou Qi Zi, gouqizi, Lycii Fructus or goji berry.
  Each document's `names` are added to its own tokens, and a name found in a question adds a
  canonical group token (``__alias_gouqizi``) plus every known name of that herb to the query, so
  all name forms hit the same monograph.
* **Incremental updates.** Rows are appended and tombstoned, never renumbered; the bm25s index is
  rebuilt lazily from the kept token lists (fast: see `LexicalIndex`).

Nothing is pickled: `LexicalIndex.save` writes one JSON file.
"""

from __future__ import annotations

import json
import os
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from rag.text import CJK

CJK_RUN = re.compile(f"[{CJK}]+")
# A Latin-script (or other non-CJK) word: letters and digits only, so "T2-weighted" → t2, weighted,
# and no word ever contains "_", which keeps the canonical alias tokens out of reach of real text.
_WORD = re.compile(rf"[^\W_{CJK}]+")
# A matching unit for aliases: a whole word, or one Han character (so Chinese names match as
# substrings of unspaced Chinese questions).
_UNIT = re.compile(rf"[{CJK}]|[^\W_{CJK}]+")
# Combining diacritics used by Latin script (é, ü, pinyin ǒ); other scripts' marks are meaningful.
_LATIN_MARKS = re.compile("[\u0300-\u036f]")
# A space beside a Han character, dropped when joining units back into text: Chinese has none.
_SPACE_BYCJK = re.compile(f" (?=[{CJK}])|(?<=[{CJK}]) ")
_STOPWORDS = frozenset(STOPWORDS_EN)

ALIAS_PREFIX = "__alias_"
# Preference order for naming an alias group; pinyin first because it is what TCM texts index by.
_GROUP_KEY_ORDER = ("pinyin", "latin", "en", "zh")

FORMAT = "medvlm-rag/lexical-index"
# Bump when tokenize() or alias expansion changes: saved token lists would no longer match queries.
FORMAT_VERSION = 1
INDEX_FILE = "lexical.json"


def normalize(text: str) -> str:
    """Case-fold, strip Latin diacritics and fold compatibility forms (full-width letters, ligatures)."""
    text = _LATIN_MARKS.sub("", unicodedata.normalize("NFKD", text))
    return unicodedata.normalize("NFC", text).casefold()


def tokenize(text: str) -> list[str]:
    """BM25 tokens of `text`: non-stopword words, plus unigrams and bigrams of every Han run.

    Order follows the text (words, then each Han run's unigrams then bigrams); duplicates are kept
    because BM25 counts term frequency.
    """
    text = normalize(text)
    tokens: list[str] = []
    position = 0
    for run in CJK_RUN.finditer(text):
        tokens.extend(_words(text[position:run.start()]))
        chars = run.group()
        tokens.extend(chars)
        tokens.extend(chars[i:i + 2] for i in range(len(chars) - 1))
        position = run.end()
    tokens.extend(_words(text[position:]))
    return tokens


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text) if w not in _STOPWORDS]


def _units(normalized: str) -> list[str]:
    return _UNIT.findall(normalized)


def _join(units: Sequence[str]) -> str:
    """Units back to text: words space-separated, Han characters kept together ("枸杞子", "gou qi zi")."""
    return _SPACE_BYCJK.sub("", " ".join(units))


def alias_variants(names: Mapping[str, str]) -> set[str]:
    """Every normalised name form of one document (see `_join` for the spacing).

    Besides each given name: pinyin without spaces ("gouqizi"), and Latin names in both word orders
    in use — pharmacopoeia style "Lycii Fructus" and the older "Fructus Lycii".
    """
    variants: set[str] = set()
    for key, value in names.items():
        units = _units(normalize(value))
        if not units:
            continue
        variants.add(_join(units))
        if key == "pinyin":
            variants.add("".join(units))
        elif key == "latin" and len(units) > 1:
            variants.add(_join(units[-1:] + units[:-1]))
            variants.add(_join(units[1:] + units[:1]))
    return variants


def canonical_token(names: Mapping[str, str]) -> str | None:
    """The group token of a document's names (``__alias_gouqizi``), or None if it has no names.

    Documents whose preferred name (pinyin, else Latin, English, Chinese, else any) normalises to the
    same string share a group.
    """
    for key in (*_GROUP_KEY_ORDER, *sorted(names)):
        units = _units(normalize(names.get(key, "")))
        if units:
            return ALIAS_PREFIX + "".join(units)
    return None


def alias_tokens(names: Mapping[str, str]) -> list[str]:
    """Tokens a document gains from its names: its group token and each token of its name variants."""
    group = canonical_token(names)
    if group is None:
        return []
    return [group, *_variant_tokens(alias_variants(names))]


def _variant_tokens(variants: Iterable[str]) -> list[str]:
    # Each distinct token once: word-order variants ("Fructus Lycii") must not double a word's weight.
    return list(dict.fromkeys(t for variant in sorted(variants) for t in tokenize(variant)))


class AliasTable:
    """Maps every name variant of every document to the alias group(s) it belongs to.

    A variant shared by two groups (an English name used for two herbs) maps to both: the question
    is ambiguous and both monographs should be considered.
    """

    def __init__(self) -> None:
        self._groups_of: dict[str, set[str]] = {}
        self._variants_of: dict[str, set[str]] = {}
        self._max_units = 0

    @classmethod
    def from_names(cls, names: Iterable[Mapping[str, str]]) -> AliasTable:
        table = cls()
        for doc_names in names:
            group = canonical_token(doc_names)
            if group is None:
                continue
            variants = alias_variants(doc_names)
            table._variants_of.setdefault(group, set()).update(variants)
            for variant in variants:
                table._groups_of.setdefault(variant, set()).add(group)
                table._max_units = max(table._max_units, len(_units(variant)))
        return table

    def __len__(self) -> int:
        return len(self._variants_of)

    def match(self, query: str) -> list[str]:
        """Group tokens of the names found in `query`, in order of appearance.

        Longest match first: in "Zhi Gan Cao" the three-word name wins over "Gan Cao" inside it.
        Words match whole; Chinese names match anywhere, one character being one unit.
        """
        units = _units(normalize(query))
        found: list[tuple[int, int, str]] = []
        for start in range(len(units)):
            for length in range(min(self._max_units, len(units) - start), 0, -1):
                variant = _join(units[start:start + length])
                if variant in self._groups_of:
                    found.append((start, length, variant))
        found.sort(key=lambda m: (-m[1], m[0]))
        taken = [False] * len(units)
        accepted: list[tuple[int, str]] = []
        for start, length, variant in found:
            if not any(taken[start:start + length]):
                taken[start:start + length] = [True] * length
                accepted.append((start, variant))
        groups: dict[str, None] = {}
        for _, variant in sorted(accepted):
            groups.update(dict.fromkeys(sorted(self._groups_of[variant])))
        return list(groups)

    def expand(self, query: str) -> list[str]:
        """Tokens to add to `query`: each matched group's token and the tokens of all its names."""
        tokens: list[str] = []
        for group in self.match(query):
            tokens.append(group)
            tokens.extend(_variant_tokens(self._variants_of[group]))
        return tokens


class _Searchable(NamedTuple):
    """What a search reads, built together and swapped in as one object so a search never mixes
    one rebuild's rows with another's scores."""

    bm25: bm25s.BM25 | None          # None when no live row has a token: nothing can match
    rows: np.ndarray                 # bm25s document i is row rows[i]
    aliases: AliasTable


class LexicalIndex:
    """BM25 over CJK-aware, alias-expanded tokens, with append/tombstone updates.

    **Rows.** Row numbers are positions in an append-only list: `add` gives new documents the next
    numbers, and `remove` tombstones rows without renumbering the others, so row ``r`` stays the
    same document for the index's lifetime (and across save/load); a removed row is never returned
    and its number is never reused. ``len(index)`` counts every row ever added, removed ones too,
    and is the length an `allowed` mask must have.

    **Updates.** The tokens of each live row are kept; the bm25s index (whose statistics, IDF and
    average length, cover live rows only) is rebuilt on the first search after a change. For 10k
    documents of 150 words that rebuild takes about a second (searches take under a millisecond), so
    `load` rebuilds it from the saved tokens rather than also storing bm25s's arrays, which would be
    a second copy of the same index to keep consistent.

    **Aliases.** The alias table is derived from the live rows' `names` and rebuilt with the index.

    **Threads.** Searches may run in many threads at once. The rebuild happens once, under a lock,
    into a new `_Searchable` that replaces the old one in a single assignment; `add` and `remove`
    take the same lock.
    """

    def __init__(self) -> None:
        self._tokens: list[list[str]] = []
        self._names: list[dict[str, str]] = []
        self._removed: list[bool] = []
        self._searchable: _Searchable | None = None     # None: stale, rebuilt by the next search
        self._lock = threading.Lock()

    @classmethod
    def build(cls, texts: Sequence[str], names: Sequence[Mapping[str, str]] | None = None) -> LexicalIndex:
        """Index `texts`, row i being texts[i]; `names[i]` are document i's names ({} if it has none)."""
        index = cls()
        index.add(texts, names)
        return index

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def num_live(self) -> int:
        """Number of rows not removed."""
        return self._removed.count(False)

    def add(self, texts: Sequence[str], names: Sequence[Mapping[str, str]] | None = None) -> np.ndarray:
        """Append documents and return their row numbers."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        if names is None:
            names = [{}] * len(texts)
        if len(names) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(names)} names entries; "
                             "pass one names mapping per text ({} for a document without names)")
        tokens, kept_names = [], []
        for offset, (text, doc_names) in enumerate(zip(texts, names)):
            row = len(self) + offset
            if not isinstance(text, str):
                raise TypeError(f"text of row {row} is {type(text).__name__}, not str")
            if not isinstance(doc_names, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in doc_names.items()):
                raise TypeError(f"names of row {row} must map strings to strings, got {doc_names!r}")
            tokens.append(tokenize(text) + alias_tokens(doc_names))
            kept_names.append(dict(doc_names))
        with self._lock:
            rows = np.arange(len(self), len(self) + len(texts), dtype=np.int64)
            self._tokens.extend(tokens)
            self._names.extend(kept_names)
            self._removed.extend([False] * len(texts))
            if rows.size:
                self._searchable = None
        return rows

    def remove(self, rows: Iterable[int]) -> None:
        """Tombstone `rows`; all are checked first, so a bad row leaves the index unchanged."""
        targets = [int(r) for r in rows]
        with self._lock:
            self._remove(targets)

    def _remove(self, targets: list[int]) -> None:
        for row in targets:
            if not 0 <= row < len(self):
                raise IndexError(f"row {row} out of range: the index has rows 0..{len(self) - 1}")
            if self._removed[row]:
                raise ValueError(f"row {row} was already removed")
        if len(set(targets)) != len(targets):
            raise ValueError("rows to remove contain duplicates")
        for row in targets:
            self._removed[row] = True
            # A removed row is never searched or saved again; free its data.
            self._tokens[row] = []
            self._names[row] = {}
        if targets:
            self._searchable = None

    def live_rows(self) -> np.ndarray:
        """Row numbers not removed, ascending."""
        return np.flatnonzero(~np.asarray(self._removed, dtype=bool)).astype(np.int64)

    def query_tokens(self, query: str) -> list[str]:
        """The tokens `search` scores: the query's own plus its alias expansion, each once.

        Deduplicated so that naming a herb by a form that is itself among the expansion (枸杞子)
        scores the same as naming it by another (Lycii Fructus).
        """
        return self._query_tokens(query, self._current())

    @staticmethod
    def _query_tokens(query: str, searchable: _Searchable) -> list[str]:
        return list(dict.fromkeys(tokenize(query) + searchable.aliases.expand(query)))

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best rows for `query`, best first, as (rows int64, scores float32).

        Only rows sharing at least one token with the query (score > 0) are returned, so there may
        be fewer than `k`; ties are broken by row number. `allowed` is a boolean mask of length
        ``len(self)``: rows where it is False are never returned (domain/metadata filtering).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.dtype != np.bool_ or allowed.shape != (len(self),):
                raise ValueError(f"allowed must be a boolean mask of shape ({len(self)},), "
                                 f"got dtype {allowed.dtype} and shape {allowed.shape}")
        if self.num_live == 0:
            raise ValueError("cannot search an empty lexical index: add documents first")
        searchable = self._current()
        tokens = self._query_tokens(query, searchable)
        empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if searchable.bm25 is None:
            return empty
        ids = searchable.bm25.get_tokens_ids(tokens)
        if not ids:
            return empty
        scores = searchable.bm25.get_scores_from_ids(ids)
        keep = scores > 0
        if allowed is not None:
            keep &= allowed[searchable.rows]
        hits = np.flatnonzero(keep)
        # A full sort of the hits (not argpartition) so that ties at the k-th place are broken by row.
        order = np.lexsort((searchable.rows[hits], -scores[hits]))[:k]
        return searchable.rows[hits[order]], scores[hits[order]]

    def _current(self) -> _Searchable:
        """The searchable state, rebuilt (once, whichever thread comes first) after a change."""
        searchable = self._searchable
        if searchable is not None:
            return searchable
        with self._lock:
            if self._searchable is None:
                rows = self.live_rows()
                corpus = [self._tokens[row] for row in rows]
                bm25 = None
                # bm25s cannot index a corpus without a single token; such an index simply matches nothing.
                if any(corpus):
                    # scipy (a dependency anyway) builds the sparse matrix ~1.3x faster than bm25s's numpy path.
                    bm25 = bm25s.BM25(csc_backend="scipy")
                    bm25.index(corpus, show_progress=False)
                self._searchable = _Searchable(bm25, rows, AliasTable.from_names(self._names[row] for row in rows))
            return self._searchable

    def save(self, directory: Path) -> None:
        """Write the index to `directory`/lexical.json (tokens as vocabulary ids, names, tombstones)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab: dict[str, int] = {}
        docs = [[vocab.setdefault(t, len(vocab)) for t in tokens] for tokens in self._tokens]
        payload = {
            "format": FORMAT, "version": FORMAT_VERSION, "vocab": list(vocab), "docs": docs,
            "names": self._names, "removed": [row for row, gone in enumerate(self._removed) if gone],
        }
        tmp = directory / (INDEX_FILE + ".tmp")
        tmp.write_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        # Replace in one step so a crash mid-write never leaves a truncated index behind.
        os.replace(tmp, directory / INDEX_FILE)

    @classmethod
    def load(cls, directory: Path) -> LexicalIndex:
        """Read an index written by `save`; the bm25s index is rebuilt on the first search."""
        path = Path(directory) / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no lexical index at {path}")
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != FORMAT or payload.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a version-{FORMAT_VERSION} lexical index "
                             f"(format {payload.get('format')!r}, version {payload.get('version')!r}); rebuild it")
        vocab, docs, names = payload["vocab"], payload["docs"], payload["names"]
        if len(names) != len(docs):
            raise ValueError(f"{path} is corrupt: {len(docs)} token lists but {len(names)} names entries")
        index = cls()
        index._tokens = [[vocab[i] for i in ids] for ids in docs]
        index._names = names
        index._removed = [False] * len(docs)
        for row in payload["removed"]:
            index._removed[row] = True
        return index
