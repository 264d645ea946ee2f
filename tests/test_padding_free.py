"""Padding-free batches change the layout of a batch, never its math.

The reference is always the padded batch of the same examples, built by `LlavaDataCollator`: the padding-free row must
hold exactly its tokens, and give the same loss and the same gradient for every parameter (fp32), through the model's
forward with each attention implementation and through a real training run with gradient accumulation.
"""

import json

import pytest
import torch

from modeling_llava import CHAT_TEMPLATES, LlavaPluginForConditionalGeneration
from modeling_llava.attention_varlen import VARLEN_ATTENTION, varlen_attention_forward
from processing.collator import LlavaDataCollator
from processing.padding_free import LlavaPaddingFreeCollator
from tests.conftest import EXAMPLES, IMAGE_ITEM, random_image, turn
from trainers.train import RECIPES, main, parse


def collate(collator_class: type, processor, template: str = "vicuna_v1", assistant_only_loss: bool = True) -> dict:
    collator = collator_class(
        processor=processor, assistant_only_loss=assistant_only_loss, chat_template=CHAT_TEMPLATES[template]
    )
    return collator([dict(example) for example in EXAMPLES])


@pytest.fixture(scope="module")
def model(checkpoints) -> LlavaPluginForConditionalGeneration:
    torch.manual_seed(0)
    return LlavaPluginForConditionalGeneration.from_backbones(checkpoints["clip"], checkpoints["llama"]).float()


def loss_and_gradients(model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_the_row_holds_exactly_the_padded_batchs_tokens(processor):
    padded, row = collate(LlavaDataCollator, processor), collate(LlavaPaddingFreeCollator, processor)
    keep = padded["attention_mask"].bool()
    lengths = keep.sum(-1).tolist()
    assert "attention_mask" not in row and row["use_cache"] is False
    assert torch.equal(row["input_ids"][0], padded["input_ids"][keep])
    assert torch.equal(row["pixel_values"], padded["pixel_values"])
    assert row["position_ids"][0].tolist() == [position for length in lengths for position in range(length)]
    assert row["cu_seq_lens_q"].tolist() == [sum(lengths[:index]) for index in range(len(lengths) + 1)]
    assert row["max_length_q"] == max(lengths)
    # Labels are the padded ones, with each sample's first token (never a target after the shift) masked.
    expected = padded["labels"].clone()
    expected[:, 0] = -100
    assert torch.equal(row["labels"][0], expected[keep])


# With loss on every token (TRL's default), each sample's first token is a label: the boundary masking must hold.
@pytest.mark.parametrize("assistant_only_loss", [True, False], ids=["answers", "all-tokens"])
@pytest.mark.parametrize("template", ["vicuna_v1", "plain"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager", VARLEN_ATTENTION])
def test_padding_free_loss_and_gradients_equal_the_padded_batchs(
    model, processor, attn_implementation, template, assistant_only_loss
):
    model.set_attn_implementation(attn_implementation)
    padded = collate(LlavaDataCollator, processor, template, assistant_only_loss)
    padding_free = collate(LlavaPaddingFreeCollator, processor, template, assistant_only_loss)
    padded_loss, padded_grads = loss_and_gradients(model, padded)
    loss, grads = loss_and_gradients(model, padding_free)

    # Every parameter on the path to the loss: the LLM, the projector and the vision layers below the feature layer.
    parts = ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head.")
    assert all(any(name.startswith(part) for name in padded_grads) for part in parts)
    assert grads.keys() == padded_grads.keys()
    torch.testing.assert_close(loss, padded_loss, atol=1e-6, rtol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, padded_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_varlen_attention_generates_the_tokens_of_sdpa(model, processor):
    """Off a padding-free row (padded batches, decoding with a cache), `torch_varlen` is plain sdpa."""
    prompts = [
        processor.apply_chat_template([turn("user", IMAGE_ITEM, question)], add_generation_prompt=True)
        for question in ("Where is the blue circle?", "How many?")
    ]
    inputs = processor(images=[random_image(4), random_image(5)], text=prompts, padding=True, return_tensors="pt")
    tokens = {}
    for attn_implementation in ("sdpa", VARLEN_ATTENTION):
        model.set_attn_implementation(attn_implementation)
        tokens[attn_implementation] = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(tokens[VARLEN_ATTENTION], tokens["sdpa"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch's variable-length kernel needs CUDA")
def test_varlen_kernel_equals_sdpa_per_sample():
    torch.manual_seed(0)
    lengths = [7, 130, 1, 64]
    query = torch.randn(1, 8, sum(lengths), 64, device="cuda", dtype=torch.bfloat16)
    key, value = (torch.randn(1, 2, sum(lengths), 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    cu_seq_lens = torch.tensor([sum(lengths[:i]) for i in range(len(lengths) + 1)], device="cuda", dtype=torch.int32)
    output, _ = varlen_attention_forward(torch.nn.Module(), query, key, value, None, cu_seq_lens_q=cu_seq_lens)
    bounds = cu_seq_lens.tolist()
    expected = torch.cat(
        [
            torch.nn.functional.scaled_dot_product_attention(
                query[..., start:end, :], key[..., start:end, :], value[..., start:end, :], is_causal=True,
                enable_gqa=True,
            ).transpose(1, 2)
            for start, end in zip(bounds[:-1], bounds[1:], strict=True)
        ],
        dim=1,
    )  # fmt: skip
    torch.testing.assert_close(output, expected, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("recipe", sorted(path.stem for path in RECIPES.glob("llava-1.5-*.yaml")))
def test_shipped_gpu_recipes_turn_padding_free_on(recipe):
    on_cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]  # bf16 on a CPU needs use_cpu
    script_args, _, model_args = parse(["--config", recipe, *on_cpu])
    assert script_args.padding_free_batches and model_args.attn_implementation == VARLEN_ATTENTION


@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory) -> dict[str, str]:
    """LLaVA JSON records of very different lengths: multi-turn, single-turn and text-only."""
    root = tmp_path_factory.mktemp("uneven_data")
    answers = ["Red.", "The blue circle is at the top left of the image, next to a green triangle.", "Three."]
    records = []
    for index in range(6):
        conversation = [{"from": "human", "value": "<image>\nWhat is in the image?"}]
        for answer in answers[: 1 + index % 3]:
            conversation += [{"from": "gpt", "value": answer}, {"from": "human", "value": "And then?"}]
        records.append({"id": f"sample-{index}", "image": f"{index}.png", "conversations": conversation[:-1]})
        random_image(index).save(root / f"{index}.png")
    records.insert(3, {"id": "text-only", "conversations": [{"from": "human", "value": "Hi?"}, *conversation[1:2]]})
    (root / "data.json").write_text(json.dumps(records))
    return {"data_path": str(root / "data.json"), "image_folder": str(root)}


def test_a_training_run_is_the_same_with_and_without_padding_free(checkpoints, uneven_data, tmp_path):
    """Two optimizer steps of two micro-batches each: same losses, same gradient norms, same weights."""
    runs = {}
    for padding_free, attn_implementation in ((False, "sdpa"), (True, VARLEN_ATTENTION)):
        args = [
            "--vision_tower", checkpoints["clip"], "--language_model", checkpoints["llama"],
            "--data_path", uneven_data["data_path"], "--image_folder", uneven_data["image_folder"],
            "--output_dir", str(tmp_path / str(padding_free)), "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "2", "--max_steps", "2", "--learning_rate", "1e-2",
            "--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none", "--logging_steps", "1",
            "--save_strategy", "no", "--max_length", "200",
            "--padding_free_batches", str(padding_free).lower(), "--attn_implementation", attn_implementation,
        ]  # fmt: skip
        torch.manual_seed(0)
        runs[padding_free] = main(*parse(["stage2", *args]))
    logs = {key: [log for log in run.state.log_history if "loss" in log] for key, run in runs.items()}
    assert len(logs[True]) == len(logs[False]) == 2
    for padded, padding_free in zip(logs[False], logs[True], strict=True):
        assert padding_free["loss"] == pytest.approx(padded["loss"], abs=1e-5)
        assert padding_free["grad_norm"] == pytest.approx(padded["grad_norm"], rel=1e-4)
    padded_weights = runs[False].model.state_dict()
    for name, weight in runs[True].model.state_dict().items():
        torch.testing.assert_close(weight, padded_weights[name], atol=1e-5, rtol=1e-4, msg=name)
