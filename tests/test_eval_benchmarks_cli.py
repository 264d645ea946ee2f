"""`llava eval BENCHMARK --answers FILE ...` for each of the ten benchmarks without a command of their own, through
the command line and the real modules (no stub): the same figures as the scorer tests (those the ORIGINAL's scripts
printed on the fixtures of tests/fixtures/eval/, slices of the official LLaVA-1.5-13B files of haotian-liu/LLaVA
commit 32cebc38 and of POPE's labels at AoiDragon/POPE e3e3926; see tests/test_benchmark_scorers_{vqa,mc}.py for
which script printed what), `OUTPUT/<benchmark>_results.json` in the one shape, and the upload file, where there is
one, equal to the one the original wrote.

Then the checkpoint path of two benchmarks whose questions are read differently (MMBench's tsv with its extra answer
keys, POPE's question JSONL through `llava predict`'s reader), and `llava eval suite` on an `eval.zip` layout built
from the fixtures.
"""

import base64
import io
import json
import shutil
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
import torch

from command_line.main import main as llava
from modeling_llava import LlavaPluginForConditionalGeneration
from tests.conftest import random_image

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
MME_NESTED = (
    "artwork",
    "celebrity",
    "landmark",
    "posters",
    "scene",
)  # categories with images/ + questions_answers_YN/
RESULT_KEYS = ["benchmark", "score", "parts", "submission", "answers"]


def score(benchmark: str, answers: Path, output_dir: Path, *flags: str) -> dict:
    """Runs `llava eval BENCHMARK --answers ... --output-dir ...` and returns the results file it wrote."""
    llava(["eval", benchmark, "--answers", str(answers), *flags, "--output-dir", str(output_dir)])
    results_file = output_dir / f"{benchmark.replace('-', '_')}_results.json"
    results = json.loads(results_file.read_text())
    assert list(results) == RESULT_KEYS
    assert results["benchmark"] == benchmark and results["answers"] == str(answers)
    return results


def xlsx_cells(path: str | Path) -> list[list]:
    return [[cell.value for cell in row] for row in openpyxl.load_workbook(path).active.iter_rows()]


def test_pope(tmp_path, capsys):
    folder = FIXTURES / "pope"
    flags = ("--annotations", str(folder / "coco"), "--questions", str(folder / "llava_pope_test.jsonl"))
    results = score("pope", folder / "llava-v1.5-13b.jsonl", tmp_path, *flags)
    # eval_pope.py printed these F1 scores on the fixture (adversarial, random, popular).
    assert results["score"] == pytest.approx(100 * (0.8148148148148148 + 0.9166666666666666 + 0.8799999999999999) / 3)
    assert {category: part["f1"] for category, part in results["parts"].items()} == pytest.approx(
        {"adversarial": 0.8148148148148148, "random": 0.9166666666666666, "popular": 0.8799999999999999}
    )
    assert results["submission"] is None
    assert "pope: 87.05" in capsys.readouterr().out


def test_textvqa(tmp_path):
    folder = FIXTURES / "textvqa"
    results = score(
        "textvqa", folder / "llava-v1.5-13b.jsonl", tmp_path, "--annotations", str(folder / "TextVQA_0.5.1_val.json")
    )
    assert results["score"] == pytest.approx(78.0)  # eval_textvqa.py: "Accuracy: 78.00%"
    assert results["parts"] == {"val": {"answers": 30, "accuracy": pytest.approx(78.0)}}


def test_gqa(tmp_path):
    folder = FIXTURES / "gqa"
    answers = tmp_path / "answers.jsonl"
    answers.write_text((folder / "llava-v1.5-13b.jsonl").read_text() + (folder / "handmade_answers.jsonl").read_text())
    flags = ("--annotations", str(folder / "testdev_balanced_questions.json"))
    results = score("gqa", answers, tmp_path / "out", *flags)
    # convert_gqa_for_eval.py + GQA's eval.py: "Accuracy: 67.65%", "Binary: 72.22%", "Open: 62.50%".
    assert round(results["score"], 2) == 67.65
    assert round(results["parts"]["binary"]["accuracy"], 2) == 72.22
    assert round(results["parts"]["open"]["accuracy"], 2) == 62.50


def test_vqav2_upload(tmp_path):
    folder = FIXTURES / "vqav2"
    flags = ("--annotations", str(folder / "llava_vqav2_mscoco_test2015.jsonl"))
    results = score("vqav2", folder / "llava-v1.5-13b.jsonl", tmp_path, *flags)
    upload = tmp_path / "answers_upload" / "vqav2" / "llava-v1.5-13b.json"
    assert results["score"] is None and results["submission"] == str(upload)
    assert upload.read_bytes() == (folder / "answers_upload" / "llava-v1.5-13b.json").read_bytes()
    assert results["parts"] == {"test2015": {"questions": 10, "answered": 8, "empty": 2}}


def test_vizwiz_upload_equals_the_released_one(tmp_path, capsys):
    folder = FIXTURES / "vizwiz"
    results = score(
        "vizwiz", folder / "llava-v1.5-13b.jsonl", tmp_path, "--annotations", str(folder / "llava_test.jsonl")
    )
    upload = tmp_path / "answers_upload" / "vizwiz" / "llava-v1.5-13b.json"
    assert results["score"] is None and results["submission"] == str(upload)
    assert upload.read_bytes() == (folder / "answers_upload" / "llava-v1.5-13b.json").read_bytes()
    assert results["parts"]["test"]["questions"] == 38
    assert f"vizwiz: scored by its server or grader; upload {upload}" in capsys.readouterr().out


def test_mme_needs_the_prompt_and_gives_calculation_pys_figures(tmp_path, capsys):
    release = shutil.copytree(FIXTURES / "mme" / "MME_Benchmark_release_version", tmp_path / "MME")
    for category in MME_NESTED:  # git keeps no empty folder
        (release / category / "images").mkdir()
    answers = FIXTURES / "mme" / "llava-v1.5-13b.jsonl"
    results = score("mme", answers, tmp_path / "out", "--annotations", str(release))
    # convert_answer_to_mme.py + MME's eval_tool/calculation.py: perception 1625.0, cognition 400.0 on the slice.
    assert results["score"] == 1625.0
    assert results["parts"]["cognition"]["score"] == 400.0
    assert results["submission"] is None

    without_prompt = tmp_path / "no-prompt.jsonl"
    line = json.loads(answers.read_text().splitlines()[0])
    without_prompt.write_text(json.dumps({"question_id": line["question_id"], "text": line["text"]}) + "\n")
    with pytest.raises(SystemExit) as stopped:
        llava(["eval", "mme", "--answers", str(without_prompt), "--annotations", str(release)]
              + ["--output-dir", str(tmp_path / "bad")])  # fmt: skip
    assert stopped.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "prompt" in message and message.startswith("llava eval mme:")


@pytest.mark.parametrize(("benchmark", "folder"), [("mmbench", "mmbench"), ("mmbench-cn", "mmbench-cn")])
def test_mmbench_upload_equals_the_released_one(tmp_path, benchmark, folder):
    """MMBench-CN is the same module through the registry (language "cn"): the same upload, under its own name."""
    tsv = FIXTURES / "mmbench" / "mmbench_dev_20230712.tsv"
    results = score(benchmark, FIXTURES / "mmbench" / "llava-v1.5-13b.jsonl", tmp_path, "--annotations", str(tsv))
    upload = tmp_path / "answers_upload" / folder / "llava-v1.5-13b.xlsx"
    assert results["score"] is None and results["submission"] == str(upload)
    # The cells convert_mmbench_for_submission.py wrote, those of the released llava-v1.5-13b.xlsx.
    assert xlsx_cells(upload) == json.loads((FIXTURES / "mmbench" / "released_upload_rows.json").read_text())
    assert results["parts"] == {"questions": 16, "answered": 16, "unanswered": 0}


def test_seed(tmp_path):
    folder = FIXTURES / "seed"
    results = score(
        "seed", folder / "llava-v1.5-13b.jsonl", tmp_path, "--annotations", str(folder / "SEED-Bench.json")
    )
    # convert_seed_for_submission.py: "Total accuracy: 37.50%", image 27.78%, video 66.67%.
    assert f"{results['score']:.2f}" == "37.50"
    assert f"{results['parts']['image']['accuracy']:.2f}" == "27.78"
    upload = tmp_path / "answers_upload" / "seed" / "llava-v1.5-13b.jsonl"
    assert results["submission"] == str(upload)
    assert upload.read_bytes() == (folder / "released_upload_head.jsonl").read_bytes()


def test_mm_vet_file_equals_the_released_one(tmp_path):
    results = score("mm-vet", FIXTURES / "mm-vet" / "llava-v1.5-13b.jsonl", tmp_path)
    upload = tmp_path / "answers_upload" / "mm-vet" / "llava-v1.5-13b.json"
    assert results["score"] is None and results["submission"] == str(upload)
    assert upload.read_bytes() == (FIXTURES / "mm-vet" / "released_results_head.json").read_bytes()
    assert (tmp_path / "mm_vet_results.json").is_file()


# ------------------------------------------------------------------------------------------ answering, then scoring


@pytest.fixture(scope="module")
def terse_checkpoint(tmp_path_factory, llava_checkpoint) -> str:
    """The session's tiny LLaVA made to end every answer at once, so that benchmarks answered with 1024 new tokens
    (MMBench, MM-Vet) stay fast: its language model's last norm is zeroed, so every logit is 0 and greedy decoding
    picks token 0, which its generation config names an end token (beside </s>). Its answers are empty."""
    folder = tmp_path_factory.mktemp("terse") / "tiny-terse"
    model = LlavaPluginForConditionalGeneration.from_pretrained(llava_checkpoint)
    with torch.no_grad():
        model.model.language_model.norm.weight.zero_()
    model.generation_config.eos_token_id = [0, model.config.text_config.eos_token_id]
    model.save_pretrained(folder)
    shutil.copytree(
        llava_checkpoint, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "*.json")
    )
    for name in Path(llava_checkpoint).glob("*.json"):
        if name.name not in ("config.json", "generation_config.json"):
            shutil.copy(name, folder / name.name)
    return str(folder)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mme_eval_folder(root: Path) -> Path:
    """eval.zip's MME/: llava_mme.jsonl as the original's (two questions of each image under one id, the image's
    path; rebuilt from the official answer slice), and MME's release folder with the fixture's sheets and images."""
    folder = root / "MME"
    release = shutil.copytree(
        FIXTURES / "mme" / "MME_Benchmark_release_version", folder / "MME_Benchmark_release_version"
    )
    questions = []
    for answer in read_lines(FIXTURES / "mme" / "llava-v1.5-13b.jsonl"):
        image = answer["question_id"]
        questions.append(
            {"question_id": image, "image": image, "text": answer["prompt"], "category": image.split("/")[0]}
        )
        (release / image).parent.mkdir(parents=True, exist_ok=True)
        random_image(len(questions)).save(release / image)
    (folder / "llava_mme.jsonl").write_text("".join(json.dumps(question) + "\n" for question in questions))
    return folder


def test_mme_with_a_checkpoint_answers_both_questions_of_each_image_and_resumes(terse_checkpoint, tmp_path):
    """llava_mme.jsonl asks two questions of each image under one question_id: both are answered, in order, and a
    rerun finds both answered (no model is loaded)."""
    folder, out = mme_eval_folder(tmp_path), tmp_path / "out"
    argv = [
        "--questions",
        str(folder / "llava_mme.jsonl"),
        "--image-folder",
        str(folder / "MME_Benchmark_release_version"),
    ]
    argv += ["--annotations", str(folder / "MME_Benchmark_release_version"), "--output-dir", str(out)]
    llava(["eval", "mme", terse_checkpoint, *argv])
    questions = read_lines(folder / "llava_mme.jsonl")
    answers = read_lines(out / "mme_answers.jsonl")
    assert [(a["question_id"], a["prompt"]) for a in answers] == [(q["question_id"], q["text"]) for q in questions]
    # Every answer is empty: calculation.py reads it as "other", wrong, so every category scores 0.
    assert json.loads((out / "mme_results.json").read_text())["score"] == 0.0
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    before = (out / "mme_answers.jsonl").read_bytes()
    llava(["eval", "mme", str(not_a_model), *argv])
    assert (out / "mme_answers.jsonl").read_bytes() == before


def mmbench_tsv(path: Path, rows: int) -> Path:
    """MMBench's dev tsv layout (the fixture's rows, cut to `rows`), each image a small real PNG in base64."""
    table = pd.read_table(FIXTURES / "mmbench" / "mmbench_dev_20230712.tsv").head(rows)
    images = []
    for seed in range(rows):
        buffer = io.BytesIO()
        random_image(seed, (20 + 6 * seed, 28)).save(buffer, "PNG")
        images.append(base64.b64encode(buffer.getvalue()).decode())
    table["image"] = images
    table.to_csv(path, sep="\t", index=False)
    return path


def test_mmbench_with_a_checkpoint_writes_the_originals_answer_lines_and_upload(terse_checkpoint, tmp_path):
    tsv = mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv", 3)
    out = tmp_path / "out"
    llava(
        ["eval", "mmbench", terse_checkpoint, "--questions", str(tsv), "--output-dir", str(out), "--batch-size", "2"]
    )
    answers = [json.loads(line) for line in (out / "mmbench_answers.jsonl").read_text().splitlines()]
    official = [json.loads(line) for line in (FIXTURES / "mmbench" / "llava-v1.5-13b.jsonl").read_text().splitlines()]
    # model_vqa_mmbench.py's keys in its order (the official answer lines'), and its prompt / options per question.
    assert [list(answer) for answer in answers] == [list(line) for line in official[:3]]
    for answer, line in zip(answers, official, strict=False):
        for key in ("question_id", "round_id", "prompt", "options", "option_char"):
            assert answer[key] == line[key], key
    results = json.loads((out / "mmbench_results.json").read_text())
    upload = out / "answers_upload" / "mmbench" / Path(terse_checkpoint).name
    assert results["submission"] == str(upload.with_suffix(".xlsx"))
    cells = xlsx_cells(results["submission"])
    assert [row[6] for row in cells] == ["prediction", *(answer["text"] or None for answer in answers)]


def test_pope_with_a_checkpoint_answers_then_scores(llava_checkpoint, tmp_path):
    """POPE's questions (llava_pope_test.jsonl's first of each category) on images of eval.zip's val2014 folder."""
    questions = [json.loads(line) for line in (FIXTURES / "pope" / "llava_pope_test.jsonl").read_text().splitlines()]
    first = {}
    for question in questions:
        first.setdefault(question["category"], question)
    images = tmp_path / "val2014"
    images.mkdir()
    for seed, question in enumerate(first.values()):
        random_image(seed).save(images / question["image"])
    question_file = tmp_path / "llava_pope_test.jsonl"
    question_file.write_text("".join(json.dumps(question) + "\n" for question in first.values()))
    labels = tmp_path / "coco"
    labels.mkdir()
    for category in first:  # one label each: yes for random, no for the others
        label = "yes" if category == "random" else "no"
        (labels / f"coco_pope_{category}.json").write_text(json.dumps({"label": label}) + "\n")
    out = tmp_path / "out"
    llava(["eval", "pope", llava_checkpoint, "--questions", str(question_file), "--image-folder", str(images)]
          + ["--annotations", str(labels), "--output-dir", str(out)])  # fmt: skip
    answers = [json.loads(line) for line in (out / "pope_answers.jsonl").read_text().splitlines()]
    assert [answer["prompt"] for answer in answers] == [question["text"] for question in first.values()]
    assert list(answers[0]) == ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
    results = json.loads((out / "pope_results.json").read_text())
    # eval_pope.py's reading by hand: "no" where the first sentence has the word No / not / no; F1 by category.
    f1 = {}
    for category, answer in zip(first, answers, strict=True):
        says_yes = not {"No", "not", "no"} & set(answer["text"].split(".")[0].replace(",", "").split(" "))
        label_yes = category == "random"
        f1[category] = 1.0 if says_yes and label_yes else 0.0  # one pair: F1 is 1 for a true positive, else 0
        assert results["parts"][category]["yes_ratio"] == float(says_yes)
    assert results["score"] == pytest.approx(100 * sum(f1.values()) / 3)


# ------------------------------------------------------------------------------------------------------------- suite


def questions_from_answers(answers: Path, image: str | None = None, text: str | None = None) -> list[dict]:
    """A question file in the original's layout rebuilt from an official answer slice: each line's id, its `prompt`
    as the question (`text` where the slice keeps none), and `image` (default: the id, as MME's)."""
    return [
        {"question_id": line["question_id"], "image": image or line["question_id"], "text": line.get("prompt", text)}
        for line in read_lines(answers)
    ]


def write_questions(folder: Path, name: str, questions: list[dict], images: str) -> None:
    """`folder/name` holding `questions`, and a small image at each path they name under `folder/images`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(question) + "\n" for question in questions))
    for seed, question in enumerate(questions):
        path = folder / images / question["image"]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            random_image(seed % 5).save(path)


def eval_zip(root: Path) -> Path:
    """`playground/data/eval` as eval.zip unpacks it (its folder and file names, as scripts/v1_5/eval/*.sh read them),
    holding the fixtures' questions and annotations: every benchmark of the registry but ScienceQA."""
    vqav2 = read_lines(FIXTURES / "vqav2" / "llava_vqav2_mscoco_test2015.jsonl")
    write_questions(root / "vqav2", "llava_vqav2_mscoco_test-dev2015.jsonl", vqav2, "test2015")
    shutil.copy(FIXTURES / "vqav2" / "llava_vqav2_mscoco_test2015.jsonl", root / "vqav2")
    gqa = json.loads((FIXTURES / "gqa" / "testdev_balanced_questions.json").read_text())
    gqa_questions = [
        {"question_id": key, "image": f"{value['imageId']}.jpg", "text": value["question"]}
        for key, value in gqa.items()
    ]
    write_questions(root / "gqa", "llava_gqa_testdev_balanced.jsonl", gqa_questions, "data/images")
    shutil.copy(FIXTURES / "gqa" / "testdev_balanced_questions.json", root / "gqa" / "data")
    write_questions(root / "vizwiz", "llava_test.jsonl", read_lines(FIXTURES / "vizwiz" / "llava_test.jsonl"), "test")
    textvqa = questions_from_answers(FIXTURES / "textvqa" / "llava-v1.5-13b.jsonl", "0.jpg")
    write_questions(root / "textvqa", "llava_textvqa_val_v051_ocr.jsonl", textvqa, "train_images")
    shutil.copy(FIXTURES / "textvqa" / "TextVQA_0.5.1_val.json", root / "textvqa")
    write_questions(
        root / "pope", "llava_pope_test.jsonl", read_lines(FIXTURES / "pope" / "llava_pope_test.jsonl"), "val2014"
    )
    shutil.copytree(FIXTURES / "pope" / "coco", root / "pope" / "coco")
    mme_eval_folder(root)
    (root / "mmbench").mkdir()
    shutil.copy(FIXTURES / "mmbench" / "mmbench_dev_20230712.tsv", root / "mmbench")
    seed = questions_from_answers(FIXTURES / "seed" / "llava-v1.5-13b.jsonl", "0.jpg", "Which?\nA. a\nB. b")
    write_questions(root / "seed_bench", "llava-seed-bench.jsonl", seed, ".")
    shutil.copy(FIXTURES / "seed" / "SEED-Bench.json", root / "seed_bench")
    write_questions(
        root / "mm-vet",
        "llava-mm-vet.jsonl",
        questions_from_answers(FIXTURES / "mm-vet" / "llava-v1.5-13b.jsonl", "v1_0.png"),
        "images",
    )
    bench = [{"question_id": 0, "image": "001.jpg", "text": "What is it?", "category": "conv"}]
    write_questions(root / "llava-bench-in-the-wild", "questions.jsonl", bench, "images")
    return root


def test_the_suite_answers_every_benchmark_of_eval_zip_it_finds_and_prints_one_table(
    terse_checkpoint, tmp_path, capsys
):
    eval_dir, out = eval_zip(tmp_path / "eval"), tmp_path / "out"
    llava(["eval", "suite", terse_checkpoint, "--data", str(eval_dir), "--output-dir", str(out), "--batch-size", "16"])
    printed = capsys.readouterr().out.splitlines()
    header = printed.index(next(line for line in printed if line.split()[:2] == ["benchmark", "score"]))
    rows = {
        line.split()[0]: line for line in printed[header + 1 :] if line.strip() and not line.startswith("No model")
    }
    assert any(line == f"Not in {eval_dir}: scienceqa, mmbench-cn" for line in printed)
    expected = ["vqav2", "gqa", "vizwiz", "textvqa", "pope", "mme", "mmbench", "seed", "llava-bench", "mm-vet"]
    assert list(rows) == expected  # LLaVA-1.5's table's order
    counts = {"vqav2": 10, "gqa": 35, "vizwiz": 38, "textvqa": 30, "pope": 75, "mme": 56, "mmbench": 16, "seed": 24}
    counts |= {"mm-vet": 13}
    for name, count in counts.items():
        assert rows[name].split()[-2] == str(count), rows[name]  # the answers column
        assert len(read_lines(out / f"{name.replace('-', '_')}_answers.jsonl")) == count
    # Every answer is empty. Exact match, the VQA accuracy and calculation.py give 0 for each; MMBench, VQAv2, VizWiz
    # and MM-Vet are scored elsewhere: the row names the upload file.
    for name in ("gqa", "textvqa", "mme", "seed"):
        assert rows[name].split()[1] == "0.00", rows[name]
    for name, upload in (("vqav2", "vqav2/tiny-terse.json"), ("vizwiz", "vizwiz/tiny-terse.json"),
                         ("mmbench", "mmbench/tiny-terse.xlsx"), ("mm-vet", "mm-vet/tiny-terse.json")):  # fmt: skip
        assert f"submit {out / 'answers_upload' / upload}" in rows[name]
    assert "needs a judge: llava eval llava-bench --help" in rows["llava-bench"]
    # POPE: eval_pope.py reads an empty answer as "yes", so each category's recall is 1 and its precision the share
    # of "yes" labels: F1 = 2p / (1 + p).
    f1 = []
    for category in ("adversarial", "popular", "random"):
        labels = read_lines(FIXTURES / "pope" / "coco" / f"coco_pope_{category}.json")
        precision = sum(label["label"] == "yes" for label in labels) / len(labels)
        f1.append(2 * precision / (1 + precision))
    assert rows["pope"].split()[1] == f"{100 * sum(f1) / 3:.2f}"
    assert json.loads((out / "pope_results.json").read_text())["score"] == pytest.approx(100 * sum(f1) / 3)
