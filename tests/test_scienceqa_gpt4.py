"""`llava eval scienceqa-gpt4 / -requery / -ensemble`: the paper's GPT-4 ensemble on ScienceQA.

The ensemble figures are compared with what the original's scripts print for the same hand-made files, run once from
the mirror (haotian-liu/LLaVA at 8959d5c, unchanged to ce1aa08) after `random.seed(0)`:
`python llava/eval/eval_science_qa_gpt4.py --base-dir REL --our-result ours.jsonl --gpt4-result gpt4_partial.json`
and `python llava/eval/eval_science_qa_gpt4_requery.py ... --gpt4-result gpt4.json --requery-result requery.jsonl`.
The teacher's prompt is compared with a chat written out by hand from `build_prompt_gpt4` and
`create_one_example_gpt4` (`scripts/convert_sqa_to_llava_base_prompt.py`, 82bc69e).
"""

import json
import random
from pathlib import Path

import pytest

from evaluation import main as eval_main
from evaluation.scienceqa_gpt4 import REQUERY_PROMPT, pick, read_letter, teacher_messages
from tests.openai_server import ScriptedServer


def problem(answer, choices=("cat", "dog", "fox"), hint="", lecture="", solution="", question="Which is it?"):
    return {
        "question": question,
        "choices": list(choices),
        "answer": answer,
        "hint": hint,
        "image": None,
        "lecture": lecture,
        "solution": solution,
        "subject": "natural science",
        "grade": "grade3",
    }


PROBLEMS = {
    "t1": problem(0),
    "t2": problem(1),
    "t3": problem(2),
    "t4": problem(0),
    "t5": problem(1),
    "t6": problem(2, choices=("a", "b", "c", "d", "e")),
    "t7": problem(0),
    "t8": problem(1),
    "t9": problem(0),
    "t10": problem(2, choices=("a", "b", "c", "d")),
    "s1": problem(1, hint="A  hint.", lecture="Cats purr.\nDogs bark.", solution="It is a dog."),
    "s2": problem(0, lecture="", solution="Look closely."),
    "s3": problem(2),
}
SPLITS = {"test": [f"t{n}" for n in range(1, 11)], "train": ["s1", "s2", "s3"]}
# What the model said: two matches (t3), a letter past the choices (t4), no character after the letter (t8).
OURS = {
    "t1": "The answer is A.",
    "t2": "The answer is B.",
    "t3": "The answer is A. The answer is C.",
    "t4": "The answer is D.",
    "t5": "The answer is B.",
    "t6": "The answer is E.",
    "t7": "The answer is B.",
    "t8": "The answer is B",
    "t9": "The answer is A.",
    "t10": "The answer is C.",
}
# The teacher: no answer (t4), an unreadable "(B)" (t5); gpt4_partial.json lacks t9 (the script skips it).
GPT4 = {
    "t1": "The answer is A.",
    "t2": "The answer is C.",
    "t3": "The answer is C.",
    "t4": "I cannot tell.",
    "t5": "The answer is (B).",
    "t6": "The answer is E.",
    "t7": "The answer is A.",
    "t8": "The answer is B.",
    "t9": "The answer is B.",
    "t10": "The answer is A.",
}
# The judge: a MISSING line (t3), two matches (t7), a wrong judgement (t5); t4 and t10 have no line, t99 no problem.
REQUERY = {
    "t2": "The answer is B.",
    "t3": "MISSING",
    "t5": "The answer is A.",
    "t7": "The answer is A.\nThe answer is A.",
    "t8": "The answer is B.",
    "t99": "The answer is A.",
}


def write_release(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "problems.json").write_text(json.dumps(PROBLEMS))
    (folder / "pid_splits.json").write_text(json.dumps(SPLITS))
    lines = [{"question_id": pid, "prompt": "Q", "text": text} for pid, text in OURS.items()]
    (folder / "ours.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "gpt4.json").write_text(json.dumps({"outputs": GPT4}))
    (folder / "gpt4_partial.json").write_text(json.dumps({"outputs": {k: v for k, v in GPT4.items() if k != "t9"}}))
    lines = [{"question_id": pid, "prompt": "Q", "text": text} for pid, text in REQUERY.items()]
    (folder / "requery.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


@pytest.fixture
def release(tmp_path) -> Path:
    return write_release(tmp_path / "scienceqa")


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The answer is A.", "A"),
        ("The answer is A", "FAILED"),  # the pattern's "." is one character, and it must be there
        ("The answer is A. The answer is A.", "FAILED"),  # two matches, even when they agree
        ("The answer is (B).", "FAILED"),
        ("Because ... The answer is E!", "E"),
        ("the answer is C.", "FAILED"),
    ],
)
def test_answers_are_read_as_the_ensemble_scripts_read_them(text, letter):
    assert read_letter(text) == letter


def test_an_unreadable_letter_or_one_past_the_choices_is_a_seeded_random_option():
    # get_pred_idx: `random.choice(range(len(choices)))`, drawn from the stream the scripts draw from.
    reference = random.Random(5)
    expected = [0, reference.choice(range(3)), reference.choice(range(3))]
    rng = random.Random(5)
    assert [pick("A", 3, rng), pick("FAILED", 3, rng), pick("D", 3, rng)] == expected


# Printed by the original's scripts (ce1aa08, equal to 8959d5c) on write_release's files after random.seed(seed):
# eval_science_qa_gpt4.py (gpt4_partial.json) prints complement ("Correct"), upper bound and GPT-4 NO-ANS over 9
# problems; eval_science_qa_gpt4_requery.py (gpt4.json, requery.jsonl) prints all six over 10.
SCRIPT_FIGURES = {
    0: (
        {"complement": 55.56, "upper_bound": 77.78, "gpt4_no_answer": 22.22},
        {"ours": 60.0, "gpt4": 50.0, "gpt4_no_answer": 20.0, "complement": 50.0, "judge": 50.0, "upper_bound": 80.0},
    ),
    1: (
        {"complement": 55.56, "upper_bound": 77.78, "gpt4_no_answer": 22.22},
        {"ours": 70.0, "gpt4": 60.0, "gpt4_no_answer": 20.0, "complement": 50.0, "judge": 60.0, "upper_bound": 90.0},
    ),
}


@pytest.mark.parametrize("seed", sorted(SCRIPT_FIGURES))
def test_the_ensemble_figures_are_those_the_original_scripts_print(release, seed, capsys):
    without, with_requery = SCRIPT_FIGURES[seed]
    common = ["scienceqa-ensemble", str(release), "--ours", str(release / "ours.jsonl"), "--seed", str(seed)]
    eval_main([*common, "--gpt4", str(release / "gpt4_partial.json"), "--output", str(release / "a.json")])
    result = json.loads((release / "a.json").read_text())
    assert result["counts"]["total"] == 9
    assert {key: round(result[key], 2) for key in without} == without
    assert "judge" not in result
    eval_main(
        [*common, "--gpt4", str(release / "gpt4.json"), "--requery", str(release / "requery.jsonl")]
        + ["--output", str(release / "b.json")]
    )
    result = json.loads((release / "b.json").read_text())
    assert result["counts"]["total"] == 10 and result["counts"]["missing_requery"] == 5  # t1, t4, t6, t9, t10
    assert {key: round(result[key], 2) for key in with_requery} == with_requery


def test_the_requery_figures_need_every_problem_answered(release, capsys):
    with pytest.raises(SystemExit) as stop:
        eval_main(
            ["scienceqa-ensemble", str(release), "--ours", str(release / "ours.jsonl"), "--gpt4"]
            + [str(release / "gpt4_partial.json"), "--requery", str(release / "requery.jsonl"), "--output", "x.json"]
        )
    assert stop.value.code == 2
    assert "'t9'" in capsys.readouterr().err


def test_the_teacher_prompt_is_build_prompt_gpt4s():
    # build_prompt_gpt4(problems, ["s1", "s2"], "t1", args) with QCM-ALE and QCM-AE, written out by hand.
    question = "Can you explain Question: Which is it?\nContext: {}\nOptions: (A) cat (B) dog (C) fox?"
    expected = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": question.format("A hint.")},  # double space collapsed
        {"role": "assistant", "content": "Answer: The answer is B. BECAUSE: Cats purr.\\nDogs bark. It is a dog."},
        {"role": "user", "content": question.format("N/A")},
        {"role": "assistant", "content": "Answer: The answer is A. BECAUSE: Look closely."},
        {"role": "user", "content": question.format("N/A")},
        {"role": "assistant", "content": "Answer:"},
    ]
    assert teacher_messages(PROBLEMS, ["s1", "s2"], "t1", "QCM-ALE") == expected
    # AE shows the lecture (empty for s2): the empty trailing BECAUSE: goes.
    assert teacher_messages(PROBLEMS, ["s2"], "t1", "QCM-AE")[2]["content"] == "Answer: The answer is A."


def test_the_teacher_and_the_judge_through_an_openai_compatible_server(release, tmp_path):
    def reply(body):
        last = body["messages"][-1]["content"]
        if body["model"] == "teacher":  # answers A to every question
            return " The answer is A. \n"
        return "Judging both, the answer is B. The answer is B." if "Assistant 1" in last else "?"

    with ScriptedServer(reply) as server:
        common = ["--split", "test"]
        eval_main(
            ["scienceqa-gpt4", str(release), "--teacher-url", server.url, "--teacher-model", "teacher"]
            + ["--teacher-cache", str(tmp_path / "cache"), "--output", str(tmp_path / "gpt4.json"), *common]
        )
        teacher_requests = list(server.requests)
        # run_gpt3.py's shot draw (random.seed(3); random.sample(train, 2)), and its decoding settings; problems of
        # the same text are one cached call.
        shots = random.Random(3).sample(SPLITS["train"], 2)
        expected = {json.dumps(teacher_messages(PROBLEMS, shots, pid, "QCM-ALE")) for pid in SPLITS["test"]}
        assert {json.dumps(request["messages"]) for request in teacher_requests} == expected
        assert teacher_requests[0]["temperature"] == 0.0 and teacher_requests[0]["max_tokens"] == 512
        written = json.loads((tmp_path / "gpt4.json").read_text())
        assert written["outputs"]["t4"] == "The answer is A."
        assert written["shot_qids"] == shots and written["count"] == 10
        assert written["correct"] == 4  # t1, t4, t7, t9 have answer A; every reply is readable
        prompt = tmp_path / "prompt.txt"
        prompt.write_text("Assistant 1 said {ours}; Assistant 2 said {gpt4}. {question}")
        eval_main(
            ["scienceqa-requery", str(release), "--ours", str(release / "ours.jsonl"), "--gpt4"]
            + [str(tmp_path / "gpt4.json"), "--judge-url", server.url, "--judge-model", "judge", "--judge-cache"]
            + [str(tmp_path / "cache"), "--prompt", str(prompt), "--output", str(tmp_path / "requery.jsonl"), *common]
        )
    lines = [json.loads(line) for line in (tmp_path / "requery.jsonl").read_text().splitlines()]
    # Asked where the two readings differ: every problem whose own answer is not read as A (t1 and t9 agree).
    assert [line["question_id"] for line in lines] == ["t2", "t3", "t4", "t5", "t6", "t7", "t8", "t10"]
    assert lines[0]["prompt"] == (
        "Assistant 1 said The answer is B.; Assistant 2 said The answer is A.. "
        "Question: Which is it?\nContext: N/A\nOptions: (A) cat (B) dog (C) fox"
    )
    assert {line["text"] for line in lines} == {"Judging both, the answer is B. The answer is B."}
    assert "{question}" in REQUERY_PROMPT and "{ours}" in REQUERY_PROMPT and "{gpt4}" in REQUERY_PROMPT


def test_a_requery_prompt_with_an_unknown_field_is_one_line(release, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Which is right, {ours} or {theirs}?")
    (tmp_path / "gpt4.json").write_text(json.dumps({"outputs": GPT4}))
    with pytest.raises(SystemExit) as stop:
        eval_main(
            ["scienceqa-requery", str(release), "--ours", str(release / "ours.jsonl"), "--gpt4"]
            + [str(tmp_path / "gpt4.json"), "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "judge"]
            + ["--prompt", str(prompt), "--output", str(tmp_path / "r.jsonl")]
        )
    assert stop.value.code == 2
    assert "'theirs'" in capsys.readouterr().err
