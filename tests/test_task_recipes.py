"""The task recipes: a released LLaVA fine-tuned on data of one's own, in full or with LoRA, as the original's
`scripts/v1_5/finetune_task.sh` and `finetune_task_lora.sh`, from a checkpoint of any of the three formats.

The reference for a run that starts from an original or llava-hf checkpoint is the same run started from
`llava convert`'s output of that checkpoint: both must build the same model, bit for bit.
"""

import json
import logging

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi
from peft import PeftModel
from transformers import BitsAndBytesConfig

from command_line.main import main as llava
from hub_cards.model_card import ADAPTER_BASE_NAME
from modeling_llava import LlavaPluginForConditionalGeneration
from modeling_llava.convert_checkpoint import convert, detect_format
from processing.adapters import build_base, load_adapter
from tests.conftest import random_image
from tests.hub_server import HubServer
from tests.original_llava import save_original
from trainers.train import build_trainer, main, parse

ON_CPU = [] if torch.cuda.is_available() else ["--use_cpu", "true"]  # bf16 recipes on a CPU need use_cpu

# Facts of the original repository's scripts/v1_5/finetune_task.sh and finetune_task_lora.sh (written for the 13B):
# 16 per device on 8 GPUs with no accumulation, 1 epoch, warmup ratio 0.03, no weight decay, cosine, 2048 tokens,
# bf16, gradient checkpointing, save every 50000 steps keeping 1, log every step, 4 workers, modality grouping.
SCRIPT = {
    "global_batch_size": 128,
    "per_device_train_batch_size": 16,
    "num_train_epochs": 1,
    "warmup_steps": 0.03,
    "weight_decay": 0.0,
    "lr_scheduler_type": "cosine",
    "max_length": 2048,
    "bf16": True,
    "gradient_checkpointing": True,
    "save_steps": 50000,
    "save_total_limit": 1,
    "logging_steps": 1,
    "dataloader_num_workers": 4,
    "group_by_modality_length": True,
    "assistant_only_loss": True,
}
TASK = {
    "task": {"stage": "stage2", "learning_rate": 2e-5},  # full fine-tune: projector + LLM, vision frozen
    # --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5; lora_dropout the original's default
    "task-lora": {
        "stage": "lora",
        "learning_rate": 2e-4,
        "lora_r": 128,
        "lora_alpha": 256,
        "lora_dropout": 0.05,
        "projector_lr": 2e-5,
    },
}


@pytest.mark.parametrize("size", ["7b", "13b"])
@pytest.mark.parametrize("task", TASK)
def test_task_recipes_hold_the_original_scripts_settings(task, size):
    script_args, training_args, model_args = parse(["--config", f"llava-1.5-{size}-{task}", *ON_CPU])
    fields = {**vars(script_args), **vars(model_args), **training_args.to_dict()}
    for key, value in {**SCRIPT, **TASK[task]}.items():
        assert fields[key] == value, key
    assert model_args.model_name_or_path == f"liuhaotian/llava-v1.5-{size}"  # the script's starting point
    assert training_args.output_dir == f"checkpoints/llava-v1.5-{size}-{task}"
    # The released checkpoint carries its tower, projector and processing: nothing is built from backbones.
    assert (script_args.vision_tower, script_args.language_model, script_args.pretrain_projector) == (None,) * 3


@pytest.fixture(scope="module")
def sources(tmp_path_factory, checkpoints, llava_checkpoint) -> dict[str, tuple[str, str]]:
    """Per format, a checkpoint to start from and the plugin checkpoint it must start as (`llava convert`'s output)."""
    root = tmp_path_factory.mktemp("task_sources")
    original = save_original(root / "original", checkpoints, "mlp2x_gelu", model_type="llava")
    llava(["convert", str(original), str(root / "original-converted")])
    convert(llava_checkpoint, root / "llava-hf", to="llava-hf")
    llava(["convert", str(root / "llava-hf"), str(root / "llava-hf-converted")])
    return {
        "plugin": (llava_checkpoint, llava_checkpoint),
        "original": (str(original), str(root / "original-converted")),
        "llava-hf": (str(root / "llava-hf"), str(root / "llava-hf-converted")),
    }


def task_args(task: str, source: str, train_data, output_dir, *extra: str) -> list[str]:
    """The 7B task recipe on the tiny model: its settings, but for sizes, steps and precision a CPU can run."""
    lora = ["--lora_r", "4", "--lora_alpha", "8"] if task == "task-lora" else []
    return [
        "--config", f"llava-1.5-7b-{task}", "--model_name_or_path", source,
        "--data_path", train_data["data_path"], "--image_folder", train_data["image_folder"],
        "--output_dir", str(output_dir), "--per_device_train_batch_size", "2", "--global_batch_size", "2",
        "--max_steps", "1", "--dtype", "float32", "--bf16", "false", "--gradient_checkpointing", "false",
        "--dataloader_num_workers", "0", "--max_length", "200", "--save_strategy", "no", *lora, *extra,
    ]  # fmt: skip


def converted_line(source: str, kind: str) -> str:
    return f"model_name_or_path {source} is {kind} checkpoint: converted on the fly (as `llava convert` would)."


@pytest.mark.parametrize("task", TASK)
@pytest.mark.parametrize(
    ("kind", "name"), [("plugin", None), ("original", "an original LLaVA"), ("llava-hf", "a llava-hf")]
)
def test_a_task_run_starts_from_any_format_as_from_its_converted_checkpoint(
    sources, train_data, tmp_path, caplog, task, kind, name
):
    source, converted = sources[kind]
    with caplog.at_level(logging.WARNING):
        trainer, _ = build_trainer(*parse(task_args(task, source, train_data, tmp_path / "run")))
    lines = [record.getMessage() for record in caplog.records if "converted on the fly" in record.getMessage()]
    assert lines == ([converted_line(source, name)] if name else [])
    reference, _ = build_trainer(*parse(task_args(task, converted, train_data, tmp_path / "reference")))
    weights, expected = trainer.model.state_dict(), reference.model.state_dict()
    assert weights.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(weights[key], value), key
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in reference.model.named_parameters() if p.requires_grad}
    assert not any("vision_tower" in n for n in trainable)  # the stage's freezing applies as to any checkpoint
    assert trainer.processing_class.image_token_id == reference.processing_class.image_token_id


def test_a_task_run_from_an_original_checkpoint_trains_and_saves_a_plugin_checkpoint(sources, train_data, tmp_path):
    source, _ = sources["original"]
    main(*parse(task_args("task", source, train_data, tmp_path / "run")))
    assert detect_format(tmp_path / "run") == "plugin"
    LlavaPluginForConditionalGeneration.from_pretrained(tmp_path / "run")


def test_a_task_lora_adapter_on_an_original_checkpoint_is_rebuilt_on_its_conversion(sources, train_data, tmp_path):
    source, converted = sources["original"]
    torch.manual_seed(0)
    main(*parse(task_args("task-lora", source, train_data, tmp_path / "adapter", "--learning_rate", "1e-2")))
    base = json.loads((tmp_path / "adapter" / ADAPTER_BASE_NAME).read_text())
    assert base["model_name_or_path"] == source  # the original folder as given, converted again when rebuilt
    model, processor = load_adapter(tmp_path / "adapter")
    reference = LlavaPluginForConditionalGeneration.from_pretrained(converted, dtype=torch.float32)
    reference = PeftModel.from_pretrained(reference, tmp_path / "adapter").eval()
    inputs = processor(images=random_image(3), text="USER: <image>\nWhat is it? ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, atol=0, rtol=0)


def test_a_hub_id_of_an_original_checkpoint_is_downloaded_and_converted(sources, tmp_path, monkeypatch, caplog):
    source, converted = sources["original"]
    with HubServer(tmp_path / "server") as server:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)  # read at import: set where used
        template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        api = HfApi(endpoint=server.url, token=server.token)
        api.create_repo("liuhaotian/tiny-llava-v1.5")
        api.upload_folder(repo_id="liuhaotian/tiny-llava-v1.5", folder_path=source)
        with caplog.at_level(logging.WARNING):
            model, _ = build_base("liuhaotian/tiny-llava-v1.5", dtype=torch.float32)
    assert [r.getMessage() for r in caplog.records if "converted on the fly" in r.getMessage()] == [
        converted_line("liuhaotian/tiny-llava-v1.5", "an original LLaVA")
    ]
    expected = LlavaPluginForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).state_dict()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in expected.items())


def test_a_converted_checkpoint_cannot_be_quantized_as_it_loads(sources):
    source, _ = sources["original"]
    with pytest.raises(ValueError, match=r"is an original LLaVA checkpoint, which loads quantized once converted"):
        build_base(source, quantization_config=BitsAndBytesConfig(load_in_4bit=True))


def test_a_task_run_from_an_original_checkpoint_resumes_as_a_run_from_its_conversion(sources, train_data, tmp_path):
    """The fingerprint names the starting weights as given: a resume of a run from an original folder continues it,
    and ends with the weights of an uninterrupted run from `llava convert`'s output."""
    source, converted = sources["original"]

    def args(start: str, output_dir, max_steps: int, *extra: str) -> list[str]:
        return task_args(
            "task", start, train_data, output_dir, "--max_steps", str(max_steps), "--save_strategy", "steps",
            "--save_steps", "2", "--lr_scheduler_type", "constant", "--learning_rate", "1e-3", *extra,
        )  # fmt: skip

    uninterrupted = main(*parse(args(converted, tmp_path / "whole", 4))).model.state_dict()
    main(*parse(args(source, tmp_path / "run", 2)))
    resumed = main(*parse(args(source, tmp_path / "run", 4, "--resume")))
    assert resumed.state.global_step == 4
    for name, weight in resumed.model.state_dict().items():
        assert torch.equal(weight, uninterrupted[name]), name
