"""`llava plan`: its weight, gradient and optimizer bytes equal the tensors a built trainer allocates (counted after
one optimizer step on a CPU), per stage; the sharding strategies divide them as DeepSpeed and FSDP lay them out;
the fitted batch keeps the recipe's global batch. Activations are an estimate, checked on a GPU (not here)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_LORA, refused, run_args
from tests.tiny_backbones import TINY_TEXT
from trainers.plan import GIB, USABLE, Inventory, fit_batch, four_bit_bytes, layer_bytes, plan, state_bytes
from trainers.train import build_trainer, parse

# Hand-written configs of CLIP ViT-L/14-336 and Vicuna-7B v1.5, with their published values.
ROOT = Path(__file__).parents[1]  # the fixtures' paths are relative to it, as the README's command
SEVEN_B = ["--vision_tower", "tests/fixtures/llava-1.5-7b/clip-vit-large-patch14-336"]
SEVEN_B += ["--language_model", "tests/fixtures/llava-1.5-7b/vicuna-7b-v1.5"]
BF16 = ["--dtype", "bfloat16", "--bf16", "true", "--use_cpu", "true"]


def counted_bytes(stage: str, args: list[str]) -> dict[str, int]:
    """Bytes of the parameters, of the `.grad` tensors after one backward pass, and of the optimizer's state after
    one step, of the trainer `llava train` builds."""
    torch.manual_seed(0)
    trainer, _ = build_trainer(*parse([stage, *args]))
    model = trainer.model
    trainer.create_optimizer()
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(model, batch).backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    trainer.optimizer.step()
    states = [t for state in trainer.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return {
        "weights": sum(p.numel() * p.element_size() for p in model.parameters()),
        "gradients": grads,
        "optimizer": sum(t.numel() * t.element_size() for t in states),
    }


@pytest.mark.parametrize("stage", ["stage1", "stage2", "lora"])
@pytest.mark.parametrize("precision", [BF16, []], ids=["bf16", "fp32"])
def test_state_bytes_equal_a_built_trainer(stage, precision, checkpoints, train_data, stage1_data, tmp_path):
    data = stage1_data if stage == "stage1" else train_data
    args = [*run_args(checkpoints, data, tmp_path / "run"), *precision, *(TINY_LORA if stage == "lora" else [])]
    counted = counted_bytes(stage, args)
    planned = plan(*parse([stage, *args]), gpus=1)["bytes"]
    assert planned == counted


def test_auto_dtype_keeps_each_backbone_in_its_own(checkpoints, train_data, tmp_path):
    """`dtype: auto` loads each backbone in the dtype it was saved in: a bf16 language model beside an fp32 tower.
    (Weights only: such a mixed model does not run forward on a CPU, where no autocast bridges the two dtypes.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    language_model = tmp_path / "llama-bf16"
    AutoModelForCausalLM.from_pretrained(checkpoints["llama"], dtype=torch.bfloat16).save_pretrained(language_model)
    AutoTokenizer.from_pretrained(checkpoints["llama"]).save_pretrained(language_model)
    args = [*run_args(checkpoints, train_data, tmp_path / "run"), "--dtype", "auto", *BF16[2:]]
    args += ["--language_model", str(language_model)]
    trainer, _ = build_trainer(*parse(["stage2", *args]))
    result = plan(*parse(["stage2", *args]), gpus=1)
    assert result["bytes"]["weights"] == sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32, torch.bfloat16}
    assert result["dtype"] == "bfloat16"


def saved_bytes(model: torch.nn.Module, inputs_embeds: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for the backward pass of one forward and loss, parameters left out."""
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    saved = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(inputs_embeds=inputs_embeds).logits.float().sum()
    return sum(saved.values())


@pytest.mark.parametrize("part", ["stage2", "frozen", "lora", "lora-dropout"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["full", "checkpointing"])
def test_decoder_layer_activations_are_what_autograd_keeps(part, checkpointing):
    """`layer_bytes` (and each layer's input under gradient checkpointing) equals the bytes autograd saves per token
    and Llama decoder layer in bf16 with SDPA, counted as the difference between a 3-layer and a 1-layer model:
    trained (stage 2), frozen (stage 1), and LoRA (r 4, fp32 adapters as PEFT makes them) without and with dropout,
    whose mask a CPU keeps in the adapters' dtype."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens, measured, dropout = 48, {}, 0.1 if part == "lora-dropout" else 0.0
    for layers in (1, 3):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=64, **{**TINY_TEXT, "num_hidden_layers": layers}, attn_implementation="sdpa")
        model = LlamaForCausalLM(config).to(torch.bfloat16).train()
        model.requires_grad_(part == "stage2")
        if part.startswith("lora"):
            model = get_peft_model(
                model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")
            )
        if checkpointing:
            model.gradient_checkpointing_enable()
        # As the projector's output does in LLaVA, the embeddings carry a gradient back through every layer.
        inputs_embeds = torch.randn(1, tokens, config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
        measured[layers] = saved_bytes(model.train(), inputs_embeds)
    lora = {"adapter_element": 4, "lora_rank": 4} if part.startswith("lora") else {}
    counts = replace(COUNTS, hidden_size=32, kv_size=16, intermediate_size=37, heads=4, **lora)
    layer = layer_bytes(counts, 2, trains=part == "stage2", lora_dropout=bool(dropout), mask_bytes=4)
    assert (measured[3] - measured[1]) / 2 == tokens * (2 * 32 if checkpointing else layer)


COUNTS = Inventory(
    parameters=1000,
    trainable=600,
    trainable_bytes=1200,
    trainable_tensors=10,
    frozen_bytes=800,
    hidden_size=8,
    kv_size=8,
    intermediate_size=16,
    layers=2,
    heads=2,
    vocab_size=10,
    image_tokens=4,
    projector_input_size=8,
    adapter_element=0,
    lora_rank=0,
    dtype="bfloat16",
)


def test_sharding_divides_as_deepspeed_and_fsdp_lay_it_out():
    """bf16 weights: 600 trainable (1200 bytes) + 800 bytes frozen, 10 tensors, on 4 GPUs."""
    assert state_bytes(COUNTS, "ddp", 4, True) == {
        "weights": 2000,
        "gradients": 1200,
        "optimizer": 2 * 1200 + 4 * 10,
        "ddp_buckets": 1200,
    }
    # DeepSpeed: fp32 master weights and Adam states, 12 bytes per trainable parameter, and bf16 gradients.
    assert state_bytes(COUNTS, "zero2", 4, True) == {"weights": 2000, "gradients": 300, "optimizer": 600 * 12 / 4}
    assert state_bytes(COUNTS, "zero3", 4, True) == {"weights": 500, "gradients": 300, "optimizer": 600 * 12 / 4}
    assert state_bytes(COUNTS, "zero3", 4, False)["optimizer"] == 600 * 8 / 4  # fp32 weights need no master copy
    # FSDP with mixed precision: accelerate upcasts the trainable parameters to fp32, then all is sharded.
    assert state_bytes(COUNTS, "fsdp", 4, True) == {
        "weights": (800 + 600 * 4) / 4,
        "gradients": 600 * 4 / 4,
        "optimizer": (600 * 8 + 40) / 4,
    }


def test_four_bit_bytes():
    """NF4 in blocks of 64: half a byte per value, plus per block a 1-byte absmax and per 256 blocks an fp32 scale
    (double quantization), or a 4-byte absmax per block."""
    assert four_bit_bytes(64 * 512, nested=True) == 64 * 512 // 2 + 512 + 2 * 4
    assert four_bit_bytes(64 * 512, nested=False) == 64 * 512 // 2 + 512 * 4


def test_fitted_batch_keeps_the_global_batch():
    memory = 10.0  # GiB: 9 usable
    assert fit_batch(3 * GIB, GIB, memory, 128, 8, 1) == (4, 4)  # 6 would fit, 4 is the largest that divides 128/8
    assert fit_batch(3 * GIB, GIB, memory, None, 8, 3) == (6, 3)  # no global batch: the recipe's accumulation stays
    assert fit_batch(USABLE * memory * GIB, 1, memory, 128, 8, 1) is None


def test_seven_b_recipe_from_hand_written_configs(capsys, monkeypatch):
    """The 7B stage-2 recipe sized from Vicuna-7B's and CLIP-L/336's published configs (tests/fixtures)."""
    monkeypatch.chdir(ROOT)
    from command_line.main import main as llava

    llava(["plan", "--config", "llava-1.5-7b-stage2", "--gpus", "8", "--json", *SEVEN_B])
    result = json.loads(capsys.readouterr().out)
    # Vicuna-7B 6,738,415,616 + one embedding and head row for <image> (2 x 4096) + CLIP-L/336's vision model
    # 303,507,456 + the mlp2x_gelu projector (1024 x 4096 + 4096 + 4096 x 4096 + 4096).
    projector = 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert result["counts"]["parameters"] == 6_738_415_616 + 2 * 4096 + 303_507_456 + projector
    assert result["counts"]["trainable"] == 6_738_415_616 + 2 * 4096 + projector
    assert result["counts"]["image_tokens"] == 576
    assert result["bytes"]["weights"] == 2 * result["counts"]["parameters"]
    fit = result["fits"]["on"]
    assert fit["per_device_batch"] * 8 * fit["accumulation"] == 128


def test_readme_table_is_the_commands_output(capsys, monkeypatch):
    """The README's example is what `llava plan` prints for it today."""
    monkeypatch.chdir(ROOT)
    from command_line.main import main as llava

    llava(["plan", "--config", "llava-1.5-7b-stage2", "--gpus", "8", "--gpu-memory", "80", "--zero", "3", *SEVEN_B])
    assert capsys.readouterr().out.strip() in (ROOT / "README.md").read_text()


def test_missing_backbones_are_one_line(capsys):
    message = refused(capsys, ["plan", "--config", "llava-1.5-7b-stage2", "--vision_tower", "/nonexistent/tower"])
    assert "/nonexistent/tower" in message
