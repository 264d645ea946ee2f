"""`llava eval scienceqa --protocol v1`: the paper's ScienceQA evaluation (its prompt formats as written, the `###`
conversation, sampling, the answer prompter, a random option for an unread answer).

The scoring is compared with what the paper-era `llava/eval/eval_science_qa.py` (haotian-liu/LLaVA at 9fffc4f) prints
and writes for the same hand-made answer file, run once from the mirror after `random.seed(seed)`; the prompter's text
with the concatenation `model_vqa_science.py` (8959d5c) writes, `prompt + outputs_reasoning + ' ###\\nANSWER:'`.
"""

import json
from pathlib import Path

import pytest

from command_line.main import main as llava
from evaluation.results import read_answers
from evaluation.scienceqa import V1, _prompted, read_questions
from modeling_llava import chat_template, stop_string, use_template
from modeling_llava.chat_templates import V0_EXAMPLE_ANSWER, V0_EXAMPLE_QUESTION
from processing.scienceqa_data import llava_record
from tests.conftest import random_image
from tests.test_scienceqa import PROBLEMS

# The model's final texts: two matches (p2), no character after the letter (p3), a letter past three choices (p4),
# a 1.5-style "C. fox" that this scorer does not read (p5); p8 has no answer.
OUTPUTS = {
    "p1": "LECTURE: x\n The answer is A.",
    "p2": "The answer is B. The answer is B.",
    "p3": "The answer is B",
    "p4": "The answer is D.",
    "p5": "C. fox",
    "p6": "The answer is A.\n",
    "p7": "The answer is C.",
    "p9": "Assistant: SOLUTION: y\n The answer is B.",
}
# eval_science_qa.py (9fffc4f) after random.seed(seed): its printed "Total: 8, Correct: N" and its output file's
# `correct` problems (p8, unanswered, is not counted).
SCRIPT = {0: ["p1", "p2", "p6", "p9"], 1: ["p1", "p4", "p6", "p9"], 2: ["p1", "p4", "p5", "p6", "p9"]}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scienceqa")
    (root / "problems.json").write_text(json.dumps(PROBLEMS))
    (root / "pid_splits.json").write_text(json.dumps({"test": list(PROBLEMS)}))
    for seed, pid in enumerate(pid for pid, p in PROBLEMS.items() if p["image"]):
        (root / "images/test" / pid).mkdir(parents=True)
        random_image(seed).save(root / "images/test" / pid / "image.png")
    return root


@pytest.mark.parametrize("seed", sorted(SCRIPT))
def test_answers_are_scored_as_the_paper_era_scorer_scores_them(release, tmp_path, seed, capsys):
    answers = tmp_path / "answers.jsonl"
    lines = [{"question_id": pid, "prompt": "Q", "text": text} for pid, text in OUTPUTS.items()]
    answers.write_text("".join(json.dumps(line) + "\n" for line in lines))
    command = ["eval", "scienceqa", "--protocol", "v1", "--answers", str(answers), "--data", str(release)]
    llava([*command, "--output-dir", str(tmp_path), "--seed", str(seed)])
    results = json.loads((tmp_path / "scienceqa_v1_results.json").read_text())
    assert results["benchmark"] == "scienceqa-v1" and results["protocol"] == "v1"
    assert results["parts"]["Total"]["count"] == 8 and results["missing"] == ["p8"]
    assert sorted(p["pid"] for p in results["predictions"] if p["correct"]) == SCRIPT[seed]
    assert results["score"] == 100 * len(SCRIPT[seed]) / 8
    assert [item["pid"] for item in results["random_choices"]] == ["p2", "p3", "p4", "p5"]
    assert f"Total: 8, Correct: {len(SCRIPT[seed])}, " in capsys.readouterr().out


def test_the_v0_template_with_the_image_in_place_still_stops_at_its_separator(processor):
    # April 2023 put the image after the question; the answer still ends at "###".
    use_template(processor, "v0", image_in_place=True)
    try:
        assert processor.chat_template["default"] == chat_template("v0", True)
        assert stop_string(processor) == "###"
    finally:
        use_template(processor, "vicuna_v1")


def test_the_answer_prompter_continues_the_reasoning_after_answer(release, processor):
    (question,) = [q for q in read_questions(release, "test", None, V1) if q.question_id == "p1"]
    text = llava_record("p1", PROBLEMS["p1"], "QCM-LEPA")["conversations"][0]["value"].replace("<image>", "").strip()
    assert question.prompt == f"{text}\n<image>"  # model_vqa_science.py (8959d5c): cur_prompt + '\n' + '<image>'
    reasoning = "Assistant: LECTURE: Cats purr.\nSOLUTION: It is a cat."  # as the model wrote it after `###`
    prompted = _prompted({"text": reasoning}, question, "")
    use_template(processor, V1.template, image_in_place=True)
    try:
        rendered = processor.apply_chat_template(prompted.messages, add_generation_prompt=True) + prompted.prefill
    finally:
        use_template(processor, "vicuna_v1")
    # The original's second prompt: `conv_templates["simple"]` (the paper's --conv-mode simple, 8959d5c..9fffc4f)
    # with the question turn appended, whose get_prompt() (SeparatorStyle.SINGLE, sep "###") is system + "###" then
    # "Role: message###" per message; the reasoning; then ' ###\nANSWER:'. Written out from the original's file.
    system = (
        "You are LLaVA, a large language model trained by UW Madison WAIV Lab, based on LLaMA architecture."
        "You are designed to assist human with a variety of tasks using natural language."
        "Follow the instructions carefully."
    )
    first = f"{system}###Human: Hi!###Assistant: Hi there!  How can I help you today?\n###Human: {text}\n<image>###"
    assert V1.template == "simple"
    assert rendered == processor.tokenizer.bos_token + first + reasoning + " ###\nANSWER:"


def test_the_v0_prompter_joins_the_reasoning_after_its_generation_prompt(release, processor):
    (question,) = [q for q in read_questions(release, "test", None, V1) if q.question_id == "p1"]
    text = llava_record("p1", PROBLEMS["p1"], "QCM-LEPA")["conversations"][0]["value"].replace("<image>", "").strip()
    prompted = _prompted({"text": "LECTURE: Cats purr."}, question, " ")
    use_template(processor, "v0", image_in_place=True)
    try:
        rendered = processor.apply_chat_template(prompted.messages, add_generation_prompt=True) + prompted.prefill
    finally:
        use_template(processor, "vicuna_v1")
    system = (  # conv_vicuna_v0's
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    )
    first = f"{system}###Human: {V0_EXAMPLE_QUESTION}###Assistant: {V0_EXAMPLE_ANSWER}###Human: {text}\n<image>###"
    assert rendered == processor.tokenizer.bos_token + first + "Assistant: LECTURE: Cats purr. ###\nANSWER:"


def test_llava_eval_scienceqa_v1_end_to_end_is_reproducible_by_seed(release, llava_checkpoint, tmp_path):
    command = ["eval", "scienceqa", llava_checkpoint, "--protocol", "v1", "--data", str(release), "--device", "cpu"]
    command += ["--max-new-tokens", "6", "--batch-size", "4"]
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        llava([*command, "--seed", str(seed), "--output-dir", str(tmp_path / name)])
        runs[name] = read_answers(tmp_path / name / "scienceqa_v1_answers.jsonl", ("question_id", "prompt", "text"))
    texts = {name: [line["text"] for line in lines] for name, lines in runs.items()}
    assert texts["a"] == texts["b"]  # the same seed, the same sampled answers
    assert texts["a"] != texts["c"]
    # model_vqa_science.py's shape and prompts: the question as written, the image after it.
    questions = read_questions(release, "test", None, V1)
    assert [(line["question_id"], line["prompt"]) for line in runs["a"]] == [
        (q.question_id, q.prompt) for q in questions
    ]
    assert runs["a"][0]["prompt"].endswith("\n<image>") and "<image>" not in runs["a"][2]["prompt"]
    # The answer line joins the reasoning and the prompter's continuation as the original does.
    reasoning = read_answers(tmp_path / "a" / "scienceqa_v1_reasoning.jsonl")
    continued = read_answers(tmp_path / "a" / "scienceqa_v1_prompter.jsonl")
    assert texts["a"] == [
        r["text"] + "\n The answer is " + c["text"] for r, c in zip(reasoning, continued, strict=True)
    ]
    results = json.loads((tmp_path / "a" / "scienceqa_v1_results.json").read_text())
    assert results["seed"] == 1 and results["parts"]["Total"]["count"] == 9


def test_the_1_5_protocol_takes_no_sampling_flags(release, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        llava(["eval", "scienceqa", "--answers", "a.jsonl", "--data", str(release), "--temperature", "0.7"])
    assert stop.value.code == 2
    assert "--protocol v1" in capsys.readouterr().err
