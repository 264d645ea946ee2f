"""`llava generate-data`: LLaVA's visual instruction data from COCO-style annotations, written by a teacher model.

Each image becomes its symbolic context, all that a text-only teacher knows of it (the paper's section 3): its
captions, one per line, then each annotated object as `name: [x1, y1, x2, y2]`, the box in fractions of the image's
width and height. The teacher (an OpenAI-compatible endpoint or a local causal LM, see `processing/teacher.py`) gets
the system message and few-shot examples of the instruction type (`prompts/conversation.yaml`, `detail.yaml`,
`complex.yaml`), or those of the original's prompt folder (`--prompts`, see `load_prompt_folder`), and then the
context; its reply is parsed into a LLaVA record and validated (turns alternate from the
human, none is empty, `<image>` opens the first human turn and appears nowhere else). `stage1` is the paper's simple
expansion instead: one record per image, a random caption answering a random brief-description instruction
(`prompts/brief.yaml`), no teacher.

Resumable: each finished image (its record, or its rejection with the reason and the teacher's reply) is appended and
flushed to `OUTPUT.progress.jsonl` as it comes, and a rerun skips those, so a crash loses nothing already generated.
An image whose teacher call failed for good (HTTP errors or timeouts after the retries) is not recorded there: the
next run tries it again. The LLaVA JSON is written only once every image has a record or a rejection (under a
temporary name, then renamed), the rejections beside it in `OUTPUT.rejected.json`. Record ids are
`<image id>-<type>` (`<image id>` for stage 1), so the three types can be mixed in one training set.
"""

import argparse
import json
import random
import re
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml

from modeling_llava.processing_llava_plugin import IMAGE_TOKEN
from processing.teacher import (
    Message,
    Teacher,
    TeacherError,
    add_teacher_arguments,
    chat_concurrently,
    teacher_from_args,
)

KINDS = ("conversation", "detail", "complex")
PROMPTS = Path(__file__).parent / "prompts"
# The original's `playground/data/prompts/` names a folder per type.
ORIGINAL_FOLDERS = {"conversation": "conversation", "detail": "detail_description", "complex": "complex_reasoning"}
_LABEL = re.compile(r"^(Question|Answer):", re.MULTILINE)
_SEPARATOR = re.compile(r"^===[ \t]*$", re.MULTILINE)  # between the turns of the original's few-shot replies
_EXAMPLE_FILE = re.compile(r"^(\d+)_(caps|conv)\.txt$")
_BOX_LINE = re.compile(r"^[^\n]+: \[[^\]\n]*\]$", re.MULTILINE)


class InstructionDataError(ValueError):
    """Annotations or a teacher reply that cannot become a record; the message names the file or record."""


@dataclass
class ImageAnnotations:
    """What is known of one image: its captions and its objects (category name, normalised box)."""

    id: str
    file_name: str
    captions: list[str]
    objects: list[tuple[str, tuple[float, float, float, float]]]


def _load_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InstructionDataError(f"Cannot read {str(path)!r}: {error}") from error


def read_coco(captions: str | Path, instances: str | Path | None = None) -> list[ImageAnnotations]:
    """The images of a COCO captions file, with the objects of a COCO instances file, in order of image id."""
    caption_data = _load_json(captions)
    images = {
        image["id"]: ImageAnnotations(str(image["id"]), image["file_name"], [], []) for image in caption_data["images"]
    }
    for annotation in caption_data["annotations"]:
        if annotation["image_id"] not in images:
            raise InstructionDataError(
                f"{str(captions)!r}: caption {annotation.get('id')} is of image {annotation['image_id']}, which is "
                "not in its images."
            )
        images[annotation["image_id"]].captions.append(annotation["caption"].strip())
    if instances is not None:
        instance_data = _load_json(instances)
        sizes = {image["id"]: (image["width"], image["height"]) for image in instance_data["images"]}
        names = {category["id"]: category["name"] for category in instance_data["categories"]}
        for annotation in instance_data["annotations"]:
            image_id = annotation["image_id"]
            if image_id not in images or image_id not in sizes:
                raise InstructionDataError(
                    f"{str(instances)!r}: object {annotation.get('id')} is in image {image_id}, which is not in "
                    f"both {str(captions)!r} and the instances' images."
                )
            (width, height), (x, y, w, h) = sizes[image_id], annotation["bbox"]
            box = tuple(min(max(v, 0.0), 1.0) for v in (x / width, y / height, (x + w) / width, (y + h) / height))
            images[image_id].objects.append((names[annotation["category_id"]], box))
    return [images[image_id] for image_id in sorted(images)]


def symbolic_context(image: ImageAnnotations, boxes: bool = True, rounded: bool = False) -> str:
    """The captions, one per line, then (with `boxes`) a blank line and one `name: [x1, y1, x2, y2]` line per object,
    each number with three decimals, or `rounded` as Python prints `round(v, 3)` (`0.63`, `1.0`: the original's
    files)."""
    number = (lambda v: str(round(v, 3))) if rounded else (lambda v: f"{v:.3f}")
    lines = [f"{name}: [{', '.join(number(v) for v in box)}]" for name, box in image.objects] if boxes else []
    return "\n".join(image.captions) + ("\n\n" + "\n".join(lines) if lines else "")


def load_prompt(kind: str) -> dict:
    """A prompt file of `prompts/`: `system`, `examples` (`context`, `response`) and, for some, `questions`."""
    return yaml.safe_load((PROMPTS / f"{'brief' if kind == 'stage1' else kind}.yaml").read_text())


def load_prompt_folder(prompts: str | Path, kind: str) -> dict:
    """The original's prompt files for `kind`, from its `playground/data/prompts/` layout: in
    `prompts/<conversation|detail_description|complex_reasoning>/`, `system_message.txt` and the few-shot pairs
    `NNN_caps.txt` (an image's context) and `NNN_conv.txt` (the reply written for it), taken in the order of NNN.

    Each file is read as written, less the whitespace around it (the original's end without a newline; an editor's is
    dropped). The query then takes its examples' shape, as the original's data was written: a box section only if the
    examples have one (its conversation examples are the captions alone, its system message speaks of "five
    sentences"), numbers printed as in its files. The folder holds no list of detail questions: a `detail` reply
    answers one of this project's (`prompts/detail.yaml`).
    """
    folder = Path(prompts) / ORIGINAL_FOLDERS[kind]
    system = folder / "system_message.txt"
    if not system.is_file():
        raise InstructionDataError(
            f"{str(system)!r} does not exist: --prompts is the folder holding {', '.join(ORIGINAL_FOLDERS.values())} "
            "(the original's playground/data/prompts)."
        )
    files = {}
    for path in folder.iterdir():
        match = _EXAMPLE_FILE.match(path.name)
        if match:
            files[int(match[1]), match[2]] = path
    examples = []
    for number in sorted({number for number, _ in files}):
        missing = [part for part in ("caps", "conv") if (number, part) not in files]
        if missing:
            present = files[number, "conv" if missing == ["caps"] else "caps"]
            raise InstructionDataError(
                f"{str(present)!r} has no {missing[0]} file beside it: each few-shot example is a NNN_caps.txt and "
                "a NNN_conv.txt."
            )
        context, response = (files[number, part].read_text(encoding="utf-8").strip() for part in ("caps", "conv"))
        examples.append({"context": context, "response": response})
    return {
        "system": system.read_text(encoding="utf-8").strip(),
        "examples": examples,
        "questions": load_prompt("detail")["questions"] if kind == "detail" else None,
        "boxes": any(_BOX_LINE.search(example["context"]) for example in examples),
        "rounded": True,
    }


def teacher_messages(prompt: dict, context: str) -> list[Message]:
    """The system message, each few-shot example as a user/assistant exchange, then the image's context."""
    messages = [{"role": "system", "content": prompt["system"]}]
    for example in prompt["examples"]:
        messages += [
            {"role": "user", "content": example["context"]},
            {"role": "assistant", "content": example["response"]},
        ]
    return messages + [{"role": "user", "content": context}]


def parse_reply(kind: str, reply: str, prompt: dict, rng: random.Random) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a teacher's reply; a `detail` reply answers a question drawn from the list."""
    if kind == "detail":
        return [(rng.choice(prompt["questions"]), reply.strip())]
    parts = _LABEL.split(reply.strip())
    if parts[0].strip():
        raise InstructionDataError(f"the reply does not start with 'Question:' but with {parts[0].strip()[:60]!r}")
    labels, texts = parts[1::2], [_SEPARATOR.sub("", text).strip() for text in parts[2::2]]
    if not labels or labels != ["Question", "Answer"] * (len(labels) // 2):
        raise InstructionDataError(f"the reply's turns are {labels}, not Question/Answer pairs")
    pairs = list(zip(texts[0::2], texts[1::2], strict=True))
    if kind == "complex" and len(pairs) != 1:
        raise InstructionDataError(f"a complex-reasoning reply must hold one question and answer, not {len(pairs)}")
    return pairs


def to_record(image: ImageAnnotations, record_id: str, pairs: Iterable[tuple[str, str]]) -> dict:
    """A LLaVA record: `<image>` opens the first question, then the turns alternate human / gpt."""
    conversations = []
    for index, (question, answer) in enumerate(pairs):
        question = f"{IMAGE_TOKEN}\n{question}" if index == 0 else question
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"id": record_id, "image": image.file_name, "conversations": conversations}


def validate_record(record: dict) -> None:
    """Raises when turns do not alternate from the human, a turn is empty, or `<image>` is not alone at the start."""
    turns, name = record["conversations"], f"Record {record['id']!r}"
    if not turns or len(turns) % 2:
        raise InstructionDataError(f"{name}: {len(turns)} turns; a conversation is question/answer pairs")
    for index, turn in enumerate(turns):
        expected = "human" if index % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise InstructionDataError(f"{name}: turn {index} is from {turn['from']!r} where {expected!r} was due")
        if not turn["value"].replace(IMAGE_TOKEN, "").strip():
            raise InstructionDataError(f"{name}: turn {index} ({turn['from']}) is empty")
    if not turns[0]["value"].startswith(IMAGE_TOKEN) or sum(t["value"].count(IMAGE_TOKEN) for t in turns) != 1:
        raise InstructionDataError(f"{name}: {IMAGE_TOKEN} must open the first human turn and appear nowhere else")


def _generate_one(image: ImageAnnotations, kind: str, prompt: dict, teacher: Teacher, seed: int) -> dict:
    """The outcome for one image: `record`, `rejected` (with the reply), or `failed` (the teacher's error)."""
    outcome, reply = {"image_id": image.id, "kind": kind}, None
    try:
        if not image.captions:
            raise InstructionDataError("the image has no captions")
        context = symbolic_context(image, prompt.get("boxes", True), prompt.get("rounded", False))
        reply = teacher.chat(teacher_messages(prompt, context))
        pairs = parse_reply(kind, reply, prompt, random.Random(f"{seed}:{kind}:{image.id}"))
        record = to_record(image, f"{image.id}-{kind}", pairs)
        validate_record(record)
        return {**outcome, "record": record}
    except InstructionDataError as error:
        return {**outcome, "rejected": str(error), "reply": reply}
    except TeacherError as error:
        return {**outcome, "failed": str(error)}


def _read_progress(path: Path, kind: str) -> dict[str, dict]:
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):  # a line cut short by a crash: drop it, its image is generated again
        data = data[: data.rfind(b"\n") + 1]
        with path.open("r+b") as handle:
            handle.truncate(len(data))
    outcomes = {}
    for number, line in enumerate(data.decode().splitlines(), start=1):
        try:
            outcome = json.loads(line)
        except json.JSONDecodeError as error:
            raise InstructionDataError(
                f"{str(path)!r} line {number} is not JSON ({error}): fix or delete that line to resume."
            ) from error
        if outcome["kind"] != kind:
            raise InstructionDataError(
                f"{str(path)!r} line {number} is a {outcome['kind']!r} outcome, not {kind!r}: use another --output."
            )
        outcomes[outcome["image_id"]] = outcome
    return outcomes


def _write_atomically(path: Path, data: object) -> None:
    staging = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")  # unique per writer
    staging.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    staging.replace(path)


@dataclass
class Summary:
    """What a run produced, for the report printed at its end."""

    kind: str
    images: int
    reused: int
    records: list[dict]
    rejected: list[dict]
    failed: list[dict]
    output: Path

    def report(self) -> str:
        pairs = sum(len(record["conversations"]) // 2 for record in self.records)
        earlier = f", {self.reused} of them done by an earlier run" if self.reused else ""
        lines = [f"{self.kind}: {len(self.records)} records ({pairs} question-answer pairs) from {self.images} images"]
        lines[0] += earlier
        if self.rejected:
            lines.append(f"rejected {len(self.rejected)} (all in {self.output}.rejected.json):")
            lines += [f"  {item['image_id']}: {item['rejected']}" for item in self.rejected[:10]]
        if self.failed:
            lines.append(f"failed {len(self.failed)} (teacher errors), the first: {self.failed[0]['failed']}")
            lines.append(f"{self.output} is not written yet: run the same command again to retry them.")
        else:
            lines.append(f"written to {self.output}")
        return "\n".join(lines)


def generate(
    kind: str,
    images: list[ImageAnnotations],
    teacher: Teacher,
    output: str | Path,
    workers: int = 8,
    seed: int = 0,
    prompts: str | Path | None = None,
) -> Summary:
    """Has the teacher write a `kind` record for every image, resuming from `OUTPUT.progress.jsonl`; with `prompts`
    (the original's prompt folder) its system message and few-shot examples instead of this project's."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    progress = Path(f"{output}.progress.jsonl")
    prompt = load_prompt(kind) if prompts is None else load_prompt_folder(prompts, kind)
    done = _read_progress(progress, kind)
    reused = sum(image.id in done for image in images)
    todo = [image for image in images if image.id not in done]
    failed = []
    work = partial(_generate_one, kind=kind, prompt=prompt, teacher=teacher, seed=seed)
    with progress.open("a") as sink:
        for outcome in chat_concurrently(work, todo, workers, desc=f"{kind} data"):
            if "failed" in outcome:
                failed.append(outcome)
                continue
            done[outcome["image_id"]] = outcome
            sink.write(json.dumps(outcome, ensure_ascii=False) + "\n")
            sink.flush()
    outcomes = [done[image.id] for image in images if image.id in done]
    records = [outcome["record"] for outcome in outcomes if "record" in outcome]
    rejected = [outcome for outcome in outcomes if "rejected" in outcome]
    if not failed:
        _write_atomically(Path(f"{output}.rejected.json"), rejected)
        _write_atomically(output, records)
    return Summary(kind, len(images), reused, records, rejected, failed, output)


def expand_stage1(images: list[ImageAnnotations], output: str | Path, seed: int = 0) -> Summary:
    """The paper's stage-1 data: per image, a random caption answering a random brief-description instruction."""
    output, questions = Path(output), load_prompt("stage1")["questions"]
    records, rejected = [], []
    for image in images:
        rng = random.Random(f"{seed}:stage1:{image.id}")
        try:
            if not image.captions:
                raise InstructionDataError("the image has no captions")
            record = to_record(image, image.id, [(rng.choice(questions), rng.choice(image.captions))])
            validate_record(record)
            records.append(record)
        except InstructionDataError as error:
            rejected.append({"image_id": image.id, "kind": "stage1", "rejected": str(error)})
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(Path(f"{output}.rejected.json"), rejected)
    _write_atomically(output, records)
    return Summary("stage1", len(images), 0, records, rejected, [], output)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kind",
        choices=[*KINDS, "stage1"],
        help="instruction type written by the teacher, or stage1 (captions + brief instructions, no teacher)",
    )
    parser.add_argument("--captions", required=True, help="COCO captions JSON, e.g. captions_train2017.json")
    parser.add_argument("--instances", help="COCO instances JSON (the boxes); needed by the teacher's types")
    parser.add_argument("--output", required=True, help="the LLaVA JSON file to write")
    parser.add_argument("--limit", type=int, help="only the first N images by id (a trial run)")
    parser.add_argument("--seed", type=int, default=0, help="draws the instructions and stage-1 captions")
    parser.add_argument(
        "--prompts",
        type=Path,
        help="the original's prompt folder (playground/data/prompts: system message and few-shot examples per type) "
        "instead of this project's prompts",
    )
    add_teacher_arguments(parser, "teacher", required=False)


def run(args: argparse.Namespace) -> None:
    images = read_coco(args.captions, args.instances)[: args.limit]
    if args.kind == "stage1":
        summary = expand_stage1(images, args.output, args.seed)
    else:
        teacher = teacher_from_args(args, "teacher")
        summary = generate(args.kind, images, teacher, args.output, args.teacher_workers, args.seed, args.prompts)
        print(f"Teacher calls: {teacher.calls} made, {teacher.cache_hits} from the cache.")
    print(summary.report())
    if summary.failed:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="llava generate-data",
        description="LLaVA instruction data from COCO annotations, written by a teacher (or stage-1 expansion).",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.kind != "stage1" and (args.teacher_model is None or args.instances is None):
        parser.error(f"{args.kind} needs --teacher-model and --instances")
    if args.kind == "stage1" and args.prompts is not None:
        parser.error("--prompts is for the teacher's types; stage1 asks no teacher")
    try:
        run(args)
    except (InstructionDataError, TeacherError) as error:  # unreadable annotations, an unusable teacher or cache
        print(f"llava generate-data: {error}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = [
    "ImageAnnotations",
    "InstructionDataError",
    "Summary",
    "expand_stage1",
    "generate",
    "load_prompt_folder",
    "main",
    "parse_reply",
    "read_coco",
    "symbolic_context",
    "teacher_messages",
    "validate_record",
]
