"""LLaVA-Bench: score parsing, the relative score computed by hand from a scripted judge behind a real loopback server
(paper mode, as the original scripts score, and strict mode with its retries), the cache that makes a rerun free, and
a local judge model's unreadable replies."""

import json
import re
import shutil
import statistics
import threading
from pathlib import Path

import pytest

from command_line.main import main as llava
from evaluation.llava_bench import (
    ANSWERS_NAME,
    RESULTS_NAME,
    LlavaBenchError,
    load_questions,
    paper_scores,
    parse_scores,
)
from tests.conftest import fill_the_disk, random_image, refused
from tests.openai_server import ScriptedServer
from tests.tiny_backbones import save_tiny_language_model

QUESTIONS = [
    {"question_id": 0, "image": "001.jpg", "text": "What is on the table?", "category": "conv"},
    {"question_id": 1, "image": "001.jpg", "text": "Describe the image in detail.", "category": "detail"},
    {"question_id": 2, "image": "002.jpg", "text": "Why is the man running?", "category": "complex"},
    {"question_id": 3, "image": "002.jpg", "text": "What colour is his shirt?", "category": "conv"},
]
# The judge's replies, per question, in the order it is asked: question 2's first reply is unreadable and asked again,
# question 3 never gets a readable one (three attempts), so it is left out of the scores.
JUDGE_REPLIES = {
    "What is on the table?": ["8 6\nAnswer 2 misses the cup."],
    "Describe the image in detail.": ["7 7\nBoth are fine."],
    "Why is the man running?": ["Answer 1 is better.", "(9, 4.5)\nAnswer 2 guesses."],
    "What colour is his shirt?": ["Both answers are good."] * 3,
}
# By hand: conversation 6/8, detail 7/7, complex 4.5/9; overall (6 + 7 + 4.5) / 3 over (8 + 7 + 9) / 3.
EXPECTED = {"conversation": 75.0, "detail": 100.0, "complex": 50.0}
EXPECTED_OVERALL = 100 * (17.5 / 3) / (24 / 3)


def categories(results: dict) -> dict[str, float]:
    """The relative score of each category in a results file."""
    return {name: part["score"] for name, part in results["parts"].items() if name not in ("overall", "runs")}


def lines(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("llava-bench")
    (root / "images").mkdir()
    for seed, name in enumerate(["001.jpg", "002.jpg"]):
        random_image(seed).save(root / "images" / name)
    (root / "questions.jsonl").write_text(lines(QUESTIONS))
    (root / "context.jsonl").write_text(
        lines(
            [
                {"id": "001", "image": "001.jpg", "caption": "A cup and a plate on a wooden table."},
                {"id": "002", "image": "002.jpg", "caption": ["A man in a red shirt runs.", "A bus is leaving."]},
            ]
        )
    )
    (root / "answers_gpt4.jsonl").write_text(
        lines([{"question_id": q["question_id"], "text": f"Reference answer {q['question_id']}."} for q in QUESTIONS])
    )
    return root


def scripted_judge(replies_by_question: dict[str, list[str]] = JUDGE_REPLIES):
    asked: dict[str, int] = {}
    lock = threading.Lock()

    def reply(body: dict) -> str:
        question = re.search(r"\[Question\]\n(.*)\n", body["messages"][-1]["content"]).group(1)
        with lock:
            attempt = asked[question] = asked.get(question, -1) + 1
        replies = replies_by_question[question]
        return replies[min(attempt, len(replies) - 1)]

    return reply


# A rule file in the release's format; the prompts are this test's own words.
RULES = {
    key: {"role": "Assistant", "prompt": f"Rate both ({key}). First line: two scores, separated by a space."}
    for key in ("llava_bench_conv", "llava_bench_detail", "llava_bench_complex", "default")
}
# Paper mode asks once per question and reads the first line as the original's parse_score does.
PAPER_REPLIES = {
    "What is on the table?": ["8 6\nAnswer 2 misses the cup."],  # (8, 6)
    "Describe the image in detail.": ["7,7\nBoth are fine."],  # a comma is a space: (7, 7)
    "Why is the man running?": ["8, 9\nComma and space."],  # three parts: (-1, -1), averaged in
    "What colour is his shirt?": ["9 4.5"],  # (9, 4.5)
}
# By hand, means rounded to 3 decimals, then 100 x model / reference rounded to 1: conversation (6 + 4.5) / 2 = 5.25
# over (8 + 9) / 2 = 8.5 -> 61.8; detail 7 / 7 -> 100.0; complex -1 / -1 -> 100.0; overall, the four pooled:
# (6 + 7 - 1 + 4.5) / 4 = 4.125 over (8 + 7 - 1 + 9) / 4 = 5.75 -> 71.7.
PAPER_EXPECTED = {"conversation": 61.8, "detail": 100.0, "complex": 100.0}
PAPER_OVERALL = 71.7


def flags(bench: Path, output: Path, *judge: str) -> list[str]:
    return [
        "--questions",
        str(bench / "questions.jsonl"),
        "--context",
        str(bench / "context.jsonl"),
        "--reference",
        str(bench / "answers_gpt4.jsonl"),
        "--output-dir",
        str(output),
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
        "--judge-cache",
        str(output / "cache"),
        *judge,
    ]


@pytest.mark.parametrize(
    "review, expected",
    [
        ("8 6\nbecause", (8.0, 6.0)),
        ("8, 6", (8.0, 6.0)),
        ("  (7.5, 5)  \n", (7.5, 5.0)),
        ("Scores: 8 6", None),
        ("8\n6", None),
        ("11 3", None),
        ("", None),
    ],
)
def test_strict_score_parsing(review, expected):
    assert parse_scores(review) == expected


@pytest.mark.parametrize(
    "review, expected",
    [
        ("8 9\nbecause", (8.0, 9.0)),
        ("8,9", (8.0, 9.0)),
        ("8.5 9", (8.5, 9.0)),
        ("10 7.", (10.0, 7.0)),
        ("8 9\r", (8.0, 9.0)),
        ("8, 9", (-1.0, -1.0)),  # the comma becomes a space: three parts
        ("8 9 ", (-1.0, -1.0)),
        (" 8 9", (-1.0, -1.0)),
        ("7  8", (-1.0, -1.0)),
        ("8\t9", (-1.0, -1.0)),
        ("8/10 9/10", (-1.0, -1.0)),
        ("Assistant 1: 8", (-1.0, -1.0)),
        ("", (-1.0, -1.0)),
    ],
)
def test_paper_score_parsing_is_the_originals(review, expected):
    assert paper_scores(review) == expected


def test_paper_mode_scores_as_the_original_scripts(bench, llava_checkpoint, tmp_path):
    (tmp_path / "rule.json").write_text(json.dumps(RULES))
    with ScriptedServer(scripted_judge(PAPER_REPLIES)) as server:
        judge = ["--judge-url", server.url, "--judge-model", "judge-1", "--rules", str(tmp_path / "rule.json")]
        llava(["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge)])
        assert len(server.requests) == 4  # one reply per question, readable or not
        results = json.loads((tmp_path / RESULTS_NAME).read_text())
        rule_file = str(tmp_path / "rule.json")
        assert (results["scoring"], results["judge_prompts"]) == ("paper", f"rule file {rule_file!r}")
        assert (results["benchmark"], results["dataset"]) == ("llava-bench", "in-the-wild")
        assert categories(results) == PAPER_EXPECTED
        assert results["score"] == results["parts"]["overall"]["score"] == PAPER_OVERALL
        assert results["parts"]["complex"] == {"score": 100.0, "reference": -1.0, "model": -1.0, "count": 1}
        assert [item["question_id"] for item in results["unparseable"]] == ["2"]

        # The judge read exactly the original's messages: its system line, the rule's role and prompt.
        answers = [json.loads(line) for line in (tmp_path / ANSWERS_NAME).read_text().splitlines()]
        asked = next(r for r in server.requests if "Why is the man running?" in r["messages"][-1]["content"])
        assert asked["messages"][0] == {
            "role": "system",
            "content": "You are a helpful and precise assistant for checking the quality of the answer.",
        }
        assert asked["messages"][1]["content"] == (
            "[Context]\nA man in a red shirt runs.\nA bus is leaving.\n\n[Question]\nWhy is the man running?\n\n"
            "[Assistant 1]\nReference answer 2.\n\n[End of Assistant 1]\n\n"
            f"[Assistant 2]\n{answers[2]['text']}\n\n[End of Assistant 2]\n\n"
            f"[System]\n{RULES['llava_bench_complex']['prompt']}\n\n"
        )


def test_without_a_rule_file_the_results_say_whose_prompts_judged(bench, llava_checkpoint, tmp_path, capsys):
    with ScriptedServer(scripted_judge(PAPER_REPLIES)) as server:
        judge = ["--judge-url", server.url, "--judge-model", "judge-1"]
        llava(["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge)])
    assert json.loads((tmp_path / RESULTS_NAME).read_text())["judge_prompts"] == "llava-plugin's own"
    (tmp_path / "rule.json").write_text(json.dumps({"llava_bench_conv": RULES["llava_bench_conv"]}))
    judge = ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "judge-1"]  # never called: the rules fail first
    judge += ["--rules", str(tmp_path / "rule.json")]
    message = refused(capsys, ["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge)])
    assert re.search(r"rule.json' has no 'llava_bench_detail' entry", message)


def test_missing_context_or_reference_is_named(bench, tmp_path):
    (tmp_path / "refs.jsonl").write_text(json.dumps({"question_id": 0, "text": "x"}) + "\n")
    with pytest.raises(LlavaBenchError, match=r"Question 1: no reference answer in .*refs.jsonl"):
        load_questions(bench / "questions.jsonl", bench / "context.jsonl", tmp_path / "refs.jsonl")
    (tmp_path / "context.jsonl").write_text(json.dumps({"image": "001.jpg", "caption": "c"}) + "\n")
    with pytest.raises(LlavaBenchError, match=r"Question 2: no context for image '002.jpg'"):
        load_questions(bench / "questions.jsonl", tmp_path / "context.jsonl", bench / "answers_gpt4.jsonl")


def test_strict_relative_scores_match_the_hand_count_and_a_rerun_pays_nothing(bench, llava_checkpoint, tmp_path):
    with ScriptedServer(scripted_judge()) as server:
        judge = ["--judge-url", server.url, "--judge-model", "judge-1", "--judge-workers", "2", "--scoring", "strict"]
        llava(["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge)])
        assert len(server.requests) == 1 + 1 + 2 + 3
        results = json.loads((tmp_path / RESULTS_NAME).read_text())
        assert categories(results) == pytest.approx(EXPECTED)
        assert results["score"] == pytest.approx(EXPECTED_OVERALL)  # a ratio of means, not a mean of ratios
        assert results["parts"]["conversation"] == {"score": 75.0, "reference": 8.0, "model": 6.0, "count": 1}
        assert results["unparseable"] == [
            {
                "run": 1,
                "question_id": "3",
                "category": "conversation",
                "replies": JUDGE_REPLIES["What colour is his shirt?"],
            }
        ]
        assert results["model_index"][0]["metric_value"] == round(EXPECTED_OVERALL, 1)

        # The judge saw the context, the question, the reference as answer 1 and the model's answer as answer 2.
        answers = [json.loads(line) for line in (tmp_path / ANSWERS_NAME).read_text().splitlines()]
        asked = next(r for r in server.requests if "Why is the man running?" in r["messages"][-1]["content"])
        content = asked["messages"][-1]["content"]
        assert "A man in a red shirt runs.\nA bus is leaving." in content
        assert f"[Answer 1]\nReference answer 2.\n[End of answer 1]\n\n[Answer 2]\n{answers[2]['text']}\n" in content
        assert (asked["model"], asked["temperature"]) == ("judge-1", 0.2)

        # Run again: every judge call, the unreadable ones included, comes from the cache.
        llava(["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge)])
        assert len(server.requests) == 7
        assert json.loads((tmp_path / RESULTS_NAME).read_text()) == results

        # Losing one cached reply (an interrupted run) costs exactly that call again; a server error is retried.
        cached = sorted((tmp_path / "cache").iterdir())
        assert len(cached) == 7
        detail = next(path for path in cached if "Describe the image" in path.read_text())
        detail.unlink()
        server.script("http500")
        llava(["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge)])
        assert len(server.requests) == 9
        assert json.loads((tmp_path / RESULTS_NAME).read_text()) == results


def test_a_local_judge_whose_replies_are_unreadable_is_reported(bench, tokenizer, llava_checkpoint, tmp_path, capsys):
    judge_model = save_tiny_language_model(tmp_path / "judge", tokenizer)
    judge = ["--judge-model", str(judge_model), "--judge-max-tokens", "4", "--judge-attempts", "2"]
    judge += ["--scoring", "strict"]
    message = refused(capsys, ["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge)])
    assert re.search(r"None of the 4 judgements has two readable scores.*questions 0, 1, 2, 3", message)
    assert len(list((tmp_path / "cache").iterdir())) == 4 * 2  # every attempt was made, and cached
    assert not (tmp_path / RESULTS_NAME).exists()


@pytest.mark.parametrize("scoring", ["paper", "strict"])
def test_a_judge_that_scores_everything_zero_gets_a_clear_error(bench, llava_checkpoint, tmp_path, scoring, capsys):
    with ScriptedServer(lambda body: "0 0\nNothing to say.") as server:
        judge = ["--judge-url", server.url, "--judge-model", "judge-1", "--scoring", scoring]
        message = refused(capsys, ["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge)])
    assert "mean score of the reference answers is 0" in message
    assert not (tmp_path / RESULTS_NAME).exists()


def test_a_judge_that_keeps_failing_is_reported_with_the_question(bench, llava_checkpoint, tmp_path, capsys):
    with ScriptedServer(scripted_judge(PAPER_REPLIES)) as server:
        server.script(*["http500"] * 3)  # the first question asked gets nothing but errors, its retries included
        judge = ["--judge-url", server.url, "--judge-model", "judge-1", "--judge-retries", "2", "--judge-workers", "1"]
        message = refused(capsys, ["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge)])
    assert re.search(r"Question 0: the judge failed .*HTTP 500.* run the same command", message)


def bench_copy(bench: Path, tmp_path: Path, **files: list[dict]) -> Path:
    """The benchmark copied to `tmp_path / "bench"`, with some of its files (`questions`, `context`) replaced."""
    copy = tmp_path / "bench"
    shutil.copytree(bench, copy)
    for name, rows in files.items():
        (copy / f"{name}.jsonl").write_text(lines(rows))
    return copy


def test_an_image_path_leading_outside_the_image_folder_is_refused_unless_allowed(
    bench, llava_checkpoint, tmp_path, capsys
):
    escape = "../notes/passwd"  # outside images/, and not an image
    copy = bench_copy(
        bench, tmp_path, questions=[{**QUESTIONS[0], "image": escape}], context=[{"image": escape, "caption": "c"}]
    )
    (copy / "notes").mkdir()
    (copy / "notes" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    judge = ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "judge-1"]  # never called
    command = ["eval", "llava-bench", llava_checkpoint, *flags(copy, tmp_path / "out", *judge)]
    message = refused(capsys, command)
    assert f"Question 0: image '{escape}' lies outside the image folder '{copy / 'images'}'" in message
    assert "--allow-images-outside-folder" in message
    # Allowed, the file is read, and its not being an image is named with the question and the file.
    message = refused(capsys, [*command, "--allow-images-outside-folder"])
    assert f"Record '0': image file '{copy / 'images' / escape}' cannot be read" in message


def test_a_row_without_a_field_is_named_by_file_and_line(bench, llava_checkpoint, tmp_path, capsys):
    copy = bench_copy(bench, tmp_path, context=[{"image": "001.jpg", "caption": "c"}, {"image": "002.jpg"}])
    message = refused(capsys, ["eval", "llava-bench", llava_checkpoint, *flags(copy, tmp_path, "--judge-model", "j")])
    assert message.endswith(f"'{copy / 'context.jsonl'}' line 2 has no 'caption'.")


def test_a_full_disk_under_the_judge_cache_is_one_line_and_leaves_no_staging_file(
    bench, llava_checkpoint, tmp_path, capsys, monkeypatch
):
    fill_the_disk(monkeypatch, tmp_path / "cache")
    with ScriptedServer(scripted_judge(PAPER_REPLIES)) as server:
        judge = ["--judge-url", server.url, "--judge-model", "judge-1", "--judge-workers", "2"]
        message = refused(capsys, ["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge)])
    assert re.search(r"Question \d: the judge failed \(Cannot write the cache file '.*/cache/\w+\.json'", message)
    assert "No space left on device" in message
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_local_judge_that_is_not_there_is_one_line(bench, llava_checkpoint, tmp_path, capsys):
    judge = ["--judge-model", str(tmp_path / "no-judge")]  # no --judge-url: a local causal LM
    message = refused(capsys, ["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge)])
    assert f"Cannot load '{tmp_path / 'no-judge'}' as a local causal LM" in message


# --- LLaVA-Bench (COCO), runs, and review files: the original's data files as fixtures -------------------------------

# Slices of the original's files (haotian-liu/LLaVA): qa90_questions.jsonl and qa90_gpt4_answer.jsonl (commit 8959d5c,
# their first 6 lines: 2 images x 3 categories), caps_boxes_coco2014_val_80.jsonl (8959d5c, those 2 images' rows),
# rule.json (181a2f8, whole) and the LLaVA-1.5 In-the-Wild review files (32cebc38, whole).
FIXTURES = Path(__file__).parent / "fixtures" / "eval" / "llava-bench"
COCO = FIXTURES / "coco"
# The judge's replies to the six COCO questions, read by the original's parse_score.
COCO_REPLIES = {
    "What is the color of the two suitcases in the image?": "8 6\nAssistant 2 misses a colour.",  # conv (8, 6)
    "Analyze the image in a comprehensive and detailed manner.": "9 7",  # detail (9, 7)
    "What potential factors could make these suitcases valuable?": "7,8\nA comma is a space.",  # complex (7, 8)
    "What are the main objects on the table in the image?": "9 4.5",  # conv (9, 4.5)
    "Describe the following image.": "8, 8",  # detail: three parts, (-1, -1)
    "What activity might have recently taken place around this table and what could be its aftermath?": "10 9",
}
# By hand, as summarize_gpt_review.py: means to 3 decimals, then 100 x model / reference to 1.
# conv (6 + 4.5) / 2 = 5.25 over (8 + 9) / 2 = 8.5 -> 61.8; detail (7 - 1) / 2 = 3 over (9 - 1) / 2 = 4 -> 75.0;
# complex (8 + 9) / 2 over (7 + 10) / 2 -> 100.0; all 33.5 / 6 = 5.583 over 42 / 6 = 7.0 -> 79.8.
# The same replies given to the original's eval_gpt_review_visual.py (181a2f8, openai replaced by these replies) and
# its review file to summarize_gpt_review.py (ce1aa08) printed: all 79.8, complex 100.0, conv 61.8, detail 75.0.
COCO_EXPECTED = {"conversation": 61.8, "detail": 75.0, "complex": 100.0}
COCO_OVERALL = 79.8
# What the judge reads of image 000000441147 (the fixture's row), as eval_gpt_review_visual.py writes it: the five
# captions, a blank line, one `category: [x1, y1, x2, y2]` line per instance.
SUITCASES_CONTEXT = (
    "Two antique suitcases sit stacked one on top of the other.\n"
    "Two suitcases are stacked on each other and one is black while the other is brown and yellow.\n"
    "a close up of two luggage suit cases stacked on each other\n"
    "A stack of antique luggage is displayed with price tags.\n"
    "two suitcases made of leather and stacked on top of each other\n\n"
    "suitcase: [0.167, 0.025, 0.989, 0.445]\n"
    "suitcase: [0.002, 0.31, 0.994, 0.996]"
)


@pytest.fixture(scope="module")
def val2014(tmp_path_factory) -> Path:
    """COCO val2014 images, one under the release's name (COCO_val2014_...), one under the name the questions use."""
    folder = tmp_path_factory.mktemp("val2014")
    random_image(1).save(folder / "COCO_val2014_000000441147.jpg")
    random_image(2).save(folder / "000000353536.jpg")
    return folder


def coco_flags(output: Path, val2014: Path, *judge: str) -> list[str]:
    return [
        "--questions",
        str(COCO / "qa90_questions.jsonl"),
        "--context",
        str(COCO / "caps_boxes_coco2014_val_80.jsonl"),
        "--reference",
        str(COCO / "qa90_gpt4_answer.jsonl"),
        "--image-folder",
        str(val2014),
        "--rules",
        str(FIXTURES / "rule.json"),
        "--output-dir",
        str(output),
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
        "--judge-cache",
        str(output / "cache"),
        *judge,
    ]


def test_llava_bench_coco_is_judged_and_scored_as_the_original(llava_checkpoint, val2014, tmp_path):
    replies = {question: [reply] for question, reply in COCO_REPLIES.items()}
    with ScriptedServer(scripted_judge(replies)) as server:
        judge = ["--judge-url", server.url, "--judge-model", "gpt-4-0314"]
        llava(["eval", "llava-bench", llava_checkpoint, *coco_flags(tmp_path, val2014, *judge)])
    results = json.loads((tmp_path / RESULTS_NAME).read_text())
    assert (results["dataset"], results["score"], categories(results)) == ("coco", COCO_OVERALL, COCO_EXPECTED)
    assert results["model_index"][0]["dataset_name"] == "LLaVA-Bench (COCO)"
    assert [item["question_id"] for item in results["unparseable"]] == ["4"]

    # The judge read the original's message: the captions and boxes, the rule file's `complex` role and prompt.
    rules = json.loads((FIXTURES / "rule.json").read_text())
    reference = json.loads((COCO / "qa90_gpt4_answer.jsonl").read_text().splitlines()[2])["text"]
    answers = [json.loads(line) for line in (tmp_path / ANSWERS_NAME).read_text().splitlines()]
    asked = next(r for r in server.requests if "suitcases valuable" in r["messages"][-1]["content"])
    assert asked["messages"][-1]["content"] == (
        f"[Context]\n{SUITCASES_CONTEXT}\n\n[Question]\nWhat potential factors could make these suitcases valuable?"
        f"\n\n[Assistant 1]\n{reference}\n\n[End of Assistant 1]\n\n[Assistant 2]\n{answers[2]['text']}\n\n"
        f"[End of Assistant 2]\n\n[System]\n{rules['complex']['prompt']}\n\n"
    )
    assert [answer["question_id"] for answer in answers] == [0, 1, 2, 3, 4, 5]  # as the question file writes them

    # The review file is the original's shape: summarize_gpt_review.py's input.
    reviews = [json.loads(line) for line in (tmp_path / "llava_bench_reviews.jsonl").read_text().splitlines()]
    assert [(r["question_id"], r["category"], r["tuple"]) for r in reviews] == [
        (0, "conv", [8.0, 6.0]),
        (1, "detail", [9.0, 7.0]),
        (2, "complex", [7.0, 8.0]),
        (3, "conv", [9.0, 4.5]),
        (4, "detail", [-1.0, -1.0]),
        (5, "complex", [10.0, 9.0]),
    ]
    assert reviews[0]["answer2_id"] == answers[0]["answer_id"] and reviews[0]["answer1_id"] == 0


def test_llava_bench_coco_needs_its_images_and_its_rule_keys(llava_checkpoint, val2014, tmp_path, capsys):
    judge = ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j"]  # never called
    (val2014 / "000000353536.jpg").rename(tmp_path / "moved.jpg")
    try:
        message = refused(capsys, ["eval", "llava-bench", llava_checkpoint, *coco_flags(tmp_path, val2014, *judge)])
    finally:
        (tmp_path / "moved.jpg").rename(val2014 / "000000353536.jpg")
    assert message.endswith(
        f"Question 3: image '{val2014 / '000000353536.jpg'}' (nor COCO_val2014_000000353536.jpg) does not exist."
    )
    in_the_wild_rules = {key: value for key, value in json.loads((FIXTURES / "rule.json").read_text()).items()}
    del in_the_wild_rules["conv"]
    (tmp_path / "rule.json").write_text(json.dumps(in_the_wild_rules))
    command = [*coco_flags(tmp_path, val2014, *judge), "--rules", str(tmp_path / "rule.json")]
    message = refused(capsys, ["eval", "llava-bench", llava_checkpoint, *command])
    assert "rule.json' has no 'conv' entry with a 'role' and a 'prompt' (LLaVA-Bench (COCO) needs it" in message


# Two runs, replies per question and run (runs are judged one after the other: the scripted judge's n-th reply to a
# question is run n's). Run 1: conv (8, 6), detail (7, 7), complex (8, 4), conv (9, 4.5).
# Run 2: conv (8, 8), detail (7, 3.5), complex (8, 8), conv (9, 9).
RUN_REPLIES = {
    "What is on the table?": ["8 6", "8 8"],
    "Describe the image in detail.": ["7 7", "7 3.5"],
    "Why is the man running?": ["8 4", "8 8"],
    "What colour is his shirt?": ["9 4.5", "9 9"],
}
# By hand, each run as summarize_gpt_review.py, then mean and sample std (n - 1) of the two figures, to one decimal:
# conv: run 1 (6 + 4.5) / (8 + 9) = 61.8, run 2 (8 + 9) / (8 + 9) = 100.0 -> 80.9 ± 27.0 (|100 - 61.8| / sqrt 2);
# detail: 100.0, 50.0 -> 75.0 ± 35.4; complex: 50.0, 100.0 -> 75.0 ± 35.4;
# overall: run 1 (6 + 7 + 4 + 4.5) / 4 = 5.375 over 8 -> 67.2, run 2 28.5 / 4 = 7.125 over 8 -> 89.1 -> 78.2 ± 15.5.
RUNS_EXPECTED = {
    "conversation": {"score": 80.9, "std": 27.0, "runs": [61.8, 100.0], "counts": [2, 2]},
    "detail": {"score": 75.0, "std": 35.4, "runs": [100.0, 50.0], "counts": [1, 1]},
    "complex": {"score": 75.0, "std": 35.4, "runs": [50.0, 100.0], "counts": [1, 1]},
    "overall": {"score": 78.2, "std": 15.5, "runs": [67.2, 89.1], "counts": [4, 4]},
}


def test_sampled_runs_are_each_judged_and_reported_as_mean_and_std(bench, llava_checkpoint, tmp_path, capsys):
    (tmp_path / "rule.json").write_text(json.dumps(RULES))
    judge = ["--judge-model", "judge-1", "--rules", str(tmp_path / "rule.json")]
    message = refused(
        capsys, ["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge, "--runs", "2")]
    )
    assert "--runs 2 with greedy decoding gives the same answers 2 times" in message

    sampled = ["--runs", "2", "--temperature", "0.7", "--seed", "3"]
    with ScriptedServer(scripted_judge(RUN_REPLIES)) as server:
        judge += ["--judge-url", server.url]
        llava(["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge, *sampled)])
        assert len(server.requests) == 2 * 4
        results = json.loads((tmp_path / RESULTS_NAME).read_text())
        assert {name: results["parts"][name] for name in RUNS_EXPECTED} == RUNS_EXPECTED
        assert (results["score"], results["std"], results["parts"]["runs"]) == (78.2, 15.5, [67.2, 89.1])
        assert results["decoding"] == {"temperature": 0.7, "top_p": 1.0, "seeds": [3, 4]}
        answers = [
            [
                json.loads(line)["text"]
                for line in (tmp_path / f"llava_bench_answers_{run}.jsonl").read_text().split("\n")[:-1]
            ]
            for run in (1, 2)
        ]
        for run in (1, 2):  # each run's review file holds that run's answers' reviews
            reviews = (tmp_path / f"llava_bench_reviews_{run}.jsonl").read_text().splitlines()
            assert [json.loads(line)["tuple"][1] for line in reviews[:1]] == [[6.0, 8.0][run - 1]]

        # Seeded: the same command gives the same answers again, so every judge call comes from the cache.
        llava(["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge, *sampled)])
        assert len(server.requests) == 2 * 4
        again = [
            [
                json.loads(line)["text"]
                for line in (tmp_path / f"llava_bench_answers_{run}.jsonl").read_text().split("\n")[:-1]
            ]
            for run in (1, 2)
        ]
        assert again == answers
    assert "relative score (paper scoring, judge judge-1" in capsys.readouterr().out


def test_judge_runs_judge_one_decoding_several_times(bench, llava_checkpoint, tmp_path):
    (tmp_path / "rule.json").write_text(json.dumps(RULES))
    replies = {question: [*runs, "9 9"] for question, runs in RUN_REPLIES.items()}  # a third judging: all (9, 9)
    with ScriptedServer(scripted_judge(replies)) as server:
        judge = ["--judge-url", server.url, "--judge-model", "judge-1", "--rules", str(tmp_path / "rule.json")]
        llava(["eval", "llava-bench", llava_checkpoint, *flags(bench, tmp_path, *judge, "--judge-runs", "3")])
        assert len(server.requests) == 3 * 4  # each judging asks again, although the messages are the same
        contents = {json.dumps(r["messages"]) for r in server.requests}
        assert len(contents) == 4
    results = json.loads((tmp_path / RESULTS_NAME).read_text())
    # By hand: the two runs above, and a third at 100.0 everywhere; overall 67.2, 89.1, 100.0 -> 85.4 ± 16.7.
    assert results["parts"]["runs"] == [67.2, 89.1, 100.0]
    assert (results["score"], results["std"]) == (85.4, 16.7)
    assert results["parts"]["detail"]["runs"] == [100.0, 50.0, 100.0]
    assert [review["judging"] for review in results["reviews"]] == [1, 2, 3]
    assert len(results["answers"]) == 1


# What the original's summarize_gpt_review.py (ce1aa08), run from the mirror on the official review files of
# commit 32cebc38, printed (`all`, and each category, its relative score first):
#   llava-v1.5-13b-eval1: all 72.8, llava_bench_complex 82.8, llava_bench_conv 74.7, llava_bench_detail 52.6
#   llava-v1.5-13b-eval2: all 72.7, complex 83.7, conv 74.7, detail 51.1
#   llava-v1.5-13b-eval3: all 72.1, complex 83.5, conv 72.5, detail 51.1
#   llava-v1.5-7b-eval1: all 64.7, complex 77.6, conv 59.3, detail 47.7
#   llava-v1.5-7b-eval2: all 65.3, complex 78.8, conv 59.0, detail 48.5
#   llava-v1.5-7b-eval3: all 66.3, complex 79.6, conv 59.0, detail 50.8
# LLaVA-1.5's table: 72.5 (13B) and 65.4 (7B), the means of the three `all` figures.
OFFICIAL = {
    "13b": {
        "overall": [72.8, 72.7, 72.1],
        "complex": [82.8, 83.7, 83.5],
        "conversation": [74.7, 74.7, 72.5],
        "detail": [52.6, 51.1, 51.1],
    },
    "7b": {
        "overall": [64.7, 65.3, 66.3],
        "complex": [77.6, 78.8, 79.6],
        "conversation": [59.3, 59.0, 59.0],
        "detail": [47.7, 48.5, 50.8],
    },
}


@pytest.mark.parametrize("size, published", [("13b", 72.5), ("7b", 65.4)])
def test_the_official_reviews_give_the_published_figure(size, published, tmp_path, capsys):
    reviews = [str(FIXTURES / "reviews" / f"llava-v1.5-{size}-eval{run}.jsonl") for run in (1, 2, 3)]
    llava(["eval", "llava-bench", "--reviews", *reviews, "--output-dir", str(tmp_path)])
    results = json.loads((tmp_path / RESULTS_NAME).read_text())
    assert (results["benchmark"], results["dataset"], results["score"]) == ("llava-bench", "in-the-wild", published)
    assert results["parts"]["runs"] == OFFICIAL[size]["overall"]
    assert {name: results["parts"][name]["runs"] for name in OFFICIAL[size]} == OFFICIAL[size]
    assert results["std"] == round(statistics.stdev(OFFICIAL[size]["overall"]), 1)
    assert results["parts"]["overall"]["counts"] == [60, 60, 60]
    assert (
        f"relative score (paper scoring; mean ± std of 3 runs: {', '.join(map(str, OFFICIAL[size]['overall']))})"
        in (capsys.readouterr().out)
    )

    # One file: the original's figures for that run, with the means they come from.
    llava(["eval", "llava-bench", "--reviews", reviews[0], "--output-dir", str(tmp_path)])
    results = json.loads((tmp_path / RESULTS_NAME).read_text())
    assert results["score"] == OFFICIAL[size]["overall"][0] and "std" in results and results["std"] is None
    assert {name: results["parts"][name]["score"] for name in OFFICIAL[size]} == {
        name: figures[0] for name, figures in OFFICIAL[size].items()
    }


def test_review_files_are_read_as_summarize_gpt_review_reads_them(tmp_path, capsys):
    # A line without a category counts in `all` only, by its `tuple` or else its `score`; a COCO category is bare.
    (tmp_path / "coco.jsonl").write_text(
        lines(
            [
                {"question_id": 0, "category": "conv", "tuple": [8, 6]},
                {"question_id": 1, "category": "detail", "tuple": [-1, -1]},
                {"question_id": 2, "score": [9, 9]},
            ]
        )
    )
    llava(["eval", "llava-bench", "--reviews", str(tmp_path / "coco.jsonl"), "--output-dir", str(tmp_path)])
    results = json.loads((tmp_path / RESULTS_NAME).read_text())
    # By hand: all (6 - 1 + 9) / 3 = 4.667 over (8 - 1 + 9) / 3 = 5.333 -> 87.5; conv 75.0; detail -1 / -1 -> 100.0.
    assert (results["dataset"], results["score"], categories(results)) == (
        "coco",
        87.5,
        {"conversation": 75.0, "detail": 100.0},
    )
    assert results["parts"]["overall"] == {"score": 87.5, "reference": 5.333, "model": 4.667, "count": 3}

    (tmp_path / "wild.jsonl").write_text(lines([{"question_id": 0, "category": "llava_bench_conv", "tuple": [8, 6]}]))
    command = ["eval", "llava-bench", "--reviews", str(tmp_path / "coco.jsonl"), str(tmp_path / "wild.jsonl")]
    assert "mix LLaVA-Bench COCO and In-the-Wild" in refused(capsys, [*command, "--output-dir", str(tmp_path)])
    (tmp_path / "bad.jsonl").write_text(lines([{"question_id": 7, "category": "conv", "content": "8 6"}]))
    command = ["eval", "llava-bench", "--reviews", str(tmp_path / "bad.jsonl"), "--output-dir", str(tmp_path)]
    assert refused(capsys, command).endswith(
        f"Review file '{tmp_path / 'bad.jsonl'}', question 7: no 'tuple' of two scores."
    )
    assert "give --output-dir and no checkpoint" in refused(capsys, command[:-2])
