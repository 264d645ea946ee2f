"""The `llava` command line: `info` reads a checkpoint without loading it, `demo --quick` runs the whole pipeline, and
every command ends a user's mistake in one line and exit status 2."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from tests.conftest import refused
from trainers.demo.run import QUICK, run_demo, run_task
from trainers.projector_artifact import save_projector


@pytest.mark.slow
def test_info_describes_the_checkpoint_and_counts_parameters_per_part(llava_checkpoint):
    result = subprocess.run(
        [sys.executable, "-m", "command_line.main", "info", llava_checkpoint],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = dict(line.split("  ", 1) for line in result.stdout.splitlines())
    lines = {key.strip(): value.strip() for key, value in lines.items()}
    model = AutoModelForImageTextToText.from_pretrained(llava_checkpoint)
    for part, module in [
        ("vision_tower", model.model.vision_tower),
        ("multi_modal_projector", model.model.multi_modal_projector),
        ("language_model", model.model.language_model),
        ("lm_head", model.lm_head),
    ]:
        assert lines[f"parameters: {part}"] == f"{sum(p.numel() for p in module.parameters()):,}"
    assert lines["projector"] == "mlp2x_gelu"
    assert lines["image tokens per image"] == f"25 (token id {model.config.image_token_id})"


def test_info_refuses_a_checkpoint_of_another_model_type(checkpoints):
    result = subprocess.run(
        [sys.executable, "-m", "command_line.main", "info", checkpoints["llama"]], capture_output=True, text=True
    )
    assert result.returncode == 2 and "'llama' checkpoint, not a llava_plugin one" in result.stderr
    assert result.stderr.startswith("llava info: ") and "Traceback" not in result.stderr


@pytest.mark.slow
def test_quick_demo_writes_every_result_and_says_where(tmp_path, capsys):
    results = run_demo(tmp_path, quick=True)
    assert f"The trained LLaVA (stage 2) is in {tmp_path / 'stage2'}" in capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for key in ("accuracy_with_image", "accuracy_blank_image", "accuracy_no_stage1"):
        assert 0 <= saved[key] <= 1
    assert saved["heldout"]["with_image"]["total"] == 3 * 6  # three question kinds per held-out image
    assert set(saved["seconds_per_step"]) == {"stage1", "stage2"}
    assert len(saved["chat"]) == 3 and all(turn["question"] for turn in saved["chat"])
    assert Path(tmp_path / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for model in ("stage1", "stage2", "stage2-no-stage1"):
        assert (tmp_path / model / "model.safetensors").is_file()


@pytest.mark.slow
def test_quick_task_demo_fine_tunes_an_adapter_on_the_demo_model_and_measures_it(tmp_path, capsys):
    """`llava demo --task --quick` in an empty folder: the quick demo first, then a LoRA adapter on its stage-2 model
    (the `demo-task-lora` recipe starting from a plugin checkpoint), evaluated unmerged; plumbing, not accuracy."""
    results = run_task(tmp_path, quick=True)
    out = capsys.readouterr().out
    assert f"No finished demo in {tmp_path}" in out and f"The adapter is in {tmp_path / 'task-lora'}" in out
    assert (tmp_path / "results.json").is_file()  # the demo ran first
    saved = json.loads((tmp_path / "task_results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    base = json.loads((tmp_path / "task-lora" / "llava_base.json").read_text())
    assert base["model_name_or_path"] == str((tmp_path / "stage2").resolve())
    assert (tmp_path / "task-lora" / "adapter_config.json").is_file()
    assert not (tmp_path / "task-lora" / "model.safetensors").exists()  # an adapter, not a merged model
    sided = sum(
        1
        for record in json.loads((tmp_path / "world" / "heldout.json").read_text())
        if record["kind"] == "position" and "center" not in record["conversations"][1]["value"]
    )
    for name in ("task_before", "task_after", "task_after_blank_image"):
        assert saved["heldout"][name]["total"] == sided and set(saved["heldout"][name]["per_kind"]) == {"side"}
    assert saved["heldout"]["old_after"]["total"] == saved["heldout"]["old_before"]["total"] == 3 * 6
    assert len(saved["loss"]["loss"]) >= 1 and saved["task_samples"] == 12
    assert Path(tmp_path / "task_loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_task_demo_on_a_quick_demo_folder_says_to_add_quick(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"size": asdict(QUICK)}))  # what `llava demo --quick` leaves
    result = subprocess.run(
        [sys.executable, "-m", "command_line.main", "demo", "--task", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (
        f"llava demo: {tmp_path} holds a `llava demo --quick` run, and the task is fine-tuned at the size of the demo "
        "it starts from: add --quick, or give another --output-dir.\n"
    )


NO_HEAVY_IMPORTS = """
import sys
from command_line.main import main
main(["info", sys.argv[1]])
print("imported:", sorted(name for name in ("torch", "transformers") if name in sys.modules))
"""


def test_info_describes_every_saved_kind_without_importing_torch(
    tmp_path, llava_checkpoint, checkpoints, lora_adapter
):
    model = AutoModelForImageTextToText.from_pretrained(llava_checkpoint)
    save_projector(model, tmp_path / "projector", vision_tower=checkpoints["clip"], language_model="lmsys/vicuna")
    expected = {"checkpoint": "mlp2x_gelu", "adapter": "LoRA r 4, alpha 8", "projector": "mlp2x_gelu"}
    folders = {"checkpoint": llava_checkpoint, "adapter": lora_adapter, "projector": tmp_path / "projector"}
    for kind, folder in folders.items():
        result = subprocess.run(
            [sys.executable, "-c", NO_HEAVY_IMPORTS, str(folder)], capture_output=True, text=True, check=True
        )
        assert result.stdout.splitlines()[-1] == "imported: []"  # header reads only: it answers at once
        rows = dict(line.split("  ", 1) for line in result.stdout.splitlines()[:-1])
        assert rows["kind"].strip() == kind
        assert expected[kind] in " ".join(rows.values())


# Each command given a path where nothing is: `MISSING` stands for it, `OUT` for a fresh output folder.
BAD_PATHS = {
    "eval scienceqa": ["eval", "scienceqa", "OUT", "--data", "MISSING", "--output-dir", "OUT"],
    "eval llava-bench": [
        "eval", "llava-bench", "OUT", "--questions", "MISSING", "--context", "MISSING", "--reference", "MISSING",
        "--judge-model", "judge", "--output-dir", "OUT",
    ],
    "predict": ["predict", "OUT", "--questions", "MISSING", "--output", "OUT/answers.jsonl"],
    "chat": ["chat", "MISSING", "--prompt", "Hello?"],
    "serve": ["serve", "MISSING", "--port", "0"],
    "convert": ["convert", "MISSING", "OUT"],
    "info": ["info", "MISSING"],
    "merge-lora": ["merge-lora", "MISSING", "OUT"],
    "push": ["push", "MISSING", "tester/repo"],
    "generate-data": ["generate-data", "stage1", "--captions", "MISSING", "--output", "OUT/data.json"],
    "data filter-cc3m": ["data", "filter-cc3m", "MISSING", "--output", "OUT/chat.json"],
    "data mix": ["data", "mix", "--conversation", "MISSING", "--output", "OUT/mix.json"],
    "train": ["train", "stage1", "--data_path", "MISSING", "--output_dir", "OUT", "--bf16", "false"],
    "plan": ["plan", "--config", "llava-1.5-7b-stage2", "--vision_tower", "MISSING", "--language_model", "OUT"],
}  # fmt: skip


@pytest.mark.parametrize("command", BAD_PATHS)
def test_a_bad_path_is_one_line_naming_it_and_exit_status_2_in_every_command(command, checkpoints, tmp_path, capsys):
    missing = tmp_path / "missing"
    paths = {"MISSING": str(missing), "OUT": str(tmp_path / "out")}
    argv = [paths.get(part, part) for part in BAD_PATHS[command]]
    if command == "train":
        argv += ["--vision_tower", checkpoints["clip"], "--language_model", checkpoints["llama"]]
    message = refused(capsys, argv)
    assert message.startswith(f"llava {command}: ") and str(missing) in message


def test_a_bad_path_in_a_fresh_process_prints_no_traceback(tmp_path):
    argv = ["eval", "scienceqa", str(tmp_path), "--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path)]
    result = subprocess.run([sys.executable, "-m", "command_line.main", *argv], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"llava eval scienceqa: '{tmp_path / 'missing'}' does not exist: give the ScienceQA release folder or LLaVA's "
        "question file."
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is refused only where no GPU supports it")
def test_a_value_transformers_refuses_is_one_line_too(checkpoints, tmp_path, capsys):
    """bf16, the recipes' default, on a machine without a GPU: transformers' own check, one line, not a traceback."""
    argv = ["train", "stage1", "--data_path", str(tmp_path / "data.json"), "--output_dir", str(tmp_path)]
    message = refused(capsys, [*argv, "--vision_tower", checkpoints["clip"], "--language_model", checkpoints["llama"]])
    assert "bf16" in message
