"""`llava data mix`: training sets drawn from LLaVA-Instruct-158K by response type, for the paper's Table 4.

The release ships each type in its own file (`conversation_58k.json`, `detail_23k.json`, `complex_reasoning_77k.json`);
the combined `llava_instruct_150k.json` is not read: its records carry the type files' ids, their COCO image's,
which an image's records of different types share, and no field names the type. A type is taken whole or
as a fraction of its records (`round(fraction * records)`, drawn with the seed, kept in the file's order); the types
follow each other in the order conversation, detail, complex, as the training shuffles anyway. Table 4's four sets:
the three files whole; conversation alone; detail + complex; conversation + 5% of detail + 10% of complex.
"""

import json
import random
from pathlib import Path

TYPES = ("conversation", "detail", "complex")


class MixError(ValueError):
    """A type file or a fraction that cannot be used; the message names it and what to do."""


def read_type_file(path: str | Path) -> list[dict]:
    """A LLaVA JSON file of one response type: a list of records with `conversations`."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MixError(f"Cannot read {str(path)!r} as LLaVA JSON: {error}") from error
    if not isinstance(records, list):
        raise MixError(f"{str(path)!r} must hold a list of LLaVA records, got {type(records).__name__}.")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
            raise MixError(f"{str(path)!r}, record {index}: not a LLaVA record (no 'conversations' list).")
    return records


def draw(records: list[dict], fraction: float, seed: int, kind: str) -> list[dict]:
    """`round(fraction * len(records))` of the records, drawn with the seed, in their order."""
    if not 0 < fraction <= 1:
        raise MixError(f"The {kind} fraction is {fraction}; it must be above 0 and at most 1.")
    count = round(fraction * len(records))
    chosen = random.Random(f"{seed}:{kind}").sample(range(len(records)), count)
    return [records[index] for index in sorted(chosen)]


def mix(files: dict[str, str | Path], fractions: dict[str, float], seed: int = 0) -> tuple[list[dict], dict[str, int]]:
    """The records of each given type's file (`files`, keyed by type), a `fractions[type]` of them (default 1), and
    how many each type gave."""
    unknown = set(files) - set(TYPES)
    if unknown:
        raise MixError(f"Unknown response types {sorted(unknown)}; the types are {', '.join(TYPES)}.")
    if not files:
        raise MixError(f"No type file given: pass at least one of {', '.join(f'--{kind}' for kind in TYPES)}.")
    records, counts = [], {}
    for kind in TYPES:
        if kind in files:
            drawn = draw(read_type_file(files[kind]), fractions.get(kind, 1.0), seed, kind)
            records += drawn
            counts[kind] = len(drawn)
    return records, counts


__all__ = ["TYPES", "MixError", "draw", "mix", "read_type_file"]
