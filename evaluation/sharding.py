"""Answering one question file with several processes (`torchrun`, `accelerate launch`), as the original's chunked
runs do (`--num-chunks N --chunk-idx K` in `scripts/v1_5/eval/*.sh`, then `cat` of the chunks in index order).

Each process answers one contiguous chunk of the questions, the original's `split_list`: chunk size
`ceil(questions / processes)`, process K taking the K-th (the last ones may be short or empty). It writes its answers
to its own part file, `ANSWERS.parts/<processes>_<K>.jsonl` (the original's `<CHUNKS>_<IDX>.jsonl`), which a stopped
run resumes as `llava predict` resumes its answer file. When every process is done (a barrier over gloo, which runs
on any machine), process 0 merges the parts into the answer file in the question file's order and removes them, so
the answer file of N processes holds the lines one process would have written; greedy answers are the same text.

The process group is set up here only when the launcher says there are several processes (`WORLD_SIZE` > 1), so a
plain run never touches torch.distributed.
"""

import atexit
import json
import math
import os
import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from processing.llava_data import DataError

# One process may answer for hours while another, with nothing left to answer on a resumed run, waits at the barrier:
# gloo's default of 30 minutes would end the run.
BARRIER_TIMEOUT = timedelta(days=2)


def process_share() -> tuple[int, int]:
    """(this process's rank, the number of processes), as the launcher set them: (0, 1) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def chunk(items: list, rank: int, world: int) -> list:
    """The rank-th of `world` contiguous chunks of `items`, as the original's `get_chunk(items, world, rank)`."""
    size = math.ceil(len(items) / world)
    return items[rank * size : (rank + 1) * size]


def process_device(device: str | None) -> str | None:
    """The device a process answers on: the one asked, or under a launcher with GPUs, this process's own."""
    import torch

    if device is None and process_share()[1] > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device


def parts_folder(output: str | Path) -> Path:
    return Path(f"{output}.parts")


def part_path(output: str | Path, rank: int, world: int) -> Path:
    """Where process `rank` of `world` writes its answers to the questions of `output`."""
    return parts_folder(output) / f"{world}_{rank}.jsonl"


def all_done(count: int) -> int:
    """Waits until every process of the launch gets here, and returns the sum of their `count`s."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        # Gloo's threads left running at interpreter exit abort the process ("terminate called without an active
        # exception", seen once in a fresh-clone CI run): the group is closed before that.
        atexit.register(dist.destroy_process_group)
    total = torch.tensor([count])
    dist.all_reduce(total)  # a barrier: it returns once every process has sent its count
    return int(total.item())


def complete_lines(path: Path) -> list[str]:
    """The lines of `path` that end with a newline (a stopped writer's last line does not)."""
    data = path.read_text(encoding="utf-8")
    return data[: data.rfind("\n") + 1].splitlines()


def question_keys(questions: list[tuple[Any, Any]]) -> list[str]:
    """What resuming and merging know each question by, from its (`question_id`, text) pair: its id as JSON (1 and
    "1" stay two questions); where the file asks several questions under one id, the id and the text. MME's
    `llava_mme.jsonl`, as the original's, asks two of each image under the image's path, and its answer lines tell
    them apart by their `prompt` only."""
    ids = [json.dumps(question_id) for question_id, _ in questions]
    repeated = {key for key, count in Counter(ids).items() if count > 1}
    return [
        json.dumps([question_id, prompt]) if key in repeated else key
        for key, (question_id, prompt) in zip(ids, questions, strict=True)
    ]


def line_key(record: dict, known: set[str]) -> str:
    """The key of an answer line (a JSON object with a `question_id`) among the questions' `known` keys: its id, or
    its id and `prompt` where the id is asked more than once."""
    key = json.dumps(record["question_id"])
    return key if key in known else json.dumps([record["question_id"], record.get("prompt")])


def merge_parts(output: str | Path, keys: list[str]) -> None:
    """Writes into `output` its own answer lines and those of every part file, one per question, in the order of
    `keys` (`question_keys`), and removes the part files. A question answered twice (a relaunch with
    another number of processes) keeps its first answer: the answer file's, then the parts' in file-name order."""
    output, lines = Path(output), {}
    sources = ([output] if output.exists() else []) + sorted(parts_folder(output).glob("*.jsonl"))
    known = set(keys)
    for source in sources:
        for number, line in enumerate(complete_lines(source), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            key = line_key(record, known)
            if key not in known:
                raise DataError(
                    f"Answer file {str(source)!r} line {number} answers question {record['question_id']!r}, which is "
                    "not in the question file: it answers another file; remove it or give another output."
                )
            lines.setdefault(key, line)
    staging = output.with_name(f"{output.name}.merging.tmp")
    staging.write_text("".join(lines[key] + "\n" for key in keys if key in lines), encoding="utf-8")
    staging.replace(output)
    shutil.rmtree(parts_folder(output), ignore_errors=True)


__all__ = [
    "all_done",
    "chunk",
    "line_key",
    "question_keys",
    "merge_parts",
    "part_path",
    "process_device",
    "process_share",
]
