"""ScienceQA: LLaVA's prompt, answer extraction, the paper's columns computed by hand on a tiny release made here, and
`llava eval scienceqa` end to end on the tiny checkpoint, feeding the model card."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import EvalResult, ModelCard

from command_line.main import main as llava
from evaluation.scienceqa import (
    RESULTS_NAME,
    ScienceQAError,
    build_prompt,
    lenient_choice,
    load_problems,
    paper_choice,
    score,
)
from hub_cards.model_card import card_text, render_model_card
from tests.conftest import random_image, refused


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


def test_the_prompt_is_llavas_cqm_format_with_the_single_letter_instruction():
    assert build_prompt(PROBLEMS["p1"]) == (
        "Context: Look at the picture.\nQuestion: Which is it?\nOptions: (A) cat (B) dog (C) fox\n"
        "Answer with the option's letter from the given choices directly."
    )
    # No hint: the context is "N/A"; a double space collapses once, as in the original conversion.
    assert build_prompt(PROBLEMS["p3"]).startswith("Context: N/A\nQuestion: Which is it?\n")
    assert build_prompt(PROBLEMS["p6"]).startswith("Context: Some text.\n")


def test_llavas_converted_question_file_gives_the_same_problems(release):
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
    from_file = load_problems(release / "llava_test_CQM-A.json", "test")
    from_release = {p.pid: p for p in load_problems(release, "test")}
    assert [p.pid for p in from_file] == ["p1", "p3"]
    assert from_file == [from_release["p1"], from_release["p3"]]


def test_images_are_found_in_either_layout_and_text_problems_have_none(release):
    problems = {p.pid: p for p in load_problems(release, "test")}
    assert problems["p1"].image == release / "images/test/p1/image.png"
    assert problems["p7"].image == release / "test/p7/image.png"
    assert problems["p3"].image is None


@pytest.mark.parametrize(
    "output, num_choices, expected",
    [
        ("A", 3, 0),
        ("  A\n", 3, 0),  # the original's generator strips the answer before its scorer reads it
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
def test_paper_mode_reads_answers_as_the_original_scorer(output, num_choices, expected):
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


def test_paper_accuracy_and_columns_match_the_hand_count(release):
    results = score(load_problems(release, "test"), OUTPUTS)
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
    unreadable = {"p2": "(C)", "p4": "I am not sure.", "p6": "E", "p9": "The answer is (B)."}
    assert results["unparseable"] == [{"pid": pid, "output": output} for pid, output in unreadable.items()]
    assert [p["choice"] for p in results["predictions"]] == ["A", None, "B", None, "C", None, "B", "A", None]


def test_lenient_scores_are_their_own(release):
    results = score(load_problems(release, "test"), OUTPUTS, lenient_choice)
    assert results["accuracy"] == 5 / 9
    assert results["columns"] == pytest.approx(EXPECTED_LENIENT)


def test_bad_data_is_named(release, tmp_path):
    with pytest.raises(ScienceQAError, match=r"no split 'dev'; it has \['test', 'train'\]"):
        load_problems(release, "dev")
    shutil.copytree(release, tmp_path / "broken")
    (tmp_path / "broken/images/test/p2/image.png").unlink()
    with pytest.raises(ScienceQAError, match=r"Problem 'p2' has an image, but neither .*images/test/p2/image.png"):
        load_problems(tmp_path / "broken", "test")
    shutil.copy(release / "images/test/p2/image.png", tmp_path / "broken/images/test/p2/image.png")
    problems = json.loads((release / "problems.json").read_text())
    problems["p3"]["answer"] = 3
    (tmp_path / "broken/problems.json").write_text(json.dumps(problems))
    with pytest.raises(ScienceQAError, match=r"Problem 'p3': answer index 3 is not one of its 3 choices"):
        load_problems(tmp_path / "broken", "test")


def test_llava_eval_scienceqa_end_to_end_feeds_the_model_card(release, llava_checkpoint, tmp_path):
    model = tmp_path / "tiny-llava"
    shutil.copytree(llava_checkpoint, model)  # results go to the model folder by default, where its card reads them
    command = ["eval", "scienceqa", str(model), "--data", str(release), "--batch-size", "3", "--device", "cpu"]
    llava([*command, "--max-new-tokens", "12", "--lenient"])
    results = json.loads((model / RESULTS_NAME).read_text())
    assert not list(model.glob("*.tmp"))

    assert results["scoring"] == "paper" and results["num_questions"] == len(results["predictions"]) == 9
    assert results["accuracy"] == sum(p["correct"] for p in results["predictions"]) / 9
    outputs = [p["output"] for p in results["predictions"]]
    rescored = score(load_problems(release, "test"), outputs)
    assert {key: results[key] for key in rescored} == rescored
    lenient = score(load_problems(release, "test"), outputs, lenient_choice)
    assert results["lenient"] == {key: value for key, value in lenient.items() if key != "predictions"}
    [entry] = results["model_index"]
    assert EvalResult(**entry).metric_value == round(100 * results["accuracy"], 2)
    assert (entry["dataset_name"], entry["metric_type"], entry["dataset_split"]) == ("ScienceQA", "accuracy", "test")

    card = ModelCard.load(model / "README.md")  # the checkpoint's own card, updated in place
    assert [(r.dataset_name, r.metric_value) for r in card.data.eval_results] == [
        ("ScienceQA", round(100 * results["accuracy"], 2))
    ]
    assert f"{100 * results['accuracy']:.2f}%" in card.text
    assert (model / "README.md").read_text() == card_text(render_model_card(model))

    edited = (model / "README.md").read_text().replace("## ", "## Edited by hand: ", 1)
    (model / "README.md").write_text(edited)
    llava([*command, "--max-new-tokens", "4"])
    assert (model / "README.md").read_text() == edited  # a card edited by hand is left alone ...
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
    assert "ScienceQA test (paper mode): " in result.stdout and (tmp_path / RESULTS_NAME).is_file()


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
    [problem] = load_problems(root / "llava_test.json", allow_outside=True)
    assert problem.image == root / "images/test/../../outside.png"


def test_a_question_file_row_without_what_it_needs_is_named(release, tmp_path):
    root = tmp_path / "release"
    shutil.copytree(release, root)
    (root / "llava_test.json").write_text(json.dumps([{"image": "p1/image.png"}]))
    with pytest.raises(ScienceQAError, match=r"llava_test.json': question #0 has no 'id'"):
        load_problems(root / "llava_test.json")
    (root / "llava_test.json").write_text(json.dumps([{"id": "p1", "conversations": []}]))
    with pytest.raises(ScienceQAError, match=r"llava_test.json': question 'p1' has no first turn with a 'value'"):
        load_problems(root / "llava_test.json")
