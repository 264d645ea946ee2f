"""LLaVA-Bench: score parsing, the relative score computed by hand from a scripted judge behind a real loopback server
(paper mode, as the original scripts score, and strict mode with its retries), the cache that makes a rerun free, and
a local judge model's unreadable replies."""

import json
import re
import shutil
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
