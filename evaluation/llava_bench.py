"""`llava eval llava-bench`: LLaVA-Bench's relative score, the model's answers judged against reference answers.

Two benchmarks, told apart by their context file:
- **LLaVA-Bench (COCO)**, the paper's Table 4: `qa90_questions.jsonl`, `qa90_gpt4_answer.jsonl` and
  `caps_boxes_coco2014_val_80.jsonl`, whose rows hold five `captions` and `instances` (`category`, `bbox`). The judge
  reads the captions, a blank line, then one `category: [x1, y1, x2, y2]` line per instance, as the original's
  `eval_gpt_review_visual.py` writes them, and the rule file's `conv` / `detail` / `complex` prompts. Images are COCO
  val2014's, found under either name (`000000441147.jpg` as the questions write it, or `COCO_val2014_000000441147.jpg`
  as the COCO release names it).
- **LLaVA-Bench (In-the-Wild)**, the paper's Table 5 and LLaVA-1.5's table: `questions.jsonl`, `answers_gpt4.jsonl`
  and `context.jsonl` (a `caption`, a string or a list of lines), judged with the `llava_bench_*` rule keys
  (`eval_gpt_review_bench.py`).

Images are in `--image-folder` (default: `images/` beside the questions; a path leading outside it is refused unless
`--allow-images-outside-folder`; a row without a field it needs is named by file and line). The model answers with
`llava predict`'s engine (`evaluation/predict.py`, the answer file in the original's `model_vqa` shape), greedily by
default; the judge (any OpenAI-compatible endpoint, or a local causal LM: `processing/teacher.py`) sees the context,
the question, the reference as answer 1 and the model's answer as answer 2, and writes the two scores on its first
line.

`--runs N` answers N times, sampled at `--temperature` (the paper-era `model_vqa.py` sampled at 0.7) from the seeds
`--seed`, `--seed + 1`, ..., and judges each run; `--judge-runs M` judges each decoding M times (the paper's LLaVA†
row). Each run's figures are the original's (below); the results give, per category and overall, their mean and
sample standard deviation, both to one decimal, as Table 5 prints `67.3 ± 2.0`.

Paper mode (`--scoring paper`, the default) scores as the original release (`summarize_gpt_review.py`): the judge's
prompts come from the benchmark's rule file (`--rules`, the user's copy of the release's `llava/eval/table/rule.json`;
without it the plugin's own prompts are used and the results say so), one reply per question, its first line split on
single spaces after commas become spaces, anything but two numbers kept as -1, -1 and averaged in like any score, the
means (numpy's) rounded to 3 decimals before the relative score 100 x model / reference, rounded to 1. `--scoring
strict` is the plugin's own: a reply without two readable scores (`7 5`, `7, 5`, `(7.5, 5)`) is asked again
(`--judge-attempts` in all), then listed and left out. Either way an unreadable reply is listed in the results, and a
run with no readable reply at all is an error. A category's relative score is over its questions, "overall" over all
questions pooled.

`--reviews R1.jsonl [R2.jsonl ...]` (no checkpoint) summarizes review files already written, by the original's
`eval_gpt_review_*.py` or by this command, as `summarize_gpt_review.py` does, one run per file.

Judge calls are cached on disk (`--judge-cache`): an interrupted run, run again, pays only for the calls it had not
made (the answers come out the same, seeded). The output folder gets the answers
(`llava_bench_answers.jsonl`, or `llava_bench_answers_<run>.jsonl` for several runs), the judge's reviews in the
original's review-file shape (`llava_bench_reviews.jsonl` or `llava_bench_reviews_<run>.jsonl`: the original's
`summarize_gpt_review.py` reads them) and `llava_bench_results.json` (`evaluation/results.py`'s shape, written whole
at the end): `score` (the overall relative score, or the mean over runs with `std` beside it), `parts` (per category
and `overall`: `score`, and for one run the mean `reference` and `model` scores and the `count`, for several runs
`std`, `runs` and `counts`; `parts.runs` lists the runs' overall figures), `dataset` (`coco` or `in-the-wild`),
`scoring`, `judge_prompts`, `unparseable`, the files written and `model_index` (`EvalResult` kwargs).
"""

import argparse
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hub_cards.model_card import LLAVA_BENCH_DATASETS, OWN_JUDGE_PROMPTS, refresh_card_after_eval
from processing.conversation import user_message
from processing.generation import add_decoding_arguments, load_llava
from processing.llava_data import outside_folder
from processing.teacher import (
    Message,
    Teacher,
    TeacherError,
    add_teacher_arguments,
    chat_concurrently,
    teacher_from_args,
)

from . import predict
from .results import results_path, write_results

NAME = "llava-bench"
RESULTS_NAME = results_path(".", NAME).name
ANSWERS_NAME = "llava_bench_answers.jsonl"
REVIEWS_NAME = "llava_bench_reviews.jsonl"
CATEGORIES = {"conv": "conversation", "conversation": "conversation", "detail": "detail", "complex": "complex"}
# Each category's name in the question files and rule keys (after the benchmark's prefix).
RULE_CATEGORIES = {"conversation": "conv", "detail": "detail", "complex": "complex"}
COCO_PREFIX = "COCO_val2014_"  # how the COCO release names the val2014 images that qa90_questions.jsonl names bare
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


@dataclass(frozen=True)
class Benchmark:
    """One of the two LLaVA-Benches: its key in `LLAVA_BENCH_DATASETS` and the prefix of its rule keys (the COCO
    judge script looks up a question's category as it is, the In-the-Wild one with `llava_bench_` before it)."""

    dataset: str
    rule_prefix: str

    @property
    def name(self) -> str:
        return f"LLaVA-Bench ({LLAVA_BENCH_DATASETS[self.dataset][0]})"

    def rule_key(self, category: str) -> str:
        return self.rule_prefix + RULE_CATEGORIES.get(category, category)


COCO = Benchmark("coco", "")
IN_THE_WILD = Benchmark("in-the-wild", "llava_bench_")


@dataclass
class Question:
    """One benchmark question with what the judge needs beside the model's answer: the context and the reference."""

    question_id: str
    image: Path
    text: str
    category: str
    context: str
    reference: str
    benchmark: Benchmark = IN_THE_WILD
    source_id: int | str | None = None  # the id as the question file writes it, for the answer and review files
    reference_id: int | str | None = None  # the reference's `answer_id` (else its question id), as the review's


def numbered_rows(path: str | Path) -> list[tuple[int, dict]]:
    """The JSON objects of a JSON-lines file with their line numbers, blank lines skipped; a bad line is named."""
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
        if not isinstance(row, dict):
            raise LlavaBenchError(f"{str(path)!r} line {number} is not a JSON object.")
        rows.append((number, row))
    return rows


def read_jsonl(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """The rows of a JSON-lines file, each an object holding `fields`; a row without one is named by its line."""
    rows = []
    for number, row in numbered_rows(path):
        missing = [field for field in fields if field not in row]
        if missing:
            raise LlavaBenchError(f"{str(path)!r} line {number} has no {', '.join(map(repr, missing))}.")
        rows.append(row)
    return rows


def read_contexts(path: str | Path) -> tuple[Benchmark, dict[str, str]]:
    """The benchmark a context file belongs to and the text the judge reads for each image (by `image` and `id`).

    COCO's rows (`captions`, `instances`) become the captions, one a line, a blank line, and one `category: bbox` line
    per instance, the box written as Python writes the list (`[0.37, 0.584, 0.504, 0.709]`), as the original's
    `eval_gpt_review_visual.py` renders them. In-the-Wild's `caption` is taken as it is (a list: one item a line)."""
    rows = numbered_rows(path)
    coco = ["captions" in row for _, row in rows]
    if any(coco) and not all(coco):
        line = rows[coco.index(not coco[0])][0]
        raise LlavaBenchError(
            f"{str(path)!r} mixes COCO rows ('captions', 'instances') with In-the-Wild rows ('caption'): line {line} "
            "differs from the first; give one benchmark's context file."
        )
    benchmark, contexts = (COCO if coco and coco[0] else IN_THE_WILD), {}
    for number, row in rows:
        needed = ("captions", "instances") if benchmark is COCO else ("caption",)
        missing = [field for field in needed if field not in row]
        if missing:
            raise LlavaBenchError(f"{str(path)!r} line {number} has no {', '.join(map(repr, missing))}.")
        if benchmark is COCO:
            try:
                boxes = "\n".join(f"{instance['category']}: {instance['bbox']}" for instance in row["instances"])
            except (KeyError, TypeError) as error:
                raise LlavaBenchError(
                    f"{str(path)!r} line {number}: every instance needs a 'category' and a 'bbox' ({error!r})."
                ) from error
            text = "\n".join(row["captions"]) + "\n\n" + boxes
        else:
            caption = row["caption"]
            text = "\n".join(caption) if isinstance(caption, list) else caption
        contexts.update({str(row[key]): text for key in ("id", "image") if key in row})
    return benchmark, contexts


def find_image(image_folder: Path, image: str, benchmark: Benchmark) -> Path | None:
    """The image file a question names, COCO's under either of its names; None when there is none."""
    names = [image]
    if benchmark is COCO:
        bare = image.removeprefix(COCO_PREFIX)
        names = [bare, COCO_PREFIX + bare]
    return next((image_folder / name for name in names if (image_folder / name).is_file()), None)


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
    benchmark, contexts = read_contexts(context)
    references = {str(row["question_id"]): row for row in read_jsonl(reference, ("question_id", "text"))}
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
        path = find_image(image_folder, image, benchmark)
        if path is None:
            also = f" (nor {COCO_PREFIX}{image.removeprefix(COCO_PREFIX)})" if benchmark is COCO else ""
            raise LlavaBenchError(f"Question {question_id}: image {str(image_folder / image)!r}{also} does not exist.")
        category = CATEGORIES.get(row["category"], row["category"])
        answer = references[question_id]
        loaded.append(
            Question(
                question_id,
                path,
                row["text"],
                category,
                found,
                answer["text"],
                benchmark,
                row["question_id"],
                answer.get("answer_id", answer["question_id"]),
            )
        )
    return loaded


def load_rules(path: str | Path, benchmark: Benchmark = IN_THE_WILD) -> dict[str, dict[str, str]]:
    """The judge prompts of a rule file in the original release's format (`{key: {"role", "prompt"}}`), checked to
    hold the benchmark's three keys."""
    try:
        rules = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LlavaBenchError(f"Rule file {str(path)!r} cannot be read as JSON: {error}") from error
    for key in map(benchmark.rule_key, RULE_CATEGORIES):
        if not isinstance(rules.get(key), dict) or not {"role", "prompt"} <= rules[key].keys():
            raise LlavaBenchError(
                f"Rule file {str(path)!r} has no {key!r} entry with a 'role' and a 'prompt' ({benchmark.name} needs "
                "it: give the release's llava/eval/table/rule.json)."
            )
    return rules


def judge_messages(question: Question, answer: str, rules: dict | None = None) -> list[Message]:
    """What the judge reads: the image description, the question, the reference (1) and the model's answer (2).

    With `rules`, exactly the original's messages: its system line, and the category's role and prompt."""
    if rules is not None:
        rule = rules[question.benchmark.rule_key(question.category)]
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
    teacher: Teacher,
    question: Question,
    answer: str,
    attempts: int = 3,
    rules: dict | None = None,
    paper: bool = True,
    judge_run: int = 0,
) -> dict:
    """Paper mode: one reply, read as the original reads it. Strict: up to `attempts` replies until one has two
    readable scores (else `scores` is None). Every reply is kept. Judge run `judge_run` asks under its own cache keys
    (`attempt` numbers from `judge_run * attempts`), so judging one answer again is a new call, and a rerun of the
    command finds every run's replies in the cache."""
    replies = []
    for attempt in range(1 if paper else attempts):
        try:
            replies.append(
                teacher.chat(judge_messages(question, answer, rules), attempt=judge_run * attempts + attempt)
            )
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


def summarize(judgements: list[dict], paper: bool = True) -> dict[str, dict]:
    """Per category and `overall` (all questions pooled; a judgement without a category counts there only): the mean
    `reference` and `model` scores, their `count` and the relative `score` 100 x model / reference (None where the
    reference's mean is 0).

    Paper mode: every judgement, (-1, -1) included, numpy's means rounded to 3 decimals, the relative score to 1, as
    the original's `summarize_gpt_review.py`. Strict: readable judgements only, unrounded."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for judgement in judgements:
        if judgement["scores"] is not None:
            if judgement["category"] is not None:
                groups.setdefault(judgement["category"], []).append(judgement["scores"])
            groups.setdefault("overall", []).append(judgement["scores"])
    parts = {}
    for group, pairs in groups.items():
        reference, model = np.asarray(pairs).mean(0).tolist()
        if paper:
            reference, model = round(reference, 3), round(model, 3)
        score = None
        if reference:  # the original divides whatever the means are: all (-1, -1) gives 100.0
            score = round(100 * model / reference, 1) if paper else 100 * model / reference
        parts[group] = {"score": score, "reference": reference, "model": model, "count": len(pairs)}
    return parts


def combine(runs: list[dict[str, dict]]) -> tuple[float, float | None, dict]:
    """The overall score, its std (None for one run) and the results' `parts`, from each run's `summarize`.

    Several runs: per category and overall, the mean and sample standard deviation (n - 1) of the runs' relative
    scores, both rounded to one decimal as the paper's Table 5 prints them; `runs` lists each run's figure and
    `counts` its number of questions; `parts["runs"]` is the list of the runs' overall figures."""
    if len(runs) == 1:
        return runs[0]["overall"]["score"], None, runs[0]
    parts = {}
    for group in dict.fromkeys(group for run in runs for group in run):
        figures = [run[group]["score"] for run in runs if group in run]
        known = [figure for figure in figures if figure is not None]
        parts[group] = {
            "score": round(statistics.fmean(known), 1) if known else None,
            "std": round(statistics.stdev(known), 1) if len(known) > 1 else None,
            "runs": figures,
            "counts": [run[group]["count"] if group in run else 0 for run in runs],
        }
    parts["runs"] = parts["overall"]["runs"]
    return parts["overall"]["score"], parts["overall"]["std"], parts


def read_reviews(path: str | Path) -> tuple[Benchmark, list[dict]]:
    """The benchmark and judgements of a review file as the original's `eval_gpt_review_*.py` write it (`category`,
    `tuple`; a line without a category counts in `overall` only, with its `tuple` or else its `score`, as
    `summarize_gpt_review.py` reads it)."""
    judgements, prefixes = [], set()
    for row in read_jsonl(path, ("question_id",)):
        scores = row.get("tuple") if "category" in row else row.get("tuple", row.get("score"))
        if not (isinstance(scores, list) and len(scores) == 2 and all(isinstance(s, int | float) for s in scores)):
            raise LlavaBenchError(
                f"Review file {str(path)!r}, question {row['question_id']!r}: no 'tuple' of two scores."
            )
        category = None
        if "category" in row:
            bare = str(row["category"]).removeprefix(IN_THE_WILD.rule_prefix)
            prefixes.add(bare != row["category"])
            category = CATEGORIES.get(bare, bare)
        judgements.append({"question_id": row["question_id"], "category": category, "scores": tuple(scores)})
    if len(prefixes) != 1:
        raise LlavaBenchError(
            f"Review file {str(path)!r} does not tell its benchmark: its categories must be all COCO's (conv, "
            "detail, complex) or all In-the-Wild's (llava_bench_conv, ...)."
        )
    return (IN_THE_WILD if prefixes.pop() else COCO), judgements


def review_lines(questions: list[Question], judgements: list[dict], answer_ids: list[str]) -> list[dict]:
    """A run's review file in the original's shape (`id`, `question_id`, `answer1_id`, `answer2_id`, `category` as
    its rule key names it, `content`, `tuple`), which the original's `summarize_gpt_review.py` reads. Strict mode's
    unreadable judgements, left out of the scores, are left out here too."""
    return [
        {
            "id": index + 1,
            "question_id": question.source_id,
            "answer1_id": question.reference_id,
            "answer2_id": answer_id,
            "category": question.benchmark.rule_key(question.category),
            "content": judgement["replies"][-1],
            "tuple": list(judgement["scores"]),
        }
        for index, (question, judgement, answer_id) in enumerate(zip(questions, judgements, answer_ids, strict=True))
        if judgement["scores"] is not None
    ]


def model_index(benchmark: Benchmark, score: float) -> list[dict]:
    """`huggingface_hub.EvalResult` keyword arguments for the model card's `model-index`."""
    return [
        {
            "task_type": "image-text-to-text",
            "dataset_type": LLAVA_BENCH_DATASETS[benchmark.dataset][1],
            "dataset_name": benchmark.name,
            "metric_type": "relative_score",
            "metric_name": "relative score (judge)",
            "metric_value": round(score, 1),
        }
    ]


def _run_names(count: int, name: str) -> list[str]:
    """`name` for one run, `name` with `_1`, `_2`, ... before its suffix for several."""
    stem, suffix = name.rsplit(".", 1)
    return [name] if count == 1 else [f"{stem}_{run}.{suffix}" for run in range(1, count + 1)]


def answer_runs(
    model_path: str,
    questions: list[Question],
    output_dir: Path,
    runs: int,
    seed: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    max_new_tokens: int,
    device: str | None,
    static_cache: bool | None,
    dtype: str,
    quantization: str | None,
    template: str | None = None,
) -> list[tuple[Path, list[dict]]]:
    """Each run's answer file, written afresh with `llava predict`'s engine, and its lines. Run `r` (from 0) is seeded
    with `seed + r`: the same seed and batch size give the same answers again."""
    from transformers import set_seed

    model, processor = load_llava(model_path, device, dtype=dtype, quantization=quantization, template=template)
    asked = [predict.Question(q.source_id, q.text, [user_message(q.text, images=1)], str(q.image)) for q in questions]
    answered = []
    for run, name in enumerate(tqdm(_run_names(runs, ANSWERS_NAME), desc="runs", disable=runs == 1)):
        path = output_dir / name
        path.unlink(missing_ok=True)  # a fresh run: a resumed sampled run would not continue its seed's answers
        set_seed(seed + run)
        predict.answer_questions(
            model,
            processor,
            asked,
            path,
            predict.model_name(model_path),
            batch_size,
            max_new_tokens,
            temperature,
            top_p,
            static_cache,
        )
        answered.append((path, read_jsonl(path, ("question_id", "text", "answer_id"))))
    return answered


def judge_answers(
    questions: list[Question], lines: list[dict], teacher: Teacher, judge_run: int, options: dict
) -> tuple[list[dict], dict[str, dict]]:
    """One judging of one answer file: the judgements in question order and their `summarize`; a run the judge
    could not score at all is an error."""
    pairs = [(question, line["text"]) for question, line in zip(questions, lines, strict=True)]

    def work(pair: tuple[Question, str]) -> dict:
        return judge(teacher, *pair, options["attempts"], options["rules"], options["paper"], judge_run)

    judgements = list(chat_concurrently(work, pairs, options["workers"], "judging"))
    order = {question.question_id: index for index, question in enumerate(questions)}
    judgements.sort(key=lambda judgement: order[judgement["question_id"]])
    unparseable = [j for j in judgements if j["scores"] in (None, (-1.0, -1.0))]
    if len(unparseable) == len(judgements):
        raise LlavaBenchError(
            f"None of the {len(judgements)} judgements has two readable scores on its first line (questions "
            f"{', '.join(j['question_id'] for j in unparseable[:10])}); the first reply was: "
            f"{unparseable[0]['replies'][0][:200]!r}."
        )
    summary = summarize(judgements, options["paper"])
    if summary["overall"]["score"] is None:
        raise LlavaBenchError(
            f"The judge's mean score of the reference answers is 0 ({summary['overall']}): no relative score can be "
            "computed. Check the judge's replies in the cache."
        )
    return judgements, summary


def check_runs(runs: int, temperature: float) -> None:
    """Several inference runs must sample: greedy ones would be one run judged several times, mislabelled."""
    if runs > 1 and temperature == 0:
        raise LlavaBenchError(
            f"--runs {runs} with greedy decoding gives the same answers {runs} times: sample with --temperature (the "
            "paper-era model_vqa.py sampled at 0.7), or judge one decoding several times with --judge-runs."
        )


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
    runs: int = 1,
    judge_runs: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> dict:
    """Answers the questions `runs` times, has the judge score each answer file `judge_runs` times, writes the
    answers, the reviews and `llava_bench_results.json`; returns the results."""
    check_runs(runs, temperature)
    benchmark = questions[0].benchmark
    options = {
        "attempts": attempts,
        "workers": workers,
        "paper": scoring == "paper",
        "rules": load_rules(rules, benchmark) if rules is not None else None,
    }
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    answered = answer_runs(
        model_path,
        questions,
        output_dir,
        runs=runs,
        seed=seed,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        device=device,
        static_cache=static_cache,
        dtype=dtype,
        quantization=quantization,
        template=template,
    )
    review_names = iter(_run_names(runs * judge_runs, REVIEWS_NAME))
    summaries, unparseable, reviews = [], [], []
    for decoding, (_, lines) in enumerate(answered, start=1):
        for judging in range(judge_runs):
            judgements, summary = judge_answers(questions, lines, teacher, judging, options)
            summaries.append(summary)
            path = output_dir / next(review_names)
            answer_ids = [line["answer_id"] for line in lines]
            path.write_text(
                "".join(json.dumps(line) + "\n" for line in review_lines(questions, judgements, answer_ids))
            )
            reviews.append({"file": str(path), "answers": decoding, "judging": judging + 1})
            unparseable += [
                {"run": len(summaries), **{k: j[k] for k in ("question_id", "category", "replies")}}
                for j in judgements
                if j["scores"] in (None, (-1.0, -1.0))
            ]
    score, std, parts = combine(summaries)
    write_results(
        output_dir,
        NAME,
        score,
        parts,
        std=std,
        dataset=benchmark.dataset,
        model=str(model_path),
        judge=teacher.backend.name,
        scoring=scoring,
        judge_prompts=f"rule file {str(rules)!r}" if rules is not None else OWN_JUDGE_PROMPTS,
        decoding={"temperature": temperature, "top_p": top_p, "seeds": [seed + run for run in range(runs)]},
        judge_runs=judge_runs,
        num_questions=len(questions),
        answers=[str(path) for path, _ in answered],
        reviews=reviews,
        unparseable=unparseable,
        model_index=model_index(benchmark, score),
    )
    return json.loads(results_path(output_dir, NAME).read_text())


def summarize_reviews(reviews: list[str | Path], output_dir: str | Path) -> dict:
    """Summarizes review files (one run each) as the original's `summarize_gpt_review.py`; several runs as `combine`
    does. Writes and returns the results."""
    read = [read_reviews(path) for path in reviews]
    benchmarks = {benchmark for benchmark, _ in read}
    if len(benchmarks) > 1:
        raise LlavaBenchError(f"The review files {list(map(str, reviews))} mix LLaVA-Bench COCO and In-the-Wild.")
    summaries = []
    for path, (_, judgements) in zip(reviews, read, strict=True):
        summary = summarize(judgements, paper=True)
        if summary["overall"]["score"] is None:
            raise LlavaBenchError(f"Review file {str(path)!r}: the reference's mean score is 0, no relative score.")
        summaries.append(summary)
    score, std, parts = combine(summaries)
    benchmark = benchmarks.pop()
    write_results(
        output_dir,
        NAME,
        score,
        parts,
        std=std,
        dataset=benchmark.dataset,
        scoring="paper",
        judge=None,
        judge_prompts=None,
        reviews=[{"file": str(path)} for path in reviews],
        model_index=model_index(benchmark, score),
    )
    return json.loads(results_path(output_dir, NAME).read_text())


def _figure(entry: dict) -> str:
    value = "-" if entry["score"] is None else f"{entry['score']:.1f}"
    return value + (f" ± {entry['std']:.1f}" if entry.get("std") is not None else "")


def print_report(results: dict, teacher: Teacher | None, path: Path) -> None:
    name = f"LLaVA-Bench ({LLAVA_BENCH_DATASETS[results['dataset']][0]})"
    how = f"{results['scoring']} scoring"
    if results["judge"] is not None:
        how += f", judge {results['judge']}, judge prompts: {results['judge_prompts']}"
    runs = results["parts"].get("runs")
    if runs:
        how += f"; mean ± std of {len(runs)} runs: {', '.join(f'{figure:.1f}' for figure in runs)}"
    print(f"{name} relative score ({how}): {_figure(results['parts']['overall'])}")
    for category, entry in results["parts"].items():
        if category in ("overall", "runs"):
            continue
        count = entry["count"] if "count" in entry else "/".join(map(str, entry["counts"]))
        means = f"{entry['model']:.2f} / {entry['reference']:.2f}, " if "model" in entry else ""
        print(f"  {category:<13}{_figure(entry):>12}  ({means}{count} q.)")
    if results.get("unparseable"):
        listed = ", ".join(f"{item['question_id']} (run {item['run']})" for item in results["unparseable"])
        fate = "kept as -1, -1 as the original does" if results["scoring"] == "paper" else "left out"
        print(f"{len(results['unparseable'])} judge replies had no readable scores, {fate}: {listed}")
    if teacher is not None:
        print(f"Judge calls: {teacher.calls} made, {teacher.cache_hits} from the cache.", end=" ")
    print(f"Written to {path}")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="LLaVA checkpoint (folder or Hub id); none with --reviews")
    parser.add_argument(
        "--reviews", nargs="+", help="summarize these review files (one run each) instead of answering and judging"
    )
    parser.add_argument("--questions", help="questions.jsonl (In-the-Wild) or qa90_questions.jsonl (COCO)")
    parser.add_argument(
        "--context",
        help="the image descriptions the judge reads: context.jsonl (In-the-Wild) or caps_boxes_coco2014_val_80.jsonl",
    )
    parser.add_argument("--reference", help="reference answers: answers_gpt4.jsonl or qa90_gpt4_answer.jsonl")
    parser.add_argument("--image-folder", help="default: images/ beside the questions file (COCO: val2014)")
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
    parser.add_argument("--judge-attempts", type=positive, default=3, help="strict scoring: asks per question")
    parser.add_argument("--runs", type=positive, default=1, help="answer N times (sampled: needs --temperature)")
    parser.add_argument("--judge-runs", type=positive, default=1, help="judge each decoding N times")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) answers greedily")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, with --temperature above 0")
    parser.add_argument("--seed", type=int, default=0, help="run r is seeded with SEED + r (default: %(default)s)")
    parser.add_argument("--overwrite-card", action="store_true", help="regenerate a model card edited by hand")
    parser.add_argument("--batch-size", type=positive, default=8)
    parser.add_argument("--max-new-tokens", type=positive, default=1024)
    add_decoding_arguments(parser)
    add_teacher_arguments(parser, "judge", required=False)  # not with --reviews
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if args.reviews:
        if args.model is not None or args.output_dir is None:
            raise LlavaBenchError("--reviews summarizes review files: give --output-dir and no checkpoint.")
        results = summarize_reviews(args.reviews, args.output_dir)
        print_report(results, None, results_path(args.output_dir, NAME))
        print(refresh_card_after_eval(args.output_dir, args.overwrite_card))
        return
    needed = ("model", "questions", "context", "reference", "judge_model")
    missing = [flag for flag in needed if getattr(args, flag) is None]
    if missing:
        named = ", ".join("a checkpoint" if flag == "model" else f"--{flag.replace('_', '-')}" for flag in missing)
        raise LlavaBenchError(f"Give {named} (or summarize review files with --reviews).")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise LlavaBenchError("--temperature must be at least 0 and --top-p in (0, 1].")
    check_runs(args.runs, args.temperature)
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
        runs=args.runs,
        judge_runs=args.judge_runs,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    print_report(results, teacher, results_path(output_dir, NAME))
    print(refresh_card_after_eval(output_dir, args.overwrite_card))


__all__ = [
    "COCO",
    "IN_THE_WILD",
    "Benchmark",
    "LlavaBenchError",
    "Question",
    "combine",
    "evaluate",
    "judge",
    "load_questions",
    "load_rules",
    "paper_scores",
    "parse_scores",
    "read_contexts",
    "read_reviews",
    "summarize",
    "summarize_reviews",
]
