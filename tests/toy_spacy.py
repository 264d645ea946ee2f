"""A spaCy pipeline built here, with no download: `spacy.blank("en")`'s tokenizer and a rule component that parses
just enough for `doc.noun_chunks` (English's syntax iterator): each word of `NOUNS` is a NOUN heading the determiners
and adjectives of `MODIFIERS` right before it; every other word is its own root. Its noun chunks are therefore known
by hand: the longest run of modifiers ending in a listed noun, e.g. "A big red dog chases the ball" -> "A big red
dog", "the ball".
"""

from pathlib import Path

import spacy
from spacy.language import Language
from spacy.tokens import Doc

NOUNS = {"dog", "cat", "ball", "park", "tree", "apple", "man", "bone", "beach", "unicorn"}
MODIFIERS = {"a": ("DET", "det"), "an": ("DET", "det"), "the": ("DET", "det"), "red": ("ADJ", "amod")}
MODIFIERS |= {"big": ("ADJ", "amod"), "old": ("ADJ", "amod")}


@Language.component("toy_noun_chunks")
def toy_noun_chunks(doc: Doc) -> Doc:
    words = [token.text for token in doc]
    heads, deps, pos = list(range(len(words))), ["ROOT"] * len(words), ["X"] * len(words)
    for index, word in enumerate(words):
        if word.lower() not in NOUNS:
            continue
        pos[index] = "NOUN"
        before = index - 1
        while before >= 0 and words[before].lower() in MODIFIERS:
            pos[before], deps[before] = MODIFIERS[words[before].lower()]
            heads[before] = index
            before -= 1
    spaces = [bool(token.whitespace_) for token in doc]
    return Doc(doc.vocab, words=words, spaces=spaces, heads=heads, deps=deps, pos=pos)


def save_toy_pipeline(folder: Path) -> Path:
    """The pipeline saved as a folder, which `spacy.load` (and so `--spacy-model`) takes like an installed one."""
    nlp = spacy.blank("en")
    nlp.add_pipe("toy_noun_chunks")
    nlp.to_disk(folder)
    return folder
