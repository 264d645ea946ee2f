"""Token lengths of training rows, measured once per dataset and tokenizer: for the overflow check and for grouping
samples by modality and length.

A length is exact (the collator's own tokenization of the rendered chat, image tokens expanded) and needs no image
decoded: a LLaVA-1.5 image is always `image_seq_length` tokens, a LLaVA-NeXT image as many as its size gives
(`anyres.anyres_layout`), read from the `image_sizes` column `data_checks.check_images` records from the headers, or
from the headers here for a dataset that was not checked. LLaVA-665K takes minutes to measure on one core, so
`measure_lengths` runs `datasets.Dataset.map` over `num_proc` processes and keeps the result in a cache file named by
the dataset's content fingerprint and the processor's tokenization: a second start on the same data and tokenizer reads
it back instead of measuring again.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset
from datasets.fingerprint import Hasher

from modeling_llava import LlavaNextPluginProcessor

from .images import image_size
from .llava_data import DataError, datasets_progress, processes_for

# Bumped whenever the way a length is counted changes, so that older cache files are not read.
LENGTHS_VERSION = 1
LENGTH_COLUMNS = ("length", "has_images")


def sample_length(
    row: dict[str, Any],
    processor,
    chat_template: str | None = None,
    image_sizes: list[tuple[int, int]] | None = None,
) -> int:
    """Exact token count of a row after image expansion, without opening its images: the collator's own
    tokenization (`LlavaPluginProcessor.encode_prompt`) of the rendered text.

    `image_sizes`: each image's (height, width), in order, for a processor whose count depends on it (LLaVA-NeXT's,
    through `anyres.anyres_layout`, the function the processor and the model count with).
    """
    text = processor.apply_chat_template(row["messages"], chat_template=chat_template, tokenize=False)
    return len(processor.encode_prompt(text, add_special_tokens=False, image_sizes=image_sizes)[0])


def has_images(messages: list[dict[str, Any]]) -> bool:
    """Whether a row's conversation shows an image (its rows place one `{"type": "image"}` item per image)."""
    return any(
        isinstance(item, dict) and item.get("type") == "image"
        for message in messages
        if isinstance(message.get("content"), list)
        for item in message["content"]
    )


def _measure_batch(batch: dict[str, list], processor, chat_template: str | None) -> dict[str, list]:
    messages = batch["messages"]
    if "image_sizes" in batch:  # recorded by `data_checks.check_images`
        sizes = batch["image_sizes"]
    elif "images" in batch:  # a dataset that was not checked: read the headers here
        sizes = [[image_size(image) for image in images or []] for images in batch["images"]]
    else:
        sizes = [None] * len(messages)
    return {
        "length": [
            sample_length({"messages": turns}, processor, chat_template, image_sizes=images)
            for turns, images in zip(messages, sizes, strict=True)
        ],
        "has_images": [has_images(turns) for turns in messages],
    }


def tokenization_key(processor, chat_template: str | None) -> str:
    """A hash of everything a length depends on besides the row: template, vocabulary and merges, image expansion."""
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return Hasher.hash(
        [
            LENGTHS_VERSION,
            chat_template if chat_template is not None else processor.chat_template,
            type(tokenizer).__name__,
            vocabulary,
            getattr(tokenizer, "legacy", None),
            tokenizer.bos_token,
            processor.image_token,
            processor.image_seq_length,
            processor.image_start_token,
            processor.image_end_token,
            # LLaVA-NeXT's tiling decides its images' counts (absent, None, for LLaVA-1.5's processor).
            getattr(processor.image_processor, "image_grid_pinpoints", None),
            getattr(processor.image_processor, "crop_size", None),
        ]
    )


def lengths_cache_dir() -> Path:
    """Where measured lengths are kept: under datasets' cache (`HF_DATASETS_CACHE`)."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "llava-plugin-lengths"


def measure_lengths(
    dataset: Dataset,
    processor,
    chat_template: str | None = None,
    num_proc: int | None = None,
    progress: bool = True,
    cache: bool = True,
) -> Dataset:
    """`dataset` with a `length` (tokens) and a `has_images` column, measured in `num_proc` processes (`None`: the
    CPU cores, at most 8, for a large dataset; see `processes_for`).

    With `cache`, the columns are kept in `lengths_cache_dir()` under the dataset's fingerprint (a hash of its
    content) and `tokenization_key`, and read back by the next run that measures the same rows the same way.
    """
    dataset = dataset.remove_columns([name for name in LENGTH_COLUMNS if name in dataset.column_names])
    columns = ["messages"]
    if isinstance(processor, LlavaNextPluginProcessor):  # each image's count depends on its size
        columns += [name for name in ("image_sizes", "images") if name in dataset.column_names][:1]
    cache_file = None
    if cache:
        key = Hasher.hash([dataset._fingerprint, tokenization_key(processor, chat_template)])
        lengths_cache_dir().mkdir(parents=True, exist_ok=True)
        cache_file = str(lengths_cache_dir() / f"lengths-{key}.arrow")
    with datasets_progress(progress):
        lengths = dataset.select_columns(columns).map(
            _measure_batch,
            batched=True,
            batch_size=256,
            remove_columns=columns,
            fn_kwargs={"processor": processor, "chat_template": chat_template},
            num_proc=processes_for(len(dataset), num_proc),
            cache_file_name=cache_file,
            load_from_cache_file=cache,
            desc="measuring sample lengths",
        )
    return datasets.concatenate_datasets([dataset, lengths], axis=1)


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


def drop_overflowing(
    dataset: Dataset, max_length: int | None, on_overflow: str = "drop"
) -> tuple[Dataset, OverflowReport | None]:
    """Removes the rows of a measured dataset (`measure_lengths`) longer than `max_length` (`on_overflow="drop"`), or
    raises listing them (`"error"`)."""
    if max_length is None:
        return dataset, None
    lengths = list(dataset["length"])
    too_long = [index for index, length in enumerate(lengths) if length > max_length]
    report = OverflowReport(max_length)
    if not too_long:
        return dataset, report
    ids = dataset.select(too_long)["id"]
    report.dropped = [{"id": row_id, "length": lengths[index]} for row_id, index in zip(ids, too_long, strict=True)]
    if on_overflow == "error":
        raise DataError(
            f"{len(report.dropped)} samples are longer than max_length={max_length}: {report.listing()}. Raise "
            "max_length, or drop them with on_overflow='drop'."
        )
    kept = sorted(set(range(len(lengths))) - set(too_long))
    return dataset.select(kept), report


__all__ = [
    "LENGTH_COLUMNS",
    "OverflowReport",
    "drop_overflowing",
    "has_images",
    "lengths_cache_dir",
    "measure_lengths",
    "sample_length",
    "tokenization_key",
]
