"""`llava eval BENCHMARK` for the benchmarks of LLaVA-1.5's table, on a stub benchmark registered by the test: scoring
an answer file from anywhere, answering a question file as the original's `model_vqa_loader.py` answers it (vicuna_v1
prompt with `<image>\\n`, the script's suffix, `expand2square` with the mean colour then CLIP's preprocessing,
greedy), resuming, the results file, the model card's table, `llava eval suite` on eval.zip's layout, and the
contiguous chunks of the original's `--num-chunks`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForImageTextToText, AutoProcessor, CLIPImageProcessor

from command_line.main import main as llava
from evaluation import benchmarks, suite
from evaluation.benchmarks import Benchmark, Layout
from evaluation.results import write_results
from evaluation.sharding import chunk
from hub_cards.model_card import write_model_card
from modeling_llava import LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from modeling_llava.chat_templates import CHAT_TEMPLATES
from tests.conftest import random_image, refused, vicuna_v1_get_prompt
from tests.test_processing import expand2square

SUFFIX = "One word."
MAX_NEW_TOKENS = 6
# A benchmark module as the contract of evaluation/benchmarks.py asks: exact match against {question_id: answer}, or,
# with `server`, an upload file and no score.
STUB = f"""
import json
from pathlib import Path

from evaluation.results import BenchmarkError

NAME = "stub"
ANSWERING = {{"template": "vicuna_v1", "max_new_tokens": {MAX_NEW_TOKENS}, "suffix": {SUFFIX!r}}}


def answer_extras(question):
    return {{"round_id": 0}}


def score(answers, *, output_dir, annotations=None, questions=None, server=False):
    if server:
        upload = Path(output_dir) / "stub_upload.json"
        upload.write_text(json.dumps({{str(line["question_id"]): line["text"] for line in answers}}))
        return {{"score": None, "parts": {{"all": {{"count": len(answers)}}}}, "submission": upload}}
    if annotations is None:
        raise BenchmarkError("stub needs --annotations")
    truth = json.loads(Path(annotations).read_text())
    right = sum(truth[str(line["question_id"])] == line["text"] for line in answers)
    accuracy = 100 * right / len(answers)
    return {{"score": accuracy, "parts": {{"all": {{"score": accuracy, "count": len(answers)}}}}, "submission": None}}
"""
QUESTIONS = [
    {"question_id": 10, "image": "0.png", "text": "What is the colour of the square?"},
    {"question_id": 11, "image": "1.png", "text": "Where is the blue circle?"},
    {"question_id": "x", "image": "2.png", "text": "How many shapes are there?"},
    {"question_id": 13, "image": "0.png", "text": "Where?"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def stub(tmp_path, monkeypatch) -> dict[str, Benchmark]:
    """The registry holding the stub benchmark alone, as `stub`, `stub-server` and `stub-missing` (annotations it
    will not find); the other benchmarks' modules are not needed."""
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "stub_benchmark.py").write_text(STUB)
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    registry = {
        "stub": Benchmark(
            "stub", "stub_benchmark", "stub", Layout(("stub",), "questions.jsonl", "images", "truth.json")
        ),
        "stub-server": Benchmark(
            "stub-server", "stub_benchmark", "stub", Layout(("server",), "q.jsonl", "images", None), {"server": True}
        ),
        "stub-missing": Benchmark(
            "stub-missing", "stub_benchmark", "stub", Layout(("missing", "other"), "q.jsonl", "images", "truth.json")
        ),
    }
    monkeypatch.setattr(benchmarks, "BENCHMARKS", registry)
    monkeypatch.setattr(suite, "BENCHMARKS", registry)
    yield registry
    sys.modules.pop("stub_benchmark", None)


@pytest.fixture(scope="module")
def question_folder(tmp_path_factory) -> Path:
    """Questions on images that are not square (so that padding changes the pixels), in eval.zip's shape."""
    root = tmp_path_factory.mktemp("stub-eval")
    (root / "images").mkdir()
    for seed in range(3):
        random_image(seed, size=(30 + 8 * seed, 52)).save(root / "images" / f"{seed}.png")
    write_jsonl(root / "questions.jsonl", QUESTIONS)
    return root


@pytest.fixture(scope="module")
def padding_checkpoint(tmp_path_factory, llava_checkpoint, checkpoints) -> str:
    """The session's tiny LLaVA with LLaVA-1.5's pad mode (`image_aspect_ratio: pad`), saved with the `plain`
    template: answering must use the benchmark's vicuna_v1, as the original's `--conv-mode vicuna_v1` does."""
    folder = tmp_path_factory.mktemp("padding") / "llava-pad"
    LlavaPluginForConditionalGeneration.from_pretrained(llava_checkpoint).save_pretrained(folder)
    processor = LlavaPluginProcessor.from_backbones(checkpoints["clip"], checkpoints["llama"], pad_to_square=True)
    processor.chat_template = CHAT_TEMPLATES["plain"]
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def reference(padding_checkpoint, checkpoints, question_folder) -> list[str]:
    """Each question answered alone as the original's model_vqa_loader.py does: vicuna_v1's prompt of `<image>\\n` +
    text (+ the script's suffix on its own line), the image through `expand2square` with the mean colour (as ints)
    and the vision tower's own CLIP preprocessing, greedy."""
    model = AutoModelForImageTextToText.from_pretrained(padding_checkpoint).eval()
    processor = AutoProcessor.from_pretrained(padding_checkpoint)
    clip = CLIPImageProcessor.from_pretrained(checkpoints["clip"])
    answers = []
    for question in QUESTIONS:
        text = f"<image>\n{question['text']}\n{SUFFIX}"
        prompt = processor.tokenizer.bos_token + vicuna_v1_get_prompt([("USER", text), ("ASSISTANT", None)])
        image = random_image(int(question["image"][0]), size=(30 + 8 * int(question["image"][0]), 52))
        square = expand2square(image, tuple(int(x * 255) for x in clip.image_mean))
        inputs = processor(images=square, text=prompt, add_special_tokens=False, return_tensors="pt")
        inputs["pixel_values"] = clip(square, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            tokens = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answers.append(processor.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    assert len(set(answers)) > 1, "the reference answers must differ, or the comparison says little"
    return answers


def answer_with(checkpoint: str, folder: Path, output_dir: Path, *extra: str) -> list[dict]:
    llava(
        ["eval", "stub", checkpoint, "--questions", str(folder / "questions.jsonl")]
        + ["--image-folder", str(folder / "images"), "--output-dir", str(output_dir), "--batch-size", "3", *extra]
    )
    return lines(output_dir / "stub_answers.jsonl")


def test_answers_are_the_original_model_vqa_loaders_in_its_answer_shape(
    stub, padding_checkpoint, question_folder, reference, tmp_path
):
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"10": reference[0], "11": "no", "x": reference[2], "13": "no"}))
    answers = answer_with(padding_checkpoint, question_folder, tmp_path / "out", "--annotations", str(truth))
    assert [answer["text"] for answer in answers] == reference
    keys = [
        "question_id",
        "round_id",
        "prompt",
        "text",
        "answer_id",
        "model_id",
        "metadata",
    ]  # model_vqa_mmbench.py's order
    assert [list(answer) for answer in answers] == [keys] * len(QUESTIONS)
    assert [answer["question_id"] for answer in answers] == [question["question_id"] for question in QUESTIONS]
    # The answer line's prompt is the question file's text, without the suffix the script appends (model_vqa_*.py).
    assert [answer["prompt"] for answer in answers] == [question["text"] for question in QUESTIONS]
    assert {answer["model_id"] for answer in answers} == {"llava-pad"}
    results = json.loads((tmp_path / "out" / "stub_results.json").read_text())
    expected_score = 100 * (2 + sum(reference[i] == "no" for i in (1, 3))) / 4  # 10 and x match, 11 and 13 if "no"
    assert results["benchmark"] == "stub" and results["score"] == pytest.approx(expected_score)
    assert results["parts"] == {"all": {"score": pytest.approx(expected_score), "count": 4}}
    assert results["submission"] is None and results["answers"] == str(tmp_path / "out" / "stub_answers.jsonl")


def test_a_stopped_run_is_resumed_and_a_complete_one_loads_no_model(stub, llava_checkpoint, question_folder, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "truth.json").write_text(json.dumps({"10": "a", "11": "b", "x": "c", "13": "d"}))
    complete = answer_with(llava_checkpoint, question_folder, out, "--annotations", str(tmp_path / "truth.json"))
    answers = out / "stub_answers.jsonl"
    kept = "".join(json.dumps(answer) + "\n" for answer in complete[:2])
    answers.write_text(kept + json.dumps(complete[2])[:20])  # stopped while writing the third line
    resumed = answer_with(llava_checkpoint, question_folder, out, "--annotations", str(tmp_path / "truth.json"))
    assert resumed[:2] == complete[:2]  # kept as they were, answer ids included
    assert [answer["text"] for answer in resumed] == [answer["text"] for answer in complete]
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    before = answers.read_bytes()
    answer_with(str(not_a_model), question_folder, out, "--annotations", str(tmp_path / "truth.json"))
    assert answers.read_bytes() == before


def test_an_answer_file_from_anywhere_is_scored(stub, tmp_path, capsys):
    answers = write_jsonl(
        tmp_path / "theirs.jsonl",
        [
            {"question_id": 1, "prompt": "Q?", "text": "Yes", "answer_id": "a", "model_id": "m", "metadata": {}},
            {"question_id": 2, "prompt": "Q?", "text": "red", "answer_id": "b", "model_id": "m", "metadata": {}},
            {"question_id": 3, "prompt": "Q?", "text": "two", "answer_id": "c", "model_id": "m", "metadata": {}},
        ],
    )
    (tmp_path / "truth.json").write_text(json.dumps({"1": "Yes", "2": "blue", "3": "two"}))
    llava(["eval", "stub", "--answers", str(answers), "--annotations", str(tmp_path / "truth.json")]
          + ["--output-dir", str(tmp_path / "out")])  # fmt: skip
    results = json.loads((tmp_path / "out" / "stub_results.json").read_text())
    assert results["score"] == pytest.approx(200 / 3)  # 2 of 3 match
    assert "stub: 66.67" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--output-dir", "out"], "give either a CHECKPOINT"),
        (["--answers", "missing.jsonl", "--output-dir", "out"], "Answer file 'missing.jsonl' does not exist"),
        (["--answers", "missing.jsonl"], "say where the results go with --output-dir"),
        (["some-checkpoint", "--output-dir", "out"], "give --questions FILE"),
    ],
    ids=["neither", "no-answer-file", "no-output-dir", "no-questions"],
)
def test_a_mistake_is_one_line_and_exit_status_2(stub, capsys, argv, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert expected in refused(capsys, ["eval", "stub", *argv])


def test_a_bad_answer_line_names_the_file_and_line(stub, tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"question_id": 1, "text": "Yes"}\n{"question_id": 2}\n')
    message = refused(capsys, ["eval", "stub", "--answers", str(answers), "--output-dir", str(tmp_path)])
    assert f"{str(answers)!r} line 2 has no 'text'" in message


def test_a_benchmark_whose_module_is_not_there_is_one_line(stub, tmp_path, capsys):
    """The registry names modules written apart; one not installed yet must not break `llava eval`'s other commands."""
    stub["later"] = Benchmark("later", "evaluation.not_written_yet", "later", stub["stub"].layout)
    message = refused(capsys, ["eval", "later", "--answers", "a.jsonl", "--output-dir", str(tmp_path)])
    assert message == "llava eval later: later is not available in this installation (evaluation.not_written_yet)."


def test_every_benchmark_of_llava_1_5s_table_is_a_command(capsys):
    with pytest.raises(SystemExit):
        llava(["eval", "--help"])
    listed = capsys.readouterr().out
    for name in ("vqav2", "gqa", "vizwiz", "scienceqa", "textvqa", "pope", "mme", "mmbench", "mmbench-cn", "seed",
                 "llava-bench", "mm-vet", "suite"):  # fmt: skip
        assert f"\n    {name}" in listed, name


def card_table(folder: Path) -> tuple[str, dict]:
    card = ModelCard.load(write_model_card(folder, repo_id="someone/llava-test"))
    return card.text, {result.dataset_name: result.metric_value for result in card.data.eval_results}


def test_every_results_file_is_a_row_of_the_card_and_scored_ones_enter_model_index(tmp_path, llava_checkpoint):
    folder = tmp_path / "llava-test"
    shutil.copytree(llava_checkpoint, folder)
    parts = {"adversarial": {"score": 85.1, "count": 3000}, "random": {"score": 87.3, "count": 2910}}
    write_results(folder, "pope", 85.9, parts)
    write_results(folder, "mme", 1531.3, {"perception": {"count": 2374}})
    write_results(folder, "vqav2", None, {"test-dev": {"count": 107394}}, folder / "answers_upload" / "vqav2.json")
    write_results(folder, "mm-vet", None, {}, folder / "mm-vet.json")
    # ScienceQA's file as this project wrote it before the one shape: still a row.
    legacy = {"accuracy": 0.716, "columns": {"IMG": 0.716}, "split": "test", "scoring": "paper"}
    (folder / "scienceqa_results.json").write_text(json.dumps(legacy))
    text, model_index = card_table(folder)
    assert model_index == {"POPE": 85.9, "MME": 1531.3, "ScienceQA": 71.6}  # in percent, as the paper's columns
    assert "| POPE | F1 x100, mean of adversarial, popular, random | 85.90 |" in text
    assert "| POPE (adversarial) | F1 x100, mean of adversarial, popular, random | 85.10 |" in text
    assert "| MME | perception score (sum) | 1531.30 |" in text
    assert "| VQAv2 | accuracy (%), test-dev | submitted: vqav2.json |" in text
    assert "| MM-Vet | GPT-4 score | submitted: mm-vet.json |" in text
    assert "| ScienceQA (IMG) | accuracy (paper scoring) | 71.60% |" in text
    # In the order of LLaVA-1.5's table: VQAv2, ..., POPE, MME, ..., MM-Vet.
    assert text.index("| VQAv2 |") < text.index("| POPE |") < text.index("| MME |") < text.index("| MM-Vet |")


def test_a_benchmark_in_the_one_shape_replaces_its_earlier_rows(tmp_path, llava_checkpoint):
    folder = tmp_path / "llava-test"
    shutil.copytree(llava_checkpoint, folder)
    write_results(folder, "scienceqa", 71.6, {"IMG": {"score": 71.6, "count": 2017}})
    write_results(folder, "llava-bench", 72.5, {})
    text, model_index = card_table(folder)
    assert model_index == {"ScienceQA-IMG": 71.6, "LLaVA-Bench (In-the-Wild)": 72.5}
    assert "| ScienceQA-IMG (IMG) | accuracy on image questions (%) | 71.60 |" in text


def make_eval_dir(root: Path, question_folder: Path) -> Path:
    """eval.zip's layout for the stubs: `stub/` whole, `other/` (the second place of stub-missing) without its
    annotations, `server/` without any (scored by a server), and nothing for the rest."""
    for folder, questions in (("stub", "questions.jsonl"), ("other", "q.jsonl"), ("server", "q.jsonl")):
        shutil.copytree(question_folder / "images", root / folder / "images")
        write_jsonl(root / folder / questions, QUESTIONS[:3])
    (root / "stub" / "truth.json").write_text(json.dumps({"10": "a", "11": "b", "x": "c"}))
    return root


def test_the_suite_runs_every_benchmark_found_and_resumes(stub, llava_checkpoint, question_folder, tmp_path, capsys):
    eval_dir, out = make_eval_dir(tmp_path / "eval", question_folder), tmp_path / "out"
    llava(["eval", "suite", llava_checkpoint, "--data", str(eval_dir), "--output-dir", str(out), "--batch-size", "2"])
    printed = capsys.readouterr()
    table = printed.out.splitlines()
    header = next(line for line in table if line.startswith("benchmark"))
    rows = {line.split()[0]: line for line in table[table.index(header) + 1 :] if line.split()[0].startswith("stub")}
    assert header.split() == ["benchmark", "score", "answers", "seconds"]
    assert rows["stub"].split()[1:3] == ["0.00", "3"]  # the tiny model says none of a, b, c
    assert "answers only: missing other/truth.json" in rows["stub-missing"]
    assert f"submit {out / 'stub_upload.json'}" in rows["stub-server"]
    assert "stub" in printed.err  # each benchmark's progress bar, named after it
    for name in ("stub", "stub_missing", "stub_server"):
        assert len(lines(out / f"{name}_answers.jsonl")) == 3
    assert json.loads((out / "stub_results.json").read_text())["score"] == 0.0
    assert not (out / "stub_missing_results.json").exists()

    # Run again with something that is no checkpoint: nothing is answered twice, so nothing is loaded.
    (eval_dir / "other" / "truth.json").write_text(json.dumps({"10": "a", "11": "b", "x": "c"}))
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    before = (out / "stub_answers.jsonl").read_bytes()
    llava(["eval", "suite", str(not_a_model), "--data", str(eval_dir), "--output-dir", str(out)])
    assert (out / "stub_answers.jsonl").read_bytes() == before
    assert json.loads((out / "stub_missing_results.json").read_text())["score"] == 0.0  # its annotations came


def test_a_folder_without_any_benchmark_is_one_line(stub, tmp_path, capsys):
    (tmp_path / "eval").mkdir()
    message = refused(capsys, ["eval", "suite", "ckpt", "--data", str(tmp_path / "eval"), "--output-dir", "out"])
    assert "holds no benchmark of eval.zip's layout (looked for stub/questions.jsonl" in message


@pytest.mark.parametrize(
    ("count", "processes", "expected"),
    [
        # The original's split_list: chunks of ceil(count / processes), the last ones short or empty.
        (10, 3, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]),
        (5, 4, [[0, 1], [2, 3], [4], []]),
        (2, 2, [[0], [1]]),
    ],
)
def test_processes_take_the_originals_contiguous_chunks(count, processes, expected):
    assert [chunk(list(range(count)), rank, processes) for rank in range(processes)] == expected


REPOSITORY = Path(__file__).parent.parent


def torchrun(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2` of `llava ARGV` on this CPU, the stub benchmark registered in each process."""
    (tmp_path / "modules").mkdir(exist_ok=True)
    (tmp_path / "modules" / "stub_benchmark.py").write_text(STUB)
    driver = tmp_path / "llava_with_stub.py"
    driver.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path / 'modules')!r})\n"
        "from evaluation import benchmarks\n"
        "benchmarks.BENCHMARKS['stub'] = benchmarks.Benchmark(\n"
        "    'stub', 'stub_benchmark', 'stub', benchmarks.Layout(('stub',), 'q.jsonl', 'images', 'truth.json')\n"
        ")\n"
        "from command_line.main import main\n"
        "main(sys.argv[1:])\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver)]
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command + argv, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_processes_answer_as_one_and_merge_in_question_order(llava_checkpoint, question_folder, tmp_path):
    """`llava predict` under torchrun: each process answers its chunk (2 and 2 questions of 4 here, then 3 of 5 and 2)
    into its part file; the merged answer file holds one process's lines, in the question file's order."""
    questions = write_jsonl(tmp_path / "questions.jsonl", [*QUESTIONS, {"question_id": 14, "text": "Which shape?"}])
    common = ["--questions", str(questions), "--image-folder", str(question_folder / "images"), "--batch-size", "2"]
    common += ["--max-new-tokens", str(MAX_NEW_TOKENS)]
    llava(["predict", llava_checkpoint, "--output", str(tmp_path / "one.jsonl"), *common])
    done = torchrun(tmp_path, ["predict", llava_checkpoint, "--output", str(tmp_path / "two.jsonl"), *common])
    one, two = lines(tmp_path / "one.jsonl"), lines(tmp_path / "two.jsonl")
    assert [line["question_id"] for line in two] == [10, 11, "x", 13, 14]
    assert [line["text"] for line in two] == [line["text"] for line in one]
    assert [list(line) for line in two] == [list(line) for line in one]
    assert not (tmp_path / "two.jsonl.parts").exists()  # the parts are merged and removed
    assert done.stdout.count("5 questions answered into") == 1  # one report, of both processes


@pytest.mark.slow
def test_llava_eval_on_two_processes_resumes_merges_and_scores_once(stub, llava_checkpoint, question_folder, tmp_path):
    """A stopped one-process run (two answers and a cut line) resumed by two processes: the answers kept, the rest
    answered, merged in order, and scored by process 0 alone."""
    (tmp_path / "truth.json").write_text(json.dumps({"10": "a", "11": "b", "x": "c", "13": "d"}))
    argv = ["eval", "stub", llava_checkpoint, "--questions", str(question_folder / "questions.jsonl")]
    argv += ["--image-folder", str(question_folder / "images"), "--annotations", str(tmp_path / "truth.json")]
    argv += ["--batch-size", "3"]
    llava([*argv, "--output-dir", str(tmp_path / "one")])
    one = lines(tmp_path / "one" / "stub_answers.jsonl")
    resumed = tmp_path / "two"
    resumed.mkdir()
    kept = "".join(json.dumps(line) + "\n" for line in one[:2])
    (resumed / "stub_answers.jsonl").write_text(kept + json.dumps(one[2])[:20])
    done = torchrun(tmp_path, [*argv, "--output-dir", str(resumed)])
    two = lines(resumed / "stub_answers.jsonl")
    assert two[:2] == one[:2]
    assert [line["text"] for line in two] == [line["text"] for line in one]
    assert [line["question_id"] for line in two] == [question["question_id"] for question in QUESTIONS]
    assert done.stdout.count("stub: 0.00") == 1
    assert json.loads((resumed / "stub_results.json").read_text())["score"] == 0.0
