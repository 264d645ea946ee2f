"""`llava eval scienceqa`: ScienceQA-IMG as LLaVA-1.5 reports it (71.6 for LLaVA-1.5-13B), with the paper's columns.

Equals the original's `llava/eval/eval_science_qa.py` at LLaVA-1.5's release (commit ce1aa08), which
`scripts/v1_5/eval/sqa.sh` runs on the answers of `llava/eval/model_vqa_science.py --single-pred-prompt`:

- Questions (`--data`: the ScienceQA release folder, `problems.json` + `pid_splits.json` + images in
  `images/<split>/<pid>/` or `<split>/<pid>/`; or a LLaVA question file with the release files beside it): by default
  laid out as `eval.zip`'s `llava_test_CQM-A.json` lays them out (`processing.scienceqa_data.llava15_question`);
  `--prompt-layout base` asks the paper's base-prompt `CQM-A` instead (`Context: ...\\nQuestion: ...\\nOptions: (A)
  ...`, as `convert_sqa_to_llava.py` writes it). A question file is asked as it is written. As `model_vqa_science.py`
  does, `<image>` is taken out of the text, the image shown first, and `Answer with the option's letter from the given
  choices directly.` appended on its own line; answered greedily, up to 1024 new tokens, into
  `OUTPUT/scienceqa_answers.jsonl` in its shape (`question_id`, `prompt` = `<image>\\n` for an image question + the
  text + the instruction, `text`, ...), resumably.
- Scoring (of those answers, or of any answer file in that shape with `--answers FILE`): every problem of the split
  counts; an answer is read only by the original's three shapes, on the text as written (not stripped): the whole
  text is a letter A-E; or it starts with `X. `; or `The answer is X` followed by any one character occurs exactly
  once. A letter past the problem's choices, an unreadable answer and a problem without an answer count wrong (the
  1.5-era scorer has no random fallback: its `random.choice` is dead code after `return -1`). A question is an image
  question when its answer's `prompt` holds `<image>`, as the original decides it.

`OUTPUT/scienceqa_results.json` (the shape of `evaluation.results`): `score`, the IMG accuracy in percent (the
original's `IMG-Accuracy`); `parts`: `Total` and `IMG-Accuracy` as the original prints them and ScienceQA's own columns
(its `tools/evaluate_acc.py`: subject NAT / SOC / LAN; context TXT (a non-empty hint), IMG (an image), NO (neither);
grades G1-6 / G7-12; Average), each `{"accuracy": percent, "correct", "count"}`; and for the model card `scoring`,
`accuracy` (a fraction), `columns` (fractions), `column_counts`, `split`; `unparseable`, `missing` and
every `prediction`. `--lenient` adds a separately labelled score read by a tolerant parser.

`--protocol v1` is the paper's (90.92%): `scripts/sqa_eval_batch.sh` (537be72, April 2023) and the
`model_vqa_science.py` / `eval_science_qa.py` of 8959d5c..9fffc4f. The question file is asked as written (its first
human turn, `<image>` taken out and stripped; from a release folder, `QCM-LEPA` records as `llava data scienceqa`
writes them), no instruction appended, the image after the text (`text\\n<image>`, the answer line's `prompt`
likewise), in the `simple` conversation of its `--conv-mode simple` (`--template` to choose another), sampled at
temperature 0.7 from `--seed`, up to
1024 new tokens, stopped at `###`; then the answer prompter, which the original runs on every answer when
`--answer-prompter` is given (the paper's script gives it, and a `QCM-LEPA` model stops at the `###` before its
answer): the prompt, the reasoning, ` ###\\nANSWER:`, up to 64 more tokens, and the text `reasoning` +
`\\n The answer is ` + that. Scored as that era's `eval_science_qa.py`: only the problems with an answer count, an
answer is read only by `The answer is X.` found once, and an unread one (or a letter past the choices) is a random
option, drawn from `random.Random(--seed)` as the script draws from `random` (two draws per problem; the first
decides), counted apart as `random_choices`; `score` is the accuracy over the answered problems, and the results go to
`OUTPUT/scienceqa_v1_results.json`, the answers to `OUTPUT/scienceqa_v1_answers.jsonl` (the reasoning and the
prompter's continuations in `scienceqa_v1_reasoning.jsonl` / `scienceqa_v1_prompter.jsonl`, each resumable).
`--protocol v1-rerun` is the August 2023 rerun (273f4d4): `QCM-LEA`, `llava_v1`, temperature 0.2, the image first, no
prompter. `simple` (a LLaVA system prompt and a "Hi!" exchange, the prompt ending at the human turn's `###`) is not
the conversation the paper's checkpoints were trained in (`v0`); the model writes `Assistant: ` itself, and the
answer keeps it, as the paper's released predictions do.
"""

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import set_seed

from hub_cards.model_card import refresh_card_after_eval
from modeling_llava import use_template
from processing.conversation import user_message
from processing.generation import add_decoding_arguments, load_llava
from processing.llava_data import outside_folder
from processing.scienceqa_data import (
    LETTERS,
    PROMPT_FORMATS,
    ScienceQAError,
    llava15_question,
    llava_record,
    read_release,
)

from .predict import Question, answer_file, model_name
from .results import read_answers, results_path, write_results, write_whole
from .sharding import all_done, process_device, process_share

NAME = "scienceqa"
RESULTS_NAME = results_path(".", NAME).name
ANSWERS_NAME = "scienceqa_answers.jsonl"
INSTRUCTION = "Answer with the option's letter from the given choices directly."
LAYOUTS = ("llava-1.5", "base")
COLUMNS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Average")
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
# eval_science_qa.py's options, a list: its tests are membership in it ("AB" is no option), never substring tests.
OPTIONS = tuple(LETTERS)
# Verbatim from eval_science_qa.py: the "." is any one character, and it must be there.
_PAPER_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
FAILED = "FAILED"

# The letter stays upper case, so that "a" in prose never counts. Leading: "A", "(A)", "A.", "A. text", "(A) text",
# "A\ntext", "Answer: A"; else one letter in "The answer is A." (a reply that names two has no answer).
_LEADING_LETTER = re.compile(r"^(?:Answer:\s*)?\(?([A-Z])(?:\)?\.?$|[.)]\s|\)?\.?\n)")
_THE_ANSWER_IS = re.compile(r"[Tt]he answer is:?\s*\(?([A-Z])\b")


@dataclass(frozen=True)
class Protocol:
    """How one era of the original asks and scores ScienceQA."""

    name: str
    layout: str  # the question layout asked from a release folder
    instruction: str | None  # appended on its own line to every question (`--single-pred-prompt`)
    max_new_tokens: int
    template: str | None = None  # the script's --conv-mode; None: the checkpoint's own
    temperature: float = 0.0
    answer_prompter: bool = False  # the second pass after ` ###\nANSWER:` (`--answer-prompter`)
    image_last: bool = False  # the image after the question text, as model_vqa_science.py of April 2023 placed it
    benchmark: str = NAME  # the results file's name


# scripts/v1_5/eval/sqa.sh: llava_test_CQM-A.json, --single-pred-prompt, --temperature 0, --conv-mode vicuna_v1;
# model_vqa_science.py: max_new_tokens=1024.
LLAVA_1_5 = Protocol("1.5", "llava-1.5", INSTRUCTION, 1024)
# The paper's run: scripts/sqa_eval_batch.sh (537be72) asks llava_test_QCM-LEPA.json with --answer-prompter and
# model_vqa_science.py (8959d5c..9fffc4f): sampled at temperature 0.7, up to 1024 new tokens (64 after the prompter),
# the image after the question, the paper's `###` conversation.
V1 = Protocol("v1", "QCM-LEPA", None, 1024, "simple", 0.7, True, True, "scienceqa-v1")
# The August 2023 rerun: sqa_eval_batch.sh (273f4d4) asks llava_test_QCM-LEA.json with --conv-mode llava_v1 and no
# prompter; model_vqa_science.py (181a2f8..ce1aa08) samples at 0.2 with the image first.
V1_RERUN = Protocol("v1-rerun", "QCM-LEA", None, 1024, "llava_v1", 0.2, False, False, "scienceqa-v1")
PROTOCOLS = {protocol.name: protocol for protocol in (LLAVA_1_5, V1, V1_RERUN)}
# model_vqa_science.py's answer prompter: the reasoning, then this, then up to 64 new tokens.
PROMPTER_CUE, PROMPTER_TOKENS, PROMPTER_JOIN = " ###\nANSWER:", 64, "\n The answer is "


def question_text(pid: str, problem: dict, layout: str) -> str:
    """The question of a release problem in a layout, without `<image>`, as `model_vqa_science.py` reads it from the
    question file (`value.replace('<image>', '').strip()`)."""
    if layout == "llava-1.5":
        text = llava15_question(problem)
    elif layout == "base" or layout in PROMPT_FORMATS:
        text = llava_record(pid, problem, "CQM-A" if layout == "base" else layout)["conversations"][0]["value"]
    else:
        raise ScienceQAError(
            f"Unknown prompt layout {layout!r}; the layouts are {', '.join(LAYOUTS)} and the paper's prompt formats."
        )
    return text.replace("<image>", "").strip()


def problem_columns(problem: dict) -> tuple[str, ...]:
    """The paper's columns a problem counts in, as ScienceQA's scorer decides them: a hint (any non-empty string, even
    whitespace) and an image count in both TXT and IMG; NO is neither."""
    has_text, has_image = bool(problem.get("hint")), bool(problem.get("image"))
    columns = [SUBJECTS[problem["subject"]]]
    columns += ["TXT"] * has_text + ["IMG"] * has_image + ["NO"] * (not (has_text or has_image))
    grade = int(problem["grade"].removeprefix("grade"))
    return (*columns, "G1-6" if grade <= 6 else "G7-12", "Average")


def paper_choice(text: str, num_choices: int) -> int | None:
    """The option index `eval_science_qa.py` reads from an answer's text as written, else None."""
    if text in OPTIONS:
        letter = text
    elif len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _PAPER_ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else None  # two matches fail even when they agree
    return OPTIONS.index(letter) if letter in OPTIONS[:num_choices] else None


def read_letter(text: str) -> str:
    """The letter the paper-era scripts (`eval_science_qa.py` before ce1aa08, the ensemble scripts) read from an
    answer: `The answer is X` and any one character, found exactly once; else `FAILED`."""
    found = _PAPER_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else FAILED


def pick(letter: str, num_choices: int, rng: random.Random) -> int:
    """Their `get_pred_idx`: the letter's option index, or a random option for FAILED or a letter past the choices."""
    if letter in OPTIONS[:num_choices]:
        return OPTIONS.index(letter)
    return rng.choice(range(num_choices))


class PaperEraChoice:
    """`read_choice` of the v1 protocol, as the paper-era `eval_science_qa.py` (8959d5c..22477ae) reads an answer:
    `read_letter`, and a random option (from `random.Random(seed)`, the scorer's `random` after `random.seed(seed)`)
    where it reads none. The scorer calls `get_pred_idx` twice per problem (the second draw fills its `results`, the
    first decides), so two options are drawn: the figures equal the script's for the same seed."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def __call__(self, text: str, num_choices: int) -> int:
        letter = read_letter(text)
        choice = pick(letter, num_choices, self.rng)
        pick(letter, num_choices, self.rng)
        return choice


def lenient_choice(text: str, num_choices: int) -> int | None:
    """The option index an answer names by a tolerant reading (`--lenient`), or None."""
    text = text.strip()
    match = _LEADING_LETTER.match(text)
    if match:
        letter = match.group(1)
    else:
        letters = set(_THE_ANSWER_IS.findall(text))
        if len(letters) != 1:
            return None
        letter = letters.pop()
    index = ord(letter) - ord("A")
    return index if index < num_choices else None


def _release(data: Path, split: str) -> tuple[Path, dict[str, dict], list[str]]:
    if not data.exists():
        raise ScienceQAError(
            f"{str(data)!r} does not exist: give the ScienceQA release folder or LLaVA's question file."
        )
    root = data if data.is_dir() else data.parent
    problems, pids = read_release(root, split)
    for pid in pids:
        problem = problems[pid]
        if problem.get("subject") not in SUBJECTS or not re.fullmatch(
            r"grade([1-9]|1[0-2])", str(problem.get("grade"))
        ):
            raise ScienceQAError(
                f"Problem {pid!r}: subject {problem.get('subject')!r} / grade {problem.get('grade')!r} is not one of "
                f"{sorted(SUBJECTS)} / grade1..grade12."
            )
    return root, problems, pids


def _image_path(root: Path, split: str, relative: str, pid: str, allow_outside: bool) -> Path:
    folders = [root / "images" / split, root / split]
    if not allow_outside and all(outside_folder(relative, folder) for folder in folders):
        raise ScienceQAError(
            f"Problem {pid!r}: image {relative!r} lies outside the image folder {str(folders[0])!r}; allow that with "
            "--allow-images-outside-folder."
        )
    candidates = [folder / relative for folder in folders]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ScienceQAError(
        f"Problem {pid!r} has an image, but neither {' nor '.join(repr(str(c)) for c in candidates)} exists."
    )


def _question(pid: str, text: str, image: Path | None, protocol: Protocol) -> Question:
    """A question as `model_vqa_science.py` asks it: the image first, the instruction on the last line; its `prompt`
    is the answer line's (`<image>\\n` + text + instruction). With `protocol.image_last` (April 2023) the image comes
    after the text and a line break, and the `prompt` is text + `\\n<image>`."""
    if protocol.instruction:
        text = f"{text}\n{protocol.instruction}"
    if image is None:
        return Question(pid, text, [user_message(text)], None)
    if protocol.image_last:
        content = [{"type": "text", "text": f"{text}\n"}, {"type": "image"}]
        return Question(pid, f"{text}\n<image>", [{"role": "user", "content": content}], str(image))
    return Question(pid, f"<image>\n{text}", [user_message(text, images=1)], str(image))


def read_questions(
    data: str | Path,
    split: str = "test",
    layout: str | None = None,
    protocol: Protocol = LLAVA_1_5,
    allow_outside: bool = False,
) -> list[Question]:
    """The questions of `split` of a release folder in `layout` (default: the protocol's), or those of a LLaVA
    question file (`{"id", "image"?, "conversations"}`, its first turn asked as written) with the release beside it."""
    data = Path(data)
    root, problems, pids = _release(data, split)
    if data.is_dir():
        layout = layout or protocol.layout
        records = [
            (
                pid,
                question_text(pid, problems[pid], layout),
                None if problems[pid].get("image") is None else f"{pid}/{problems[pid]['image']}",
            )
            for pid in pids
        ]
    elif layout is not None:
        raise ScienceQAError(
            f"{str(data)!r} is a question file, asked as written: --prompt-layout is for a release folder."
        )
    else:
        records = [_file_record(data, index, record, problems) for index, record in enumerate(_read_list(data))]
    return [
        _question(pid, text, image and _image_path(root, split, image, pid, allow_outside), protocol)
        for pid, text, image in records
    ]


def _read_list(path: Path) -> list:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ScienceQAError(f"{str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(records, list):
        raise ScienceQAError(f"{str(path)!r} must hold a list of LLaVA records ({{'id', 'conversations', ...}}).")
    return records


def _file_record(path: Path, index: int, record, problems: dict) -> tuple[str, str, str | None]:
    if not isinstance(record, dict) or "id" not in record:
        raise ScienceQAError(f"{str(path)!r}: question #{index} has no 'id' (a pid of problems.json).")
    pid = str(record["id"])
    if pid not in problems:
        raise ScienceQAError(f"{str(path)!r}: question {pid!r} is not in problems.json beside it.")
    turns = record.get("conversations")
    first = turns[0] if isinstance(turns, list) and turns else None
    if not isinstance(first, dict) or not isinstance(first.get("value"), str):
        raise ScienceQAError(f"{str(path)!r}: question {pid!r} has no first turn with a 'value' (the question text).")
    return pid, first["value"].replace("<image>", "").strip(), record.get("image")


def score(answers: list[dict], problems: dict[str, dict], pids: list[str], read_choice=paper_choice) -> dict:
    """Scores answer lines on the problems `pids` as `eval_science_qa.py` does, with ScienceQA's columns beside."""
    by_id = {answer["question_id"]: answer for answer in answers}  # a later line for a question wins, as there
    predictions, missing = [], []
    correct, counts = dict.fromkeys(COLUMNS, 0), dict.fromkeys(COLUMNS, 0)
    image_correct = image_count = 0
    for pid in pids:
        problem = problems[pid]
        answer = by_id.get(pid)
        if answer is None:
            missing.append(pid)
        text, prompt = ("FAILED", "Unknown") if answer is None else (answer["text"], answer["prompt"])
        choice = read_choice(text, len(problem["choices"])) if isinstance(text, str) else None
        hit = choice == problem["answer"]
        for column in problem_columns(problem):
            counts[column] += 1
            correct[column] += hit
        if isinstance(prompt, str) and "<image>" in prompt:
            image_count += 1
            image_correct += hit
        predictions.append(
            {
                "pid": pid,
                "output": text,
                "choice": None if choice is None else LETTERS[choice],
                "answer": LETTERS[problem["answer"]],
                "correct": hit,
            }
        )
    total = sum(p["correct"] for p in predictions)
    parts = {
        "Total": _part(total, len(pids)),
        "IMG-Accuracy": _part(image_correct, image_count),
        **{column: _part(correct[column], counts[column]) for column in COLUMNS if counts[column]},
    }
    return {
        "score": parts["IMG-Accuracy"]["accuracy"],
        "parts": parts,
        "accuracy": total / len(pids) if pids else 0.0,
        "columns": {column: correct[column] / counts[column] for column in COLUMNS if counts[column]},
        "column_counts": counts,
        "num_questions": len(pids),
        "missing": missing,
        "unparseable": [{"pid": p["pid"], "output": p["output"]} for p in predictions if p["choice"] is None],
        "predictions": predictions,
    }


def _part(correct: int, count: int) -> dict:
    return {"accuracy": 100 * correct / count if count else None, "correct": correct, "count": count}


def score_v1(answers: list[dict], problems: dict[str, dict], pids: list[str], seed: int = 0) -> dict:
    """Scores answer lines as the paper-era `eval_science_qa.py` (8959d5c..22477ae) does: only the problems that have
    an answer count, an answer is read by `read_letter` alone, and an unread one is a random option (`PaperEraChoice`);
    `random_choices` lists the problems so decided. `score` is the accuracy over all answered problems (the paper's
    90.92), with ScienceQA's columns beside."""
    answered = {str(answer["question_id"]) for answer in answers}
    counted = [pid for pid in pids if pid in answered]
    results = score(answers, problems, counted, PaperEraChoice(seed))
    randomized = [
        {"pid": p["pid"], "output": p["output"]}
        for p in results["predictions"]
        if read_letter(p["output"]) not in OPTIONS[: len(problems[p["pid"]]["choices"])]
    ]
    missing = [pid for pid in pids if pid not in answered]
    return results | {"score": results["parts"]["Total"]["accuracy"], "missing": missing, "random_choices": randomized}


def score_file(
    answers: str | Path,
    data: str | Path,
    output_dir: str | Path,
    split: str = "test",
    lenient: bool = False,
    model: str | None = None,
    protocol: Protocol = LLAVA_1_5,
    seed: int = 0,
) -> dict:
    """Scores an answer file in `model_vqa_science.py`'s shape against the release as `protocol`'s scorer does and
    writes the results file."""
    lines = read_answers(answers, ("question_id", "prompt", "text"))
    _, problems, pids = _release(Path(data), split)
    results = score(lines, problems, pids) if protocol is LLAVA_1_5 else score_v1(lines, problems, pids, seed)
    extra = {key: value for key, value in results.items() if key not in ("score", "parts")}
    extra |= {"scoring": "paper", "protocol": protocol.name, "split": split, "answers": str(answers), "model": model}
    if protocol is not LLAVA_1_5:
        extra["seed"] = seed
    if lenient:
        extra["lenient"] = {
            k: v for k, v in score(lines, problems, pids, lenient_choice).items() if k != "predictions"
        }
    write_results(output_dir, protocol.benchmark, results["score"], results["parts"], **extra)
    return {"score": results["score"], "parts": results["parts"], **extra}


def _prompted(reasoning: dict, question: Question, joiner: str) -> Question:
    """The answer prompter's question: the original's prompt + reasoning + ` ###\\nANSWER:`. Under `simple` the
    prompt ends with the human turn's `###` and the reasoning (which starts with the `Assistant: ` the model wrote)
    follows it directly; a template with a generation prompt (`v0`'s `Assistant:`) is joined by a space (`joiner`)."""
    return Question(
        question.question_id,
        question.prompt,
        question.messages,
        question.image,
        {},
        f"{joiner}{reasoning['text']}{PROMPTER_CUE}",
    )


def answer_v1(
    questions: list[Question],
    output_dir: Path,
    load,
    model_id: str,
    protocol: Protocol,
    batch_size: int,
    max_new_tokens: int,
    temperature: float,
    answer_prompter: bool,
    static_cache: bool | None,
    template: str | None = None,
) -> Path:
    """Answers as the v1 protocol's `model_vqa_science.py` does, resumably, and returns the answer file: sampled at
    `temperature`; with `answer_prompter`, each reasoning (in `scienceqa_v1_reasoning.jsonl`) is continued after
    ` ###\\nANSWER:` for up to 64 tokens (`scienceqa_v1_prompter.jsonl`) and the answer line's text is the reasoning,
    `\\n The answer is ` and that continuation, as the original joins them."""
    answers = output_dir / f"{protocol.benchmark.replace('-', '_')}_answers.jsonl"
    first = output_dir / "scienceqa_v1_reasoning.jsonl" if answer_prompter else answers
    answer_file(questions, first, load, model_id, batch_size, max_new_tokens, temperature, static_cache=static_cache)
    if not answer_prompter:
        return answers
    rank, world = process_share()
    if world > 1:
        all_done(0)  # process 0 has merged the reasoning of every process
    reasoning = {str(line["question_id"]): line for line in read_answers(first)}
    joiner = "" if template == "simple" else " "  # `simple` has no generation prompt
    prompted = [_prompted(reasoning[str(question.question_id)], question, joiner) for question in questions]
    second = output_dir / "scienceqa_v1_prompter.jsonl"
    answer_file(prompted, second, load, model_id, batch_size, PROMPTER_TOKENS, temperature, static_cache=static_cache)
    if rank != 0:
        return answers
    continued = {str(line["question_id"]): line["text"] for line in read_answers(second)}
    lines = [
        reasoning[key] | {"text": reasoning[key]["text"] + PROMPTER_JOIN + continued[key]}
        for key in (str(question.question_id) for question in questions)
    ]
    write_whole(answers, lambda staging: staging.write_text("".join(json.dumps(line) + "\n" for line in lines)))
    return answers


def evaluate(
    model_path: str,
    data: str | Path,
    output_dir: str | Path,
    split: str = "test",
    layout: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = LLAVA_1_5.max_new_tokens,
    device: str | None = None,
    static_cache: bool | None = None,
    lenient: bool = False,
    allow_images_outside_folder: bool = False,
    dtype: str = "auto",
    quantization: str | None = None,
    template: str | None = None,
    protocol: Protocol = LLAVA_1_5,
    temperature: float | None = None,
    answer_prompter: bool | None = None,
    seed: int = 0,
) -> dict:
    """Answers the questions of `split` that the answer file does not answer yet, then scores it. The v1 protocols
    answer in their template (`template` overrides it), sampled at their temperature (or `temperature`) from
    `seed`, with their answer prompter (or `answer_prompter`)."""
    questions = read_questions(data, split, layout, protocol, allow_images_outside_folder)
    template = template or protocol.template
    output_dir = Path(output_dir)

    loaded = []  # the prompter's pass answers with the model of the first

    def load():
        if not loaded:
            model, processor = load_llava(model_path, process_device(device), dtype=dtype, quantization=quantization)
            if template is not None:  # the script's --conv-mode; the in-place variant keeps April's image after text
                use_template(processor, template, image_in_place=protocol.image_last)
            loaded.append((model, processor))
        if protocol is not LLAVA_1_5:
            set_seed(seed)  # each pass from the seed: a pass answered again after a stop samples what it sampled
        return loaded[0]

    if protocol is LLAVA_1_5:
        answers = output_dir / ANSWERS_NAME
        answer_file(
            questions, answers, load, model_name(model_path), batch_size, max_new_tokens, static_cache=static_cache
        )
    else:
        temperature = protocol.temperature if temperature is None else temperature
        prompter = protocol.answer_prompter if answer_prompter is None else answer_prompter
        answers = answer_v1(
            questions,
            output_dir,
            load,
            model_name(model_path),
            protocol,
            batch_size,
            max_new_tokens,
            temperature,
            prompter,
            static_cache,
            template,
        )
    if process_share()[0] != 0:  # process 0 scores the merged answers
        return {}
    return score_file(answers, data, output_dir, split, lenient, str(model_path), protocol, seed)


def print_report(results: dict, path: Path) -> None:
    parts = results["parts"]
    total, image = parts["Total"], parts["IMG-Accuracy"]
    image_text = "n/a (no answer's prompt holds <image>)" if image["accuracy"] is None else f"{image['accuracy']:.2f}%"
    print(
        f"ScienceQA {results['split']}: Total: {total['count']}, Correct: {total['correct']}, "
        f"Accuracy: {total['accuracy']:.2f}%, IMG-Accuracy: {image_text}"
    )
    print("  ".join(f"{column} {100 * value:.2f}" for column, value in results["columns"].items()))
    unread = [item["pid"] for item in results["unparseable"]]
    if results["missing"]:
        how = "not counted, as the paper-era scorer" if "random_choices" in results else "counted wrong"
        print(f"{len(results['missing'])} problems have no answer ({how}): {', '.join(results['missing'][:20])}")
    if "random_choices" in results:
        randomized = [item["pid"] for item in results["random_choices"]]
        listed = ", ".join(randomized[:20]) + (" ..." if len(randomized) > 20 else "")
        print(f"{len(randomized)} answers unread, decided by a random option (seed {results['seed']}): {listed}")
        unread = []
    if unread:
        listed = ", ".join(unread[:20]) + (" ..." if len(unread) > 20 else "")
        print(f"{len(unread)} answers the original's scorer cannot read (counted wrong; all in the results): {listed}")
    if "lenient" in results:
        print(f"Lenient reading (not the original's scoring): {100 * results['lenient']['accuracy']:.2f}%")
    print(f"Written to {path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="LLaVA checkpoint (folder or Hub id) to answer with; or --answers")
    parser.add_argument("--answers", help="score this answer file (model_vqa_science.py's JSON lines) instead")
    parser.add_argument("--data", required=True, help="ScienceQA release folder, or LLaVA's question file in one")
    parser.add_argument("--split", default="test", help="split of pid_splits.json (and the image folder's name)")
    parser.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default=LLAVA_1_5.name,
        help="1.5 (default: greedy, CQM-A with the letter instruction, IMG accuracy); v1 (the paper: QCM-LEPA, "
        "simple, sampled at 0.7, the answer prompter, a random option for an unread answer); v1-rerun (August 2023: "
        "QCM-LEA, llava_v1, sampled at 0.2)",
    )
    parser.add_argument(
        "--prompt-layout",
        choices=(*LAYOUTS, *PROMPT_FORMATS),
        metavar="LAYOUT",
        help="questions from a release folder: llava-1.5 (the 1.5 default; eval.zip's llava_test_CQM-A.json), base "
        "(the paper's base-prompt CQM-A) or one of the paper's prompt formats (QCM-LEPA, the v1 default, ...)",
    )
    parser.add_argument("--temperature", type=float, help="v1 protocols: sampling temperature (default: protocol's)")
    parser.add_argument(
        "--answer-prompter",
        action=argparse.BooleanOptionalAction,
        help="v1 protocols: the second pass after ' ###\\nANSWER:' (default: on for v1, off for v1-rerun)",
    )
    parser.add_argument("--seed", type=int, default=0, help="v1 protocols: seeds sampling and the random option")
    parser.add_argument(
        "--output-dir", help=f"where {RESULTS_NAME} and {ANSWERS_NAME} go (default: the model folder, for its card)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=LLAVA_1_5.max_new_tokens, help="default: %(default)s")
    parser.add_argument("--lenient", action="store_true", help="also score with a tolerant parser (labelled apart)")
    parser.add_argument("--overwrite-card", action="store_true", help="regenerate a model card edited by hand")
    parser.add_argument(
        "--allow-images-outside-folder", action="store_true", help="read image paths that lead outside the folders"
    )
    add_decoding_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if (args.model is None) == (args.answers is None):
        raise ScienceQAError("Give a checkpoint to answer with, or --answers FILE to score, not both.")
    protocol = PROTOCOLS[args.protocol]
    if protocol is LLAVA_1_5 and (args.temperature is not None or args.answer_prompter is not None):
        raise ScienceQAError("--temperature and --answer-prompter belong to --protocol v1 / v1-rerun (1.5 is greedy).")
    if args.answers is not None:
        if args.output_dir is None:
            raise ScienceQAError("Say where the results go with --output-dir.")
        results = score_file(
            args.answers, args.data, args.output_dir, args.split, args.lenient, protocol=protocol, seed=args.seed
        )
        print_report(results, results_path(args.output_dir, protocol.benchmark))
        return
    if args.output_dir is None and not Path(args.model).is_dir():
        raise ScienceQAError(f"{args.model!r} is not a local folder: say where the results go with --output-dir.")
    output_dir = args.output_dir or args.model
    results = evaluate(
        args.model,
        args.data,
        output_dir,
        args.split,
        args.prompt_layout,
        args.batch_size,
        args.max_new_tokens,
        args.device,
        args.static_cache,
        args.lenient,
        args.allow_images_outside_folder,
        dtype=args.dtype,
        quantization=args.quantization,
        template=args.template,
        protocol=protocol,
        temperature=args.temperature,
        answer_prompter=args.answer_prompter,
        seed=args.seed,
    )
    if not results:  # another process than the first: process 0 reports
        return
    print_report(results, results_path(output_dir, protocol.benchmark))
    print(refresh_card_after_eval(output_dir, args.overwrite_card))


__all__ = [
    "LLAVA_1_5",
    "PROTOCOLS",
    "V1",
    "V1_RERUN",
    "PaperEraChoice",
    "Protocol",
    "ScienceQAError",
    "evaluate",
    "lenient_choice",
    "paper_choice",
    "pick",
    "question_text",
    "read_letter",
    "read_questions",
    "score",
    "score_file",
    "score_v1",
]
