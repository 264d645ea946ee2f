"""The GPU benchmark's machinery, rehearsed on a CPU: wheel selection and install, incremental results, time guards.

`benchmarks/gpu.sh` runs once on a machine without a package index, a CUDA PyTorch and an older transformers; what it
does there is checked here on stand-ins: wheels built in the session, an installed-versions table, cases that fail.
"""

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from packaging.requirements import Requirement
from transformers import LlavaForConditionalGeneration
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from benchmarks import install_wheels
from benchmarks import run as benchmark_run
from benchmarks.install_wheels import project_requirements, read_wheels, select, unmet, wanted
from benchmarks.measure import BatchRecorder, ModelCounts
from benchmarks.run import TimeGuard, with_lengths
from benchmarks.synthetic import SMALL_VOCAB, as_dataset, processors_for, save_images, shapes, stage2_rows
from modeling_llava import CHAT_TEMPLATES
from processing.collator import LlavaDataCollator
from trainers import train as train_module

REPOSITORY = Path(__file__).parents[1]


def make_wheel(folder: Path, name: str, version: str, requires: list[str] = (), tag: str = "py3-none-any") -> Path:
    """A minimal installable wheel of one module, `name`, whose METADATA lists `requires`."""
    folder.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-{tag}.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(f"{dist_info}/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n")
        archive.writestr(f"{dist_info}/RECORD", "")
    return path


def test_only_missing_or_out_of_bounds_packages_are_installed(tmp_path):
    make_wheel(tmp_path, "alpha", "2.0", requires=["delta<=1.0", "omega; extra == 'docs'"])
    for name in ("beta", "gamma", "delta"):
        make_wheel(tmp_path, name, "1.0")
    wheels = read_wheels(tmp_path)
    bounds = wanted(wheels, [Requirement("alpha>=1.5"), Requirement("beta>=1.0")])
    assert "omega" not in bounds  # an extra's requirement is not one
    installed = {"alpha": "1.0", "beta": "1.0", "gamma": None, "delta": "2.0"}
    chosen = {wheel.name for wheel in select(wheels, bounds, installed)}
    # alpha too old for the project, gamma missing, delta too new for alpha; beta is good enough and stays.
    assert chosen == {"alpha", "gamma", "delta"}


def test_the_gpu_machines_transformers_is_replaced_and_its_torch_kept():
    """transformers 5.17 (the GPU machine's) is below the project's bound; its torch 2.11 is not."""
    bounds = wanted([], project_requirements())
    assert not bounds["transformers"].contains("5.17.0") and bounds["transformers"].contains("5.24.0")
    assert bounds["torch"].contains("2.11.0")
    missing = unmet(bounds, {"torch": "2.11.0", "transformers": "5.17.0"})
    assert f"transformers{bounds['transformers']} (found 5.17.0)" in missing
    assert not [requirement for requirement in missing if requirement.startswith("torch")]


def test_a_carried_wheel_outside_the_bounds_is_refused(tmp_path):
    make_wheel(tmp_path, "alpha", "1.0")
    with pytest.raises(ValueError, match=r"alpha-1.0-py3-none-any.whl does not satisfy alpha>=1.5"):
        select(read_wheels(tmp_path), {"alpha": Requirement("alpha>=1.5").specifier}, {"alpha": None})


def test_a_wheel_for_another_python_is_refused(tmp_path):
    make_wheel(tmp_path, "alpha", "1.0", tag="cp27-cp27mu-manylinux1_x86_64")
    with pytest.raises(ValueError, match=r"alpha-1.0-cp27-cp27mu-manylinux1_x86_64.whl is for .*fetch_wheels"):
        read_wheels(tmp_path)


def test_two_versions_of_one_package_are_refused(tmp_path):
    make_wheel(tmp_path, "alpha", "1.0")
    make_wheel(tmp_path, "alpha", "2.0")
    with pytest.raises(ValueError, match="two versions of alpha"):
        read_wheels(tmp_path)


def test_wheels_install_into_a_target_without_an_index(tmp_path, monkeypatch):
    """pip --no-index --no-deps into a fresh folder; once that folder is on the path, nothing is installed again."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    make_wheel(wheels, "llava_probe_package", "1.0")
    chosen = install_wheels.main([str(wheels), "--target", str(site)])
    assert [wheel.name for wheel in chosen] == ["llava-probe-package"]
    probe = subprocess.run(
        [sys.executable, "-c", "import llava_probe_package as p; print(p.VERSION)"],
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "1.0"
    monkeypatch.syspath_prepend(str(site))
    assert install_wheels.main([str(wheels), "--target", str(site)]) == []


def fake_case(name: str) -> dict:
    side = {"samples_per_s": 1.0, "tokens_per_s": 10.0, "mfu": None, "padding_fraction": 0.0, "peak_memory_gib": None}
    return {"llm": "7b", "batch_size": 1, "baseline": dict(side), "ours": dict(side)}


@pytest.fixture
def staged_run(tmp_path, monkeypatch):
    """`benchmarks.run.main` over three stand-in cases: the second raises; each sees what was on disk as it began."""
    seen = {}

    def run_case(name, settings):
        seen[name] = json.loads((tmp_path / "results.json").read_text())["cases"]
        if name == "lora":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {name: fake_case(name)}

    monkeypatch.setattr(benchmark_run, "run_case", run_case)
    monkeypatch.setattr(benchmark_run, "save_images", lambda folder: [])
    record = benchmark_run.main(
        ["--device", "cpu", "--small", "--cases", "stage1,lora,stage2", "--output", str(tmp_path)]
    )
    return record, seen, tmp_path


def test_a_failing_case_is_recorded_and_the_run_goes_on(staged_run):
    record, seen, folder = staged_run
    assert seen["stage2"]["stage1"]["baseline"]["samples_per_s"] == 1.0  # on disk before the next case began
    assert seen["stage2"]["lora"]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert list(record["cases"]) == ["stage1", "lora", "stage2"] and "error" not in record["cases"]["stage2"]
    assert json.loads((folder / "results.json").read_text()) == record
    assert "| lora | failed | | | | | | RuntimeError: CUDA error" in (folder / "results.md").read_text()


def test_a_case_is_marked_started_before_it_runs(staged_run):
    """A case whose process is killed leaves this mark, not silence."""
    _, seen, _ = staged_run
    assert seen["stage1"]["stage1"]["error"].endswith("killed before it finished")


def test_the_time_guard_stops_training_once_its_seconds_are_spent():
    control = SimpleNamespace(should_training_stop=False)
    TimeGuard(None).on_step_end(None, None, control)
    assert not control.should_training_stop
    TimeGuard(0.0).on_step_end(None, None, control)
    assert control.should_training_stop


def test_too_few_steps_for_a_measurement_are_an_error():
    recorder = BatchRecorder("cpu", starts=[0.0, 1.0])
    with pytest.raises(RuntimeError, match=r"2 steps were recorded, and 1 warm-up steps .* need 3"):
        recorder.summary(warmup=1, counts=None, peak=None)


def test_the_lm_head_is_counted_on_the_loss_tokens_only():
    """TRL's fused LM head projects only the tokens with a label; the MFU formula counts the head's FLOPs there."""
    config = shapes("7b", small=True).builtin_config(image_token_id=SMALL_VOCAB - 1)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    counts = ModelCounts.of(model, model.config)
    assert counts.lm_head == model.lm_head.weight.numel()
    every_token = counts.training_flops([10, 30], 0)
    loss_only = counts.training_flops([10, 30], 0, loss_tokens=5)
    assert every_token - loss_only == 6 * counts.lm_head * (40 - 5)  # every weight trains here: 6 FLOPs a weight


@pytest.fixture(scope="module")
def stage2_data(tmp_path_factory):
    """Both sides' processors over one tokenizer, and stage-2 rows, as the benchmark makes them."""
    folder = tmp_path_factory.mktemp("benchmark-data")
    ours, builtin = processors_for(shapes("7b", small=True), folder / "backbones")
    builtin.chat_template = CHAT_TEMPLATES["vicuna_v1"]
    return ours, builtin, as_dataset(stage2_rows(6, save_images(folder / "images", count=2)))


def test_the_length_column_is_what_trls_collator_gives_the_model(stage2_data):
    """LengthGroupedSampler sorts the baseline by the lengths its own processor and TRL's collator produce."""
    _, builtin, dataset = stage2_data
    collator = DataCollatorForVisionLanguageModeling(processor=builtin, assistant_only_loss=True)
    for row in with_lengths(dataset, builtin):
        assert row["length"] == int(collator([dict(row)])["attention_mask"].sum())


def test_both_sides_compute_the_loss_on_the_same_tokens(stage2_data):
    """TRL's assistant_only_loss over the same template text masks each sample exactly as this project's collator."""
    ours, builtin, dataset = stage2_data
    baseline = DataCollatorForVisionLanguageModeling(processor=builtin, assistant_only_loss=True)
    own = LlavaDataCollator(processor=ours, assistant_only_loss=True, chat_template=CHAT_TEMPLATES["vicuna_v1"])
    for row in dataset:
        theirs, mine = baseline([dict(row)]), own([dict(row)])
        torch.testing.assert_close(theirs["input_ids"], mine["input_ids"])
        torch.testing.assert_close(theirs["labels"], mine["labels"])


def test_gpu_sh_is_valid_bash():
    subprocess.run(["bash", "-n", str(REPOSITORY / "benchmarks" / "gpu.sh")], check=True)
    subprocess.run(["bash", "-n", str(REPOSITORY / "benchmarks" / "fetch_wheels.sh")], check=True)


@pytest.mark.slow
def test_the_baseline_runs_with_the_recipes_stock_settings(tmp_path):
    """The built-in Llava gets what stock TRL/transformers offer by a flag and the recipe turns on for ours."""
    argv = ["--device", "cpu", "--small", "--cases", "lora", "--output", str(tmp_path)]
    case = benchmark_run.main([*argv, "--steps", "1", "--warmup", "0", "--batch-size", "2"])["cases"]["lora"]
    cpu = ["--use_cpu", "true", "--bf16", "false", "--dtype", "float32"]
    _, recipe, _ = train_module.parse(["--config", "llava-1.5-7b-lora", *cpu])
    baseline, ours = case["baseline"]["settings"], case["ours"]["settings"]
    assert baseline["dataloader_num_workers"] == ours["dataloader_num_workers"] == recipe.dataloader_num_workers
    assert baseline["sampler"] == "LengthGroupedSampler" and baseline["attn_implementation"] == "sdpa"
    assert baseline["loss_tokens"] == ours["loss_tokens"] == "assistant-only"
    assert baseline["gradient_checkpointing"] == ours["gradient_checkpointing"] == recipe.gradient_checkpointing
    # Assistant-only: neither side computes the loss on the image tokens or the prompts.
    assert 0 < case["baseline"]["loss_token_fraction"] < 1 and 0 < case["ours"]["loss_token_fraction"] < 1
