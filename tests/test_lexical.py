"""The BM25 channel: CJK-aware tokens, herb name aliases, masks, updates, JSON persistence, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rag.lexical import INDEX_FILE, AliasTable, LexicalIndex, alias_variants, tokenize

GOUQIZI = {"zh": "枸杞子", "pinyin": "Gǒu Qǐ Zǐ", "latin": "Lycii Fructus", "en": "goji berry"}
HUANGQI = {"zh": "黄芪", "pinyin": "Huang Qi", "latin": "Astragali Radix", "en": "astragalus"}
DANGGUI = {"zh": "当归", "pinyin": "Dang Gui", "latin": "Angelicae Sinensis Radix", "en": "Chinese angelica"}
GANCAO = {"zh": "甘草", "pinyin": "Gan Cao", "latin": "Glycyrrhizae Radix et Rhizoma", "en": "licorice root"}
ZHIGANCAO = {"zh": "炙甘草", "pinyin": "Zhi Gan Cao", "latin": "Glycyrrhizae Radix et Rhizoma Praeparata cum Melle",
             "en": "honey-fried licorice root"}

# (text, names); the monographs never spell out the other name forms, so only aliases can link them.
DOCS: list[tuple[str, dict[str, str]]] = [
    ("Sweet and neutral. Enters the Liver and Kidney channels; nourishes yin and brightens the eyes.", GOUQIZI),
    ("Sweet and slightly warm. Enters the Spleen and Lung channels; tonifies qi and raises yang.", HUANGQI),
    ("Sweet, acrid and warm. Enters the Liver, Heart and Spleen channels; tonifies the blood.", DANGGUI),
    ("Sweet and neutral. Enters all twelve channels; harmonises the other herbs of a formula.", GANCAO),
    ("Honey-fried. Sweet and warm. Tonifies the Spleen and Heart qi; used for a knotted pulse.", ZHIGANCAO),
    ("Chest radiograph: right lower lobe consolidation consistent with pneumonia.", {}),
    ("Non-contrast head CT: no intracranial haemorrhage, no mass effect.", {}),
    ("H&E section: invasive ductal carcinoma of the breast, grade 2.", {}),
    ("Fundus photograph: hard exudates and microaneurysms in diabetic retinopathy.", {}),
    ("肝肾阴虚，腰膝酸软。", {}),
    ("肝火上炎。肾阳不足。", {}),
]
ROW = {"gouqizi": 0, "huangqi": 1, "danggui": 2, "gancao": 3, "zhigancao": 4, "pneumonia": 5, "ganshen": 9}


@pytest.fixture
def index() -> LexicalIndex:
    return LexicalIndex.build([t for t, _ in DOCS], [n for _, n in DOCS])


def test_tokenize_mixed_scripts() -> None:
    assert sorted(tokenize("枸杞子 enters the Liver channel")) == sorted(
        ["枸", "杞", "子", "枸杞", "杞子", "enters", "liver", "channel"])
    # Accents and pinyin tone marks stripped, full-width letters folded, digits kept, stopwords dropped.
    assert tokenize("Gǒu Qǐ Zǐ café of ＭＲＩ T2-weighted 10 mg") == [
        "gou", "qi", "zi", "cafe", "mri", "t2", "weighted", "10", "mg"]
    # Han runs glued to Latin text split cleanly; a single Han character yields only its unigram.
    assert tokenize("CT示肺炎x光") == ["ct", "示", "肺", "炎", "示肺", "肺炎", "x", "光"]
    # Extension B and compatibility ideographs without a decomposition (U+FA0E, U+FA0F) count as Han.
    assert tokenize("\U00020000\U00020001") == ["\U00020000", "\U00020001", "\U00020000\U00020001"]
    assert tokenize("\ufa0e\ufa0f") == ["\ufa0e", "\ufa0f", "\ufa0e\ufa0f"]


def test_alias_variants_cover_all_name_forms() -> None:
    assert alias_variants(GOUQIZI) == {"枸杞子", "gou qi zi", "gouqizi", "lycii fructus", "fructus lycii",
                                       "goji berry"}


@pytest.mark.parametrize("query, herb", [
    ("Which channels does 枸杞子 enter?", "gouqizi"),
    ("枸杞子归哪些经？", "gouqizi"),
    ("Which channels does Gou Qi Zi enter?", "gouqizi"),
    ("Which channels does gouqizi enter?", "gouqizi"),
    ("Which channels does Lycii Fructus enter?", "gouqizi"),
    ("Which channels does Fructus Lycii enter?", "gouqizi"),
    ("Which channels does goji berry enter?", "gouqizi"),
    ("黄芪的功效", "huangqi"),
    ("What does huang qi tonify?", "huangqi"),
    ("What does Astragali Radix tonify?", "huangqi"),
    ("What does astragalus tonify?", "huangqi"),
    ("当归入什么经", "danggui"),
    ("Which channels does Dang Gui enter?", "danggui"),
    ("Which channels does Angelicae Sinensis Radix enter?", "danggui"),
    ("Which channels does Chinese angelica enter?", "danggui"),
])
def test_every_name_form_finds_its_monograph(index: LexicalIndex, query: str, herb: str) -> None:
    rows, scores = index.search(query, k=3)
    assert rows[0] == ROW[herb]
    assert scores[0] > scores[1]


def test_name_forms_score_identically(index: LexicalIndex) -> None:
    forms = ["枸杞子", "Gou Qi Zi", "gouqizi", "Lycii Fructus", "goji berry"]
    results = [index.search(form, k=5) for form in forms]
    for rows, scores in results[1:]:
        np.testing.assert_array_equal(rows, results[0][0])
        np.testing.assert_allclose(scores, results[0][1], rtol=1e-6)


def test_longest_alias_wins() -> None:
    table = AliasTable.from_names([GANCAO, ZHIGANCAO])
    assert table.match("炙甘草和甘草") == ["__alias_zhigancao", "__alias_gancao"]
    assert table.match("zhi gan cao") == ["__alias_zhigancao"]
    assert table.match("no herb here") == []


def test_longest_alias_ranks_the_right_herb(index: LexicalIndex) -> None:
    assert index.search("炙甘草", k=2)[0][0] == ROW["zhigancao"]
    assert index.search("Gan Cao", k=2)[0][0] == ROW["gancao"]


def test_cjk_bigrams_rank_adjacent_characters_first(index: LexicalIndex) -> None:
    # Both documents contain 肝 and 肾; only one contains the word 肝肾.
    rows, _ = index.search("肝肾", k=5)
    assert rows[0] == ROW["ganshen"] and ROW["ganshen"] + 1 in rows


def test_allowed_mask_filters_rows(index: LexicalIndex) -> None:
    allowed = np.ones(len(index), dtype=bool)
    allowed[ROW["gouqizi"]] = False
    rows, _ = index.search("枸杞子 channels", k=len(index), allowed=allowed)
    assert ROW["gouqizi"] not in rows and len(rows) > 0
    only_reports = np.zeros(len(index), dtype=bool)
    only_reports[ROW["pneumonia"]:] = True
    rows, _ = index.search("Which channels does Lycii Fructus enter?", k=5, allowed=only_reports)
    assert rows.size == 0


def test_only_matching_rows_are_returned(index: LexicalIndex) -> None:
    rows, scores = index.search("pneumonia", k=10)
    assert rows.tolist() == [ROW["pneumonia"]] and scores[0] > 0
    rows, scores = index.search("the of and", k=10)  # stopwords only
    assert rows.dtype == np.int64 and scores.dtype == np.float32 and rows.size == scores.size == 0


def test_add_and_remove_keep_row_numbers(index: LexicalIndex) -> None:
    n = len(index)
    new = index.add(["Sweet and cold. Clears heat from the Lung."], [
        {"zh": "天花粉", "pinyin": "Tian Hua Fen", "latin": "Trichosanthis Radix", "en": "snakegourd root"}])
    assert new.tolist() == [n] and len(index) == n + 1
    assert index.search("Trichosanthis Radix", k=1)[0].tolist() == [n]

    index.remove([ROW["gouqizi"]])
    assert len(index) == n + 1 and index.num_live == n
    assert ROW["gouqizi"] not in index.search("Which channels does 枸杞子 enter?", k=len(index))[0]
    assert "__alias_gouqizi" not in index.query_tokens("枸杞子")  # its aliases left with it
    assert index.search("astragalus", k=1)[0].tolist() == [ROW["huangqi"]]  # others keep their rows

    with pytest.raises(ValueError, match="already removed"):
        index.remove([ROW["gouqizi"]])
    with pytest.raises(ValueError, match="duplicates"):
        index.remove([ROW["huangqi"], ROW["huangqi"]])
    with pytest.raises(IndexError, match="out of range"):
        index.remove([ROW["huangqi"], n + 1])
    assert ROW["huangqi"] in index.search("astragalus", k=1)[0]  # a failed remove changes nothing

    index.remove(r for r in range(len(index)) if r != ROW["gouqizi"])
    with pytest.raises(ValueError, match="empty"):
        index.search("astragalus", k=1)


def test_save_load_round_trip_without_pickle(index: LexicalIndex, tmp_path: Path) -> None:
    index.remove([ROW["danggui"]])
    index.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path)
    assert len(loaded) == len(index) and loaded.num_live == index.num_live
    for query in ["枸杞子", "Astragali Radix", "当归", "pneumonia CT", "肝肾", "Liver channels"]:
        expected, got = index.search(query, k=5), loaded.search(query, k=5)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    saved = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p.name for p in saved] == [INDEX_FILE]
    for path in saved:
        assert not path.read_bytes().startswith(b"\x80")


def test_load_refuses_missing_or_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no lexical index"):
        LexicalIndex.load(tmp_path)
    (tmp_path / INDEX_FILE).write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(ValueError, match="rebuild it"):
        LexicalIndex.load(tmp_path)


def test_clear_errors(index: LexicalIndex) -> None:
    with pytest.raises(ValueError, match="empty lexical index"):
        LexicalIndex.build([]).search("anything", k=1)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search("liver", k=0)
    with pytest.raises(ValueError, match="2 texts but 1 names"):
        LexicalIndex.build(["a", "b"], [{}])
    with pytest.raises(TypeError, match="not one string"):
        LexicalIndex.build("one text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="names of row 0"):
        LexicalIndex.build(["a"], [{"zh": None}])  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="boolean mask"):
        index.search("liver", k=1, allowed=np.ones(len(index), dtype=int))
    with pytest.raises(ValueError, match="boolean mask"):
        index.search("liver", k=1, allowed=np.ones(3, dtype=bool))
