"""`llava data mix`: the paper's Table 4 training sets drawn by response type from hand-made type files."""

import json
import re
from pathlib import Path

import pytest

from command_line.main import main as llava


def records(kind: str, count: int) -> list[dict]:
    return [
        {
            "id": f"{n:012d}",  # the release's ids are COCO image ids, the same across types
            "image": f"{n:012d}.jpg",
            "conversations": [{"from": "human", "value": f"<image>\n{kind} {n}?"}, {"from": "gpt", "value": "a"}],
        }
        for n in range(count)
    ]


@pytest.fixture
def release(tmp_path) -> dict[str, Path]:
    files = {"conversation": 40, "detail": 20, "complex": 30}
    for kind, count in files.items():
        (tmp_path / f"{kind}.json").write_text(json.dumps(records(kind, count)))
    return {kind: tmp_path / f"{kind}.json" for kind in files}


def mix(output: Path, *flags: str) -> list[dict]:
    llava(["data", "mix", *flags, "--output", str(output)])
    return json.loads(output.read_text())


def test_whole_types_are_joined_in_type_order(release, tmp_path, capsys):
    full = mix(tmp_path / "full.json", *(f"--{kind}={path}" for kind, path in release.items()))
    assert full == records("conversation", 40) + records("detail", 20) + records("complex", 30)
    assert "conversation 40, detail 20, complex 30: 90 records" in capsys.readouterr().out
    both = mix(tmp_path / "dc.json", "--complex", str(release["complex"]), "--detail", str(release["detail"]))
    assert both == records("detail", 20) + records("complex", 30)  # Table 4's detail + complex


def test_fractions_draw_a_seeded_subset_in_file_order(release, tmp_path):
    flags = ["--conversation", str(release["conversation"]), "--detail", str(release["detail"])]
    flags += ["--detail-fraction", "0.05", "--complex", str(release["complex"]), "--complex-fraction", "0.1"]
    drawn = mix(tmp_path / "a.json", *flags, "--seed", "0")
    assert drawn[:40] == records("conversation", 40)
    detail, complex_ = drawn[40:41], drawn[41:]  # round(0.05 * 20) = 1, round(0.1 * 30) = 3
    assert len(complex_) == 3 and all(record in records("complex", 30) for record in complex_)
    assert detail[0] in records("detail", 20)
    assert [r["id"] for r in complex_] == sorted(r["id"] for r in complex_)  # the file's order
    assert mix(tmp_path / "b.json", *flags, "--seed", "0") == drawn
    draws = {json.dumps(mix(tmp_path / f"{seed}.json", *flags, "--seed", str(seed))) for seed in range(5)}
    assert len(draws) > 1


@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--detail-fraction", "0.5"], "--detail-fraction is given without --detail: pass the detail file too."),
        (["--detail", "{detail}", "--detail-fraction", "1.5"], "The detail fraction is 1.5; it must be above 0"),
        ([], "No type file given: pass at least one of --conversation, --detail, --complex."),
        (["--complex", "{detail}.missing"], "Cannot read '.*detail.json.missing' as LLaVA JSON"),
        (["--complex", "{bad}"], r"bad.json', record 0: not a LLaVA record \(no 'conversations' list\)"),
    ],
)
def test_user_mistakes_end_in_one_line(release, tmp_path, capsys, flags, problem):
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "1", "image": "1.jpg"}]))
    flags = [flag.format(detail=release["detail"], bad=tmp_path / "bad.json") for flag in flags]
    with pytest.raises(SystemExit) as exit:
        llava(["data", "mix", *flags, "--output", str(tmp_path / "out.json")])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("llava data mix: ") and error.count("\n") == 1
    assert re.search(problem, error)
