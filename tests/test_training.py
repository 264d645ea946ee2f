"""The training stages end to end on tiny backbones: what each stage trains, what it writes, and what reloads.

References are independent of the trainer: the backbone checkpoints on disk (frozen weights must equal them bit for
bit), a model rebuilt the same way before training, the PEFT model an adapter came from, and an uninterrupted run.
"""

import json
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
    RunMismatchError,
    checkpoint_folders,
    mark_complete,
    prepare_output_dir,
)
from trainers.merge_lora import merge_lora
from trainers.projector_artifact import CONFIG_NAME, WEIGHTS_NAME
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


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(checkpoints, train_data, tmp_path, monkeypatch):
    def args(output_dir: Path, *extra: str) -> list[str]:
        return run_args(
            checkpoints, train_data, output_dir, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
            "--learning_rate", "1e-3", *extra,
        )  # fmt: skip

    def train_recording(*train_args, stop_after: int | None = None):
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

    uninterrupted, _ = train_recording("stage2", args(tmp_path / "whole"))
    killed, steps = train_recording("stage2", args(tmp_path / "resumed"), stop_after=3)
    assert killed is None and steps == [1, 2, 3]
    assert sorted(path.name for path in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-2"]

    resumed, steps = train_recording("stage2", args(tmp_path / "resumed", "--resume"))
    assert steps == [3, 4]  # steps 1-2 came from checkpoint-2, step 3 is trained again
    expected = uninterrupted.model.state_dict()
    for name, weight in resumed.model.state_dict().items():
        torch.testing.assert_close(weight, expected[name], atol=1e-6, rtol=1e-5)


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


def test_an_output_dir_is_bound_to_one_run(tmp_path):
    fingerprint = {"stage": "stage2", "training": {"learning_rate": "0.01"}, "data_sha256": "ab"}
    assert prepare_output_dir(tmp_path, fingerprint, resume=False, overwrite=False) == (None, [])
    for step, complete in [(2, True), (4, False)]:  # checkpoint-4's save was killed half-way
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"partial" if not complete else b"whole")
        if complete:
            mark_complete(tmp_path / f"checkpoint-{step}", fingerprint, step)

    with pytest.raises(RunMismatchError, match=r"already holds checkpoints \(checkpoint-4, checkpoint-2\): --resume"):
        prepare_output_dir(tmp_path, fingerprint, resume=False, overwrite=False)
    resume_from, notes = prepare_output_dir(tmp_path, fingerprint, resume=True, overwrite=False)
    assert resume_from == tmp_path / "checkpoint-2"
    assert notes[0].startswith(f"checkpoint-4: no {COMPLETE_NAME}") and notes[-1] == "Resuming from checkpoint-2."

    other = {**fingerprint, "training": {"learning_rate": "0.001"}}
    with pytest.raises(RunMismatchError, match=r"holds another run \(what differs: training.learning_rate: '0.01' ->"):
        prepare_output_dir(tmp_path, other, resume=True, overwrite=False)
    assert prepare_output_dir(tmp_path, other, resume=False, overwrite=True) == (None, [])
    assert checkpoint_folders(tmp_path) == []


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
