"""Training data for LLaVA: the original LLaVA JSON, TRL's `messages` + `images` rows, and Hub-style datasets.

Every source becomes the same rows, `{"id", "messages", "images"}`, in the Hugging Face chat format that TRL's
collators and our chat templates read; images stay file paths until a dataloader worker opens them. Records are
checked up front, each bad one with an error that names its id and what is wrong: LLaVA-665K-sized mixes hide broken
records well. Given a `problems` list, the readers go on past a bad record, list it there and leave it out, so that
one pass finds every problem (`processing/data_checks.py` reports them); without one, the first stops the reading.
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
from PIL import Image
from tqdm.auto import tqdm

from modeling_llava.processing_llava_plugin import IMAGE_TOKEN

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class DataError(ValueError):
    """A record that cannot be trained on; the message names the record and the problem, `kind` sorts it for counts
    ("bad record", "missing image", ...)."""

    def __init__(self, message: str, kind: str = "bad record"):
        super().__init__(message)
        self.kind = kind


def record_name(record: Any, index: int) -> str:
    """How a record is named in messages and reports: its `id`, else `#index` (its position in the data, from 0)."""
    return str(record.get("id", f"#{index}")) if isinstance(record, dict) else f"#{index}"


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
    resolved = os.path.normpath(os.path.join(root, image))
    return resolved != root and not resolved.startswith(root + os.sep)  # `.` is the folder itself, not outside


def _image_list(record_id: str, name: str, images: Any, decoded_allowed: bool = False) -> list[Any]:
    """A record's `image`/`images` field as a list: a path, a list of paths (or, from a Hub dataset's Image column,
    already decoded images and `{"bytes", "path"}` values); anything else is a `DataError` naming the type found."""
    images = [] if images is None else images if isinstance(images, list) else [images]
    for image in images:
        if not isinstance(image, str) and not (decoded_allowed and isinstance(image, (dict, Image.Image))):
            raise DataError(
                f"Record {record_id!r}: {name!r} must be an image path (a string) or a list of them, got "
                f"{type(image).__name__} ({image!r:.60})."
            )
    return images


def _resolve_images(
    record_id: str, images: list[str], image_folder: str | Path | None, allow_outside: bool = False
) -> list[str]:
    """The records' image paths joined to `image_folder`, each checked to be a file and, unless `allow_outside`, to
    lie inside the folder (`outside_folder`); one `stat` per image."""
    paths = []
    for image in images:
        path = image if image_folder is None else os.path.join(image_folder, image)
        if image_folder is not None and not allow_outside and outside_folder(image, image_folder):
            raise DataError(
                f"Record {record_id!r}: image {image!r} lies outside the image folder {str(image_folder)!r}; "
                "allow that with --allow_images_outside_folder.",
                "image outside the folder",
            )
        if not os.path.isfile(path):
            if os.path.isdir(path):
                raise DataError(
                    f"Record {record_id!r}: image {image!r} is a folder ({path!r}), not an image file.",
                    "image is a folder",
                )
            raise DataError(f"Record {record_id!r}: image file {path!r} does not exist.", "missing image")
        paths.append(path)
    return paths


def _as_list_content(
    record_id: str,
    messages: list[dict[str, Any]],
    num_images: int,
    placeholders_required: bool,
    image_in_place: bool = False,
) -> list[dict[str, Any]]:
    """The messages with list content, holding one `{"type": "image"}` item per image.

    List content keeps its image items where they are. From string content every `<image>` is taken out, that text
    stripped, and the image put at the start of the same turn, as the original `preprocess_multimodal` does (the chat
    templates render a turn's images first); with `image_in_place`, the text is cut at each `<image>` instead and the
    image item put between its pieces, as written (the paper's code kept it there; render such rows with
    `chat_template(name, image_in_place=True)`). Images that no placeholder places go to the start of the first user
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
            if image_in_place and markers:
                pieces = content.split(IMAGE_TOKEN)
                content = [{"type": "text", "text": pieces[0]}] if pieces[0] else []
                for piece in pieces[1:]:
                    content += [{"type": "image"}] + ([{"type": "text", "text": piece}] if piece else [])
            else:
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
    image_in_place: bool = False,
) -> dict[str, Any]:
    """Converts one original LLaVA record into a training row.

    The text is kept as written. Like the original `preprocess_multimodal`, each `<image>` is taken out of its turn,
    which is then stripped, and the image rendered at the start of that turn (as `<image>\\n`); an answer may not hold
    one. A record with `"image"` must write the marker: the original's `preprocess_plain` asserts it, and its
    `preprocess_v1` would silently train on the text alone. `answered=False` also takes a conversation without an
    answer (a question for `llava predict`); `image_in_place` keeps each image where its turn wrote it
    (`_as_list_content`).
    """
    record_id = record_name(record, index)
    conversations = record.get("conversations")
    if not isinstance(conversations, list):
        raise DataError(
            f"Record {record_id!r}: 'conversations' must be a list of turns, got {type(conversations).__name__}."
        )
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
    images = _image_list(record_id, "image", record.get("image"))
    images = _resolve_images(record_id, images, image_folder or None, allow_outside)
    messages = _as_list_content(record_id, messages, len(images), True, image_in_place)
    return {"id": record_id, "messages": messages, "images": images}


def from_messages_record(
    record: dict[str, Any],
    index: int,
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    answered: bool = True,
    image_in_place: bool = False,
) -> dict[str, Any]:
    """Checks a row in TRL's `messages` + `images` format (string or list content), resolving its image paths;
    `answered=False` also takes one without an answer; `image_in_place` as in `from_llava_record`.

    Images may also be decoded already (a Hub dataset's Image column); they are kept as they are.
    """
    record_id = record_name(record, index)
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise DataError(f"Record {record_id!r}: 'messages' must be a list of turns, got {type(messages).__name__}.")
    for turn_index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else message
        if role not in {"system", "user", "assistant"}:
            raise DataError(f"Record {record_id!r}: turn {turn_index} has unknown role {role!r}.")
    _check_turns(record_id, [message["role"] for message in messages], answered)
    name = "images" if "images" in record else "image"
    raw_images = _image_list(record_id, name, record.get(name), decoded_allowed=True)
    if all(isinstance(image, str) for image in raw_images):
        images = _resolve_images(record_id, raw_images, image_folder or None, allow_outside)
    else:  # already decoded images (a Hub dataset with an Image column)
        images = raw_images
    messages = _as_list_content(record_id, messages, len(images), False, image_in_place)
    return {"id": record_id, "messages": messages, "images": images}


def check_single_exchange(row: dict[str, Any]) -> None:
    """Stage-1 data: one question with one image and its answer, all that the `plain` template renders (the image and
    the caption); the original's `preprocess_plain` asserts two turns and the image in the first. A longer conversation
    or a text-only record would train on a part of it only, or on a caption without its image."""
    roles = [message["role"] for message in row["messages"]]
    if roles != ["user", "assistant"] or len(row["images"]) != 1:
        turns = f"{roles.count('assistant')} answers" + (" and a system turn" if "system" in roles else "")
        raise DataError(
            f"Record {row['id']!r}: stage 1 (the plain template) trains on one image and its caption (one question "
            f"with one image, one answer), as the original's preprocess_plain asserts; this record has {turns} and "
            f"{len(row['images'])} images. Give stage 1 caption data, or skip such records with --on_bad_record skip.",
            "not stage-1 data",
        )


def read_records(
    data_path: str | Path,
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    progress: bool = True,
    problems: list[dict[str, Any]] | None = None,
    single_exchange: bool = False,
    image_in_place: bool = False,
) -> list[dict[str, Any]]:
    """Reads a LLaVA JSON file (a list of records), or a JSON/JSONL file of `messages` rows, into training rows.

    An image path that leads outside `image_folder` (`../`, an absolute path) is refused unless `allow_outside`;
    `single_exchange` holds every record to stage 1's shape (`check_single_exchange`); `image_in_place` keeps each
    `<image>` where the text wrote it (`_as_list_content`). With `problems`, each bad record (and each JSONL line that
    is not JSON) is listed there, with its line in a JSONL file, and left out.
    """
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file {str(path)!r} does not exist.")
    records, lines = parse_data_file(path, problems)
    if not isinstance(records, list):
        raise DataError(f"Data file {str(path)!r} must hold a list of records, got {type(records).__name__}.")
    return convert_records(
        records, image_folder, allow_outside, progress, True, problems, single_exchange, lines, image_in_place
    )


def parse_data_file(path: Path, problems: list[dict[str, Any]] | None) -> tuple[Any, list[int] | None]:
    """The JSON (or JSONL) file's content and, for JSONL, the file's line of each record; the text is released on
    return, before the records are converted."""
    with path.open("rb") as file:
        if path.suffix != ".jsonl":
            try:
                return json.load(file), None
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise DataError(f"Data file {str(path)!r} is not valid JSON: {error}") from error
        records, lines = [], []
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
                lines.append(number)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                where = f"column {error.colno}: {error.msg}" if isinstance(error, json.JSONDecodeError) else error
                problem = DataError(
                    f"Data file {str(path)!r}, line {number}, is not valid JSON ({where}).", "bad line"
                )
                if problems is None:
                    raise problem from error
                problems.append({"line": number, "kind": problem.kind, "problem": str(problem)})
        return records, lines


def convert_record(
    record: Any,
    index: int,
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    single_exchange: bool = False,
    answered: bool = True,
    image_in_place: bool = False,
) -> dict[str, Any]:
    """The training row of one LLaVA (`conversations`) or `messages` record; `index` names a record without an id.
    `answered=False` also takes a conversation that holds no answer yet (a question); `image_in_place` keeps each
    `<image>` where the text wrote it."""
    if not isinstance(record, dict):
        raise DataError(f"Record #{index} is a {type(record).__name__}, not a record (a JSON object).")
    if "conversations" in record:
        row = from_llava_record(record, index, image_folder, allow_outside, answered, image_in_place)
    elif "messages" in record:
        row = from_messages_record(record, index, image_folder, allow_outside, answered, image_in_place)
    else:
        raise DataError(f"Record {record_name(record, index)!r} has neither 'conversations' nor 'messages'.")
    if single_exchange:
        check_single_exchange(row)
    return row


def convert_records(
    records: Iterable[dict[str, Any]],
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    progress: bool = True,
    in_place: bool = False,
    problems: list[dict[str, Any]] | None = None,
    single_exchange: bool = False,
    lines: list[int] | None = None,
    image_in_place: bool = False,
) -> list[dict[str, Any]]:
    """Training rows from a list of LLaVA or `messages` records, in order.

    `in_place` replaces each record of the list by its row as it goes, so that a LLaVA-665K file's parsed records
    and its rows are not held in memory together. A bad record raises its `DataError`, or, given `problems`, is
    listed there (`{"id", "kind", "problem"}`, and `"line"` from `lines`, a JSONL file's line of each record) and
    left out.
    """
    rows = records if in_place else list(records)
    bad = 0
    for index in tqdm(range(len(rows)), desc="checking records", disable=not progress, leave=False):
        try:
            rows[index] = convert_record(
                rows[index], index, image_folder, allow_outside, single_exchange, image_in_place=image_in_place
            )
        except DataError as error:
            if problems is None:
                raise
            where = {"line": lines[index]} if lines is not None else {}
            problems.append(
                {"id": record_name(rows[index], index), **where, "kind": error.kind, "problem": str(error)}
            )
            rows[index], bad = None, bad + 1
    if bad:
        rows[:] = [row for row in rows if row is not None]
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


# What a bad record's row holds until it is dropped: turns of the type good rows have, so that a batch of bad records
# alone gives datasets the column type the later batches need (an empty list would fix it to nulls).
PLACEHOLDER_TURNS = [{"role": "user", "content": [{"type": "text", "text": ""}]}]


def _converted_batch(
    records: dict[str, list],
    indices: list[int],
    image_folder: str | None,
    allow_outside: bool,
    keep_images: bool,
    collect: bool,
    single_exchange: bool,
    image_in_place: bool = False,
) -> dict[str, list]:
    """The rows of a batch of records; with `collect`, a bad record becomes an empty row whose `problem` and
    `problem_kind` say what is wrong (a batch's rows must all be returned), for `convert_dataset` to list and drop."""
    rows, problems = [], []
    for offset, index in enumerate(indices):
        record = {name: values[offset] for name, values in records.items()}
        try:
            rows.append(
                convert_record(
                    record, index, image_folder, allow_outside, single_exchange, image_in_place=image_in_place
                )
            )
            problems.append(None)
        except DataError as error:
            if not collect:
                raise
            rows.append({"id": record_name(record, index), "messages": PLACEHOLDER_TURNS, "images": []})
            problems.append(error)
    names = ("id", "messages") if keep_images else ("id", "messages", "images")
    batch = {name: [row[name] for row in rows] for name in names}
    if collect:
        batch["problem"] = [None if error is None else str(error) for error in problems]
        batch["problem_kind"] = [None if error is None else error.kind for error in problems]
    return batch


def convert_dataset(
    dataset: datasets.Dataset,
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    num_proc: int | None = None,
    progress: bool = True,
    problems: list[dict[str, Any]] | None = None,
    single_exchange: bool = False,
    image_in_place: bool = False,
) -> datasets.Dataset:
    """Training rows from a `datasets.Dataset` of LLaVA or `messages` records, checked as `convert_records` checks
    (bad records listed in `problems` and left out, if given), without holding the dataset in memory or decoding its
    images.

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
                "collect": problems is not None,
                "single_exchange": single_exchange,
                "image_in_place": image_in_place,
            },
            num_proc=processes_for(len(dataset), num_proc),
            desc="checking records",
        )
    if problems is not None:
        found = converted.select_columns(["id", "problem", "problem_kind"]).with_format("arrow")[:].to_pylist()
        bad = [index for index, row in enumerate(found) if row["problem"] is not None]
        problems.extend(
            {"id": found[i]["id"], "kind": found[i]["problem_kind"], "problem": found[i]["problem"]} for i in bad
        )
        converted = converted.remove_columns(["problem", "problem_kind"])
        if bad:
            converted = converted.select(sorted(set(range(len(found))) - set(bad)))
    if undecoded is not None and image_column != "images":
        converted = converted.rename_column(image_column, "images")
    return converted


__all__ = [
    "DataError",
    "check_single_exchange",
    "convert_dataset",
    "convert_record",
    "convert_records",
    "datasets_progress",
    "processes_for",
    "from_llava_record",
    "record_name",
    "from_messages_record",
    "outside_folder",
    "parse_data_file",
    "read_records",
    "rows_to_dataset",
]
