"""The herb monographs (domain `tcm_herb`): the data file and the document written from each record.

The facts (names, category, nature, flavours, channels, actions, indications, dosage, cautions,
appearance of the crude drug) are data in `sample_corpus/data/tcm_herbs.jsonl`, checked against the
Chinese Pharmacopoeia 2020 and Bensky's Materia Medica; the vocabularies below are the values the
records may use.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

DATA_FILE = "data/tcm_herbs.jsonl"
CHANNELS: tuple[str, ...] = ("Lung", "Large Intestine", "Stomach", "Spleen", "Heart", "Small Intestine",
                             "Bladder", "Kidney", "Pericardium", "San Jiao", "Gallbladder", "Liver")
NATURES: tuple[str, ...] = ("cold", "slightly cold", "cool", "neutral", "slightly warm", "warm", "hot")
FLAVOURS: tuple[str, ...] = ("sweet", "bitter", "acrid", "sour", "salty", "bland", "astringent")
FORMS: tuple[str, ...] = ("berry", "root_slice", "root", "bark", "seed", "flower", "leaf", "twig", "rhizome",
                          "fungus", "peel", "fruit", "mineral", "shell", "resin", "gelatin", "hook_stem",
                          "kernel", "stamen")
TEXTURES: tuple[str, ...] = ("smooth", "glossy", "wrinkled", "fibrous", "powdery", "granular", "ridged", "spiny",
                             "hairy", "woolly", "waxy", "oily", "layered", "crystalline", "filamentous",
                             "porous", "rough", "marbled", "rubbery", "sectioned")
NAME_FIELDS: tuple[str, ...] = ("zh", "pinyin", "latin", "en")


def load_herbs() -> list[dict[str, Any]]:
    """The herb records shipped as package data of `sample_corpus`, in file order."""
    return [json.loads(line) for line in _herb_lines()]


@lru_cache(maxsize=1)
def _herb_lines() -> tuple[str, ...]:
    text = resources.files("sample_corpus").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def clause(phrase: str) -> str:
    """A list item as a clause inside a sentence: lower-case first letter (names keep their case)."""
    return phrase[0].lower() + phrase[1:]


def monograph_text(herb: dict[str, Any]) -> str:
    """The English monograph paragraph of one herb: every fact its questions ask about."""
    def items(values: list[str]) -> str:
        return "; ".join(clause(v) for v in values)

    return (
        f"{herb['pinyin']} ({herb['zh']}), pharmaceutical name {herb['latin']}, English name "
        f"{herb['en']}, belongs to the category {herb['category']}. "
        f"Nature: {herb['nature']}. Flavour: {', '.join(herb['flavours'])}. "
        f"Channels entered: {', '.join(herb['channels'])}. "
        f"Actions: {items(herb['actions'])}. "
        f"Indications: {items(herb['indications'])}. "
        f"Usual dosage: {herb['dosage']} in decoction. "
        f"Cautions: {items(herb['cautions'])}. "
        f"The crude drug as dispensed: {herb['appearance']['description']}."
    )
