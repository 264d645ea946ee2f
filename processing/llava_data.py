"""Training data for LLaVA: the original LLaVA JSON, TRL's `messages` + `images` rows, and Hub-style datasets.

Every source becomes the same rows, `{"id", "messages", "images"}`, in the Hugging Face chat format that TRL's
collators and our chat templates read; images stay file paths until a dataloader worker opens them. Records are
checked up front, and a bad one stops the run with an error that names its id and what is wrong, instead of being
skipped: LLaVA-665K-sized mixes hide broken records well.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from modeling_llava.processing_llava_plugin import IMAGE_TOKEN

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class DataError(ValueError):
    """A record that cannot be trained on; the message names the record and the problem."""


def _check_turns(record_id: str, roles: list[str]) -> None:
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
    if "assistant" not in turns:
        raise DataError(f"Record {record_id!r}: no assistant answer to train on.")


def _resolve_images(record_id: str, images: Any, image_folder: Path | None, allow_outside: bool = False) -> list[str]:
    images = [] if images is None else [images] if isinstance(images, str) else list(images)
    paths = []
    for image in images:
        path = Path(image) if image_folder is None else image_folder / image
        inside = image_folder is None or path.resolve().is_relative_to(image_folder.resolve())
        if not (inside or allow_outside):
            raise DataError(
                f"Record {record_id!r}: image {image!r} lies outside the image folder {str(image_folder)!r}; "
                "allow that with --allow_images_outside_folder."
            )
        if not path.is_file():
            raise DataError(f"Record {record_id!r}: image file {str(path)!r} does not exist.")
        paths.append(str(path))
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
    record: dict[str, Any], index: int, image_folder: str | Path | None = None, allow_outside: bool = False
) -> dict[str, Any]:
    """Converts one original LLaVA record into a training row.

    The text is kept as written. Like the original `preprocess_multimodal`, each `<image>` is taken out of its turn,
    which is then stripped, and the image rendered at the start of that turn (as `<image>\\n`); an answer may not hold
    one. A record with `"image"` must write the marker: the original's `preprocess_plain` asserts it, and its
    `preprocess_v1` would silently train on the text alone.
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
    _check_turns(record_id, [message["role"] for message in messages])
    images = _resolve_images(
        record_id, record.get("image"), Path(image_folder) if image_folder else None, allow_outside
    )
    messages = _as_list_content(record_id, messages, len(images), placeholders_required=True)
    return {"id": record_id, "messages": messages, "images": images}


def from_messages_record(
    record: dict[str, Any], index: int, image_folder: str | Path | None = None, allow_outside: bool = False
) -> dict[str, Any]:
    """Checks a row in TRL's `messages` + `images` format (string or list content), resolving its image paths.

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
    _check_turns(record_id, [message["role"] for message in messages])
    raw_images = record.get("images", record.get("image"))
    raw_images = [] if raw_images is None else raw_images if isinstance(raw_images, list) else [raw_images]
    if all(isinstance(image, str) for image in raw_images):
        images = _resolve_images(record_id, raw_images, Path(image_folder) if image_folder else None, allow_outside)
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
    text = path.read_text()
    try:
        records = (
            json.loads(text) if path.suffix != ".jsonl" else [json.loads(line) for line in text.splitlines() if line]
        )
    except json.JSONDecodeError as error:
        raise DataError(f"Data file {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(records, list):
        raise DataError(f"Data file {str(path)!r} must hold a list of records, got {type(records).__name__}.")
    return convert_records(records, image_folder, allow_outside, progress)


def convert_records(
    records: Iterable[dict[str, Any]],
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Training rows from LLaVA or `messages` records (a list, or a `datasets.Dataset`), in order, none skipped."""
    rows = []
    for index, record in enumerate(tqdm(records, desc="checking records", disable=not progress, leave=False)):
        if not isinstance(record, dict):
            raise DataError(f"Record #{index} is a {type(record).__name__}, not a record (a JSON object).")
        if "conversations" in record:
            rows.append(from_llava_record(record, index, image_folder, allow_outside))
        elif "messages" in record:
            rows.append(from_messages_record(record, index, image_folder, allow_outside))
        else:
            raise DataError(f"Record {record.get('id', f'#{index}')!r} has neither 'conversations' nor 'messages'.")
    return rows


@dataclass
class OverflowReport:
    """Samples longer than `max_length`: dropped (never truncated through their image tokens) and listed by id."""

    max_length: int
    dropped: list[dict[str, Any]] = field(default_factory=list)

    def listing(self) -> str:
        """The first 20 samples as `id (length tokens)`, and how many more."""
        listed = ", ".join(f"{item['id']} ({item['length']} tokens)" for item in self.dropped[:20])
        return listed + (f" and {len(self.dropped) - 20} more" if len(self.dropped) > 20 else "")

    def summary(self) -> str:
        return f"{len(self.dropped)} samples longer than max_length={self.max_length} were dropped: {self.listing()}"


def sample_length(row: dict[str, Any], processor, chat_template: str | None = None) -> int:
    """Exact token count of a row after image expansion, without opening its images: the collator's own
    tokenization (`LlavaPluginProcessor.encode_prompt`) of the rendered text."""
    text = processor.apply_chat_template(row["messages"], chat_template=chat_template, tokenize=False)
    return len(processor.encode_prompt(text, add_special_tokens=False)[0])


def drop_overflowing(
    rows: list[dict[str, Any]],
    processor,
    max_length: int | None,
    chat_template: str | None = None,
    on_overflow="drop",
    progress: bool = True,
) -> tuple[list[dict[str, Any]], OverflowReport | None]:
    """Removes rows longer than `max_length` (`on_overflow="drop"`) or raises listing them (`"error"`)."""
    if max_length is None:
        return rows, None
    report = OverflowReport(max_length)
    kept = []
    for row in tqdm(rows, desc="measuring sample lengths", disable=not progress, leave=False):
        length = sample_length(row, processor, chat_template)
        if length > max_length:
            report.dropped.append({"id": row["id"], "length": length})
        else:
            kept.append(row)
    if report.dropped and on_overflow == "error":
        raise DataError(
            f"{len(report.dropped)} samples are longer than max_length={max_length}: {report.listing()}. Raise "
            "max_length, or drop them with on_overflow='drop'."
        )
    return kept, report


__all__ = [
    "DataError",
    "OverflowReport",
    "convert_records",
    "drop_overflowing",
    "from_llava_record",
    "from_messages_record",
    "read_records",
    "sample_length",
]
