"""The speed benchmark's bookkeeping, which its ratios rest on: both sides are counted the same way.

A padded batch and the padding-free row of the same examples must give the same sample lengths, real tokens and
model FLOPs, and differ only in padding; the FLOPs formula is checked against a count by hand on a tiny model.
"""

import json

import pytest
import torch

from benchmarks.measure import BatchRecorder, ModelCounts
from benchmarks.report import markdown_table, merge_results
from benchmarks.run import main as run_benchmark
from modeling_llava import CHAT_TEMPLATES, LlavaPluginForConditionalGeneration
from processing.collator import LlavaDataCollator
from processing.padding_free import LlavaPaddingFreeCollator
from tests.conftest import EXAMPLES


@pytest.fixture(scope="module")
def model(checkpoints) -> LlavaPluginForConditionalGeneration:
    return LlavaPluginForConditionalGeneration.from_backbones(checkpoints["clip"], checkpoints["llama"])


def record(model, processor, collator_class: type) -> BatchRecorder:
    collator = collator_class(processor=processor, assistant_only_loss=True, chat_template=CHAT_TEMPLATES["vicuna_v1"])
    batch = collator([dict(example) for example in EXAMPLES])
    recorder = BatchRecorder("cpu")
    handle = model.model.register_forward_pre_hook(recorder, with_kwargs=True)
    with torch.no_grad():
        model(**batch)
    handle.remove()
    return recorder


def test_padded_and_padding_free_batches_are_counted_alike(model, processor):
    padded, row = record(model, processor, LlavaDataCollator), record(model, processor, LlavaPaddingFreeCollator)
    assert padded.lengths == row.lengths and padded.images == row.images == [4]
    assert row.padded == [sum(row.lengths[0])] and padded.padded[0] > row.padded[0]
    counts = ModelCounts.of(model, model.config)
    assert counts.training_flops(padded.lengths[0], 4) == counts.training_flops(row.lengths[0], 4)


def test_training_flops_match_a_count_by_hand(model):
    config, text, vision = model.config, model.config.text_config, model.config.vision_config
    counts = ModelCounts.of(model, config)
    embeddings = model.get_input_embeddings().weight.numel()
    lm = sum(p.numel() for p in model.model.language_model.parameters()) - embeddings + model.lm_head.weight.numel()
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    tower = sum(p.numel() for p in model.model.vision_tower.parameters())
    assert (counts.language_model, counts.projector, counts.vision, counts.lora) == (lm, projector, tower, 0)

    patches = (vision.image_size // vision.patch_size) ** 2 + 1
    lengths, images = [10, 30], 2
    expected = (
        6 * lm * 40  # every LLM weight trains (all require grad here): forward + backward
        + 6 * text.num_hidden_layers * text.hidden_size * (10**2 + 30**2)
        + images * (2 * tower * patches + 4 * vision.num_hidden_layers * vision.hidden_size * patches**2)
        + 6 * projector * images * config.image_seq_length
    )
    assert counts.training_flops(lengths, images) == expected


def test_ratios_and_merging_across_runs(tmp_path):
    case = {
        "llm": "7b",
        "batch_size": 4,
        "baseline": {"samples_per_s": 2.0, "tokens_per_s": 100.0, "peak_memory_gib": 10.0},
        "ours": {"samples_per_s": 5.0, "tokens_per_s": 300.0, "peak_memory_gib": 8.0},
    }
    for side in ("baseline", "ours"):
        case[side] |= {"mfu": None, "padding_fraction": 0.0}
    run = {"device": "cpu", "mode": "small", "date": "2026-11-23", "versions": {"torch": "x"}, "ours_args": ""}
    record = merge_results(tmp_path / "results.json", run, {"stage1": case})
    assert record["cases"]["stage1"]["ratio"] == {"samples_per_s": 2.5, "tokens_per_s": 3.0, "peak_memory_gib": 0.8}
    (tmp_path / "results.json").write_text(json.dumps(record))
    merged = merge_results(tmp_path / "results.json", run, {"lora": case})
    assert list(merged["cases"]) == ["stage1", "lora"]  # a later run on the same device adds its cases
    other = merge_results(tmp_path / "results.json", run | {"device": "NVIDIA H100"}, {"lora": case})
    assert list(other["cases"]) == ["lora"]  # another device starts a new record
    assert "**2.50×** samples/s, 0.80× memory" in markdown_table(merged)


@pytest.mark.slow
def test_the_benchmark_runs_both_sides_end_to_end(tmp_path):
    """`python -m benchmarks.run --device cpu --small` on one training case and generation, cut to a step or two."""
    argv = ["--device", "cpu", "--small", "--cases", "stage2,generate", "--output", str(tmp_path)]
    record = run_benchmark([*argv, "--steps", "2", "--warmup", "0", "--batch-size", "3"])
    stage2 = record["cases"]["stage2"]
    assert stage2["baseline"]["settings"]["collator"] == "DataCollatorForVisionLanguageModeling"
    assert stage2["ours"]["settings"]["collator"] == "LlavaPaddingFreeCollator"
    assert stage2["ours"]["padding_fraction"] == 0 < stage2["baseline"]["padding_fraction"]
    # Both sides group by length, each with its own sampler, so their timed steps hold different samples: the token
    # ratio is its own column, not the sample ratio.
    assert stage2["ours"]["steps"] == stage2["baseline"]["steps"] == 2
    ratio = stage2["ours"]["tokens_per_s"] / stage2["baseline"]["tokens_per_s"]
    assert ratio == pytest.approx(stage2["ratio"]["tokens_per_s"])
    for batch in (1, 8):
        assert record["cases"][f"generate-b{batch}"]["same_tokens_fraction"] == 1.0
    assert json.loads((tmp_path / "results.json").read_text()) == record
    assert "stage2 (1.1b, batch 3)" in (tmp_path / "results.md").read_text()
