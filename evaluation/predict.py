"""`llava predict`: a checkpoint's answers to a file of questions, written as the original LLaVA writes answer files.

Three layouts of questions are read, told apart record by record: the original's question JSONL (`question_id`,
`text`, an optional `image`, as its `llava/eval/model_vqa_loader.py` reads them; the image is shown before the text,
as its `<image>\\n`), LLaVA JSON records (`conversations`: the first human turn is asked, as `model_vqa_science.py`
asks it) and TRL rows (`messages` + `images`). Records go through the training reader (`processing.llava_data`), so a
question is checked, and its image path kept inside `--image-folder`, as a training record is.

Each answer is one JSON line in the shape of the original's `model_vqa*.py`: `question_id` (as the file writes it;
a record without an id gets its index), `prompt` (the question's text as the file writes it), `text`, `answer_id` (a
random uuid4 in hex, where the original writes `shortuuid.uuid()`, a uuid4 in base 57), `model_id` (the checkpoint's
name, as the original's `get_model_name_from_path` makes it) and `metadata` (`{}`). Lines are appended batch by batch,
flushed, in the question file's order: a run stopped at any point is resumed by running it again, which skips the
questions the answer file answers and drops a last line cut short by the stop (its question is answered again). The
answer file is complete when it holds one line per question.

Launched as several processes (`torchrun`, `accelerate launch`), the questions are split into contiguous chunks, one
per process, and merged in order once all are answered (`evaluation.sharding`), as the original's chunked runs.

`answer_questions` is the engine, for any list of `Question`s; `answer_file` adds resuming and the processes' split,
and is what `llava predict`, `llava eval` and the suite answer with; `predict` is the command around it.
"""

import argparse
import json
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from processing.generation import CheckpointError, add_decoding_arguments, generate_answers, load_llava
from processing.llava_data import DataError, convert_record

from .results import VQA_LOADER_ANSWERING
from .sharding import (
    all_done,
    chunk,
    line_key,
    merge_parts,
    part_path,
    process_device,
    process_share,
    question_keys,
)

# The original's model_vqa_loader.py, whose scripts answer every short-answer benchmark of LLaVA-1.5.
MAX_NEW_TOKENS = VQA_LOADER_ANSWERING["max_new_tokens"]


@dataclass
class Question:
    """One question: its conversation up to the question turn (Hugging Face chat format) and its image path;
    `extras`, keys its answer line carries besides the original's six (MMBench's `round_id`, `options`, ...);
    `prefill`, text after the generation prompt that the answer continues."""

    question_id: Any
    prompt: str
    messages: list[dict]
    image: str | None
    extras: dict = field(default_factory=dict)
    prefill: str = ""


def _parse(path: Path) -> list:
    """The records of a JSON file (a list) or of a JSONL file (one per line)."""
    if not path.is_file():
        raise DataError(f"Question file {str(path)!r} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"Question file {str(path)!r} is not UTF-8 text: {error}") from error

    def loads(chunk: str, where: str = "") -> Any:
        try:
            return json.loads(chunk)
        except json.JSONDecodeError as error:
            raise DataError(f"Question file {str(path)!r}{where} is not valid JSON: {error}") from error

    if path.suffix == ".jsonl":
        records = [loads(line, f" line {n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        records = loads(text)
    if not isinstance(records, list):
        raise DataError(f"Question file {str(path)!r} must hold a list of records, got {type(records).__name__}.")
    return records


def _question(record: Any, index: int, image_folder: str | Path | None, allow_outside: bool) -> Question:
    """The question of one record in any of the three layouts (see the module docstring)."""
    if isinstance(record, dict) and "question_id" in record and not {"conversations", "messages"} & record.keys():
        question_id, text, image = record["question_id"], record.get("text"), record.get("image")
        if not isinstance(text, str):
            raise DataError(f"Question {question_id!r}: 'text' must be the question, got {text!r}.")
        marker = "" if image is None or "<image>" in text else "<image>\n"
        turn = {"from": "human", "value": marker + text}
        record = {"id": question_id, "conversations": [turn]} | ({} if image is None else {"image": image})
    else:
        question_id = record.get("id", index) if isinstance(record, dict) else index
        text = None
    row = convert_record(record, index, image_folder, allow_outside, answered=False)
    first_user = next(turn for turn, message in enumerate(row["messages"]) if message["role"] == "user")
    messages = row["messages"][: first_user + 1]
    shown = sum(item.get("type") == "image" for item in messages[-1]["content"])
    if len(row["images"]) > 1 or shown != len(row["images"]):
        raise DataError(
            f"Question {question_id!r}: {len(row['images'])} images, {shown} of them in the question turn; "
            "llava predict asks about one image (or none), placed in the first user turn."
        )
    if text is None:  # the question turn as the file writes it
        written = (record.get("conversations") or record.get("messages"))[first_user]
        text = written.get("value", written.get("content"))
        if not isinstance(text, str):  # list content
            text = "\n".join(item["text"] for item in messages[-1]["content"] if item.get("type") == "text")
    return Question(question_id, text, messages, row["images"][0] if row["images"] else None)


def read_questions(
    path: str | Path, image_folder: str | Path | None = None, allow_outside: bool = False
) -> list[Question]:
    """The questions of a question file, in its order. Image paths are joined to `image_folder` (default: as written,
    from the working directory, as the original's empty `--image-folder`), and one leading outside it (`../`, an
    absolute path) is refused unless `allow_outside`. Ids must be unique: they are what resuming goes by."""
    questions = [
        _question(record, index, image_folder, allow_outside) for index, record in enumerate(_parse(Path(path)))
    ]
    check_unique(questions, path)
    return questions


def check_unique(questions: list[Question], path: str | Path) -> None:
    """Refuses a question file that asks one question twice (the same id and text): resuming, and merging the
    processes' parts, go by the id, and by the text too where an id repeats (`sharding.question_keys`: MME's file asks
    two questions of each image under one id)."""
    seen = set()
    for question, key in zip(questions, _keys(questions), strict=True):
        if key in seen:
            raise DataError(
                f"Question file {str(path)!r} holds question {question.question_id!r} twice with the same text; "
                "each question must be asked once."
            )
        seen.add(key)


def _keys(questions: list[Question]) -> list[str]:
    return question_keys([(question.question_id, question.prompt) for question in questions])


def answered_ids(output: str | Path, questions: list[Question]) -> set[str]:
    """The keys of the questions that `output` answers already. A last line without its newline (a run stopped while
    writing it) is cut from the file, so that its question is answered again."""
    output = Path(output)
    if not output.exists():
        return set()
    data = output.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with output.open("r+b") as file:
            file.truncate(len(complete))
    known, answered = set(_keys(questions)), set()
    for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
            key = None if record is None else line_key(record, known)
        except (json.JSONDecodeError, TypeError, KeyError):
            raise DataError(
                f"Answer file {str(output)!r} line {number} is not an answer line (JSON with a 'question_id'); "
                "give another --output."
            ) from None
        if key is not None and key not in known:
            raise DataError(
                f"Answer file {str(output)!r} line {number} answers question {record['question_id']!r}, which is "
                "not in the question file: it answers another file; give another --output."
            )
        answered.add(key)
    return answered - {None}


def model_name(checkpoint: str | Path) -> str:
    """The `model_id` of the answers: as the original's `get_model_name_from_path`, the checkpoint's last path part,
    with its parent's before it for a Trainer `checkpoint-N` folder."""
    parts = str(checkpoint).strip("/").split("/")
    return "_".join(parts[-2:]) if parts[-1].startswith("checkpoint-") and len(parts) > 1 else parts[-1]


# Where the original's model_vqa*.py put each key of an answer line: model_vqa_mmbench.py writes `question_id`,
# `round_id`, `prompt`, `text`, `options`, `option_char`, then the three the others end with.
ANSWER_KEY_ORDER = ("question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id", "model_id")


def answer_line(question: Question, text: str, model_id: str) -> dict:
    """The answer line of `question`, its keys in the original's order; an extra key the original does not write
    goes after `text`."""
    line = {
        "question_id": question.question_id,
        "prompt": question.prompt,
        "text": text,
        **question.extras,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": {},
    }
    after_text = ANSWER_KEY_ORDER.index("text") + 0.5
    place = {key: ANSWER_KEY_ORDER.index(key) if key in ANSWER_KEY_ORDER else after_text for key in line}
    place["metadata"] = len(ANSWER_KEY_ORDER)
    return {key: line[key] for key in sorted(line, key=place.__getitem__)}


def answer_questions(
    model,
    processor,
    questions: list[Question],
    output: str | Path,
    model_id: str,
    batch_size: int = 8,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = 0.0,
    top_p: float = 1.0,
    static_cache: bool | None = None,
    progress: bool = True,
    answered: int = 0,
    desc: str = "answering",
) -> None:
    """Appends the answers to `questions` to `output`, one line each, in order, flushed after every batch.
    `answered` counts questions answered before (the progress bar starts from it)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    batches = generate_answers(
        model,
        processor,
        [question.messages for question in questions],
        [question.image for question in questions],
        batch_size,
        max_new_tokens,
        static_cache,
        ids=[str(question.question_id) for question in questions],
        temperature=temperature,
        top_p=top_p,
        prefills=[question.prefill for question in questions],
    )
    bar = tqdm(total=answered + len(questions), initial=answered, desc=desc, unit="question", disable=not progress)
    with output.open("a", encoding="utf-8") as file, bar:
        start = 0
        for texts in batches:
            lines = [
                answer_line(question, text, model_id)
                for question, text in zip(questions[start : start + len(texts)], texts, strict=True)
            ]
            file.write("".join(json.dumps(line) + "\n" for line in lines))
            file.flush()
            start += len(texts)
            bar.update(len(texts))


def answer_file(
    questions: list[Question],
    output: str | Path,
    load: Callable[[], tuple[Any, Any]],
    model_id: str,
    batch_size: int = 8,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = 0.0,
    top_p: float = 1.0,
    static_cache: bool | None = None,
    progress: bool = True,
    desc: str = "answering",
) -> int:
    """Answers into `output` the `questions` it does not answer yet, and returns how many were answered. `load()`
    gives the model and processor; it is called only when there is a question to answer.

    Launched as several processes (`WORLD_SIZE` > 1), each answers its chunk of the questions into its part file and
    process 0 merges the parts into `output` once all are done (`evaluation.sharding`); every process returns the
    count of them all."""
    rank, world = process_share()
    done = answered_ids(output, questions) if rank == 0 or world == 1 else set()
    target = Path(output)
    if world > 1:
        all_done(0)  # process 0 has cut a stopped run's last line from `output` before the others read it
        done = answered_ids(output, questions) if rank else done
        target = part_path(output, rank, world)
        done |= answered_ids(target, questions)
    mine = chunk(list(zip(questions, _keys(questions), strict=True)), rank, world)
    todo = [question for question, key in mine if key not in done]
    if todo:
        model, processor = load()
        answer_questions(
            model,
            processor,
            todo,
            target,
            model_id,
            batch_size,
            max_new_tokens,
            temperature,
            top_p,
            static_cache,
            progress,
            answered=len(mine) - len(todo),
            desc=desc,
        )
    if world == 1:
        return len(todo)
    answered = all_done(len(todo))
    if rank == 0:
        merge_parts(output, _keys(questions))
    return answered


def predict(
    checkpoint: str,
    questions: str | Path,
    output: str | Path,
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
    batch_size: int = 8,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    device: str | None = None,
    static_cache: bool | None = None,
    vision_tower: str | None = None,
    progress: bool = True,
    dtype: str = "auto",
    quantization: str | None = None,
    template: str | None = None,
) -> int:
    """Answers the questions of the file `questions` that `output` does not answer yet; returns how many it answered.
    The checkpoint is loaded only when there is one to answer. With a `seed`, a fresh run gives the same answers for
    the same batch size (a resumed sampled run continues from the seed, not from where the stopped run was)."""

    def load():
        model, processor = load_llava(
            checkpoint, process_device(device), vision_tower, dtype=dtype, quantization=quantization, template=template
        )
        if seed is not None:
            from transformers import set_seed

            set_seed(seed)
        return model, processor

    loaded = read_questions(questions, image_folder, allow_outside)
    return answer_file(
        loaded,
        output,
        load,
        model_name(checkpoint),
        batch_size,
        max_new_tokens,
        temperature,
        top_p,
        static_cache,
        progress,
    )


def main(argv: list[str] | None = None) -> None:
    """`llava predict`: a mistake in the checkpoint, the question file, an image or the answer file is one line naming
    it and exit status 2, as `llava eval`'s."""
    parser = argparse.ArgumentParser(
        prog="llava predict",
        description="Answer a question file (the original's question JSONL, LLaVA JSON or TRL messages rows) with a "
        "checkpoint, into an answer file in the original's model_vqa shape. Rerunning resumes: answered questions "
        "are skipped.",
    )
    parser.add_argument("checkpoint", help="a checkpoint folder in any format `llava convert` reads, or a Hub id")
    parser.add_argument("--questions", required=True, help="question file (.jsonl or .json)")
    parser.add_argument("--output", required=True, help="answer file (JSONL), appended to when it exists")
    parser.add_argument("--image-folder", help="image paths are relative to it (default: as written)")
    parser.add_argument(
        "--allow-images-outside-folder",
        "--allow_images_outside_folder",
        action="store_true",
        help="read image paths that lead outside the image folder",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="questions per batch (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="default: %(default)s")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) answers greedily")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, with --temperature above 0")
    parser.add_argument("--seed", type=int, help="seeds sampling: a rerun gives the same answers")
    parser.add_argument("--vision-tower", help="local copy of the tower an original checkpoint names")
    add_decoding_arguments(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1:
        parser.error("--batch-size and --max-new-tokens must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        parser.error("--temperature must be at least 0 and --top-p in (0, 1]")
    try:
        answered = predict(
            args.checkpoint,
            args.questions,
            args.output,
            args.image_folder,
            args.allow_images_outside_folder,
            args.batch_size,
            args.max_new_tokens,
            args.temperature,
            args.top_p,
            args.seed,
            args.device,
            args.static_cache,
            args.vision_tower,
            dtype=args.dtype,
            quantization=args.quantization,
            template=args.template,
        )
    except (CheckpointError, DataError, OSError) as error:
        print(f"llava predict: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if process_share()[0] == 0:  # one report for all the processes
        done = f"{answered} questions answered into {args.output}"
        print(done if answered else f"{args.output} answers every question")


__all__ = [
    "Question",
    "answer_file",
    "answer_line",
    "answer_questions",
    "answered_ids",
    "check_unique",
    "main",
    "model_name",
    "predict",
    "read_questions",
]
