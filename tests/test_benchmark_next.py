"""The speed benchmark's LLaVA-NeXT case, on CPU: its images give every LLaVA-1.6 grid, both sides see the same token
counts, and the padding share it reports is the padding of the batches, counted by hand.

The reference for image tokens is LLaVA-1.6's arithmetic written out by hand (576 base-tile tokens, then each kept row
of the tiles' feature map with its newline), and transformers' own `LlavaNextProcessor` for the baseline's side.
"""

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from benchmarks.measure import BatchRecorder, ModelCounts
from benchmarks.run import main as run_benchmark
from benchmarks.run import with_lengths
from benchmarks.synthetic import (
    NEXT_IMAGE_SIZES,
    as_dataset,
    processors_for,
    save_images,
    shapes,
    stage2_rows,
)
from modeling_llava import CHAT_TEMPLATES, LlavaNextPluginForConditionalGeneration
from processing.collator import LlavaDataCollator
from processing.lengths import measure_lengths
from processing.padding_free import LlavaPaddingFreeCollator
from trainers import train as train_module

# (width, height) -> (grid rows, grid columns), image tokens: 24 x 24 features a tile; the image, resized into the
# grid's pixels, fills it along one side, and only the feature rows (or columns) it covers are kept, each row with one
# newline token. E.g. 640x480 in 672x672: 672x504 of image, 504 / 14 = 36 of 48 rows, 36 x (48 + 1) + 576 = 2,340.
HAND_COUNTS = {
    (640, 480): ((2, 2), 576 + 36 * 49),
    (480, 640): ((2, 2), 576 + 48 * 37),
    (640, 427): ((2, 2), 576 + 32 * 49),  # 427 * 672 / 640 = 448.35 pixels: 32 rows
    (600, 600): ((2, 2), 576 + 48 * 49),
    (500, 375): ((2, 2), 576 + 36 * 49),
    (800, 400): ((1, 2), 576 + 24 * 49),
    (400, 800): ((2, 1), 576 + 48 * 25),
    (1200, 400): ((1, 3), 576 + 24 * 73),
    (400, 1200): ((3, 1), 576 + 72 * 25),
}


@pytest.fixture(scope="module")
def next_data(tmp_path_factory):
    """Both sides' NeXT processors over one tokenizer, one image of each benchmark size, and rows as the case makes
    them (each image's tokens from the hand table)."""
    folder = tmp_path_factory.mktemp("next-benchmark")
    ours, builtin = processors_for(shapes("7b", small=True), folder / "backbones", anyres=True)
    builtin.chat_template = CHAT_TEMPLATES["vicuna_v1"]
    sizes = tuple(dict.fromkeys(NEXT_IMAGE_SIZES))
    images = save_images(folder / "images", count=len(sizes), sizes=sizes)
    tokens = [HAND_COUNTS[size][1] for size in sizes]
    rows = stage2_rows(12, images, tokens, max_length=4096, seed=1)  # llava-next-7b-lora's max_length
    return ours, builtin, rows


def test_the_images_give_every_grid_of_llava_1_6():
    grids = {grid for grid, _ in HAND_COUNTS.values()}
    assert set(HAND_COUNTS) == set(NEXT_IMAGE_SIZES)
    assert grids == {(1, 2), (2, 1), (2, 2), (1, 3), (3, 1)}


def test_both_sides_give_each_image_its_hand_counted_tokens_and_tiles(next_data):
    """transformers' LlavaNextProcessor (through TRL's collator) and this project's collator: the same ids and labels
    for every row, with each image's tokens and tiles as counted by hand."""
    ours, builtin, rows = next_data
    dataset = as_dataset(rows)
    baseline = DataCollatorForVisionLanguageModeling(processor=builtin, assistant_only_loss=True)
    own = LlavaDataCollator(processor=ours, assistant_only_loss=True, chat_template=CHAT_TEMPLATES["vicuna_v1"])
    seen = set()
    for row in dataset:
        theirs, mine = baseline([dict(row)]), own([dict(row)])
        torch.testing.assert_close(theirs["input_ids"], mine["input_ids"])
        torch.testing.assert_close(theirs["labels"], mine["labels"])
        if not row["images"]:
            continue
        size = row["images"][0].size
        (rows, columns), tokens = HAND_COUNTS[size]
        assert int((mine["input_ids"] == ours.image_token_id).sum()) == tokens, size
        assert theirs["pixel_values"].shape[1] == mine["pixel_values"].shape[1] == rows * columns + 1, size
        seen.add(size)
    assert len(seen) >= 6  # most sizes appear among the rows


def test_each_side_is_sorted_by_the_lengths_its_collator_gives(next_data):
    """The baseline's `length` (transformers' processor, images decoded) and ours' (what `build_trainer` measures on
    the rows as it holds them, images as paths) are the tokens each side's collator gives the model, so both
    length-grouped samplers sort by the truth."""
    ours, builtin, rows = next_data
    trl_collator = DataCollatorForVisionLanguageModeling(processor=builtin, assistant_only_loss=True)
    row_collator = LlavaPaddingFreeCollator(
        processor=ours, assistant_only_loss=True, chat_template=CHAT_TEMPLATES["vicuna_v1"]
    )
    baseline = with_lengths(as_dataset(rows), builtin)
    own = measure_lengths(as_dataset(rows, decode=False), ours, CHAT_TEMPLATES["vicuna_v1"], cache=False)
    for theirs, mine in zip(baseline, own, strict=True):
        assert theirs["length"] == int(trl_collator([dict(theirs)])["attention_mask"].sum())
        assert mine["length"] == int(row_collator([dict(mine)])["cu_seq_lens_q"][-1]) == theirs["length"]
        assert mine["has_images"] == bool(mine["images"])


def test_padding_share_of_a_next_batch_matches_a_hand_count(next_data, tmp_path):
    """Three images of three grids in one padded batch: the recorder's padding share, tiles and image tokens are the
    hand count's; the padding-free row of the same samples has the same lengths and no padding."""
    ours, builtin, _ = next_data
    picks = [(600, 600), (800, 400), (1200, 400)]
    paths = save_images(tmp_path, count=len(picks), sizes=tuple(picks))
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w1 w2 w3"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "w4 w5"}]},
            ],
            "images": [path],
        }
        for path in paths
    ]
    dataset = as_dataset(rows)
    padded = DataCollatorForVisionLanguageModeling(processor=builtin, assistant_only_loss=True)(
        [dict(row) for row in dataset]
    )
    # Text tokens: the same prompt in every row (its `<s>` written by the template), the image placeholder aside.
    text = ours.apply_chat_template(rows[0]["messages"], chat_template=CHAT_TEMPLATES["vicuna_v1"])
    text_tokens = len(ours.tokenizer(text.replace("<image>", ""), add_special_tokens=False)["input_ids"])
    image_tokens = [HAND_COUNTS[size][1] for size in picks]  # 2,928, 1,752, 2,328
    lengths = [text_tokens + count for count in image_tokens]
    hand_share = sum(max(lengths) - length for length in lengths) / (len(lengths) * max(lengths))

    config = shapes("7b", small=True).plugin_config(ours.image_token_id, anyres=True)
    torch.manual_seed(0)
    model = LlavaNextPluginForConditionalGeneration(config).eval()
    row = LlavaPaddingFreeCollator(processor=ours, assistant_only_loss=True)([dict(row) for row in dataset])
    recorders, records = [], []
    for batch in (padded, row):
        recorder = BatchRecorder("cpu")
        recorder.config, recorder.image_token_id = model.config, model.config.image_token_id
        handle = model.model.register_forward_pre_hook(recorder, with_kwargs=True)
        with torch.no_grad():
            model(**batch)
        handle.remove()
        recorders.append(recorder)
        recorder.starts.append(recorder.starts[-1] + 1.0)  # a next step's start closes the timed one
        records.append(recorder.summary(0, ModelCounts.of(model, model.config), peak=None))
    padded_record, row_record = recorders
    assert padded_record.lengths == row_record.lengths == [lengths]
    assert records[0]["padding_fraction"] == pytest.approx(hand_share) and records[1]["padding_fraction"] == 0
    spread = {"min": 1752, "median": 2328, "mean": sum(image_tokens) / 3, "max": 2928}
    assert records[0]["image_tokens_per_sample"] == records[1]["image_tokens_per_sample"] == spread
    assert padded_record.image_tokens == row_record.image_tokens == [image_tokens]
    assert padded_record.images == row_record.images == [(2 * 2 + 1) + (1 * 2 + 1) + (1 * 3 + 1)]


@pytest.mark.slow
def test_the_next_case_runs_both_sides_on_the_same_samples(tmp_path):
    """`python -m benchmarks.run --device cpu --small --cases next-lora`, cut to two steps a side."""
    argv = ["--device", "cpu", "--small", "--cases", "next-lora", "--output", str(tmp_path)]
    case = run_benchmark([*argv, "--steps", "1", "--warmup", "0", "--batch-size", "2"])["cases"]["next-lora"]
    baseline, ours = case["baseline"], case["ours"]
    assert baseline["settings"]["collator"] == "DataCollatorForVisionLanguageModeling"
    assert ours["settings"]["collator"] == "LlavaPaddingFreeCollator"
    assert baseline["settings"]["sampler"] == "LengthGroupedSampler"
    assert (
        baseline["settings"]["attn_implementation"] == "sdpa"
        and ours["settings"]["attn_implementation"] == "torch_varlen"
    )
    assert baseline["settings"]["loss_tokens"] == ours["settings"]["loss_tokens"] == "assistant-only"
    _, recipe, _ = train_module.parse(["--config", "llava-next-7b-lora", "--use_cpu", "true", "--bf16", "false"])
    assert case["recipe"] == "llava-next-7b-lora" and recipe.per_device_train_batch_size == 4
    workers = recipe.dataloader_num_workers
    assert baseline["settings"]["dataloader_num_workers"] == ours["settings"]["dataloader_num_workers"] == workers
    # Each side trained on every row once, in its own order: the same samples, the same lengths and image tokens.
    assert baseline["samples"] == ours["samples"] and len(ours["samples"]) == 2 * 2
    assert {images for _, images in ours["samples"]} <= {count for _, count in HAND_COUNTS.values()} | {0}
    assert ours["padding_fraction"] == 0 and ours["image_tokens_per_sample"]["max"] <= 2928
