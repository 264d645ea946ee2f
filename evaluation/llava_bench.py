"""`llava eval llava-bench`: LLaVA-Bench's relative score, the model's answers judged against reference answers.

Data are LLaVA-Bench's files: questions (`{"question_id", "image", "text", "category"}` per line), image contexts
(`{"id" or "image", "caption"}`: the textual stand-in for the image that the judge reads) and reference answers
(`{"question_id", "text"}`), with the images in `--image-folder` (default: `images/` beside the questions; a path
leading outside it is refused unless `--allow-images-outside-folder`; a row without a field it needs is named by
file and line). The model answers greedily, the images decoded as training decodes them; the judge (any
OpenAI-compatible endpoint, or a local causal LM: `processing/teacher.py`) sees the context, the question, the
reference as answer 1 and the model's answer as answer 2, scores each 1-10 for helpfulness, relevance, accuracy and
detail, and writes the two scores on its first line.

Paper mode (`--scoring paper`, the default) scores as the original release (`eval_gpt_review_bench.py`,
`summarize_gpt_review.py`): the judge's prompts come from the benchmark's rule file (`--rules`, the release's
`rule.json`: per category a role and a prompt; without it the plugin's own prompts are used and the results say so),
one reply per question, its first line split on single spaces after commas become spaces, anything but two numbers
kept as -1, -1 and averaged in like any score, the means rounded to 3 decimals before the relative score
100 x model / reference, rounded to 1. `--scoring strict` is the plugin's own: a reply without two readable scores
(`7 5`, `7, 5`, `(7.5, 5)`) is asked again (`--judge-attempts` in all), then listed and left out. Either way an
unreadable reply is listed in the results, and a run with no readable reply at all is an error. A category's
relative score is over its questions, "overall" over all questions pooled.

Judge calls are cached on disk (`--judge-cache`): an interrupted run, run again, pays only for the calls it had not
made (greedy answers come out the same). `OUTPUT/llava_bench_answers.jsonl` holds the answers;
`OUTPUT/llava_bench_results.json` (written whole at the end) holds `scoring`, `judge_prompts`, `overall`,
`categories` (relative scores), `scores` (mean scores and counts), `unparseable`, `reviews` and `model_index`
(`EvalResult` kwargs).
"""

import argparse
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from hub_cards.model_card import OWN_JUDGE_PROMPTS, refresh_card_after_eval
from processing.conversation import user_message
from processing.generation import add_decoding_arguments, generate_greedy, load_llava
from processing.llava_data import outside_folder
from processing.teacher import (
    Message,
    Teacher,
    TeacherError,
    add_teacher_arguments,
    chat_concurrently,
    teacher_from_args,
)

RESULTS_NAME = "llava_bench_results.json"
ANSWERS_NAME = "llava_bench_answers.jsonl"
CATEGORIES = {"conv": "conversation", "conversation": "conversation", "detail": "detail", "complex": "complex"}
# The rule-file key of each category, as the original's judge script names them.
RULE_KEYS = {"conversation": "llava_bench_conv", "detail": "llava_bench_detail", "complex": "llava_bench_complex"}
PAPER_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
JUDGE_SYSTEM = (
    "You judge answers to questions about an image. You cannot see the image; a written description of it stands in "
    "for it. You are fair and exact, and the order in which answers are shown never sways you."
)
JUDGE_TASK = (
    "Rate how well each answer serves the user who asked the question about this image: its helpfulness, relevance, "
    "accuracy (checked against the image description) and level of detail. Give each answer one overall score "
    "from 1 to 10, higher being better.\n"
    "Write the two scores, answer 1's then answer 2's, alone on the first line, separated by a space (for example: "
    "7 5). From the second line on, explain the scores."
)
_SCORE_LINE = re.compile(r"^\s*\(?\s*(\d+(?:\.\d+)?)\s*[,\s]\s*(\d+(?:\.\d+)?)\s*\)?\s*$")


class LlavaBenchError(ValueError):
    """Data or judgements that cannot be scored; the message names the file, record or question."""


@dataclass
class Question:
    """One benchmark question with what the judge needs beside the model's answer: the context and the reference."""

    question_id: str
    image: Path
    text: str
    category: str
    context: str
    reference: str


def read_jsonl(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """The rows of a JSON-lines file, blank lines skipped, each an object holding `fields`; a bad line is named by its
    number."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise LlavaBenchError(f"Cannot read {str(path)!r}: {error}") from error
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise LlavaBenchError(f"{str(path)!r} line {number} is not valid JSON: {error}") from error
        missing = [field for field in fields if field not in row] if isinstance(row, dict) else list(fields)
        if missing:
            raise LlavaBenchError(f"{str(path)!r} line {number} has no {', '.join(map(repr, missing))}.")
        rows.append(row)
    return rows


def load_questions(
    questions: str | Path,
    context: str | Path,
    reference: str | Path,
    image_folder: str | Path | None = None,
    allow_outside: bool = False,
) -> list[Question]:
    """The benchmark's questions, each with its image path, image context and reference answer.

    An image path leading outside `image_folder` (`../`, an absolute path) is refused unless `allow_outside`."""
    image_folder = Path(image_folder) if image_folder else Path(questions).parent / "images"
    contexts = {}
    for row in read_jsonl(context, ("caption",)):
        caption = row["caption"]
        text = "\n".join(caption) if isinstance(caption, list) else caption
        contexts.update({str(row[key]): text for key in ("id", "image") if key in row})
    references = {str(row["question_id"]): row["text"] for row in read_jsonl(reference, ("question_id", "text"))}
    loaded = []
    for row in read_jsonl(questions, ("question_id", "image", "text", "category")):
        question_id, image = str(row["question_id"]), str(row["image"])
        if not allow_outside and outside_folder(image, image_folder):
            raise LlavaBenchError(
                f"Question {question_id}: image {image!r} lies outside the image folder {str(image_folder)!r}; allow "
                "that with --allow-images-outside-folder."
            )
        found = contexts.get(image, contexts.get(Path(image).stem))
        if found is None:
            raise LlavaBenchError(f"Question {question_id}: no context for image {image!r} in {str(context)!r}.")
        if question_id not in references:
            raise LlavaBenchError(f"Question {question_id}: no reference answer in {str(reference)!r}.")
        if not (image_folder / image).is_file():
            raise LlavaBenchError(f"Question {question_id}: image {str(image_folder / image)!r} does not exist.")
        category = CATEGORIES.get(row["category"], row["category"])
        loaded.append(
            Question(question_id, image_folder / image, row["text"], category, found, references[question_id])
        )
    return loaded


def load_rules(path: str | Path) -> dict[str, dict[str, str]]:
    """The judge prompts of a rule file in the original release's format (`{key: {"role", "prompt"}}`)."""
    try:
        rules = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LlavaBenchError(f"Rule file {str(path)!r} cannot be read as JSON: {error}") from error
    for key in RULE_KEYS.values():
        if not isinstance(rules.get(key), dict) or not {"role", "prompt"} <= rules[key].keys():
            raise LlavaBenchError(f"Rule file {str(path)!r} has no {key!r} entry with a 'role' and a 'prompt'.")
    return rules


def judge_messages(question: Question, answer: str, rules: dict | None = None) -> list[Message]:
    """What the judge reads: the image description, the question, the reference (1) and the model's answer (2).

    With `rules`, exactly the original's messages: its system line, and the category's role and prompt."""
    if rules is not None:
        rule = rules[RULE_KEYS.get(question.category, f"llava_bench_{question.category}")]
        role = rule["role"]
        content = (
            f"[Context]\n{question.context}\n\n[Question]\n{question.text}\n\n"
            f"[{role} 1]\n{question.reference}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n[System]\n{rule['prompt']}\n\n"
        )
        return [{"role": "system", "content": PAPER_SYSTEM}, {"role": "user", "content": content}]
    content = (
        f"[Image description]\n{question.context}\n\n[Question]\n{question.text}\n\n"
        f"[Answer 1]\n{question.reference}\n[End of answer 1]\n\n[Answer 2]\n{answer}\n[End of answer 2]\n\n"
        f"[Task]\n{JUDGE_TASK}"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}]


def parse_scores(review: str) -> tuple[float, float] | None:
    """The two scores on a review's first line (`7 5`, `7, 5`, `(7.5, 5)`), or None when it has no such line."""
    first_line = review.strip().split("\n", 1)[0]
    match = _SCORE_LINE.match(first_line)
    if not match:
        return None
    scores = float(match.group(1)), float(match.group(2))
    return scores if all(0 <= score <= 10 for score in scores) else None


def paper_scores(review: str) -> tuple[float, float]:
    """The two scores as the original's `parse_score` reads them: the first line, commas as spaces, split on single
    spaces; anything but exactly two numbers is (-1, -1)."""
    parts = review.split("\n")[0].replace(",", " ").split(" ")
    try:
        return (float(parts[0]), float(parts[1])) if len(parts) == 2 else (-1.0, -1.0)
    except ValueError:
        return (-1.0, -1.0)


def judge(
    teacher: Teacher, question: Question, answer: str, attempts: int = 3, rules: dict | None = None, paper=True
) -> dict:
    """Paper mode: one reply, read as the original reads it. Strict: up to `attempts` replies until one has two
    readable scores (else `scores` is None). Every reply is kept."""
    replies = []
    for attempt in range(1 if paper else attempts):
        try:
            replies.append(teacher.chat(judge_messages(question, answer, rules), attempt=attempt))
        except TeacherError as error:
            raise LlavaBenchError(
                f"Question {question.question_id}: the judge failed ({error}). The replies already received are "
                "cached: run the same command again to continue."
            ) from error
        scores = paper_scores(replies[-1]) if paper else parse_scores(replies[-1])
        if scores is not None:
            break
    return {
        "question_id": question.question_id,
        "category": question.category,
        "answer": answer,
        "scores": scores,
        "replies": replies,
    }


def summarize(judgements: list[dict], paper: bool = True) -> dict:
    """Mean scores and relative score (100 x model / reference) per category and overall (all questions pooled).

    Paper mode: every judgement, (-1, -1) included, means rounded to 3 decimals, the relative score to 1, as the
    original's `summarize_gpt_review.py`. Strict: readable judgements only, unrounded."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for judgement in judgements:
        if judgement["scores"] is not None:
            groups.setdefault(judgement["category"], []).append(judgement["scores"])
            groups.setdefault("overall", []).append(judgement["scores"])
    scores, relative = {}, {}
    for group, pairs in groups.items():
        reference = sum(pair[0] for pair in pairs) / len(pairs)
        model = sum(pair[1] for pair in pairs) / len(pairs)
        if paper:
            reference, model = round(reference, 3), round(model, 3)
        scores[group] = {"reference": reference, "model": model, "count": len(pairs)}
        if reference:  # the original divides whatever the means are: all (-1, -1) gives 100.0
            relative[group] = round(100 * model / reference, 1) if paper else 100 * model / reference
    return {"overall": relative.pop("overall", None), "categories": relative, "scores": scores}


def model_index(overall: float) -> list[dict]:
    """`huggingface_hub.EvalResult` keyword arguments for the model card's `model-index`."""
    return [
        {
            "task_type": "image-text-to-text",
            "dataset_type": "liuhaotian/llava-bench-in-the-wild",
            "dataset_name": "LLaVA-Bench (In-the-Wild)",
            "metric_type": "relative_score",
            "metric_name": "relative score (judge)",
            "metric_value": round(overall, 1),
        }
    ]


def _write(path: Path, text: str) -> None:
    staging = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")  # unique per writer
    staging.write_text(text)
    staging.replace(path)


def evaluate(
    model_path: str,
    questions: list[Question],
    teacher: Teacher,
    output_dir: str | Path,
    attempts: int = 3,
    workers: int = 8,
    batch_size: int = 8,
    max_new_tokens: int = 1024,
    device: str | None = None,
    static_cache: bool | None = None,
    rules: str | Path | None = None,
    scoring: str = "paper",
    dtype: str = "auto",
    quantization: str | None = None,
    template: str | None = None,
) -> dict:
    """Answers the questions, has the judge score them, writes the answers and `llava_bench_results.json`."""
    paper = scoring == "paper"
    rule_prompts = load_rules(rules) if rules is not None else None
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model, processor = load_llava(model_path, device, dtype=dtype, quantization=quantization, template=template)
    answers = generate_greedy(
        model,
        processor,
        [[user_message(question.text, images=1)] for question in questions],
        [question.image for question in questions],
        batch_size,
        max_new_tokens,
        desc="answering",
        static_cache=static_cache,
        ids=[question.question_id for question in questions],
    )
    rows = [
        {"question_id": q.question_id, "prompt": q.text, "text": a, "model_id": str(model_path)}
        for q, a in zip(questions, answers, strict=True)
    ]
    _write(output_dir / ANSWERS_NAME, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    pairs = list(zip(questions, answers, strict=True))
    judgements = list(
        chat_concurrently(lambda pair: judge(teacher, *pair, attempts, rule_prompts, paper), pairs, workers, "judging")
    )
    order = {question.question_id: index for index, question in enumerate(questions)}
    judgements.sort(key=lambda judgement: order[judgement["question_id"]])
    unparseable = [j for j in judgements if j["scores"] in (None, (-1.0, -1.0))]
    summary = summarize(judgements, paper)
    if summary["overall"] is None and len(unparseable) < len(judgements):
        raise LlavaBenchError(
            f"The judge's mean score of the reference answers is 0 ({summary['scores']}): no relative score can be "
            "computed. Check the judge's replies in the cache."
        )
    if len(unparseable) == len(judgements):
        raise LlavaBenchError(
            f"None of the {len(judgements)} judgements has two readable scores on its first line (questions "
            f"{', '.join(j['question_id'] for j in unparseable[:10])}); the first reply was: "
            f"{unparseable[0]['replies'][0][:200]!r}."
        )
    results = {
        "model": str(model_path),
        "judge": teacher.backend.name,
        "scoring": scoring,
        "judge_prompts": f"rule file {str(rules)!r}" if rules is not None else OWN_JUDGE_PROMPTS,
        **summary,
        "num_questions": len(questions),
        "unparseable": [{k: j[k] for k in ("question_id", "category", "replies")} for j in unparseable],
        "reviews": [
            {
                "question_id": j["question_id"],
                "category": j["category"],
                "answer": j["answer"],
                "reference_score": j["scores"][0],
                "model_score": j["scores"][1],
                "review": j["replies"][-1],
            }
            for j in judgements
            if j["scores"] is not None
        ],
        "model_index": model_index(summary["overall"]),
    }
    _write(output_dir / RESULTS_NAME, json.dumps(results, indent=2, ensure_ascii=False))
    return results


def print_report(results: dict, teacher: Teacher, path: Path) -> None:
    print(
        f"LLaVA-Bench relative score ({results['scoring']} scoring, judge {results['judge']}, judge prompts: "
        f"{results['judge_prompts']}): {results['overall']:.1f}"
    )
    for category, value in results["categories"].items():
        scores = results["scores"][category]
        print(
            f"  {category:<13}{value:6.1f}  ({scores['model']:.2f} / {scores['reference']:.2f}, {scores['count']} q.)"
        )
    if results["unparseable"]:
        listed = ", ".join(item["question_id"] for item in results["unparseable"])
        fate = "kept as -1, -1 as the original does" if results["scoring"] == "paper" else "left out"
        print(f"{len(results['unparseable'])} judge replies had no readable scores, {fate}: {listed}")
    print(f"Judge calls: {teacher.calls} made, {teacher.cache_hits} from the cache. Written to {path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="LLaVA checkpoint (folder or Hub id)")
    parser.add_argument("--questions", required=True, help="questions.jsonl")
    parser.add_argument("--context", required=True, help="context.jsonl: the image descriptions the judge reads")
    parser.add_argument("--reference", required=True, help="reference answers (jsonl)")
    parser.add_argument("--image-folder", help="default: images/ beside the questions file")
    parser.add_argument(
        "--allow-images-outside-folder", action="store_true", help="read image paths that lead outside the folder"
    )
    parser.add_argument("--output-dir", help=f"where {RESULTS_NAME} goes (default: the model folder, for its card)")
    parser.add_argument("--rules", help="the release's rule.json: the judge prompts of the paper (default: our own)")
    parser.add_argument(
        "--scoring",
        choices=["paper", "strict"],
        default="paper",
        help="paper: as the original scripts; strict: ask again for unreadable replies, leave them out",
    )
    parser.add_argument("--judge-attempts", type=int, default=3, help="strict scoring: asks per question")
    parser.add_argument("--overwrite-card", action="store_true", help="regenerate a model card edited by hand")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    add_decoding_arguments(parser)
    add_teacher_arguments(parser, "judge")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if args.output_dir is None and not Path(args.model).is_dir():
        raise LlavaBenchError(f"{args.model!r} is not a local folder: say where the results go with --output-dir.")
    output_dir = Path(args.output_dir or args.model)
    questions = load_questions(
        args.questions, args.context, args.reference, args.image_folder, args.allow_images_outside_folder
    )
    teacher = teacher_from_args(args, "judge")
    results = evaluate(
        args.model,
        questions,
        teacher,
        output_dir,
        args.judge_attempts,
        args.judge_workers,
        args.batch_size,
        args.max_new_tokens,
        args.device,
        args.static_cache,
        args.rules,
        args.scoring,
        dtype=args.dtype,
        quantization=args.quantization,
        template=args.template,
    )
    print_report(results, teacher, output_dir / RESULTS_NAME)
    print(refresh_card_after_eval(output_dir, args.overwrite_card))


__all__ = [
    "LlavaBenchError",
    "Question",
    "evaluate",
    "judge",
    "load_questions",
    "load_rules",
    "paper_scores",
    "parse_scores",
    "summarize",
]
