"""Training data for LLaVA: the original LLaVA JSON, TRL's `messages` + `images` rows, and Hub-style datasets.

Every source becomes the same rows, `{"id", "messages", "images"}`, in the Hugging Face chat format that TRL's
collators and our chat templates read; images stay file paths until a dataloader worker opens them. Records are
checked up front, and a bad one stops the run with an error that names its id and what is wrong, instead of being
skipped: LLaVA-665K-sized mixes hide broken records well.
"""

import contextlib
import functools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.table import InMemoryTable
from tqdm.auto import tqdm

from modeling_llava.processing_llava_plugin import IMAGE_TOKEN

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class DataError(ValueError):
    """A record that cannot be trained on; the message names the record and the problem."""


def _check_turns(record_id: str, roles: list[str], answered: bool = True) -> None:
    if not roles:
        raise DataError(f"Record {record_id!r}: the conversation is empty.")
    turns = roles[1:] if roles[0] == "system" else roles
    for index, role in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            problem = (
                "an answer before a question" if role == "assistant" else f"a {role} turn where {expected} was due"
            )
            raise DataError(f"Record {record_id!r}: turn {index} is {problem} (turns must alternate user, assistant).")
    if answered and "assistant" not in turns:
        raise DataError(f"Record {record_id!r}: no assistant answer to train on.")


@functools.lru_cache(maxsize=8)
def _folder_root(image_folder: str) -> str:
    return os.path.normpath(os.path.abspath(image_folder))


def outside_folder(image: str, image_folder: str | Path) -> bool:
    """Whether the image path `image`, written in a data file relative to `image_folder`, leads outside it.

    Judged by the path's text (`../`, an absolute path), not by where symlinks lead: a folder of symlinks to the real
    datasets (`coco -> /mnt/coco`, as LLaVA's `playground/data` is often laid out) is inside. Plain string operations
    keep 665K records to seconds. Training and every benchmark refuse such paths unless told to allow them.
    """
    root = _folder_root(str(image_folder))
    return not os.path.normpath(os.path.join(root, image)).startswith(root + os.sep)


def _resolve_images(
    record_id: str, images: Any, image_folder: str | Path | None, allow_outside: bool = False
) -> list[str]:
    """The records' image paths joined to `image_folder`, each checked to be a file and, unless `allow_outside`, to
    lie inside the folder (`outside_folder`); one `stat` per image."""
    images = [] if images is None else [images] if isinstance(images, str) else list(images)
    paths = []
    for image in images:
        path = image if image_folder is None else os.path.join(image_folder, image)
        if image_folder is not None and not allow_outside and outside_folder(image, image_folder):
            raise DataError(
                f"Record {record_id!r}: image {image!r} lies outside the image folder {str(image_folder)!r}; "
                "allow that with --allow_images_outside_folder."
            )
        if not os.path.isfile(path):
            raise DataError(f"Record {record_id!r}: image file {path!r} does not exist.")
        paths.append(path)
    return paths


def _as_list_content(
    record_id: str, messages: list[dict[str, Any]], num_images: int, placeholders_required: bool
) -> list[dict[str, Any]]:
    """The messages with list content, holding one `{"type": "image"}` item per image.

    List content keeps its image items where they are. From string content every `<image>` is taken out, that text
    stripped, and the image put at the start of the same turn, as the original `preprocess_multimodal` does (the chat
    templates render a turn's images first). Images that no placeholder places go to the start of the first user
    turn, as TRL puts them (allowed unless `placeholders_required`). Rows in this one shape render the same in
    `sample_length` as in the collator, and mix in one `datasets.Dataset`.
    """
    placeholders, normalized = 0, []
    for turn, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            markers = content.count(IMAGE_TOKEN)
            if markers and message["role"] != "user":
                raise DataError(
                    f"Record {record_id!r}: turn {turn} ({message['role']}) holds {IMAGE_TOKEN}; images belong in "
                    "user turns (image tokens are never trained on)."
                )
            text = content.replace(IMAGE_TOKEN, "").strip() if markers else content
            content = [{"type": "image"} for _ in range(markers)] + [{"type": "text", "text": text}]
        elif isinstance(content, list) and all(isinstance(item, dict) for item in content):
            # A Hub dataset's content items carry every key of the column, the missing ones as None.
            content = [{key: value for key, value in item.items() if value is not None} for item in content]
        else:
            raise DataError(
                f"Record {record_id!r}: a {message['role']} turn's content must be a string or a list of "
                f"{{'type': ...}} items, got {type(content).__name__}."
            )
        placeholders += sum(item.get("type") == "image" for item in content)
        normalized.append({**message, "content": content})
    if placeholders != num_images and (placeholders or placeholders_required):
        raise DataError(
            f"Record {record_id!r}: {placeholders} {IMAGE_TOKEN} placeholders in the text but {num_images} images; "
            f"write one per image."
        )
    if not placeholders and num_images:
        first_user = next(index for index, message in enumerate(normalized) if message["role"] == "user")
        images = [{"type": "image"} for _ in range(num_images)]
        normalized[first_user] = {**normalized[first_user], "content": images + normalized[first_user]["content"]}
    return normalized


def from_llava_record(
    record: dict[str, Any],
    index: int,
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    answered: bool = True,
) -> dict[str, Any]:
    """Converts one original LLaVA record into a training row.

    The text is kept as written. Like the original `preprocess_multimodal`, each `<image>` is taken out of its turn,
    which is then stripped, and the image rendered at the start of that turn (as `<image>\\n`); an answer may not hold
    one. A record with `"image"` must write the marker: the original's `preprocess_plain` asserts it, and its
    `preprocess_v1` would silently train on the text alone. `answered=False` also takes a conversation without an
    answer (a question for `llava predict`).
    """
    record_id = str(record.get("id", f"#{index}"))
    conversations = record.get("conversations")
    if not isinstance(conversations, list):
        raise DataError(f"Record {record_id!r}: 'conversations' must be a list of turns, got {type(conversations)}.")
    messages = []
    for turn_index, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES:
            role = turn.get("from") if isinstance(turn, dict) else turn
            raise DataError(
                f"Record {record_id!r}: turn {turn_index} has unknown role {role!r} (expected 'human' or 'gpt')."
            )
        if not isinstance(turn.get("value"), str):
            raise DataError(f"Record {record_id!r}: turn {turn_index} has no text ('value' must be a string).")
        messages.append({"role": ROLES[turn["from"]], "content": turn["value"]})
    _check_turns(record_id, [message["role"] for message in messages], answered)
    images = _resolve_images(record_id, record.get("image"), image_folder or None, allow_outside)
    messages = _as_list_content(record_id, messages, len(images), placeholders_required=True)
    return {"id": record_id, "messages": messages, "images": images}


def from_messages_record(
    record: dict[str, Any],
    index: int,
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    answered: bool = True,
) -> dict[str, Any]:
    """Checks a row in TRL's `messages` + `images` format (string or list content), resolving its image paths;
    `answered=False` also takes one without an answer.

    Images may also be decoded already (a Hub dataset's Image column); they are kept as they are.
    """
    record_id = str(record.get("id", f"#{index}"))
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise DataError(f"Record {record_id!r}: 'messages' must be a list of turns, got {type(messages)}.")
    for turn_index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else message
        if role not in {"system", "user", "assistant"}:
            raise DataError(f"Record {record_id!r}: turn {turn_index} has unknown role {role!r}.")
    _check_turns(record_id, [message["role"] for message in messages], answered)
    raw_images = record.get("images", record.get("image"))
    raw_images = [] if raw_images is None else raw_images if isinstance(raw_images, list) else [raw_images]
    if all(isinstance(image, str) for image in raw_images):
        images = _resolve_images(record_id, raw_images, image_folder or None, allow_outside)
    else:  # already decoded images (a Hub dataset with an Image column)
        images = raw_images
    messages = _as_list_content(record_id, messages, len(images), placeholders_required=False)
    return {"id": record_id, "messages": messages, "images": images}


def read_records(
    data_path: str | Path, image_folder: str | Path | None = None, allow_outside: bool = False, progress: bool = True
) -> list[dict[str, Any]]:
    """Reads a LLaVA JSON file (a list of records), or a JSON/JSONL file of `messages` rows, into training rows.

    An image path that leads outside `image_folder` (`../`, an absolute path) is refused unless `allow_outside`.
    """
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file {str(path)!r} does not exist.")
    records = _parsed(path)
    if not isinstance(records, list):
        raise DataError(f"Data file {str(path)!r} must hold a list of records, got {type(records).__name__}.")
    return convert_records(records, image_folder, allow_outside, progress, in_place=True)


def _parsed(path: Path) -> Any:
    """The JSON (or JSONL) file's content; its text is released on return, before the records are converted."""
    try:
        with path.open("rb") as file:
            return json.load(file) if path.suffix != ".jsonl" else [json.loads(line) for line in file if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"Data file {str(path)!r} is not valid JSON: {error}") from error


def convert_record(
    record: Any,
    index: int,
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    answered: bool = True,
) -> dict[str, Any]:
    """The training row of one LLaVA (`conversations`) or `messages` record; `index` names a record without an id.
    `answered=False` also takes a conversation that holds no answer yet (a question)."""
    if not isinstance(record, dict):
        raise DataError(f"Record #{index} is a {type(record).__name__}, not a record (a JSON object).")
    if "conversations" in record:
        return from_llava_record(record, index, image_folder, allow_outside, answered)
    if "messages" in record:
        return from_messages_record(record, index, image_folder, allow_outside, answered)
    raise DataError(f"Record {record.get('id', f'#{index}')!r} has neither 'conversations' nor 'messages'.")


def convert_records(
    records: Iterable[dict[str, Any]],
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    progress: bool = True,
    in_place: bool = False,
) -> list[dict[str, Any]]:
    """Training rows from a list of LLaVA or `messages` records, in order, none skipped.

    `in_place` replaces each record of the list by its row as it goes, so that a LLaVA-665K file's parsed records
    and its rows are not held in memory together.
    """
    rows = records if in_place else list(records)
    for index in tqdm(range(len(rows)), desc="checking records", disable=not progress, leave=False):
        rows[index] = convert_record(rows[index], index, image_folder, allow_outside)
    return rows


# Rows from which `num_proc=None` spreads checking and measuring over the CPU cores (at most 8): below, starting the
# processes costs more than it saves.
PARALLEL_FROM_ROWS = 20_000


def processes_for(rows: int, num_proc: int | None) -> int | None:
    """The `num_proc` to give `datasets.map` for `rows` rows: the one asked for, or, for `None`, the CPU cores (at most
    8) from `PARALLEL_FROM_ROWS` rows on; `None` (this process) for one, or for fewer rows than two per process."""
    if num_proc is None:
        num_proc = min(8, os.cpu_count() or 1) if rows >= PARALLEL_FROM_ROWS else 1
    return num_proc if num_proc > 1 and rows >= 2 * num_proc else None


@contextlib.contextmanager
def datasets_progress(enabled: bool) -> Iterator[None]:
    """datasets' progress bars on or off for one call (they are one global switch): off on all but the first rank."""
    switch_off = not enabled and not datasets.utils.are_progress_bars_disabled()
    if switch_off:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if switch_off:
            datasets.enable_progress_bars()


def rows_to_dataset(rows: list[dict[str, Any]], chunk: int = 50_000) -> datasets.Dataset:
    """`datasets.Dataset.from_list(rows)`, in half the peak memory: Arrow tables are built `chunk` rows at a time and
    each chunk's rows released from `rows` (which ends empty), then joined under one schema (a chunk of text-only rows
    has no image type yet; a row's extra content keys become columns of every row). For LLaVA-665K, `from_list` holds
    the 4 GiB of rows and their Arrow copy together (a peak of 8.8 GiB); this, the rows and one chunk (5.4 GiB).
    """
    tables = []
    while rows:
        tables.append(pa.Table.from_pylist(rows[:chunk]))
        del rows[:chunk]
    if not tables:
        return datasets.Dataset.from_list([])
    # Fingerprinted by content and (in some datasets releases) by the chunks, which a fixed `chunk` keeps the same from
    # one start to the next: the lengths cache is found by the fingerprint.
    return datasets.Dataset(InMemoryTable(pa.concat_tables(tables, promote_options="permissive")))


def _undecoded(feature: Any) -> Any:
    """A `datasets.Image` feature (or a list of them) that reads `{"bytes", "path"}` instead of a decoded image."""
    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.Image):
        return datasets.List(datasets.Image(decode=False), length=feature.length)
    return None


def _converted_batch(
    records: dict[str, list], indices: list[int], image_folder: str | None, allow_outside: bool, keep_images: bool
) -> dict[str, list]:
    rows = [
        convert_record({name: values[offset] for name, values in records.items()}, index, image_folder, allow_outside)
        for offset, index in enumerate(indices)
    ]
    names = ("id", "messages") if keep_images else ("id", "messages", "images")
    return {name: [row[name] for row in rows] for name in names}


def convert_dataset(
    dataset: datasets.Dataset,
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    num_proc: int | None = None,
    progress: bool = True,
) -> datasets.Dataset:
    """Training rows from a `datasets.Dataset` of LLaVA or `messages` records, checked as `convert_records` checks,
    without holding the dataset in memory or decoding its images.

    An `Image` column is read undecoded (`{"bytes", "path"}`), kept as it is on disk, and decoded by the collator in
    a dataloader worker when its sample is batched: a LLaVA-665K-sized dataset of images never sits decoded in
    memory. Image paths (a string column) are resolved against `image_folder` as in a LLaVA JSON.
    """
    image_column = next((name for name in ("images", "image") if name in dataset.column_names), None)
    undecoded = _undecoded(dataset.features[image_column]) if image_column else None
    if undecoded is not None:
        dataset = dataset.cast_column(image_column, undecoded)
    keep = [image_column] if undecoded is not None else []
    with datasets_progress(progress):
        converted = dataset.map(
            _converted_batch,
            with_indices=True,
            batched=True,
            batch_size=1000,
            remove_columns=[name for name in dataset.column_names if name not in keep],
            fn_kwargs={
                "image_folder": str(image_folder) if image_folder else None,
                "allow_outside": allow_outside,
                "keep_images": undecoded is not None,
            },
            num_proc=processes_for(len(dataset), num_proc),
            desc="checking records",
        )
    if undecoded is not None and image_column != "images":
        converted = converted.rename_column(image_column, "images")
    return converted


__all__ = [
    "DataError",
    "convert_dataset",
    "convert_record",
    "convert_records",
    "datasets_progress",
    "processes_for",
    "from_llava_record",
    "from_messages_record",
    "outside_folder",
    "read_records",
    "rows_to_dataset",
]
