"""The scorers of MME, MMBench (and MMBench-CN), SEED-Bench and MM-Vet against the original's scripts.

Fixtures (tests/fixtures/eval/<bench>/) are slices of the official LLaVA-1.5-13B files at commit 32cebc38 of
haotian-liu/LLaVA (`playground/data/eval/`), with MME's ground truth from MME's own answer sheets (`eval_tool.zip`,
BradyFU/Awesome-Multimodal-Large-Language-Models commit 1c1d69e, `tools/eval_tool.zip`, `Your_Results/*.txt`, laid
out as `MME_Benchmark_release_version` sheets). The figures hard-coded below are what the original's scripts printed
when run once on the same slices (Python 3.11.7, pandas 3.1.1, openpyxl 3.1.5, scikit-learn 1.9.1); each test says
which. Hand-made cases check each rule of those scripts that the slices do not reach; their expected figures were
also checked once against the original's scripts run on the same inputs. The `slow` tests score the whole official
MME and MM-Vet files (`full/`); MMBench's (2.4 MB) and SEED's (its key is not public) are not kept.
"""

import base64
import io
import json
import shutil
from pathlib import Path

import openpyxl
import pytest
from PIL import Image

from evaluation import mm_vet, mmbench, mme, seed
from evaluation.results import BenchmarkError, experiment_name, read_answers

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
NESTED = (
    "artwork",
    "celebrity",
    "landmark",
    "posters",
    "scene",
)  # MME categories with images/ + questions_answers_YN/


# MME ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def mme_release(tmp_path) -> Path:
    """The fixture's sheets as MME's release lays them out: git keeps no empty images/ folders, so they are made."""
    folder = shutil.copytree(FIXTURES / "mme" / "MME_Benchmark_release_version", tmp_path / "MME")
    for category in NESTED:
        (folder / category / "images").mkdir()
    return folder


def test_mme_official_slice_equals_calculation_py(mme_release, tmp_path):
    answers = read_answers(FIXTURES / "mme" / "llava-v1.5-13b.jsonl", ("question_id", "prompt", "text"))
    result = mme.score(answers, output_dir=tmp_path, annotations=mme_release)
    # Printed by convert_answer_to_mme.py (LLaVA 32cebc38) + eval_tool/calculation.py (eval_tool.zip, 1c1d69e) on
    # this slice: two images of each category, among them two whose sheet has "  Please answer yes or no." (two
    # spaces) and an artwork answer "Religious" (read "other").
    perception = {"existence": 200.0, "count": 200.0, "position": 125.0, "color": 200.0, "posters": 200.0}
    perception |= {"celebrity": 125.0, "scene": 200.0, "landmark": 200.0, "artwork": 50.0, "OCR": 125.0}
    cognition = {"commonsense_reasoning": 200.0, "numerical_calculation": 25.0, "text_translation": 50.0}
    cognition |= {"code_reasoning": 125.0}
    assert result["score"] == 1625.0
    assert result["parts"]["cognition"]["score"] == 400.0
    assert {name: part["score"] for name, part in result["parts"]["perception"]["categories"].items()} == perception
    assert {name: part["score"] for name, part in result["parts"]["cognition"]["categories"].items()} == cognition
    assert result["parts"]["perception"]["categories"]["artwork"]["other"] == 1
    assert result["submission"] is None


@pytest.mark.slow
def test_mme_official_13b_answers_give_the_published_1531_3(tmp_path):
    # MME's answer sheets (eval_tool.zip's Your_Results: image, question, truth) laid out as its release folder.
    folder = tmp_path / "MME_Benchmark_release_version"
    for results in sorted((FIXTURES / "mme" / "full" / "Your_Results").glob("*.txt")):
        category = folder / results.stem
        sheets = category / "questions_answers_YN" if results.stem in NESTED else category
        sheets.mkdir(parents=True)
        if results.stem in NESTED:
            (category / "images").mkdir()
        for line in results.read_text().splitlines():
            image, question, truth = line.split("\t")
            with (sheets / f"{image.rsplit('.', 1)[0]}.txt").open("a") as sheet:
                sheet.write(f"{question}\t{truth}\n")
    answers = read_answers(FIXTURES / "mme" / "full" / "llava-v1.5-13b.jsonl", ("question_id", "prompt", "text"))
    result = mme.score(answers, output_dir=tmp_path, annotations=folder)
    # Printed by convert_answer_to_mme.py (32cebc38) + calculation.py (eval_tool.zip) on the same files.
    assert result["score"] == 1531.3187274909965 and f"{result['score']:.1f}" == "1531.3"
    assert result["parts"]["cognition"]["score"] == 295.3571428571429
    assert result["parts"]["perception"]["categories"]["artwork"]["score"] == 117.75


def make_mme(root: Path, images: int = 1, question: str = "Is it {}? Please answer yes or no.") -> Path:
    """A release folder: every category has `images` flat images, each asked 'Is it a?' (Yes) then 'Is it b?' (No)."""
    for category in mme.PERCEPTION + mme.COGNITION:
        for image in range(images):
            sheet = f"{question.format('a')}\tYes\n{question.format('b')}\tNo\n"
            (root / category).mkdir(parents=True, exist_ok=True)
            (root / category / f"{image}.txt").write_text(sheet)
    return root


def mme_answers(texts: dict[str, list[tuple[int, str, str]]] | None = None, images: int = 1) -> list[dict]:
    """Right answers for every category, the categories in `texts` answered with (image, letter, text) instead."""
    lines = []
    for category in mme.PERCEPTION + mme.COGNITION:
        default = [(image, letter, "Yes" if letter == "a" else "No") for image in range(images) for letter in "ab"]
        for image, letter, text in (texts or {}).get(category, default):
            prompt = f"Is it {letter}?\nAnswer the question using a single word or phrase."
            lines.append({"question_id": f"{category}/{image}.png", "prompt": prompt, "text": text})
    return lines


def existence(result: dict) -> dict:
    return result["parts"]["perception"]["categories"]["existence"]


@pytest.mark.parametrize(
    ("text", "read"),
    [
        ("Yes", "yes"),
        ("yes", "yes"),
        ("YES, there is one.", "yes"),
        (" yes", "yes"),
        ("  yes", "other"),  # "yes" must start within the first four characters
        ("I think yes", "other"),
        ("Not sure", "no"),  # "no" in "not " reads no
        ("know", "no"),
        ("nOyes", "no"),  # "noye": no "yes" in four characters
        ("Y", "other"),
        ("", "other"),
        ("Religious", "other"),
    ],
)
def test_mme_reads_answers_as_calculation_py(tmp_path, text, read):
    folder = make_mme(tmp_path / "MME")
    answers = mme_answers({"existence": [(0, "a", text), (0, "b", "No")]})  # truth: a is Yes
    part = existence(mme.score(answers, output_dir=tmp_path, annotations=folder))
    # acc + acc+: both right 100 + 100; else 50 + 0.
    assert part["score"] == (200.0 if read == "yes" else 50.0)
    assert part["other"] == (read == "other")


def test_mme_pairs_acc_plus_by_answer_order_not_by_image(tmp_path):
    folder = make_mme(tmp_path / "MME", images=2)
    right_a, right_b, wrong_a, wrong_b = (0, "a", "Yes"), (1, "b", "No"), (0, "b", "Yes"), (1, "a", "No")
    by_image = mme_answers({"existence": [right_a, wrong_a, wrong_b, right_b]}, images=2)
    interleaved = mme_answers({"existence": [right_a, right_b, wrong_a, wrong_b]}, images=2)
    # Two of four right either way (acc 50); calculation.py pairs lines 1-2 and 3-4: acc+ 0, then 50 (one pair right).
    assert existence(mme.score(by_image, output_dir=tmp_path, annotations=folder))["score"] == 50.0
    assert existence(mme.score(interleaved, output_dir=tmp_path, annotations=folder))["score"] == 100.0


def test_mme_sums_perception_as_score_and_cognition_apart(tmp_path):
    folder = make_mme(tmp_path / "MME")
    answers = mme_answers({"OCR": [(0, "a", "No"), (0, "b", "No")], "code_reasoning": [(0, "a", "No"), (0, "b", "x")]})
    result = mme.score(answers, output_dir=tmp_path, annotations=folder)
    assert result["score"] == 9 * 200 + 50  # OCR: half right, no pair
    assert result["parts"]["cognition"]["score"] == 3 * 200 + 0  # code_reasoning: none right


def test_mme_finds_two_space_questions_and_keeps_prompts_that_ask_yes_or_no(tmp_path):
    folder = make_mme(tmp_path / "MME", question="Is it {}?  Please answer yes or no.")
    assert mme.score(mme_answers(), output_dir=tmp_path, annotations=folder)["score"] == 2000.0
    asked = [
        answer | {"prompt": answer["prompt"].split("\n")[0] + "  Please answer yes or no."} for answer in mme_answers()
    ]
    assert mme.score(asked, output_dir=tmp_path, annotations=folder)["score"] == 2000.0


def test_mme_category_of_unreadable_answers_scores_zero(tmp_path):
    folder = make_mme(tmp_path / "MME")
    result = mme.score(
        mme_answers({"existence": [(0, "a", "maybe"), (0, "b", "maybe")]}), output_dir=tmp_path, annotations=folder
    )
    assert existence(result)["score"] == 0.0 and existence(result)["other"] == 2


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (mme_answers({"existence": [(0, "a", "Yes\tsure"), (0, "b", "No")]}), "tab-separated fields"),
        (mme_answers({"existence": [(0, "a", "Yes\rNo"), (0, "b", "No")]}), "result lines"),
        (mme_answers({"existence": [(0, "a", "Yes")]}), "result lines"),
        (mme_answers({"existence": []}), "no answer for existence"),
        (mme_answers({"existence": [(0, "a", "Yes"), (0, "c", "No")]}), "is not in sheet existence/0.txt"),
        ([{"question_id": 3, "prompt": "Is it a?", "text": "Yes"}], "string question_id"),
    ],
)
def test_mme_refuses_what_stops_the_original(tmp_path, answers, message):
    folder = make_mme(tmp_path / "MME")
    with pytest.raises(BenchmarkError, match=message):
        mme.score(answers, output_dir=tmp_path, annotations=folder)


def test_mme_needs_its_release_folder(tmp_path):
    with pytest.raises(BenchmarkError, match="MME_Benchmark_release_version"):
        mme.score(mme_answers(), output_dir=tmp_path)
    with pytest.raises(BenchmarkError, match="not a folder"):
        mme.score(mme_answers(), output_dir=tmp_path, annotations=tmp_path / "missing")


# MMBench ------------------------------------------------------------------------------------------------------------


def xlsx_cells(path: Path) -> list[list]:
    return [[cell.value for cell in row] for row in openpyxl.load_workbook(path).active.iter_rows()]


def test_mmbench_upload_of_official_slice_equals_released_xlsx(tmp_path):
    # The slice's rows are those of the released answers_upload/mmbench_dev_20230712/llava-v1.5-13b.xlsx (32cebc38);
    # convert_mmbench_for_submission.py, run on this tsv and these answers, wrote exactly these cells.
    answers = read_answers(FIXTURES / "mmbench" / "llava-v1.5-13b.jsonl")
    tsv = FIXTURES / "mmbench" / "mmbench_dev_20230712.tsv"
    result = mmbench.score(answers, output_dir=tmp_path, annotations=tsv)
    assert result["submission"] == tmp_path / "answers_upload" / "mmbench" / "llava-v1.5-13b.xlsx"
    assert result["score"] is None and result["parts"]["answered"] == 16
    released = json.loads((FIXTURES / "mmbench" / "released_upload_rows.json").read_text())
    assert xlsx_cells(result["submission"]) == released


def test_mmbench_questions_are_asked_as_the_official_answers_record(tmp_path):
    # The tsv rows were rebuilt from the released upload file; the answer lines are the official ones, whose prompt,
    # options and option_char model_vqa_mmbench.py wrote (rows with two to four options, with and without a hint).
    questions = mmbench.read_questions(FIXTURES / "mmbench" / "mmbench_dev_20230712.tsv")
    answers = read_answers(FIXTURES / "mmbench" / "llava-v1.5-13b.jsonl")
    assert [question.question_id for question in questions] == [answer["question_id"] for answer in answers]
    for question, answer in zip(questions, answers, strict=True):
        assert question.prompt == answer["prompt"]
        assert mmbench.answer_extras(question) == {key: answer[key] for key in ("round_id", "options", "option_char")}
        content = question.messages[0]["content"]
        assert content[0] == {"type": "image"}
        assert (
            content[1]["text"]
            == answer["prompt"] + "\nAnswer with the option's letter from the given choices directly."
        )
        assert Image.open(io.BytesIO(question.image["bytes"])).size == (4, 3)


def write_tsv(path: Path, rows: list[dict], columns: tuple[str, ...] | None = None) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    columns = columns or (
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "image",
        "source",
        "l2-category",
        "comment",
        "split",
    )
    defaults = {
        "hint": "",
        "C": "",
        "D": "",
        "answer": "A",
        "category": "c",
        "image": image,
        "source": "s",
        "l2-category": "l",
        "comment": "",
        "split": "dev",
    }
    lines = ["\t".join(columns)] + ["\t".join(str(({**defaults, **row}).get(c, "")) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_mmbench_options_stop_at_the_first_empty_or_none(tmp_path):
    tsv = write_tsv(
        tmp_path / "q.tsv",
        [
            {"index": 1, "question": "Q1?", "A": "x", "B": "None", "C": "z"},  # pandas reads "None" as empty
            {"index": 2, "question": "Q2?", "A": "x", "B": "y", "C": "", "D": "w"},
            {
                "index": 3,
                "question": "Q3?",
                "A": "x",
                "B": "y",
                "C": "NONE",
                "hint": "nan",
            },  # is_none: "none" any case
            {"index": 4, "question": "Q4?", "A": "x", "B": "y", "C": "z", "D": "w", "hint": "Look."},
        ],
    )
    prompts = {question.question_id: (question.prompt, question.options) for question in mmbench.read_questions(tsv)}
    assert prompts == {
        1: ("Q1?\nA. x", ["x"]),
        2: ("Q2?\nA. x\nB. y", ["x", "y"]),
        3: ("Q3?\nA. x\nB. y", ["x", "y"]),
        4: ("Look.\nQ4?\nA. x\nB. y\nC. z\nD. w", ["x", "y", "z", "w"]),
    }


def test_mmbench_cn_asks_in_chinese(tmp_path):
    tsv = write_tsv(tmp_path / "q.tsv", [{"index": 7, "question": "图中是什么？", "A": "猫", "B": "狗"}])
    (question,) = mmbench.read_questions(tsv, language="cn")
    assert question.messages[0]["content"][1]["text"] == "图中是什么？\nA. 猫\nB. 狗\n请直接回答选项字母。"
    assert question.prompt == "图中是什么？\nA. 猫\nB. 狗"
    with pytest.raises(BenchmarkError, match="'en' or 'cn'"):
        mmbench.read_questions(tsv, language="fr")


def test_mmbench_upload_matches_answers_by_index_as_convert_does(tmp_path):
    tsv = write_tsv(tmp_path / "q.tsv", [{"index": n, "question": f"Q{n}?", "A": "x", "B": "y"} for n in (1, 2, 3)])
    answers = [
        {"question_id": 1, "text": "A", "model_id": "m"},
        {"question_id": 1, "text": "B", "model_id": "m"},  # a later answer to the same index wins
        {"question_id": "2", "text": "A", "model_id": "m"},  # a string never equals the integer index
        {"question_id": 9, "text": "A", "model_id": "m"},  # no such row: dropped
    ]
    result = mmbench.score(answers, output_dir=tmp_path, annotations=tsv)
    cells = xlsx_cells(result["submission"])
    assert cells[0] == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert [row[6] for row in cells[1:]] == ["B", None, None]
    assert result["parts"] == {"questions": 3, "answered": 1, "unanswered": 2}


def test_mmbench_refuses_a_tsv_without_its_columns(tmp_path):
    tsv = write_tsv(tmp_path / "q.tsv", [{"index": 1, "question": "Q?", "A": "x"}], ("index", "question", "A", "B"))
    with pytest.raises(BenchmarkError, match="no column hint, category"):
        mmbench.score([], output_dir=tmp_path, annotations=tsv)
    with pytest.raises(BenchmarkError, match="no column hint, image"):
        mmbench.read_questions(tsv)
    with pytest.raises(BenchmarkError, match="does not exist"):
        mmbench.score([], output_dir=tmp_path, annotations=tmp_path / "none.tsv")


# SEED-Bench ---------------------------------------------------------------------------------------------------------


def test_seed_official_slice_equals_convert_seed_for_submission(tmp_path):
    # The predictions are the first 24 lines of the released answers_upload/llava-v1.5-13b.jsonl (32cebc38); the key
    # (answers, types) is hand-made, SEED-Bench.json being in no public repository. convert_seed_for_submission.py
    # printed on it: Scene Understanding 16.67%, Instance Identity 33.33%, Text Understanding 33.33%, Action
    # Recognition 66.67%, Total 37.50%, image 27.78%, video 66.67%, and wrote the released lines.
    answers = read_answers(FIXTURES / "seed" / "llava-v1.5-13b.jsonl")
    result = seed.score(answers, output_dir=tmp_path, annotations=FIXTURES / "seed" / "SEED-Bench.json")
    printed = {name: f"{part['accuracy']:.2f}" for name, part in result["parts"]["types"].items()}
    assert printed == {
        "Scene Understanding": "16.67",
        "Instance Identity": "33.33",
        "Text Understanding": "33.33",
        "Action Recognition": "66.67",
    }
    assert f"{result['score']:.2f}" == "37.50"
    assert f"{result['parts']['image']['accuracy']:.2f}" == "27.78"
    assert f"{result['parts']['video']['accuracy']:.2f}" == "66.67"
    assert result["submission"] == tmp_path / "answers_upload" / "seed" / "llava-v1.5-13b.jsonl"
    assert result["submission"].read_bytes() == (FIXTURES / "seed" / "released_upload_head.jsonl").read_bytes()


def seed_key(path: Path, answers: str) -> Path:
    questions = [
        {"question_id": str(n), "question_type_id": 1 + n % 2, "data_type": "image", "answer": letter}
        for n, letter in enumerate(answers)
    ]
    path.write_text(json.dumps({"question_type": {"One": 1, "Two": 2}, "questions": questions}))
    return path


def test_seed_exact_match_and_integer_lookup(tmp_path):
    key = seed_key(tmp_path / "SEED-Bench.json", "AAAA")
    answers = [{"question_id": n, "text": text} for n, text in enumerate(["A", "A.", "a", "A"])]
    result = seed.score(answers, output_dir=tmp_path / "out", annotations=key, experiment="run")
    assert result["score"] == 50.0  # "A." and "a" are wrong
    assert result["parts"]["video"]["accuracy"] is None
    # String ids are not found by the accuracy (it looks up int("0")), but are by the upload file.
    as_strings = [answer | {"question_id": str(answer["question_id"])} for answer in answers]
    result = seed.score(as_strings, output_dir=tmp_path / "out", annotations=key, experiment="run")
    assert result["score"] == 0.0 and result["parts"]["types"]["One"]["accuracy"] == 0.0
    lines = result["submission"].read_text().splitlines()
    assert lines[1] == '{"question_id": "1", "prediction": "A."}'


def test_seed_counts_unanswered_questions_wrong_and_writes_no_upload(tmp_path):
    key = seed_key(tmp_path / "SEED-Bench.json", "ABAB")
    result = seed.score(
        [{"question_id": n, "text": "AB"[n % 2]} for n in range(3)], output_dir=tmp_path, annotations=key
    )
    assert result["score"] == 75.0 and result["parts"]["unanswered"] == 1 and result["submission"] is None


def test_seed_type_with_every_answer_wrong_scores_zero(tmp_path):
    key = seed_key(tmp_path / "SEED-Bench.json", "AAAA")
    answers = [{"question_id": n, "text": "A" if n % 2 == 0 else "B"} for n in range(4)]  # type Two: all wrong
    result = seed.score(answers, output_dir=tmp_path, annotations=key)
    assert result["parts"]["types"]["Two"]["accuracy"] == 0.0 and result["score"] == 50.0


def test_seed_needs_its_annotations(tmp_path):
    with pytest.raises(BenchmarkError, match="SEED-Bench.json"):
        seed.score([], output_dir=tmp_path)
    (tmp_path / "bad.json").write_text('{"question_type": {}, "questions": [{"question_id": "1"}]}')
    with pytest.raises(BenchmarkError, match="question 0 lacks"):
        seed.score([], output_dir=tmp_path, annotations=tmp_path / "bad.json")


# MM-Vet -------------------------------------------------------------------------------------------------------------


def test_mm_vet_results_of_official_slice_equal_released_file(tmp_path):
    # The released mm-vet/results/llava-v1.5-13b.json (32cebc38) cut to the slice's entries (its first twelve and
    # v1_161, which holds escaped non-ASCII); convert_mmvet_for_eval.py wrote the same bytes from this slice.
    answers = read_answers(FIXTURES / "mm-vet" / "llava-v1.5-13b.jsonl")
    result = mm_vet.score(answers, output_dir=tmp_path)
    upload = tmp_path / "answers_upload" / "mm-vet" / "llava-v1.5-13b.json"
    assert result == {"score": None, "parts": {"answers": 13}, "submission": upload}
    assert result["submission"].read_bytes() == (FIXTURES / "mm-vet" / "released_results_head.json").read_bytes()


@pytest.mark.slow
def test_mm_vet_results_of_official_13b_answers_equal_released_file(tmp_path):
    answers = read_answers(FIXTURES / "mm-vet" / "full" / "llava-v1.5-13b.jsonl")
    submission = mm_vet.score(answers, output_dir=tmp_path)["submission"]
    assert submission.read_bytes() == (FIXTURES / "mm-vet" / "full" / "released_llava-v1.5-13b.json").read_bytes()


def test_mm_vet_repeated_id_keeps_first_place_and_last_text(tmp_path):
    answers = [{"question_id": 1, "text": "a"}, {"question_id": 0, "text": "b"}, {"question_id": 1, "text": "c"}]
    path = mm_vet.score(answers, output_dir=tmp_path, experiment="run")["submission"]
    assert path.read_text() == '{\n  "v1_1": "c",\n  "v1_0": "b"\n}'


def test_upload_files_are_named_after_the_one_model_of_the_answers():
    assert experiment_name([{"model_id": "llava-v1.5-13b"}] * 2, "x") == "llava-v1.5-13b"
    assert experiment_name([{"model_id": "a"}, {"model_id": "b"}], "x") == "x"
    assert experiment_name([{"model_id": "../up"}], "x") == "x"
    assert experiment_name([{}], "x") == "x"


def test_answering_specs_follow_the_original_scripts():
    # scripts/v1_5/eval/*.sh: model_vqa_loader.py (default 128 new tokens) for MME and SEED, model_vqa_mmbench.py
    # (1024, --single-pred-prompt) for MMBench, model_vqa.py (1024) for MM-Vet; all vicuna_v1.
    assert (mme.ANSWERING["max_new_tokens"], seed.ANSWERING["max_new_tokens"]) == (128, 128)
    assert (mmbench.ANSWERING["max_new_tokens"], mm_vet.ANSWERING["max_new_tokens"]) == (1024, 1024)
    assert {spec["template"] for spec in (mme.ANSWERING, mmbench.ANSWERING, seed.ANSWERING, mm_vet.ANSWERING)} == {
        "vicuna_v1"
    }
    assert mmbench.ANSWERING["single_pred_prompt"] and not mmbench.ANSWERING["all_rounds"]
