"""`llava data filter-cc3m`: the paper's App. E rule worked by hand on small phrase sets, the noun phrases of a spaCy
pipeline built in the test (`tests/toy_spacy.py`), and the command on a CC3M-style TSV and JSON."""

import json
import re
from pathlib import Path

import pytest

from command_line.main import main as llava
from processing.cc3m_filter import phrase_counts, phrase_index, select_balanced
from processing.llava_data import read_records
from trainers.generate_data import load_prompt

# Position -> the caption's noun phrases. Frequencies: "a dog" 3 (0, 1, 2), "the park" 3 (2, 3, 4), "a cat" 3
# (3, 5, 7), "a tree" 2 (7, 8), "a red ball" 1 (0), "a unicorn" 1 (6); caption 9 has none.
PHRASES = [
    {"a dog", "a red ball"},
    {"a dog"},
    {"a dog", "the park"},
    {"the park", "a cat"},
    {"the park"},
    {"a cat"},
    {"a unicorn"},
    {"a cat", "a tree"},
    {"a tree"},
    set(),
]


def test_phrases_seen_fewer_than_three_times_bring_no_caption():
    # Kept: "a cat", "a dog", "the park" (3 each), which bring 3, 5, 7 / 0, 1, 2 / 2, 3, 4. Caption 0 comes with
    # "a dog" though its "a red ball" is skipped, caption 7 with "a cat" though its "a tree" is; 6 and 8 have only
    # skipped phrases, 9 none.
    assert select_balanced(phrase_index(PHRASES)) == [0, 1, 2, 3, 4, 5, 7]


def test_the_phrase_counts_before_and_after():
    index = phrase_index(PHRASES)
    assert phrase_counts(index) == (6, 3)  # six phrases, three of them seen 3+ times
    # In captions 0-5 and 7: "a dog" 3, "the park" 3, "a cat" 3, "a red ball" 1, "a tree" 1; "a unicorn" is gone.
    assert phrase_counts(index, {0, 1, 2, 3, 4, 5, 7}) == (5, 3)


def test_a_phrase_is_counted_once_per_caption():
    index = phrase_index([{"a dog"}, {"a dog"}, {"a dog", "a cat"}])
    assert index == {"a dog": [0, 1, 2], "a cat": [2]}


def test_a_phrase_of_more_than_100_captions_brings_a_seeded_100():
    index = phrase_index([{"the beach"}] * 101 + [{"a bone"}] * 100)
    selected = select_balanced(index, seed=0)
    assert set(range(101, 201)) <= set(selected)  # exactly 100: not "more than 100", all of them
    from_beach = [position for position in selected if position < 101]
    assert len(from_beach) == 100
    assert select_balanced(index, seed=0) == selected
    assert len({tuple(select_balanced(index, seed)) for seed in range(5)}) > 1  # the seed draws which 100


def test_a_frequent_phrase_draws_its_100_from_all_its_captions():
    """Three captions hold a rare phrase and the frequent one: the frequent phrase's 100 are drawn from all its 200
    captions, the 3 already in the pool among them, so the pool holds 100 to 103 captions; a draw that hits them adds
    fewer than 100 new ones."""
    index = phrase_index([{"an old tree", "a man"}] * 3 + [{"a man"}] * 197)
    sizes = {len(select_balanced(index, seed)) for seed in range(10)}
    assert {0, 1, 2} <= set(select_balanced(index, seed=0))
    assert max(sizes) <= 103 and min(sizes) < 103


@pytest.fixture(scope="module")
def toy_pipeline(tmp_path_factory) -> Path:
    pytest.importorskip("spacy", reason="needs the cc3m extra (spaCy)")
    from tests.toy_spacy import save_toy_pipeline

    return save_toy_pipeline(tmp_path_factory.mktemp("spacy") / "toy_en")


def test_noun_phrases_are_the_lowercased_noun_chunks_once_per_caption(toy_pipeline):
    import spacy

    from processing.cc3m_filter import noun_phrases

    nlp = spacy.load(toy_pipeline)
    texts = ["A big red dog chases the ball in a park.", "The Dog and the dog", "nothing to see"]
    assert list(noun_phrases(nlp, texts)) == [{"a big red dog", "the ball", "a park"}, {"the dog"}, set()]


# Captions whose noun phrases (by `tests/toy_spacy.py`) and selection are known by hand: "the dog" in 0, 1, 2, "a cat"
# in 2, 3, 4 (kept); "a unicorn" in 5 and "the apple" in 6, 7 (skipped: 1 and 2 times).
CAPTIONS = [
    "the dog sleeps .",
    "the dog runs on grass",
    "the dog and a cat",
    "a cat on a sofa",
    "portrait of a cat",
    "a unicorn !",
    "the apple falls",
    "the apple is red",
]


def write_tsv(path: Path) -> Path:
    path.write_text("".join(f"{caption}\thttps://example.com/{n}.jpg\n" for n, caption in enumerate(CAPTIONS)))
    return path


def test_filter_cc3m_writes_the_release_shape_from_a_tsv(toy_pipeline, tmp_path, capsys):
    output = tmp_path / "chat.json"
    command = ["data", "filter-cc3m", str(write_tsv(tmp_path / "Train_GCC-training.tsv")), "--output", str(output)]
    llava([*command, "--spacy-model", str(toy_pipeline), "--seed", "1"])
    records = json.loads(output.read_text())
    # LLaVA-CC3M-Pretrain-595K's chat.json: id = image name without extension, the TSV line (from 0) naming it;
    # the instruction then "\n<image>"; the raw caption as the answer.
    assert [record["id"] for record in records] == [f"GCC_train_00000000{n}" for n in range(5)]
    assert [record["image"] for record in records] == [f"GCC_train_00000000{n}.jpg" for n in range(5)]
    instructions = load_prompt("stage1")["questions"]
    for record, caption in zip(records, CAPTIONS[:5], strict=True):
        question, answer = record["conversations"]
        assert question["from"] == "human" and answer == {"from": "gpt", "value": caption}
        assert question["value"].endswith("\n<image>")
        assert question["value"].removesuffix("\n<image>") in instructions
    report = capsys.readouterr().out
    assert re.search(r"captions +8 -> 5\n", report)
    assert re.search(r"unique noun phrases +4 -> 2\n", report)  # the dog, a cat, a unicorn, the apple -> 2 first
    (tmp_path / "images").mkdir()
    for record in records:
        (tmp_path / "images" / record["image"]).write_bytes(b"")
    rows = read_records(output, tmp_path / "images")  # what `llava train` reads: <image> comes first there
    assert rows[0]["messages"][0]["content"][0] == {"type": "image"}


def test_filter_cc3m_reads_json_and_draws_from_an_instruction_file(toy_pipeline, tmp_path):
    records = [{"image": f"img{n}.jpg", "caption": caption} for n, caption in enumerate(CAPTIONS)]
    (tmp_path / "captions.json").write_text(json.dumps(records))
    (tmp_path / "table11.txt").write_text("Describe the image concisely.\n\nProvide a brief description.\n")
    outputs = []
    for run in range(2):
        outputs.append(tmp_path / f"out{run}.json")
        llava(
            ["data", "filter-cc3m", str(tmp_path / "captions.json"), "--output", str(outputs[-1])]
            + ["--spacy-model", str(toy_pipeline), "--instructions", str(tmp_path / "table11.txt")]
            + ["--processes", str(run + 1), "--batch-size", "3"]
        )
    chat = json.loads(outputs[0].read_text())
    assert chat == json.loads(outputs[1].read_text())  # one and two spaCy processes, the same seed: the same data
    assert [record["id"] for record in chat] == ["img0", "img1", "img2", "img3", "img4"]
    questions = {record["conversations"][0]["value"] for record in chat}
    assert questions <= {"Describe the image concisely.\n<image>", "Provide a brief description.\n<image>"}


@pytest.mark.parametrize(
    "setup, problem",
    [
        ("missing", "Caption file '.*nowhere.tsv' does not exist."),
        ("blank line", r"line 2: no caption; each line is caption<TAB>url"),
        ("no caption field", r"record 0: needs an 'image' \(file name\) and a 'caption'"),
        ("no pipeline", "spaCy has no pipeline 'en_nothing_here': install an English one"),
    ],
)
def test_user_mistakes_end_in_one_line(toy_pipeline, tmp_path, capsys, setup, problem):
    captions, model = tmp_path / "c.tsv", str(toy_pipeline)
    if setup == "missing":
        captions = tmp_path / "nowhere.tsv"
    elif setup == "blank line":
        captions.write_text("a dog\turl\n\na cat\turl\n")
    elif setup == "no caption field":
        captions = tmp_path / "c.json"
        captions.write_text(json.dumps([{"image": "x.jpg", "text": "a dog"}]))
    else:
        write_tsv(captions)
        model = "en_nothing_here"
    with pytest.raises(SystemExit) as exit:
        llava(["data", "filter-cc3m", str(captions), "--output", str(tmp_path / "o.json"), "--spacy-model", model])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("llava data filter-cc3m: ") and error.count("\n") == 1
    assert re.search(problem, error)
