"""Chinese herb monographs (domain `tcm_herb`): one case per herb of `sample_corpus/data/tcm_herbs.jsonl`.

`monographs` turns each record into a document, `questions` asks about it, and `photograph` draws
the crude drug as dispensed: pieces of the herb's form (`pieces`, built from the `primitives`) in
its colours and surface texture, scattered or piled on a tray, paper, cloth or plate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sample_corpus.domain import SampleCase
from sample_corpus.tcm_herb.monographs import NAME_FIELDS, load_herbs, monograph_text
from sample_corpus.tcm_herb.photograph import photograph
from sample_corpus.tcm_herb.questions import YES_NO_PER_HERB, herb_questions


class HerbGenerator:
    domain = "tcm_herb"

    def cases(self, rng: np.random.Generator) -> list[SampleCase]:
        herbs = load_herbs()
        truths = np.arange(len(herbs) * YES_NO_PER_HERB) % 2 == 0
        truths = truths[rng.permutation(truths.size)].tolist()
        cases = []
        for index, herb in enumerate(herbs):
            own_truths = truths[index * YES_NO_PER_HERB:(index + 1) * YES_NO_PER_HERB]
            cases.append(SampleCase(
                key=herb["key"],
                title=f"{herb['pinyin']} ({herb['latin']})",
                text=monograph_text(herb),
                source=herb["source"],
                params=self._params(herb, rng),
                questions=herb_questions(herb, herbs, rng, own_truths),
                names={field: herb[field] for field in NAME_FIELDS},
                metadata={"category": herb["category"], "nature": herb["nature"], "flavours": herb["flavours"],
                          "channels": herb["channels"], "dosage": herb["dosage"]},
            ))
        return cases

    @staticmethod
    def _params(herb: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The herb's appearance plus what makes this batch its own: tint, piece size and outline."""
        appearance = dict(herb["appearance"])
        appearance.update({
            "tint": [int(v) for v in rng.integers(-8, 9, 3)],
            "size_scale": round(float(rng.uniform(0.9, 1.1)), 3),
            "irregularity": round(float(rng.uniform(0.04, 0.14)), 3),
            "count_scale": round(float(rng.uniform(0.8, 1.2)), 3),
            "batch_seed": int(rng.integers(2**31)),
        })
        return appearance

    def draw(self, case: SampleCase, rng: np.random.Generator) -> Image.Image:
        return photograph(case.params, rng)


GENERATOR = HerbGenerator()
