"""Fault injection: real processes killed with SIGKILL at chosen points, and what the next run makes of it.

Each victim is `python -c SCRIPT` in a fresh process that patches one function of this project so that the process
kills itself (SIGKILL: no cleanup, no `finally`) exactly there, then runs the real command. The assertions are on the
files left behind and on the next, uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_args
from trainers.checkpoints import COMPLETE_NAME, checkpoint_folders
from trainers.train import main, parse

REPOSITORY = Path(__file__).resolve().parent.parent

TRAIN_UNTIL_KILLED = """
import os, signal, sys
import trainers.checkpoints as checkpoints
import trainers.llava_trainer as llava_trainer
from trainers.train import main, parse

def mark_complete(folder, fingerprint, step):
    if step == 4:  # checkpoint-4's files are on disk, its marker is not: killed during the save
        os.kill(os.getpid(), signal.SIGKILL)
    return original(folder, fingerprint, step)

original = checkpoints.mark_complete
llava_trainer.mark_complete = mark_complete
main(*parse(["stage2", *sys.argv[1:]]))
"""

CONVERT_UNTIL_KILLED = """
import os, signal, sys
import modeling_llava.convert_checkpoint as convert_checkpoint

def replace(source, destination):
    os.kill(os.getpid(), signal.SIGKILL)  # everything staged, nothing renamed into place yet

convert_checkpoint.os.replace = replace
convert_checkpoint.convert(sys.argv[1], sys.argv[2], to="llava-hf")
"""


def killed(script: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_a_run_killed_while_saving_a_checkpoint_resumes_from_the_last_complete_one(checkpoints, train_data, tmp_path):
    def args(output_dir: Path, *extra: str) -> list[str]:
        return run_args(
            checkpoints, train_data, output_dir, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
            "--learning_rate", "1e-3", *extra,
        )  # fmt: skip

    killed(TRAIN_UNTIL_KILLED, *args(tmp_path / "run"))
    folders = {path.name: path for path in checkpoint_folders(tmp_path / "run")}
    assert set(folders) == {"checkpoint-2", "checkpoint-4"}
    assert (folders["checkpoint-2"] / COMPLETE_NAME).is_file()
    assert not (folders["checkpoint-4"] / COMPLETE_NAME).exists()

    resumed = main(*parse(["stage2", *args(tmp_path / "run", "--resume")])).model.state_dict()
    expected = main(*parse(["stage2", *args(tmp_path / "whole")])).model.state_dict()
    for name, weight in resumed.items():
        assert torch.equal(weight, expected[name]), name
    projector = "model.multi_modal_projector.linear_1.weight"
    assert torch.equal(load_file(tmp_path / "run" / "model.safetensors")[projector], expected[projector])


@pytest.mark.slow
def test_a_killed_conversion_leaves_no_destination_and_the_next_one_cleans_up(llava_checkpoint, tmp_path):
    killed(CONVERT_UNTIL_KILLED, llava_checkpoint, str(tmp_path / "exported"))
    assert not (tmp_path / "exported").exists()
    [staging] = [path for path in tmp_path.iterdir() if path.name.startswith(".exported.partial-")]
    assert (staging / "config.json").is_file()  # a complete-looking folder, but not at the destination

    subprocess.run(
        [sys.executable, "-m", "command_line.main", "convert", llava_checkpoint, str(tmp_path / "exported"), "--to",
         "llava-hf"],
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)}, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exported"]
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["model_type"] == "llava"
