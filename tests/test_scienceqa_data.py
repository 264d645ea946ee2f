"""`llava data scienceqa`: the records of the original's `scripts/convert_sqa_to_llava.py convert_to_llava`.

The reference is the original's own output: `tests/fixtures/scienceqa/original_convert_to_llava.json.gz` holds what
`convert_to_llava` (LLaVA commit 9ccab83, with `convert_sqa_to_llava_base_prompt.py` of 82bc69e, unchanged since)
wrote for the hand-made release `tests/fixtures/scienceqa/release/` in every one of the 80 prompt formats it accepts,
for the splits test, train and minitest ("SPLIT/FORMAT" -> records), and `original_llava_test_QCM-LEPA.json` one of
its files as it wrote it. The release's problems carry each quirk: hints with edge and double spaces, a whitespace
hint, three spaces, `Question: ` and `BECAUSE:` inside a question, `Answer: ` inside a lecture, a literal backslash-n,
empty lectures and solutions, an image named other than image.png, text-only problems, a non-ASCII dash.
"""

import gzip
import json
import shutil
from pathlib import Path

import pytest

from command_line.main import main as llava
from processing.scienceqa_data import PROMPT_FORMATS, ScienceQAError, convert, llava_record
from tests.conftest import refused

FIXTURES = Path(__file__).parent / "fixtures" / "scienceqa"
RELEASE = FIXTURES / "release"
with gzip.open(FIXTURES / "original_convert_to_llava.json.gz", "rt", encoding="utf-8") as _file:
    ORIGINAL = json.load(_file)


def test_the_reference_covers_every_format_the_original_accepts():
    # Its base-prompt module has 8 question layouts and 10 answer layouts; any other name fails in it.
    assert len(PROMPT_FORMATS) == 80
    assert sorted(ORIGINAL) == sorted(
        f"{split}/{fmt}" for split in ("test", "train", "minitest") for fmt in PROMPT_FORMATS
    )


@pytest.mark.parametrize("prompt_format", PROMPT_FORMATS)
@pytest.mark.parametrize("split", ["test", "train", "minitest"])
def test_records_equal_the_originals(split, prompt_format):
    assert convert(RELEASE, split, prompt_format) == ORIGINAL[f"{split}/{prompt_format}"]


def test_the_written_file_equals_the_originals_byte_for_byte(tmp_path):
    llava(
        [
            "data",
            "scienceqa",
            str(RELEASE),
            "--split",
            "test",
            "--prompt-format",
            "QCM-LEPA",
            "--output",
            str(tmp_path / "out.json"),
        ]
    )
    assert (tmp_path / "out.json").read_bytes() == (FIXTURES / "original_llava_test_QCM-LEPA.json").read_bytes()


def test_the_quirks_read_by_hand():
    problems = json.loads((RELEASE / "problems.json").read_text())
    # AL shows the solution, AE the lecture; a text-only problem has no image and no <image>.
    assert llava_record("4", problems["4"], "QCM-AL")["conversations"][1]["value"] == (
        "The answer is B. BECAUSE: This is a fragment. It has no verb."
    )
    assert llava_record("4", problems["4"], "QCM-AE") == {
        "id": "4",
        "conversations": [
            {
                "from": "human",
                "value": "Is this a sentence fragment?\nDuring the night.\nContext: N/A\nOptions: (A) no (B) yes",
            },
            {"from": "gpt", "value": "The answer is B."},
        ],
    }
    # An image problem: "<pid>/<file>" and <image> on the last line of the question.
    record = llava_record("3", problems["3"], "QCM-A")
    assert record["image"] == "3/map.jpg" and record["conversations"][0]["value"].endswith("\n<image>")
    # "Answer: " is dropped everywhere from an answer that starts with it, also from inside the lecture; the
    # lecture's two trailing spaces and the separator make three, which collapse once into two.
    assert llava_record("3", problems["3"], "QCM-LA")["conversations"][1]["value"] == (
        "a colony was ruled \u2014 by Britain.  The answer is C."
    )
    # An empty trailing BECAUSE: takes the question's own "BECAUSE:" with it; three spaces become two.
    assert llava_record("2", problems["2"], "QCML-A")["conversations"][0]["value"] == (
        "which word  fits?  rhyme\nContext: N/A\nOptions: (A) cat (B) hat (C) bat (D) mat (E) rat"
    )


@pytest.mark.parametrize("prompt_format", ["QCM", "QCM-LEPA-X", "QMC-A", "QCM-B"])
def test_a_format_the_original_does_not_know_is_one_line(prompt_format, tmp_path, capsys):
    command = ["data", "scienceqa", str(RELEASE), "--split", "test", "--prompt-format", prompt_format]
    message = refused(capsys, [*command, "--output", str(tmp_path / "out.json")])
    assert f"Unknown prompt format {prompt_format!r}" in message and "QCM-LEPA" in message
    assert not (tmp_path / "out.json").exists()


def test_a_release_that_does_not_fit_is_named(tmp_path, capsys):
    release = tmp_path / "release"
    shutil.copytree(RELEASE, release)
    command = ["data", "scienceqa", str(release), "--output", str(tmp_path / "out.json")]
    assert "has no split 'dev'; it has ['minitest', 'test', 'train', 'val']" in refused(
        capsys, [*command, "--split", "dev"]
    )
    problems = json.loads((release / "problems.json").read_text())
    del problems["6"]
    (release / "problems.json").write_text(json.dumps(problems))
    assert "has no problem '6' of split 'test'" in refused(capsys, [*command, "--split", "test"])
    problems = json.loads((RELEASE / "problems.json").read_text())
    problems["2"]["answer"] = 5
    (release / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(ScienceQAError, match=r"Problem '2': answer 5 is not the index of one of its choices"):
        convert(release, "test", "QCM-A")
