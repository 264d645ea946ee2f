"""Training on several processes (DDP over gloo on this CPU, launched by torchrun) is the same run as on one.

With per-device batch b on 2 processes and 2b on 1, every optimizer step sees the same samples: accelerate shards the
one-process sampler's batches across ranks, and DDP averages the ranks' gradients. The per-step losses and the final
weights must then agree to fp32 rounding (summation order differs across ranks). Only rank 0 writes the folder.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_llava import LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from processing.collator import LlavaDataCollator
from processing.llava_data import read_records
from tests.conftest import TINY_LORA, run_args, train
from trainers.stages import apply_freeze, get_stage

pytestmark = pytest.mark.slow
REPOSITORY = Path(__file__).parent.parent
# Per case: the stage, and what rank-dependent machinery the run exercises besides DDP itself.
CASES = {
    "stage1": ("stage1", ["--global_batch_size", "4"]),  # projector only; the stage-1 artifact
    # A padding-free row per rank; the grouped sampler deals one step's samples (sorted by length) to the ranks.
    "stage2": ("stage2", ["--padding_free_batches", "true", "--attn_implementation", "torch_varlen",
                          "--group_by_modality_length", "true"]),
    # The projector's own learning-rate group. No dropout: each rank draws its masks from its own random stream, so
    # with dropout the two runs are equal in distribution only.
    "lora": ("lora", ["--projector_lr", "1e-3", "--lora_dropout", "0"]),
}  # fmt: skip


def launch(processes: int, arguments: list[str]) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node PROCESSES -m command_line.main train ARGUMENTS` on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command += ["-m", "command_line.main", "train", *arguments, "--dataloader_num_workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=300)


def torchrun(processes: int, stage: str, args: list[str]) -> subprocess.CompletedProcess:
    """A DDP run over gloo, which must succeed."""
    done = launch(processes, [stage, *args, "--use_cpu", "true", *(TINY_LORA if stage == "lora" else [])])
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU per process, the launch is a DDP run")
def test_a_launch_without_use_cpu_on_a_cpu_stops_before_each_process_trains_a_copy(checkpoints, train_data, tmp_path):
    """Without `use_cpu`, transformers finds no device to give each process, trains each alone and only warns: two
    copies of the run would log every step and write one folder. Each process stops before loading anything."""
    output_dir = tmp_path / "run"
    done = launch(2, ["stage2", *run_args(checkpoints, train_data, output_dir)])
    # Counted, not read line by line: the two processes write to one pipe, and their lines may interleave.
    refusal = "llava train: 2 processes were launched (WORLD_SIZE=2)"
    assert done.returncode != 0 and done.stderr.count(refusal) == 2, done.stderr[-3000:]
    assert done.stderr.count("add `--use_cpu true`") == 2
    assert not output_dir.exists()  # neither process got as far as the output folder


def weights(folder: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(folder / name)


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Equal up to fp32 summation order. Adam divides by the gradient's own scale, so where a gradient is nearly zero,
    a rounding difference in it can move that element by a fraction of the learning rate (1e-2 here): the absolute
    tolerance is 1e-4, 1% of one step, and almost every element agrees to 1e-6."""
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
        assert (got[name] - tensor).abs().le(1e-6).float().mean() > 0.99, name


@pytest.mark.parametrize("case", CASES)
def test_two_processes_train_exactly_as_one_with_the_same_global_batch(
    checkpoints, train_data, stage1_data, tmp_path, case
):
    stage, extra = CASES[case]
    data = stage1_data if stage == "stage1" else train_data
    two = tmp_path / "two"
    # 9 samples (8 in stage 1), 4 a step: the last batch of an epoch could be partial, and accelerate evens it out
    # across ranks by repeating samples; dropping it keeps every step the same 4 samples on both sides.
    steps = ["--max_steps", "4", "--dataloader_drop_last", "true"]
    torchrun(2, stage, run_args(checkpoints, data, two, *steps, *extra))
    one = tmp_path / "one"
    train(stage, run_args(checkpoints, data, one, *steps, "--per_device_train_batch_size", "4", *extra))

    history = {
        name: json.loads((folder / "loss_history.json").read_text()) for name, folder in [("1", one), ("2", two)]
    }
    assert history["2"]["step"] == history["1"]["step"] == [1, 2, 3, 4]
    assert history["2"]["loss"] == pytest.approx(history["1"]["loss"], rel=1e-5)
    assert_same_weights(weights(two), weights(one))
    record = json.loads((two / "llava_run.json").read_text())
    assert record["hyperparameters"]["global batch size"] == 4  # 2 per device x 2 processes
    assert record["hyperparameters"]["processes"] == "2 (MULTI_CPU)"  # DDP over gloo
    if stage == "stage1":
        assert load_file(two / "mm_projector.safetensors").keys() == load_file(one / "mm_projector.safetensors").keys()


def test_only_rank_zero_writes_and_a_two_process_run_resumes_on_two_and_on_one(checkpoints, train_data, tmp_path):
    run = tmp_path / "run"
    records = json.loads(Path(train_data["data_path"]).read_text())
    records.append(
        {"id": "too-long", "conversations": [records[-1]["conversations"][0], {"from": "gpt", "value": "a " * 300}]}
    )
    data = {**train_data, "data_path": str(tmp_path / "data.json")}
    Path(data["data_path"]).write_text(json.dumps(records))
    # A global batch of 4: 2 per device on 2 processes, or 2 x 2 accumulation steps on one.
    same = ["--global_batch_size", "4", "--save_strategy", "steps", "--save_steps", "2"]
    same += ["--max_steps", "4", "--dataloader_drop_last", "true"]
    done = torchrun(2, "stage2", run_args(checkpoints, data, run, *same))
    assert done.stdout.count("stage2: saved to") == 1  # rank 0 alone reports, writes the card and the record
    assert [item["id"] for item in json.loads((run / "dropped_samples.json").read_text())] == ["too-long"]
    assert sorted(path.name for path in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    whole = weights(run)

    # Steps 3 and 4 again from the 2-process checkpoint-2, on 2 processes and then on 1: the same final weights.
    shutil.rmtree(run / "checkpoint-4")
    (run / "model.safetensors").unlink()
    torchrun(2, "stage2", run_args(checkpoints, data, run, *same, "--resume", "true"))
    assert_same_weights(weights(run), whole)
    assert sorted(path.name for path in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    shutil.rmtree(run / "checkpoint-4")
    (run / "model.safetensors").unlink()
    resumed = train("stage2", run_args(checkpoints, data, run, *same, "--resume", "true"))
    assert resumed.state.global_step == 4 and resumed.args.gradient_accumulation_steps == 2
    assert_same_weights(weights(run), whole)


ACCELERATE = REPOSITORY / "trainers" / "recipes" / "accelerate"


@pytest.mark.parametrize(
    ("name", "kind", "zero_stage"), [("ddp", "MULTI_GPU", None), ("fsdp", "FSDP", None), ("zero2", "DEEPSPEED", 2),
                                     ("zero3", "DEEPSPEED", 3)]
)  # fmt: skip
def test_shipped_launcher_configs_load_with_the_originals_settings(name, kind, zero_stage):
    """GPU-only launchers: checked here as far as a CPU can (accelerate reads them; DeepSpeed's JSON holds the
    original's ZeRO settings and leaves batch sizes and precision to the recipe)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE / f"{name}.yaml"))
    assert (config.distributed_type.name, config.num_processes, config.num_machines) == (kind, 8, 1)
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer,CLIPEncoderLayer"
    if zero_stage is not None:
        deepspeed = json.loads((REPOSITORY / config.deepspeed_config["deepspeed_config_file"]).read_text())
        assert deepspeed["zero_optimization"]["stage"] == zero_stage
        assert deepspeed["train_micro_batch_size_per_gpu"] == deepspeed["gradient_accumulation_steps"] == "auto"
        gathers = deepspeed["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save", False)
        assert gathers == (zero_stage == 3)  # ZeRO-3 saves whole 16-bit weights, loadable without DeepSpeed


def test_fsdp2_with_the_shipped_wrap_units_trains_a_step_as_one_process(llava_checkpoint, train_data, tmp_path):
    """FSDP2 over gloo (`tests/fsdp_step.py`): accelerate enables FSDP for GPU launches only, so this checks the model
    under `fully_shard` with the units `fsdp.yaml` names, not `llava train --fsdp` itself."""
    processor = LlavaPluginProcessor.from_pretrained(llava_checkpoint)
    collator = LlavaDataCollator(processor=processor, assistant_only_loss=True)
    rows = read_records(train_data["data_path"], train_data["image_folder"], progress=False)[:4]
    batch = dict(collator(rows))
    torch.save({**batch, "images_per_row": [1, 1, 1, 1]}, tmp_path / "batch.pt")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(REPOSITORY / "tests" / "fsdp_step.py"), llava_checkpoint, str(tmp_path / "batch.pt")]
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, str(tmp_path / "out.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = torch.load(tmp_path / "out.pt")

    model = LlavaPluginForConditionalGeneration.from_pretrained(llava_checkpoint, dtype=torch.float32)
    apply_freeze(model, get_stage("stage2"))
    layers = model.config.text_config.num_hidden_layers + model.config.vision_config.num_hidden_layers
    assert sharded["units"] == layers and sharded["whole"] / 2 <= sharded["local"] < sharded["whole"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    halves = [{name: value[rows] for name, value in batch.items()} for rows in (slice(0, 2), slice(2, 4))]
    losses = [model(**half).loss for half in halves]  # each half's pixel_values are its rows' images: one per row
    (sum(losses) / 2).backward()  # FSDP averages the ranks' gradients
    optimizer.step()
    torch.testing.assert_close(sharded["losses"], torch.stack(losses).detach(), rtol=1e-6, atol=1e-6)
    assert_same_weights(sharded["state"], {name: value.detach() for name, value in model.state_dict().items()})


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_trains_stage2_from_the_backbones_as_without_it(checkpoints, train_data, tmp_path, zero):
    """One process under DeepSpeed's CPU accelerator with the shipped ZeRO config: the same losses and weights as a
    plain run. ZeRO-3 partitions every module as it is built, which `from_backbones` must allow. Skipped where
    DeepSpeed is not installed (it is not a dependency)."""
    pytest.importorskip("deepspeed")
    steps = ["--max_steps", "2", "--dataloader_num_workers", "0"]
    deepspeed = tmp_path / "deepspeed"
    command = [sys.executable, "-m", "command_line.main", "train", "stage2"]
    command += run_args(checkpoints, train_data, deepspeed, *steps, "--deepspeed", str(ACCELERATE / f"{zero}.json"))
    distributed = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29561",
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
        **distributed,
    }
    done = subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    plain = tmp_path / "plain"
    train("stage2", run_args(checkpoints, train_data, plain, *steps))
    record = json.loads((deepspeed / "llava_run.json").read_text())
    assert record["hyperparameters"]["processes"] == "1 (DEEPSPEED)"
    history = {
        name: json.loads((folder / "loss_history.json").read_text())
        for name, folder in [("ds", deepspeed), ("plain", plain)]
    }
    assert history["ds"]["loss"] == pytest.approx(history["plain"]["loss"], rel=1e-5)
    assert_same_weights(weights(deepspeed), weights(plain))
