"""The training stages end to end on tiny backbones: what each stage trains, what it writes, and what reloads.

References are independent of the trainer: the backbone checkpoints on disk (frozen weights must equal them bit for
bit), a model rebuilt the same way before training, the PEFT model an adapter came from, and an uninterrupted run.
"""

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, CLIPModel, TrainerCallback, set_seed
from trl import ModelConfig

import trainers.train as train_module
from command_line.main import main as llava
from hub_cards.model_card import RUN_INFO_NAME
from tests.conftest import BLOCK_THE_PACKAGE, random_image, run_args, train
from trainers.checkpoints import (
    COMPLETE_NAME,
    FINGERPRINT_NAME,
    RunMismatchError,
    checkpoint_folders,
    mark_complete,
    prepare_output_dir,
    run_fingerprint,
)
from trainers.merge_lora import merge_lora
from trainers.projector_artifact import CONFIG_NAME, WEIGHTS_NAME, save_projector
from trainers.stages import get_stage
from trainers.train import (
    LlavaScriptArguments,
    SetupError,
    base_description,
    build_model_and_processor,
    fill_global_batch,
    main,
    parse,
)


def starting_model(stage: str, args: list[str]):
    """The model `main` starts from, rebuilt with the run's seed (the projector is random)."""
    script_args, training_args, model_args = parse(args)
    set_seed(training_args.seed)
    return build_model_and_processor(script_args, model_args, get_stage(stage).quantized)[0]


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> dict[str, bool]:
    names = [name for name in before if name.startswith(prefix)]
    assert names, prefix
    return {name: not torch.equal(before[name], after[name]) for name in names}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_full_stages_train_exactly_their_parts(checkpoints, train_data, stage1_data, tmp_path, stage):
    args = run_args(checkpoints, stage1_data if stage == "stage1" else train_data, tmp_path)
    before = {name: weight.clone() for name, weight in starting_model(stage, args).state_dict().items()}
    after = train(stage, args).model.state_dict()

    # The vision tower never trains, and in stage 1 neither does the LLM: bit-identical to the checkpoints on disk.
    clip = CLIPModel.from_pretrained(checkpoints["clip"]).vision_model.state_dict()
    for name, weight in clip.items():
        assert torch.equal(after[f"model.vision_tower.{name}"], weight), name
    assert all(changed(before, after, "model.multi_modal_projector.").values())
    language_model = changed(before, after, "model.language_model.") | changed(before, after, "lm_head.")
    if stage == "stage1":
        assert not any(language_model.values())
    else:
        assert all(language_model.values()), [name for name, moved in language_model.items() if not moved]


@pytest.mark.slow
def test_lora_trains_adapters_and_projector_only(checkpoints, train_data, tmp_path):
    args = run_args(checkpoints, train_data, tmp_path, "--projector_lr", "1e-3")
    before = starting_model("lora", args).state_dict()
    model = train("lora", args).model
    after = {name.removeprefix("base_model.model."): weight for name, weight in model.state_dict().items()}

    adapters = {name for name in after if "lora_" in name}
    assert adapters and all(name.startswith("model.language_model.") for name in adapters)
    assert all(not torch.equal(after[name], torch.zeros_like(after[name])) for name in adapters if "lora_B" in name)
    for name, weight in before.items():
        base = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        frozen = after.get(name, after.get(base))
        if "multi_modal_projector" in name:  # PEFT keeps the original and trains a copy (modules_to_save)
            trained = name.replace("multi_modal_projector.", "multi_modal_projector.modules_to_save.default.")
            assert not torch.equal(after[trained], weight), name
            frozen = after[name.replace("multi_modal_projector.", "multi_modal_projector.original_module.")]
        assert torch.equal(frozen, weight), name


@pytest.mark.slow
def test_projector_learning_rate_is_its_own(checkpoints, train_data, tmp_path):
    trainer = train("lora", run_args(checkpoints, train_data, tmp_path, "--projector_lr", "3e-4"))
    by_rate: dict[float, set[str]] = {}
    names = {id(parameter): name for name, parameter in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        by_rate.setdefault(group["initial_lr"], set()).update(names[id(p)] for p in group["params"])
    trainable = {name for name, parameter in trainer.model.named_parameters() if parameter.requires_grad}
    assert set(by_rate) == {3e-4, 1e-2}
    assert by_rate[3e-4] == {name for name in trainable if "multi_modal_projector" in name}
    assert by_rate[1e-2] == {name for name in trainable if "lora_" in name}


@pytest.mark.slow
def test_stage1_writes_the_projector_artifact_and_stage2_starts_from_it(
    checkpoints, train_data, stage1_data, tmp_path
):
    stage1_dir = tmp_path / "stage1"
    trainer = train(
        "stage1", run_args(checkpoints, stage1_data, stage1_dir, "--save_strategy", "steps", "--save_steps", "1")
    )
    trained = trainer.model.model.multi_modal_projector.state_dict()
    for step, directory in ((2, stage1_dir), (1, stage1_dir / "checkpoint-1"), (2, stage1_dir / "checkpoint-2")):
        assert (directory / WEIGHTS_NAME).is_file() and (directory / CONFIG_NAME).is_file(), directory
        # The card and run record beside every checkpoint describe that checkpoint's own progress.
        run = json.loads((directory / RUN_INFO_NAME).read_text())
        assert (run["stage"], run["progress"]["steps done"]) == ("stage1", step), directory
        assert "pipeline_tag: image-text-to-text" in (directory / "README.md").read_text()
    artifact = load_file(stage1_dir / WEIGHTS_NAME)
    assert artifact.keys() == trained.keys()
    assert all(torch.equal(artifact[name], trained[name]) for name in trained)
    assert json.loads((stage1_dir / CONFIG_NAME).read_text())["language_model"] == checkpoints["llama"]

    from_artifact = starting_model(
        "stage2", run_args(checkpoints, train_data, tmp_path, "--pretrain_projector", str(stage1_dir))
    )
    from_checkpoint = starting_model(
        "stage2", run_args(checkpoints, train_data, tmp_path, "--model_name_or_path", str(stage1_dir))
    )
    for model in (from_artifact, from_checkpoint):
        loaded = model.model.multi_modal_projector.state_dict()
        assert all(torch.equal(loaded[name], trained[name]) for name in trained)

    mismatched = run_args(
        checkpoints, train_data, tmp_path, "--pretrain_projector", str(stage1_dir), "--projector_type", "linear"
    )
    with pytest.raises(ValueError, match="projector_type: artifact 'mlp2x_gelu', model 'linear'"):
        starting_model("stage2", mismatched)  # fmt: skip


@pytest.mark.slow
def test_merged_lora_checkpoint_gives_the_adapters_outputs(checkpoints, train_data, tmp_path, processor):
    trainer = train("lora", run_args(checkpoints, train_data, tmp_path / "lora"))
    adapter = trainer.model.eval()
    assert isinstance(adapter, PeftModel)
    merged_dir = merge_lora(tmp_path / "lora", tmp_path / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the circle?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=random_image(11), text=prompt, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapter(**inputs).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(FileExistsError, match="already exists"):
        merge_lora(tmp_path / "lora", merged_dir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is missing")
def test_qlora_without_cuda_stops_with_a_clear_message(checkpoints, train_data, tmp_path):
    with pytest.raises(SystemExit, match="needs a CUDA GPU, and none is present"):
        train("qlora", run_args(checkpoints, train_data, tmp_path, "--load_in_4bit", "true"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA's 4-bit bitsandbytes layers need CUDA")
def test_qlora_quantizes_the_language_model_only(checkpoints, train_data, tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the qlora extra (bitsandbytes)")
    model = train("qlora", run_args(checkpoints, train_data, tmp_path, "--load_in_4bit", "true")).model
    quantized = {name for name, module in model.named_modules() if type(module).__name__ == "Linear4bit"}
    assert quantized and all(".language_model." in name for name in quantized)


def test_global_batch_sets_gradient_accumulation():
    script_args, training_args, _ = parse(["--output_dir", "unused", "--bf16", "false", "--global_batch_size", "256"])
    training_args.per_device_train_batch_size = 32
    fill_global_batch(script_args, training_args)
    assert training_args.gradient_accumulation_steps == 8
    training_args.per_device_train_batch_size = 48
    with pytest.raises(ValueError, match="not a multiple of per_device_train_batch_size"):
        fill_global_batch(script_args, training_args)


PAPER = {  # scripts/v1_5/{pretrain,finetune,finetune_lora}.sh of the original repository
    "stage1": {"learning_rate": 1e-3, "global_batch_size": 256},
    "stage2": {"learning_rate": 2e-5, "global_batch_size": 128, "pad_to_square": True},
    "lora": {"learning_rate": 2e-4, "global_batch_size": 128, "lora_r": 128, "lora_alpha": 256, "projector_lr": 2e-5},
    "qlora": {"learning_rate": 2e-4, "global_batch_size": 128, "lora_r": 128, "load_in_4bit": True},
}


@pytest.mark.parametrize("size", ["7b", "13b"])
@pytest.mark.parametrize("stage", PAPER)
def test_shipped_recipes_hold_the_papers_settings(stage, size):
    on_cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]  # bf16 on a CPU needs use_cpu
    script_args, training_args, model_args = parse(["--config", f"llava-1.5-{size}-{stage}", *on_cpu])
    fields = {**vars(script_args), **vars(model_args), **training_args.to_dict()}
    for key, value in {**PAPER[stage], "stage": stage, "assistant_only_loss": True}.items():
        assert fields[key] == value, key
    assert script_args.language_model == f"lmsys/vicuna-{size}-v1.5"
    assert script_args.vision_tower == "openai/clip-vit-large-patch14-336"
    assert (script_args.projector_type, script_args.vision_feature_layer) == ("mlp2x_gelu", -2)
    assert (training_args.num_train_epochs, training_args.warmup_steps, training_args.weight_decay) == (1, 0.03, 0)
    assert (training_args.lr_scheduler_type, training_args.max_length, training_args.bf16) == ("cosine", 2048, True)
    if stage != "stage1":
        assert script_args.pretrain_projector == f"checkpoints/llava-v1.5-{size}-pretrain"


def test_unknown_recipe_names_the_shipped_ones():
    with pytest.raises(SetupError, match="llava-1.5-7b-stage1"):
        parse(["--config", "llava-9b"])


class StepRecorder(TrainerCallback):
    """Records the steps a run executes; with `stop_after`, dies there like a killed job."""

    def __init__(self, stop_after: int | None = None):
        self.steps: list[int] = []
        self.stop_after = stop_after

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        if state.global_step == self.stop_after:
            raise KeyboardInterrupt


def train_recording(monkeypatch, *train_args, stop_after: int | None = None):
    """`train`, returning the trainer (None if stopped) and the steps it executed."""
    recorder = StepRecorder(stop_after)

    class RecordingTrainer(train_module.LlavaSFTTrainer):
        def __init__(self, *trainer_args, **kwargs):
            super().__init__(*trainer_args, **kwargs)
            self.add_callback(recorder)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "LlavaSFTTrainer", RecordingTrainer)
        try:
            return train(*train_args), recorder.steps
        except KeyboardInterrupt:
            return None, recorder.steps


def recording_notes(monkeypatch) -> list[str]:
    """The lines `main` logs about its output folder (what `prepare_output_dir` returns), from every run after this."""
    notes = []

    def prepare(*args, **kwargs):
        resume_from, found = prepare_output_dir(*args, **kwargs)
        notes.extend(found)
        return resume_from, found

    monkeypatch.setattr(train_module, "prepare_output_dir", prepare)
    return notes


def as_interrupted_after(output_dir: Path, step: int) -> None:
    """The folder as a run killed after `checkpoint-{step}` leaves it: no later checkpoint, no final model."""
    for folder in checkpoint_folders(output_dir):
        if int(folder.name.split("-")[-1]) > step:
            shutil.rmtree(folder)
    (output_dir / "model.safetensors").unlink()


def assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, expected[name]), name


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(checkpoints, train_data, tmp_path, monkeypatch):
    def args(output_dir: Path, *extra: str) -> list[str]:
        return run_args(
            checkpoints, train_data, output_dir, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
            "--learning_rate", "1e-3", *extra,
        )  # fmt: skip

    uninterrupted, _ = train_recording(monkeypatch, "stage2", args(tmp_path / "whole"))
    killed, steps = train_recording(monkeypatch, "stage2", args(tmp_path / "resumed"), stop_after=3)
    assert killed is None and steps == [1, 2, 3]
    assert sorted(path.name for path in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-2"]

    resumed, steps = train_recording(monkeypatch, "stage2", args(tmp_path / "resumed", "--resume"))
    assert steps == [3, 4]  # steps 1-2 came from checkpoint-2, step 3 is trained again
    expected = uninterrupted.model.state_dict()
    for name, weight in resumed.model.state_dict().items():
        torch.testing.assert_close(weight, expected[name], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_a_resume_with_the_data_at_another_place_continues_and_says_what_moved(
    checkpoints, train_data, tmp_path, monkeypatch
):
    def args(data: dict[str, str], *extra: str) -> list[str]:
        return run_args(
            checkpoints, data, tmp_path / "run", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
            "--learning_rate", "1e-3", *extra,
        )  # fmt: skip

    notes = recording_notes(monkeypatch)
    uninterrupted = {
        name: value.clone() for name, value in train("stage2", args(train_data)).model.state_dict().items()
    }
    as_interrupted_after(tmp_path / "run", 2)
    # The same data copied elsewhere (another machine, a moved dataset): the run goes on from checkpoint-2.
    copy = tmp_path / "copy"
    shutil.copytree(train_data["image_folder"], copy / "images")
    shutil.copy(train_data["data_path"], copy / "data.json")
    copied = {"data_path": str(copy / "data.json"), "image_folder": str(copy / "images")}
    steps_before = len(notes)
    resumed, steps = train_recording(monkeypatch, "stage2", args(copied, "--resume"))
    assert steps == [3, 4]
    assert_same_weights(resumed.model, uninterrupted)
    moved = next(note for note in notes[steps_before:] if note.startswith("The same content at another place"))
    assert f"data_path: {train_data['data_path']!r} -> {copied['data_path']!r}" in moved
    assert f"image_folder: {train_data['image_folder']!r} -> {copied['image_folder']!r}" in moved

    # Through a symlink to the copy.
    as_interrupted_after(tmp_path / "run", 2)
    (tmp_path / "link").symlink_to(copy / "images")
    linked = {**copied, "image_folder": str(tmp_path / "link")}
    resumed, steps = train_recording(monkeypatch, "stage2", args(linked, "--resume"))
    assert steps == [3, 4]
    assert_same_weights(resumed.model, uninterrupted)
    assert f"image_folder: {copied['image_folder']!r} -> {linked['image_folder']!r}" in notes[-2]

    # Other images under the same names are other data.
    random_image(99, size=(30, 30)).save(copy / "images" / "3.png")
    with pytest.raises(RunMismatchError, match=r"what differs: data.images.bytes: \d+ -> \d+; data.images.sha256"):
        train("stage2", args(linked, "--resume"))


@pytest.mark.slow
def test_a_larger_max_steps_with_resume_continues_and_ends_as_a_run_to_that_budget(
    checkpoints, train_data, tmp_path, monkeypatch
):
    def args(output_dir: Path, max_steps: int, *extra: str) -> list[str]:
        # A constant learning rate: the steps before the extension then follow the same schedule as a longer run's.
        return run_args(
            checkpoints, train_data, output_dir, "--max_steps", str(max_steps), "--save_strategy", "steps",
            "--save_steps", "2", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", *extra,
        )  # fmt: skip

    uninterrupted = train("stage2", args(tmp_path / "whole", 6)).model.state_dict()
    train("stage2", args(tmp_path / "run", 4))
    with pytest.raises(RunMismatchError, match=r"already holds checkpoints .*--resume continues that run"):
        train("stage2", args(tmp_path / "run", 6))
    extended, steps = train_recording(monkeypatch, "stage2", args(tmp_path / "run", 6, "--resume"))
    assert steps == [5, 6]  # from checkpoint-4
    assert_same_weights(extended.model, uninterrupted)
    history = "max_steps 4, then max_steps 6 from step 4"
    for folder in (tmp_path / "run", tmp_path / "run" / "checkpoint-6"):
        assert json.loads((folder / RUN_INFO_NAME).read_text())["progress"]["step budgets"] == history
    assert history in (tmp_path / "run" / "README.md").read_text()
    budgets = json.loads((tmp_path / "run" / FINGERPRINT_NAME).read_text())["budgets"]
    assert [(budget["max_steps"], budget["from_step"]) for budget in budgets] == [(4, 0), (6, 4)]

    with pytest.raises(RunMismatchError, match=r"max_steps 5 ends before checkpoint-6 \(step 6\)"):
        train("stage2", args(tmp_path / "run", 5, "--resume"))


@pytest.mark.slow
def test_a_refused_resume_offers_a_new_run_from_the_checkpoint_and_that_works(checkpoints, train_data, tmp_path):
    # A stage-2 run from the backbones and a stage-1 projector, as the LLaVA-1.5 recipes start.
    stage1 = tmp_path / "stage1"
    save_projector(starting_model("stage1", run_args(checkpoints, train_data, stage1)), stage1)

    def args(output_dir: Path, *extra: str) -> list[str]:
        return run_args(
            checkpoints, train_data, output_dir, "--save_strategy", "steps", "--save_steps", "2",
            "--pretrain_projector", str(stage1), *extra,
        )  # fmt: skip

    train("stage2", args(tmp_path / "run"))
    with pytest.raises(RunMismatchError, match="what differs: training.learning_rate: '0.01' -> '0.002'") as refused:
        train("stage2", args(tmp_path / "run", "--resume", "--learning_rate", "2e-3"))
    assert checkpoint_folders(tmp_path / "run") == [tmp_path / "run" / "checkpoint-2"]  # kept

    suggestion = re.search(r"--model_name_or_path .*?NEW_FOLDER.*?(?=;)", str(refused.value)).group(0)
    flags = shlex.split(suggestion.replace("NEW_FOLDER", str(tmp_path / "new")))
    new_run = [*args(tmp_path / "run", "--learning_rate", "2e-3"), *flags]
    # The new run starts from checkpoint-2's weights, its trained projector included, not from the stage-1 one.
    saved = load_file(tmp_path / "run" / "checkpoint-2" / "model.safetensors")
    start = starting_model("stage2", new_run).state_dict()
    assert all(torch.equal(start[name], saved[name]) for name in saved)
    trainer = train("stage2", new_run)
    assert trainer.state.global_step == 2 and (tmp_path / "new" / "model.safetensors").is_file()


STOCK_TRL_SFT = (
    BLOCK_THE_PACKAGE
    + """
from trl.cli.main import main

sys.argv = ["trl", "sft", *sys.argv[1:]]
main()
"""
)


@pytest.mark.slow
def test_a_saved_checkpoint_trains_with_the_stock_trl_sft_command(llava_checkpoint, train_data, tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    images = Path(train_data["image_folder"])
    rows = [
        {"messages": [{"role": "user", "content": "Where is the circle?"}, {"role": "assistant", "content": "Left."}],
         "images": [str(images / f"{index}.png")]}
        for index in range(4)
    ]  # fmt: skip
    (dataset / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    script = tmp_path / "stock_trl_sft.py"
    script.write_text(textwrap.dedent(STOCK_TRL_SFT))
    output = tmp_path / "sft"
    result = subprocess.run(
        [
            sys.executable, str(script), "--model_name_or_path", llava_checkpoint, "--trust_remote_code",
            "--dataset_name", str(dataset), "--output_dir", str(output), "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--bf16", "false", "--report_to", "none",
            "--gradient_checkpointing", "false", "--save_strategy", "no",
        ],
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trained = load_file(output / "model.safetensors")
    original = load_file(Path(llava_checkpoint) / "model.safetensors")
    assert any(not torch.equal(trained[name], original[name]) for name in original if "language_model" in name)


@pytest.mark.parametrize("stage", ["stage1", "lora"])
def test_the_same_seed_gives_bit_identical_weights(checkpoints, train_data, stage1_data, tmp_path, stage):
    """From the backbones (a random projector, random LoRA weights), whatever the process did before."""
    weights = []
    data = stage1_data if stage == "stage1" else train_data
    for index, seed in enumerate([7, 7, 8]):
        torch.manual_seed(100 + index)  # the global random state `main` finds differs each time
        args = run_args(checkpoints, data, tmp_path / f"run-{index}", "--seed", str(seed))
        trainer = main(*parse([stage, *args]))
        weights.append({name: value.clone() for name, value in trainer.model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert not all(torch.equal(weights[0][name], weights[2][name]) for name in weights[0])  # the seed matters


def test_nothing_left_to_train_on_stops_before_training_with_the_counts(checkpoints, train_data, tmp_path):
    args = run_args(checkpoints, train_data, tmp_path / "run", "--max_length", "20")
    with pytest.raises(ValueError, match=r"Nothing to train on: .* holds 9 records and 9 of them are longer than"):
        main(*parse(["stage2", *args]))


def fingerprint(learning_rate: str = "0.01", image_folder: str = "/data/images", max_steps: int = 4) -> dict:
    """A fingerprint of `run_fingerprint`'s shape, small enough to read."""
    return {
        "format": 2,
        "run": {"stage": "stage2", "training": {"learning_rate": learning_rate, "lr_scheduler_type": "linear",
                "warmup_steps": "0"}, "data": {"data_file_sha256": "ab"}},
        "where": {"image_folder": image_folder, "output_dir": "/runs/a"},
        "budget": {"max_steps": max_steps, "num_train_epochs": 3.0},
    }  # fmt: skip


def make_checkpoints(output_dir: Path, steps_complete: list[tuple[int, bool]]) -> None:
    """`checkpoint-N` folders as Trainer leaves them (its `trainer_state.json`), with or without the marker."""
    for step, complete in steps_complete:
        folder = output_dir / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"whole" if complete else b"partial")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": step / 5}))
        if complete:
            mark_complete(folder, fingerprint(), step)


def test_an_output_dir_is_bound_to_one_run(tmp_path):
    assert prepare_output_dir(tmp_path, fingerprint(), resume=False, overwrite=False) == (None, [])
    make_checkpoints(tmp_path, [(2, True), (4, False)])  # checkpoint-4's save was killed half-way

    with pytest.raises(RunMismatchError, match=r"already holds checkpoints \(checkpoint-4, checkpoint-2\): --resume"):
        prepare_output_dir(tmp_path, fingerprint(), resume=False, overwrite=False)
    resume_from, notes = prepare_output_dir(tmp_path, fingerprint(), resume=True, overwrite=False)
    assert resume_from == tmp_path / "checkpoint-2"
    assert notes[0].startswith(f"checkpoint-4: no {COMPLETE_NAME}") and notes[-1] == "Resuming from checkpoint-2."

    with pytest.raises(RunMismatchError, match=r"holds another run \(what differs: training.learning_rate: '0.01' ->"):
        prepare_output_dir(tmp_path, fingerprint("0.001"), resume=True, overwrite=False)
    assert prepare_output_dir(tmp_path, fingerprint("0.001"), resume=False, overwrite=True) == (None, [])
    assert checkpoint_folders(tmp_path) == []


def test_a_refused_resume_names_a_way_that_keeps_the_checkpoints(tmp_path):
    prepare_output_dir(tmp_path, fingerprint(), resume=False, overwrite=False)
    make_checkpoints(tmp_path, [(2, True), (4, False)])
    with pytest.raises(RunMismatchError) as refused:
        prepare_output_dir(tmp_path, fingerprint("0.001"), resume=True, overwrite=False)
    # The newest complete checkpoint, never the half-written one.
    assert f"--model_name_or_path {tmp_path / 'checkpoint-2'} --output_dir NEW_FOLDER" in str(refused.value)
    assert "put back the recorded values and --resume" in str(refused.value)
    assert len(checkpoint_folders(tmp_path)) == 2


def test_the_same_content_at_another_place_resumes_and_says_what_moved(tmp_path):
    prepare_output_dir(tmp_path, fingerprint(), resume=False, overwrite=False)
    make_checkpoints(tmp_path, [(2, True)])
    moved = fingerprint(image_folder="/mnt/copy/images")
    resume_from, notes = prepare_output_dir(tmp_path, moved, resume=True, overwrite=False)
    assert resume_from == tmp_path / "checkpoint-2"
    assert "image_folder: '/data/images' -> '/mnt/copy/images'" in notes[0]
    assert json.loads((tmp_path / FINGERPRINT_NAME).read_text())["where"]["image_folder"] == "/mnt/copy/images"


def test_a_field_an_upgrade_added_resumes_at_its_default_and_counts_otherwise(checkpoints, train_data, tmp_path):
    # A run recorded before `anyres` existed (its record lacks the field and its defaults), and one recorded by a
    # release that still had a field this one dropped.
    args = parse(["stage2", *run_args(checkpoints, train_data, tmp_path / "run")])
    current = run_fingerprint(*args)
    assert current["defaults"]["script"]["anyres"] == "False" == current["run"]["script"]["anyres"]
    sft_defaults = {item.name: item.default for item in dataclasses.fields(args[1])}
    assert current["defaults"]["training"]["learning_rate"] == str(sft_defaults["learning_rate"])
    older = json.loads(json.dumps(current))
    del older["run"]["script"]["anyres"], older["defaults"]
    older["run"]["script"]["dropped_field"] = "kept"
    older["defaults"] = {"script": {"dropped_field": "kept"}}
    (tmp_path / FINGERPRINT_NAME).write_text(json.dumps(older))
    make_checkpoints(tmp_path, [(2, True)])
    resume_from, _ = prepare_output_dir(tmp_path, current, resume=True, overwrite=False)
    assert resume_from == tmp_path / "checkpoint-2"

    (tmp_path / FINGERPRINT_NAME).write_text(json.dumps(older))
    anyres = json.loads(json.dumps(current))
    anyres["run"]["script"]["anyres"] = "True"
    with pytest.raises(RunMismatchError, match=r"script.anyres: None -> 'True'"):
        prepare_output_dir(tmp_path, anyres, resume=True, overwrite=False)
    older["run"]["script"]["dropped_field"] = "changed"  # not its default: the run did something this one would not
    (tmp_path / FINGERPRINT_NAME).write_text(json.dumps(older))
    with pytest.raises(RunMismatchError, match=r"script.dropped_field: 'changed' -> None"):
        prepare_output_dir(tmp_path, current, resume=True, overwrite=False)


def test_a_fingerprint_of_an_earlier_version_resumes_with_a_note(tmp_path):
    (tmp_path / FINGERPRINT_NAME).write_text(json.dumps({"stage": "stage2", "data_sha256": "ab"}))  # no "format"
    make_checkpoints(tmp_path, [(2, True)])
    resume_from, notes = prepare_output_dir(tmp_path, fingerprint(), resume=True, overwrite=False)
    assert resume_from == tmp_path / "checkpoint-2"
    earlier = f"{str(tmp_path / FINGERPRINT_NAME)!r} was written by an earlier llava-plugin"
    assert notes == [f"{earlier}: its checkpoints cannot be checked.", "Resuming from checkpoint-2."]
    assert json.loads((tmp_path / FINGERPRINT_NAME).read_text())["format"] == 2


def test_a_step_budget_may_grow_on_resume_but_not_end_before_the_checkpoint(tmp_path):
    prepare_output_dir(tmp_path, fingerprint(max_steps=4), resume=False, overwrite=False)
    make_checkpoints(tmp_path, [(2, True), (4, True)])
    with pytest.raises(RunMismatchError, match=r"max_steps 3 ends before checkpoint-4 \(step 4\)"):
        prepare_output_dir(tmp_path, fingerprint(max_steps=3), resume=True, overwrite=False)
    with pytest.raises(RunMismatchError, match="already holds checkpoints"):  # a bigger budget, but no --resume
        prepare_output_dir(tmp_path, fingerprint(max_steps=8), resume=False, overwrite=False)

    longer = fingerprint(max_steps=8)
    resume_from, notes = prepare_output_dir(tmp_path, longer, resume=True, overwrite=False)
    assert resume_from == tmp_path / "checkpoint-4"
    assert "Extending the run from max_steps 4 to max_steps 8, from checkpoint-4." in notes
    assert any("schedule (linear) follows the step budget" in note for note in notes)  # linear decay: say so
    budgets = [{"max_steps": 4, "num_train_epochs": 3.0, "from_step": 0}]
    budgets.append({"max_steps": 8, "num_train_epochs": 3.0, "from_step": 4})
    assert json.loads((tmp_path / FINGERPRINT_NAME).read_text())["budgets"] == budgets
    # Epochs against the checkpoint's epoch (0.8 here): fewer refused, as many as it reached accepted.
    with pytest.raises(RunMismatchError, match=r"num_train_epochs 0.5 ends before checkpoint-4 \(epoch 0.8\)"):
        prepare_output_dir(tmp_path, {**longer, "budget": {"max_steps": -1, "num_train_epochs": 0.5}}, True, False)
    assert prepare_output_dir(tmp_path, {**longer, "budget": {"max_steps": -1, "num_train_epochs": 1.0}}, True, False)


@pytest.mark.slow
def test_resume_passes_over_a_half_written_checkpoint_and_ends_as_an_uninterrupted_run(
    checkpoints, train_data, tmp_path
):
    def args(output_dir: Path, *extra: str) -> list[str]:
        return run_args(
            checkpoints, train_data, output_dir, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
            "--learning_rate", "1e-3", *extra,
        )  # fmt: skip

    expected = main(*parse(["stage2", *args(tmp_path / "whole")])).model.state_dict()
    main(*parse(["stage2", *args(tmp_path / "run")]))
    assert {path.name for path in checkpoint_folders(tmp_path / "run")} == {"checkpoint-2", "checkpoint-4"}
    assert all((path / COMPLETE_NAME).is_file() for path in checkpoint_folders(tmp_path / "run"))
    killed = tmp_path / "run" / "checkpoint-4"  # as a kill during its save leaves it: no marker, a torn file
    (killed / COMPLETE_NAME).unlink()
    (killed / "model.safetensors").write_bytes((killed / "model.safetensors").read_bytes()[:100])

    resumed = main(*parse(["stage2", *args(tmp_path / "run", "--resume")]))  # from checkpoint-2: steps 3 and 4 again
    for name, weight in resumed.model.state_dict().items():
        assert torch.equal(weight, expected[name]), name
    with pytest.raises(RunMismatchError, match=r"holds another run .*learning_rate: '0.001' -> '0.002'"):
        main(*parse(["stage2", *args(tmp_path / "run", "--resume", "--learning_rate", "2e-3")]))


def test_half_precision_weights_without_mixed_precision_are_refused(checkpoints, train_data, tmp_path):
    args = run_args(checkpoints, train_data, tmp_path / "run", "--dtype", "bfloat16")  # and --bf16 false
    with pytest.raises(ValueError, match=r"dtype=bfloat16 .* bf16 and fp16 are off: .* --dtype float32"):
        main(*parse(["stage2", *args]))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_adapters_base_description_works_from_any_directory(checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(checkpoints["clip"]).parent)
    script_args = LlavaScriptArguments(vision_tower="clip", language_model="lmsys/vicuna-7b-v1.5")
    base = base_description(script_args, ModelConfig(model_name_or_path=None, dtype="float32"))
    assert base["script_args"]["vision_tower"] == str(Path(checkpoints["clip"]).resolve())
    assert base["script_args"]["language_model"] == "lmsys/vicuna-7b-v1.5"  # a Hub id stays one


def test_llava_train_reports_a_setup_mistake_in_one_line(checkpoints, train_data, tmp_path, capsys):
    args = run_args(checkpoints, train_data, tmp_path / "run", "--dtype", "bfloat16")
    with pytest.raises(SystemExit) as exit_info:
        llava(["train", "stage2", *args])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("llava train: dtype=bfloat16 loads the weights in half precision")
    assert "\n" not in message and "Traceback" not in message


def test_every_run_writes_its_loss_history_and_plot_and_says_where(checkpoints, train_data, tmp_path, capsys):
    trainer = train("stage2", run_args(checkpoints, train_data, tmp_path / "run"))
    logged = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    history = json.loads((tmp_path / "run" / "loss_history.json").read_text())
    assert list(zip(history["step"], history["loss"], strict=True)) == logged and len(logged) == 2
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Training loss per step](loss_curve.png)" in (tmp_path / "run" / "README.md").read_text()
    assert f"stage2: saved to {tmp_path / 'run'}" in capsys.readouterr().out


def test_llava_train_lists_every_bad_record_then_trains_without_them_when_told(
    checkpoints, train_data, tmp_path, capsys
):
    records = json.loads(Path(train_data["data_path"]).read_text())
    good = records[0]
    (tmp_path / "images").symlink_to(train_data["image_folder"], target_is_directory=True)
    bad = [
        {**good, "id": "missing-1", "image": "gone-1.png"},
        {**good, "id": "missing-2", "image": "gone-2.png"},
        {**good, "id": "wrong-type", "image": 12345},
        {**good, "id": "no-answer", "conversations": good["conversations"][:1]},
    ]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records[:4] + bad + records[4:]))
    run = tmp_path / "run"
    args = run_args(checkpoints, {"data_path": str(data), "image_folder": str(tmp_path / "images")}, run)
    with pytest.raises(SystemExit) as exit_info:
        llava(["train", "stage2", *args])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "Traceback" not in message
    assert f"4 of 13 records in {str(data)!r} cannot be trained on (2 missing image, 2 bad record):" in message
    assert "Record 'wrong-type': 'image' must be an image path (a string) or a list of them, got int" in message
    assert str(run / "data_problems.json") in message and "--on_bad_record skip" in message
    listed = json.loads((run / "data_problems.json").read_text())["problems"]
    assert [problem["id"] for problem in listed] == ["missing-1", "missing-2", "wrong-type", "no-answer"]
    assert not (run / "model.safetensors").exists()  # stopped before training

    llava(["train", "stage2", *args, "--on_bad_record", "skip"])  # the same folder: the refused start bound nothing
    dropped = json.loads((run / "dropped_samples.json").read_text())
    assert [(item["id"], item["kind"]) for item in dropped] == [(problem["id"], problem["kind"]) for problem in listed]
    assert (run / "model.safetensors").is_file()


def test_after_a_refused_start_the_mended_data_trains_in_the_same_folder(
    checkpoints, train_data, tmp_path, capsys, monkeypatch
):
    """The refused start records a fingerprint of the broken file; mending the file changes its hash, and the folder,
    where nothing was trained, must not hold that against the next start."""
    records = json.loads(Path(train_data["data_path"]).read_text())
    data = tmp_path / "data.json"
    data.write_text(json.dumps([*records, {**records[0], "id": "missing", "image": "gone.png"}]))
    run = tmp_path / "run"
    args = run_args(checkpoints, {"data_path": str(data), "image_folder": train_data["image_folder"]}, run)
    with pytest.raises(SystemExit):
        llava(["train", "stage2", *args])
    assert "1 of 10 records" in capsys.readouterr().err
    data.write_text(json.dumps(records))  # mended: another file, and nothing in `run` was trained
    notes = recording_notes(monkeypatch)
    llava(["train", "stage2", *args])
    assert (run / "model.safetensors").is_file()
    assert any("held no trained weights: its record of an earlier start is replaced" in note for note in notes)


def test_stage1_refuses_what_the_plain_template_cannot_express(checkpoints, train_data, tmp_path, capsys):
    """Multi-turn and text-only records would train on their first caption, or on a caption without an image."""
    with pytest.raises(SystemExit):
        llava(["train", "stage1", *run_args(checkpoints, train_data, tmp_path / "run")])
    message = capsys.readouterr().err
    assert f"9 of 9 records in {train_data['data_path']!r} cannot be trained on (9 not stage-1 data):" in message
    assert "Record 'sample-0': stage 1 (the plain template) trains on one image and its caption" in message


def test_the_dropped_samples_report_describes_the_current_run(checkpoints, train_data, tmp_path):
    records = json.loads(Path(train_data["data_path"]).read_text())
    too_long = {
        "id": "too-long",
        "conversations": [records[-1]["conversations"][0], {"from": "gpt", "value": "a " * 300}],
    }
    data = {**train_data, "data_path": str(tmp_path / "data.json")}
    Path(data["data_path"]).write_text(json.dumps([*records, too_long]))
    run = tmp_path / "run"
    train("stage2", run_args(checkpoints, data, run))
    assert [item["id"] for item in json.loads((run / "dropped_samples.json").read_text())] == ["too-long"]
    train("stage2", run_args(checkpoints, train_data, run, "--overwrite_output_dir", "true"))
    assert not (run / "dropped_samples.json").exists()  # this run dropped nothing
