"""ScienceQA: LLaVA-1.5's questions and its scorer (`eval_science_qa.py`), the paper's columns computed by hand on a
tiny release made here, real LLaVA-1.5-13B answers scored as the original scores them, and `llava eval scienceqa` end
to end on the tiny checkpoint, feeding the model card.

`tests/fixtures/eval/scienceqa/` holds a slice of 42 test problems: `llava_test_CQM-A.json` and
`llava-v1.5-13b_output.json` are the records of those pids in the original's `eval.zip` question file and in its
official LLaVA-1.5-13B scoring output (LLaVA commit 32cebc38, `playground/data/eval/scienceqa/`), copied as they are.
problems.json's official copy is absent from every mirror; `problems.json` here holds the problems from the public,
truncated copy in Think-ScienceQA/Think-ScienceQA.github.io (commit bc193c5, `data/scienceqa/problems.json`, which
rewrote some train problems' lectures and four test hints: none of those is in the slice), lectures and solutions left
out. The original's `eval_science_qa.py` (commit ce1aa08) run on this slice reproduces the official output's records
exactly, and printed the figures hard-coded below. `hand_made_answers.jsonl` holds an answer of each quirky shape.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from command_line.main import main as llava
from evaluation.results import read_answers
from evaluation.scienceqa import (
    INSTRUCTION,
    RESULTS_NAME,
    ScienceQAError,
    lenient_choice,
    paper_choice,
    question_text,
    read_questions,
    score,
    score_file,
)
from hub_cards.model_card import card_text, render_model_card
from tests.conftest import random_image, refused

SLICE = Path(__file__).parent / "fixtures" / "eval" / "scienceqa"


def problem(subject, grade, hint, image, answer, question="Which is it?", choices=("cat", "dog", "fox")):
    return {
        "question": question,
        "choices": list(choices),
        "answer": answer,
        "hint": hint,
        "image": "image.png" if image else None,
        "subject": subject,
        "grade": f"grade{grade}",
        "task": "closed choice",
        "lecture": "",
        "solution": "",
        "split": "test",
    }


# pid: (subject, grade, hint, has image, answer). Columns each falls in, by ScienceQA's own scorer, in the comments.
PROBLEMS = {
    "p1": problem("natural science", 3, "Look at the picture.", True, 0),  # NAT TXT IMG G1-6
    "p2": problem("natural science", 8, "", True, 1),  # NAT IMG G7-12
    "p3": problem("social science", 5, "", False, 1),  # SOC NO G1-6
    "p4": problem("social science", 11, "Read the text.", False, 0),  # SOC TXT G7-12
    "p5": problem("language science", 2, "", False, 2),  # LAN NO G1-6
    "p6": problem("language science", 9, "Some  text.", False, 0),  # LAN TXT G7-12
    "p7": problem("natural science", 6, "", True, 1),  # NAT IMG G1-6 (image in the DIR/<split>/ layout)
    "p8": problem("social science", 12, "A map.", True, 2),  # SOC TXT IMG G7-12
    "p9": problem("natural science", 4, " ", False, 1),  # NAT TXT G1-6: a whitespace hint is text to the scorer
}
# What the model "said". Paper mode (eval_science_qa.py's three rules) reads p1 "A", p3 (one "The answer is B."), p5
# ("C. "), p7 "B", p8 "A"; it cannot read p2 "(C)", p4, p6 ("E" is no option of 3) nor p9 "(B)". Right: p1, p3, p5,
# p7: 4 of 9. The lenient reading also reads p2 (C, wrong) and p9 (B, right): 5 of 9.
OUTPUTS = ["A", "(C)", "The answer is B.", "I am not sure.", "C. fox", "E", "B", "A", "The answer is (B)."]
EXPECTED_COLUMNS = {
    "NAT": 2 / 4,  # p1 yes, p2 no, p7 yes, p9 no
    "SOC": 1 / 3,  # p3 yes, p4 no, p8 no
    "LAN": 1 / 2,  # p5 yes, p6 no
    "TXT": 1 / 5,  # p1 yes, p4 no, p6 no, p8 no, p9 no
    "IMG": 2 / 4,  # p1 yes, p2 no, p7 yes, p8 no
    "NO": 2 / 2,  # p3 yes, p5 yes (p9's hint is whitespace, so not NO)
    "G1-6": 4 / 5,  # p1, p3, p5, p7 yes; p9 no
    "G7-12": 0 / 4,  # p2, p4, p6, p8
    "Average": 4 / 9,
}
EXPECTED_LENIENT = EXPECTED_COLUMNS | {"NAT": 3 / 4, "TXT": 2 / 5, "G1-6": 5 / 5, "Average": 5 / 9}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A tiny ScienceQA release: problems.json, pid_splits.json and an image per image problem."""
    root = tmp_path_factory.mktemp("scienceqa")
    (root / "problems.json").write_text(json.dumps({**PROBLEMS, "t1": problem("natural science", 1, "", False, 0)}))
    (root / "pid_splits.json").write_text(json.dumps({"train": ["t1"], "test": list(PROBLEMS)}))
    for seed, pid in enumerate(pid for pid, p in PROBLEMS.items() if p["image"]):
        folder = root / ("test" if pid == "p7" else "images/test") / pid
        folder.mkdir(parents=True)
        random_image(seed).save(folder / "image.png")
    return root


def test_the_base_layout_is_the_papers_cqm_a():
    # The paper's base-prompt CQM-A, as convert_sqa_to_llava.py writes it, <image> taken out as model_vqa_science does.
    assert question_text("p1", PROBLEMS["p1"], "base") == (
        "Context: Look at the picture.\nQuestion: Which is it?\nOptions: (A) cat (B) dog (C) fox"
    )
    # No hint: the context is "N/A"; a double space collapses once, as in the original conversion.
    assert question_text("p3", PROBLEMS["p3"], "base").startswith("Context: N/A\nQuestion: Which is it?\n")
    assert question_text("p6", PROBLEMS["p6"], "base").startswith("Context: Some text.\n")


def test_the_llava_1_5_layout_by_hand():
    assert (
        question_text("p1", PROBLEMS["p1"], "llava-1.5")
        == "Context: Look at the picture.\nWhich is it?\nA. cat\nB. dog\nC. fox"
    )
    # A blank hint (empty or whitespace) has no Context line.
    assert question_text("p3", PROBLEMS["p3"], "llava-1.5") == "Which is it?\nA. cat\nB. dog\nC. fox"
    assert question_text("p9", PROBLEMS["p9"], "llava-1.5") == "Which is it?\nA. cat\nB. dog\nC. fox"
    assert question_text("p6", PROBLEMS["p6"], "llava-1.5").startswith("Context: Some text.\n")


def slice_release(tmp_path: Path) -> Path:
    """The slice's release with a made-up image where each image problem has one."""
    root = tmp_path / "slice"
    shutil.copytree(SLICE, root)
    for pid, item in json.loads((SLICE / "problems.json").read_text()).items():
        if item["image"]:
            (root / "images/test" / pid).mkdir(parents=True)
            random_image(int(pid)).save(root / "images/test" / pid / item["image"])
    return root


def test_questions_from_the_release_are_eval_zips(tmp_path):
    """From the release folder, the questions are eval.zip's llava_test_CQM-A.json records, and the answer lines'
    prompts those the official LLaVA-1.5-13B run wrote (model_vqa_science.py --single-pred-prompt)."""
    root = slice_release(tmp_path)
    problems = json.loads((SLICE / "problems.json").read_text())
    official = {record["id"]: record for record in json.loads((SLICE / "llava_test_CQM-A.json").read_text())}
    output = json.loads((SLICE / "llava-v1.5-13b_output.json").read_text())
    official_prompts = {item["question_id"]: item["question"] for item in output["correct"] + output["incorrect"]}
    questions = read_questions(root, "test")
    assert [question.question_id for question in questions] == list(official) == list(problems)
    for question in questions:
        pid, record = question.question_id, official[question.question_id]
        image = problems[pid]["image"]
        value = question_text(pid, problems[pid], "llava-1.5")
        assert (f"<image>\n{value}" if image else value) == record["conversations"][0]["value"]
        assert record.get("image") == (f"{pid}/{image}" if image else None)
        assert record["conversations"][1]["value"] == "ABCDE"[problems[pid]["answer"]]
        assert question.prompt == official_prompts[pid]
        assert question.image == (str(root / "images/test" / record["image"]) if image else None)
        # Asked with the image first and the instruction last, as model_vqa_science.py asks it.
        [message] = question.messages
        content = message["content"]
        assert [item["type"] for item in content] == ["image"] * bool(image) + ["text"]
        assert (
            content[-1]["text"]
            == f"{record['conversations'][0]['value'].removeprefix('<image>').strip()}\n{INSTRUCTION}"
        )
    # The question file itself, beside the release, is asked as written: the same questions.
    shutil.copy(SLICE / "llava_test_CQM-A.json", root / "llava_test_CQM-A.json")
    assert read_questions(root / "llava_test_CQM-A.json", "test") == questions


def test_the_base_layout_is_asked_by_name(release):
    questions = read_questions(release, "test", layout="base")
    assert questions[0].prompt == (
        "<image>\nContext: Look at the picture.\nQuestion: Which is it?\nOptions: (A) cat (B) dog (C) fox\n"
        + INSTRUCTION
    )
    assert questions[2].prompt.startswith("Context: N/A\nQuestion: Which is it?\n")


def test_the_paper_converters_question_file_is_asked_as_written(release):
    # Records as LLaVA's convert_sqa_to_llava writes them (CQM-A): the image marker after the text.
    converted = [
        {
            "id": "p1",
            "image": "p1/image.png",
            "conversations": [
                {
                    "from": "human",
                    "value": "Context: Look at the picture.\nQuestion: Which is it?\nOptions: (A) cat (B) dog (C) fox"
                    "\n<image>",
                },
                {"from": "gpt", "value": "The answer is A."},
            ],
        },
        {
            "id": "p3",
            "conversations": [
                {"from": "human", "value": "Context: N/A\nQuestion: Which is it?\nOptions: (A) cat (B) dog (C) fox"},
                {"from": "gpt", "value": "The answer is B."},
            ],
        },
    ]
    (release / "llava_test_CQM-A.json").write_text(json.dumps(converted))
    from_file = read_questions(release / "llava_test_CQM-A.json", "test")
    from_release = {question.question_id: question for question in read_questions(release, "test", layout="base")}
    assert from_file == [from_release["p1"], from_release["p3"]]
    with pytest.raises(
        ScienceQAError, match=r"is a question file, asked as written: --prompt-layout is for a release"
    ):
        read_questions(release / "llava_test_CQM-A.json", "test", layout="base")


def test_images_are_found_in_either_layout_and_text_problems_have_none(release):
    questions = {question.question_id: question for question in read_questions(release, "test")}
    assert questions["p1"].image == str(release / "images/test/p1/image.png")
    assert questions["p7"].image == str(release / "test/p7/image.png")
    assert questions["p3"].image is None


@pytest.mark.parametrize(
    "output, num_choices, expected",
    [
        ("A", 3, 0),
        ("  A\n", 3, None),  # the scorer reads the text as written: model_vqa_science.py strips, others may not
        ("A. apple", 3, 0),
        ("A.apple", 3, None),
        ("a", 3, None),
        ("A) apple", 3, None),
        ("(A)", 3, None),
        ("Answer: A", 3, None),
        ("C", 2, None),  # past the choices
        ("E", 5, 4),
        ("The answer is B.", 3, 1),
        ("Think twice. The answer is B!", 3, 1),  # any one character after the letter
        ("The answer is B", 3, None),  # ... but one is needed
        ("The answer is (B).", 3, None),
        ("the answer is B.", 3, None),
        ("The answer is A. Again, the answer is A. The answer is A.", 3, None),  # two matches, even agreeing
        ("The answer is E.", 3, None),
        ("C\nBecause foxes are red.", 3, None),
        # The original tests membership in its list of letters: a run of letters is no letter (a substring test of
        # "ABCDE" read these as A, B, A).
        ("AB", 3, None),
        ("BC", 3, None),
        ("ABCDE", 5, None),
        ("A.", 3, None),  # neither a letter nor "A. " with text after it
        ("A. x", 3, 0),
        ("", 3, None),
        ("D", 3, None),  # a letter beyond the choices
        ("The answer is F.", 5, None),
    ],
)
def test_answers_are_read_as_the_original_scorer_reads_them(output, num_choices, expected):
    assert paper_choice(output, num_choices) == expected


@pytest.mark.parametrize(
    "output, expected",
    [
        ("A", 0),
        ("(B)", 1),
        ("C.", 2),
        ("B. dog", 1),
        ("(A) cat", 0),
        ("C\nBecause foxes are red.", 2),
        ("Answer: B", 1),
        ("The answer is C.", 2),
        ("So the answer is (A) since cats purr.", 0),
        ("A dog.", None),  # the article "A", not an option
        ("The answer is A. No wait, the answer is B.", None),
        ("the answer is b", None),
        ("D", None),  # a letter past the three choices
        ("", None),
    ],
)
def test_lenient_reading(output, expected):
    assert lenient_choice(output, num_choices=3) == expected


def answer_lines(release: Path, outputs: list[str]) -> list[dict]:
    """Answer lines in model_vqa_science.py's shape: each question's prompt, the given text."""
    questions = read_questions(release, "test")
    return [
        {"question_id": q.question_id, "prompt": q.prompt, "text": text}
        for q, text in zip(questions, outputs, strict=True)
    ]


def release_problems(release: Path) -> tuple[dict, list[str]]:
    return json.loads((release / "problems.json").read_text()), list(PROBLEMS)


def test_accuracy_and_columns_match_the_hand_count(release):
    results = score(answer_lines(release, OUTPUTS), *release_problems(release))
    assert results["accuracy"] == 4 / 9
    assert results["columns"] == pytest.approx(EXPECTED_COLUMNS)
    assert results["column_counts"] == {
        "NAT": 4,
        "SOC": 3,
        "LAN": 2,
        "TXT": 5,
        "IMG": 4,
        "NO": 2,
        "G1-6": 5,
        "G7-12": 4,
        "Average": 9,
    }
    # The score: the image questions (their prompts hold <image>): p1, p7 right of p1, p2, p7, p8.
    assert results["score"] == 50.0
    assert results["parts"]["IMG-Accuracy"] == {"accuracy": 50.0, "correct": 2, "count": 4}
    assert results["parts"]["Total"] == {"accuracy": pytest.approx(400 / 9), "correct": 4, "count": 9}
    assert results["parts"]["SOC"] == {"accuracy": pytest.approx(100 / 3), "correct": 1, "count": 3}
    unreadable = {"p2": "(C)", "p4": "I am not sure.", "p6": "E", "p9": "The answer is (B)."}
    assert results["unparseable"] == [{"pid": pid, "output": output} for pid, output in unreadable.items()]
    assert [p["choice"] for p in results["predictions"]] == ["A", None, "B", None, "C", None, "B", "A", None]


def test_lenient_scores_are_their_own(release):
    results = score(answer_lines(release, OUTPUTS), *release_problems(release), lenient_choice)
    assert results["accuracy"] == 5 / 9
    assert results["columns"] == pytest.approx(EXPECTED_LENIENT)


def official_answer_lines(tmp_path: Path) -> Path:
    """The slice's LLaVA-1.5-13B answers as model_vqa_science.py wrote them: the official scoring output keeps each
    answer's question_id, prompt ("question") and text ("pred")."""
    output = json.loads((SLICE / "llava-v1.5-13b_output.json").read_text())
    records = sorted(output["correct"] + output["incorrect"], key=lambda item: int(item["question_id"]))
    lines = [{"question_id": r["question_id"], "prompt": r["question"], "text": r["pred"]} for r in records]
    path = tmp_path / "llava-v1.5-13b.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_the_official_13b_answers_score_as_the_original_scores_them(tmp_path):
    results = score_file(official_answer_lines(tmp_path), SLICE, tmp_path / "out")
    # eval_science_qa.py (ce1aa08) on this slice: "Total: 42, Correct: 26, Accuracy: 61.90%, IMG-Accuracy: 80.00%".
    assert results["parts"]["Total"]["count"] == 42 and results["parts"]["Total"]["correct"] == 26
    assert f"{results['parts']['Total']['accuracy']:.2f}" == "61.90"
    assert f"{results['score']:.2f}" == "80.00"
    # ... and its per-problem verdicts are the official output's.
    output = json.loads((SLICE / "llava-v1.5-13b_output.json").read_text())
    right = {item["question_id"] for item in output["correct"]}
    assert {p["pid"] for p in results["predictions"] if p["correct"]} == right
    written = json.loads((tmp_path / "out" / RESULTS_NAME).read_text())
    assert (written["benchmark"], written["score"], written["submission"]) == ("scienceqa", results["score"], None)
    assert written["parts"] == results["parts"]


def test_hand_made_answers_of_every_shape_score_as_the_original_scores_them(tmp_path, capsys):
    """Leading space (unread: not stripped), "X. text", two "The answer is" (unread), no character after the letter
    (unread), a letter past the choices, a problem without an answer, a question answered twice (the last line
    counts), an integer question_id (matches no pid), lower case, "(A)", "AB", <image> in the prompt of a text
    problem (counted as an image question) and none in an image problem's (not counted), an answer to no problem."""
    llava(
        [
            "eval",
            "scienceqa",
            "--answers",
            str(SLICE / "hand_made_answers.jsonl"),
            "--data",
            str(SLICE),
            "--output-dir",
            str(tmp_path),
        ]
    )
    # eval_science_qa.py (ce1aa08) on this file: "Total: 42, Correct: 5, Accuracy: 11.90%, IMG-Accuracy: 100.00%",
    # its results {'27': 1, '85': 0, '128': 1, '183': 0, '301': 2} and -1 for every other pid.
    assert "Total: 42, Correct: 5, Accuracy: 11.90%, IMG-Accuracy: 100.00%" in capsys.readouterr().out
    results = json.loads((tmp_path / RESULTS_NAME).read_text())
    assert results["score"] == 100.0 and results["parts"]["IMG-Accuracy"] == {
        "accuracy": 100.0,
        "correct": 2,
        "count": 2,
    }
    chosen = {p["pid"]: "ABCDE".index(p["choice"]) for p in results["predictions"] if p["choice"] is not None}
    assert chosen == {"27": 1, "85": 0, "128": 1, "183": 0, "301": 2}
    assert "96" in results["missing"] and "145" in results["missing"] and len(results["missing"]) == 42 - 12


def test_an_answer_file_without_a_prompt_or_a_wrong_call_is_one_line(tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": "4", "text": "B"}) + "\n")
    command = ["eval", "scienceqa", "--answers", str(answers), "--data", str(SLICE), "--output-dir", str(tmp_path)]
    assert f"Answer file {str(answers)!r} line 1 has no 'prompt'" in refused(capsys, command)
    assert "not both" in refused(capsys, ["eval", "scienceqa", "--data", str(SLICE), "--output-dir", str(tmp_path)])
    assert "--output-dir" in refused(capsys, ["eval", "scienceqa", "--answers", str(answers), "--data", str(SLICE)])


def test_bad_data_is_named(release, tmp_path):
    with pytest.raises(ScienceQAError, match=r"no split 'dev'; it has \['test', 'train'\]"):
        read_questions(release, "dev")
    shutil.copytree(release, tmp_path / "broken")
    (tmp_path / "broken/images/test/p2/image.png").unlink()
    with pytest.raises(ScienceQAError, match=r"Problem 'p2' has an image, but neither .*images/test/p2/image.png"):
        read_questions(tmp_path / "broken", "test")
    shutil.copy(release / "images/test/p2/image.png", tmp_path / "broken/images/test/p2/image.png")
    problems = json.loads((release / "problems.json").read_text())
    problems["p3"]["answer"] = 3
    (tmp_path / "broken/problems.json").write_text(json.dumps(problems))
    with pytest.raises(ScienceQAError, match=r"Problem 'p3': answer 3 is not the index of one of its choices"):
        read_questions(tmp_path / "broken", "test")


def test_llava_eval_scienceqa_end_to_end_feeds_the_model_card(release, llava_checkpoint, tmp_path):
    model = tmp_path / "tiny-llava"
    shutil.copytree(llava_checkpoint, model)  # results go to the model folder by default, where its card reads them
    command = ["eval", "scienceqa", str(model), "--data", str(release), "--batch-size", "3", "--device", "cpu"]
    llava([*command, "--max-new-tokens", "12", "--lenient"])
    results = json.loads((model / RESULTS_NAME).read_text())
    assert not list(model.glob("*.tmp"))

    assert results["scoring"] == "paper" and results["num_questions"] == len(results["predictions"]) == 9
    assert results["accuracy"] == sum(p["correct"] for p in results["predictions"]) / 9
    # The answers, in model_vqa_science.py's shape, with the prompts of the questions; the results are theirs.
    answers = read_answers(
        model / "scienceqa_answers.jsonl", ("question_id", "prompt", "text", "answer_id", "model_id")
    )
    questions = read_questions(release, "test")
    assert [(a["question_id"], a["prompt"]) for a in answers] == [(q.question_id, q.prompt) for q in questions]
    assert {a["model_id"] for a in answers} == {"tiny-llava"}
    outputs = [p["output"] for p in results["predictions"]]
    assert outputs == [a["text"] for a in answers]
    rescored = score(answers, *release_problems(release))
    assert {key: results[key] for key in rescored if key not in ("score", "parts")} == {
        key: value for key, value in rescored.items() if key not in ("score", "parts")
    }
    assert (results["score"], results["parts"]) == (rescored["score"], rescored["parts"])
    lenient = score(answers, *release_problems(release), lenient_choice)
    assert results["lenient"] == {key: value for key, value in lenient.items() if key != "predictions"}

    card = ModelCard.load(model / "README.md")  # the checkpoint's own card, updated in place: LLaVA-1.5's column
    assert [(r.dataset_name, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("ScienceQA-IMG", "accuracy", round(results["score"], 2))
    ]
    assert f"| ScienceQA-IMG | accuracy on image questions (%) | {results['score']:.2f} |" in card.text
    assert (model / "README.md").read_text() == card_text(render_model_card(model))

    edited = (model / "README.md").read_text().replace("## ", "## Edited by hand: ", 1)
    (model / "README.md").write_text(edited)
    llava([*command, "--max-new-tokens", "4"])
    assert (model / "README.md").read_text() == edited  # a card edited by hand is left alone ...
    assert read_answers(model / "scienceqa_answers.jsonl") == answers  # (answered already: a rerun resumes)
    llava([*command, "--max-new-tokens", "4", "--overwrite-card"])
    assert (model / "README.md").read_text() == card_text(render_model_card(model))  # ... unless asked

    # The static KV cache (the GPU default) decodes the same answers.
    static = tmp_path / "static"
    llava([*command, "--max-new-tokens", "12", "--output-dir", str(static), "--static-cache"])
    static_results = json.loads((static / RESULTS_NAME).read_text())
    assert [p["output"] for p in static_results["predictions"]] == [p["output"] for p in results["predictions"]]


@pytest.mark.slow
def test_the_llava_command_runs_in_a_fresh_process(release, llava_checkpoint, tmp_path):
    """`python -m command_line.main eval scienceqa`, in a process where nothing registered the Auto classes first."""
    command = ["eval", "scienceqa", llava_checkpoint, "--data", str(release), "--output-dir", str(tmp_path)]
    command += ["--max-new-tokens", "8"]
    result = subprocess.run([sys.executable, "-m", "command_line.main", *command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ScienceQA test: Total: 9, Correct: " in result.stdout and (tmp_path / RESULTS_NAME).is_file()


@pytest.mark.parametrize("checkpoint", ["empty", "llama"])
def test_a_checkpoint_folder_that_is_not_a_llava_model_is_one_line(checkpoint, release, checkpoints, tmp_path, capsys):
    folder = tmp_path / "empty" if checkpoint == "empty" else Path(checkpoints["llama"])
    folder.mkdir(exist_ok=True)
    command = ["eval", "scienceqa", str(folder), "--data", str(release), "--output-dir", str(tmp_path / "out")]
    message = refused(capsys, command)
    assert str(folder) in message
    assert ("has no config.json" if checkpoint == "empty" else "has model_type 'llama'") in message


def test_an_image_path_leading_outside_the_image_folders_is_refused_unless_allowed(release, tmp_path, capsys):
    root = tmp_path / "release"
    shutil.copytree(release, root)
    random_image(0).save(root / "outside.png")
    question = {"id": "p1", "image": "../../outside.png", "conversations": [{"from": "human", "value": "Which?"}]}
    (root / "llava_test.json").write_text(json.dumps([question]))
    command = ["eval", "scienceqa", str(tmp_path), "--data", str(root / "llava_test.json"), "--output-dir", "x"]
    message = refused(capsys, command)
    assert f"Problem 'p1': image '../../outside.png' lies outside the image folder '{root / 'images/test'}'" in message
    assert "--allow-images-outside-folder" in message
    [question] = read_questions(root / "llava_test.json", allow_outside=True)
    assert question.image == str(root / "images/test/../../outside.png")


def test_a_question_file_row_without_what_it_needs_is_named(release, tmp_path):
    root = tmp_path / "release"
    shutil.copytree(release, root)
    (root / "llava_test.json").write_text(json.dumps([{"image": "p1/image.png"}]))
    with pytest.raises(ScienceQAError, match=r"llava_test.json': question #0 has no 'id'"):
        read_questions(root / "llava_test.json")
    (root / "llava_test.json").write_text(json.dumps([{"id": "p1", "conversations": []}]))
    with pytest.raises(ScienceQAError, match=r"llava_test.json': question 'p1' has no first turn with a 'value'"):
        read_questions(root / "llava_test.json")
