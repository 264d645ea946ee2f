"""Every problem of a training set, found in one pass and reported as one list, before anything is measured or trained.

The readers (`llava_data`) list each bad record instead of stopping at the first; `check_images` then reads the header
of every image the remaining rows show (each distinct file once, in `num_proc` processes, with a progress bar), lists
the ones that are not images or are over the pixel limit and records the others' sizes (a LLaVA-NeXT image's token
count depends on its size, which the length measurement then reads without opening the file again); `DataProblems`
counts them by kind, writes the whole list as JSON into the output folder and says on screen what it found. The
LLaVA-1.5 mix as downloaded misses a few hundred OCR-VQA images: all of them are named at once, not one per start, and
an undecodable file is found before training instead of in a dataloader worker mid-run.
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset

from .images import inspect_image
from .llava_data import datasets_progress, processes_for

PROBLEMS_NAME = "data_problems.json"
# Problems listed on screen; the file holds them all.
SHOWN = 5


def _checked_batch(images: list[Any], max_pixels: int | None) -> dict[str, list]:
    """Per row (an image, or a row's list of images): the first image that cannot be shown, as JSON, or None; and
    where there is none, each image's (height, width) as the model sees it (`images.image_size`)."""
    found, sizes = [], []
    for value in images:
        inspected = []
        for image in value if isinstance(value, list) else [value]:
            inspected.append(inspect_image(image, max_pixels))
            if inspected[-1][0] is not None:
                break
        problem = inspected[-1][0] if inspected else None
        found.append(None if problem is None else json.dumps((len(inspected) - 1, *problem)))
        sizes.append(None if problem is not None else [list(size) for _, size in inspected])
    return {"problem": found, "sizes": sizes}


def _holds_undecoded_images(feature: Any) -> bool:
    """Whether a column holds a Hub dataset's images (`datasets.Image`, read undecoded) rather than file paths."""
    if isinstance(feature, datasets.List):
        feature = feature.feature
    return isinstance(feature, datasets.Image)


def check_images(
    dataset: Dataset,
    problems: list[dict[str, Any]],
    max_pixels: int | None,
    num_proc: int | None = None,
    progress: bool = True,
) -> Dataset:
    """`dataset` without the rows whose images cannot be shown to the model, each listed in `problems` (`{"id",
    "image", "kind", "problem"}`, one per row: its first bad image), and with an `image_sizes` column: each row's
    images' (height, width), EXIF orientation applied. Its values are part of the dataset's fingerprint, so lengths
    cached under it are measured again when an image file changes size.

    Every image is checked by `images.inspect_image` (its header read and verified, its pixels not decoded) in
    `num_proc` processes (`None`: see `processes_for`). File paths are checked once each however many rows share them
    (LLaVA-665K's 624K image records show far fewer files); a Hub dataset's own images, row by row.
    """
    if "images" not in dataset.column_names or not len(dataset):
        return dataset
    shared = not _holds_undecoded_images(dataset.features["images"])
    if shared:
        per_row = dataset.select_columns(["images"]).with_format("arrow")[:]["images"].to_pylist()
        files = sorted({path for paths in per_row for path in paths})
        if not files:  # text-only data
            return dataset
        to_check = Dataset.from_dict({"images": files})
    else:
        to_check = dataset.select_columns(["images"])
    with datasets_progress(progress):
        checked = to_check.map(
            _checked_batch,
            input_columns="images",
            batched=True,
            batch_size=100,
            remove_columns=["images"],
            fn_kwargs={"max_pixels": max_pixels},
            num_proc=processes_for(len(to_check), num_proc),
            desc="checking images",
        )
    found = checked.with_format("arrow")[:]["problem"].to_pylist()
    sizes = checked.with_format("arrow")[:]["sizes"].to_pylist()
    if shared:
        size_of = {files[index]: size[0] for index, size in enumerate(sizes) if size is not None}
        sizes = [[size_of.get(path) for path in paths] for paths in per_row]
        bad_files = {files[index]: json.loads(problem)[1:] for index, problem in enumerate(found) if problem}
        bad_rows = {}
        for row, paths in enumerate(per_row):
            path = next((path for path in paths if path in bad_files), None)
            if path is not None:
                bad_rows[row] = (path, *bad_files[path])
    else:
        images = dataset.select_columns(["images"])
        bad_rows = {}
        for row, problem in enumerate(found):
            if problem:
                index, kind, message = json.loads(problem)
                value = images[row]["images"]
                image = value[index] if isinstance(value, list) else value
                bad_rows[row] = (image.get("path") or f"image {index} (bytes)", kind, message)
    dataset = dataset.add_column("image_sizes", [row if row is not None else [] for row in sizes])
    if not bad_rows:
        return dataset
    ids = dataset.select_columns(["id"]).with_format("arrow")[:]["id"].to_pylist()
    for row, (image, kind, message) in bad_rows.items():
        problems.append({"id": ids[row], "image": image, "kind": kind, "problem": f"Record {ids[row]!r}: {message}"})
    return dataset.select([row for row in range(len(dataset)) if row not in bad_rows])


@dataclass
class DataProblems:
    """The problems found in a data set (`source`, `records` records): each `{"id", "kind", "problem"}`, with `"line"`
    (a JSONL file's) and `"image"` where they apply; a JSONL line that is not JSON has no id."""

    source: str
    records: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> str:
        """`3 missing image, 1 bad record`: how many of each kind, the most common first."""
        return ", ".join(f"{count} {kind}" for kind, count in Counter(e["kind"] for e in self.entries).most_common())

    def summary(self, path: str | Path | None = None) -> str:
        """How many records are bad, by kind, the first few problems, and where the whole list is."""
        lines = [
            f"{len(self.entries):,} of {self.records:,} records in {self.source!r} cannot be trained on "
            f"({self.counts()}):"
        ]
        lines += [f"  {entry['problem']}" for entry in self.entries[:SHOWN]]
        if len(self.entries) > SHOWN:
            lines.append(f"  ... and {len(self.entries) - SHOWN} more")
        if path is not None:
            lines.append(f"All of them, with their ids: {path}")
        return "\n".join(lines)

    def write(self, path: str | Path) -> None:
        """The whole list as JSON: `{"data", "records", "problems": [...]}`."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        listing = {"data": self.source, "records": self.records, "problems": self.entries}
        Path(path).write_text(json.dumps(listing, indent=2, ensure_ascii=False) + "\n")


__all__ = ["PROBLEMS_NAME", "DataProblems", "check_images"]
