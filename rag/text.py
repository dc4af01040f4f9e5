"""What a word and a sentence are, for every part that compares texts.

Prompt snippets, option matching, citation attribution, token F1 and the router's sentence samples
all split text the same way here. BM25 (`rag.lexical`) tokenises for an inverted index instead:
Han runs become unigrams and bigrams and stopwords follow bm25s's list; it shares `CJK` with this
module so both agree on what counts as Chinese.
"""

from __future__ import annotations

import re

# Chinese Han characters: Extension A + the unified block, compatibility ideographs, Extension B.
CJK = "\u3400-\u9fff\uf900-\ufaff\U00020000-\U0002a6df"
# A word: letters, digits or underscore, or Han characters (a Han run counts as one word here).
WORD = re.compile(r"[\w\u4e00-\u9fff]+", re.UNICODE)
# A sentence ends at . ; ! ? or the Chinese 。 ； followed by white space.
SENTENCE_END = re.compile(r"(?<=[.;!?。；])\s+")
# Words too common to say whether two short texts are about the same thing.
STOPWORDS = frozenset("a an the of in on and or to is are was were what which does do this that with for by as at "
                      "from be it its how who whom whose why when where".split())


def words(text: str) -> list[str]:
    """Lower-cased words of `text` in order, repeats kept (for bag-of-words scores such as token F1)."""
    return WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    """The distinct lower-cased words of `text` without stopwords (for overlap between short texts)."""
    return set(words(text)) - STOPWORDS


def sentences(text: str) -> list[str]:
    """The non-empty sentences of `text`, in order."""
    return [s for s in SENTENCE_END.split(text.strip()) if s]
