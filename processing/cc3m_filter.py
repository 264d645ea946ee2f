"""`llava data filter-cc3m`: the paper's concept-balanced subset of CC3M, the stage-1 data (LLaVA-CC3M-Pretrain-595K).

The paper's rule (Appendix E): spaCy's noun phrases of every caption, counted over the whole of CC3M; phrases seen
fewer than 3 times are skipped (rare combinations of concepts and attributes that other captions cover); then, from
the phrase of lowest frequency upward, the captions holding the phrase join the pool, a random 100 of them where the
phrase has more than 100. The paper reports 108,182 unique noun phrases before and 31,423 after, and about 595K pairs.

What the paper leaves open, decided here:
- a phrase is the noun chunk's text, lowercased (`doc.noun_chunks`); its frequency is the number of captions holding
  it, so a phrase said twice in one caption counts once;
- the order is fixed by the frequencies over the whole data ("lowest remaining" read as: of the phrases left after
  the skip), phrases of equal frequency in alphabetical order, so a seed gives one result;
- the pool is a set: a caption reached through several phrases is in it once. A phrase's 100 are drawn from all its
  captions, as the paper says, whether or not rarer phrases brought some of them in already; so a frequent phrase
  can add fewer than 100 new captions, and the pool can hold more than 100 captions with it.

Each selected caption becomes a record in the shape of the release's `chat.json`: the instruction, a newline and
`<image>` as the question, the raw caption as the answer, `id` the image's name without its extension. The CC3M
release's TSV (`caption<TAB>url`, no header) names no image: its line `N` (from 0) is `GCC_train_{N:09d}.jpg`, as
LLaVA named the images of its `images.zip`.
"""

import csv
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from modeling_llava.processing_llava_plugin import IMAGE_TOKEN

MIN_FREQUENCY = 3  # App. E: "We skip noun-phrases whose frequency is smaller than 3"
MAX_PER_PHRASE = 100  # App. E: "we randomly choose a subset of size 100 out of all its captions"


class CaptionFileError(ValueError):
    """A caption file, instruction file or spaCy pipeline that cannot be used; the message names it and what to do."""


@dataclass(slots=True)  # 3.3M of them in memory
class Caption:
    id: str
    image: str
    text: str


def read_captions(path: str | Path) -> list[Caption]:
    """The captions of a CC3M TSV (`caption<TAB>url` per line) or of a JSON list / JSONL of `{image, caption}`
    records (an `id` is kept where there is one, else the image's name without its extension)."""
    path = Path(path)
    if not path.is_file():
        raise CaptionFileError(f"Caption file {str(path)!r} does not exist.")
    if path.suffix in (".tsv", ".txt"):
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
        for number, row in enumerate(rows):
            if not row or not row[0].strip():
                raise CaptionFileError(
                    f"Caption file {str(path)!r}, line {number + 1}: no caption; each line is caption<TAB>url, as in "
                    "the CC3M release (a line's position names its image, so none may be left out)."
                )
        return [Caption(f"GCC_train_{n:09d}", f"GCC_train_{n:09d}.jpg", row[0].strip()) for n, row in enumerate(rows)]
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as file:
                records = [json.loads(line) for line in file if line.strip()]
        else:
            records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CaptionFileError(f"Caption file {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(records, list):
        raise CaptionFileError(f"Caption file {str(path)!r} must hold a list of {{image, caption}} records.")
    captions = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or "caption" not in record:
            raise CaptionFileError(
                f"Caption file {str(path)!r}, record {index}: needs an 'image' (file name) and a 'caption', got "
                f"{str(record)[:100]}."
            )
        captions.append(Caption(str(record.get("id", Path(record["image"]).stem)), record["image"], record["caption"]))
    return captions


def read_instructions(path: str | Path) -> list[str]:
    """One instruction per line of a text file (blank lines skipped), such as the paper's Table 11."""
    try:
        instructions = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise CaptionFileError(f"Cannot read the instruction file {str(path)!r}: {error}") from error
    if not instructions:
        raise CaptionFileError(f"Instruction file {str(path)!r} holds no instruction: write one per line.")
    return instructions


def load_pipeline(name: str) -> Any:
    """The user's spaCy pipeline (a package name or a folder), without the components noun chunks do not need."""
    try:
        import spacy
    except ImportError as error:
        raise CaptionFileError("Needs spaCy: pip install 'llava-plugin[cc3m]'.") from error
    try:
        # Noun chunks need the parser and the tags; entities and lemmas only cost time.
        return spacy.load(name, exclude=["ner", "lemmatizer", "textcat", "textcat_multilabel"])
    except OSError as error:
        raise CaptionFileError(
            f"spaCy has no pipeline {name!r}: install an English one (python -m spacy download en_core_web_sm) and "
            "pass its name, or pass a pipeline folder."
        ) from error


def noun_phrases(nlp: Any, texts: list[str], processes: int = 1, batch_size: int = 1000) -> Iterator[set[str]]:
    """Each text's noun phrases (lowercased noun chunks), in order, parsed in batches by `processes` processes."""
    docs = nlp.pipe(texts, n_process=processes, batch_size=batch_size)
    for doc in tqdm(docs, total=len(texts), desc="noun phrases", unit="caption"):
        yield {chunk.text.lower() for chunk in doc.noun_chunks}


def phrase_index(phrases: Iterable[set[str]]) -> dict[str, list[int]]:
    """Every phrase and the captions (by position) that hold it: its frequency is the length of its list."""
    index = defaultdict(list)
    for position, found in enumerate(phrases):
        for phrase in found:
            index[phrase].append(position)
    return dict(index)


def select_balanced(
    index: dict[str, list[int]],
    seed: int = 0,
    min_frequency: int = MIN_FREQUENCY,
    max_per_phrase: int = MAX_PER_PHRASE,
) -> list[int]:
    """The positions of the captions the paper's rule keeps (see the module's docstring), in ascending order."""
    rng = random.Random(seed)
    kept = sorted((len(captions), phrase) for phrase, captions in index.items() if len(captions) >= min_frequency)
    pool = set()
    for frequency, phrase in kept:
        captions = index[phrase]
        pool.update(captions if frequency <= max_per_phrase else rng.sample(captions, max_per_phrase))
    return sorted(pool)


def phrase_counts(index: dict[str, list[int]], selected: set[int] | None = None) -> tuple[int, int]:
    """Unique noun phrases among all captions (or the `selected` ones), and those of them seen at least
    `MIN_FREQUENCY` times there."""
    if selected is None:
        frequencies = [len(captions) for captions in index.values()]
    else:
        frequencies = [sum(position in selected for position in captions) for captions in index.values()]
    return sum(f > 0 for f in frequencies), sum(f >= MIN_FREQUENCY for f in frequencies)


@dataclass
class FilterReport:
    """Captions and unique noun phrases before and after the filter (the paper: 108,182 -> 31,423 phrases)."""

    captions: tuple[int, int]
    phrases: tuple[int, int]
    frequent: tuple[int, int]

    def __str__(self) -> str:
        rows = [("captions", self.captions), ("unique noun phrases", self.phrases)]
        rows.append((f"  of them seen {MIN_FREQUENCY}+ times", self.frequent))
        return "\n".join(f"{name:<28}{before:>12,} -> {after:,}" for name, (before, after) in rows)


def to_records(captions: list[Caption], selected: list[int], instructions: list[str], seed: int = 0) -> list[dict]:
    """LLaVA records in the shape of the release's `chat.json`, an instruction drawn per caption."""
    rng = random.Random(f"{seed}:instructions")
    return [
        {
            "id": captions[position].id,
            "image": captions[position].image,
            "conversations": [
                {"from": "human", "value": f"{rng.choice(instructions)}\n{IMAGE_TOKEN}"},
                {"from": "gpt", "value": captions[position].text},
            ],
        }
        for position in selected
    ]


def filter_cc3m(
    captions: list[Caption],
    nlp: Any,
    instructions: list[str],
    seed: int = 0,
    processes: int = 1,
    batch_size: int = 1000,
) -> tuple[list[dict], FilterReport]:
    """The records of the concept-balanced subset, and the counts before and after."""
    index = phrase_index(noun_phrases(nlp, [caption.text for caption in captions], processes, batch_size))
    selected = select_balanced(index, seed)
    (phrases, frequent), (phrases_after, frequent_after) = phrase_counts(index), phrase_counts(index, set(selected))
    report = FilterReport((len(captions), len(selected)), (phrases, phrases_after), (frequent, frequent_after))
    return to_records(captions, selected, instructions, seed), report


__all__ = [
    "Caption",
    "CaptionFileError",
    "FilterReport",
    "filter_cc3m",
    "load_pipeline",
    "noun_phrases",
    "phrase_counts",
    "phrase_index",
    "read_captions",
    "read_instructions",
    "select_balanced",
    "to_records",
]
