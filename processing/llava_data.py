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


def _resolve_images(record_id: str, images: Any, image_folder: Path | None) -> list[str]:
    images = [] if images is None else [images] if isinstance(images, str) else list(images)
    paths = []
    for image in images:
        path = Path(image) if image_folder is None else image_folder / image
        if not path.is_file():
            raise DataError(f"Record {record_id!r}: image file {str(path)!r} does not exist.")
        paths.append(str(path))
    return paths


def from_llava_record(record: dict[str, Any], index: int, image_folder: str | Path | None = None) -> dict[str, Any]:
    """Converts one original LLaVA record into a training row.

    As the original `preprocess_multimodal` does, every `<image>` is taken out of the text and the images are put at
    the start of the first human turn, where the templates render each as `<image>\\n`.
    """
    record_id = str(record.get("id", f"#{index}"))
    conversations = record.get("conversations")
    if not isinstance(conversations, list):
        raise DataError(f"Record {record_id!r}: 'conversations' must be a list of turns, got {type(conversations)}.")
    roles = []
    for index, turn in enumerate(conversations):
        if turn.get("from") not in ROLES:
            raise DataError(
                f"Record {record_id!r}: turn {index} has unknown role {turn.get('from')!r} "
                "(expected 'human' or 'gpt')."
            )
        roles.append(ROLES[turn["from"]])
    _check_turns(record_id, roles)

    images = _resolve_images(record_id, record.get("image"), Path(image_folder) if image_folder else None)
    markers = sum(str(turn.get("value", "")).count(IMAGE_TOKEN) for turn in conversations)
    if markers != len(images):
        raise DataError(f"Record {record_id!r}: {markers} {IMAGE_TOKEN} markers in the text but {len(images)} images.")

    messages, first_user = [], True
    for role, turn in zip(roles, conversations, strict=True):
        text = str(turn.get("value", "")).replace(IMAGE_TOKEN, "").strip()
        content = [{"type": "text", "text": text}]
        if role == "user" and first_user:
            content = [{"type": "image"} for _ in images] + content
            first_user = False
        messages.append({"role": role, "content": content})
    return {"id": record_id, "messages": messages, "images": images}


def from_messages_record(record: dict[str, Any], index: int, image_folder: str | Path | None = None) -> dict[str, Any]:
    """Checks a row already in TRL's `messages` + `images` format (string or list content) and resolves its images."""
    record_id = str(record.get("id", f"#{index}"))
    messages = record.get("messages") or []
    for turn_index, message in enumerate(messages):
        if message.get("role") not in {"system", "user", "assistant"}:
            raise DataError(f"Record {record_id!r}: turn {turn_index} has unknown role {message.get('role')!r}.")
    _check_turns(record_id, [message["role"] for message in messages])
    raw_images = record.get("images", record.get("image"))
    raw_images = [] if raw_images is None else raw_images if isinstance(raw_images, list) else [raw_images]
    if all(isinstance(image, str) for image in raw_images):
        images = _resolve_images(record_id, raw_images, Path(image_folder) if image_folder else None)
    else:  # already decoded images (a Hub dataset with an Image column)
        images = raw_images
    placeholders = sum(
        message["content"].count(IMAGE_TOKEN)
        if isinstance(message["content"], str)
        else sum(1 for item in message["content"] if item.get("type") == "image")
        for message in messages
    )
    # TRL inserts the images before the first user message when no placeholder is written.
    if placeholders not in (0, len(images)):
        raise DataError(f"Record {record_id!r}: {placeholders} image placeholders but {len(images)} images.")
    return {"id": record_id, "messages": messages, "images": images}


def read_records(data_path: str | Path, image_folder: str | Path | None = None) -> list[dict[str, Any]]:
    """Reads a LLaVA JSON file (a list of records), or a JSON/JSONL file of `messages` rows, into training rows."""
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
    return convert_records(records, image_folder)


def convert_records(records: Iterable[dict[str, Any]], image_folder: str | Path | None = None) -> list[dict[str, Any]]:
    rows = []
    for index, record in enumerate(records):
        if "conversations" in record:
            rows.append(from_llava_record(record, index, image_folder))
        elif "messages" in record:
            rows.append(from_messages_record(record, index, image_folder))
        else:
            raise DataError(f"Record {record.get('id', f'#{index}')!r} has neither 'conversations' nor 'messages'.")
    return rows


@dataclass
class OverflowReport:
    """Samples longer than `max_length`: dropped (never truncated through their image tokens) and listed by id."""

    max_length: int
    dropped: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        ids = ", ".join(item["id"] for item in self.dropped[:20])
        more = f" and {len(self.dropped) - 20} more" if len(self.dropped) > 20 else ""
        return f"{len(self.dropped)} samples longer than max_length={self.max_length} were dropped: {ids}{more}"


def sample_length(row: dict[str, Any], processor, chat_template: str | None = None) -> int:
    """Exact token count of a row after image expansion, without opening its images.

    `<image>` is one special token, so the rendered text tokenizes to its final ids with each image counted once;
    the processor later writes `image_seq_length` tokens for it.
    """
    text = processor.apply_chat_template(row["messages"], chat_template=chat_template, tokenize=False)
    num_tokens = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    return num_tokens + text.count(processor.image_token) * (processor.image_seq_length - 1)


def drop_overflowing(
    rows: list[dict[str, Any]], processor, max_length: int | None, chat_template: str | None = None, on_overflow="drop"
) -> tuple[list[dict[str, Any]], OverflowReport | None]:
    """Removes rows longer than `max_length` (`on_overflow="drop"`) or raises listing them (`"error"`)."""
    if max_length is None:
        return rows, None
    report = OverflowReport(max_length)
    kept = []
    for row in rows:
        length = sample_length(row, processor, chat_template)
        if length > max_length:
            report.dropped.append({"id": row["id"], "length": length})
        else:
            kept.append(row)
    if report.dropped and on_overflow == "error":
        raise DataError(report.summary() + " (--on-overflow error)")
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
