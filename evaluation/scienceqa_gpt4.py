"""The paper's GPT-4 ensemble on ScienceQA (Table 7: 82.69 GPT-4, 90.97 "complement", 92.53 "GPT-4 as the judge").

Three commands, each the counterpart of a piece of the original's paper-era code (commit 8959d5c, April 2023,
unchanged to ce1aa08):

- `llava eval scienceqa-gpt4 DIR --teacher-url URL --teacher-model NAME --output GPT4.json`: the text-only teacher
  baseline. Each question is asked as the original's `build_prompt_gpt4`
  (`scripts/convert_sqa_to_llava_base_prompt.py`) builds the chat: the system message `You are a helpful assistant.`,
  then per shot a user turn `Can you explain <input>?` and the assistant's worked answer, then the test question and
  an assistant turn `Answer:` (the prompt ends with it, as there). Line breaks of lectures and solutions are written
  as a backslash and `n`, the context is the hint or `N/A` (no caption: text only). The shots are drawn as
  ScienceQA's `models/run_gpt3.py` draws them (`random.seed(seed)`, `random.sample(train pids, shots)`; its paper
  run: 2 shots, seed 3, `QCM-ALE`). GPT4.json is `run_gpt3.py`'s result file (`acc`, `correct`, `count`,
  `shot_qids`, `args`, `results`, `outputs`), which the original's ensemble scripts read (`outputs`).
- `llava eval scienceqa-requery DIR --ours OURS.jsonl --gpt4 GPT4.json --judge-url URL --judge-model NAME --output
  REQUERY.jsonl`: asks the judge only where the model's and the teacher's answers (as read below) differ, and writes
  its replies as answer lines (`question_id`, `prompt`, `text`), the file `eval_science_qa_gpt4_requery.py` reads as
  `--requery-result`. The original released no re-query prompt: `REQUERY_PROMPT` is written after the paper's
  description (§5.2: where the two answers differ, GPT-4 is asked again for its own final answer given the question
  and both outcomes); `--prompt FILE` replaces it (fields `{question}`, `{ours}`, `{gpt4}`).
- `llava eval scienceqa-ensemble DIR --ours OURS.jsonl --gpt4 GPT4.json [--requery REQUERY.jsonl] --output
  RESULT.json`: the figures in percent. Without `--requery` as `llava/eval/eval_science_qa_gpt4.py` counts them (a
  problem missing from either file is skipped; `complement`: the teacher's answer, the model's where the teacher's is
  unreadable; `upper_bound`: either is right, after that replacement); with it as
  `llava/eval/eval_science_qa_gpt4_requery.py` does (every problem must be answered by both; `judge`: the re-query's
  answer, the model's where there is no re-query line or it is unreadable; `upper_bound` with the teacher's own,
  possibly random, answer). `ours`, `gpt4` and `gpt4_no_answer` (unreadable teacher answers) are counted the same way.

An answer is read as the scripts read it: `The answer is X` followed by any one character, found exactly once;
otherwise, or for a letter past the problem's choices, a random option (`get_pred_idx`), drawn in the scripts' order
(per problem: ours, the teacher's, then the re-query's) from `random.Random(--seed)`: the figures equal the scripts'
run after `random.seed(seed)`.
"""

import argparse
import json
import random
from pathlib import Path

from processing.scienceqa_data import INPUT_LAYOUTS, LETTERS, OUTPUT_LAYOUTS, ScienceQAError, read_release
from processing.teacher import Teacher, add_teacher_arguments, chat_concurrently, teacher_from_args

from .results import read_answers, read_json, write_json
from .scienceqa import FAILED, pick, read_letter

SYSTEM = "You are a helpful assistant."
# run_gpt3.py's settings of the paper's run (models/paper.sh: --shot_number 2 --prompt_format QCM-ALE --seed 3).
SHOTS, SHOT_SEED, TEACHER_FORMAT = 2, 3, "QCM-ALE"
# create_one_example_gpt4 knows the paper's formats but LEPA.
TEACHER_FORMATS = tuple(f"{i}-{o}" for i in INPUT_LAYOUTS for o in OUTPUT_LAYOUTS if OUTPUT_LAYOUTS[o] is not None)
REQUERY_PROMPT = (
    "Here is a multiple-choice science question, and two answers to it that disagree. Assistant 1 saw the question's "
    "image (if it has one); Assistant 2 read only its text.\n\n"
    "{question}\n\n"
    "Assistant 1: {ours}\n\n"
    "Assistant 2: {gpt4}\n\n"
    "Based on the question and these two answers, give your own final answer. End your reply with "
    '"The answer is X." where X is the letter of the option.'
)


def teacher_input(problem: dict, prompt_format: str) -> tuple[str, dict]:
    """The question part of `create_one_example_gpt4`'s user turn (inside `Can you explain ...?`), and the parts its
    answer is written from."""
    parts = {
        "question": problem["question"],
        "context": problem["hint"].strip() or "N/A",
        "choices": " ".join(f"({LETTERS[i]}) {choice}" for i, choice in enumerate(problem["choices"])),
        "answer": LETTERS[problem["answer"]],
        # get_lecture_text / get_solution_text: "\\n" so that the model writes its explanation on one line.
        "lecture": (problem.get("lecture") or "").replace("\n", "\\n"),
        "solution": (problem.get("solution") or "").replace("\n", "\\n"),
    }
    return INPUT_LAYOUTS[prompt_format.split("-")[0]].format(**parts).replace("  ", " ").strip(), parts


def _example(problem: dict, prompt_format: str, test: bool) -> list[dict]:
    text, parts = teacher_input(problem, prompt_format)
    output = "Answer:" if test else OUTPUT_LAYOUTS[prompt_format.split("-")[1]].format(**parts)
    output = output.replace("  ", " ").strip()
    if output.endswith("BECAUSE:"):
        output = output.replace("BECAUSE:", "").strip()
    return [{"role": "user", "content": f"Can you explain {text}?"}, {"role": "assistant", "content": output}]


def teacher_messages(problems: dict, shot_pids: list[str], pid: str, prompt_format: str = TEACHER_FORMAT) -> list:
    """`build_prompt_gpt4(problems, shot_pids, pid, args)`: the chat that asks the teacher problem `pid`."""
    if prompt_format not in TEACHER_FORMATS:
        raise ScienceQAError(f"Unknown teacher prompt format {prompt_format!r}; known: {', '.join(TEACHER_FORMATS)}.")
    messages = [{"role": "system", "content": SYSTEM}]
    for shot in shot_pids:
        messages += _example(problems[shot], prompt_format, test=False)
    return messages + _example(problems[pid], prompt_format, test=True)


def draw_shots(train_pids: list[str], shots: int, rng: random.Random) -> list[str]:
    """The shot pids `run_gpt3.py` draws after `random.seed(seed)`: `random.sample(train_pids, shots)`."""
    return rng.sample(train_pids, shots)


def ask_teacher(
    teacher: Teacher,
    data: str | Path,
    output: str | Path,
    split: str = "test",
    prompt_format: str = TEACHER_FORMAT,
    shots: int = SHOTS,
    shot_seed: int = SHOT_SEED,
    workers: int = 8,
) -> dict:
    """Asks the teacher every problem of `split` and writes `run_gpt3.py`'s result file to `output`."""
    problems, pids = read_release(data, split)
    _, train = read_release(data, "train")
    if len(train) < shots:
        raise ScienceQAError(f"The train split of {str(data)!r} has {len(train)} problems: too few for {shots} shots.")
    rng = random.Random(shot_seed)  # run_gpt3.py's one stream: the shots, then a random option per unread reply
    shot_pids = draw_shots(train, shots, rng)
    messages = {pid: teacher_messages(problems, shot_pids, pid, prompt_format) for pid in pids}
    replies = dict(chat_concurrently(lambda pid: (pid, teacher.chat(messages[pid])), pids, workers, "teacher"))
    outputs = {pid: replies[pid].strip() for pid in pids}  # run_gpt3.py keeps the stripped reply
    results = {pid: pick(read_letter(outputs[pid]), len(problems[pid]["choices"]), rng) for pid in pids}
    correct = sum(results[pid] == problems[pid]["answer"] for pid in pids)
    written = {
        "acc": 100 * correct / len(pids) if pids else 0.0,
        "correct": correct,
        "count": len(pids),
        "shot_qids": shot_pids,
        "args": {"split": split, "prompt_format": prompt_format, "shot_number": shots, "seed": shot_seed},
        "results": results,
        "outputs": outputs,
    }
    write_json(output, written)
    return written


def _gpt4_outputs(path: str | Path) -> dict[str, str]:
    result = read_json(path, "GPT-4 result file")
    if not isinstance(result, dict) or not isinstance(result.get("outputs"), dict):
        raise ScienceQAError(f"{str(path)!r} has no 'outputs' object (pid -> reply): give run_gpt3.py's result file.")
    return {str(pid): str(text) for pid, text in result["outputs"].items()}


def _answer_texts(path: str | Path) -> dict[str, str]:
    return {str(line["question_id"]): line["text"] for line in read_answers(path)}  # a later line wins, as there


def requery(
    judge: Teacher,
    data: str | Path,
    ours: str | Path,
    gpt4: str | Path,
    output: str | Path,
    split: str = "test",
    prompt: str = REQUERY_PROMPT,
    workers: int = 8,
) -> int:
    """Asks the judge about every problem whose two answers read differently (one of them readable) and writes its
    replies to `output` as answer lines; returns how many were asked."""
    problems, pids = read_release(data, split)
    our_texts, gpt4_texts = _answer_texts(ours), _gpt4_outputs(gpt4)
    asked = [
        pid
        for pid in pids
        if pid in our_texts and pid in gpt4_texts and read_letter(our_texts[pid]) != read_letter(gpt4_texts[pid])
    ]
    prompts = {}
    for pid in asked:
        question, _ = teacher_input(problems[pid], "QCM-A")
        try:
            prompts[pid] = prompt.format(question=question, ours=our_texts[pid], gpt4=gpt4_texts[pid])
        except (KeyError, IndexError) as error:
            raise ScienceQAError(
                f"The re-query prompt names a field {error} it cannot be given: its fields are {{question}}, {{ours}} "
                "and {gpt4} (write a literal brace as {{ or }})."
            ) from None

    def ask(pid: str) -> tuple[str, str]:
        return pid, judge.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompts[pid]}])

    replies = dict(chat_concurrently(ask, asked, workers, "judge"))
    lines = [{"question_id": pid, "prompt": prompts[pid], "text": replies[pid].strip()} for pid in asked]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return len(asked)


def ensemble(
    problems: dict[str, dict],
    pids: list[str],
    ours: dict[str, str],
    gpt4: dict[str, str],
    requeried: dict[str, str] | None = None,
    seed: int = 0,
) -> dict:
    """The figures of `eval_science_qa_gpt4.py` (without `requeried`) or `eval_science_qa_gpt4_requery.py` (with it):
    `ours`, `gpt4`, `gpt4_no_answer`, `complement`, `upper_bound` and with it `judge`, in percent, and the counts."""
    rng = random.Random(seed)
    counts = dict.fromkeys(("total", "ours", "gpt4", "gpt4_no_answer", "complement", "upper_bound"), 0)
    if requeried is not None:
        counts |= {"judge": 0, "missing_requery": 0}
    for pid in pids:
        if pid not in ours or pid not in gpt4:
            if requeried is not None:  # the re-query script asserts that both answered every problem
                which = "--ours" if pid not in ours else "--gpt4"
                raise ScienceQAError(
                    f"Problem {pid!r} of the split has no answer in {which}: the re-query figures "
                    "count every problem (as eval_science_qa_gpt4_requery.py asserts)."
                )
            continue
        problem = problems[pid]
        num, answer = len(problem["choices"]), problem["answer"]
        our_letter, gpt4_letter = read_letter(ours[pid]), read_letter(gpt4[pid])
        our_index, gpt4_index = pick(our_letter, num, rng), pick(gpt4_letter, num, rng)
        counts["total"] += 1
        counts["ours"] += our_index == answer
        counts["gpt4"] += gpt4_index == answer
        no_answer = gpt4_letter == FAILED
        counts["gpt4_no_answer"] += no_answer
        counts["complement"] += (our_index if no_answer else gpt4_index) == answer
        if requeried is None:  # eval_science_qa_gpt4.py's upper bound: after the replacement
            counts["upper_bound"] += answer in (our_index if no_answer else gpt4_index, our_index)
            continue
        counts["missing_requery"] += pid not in requeried
        judge_letter = read_letter(requeried.get(pid, "MISSING"))
        judge_index = pick(judge_letter, num, rng)
        counts["judge"] += (our_index if judge_letter == FAILED else judge_index) == answer
        counts["upper_bound"] += answer in (gpt4_index, our_index)
    total = counts["total"]
    if total == 0:
        raise ScienceQAError("No problem of the split is answered in both --ours and --gpt4: nothing to count.")
    figures = {key: 100 * value / total for key, value in counts.items() if key not in ("total", "missing_requery")}
    return {**figures, "counts": counts, "seed": seed}


def score_ensemble(
    data: str | Path,
    ours: str | Path,
    gpt4: str | Path,
    output: str | Path,
    requery_file: str | Path | None = None,
    split: str = "test",
    seed: int = 0,
) -> dict:
    """Reads the three files, counts the figures (`ensemble`) and writes them to `output`."""
    problems, pids = read_release(data, split)
    requeried = None if requery_file is None else _answer_texts(requery_file)
    result = ensemble(problems, pids, _answer_texts(ours), _gpt4_outputs(gpt4), requeried, seed)
    result |= {"split": split, "ours_file": str(ours), "gpt4_file": str(gpt4), "requery_file": requery_file}
    write_json(output, {**result, "requery_file": None if requery_file is None else str(requery_file)})
    return result


def _teacher_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="the ScienceQA release folder (problems.json, pid_splits.json)")
    parser.add_argument("--output", required=True, help="the result file (run_gpt3.py's JSON: outputs, results, ...)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--prompt-format", default=TEACHER_FORMAT, choices=TEACHER_FORMATS, metavar="FORMAT")
    parser.add_argument("--shots", type=int, default=SHOTS, help="worked examples from the train split")
    parser.add_argument("--shot-seed", type=int, default=SHOT_SEED, help="run_gpt3.py's --seed: draws the shots")
    add_teacher_arguments(parser, "teacher")
    parser.set_defaults(run=_run_teacher, teacher_temperature=0.0, teacher_max_tokens=512)  # run_gpt3.py's


def _run_teacher(args: argparse.Namespace) -> None:
    written = ask_teacher(
        teacher_from_args(args, "teacher"),
        args.data,
        args.output,
        args.split,
        args.prompt_format,
        args.shots,
        args.shot_seed,
        args.teacher_workers,
    )
    print(f"Teacher: {written['correct']}/{written['count']} right ({written['acc']:.2f}%). Written to {args.output}")


def _requery_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="the ScienceQA release folder (problems.json, pid_splits.json)")
    parser.add_argument("--ours", required=True, help="the model's answer file (model_vqa_science.py's lines)")
    parser.add_argument("--gpt4", required=True, help="the teacher's result file (llava eval scienceqa-gpt4)")
    parser.add_argument("--output", required=True, help="the re-query answer file (JSON lines)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--prompt", type=Path, help="a prompt text with {question}, {ours} and {gpt4}")
    add_teacher_arguments(parser, "judge")
    parser.set_defaults(run=_run_requery, judge_temperature=0.0)


def _run_requery(args: argparse.Namespace) -> None:
    prompt = REQUERY_PROMPT
    if args.prompt is not None:
        if not args.prompt.is_file():
            raise ScienceQAError(f"Prompt file {str(args.prompt)!r} does not exist.")
        prompt = args.prompt.read_text(encoding="utf-8")
    judge = teacher_from_args(args, "judge")
    asked = requery(judge, args.data, args.ours, args.gpt4, args.output, args.split, prompt, args.judge_workers)
    print(f"Asked the judge about {asked} problems where the two answers differ. Written to {args.output}")


def _ensemble_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="the ScienceQA release folder (problems.json, pid_splits.json)")
    parser.add_argument("--ours", required=True, help="the model's answer file (model_vqa_science.py's lines)")
    parser.add_argument("--gpt4", required=True, help="the teacher's result file (run_gpt3.py's JSON)")
    parser.add_argument("--requery", help="the judge's answer file (llava eval scienceqa-requery)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random option for an unreadable answer")
    parser.add_argument("--output", required=True, help="the figures, in percent (JSON)")
    parser.set_defaults(run=_run_ensemble)


def _run_ensemble(args: argparse.Namespace) -> None:
    result = score_ensemble(args.data, args.ours, args.gpt4, args.output, args.requery, args.split, args.seed)
    names = ("ours", "gpt4", "gpt4_no_answer", "complement", "judge", "upper_bound")
    print(f"ScienceQA {args.split}, {result['counts']['total']} problems: ", end="")
    print(", ".join(f"{name} {result[name]:.2f}%" for name in names if name in result))
    print(f"Written to {args.output}")


def add_commands(commands) -> None:
    """Adds `scienceqa-gpt4`, `scienceqa-requery` and `scienceqa-ensemble` to `llava eval`'s subcommands."""
    _teacher_command(commands.add_parser("scienceqa-gpt4", help="ScienceQA: the text-only 2-shot teacher baseline"))
    _requery_command(
        commands.add_parser("scienceqa-requery", help="ScienceQA: a judge where model and teacher differ")
    )
    _ensemble_command(commands.add_parser("scienceqa-ensemble", help="ScienceQA: the paper's ensemble figures"))


__all__ = [
    "REQUERY_PROMPT",
    "add_commands",
    "ask_teacher",
    "draw_shots",
    "ensemble",
    "pick",
    "read_letter",
    "requery",
    "score_ensemble",
    "teacher_messages",
]
