"""The modality-and-length grouped sampler (the original's `group_by_modality_length`): it orders, never changes what
is trained on, keeps image and text-only samples in separate batches, and is on in the LLaVA-1.5 recipes."""

import random
from collections import Counter

import pytest
import torch
import yaml

from processing.collator import LlavaDataCollator
from tests.conftest import run_args, train
from trainers.length_grouping import (
    ModalityLengthGroupedSampler,
    length_grouped_indices,
    modality_length_grouped_indices,
    split_to_even_chunks,
)
from trainers.train import RECIPES, SetupError, parse


def test_even_chunks_go_to_the_least_loaded_chunk_with_room():
    # Worked by hand: 10 -> A; 9 -> B; 8 -> B (9 < 10); 3 -> A (10 < 17); 2 -> A, now full; 1 -> B.
    lengths = {0: 10, 1: 9, 2: 8, 3: 3, 4: 2, 5: 1}
    assert split_to_even_chunks([0, 1, 2, 3, 4, 5], lengths, 2) == [[0, 3, 4], [1, 2, 5]]
    # An uneven split is dealt round-robin.
    assert split_to_even_chunks([0, 1, 2, 3, 4], lengths, 2) == [[0, 2, 4], [1, 3]]


def random_mix(images: int, texts: int, seed: int = 0) -> tuple[list[int], list[bool]]:
    rng = random.Random(seed)
    has_images = [True] * images + [False] * texts
    rng.shuffle(has_images)
    return [rng.randint(1, 2048) for _ in has_images], has_images


@pytest.mark.parametrize(("images", "texts"), [(70, 33), (64, 16), (5, 40)])
def test_grouping_orders_every_sample_once_in_modality_pure_sorted_batches(images, texts):
    lengths, has_images = random_mix(images, texts)
    batch_size, world_size = 4, 2
    megabatch = batch_size * world_size
    order = modality_length_grouped_indices(
        lengths, has_images, batch_size, world_size, torch.Generator().manual_seed(0)
    )
    assert sorted(order) == list(range(images + texts))  # a permutation: nothing dropped, nothing repeated

    # Every megabatch of a modality but its last is pure; the two last ones form the mixed tail, in index order.
    full = ((images - 1) // megabatch + (texts - 1) // megabatch) * megabatch
    head, tail = order[:full], order[full:]
    assert sorted(tail) == tail and len(tail) == images + texts - full
    for start in range(0, full, megabatch):
        group = head[start : start + megabatch]
        assert len({has_images[index] for index in group}) == 1
        for batch in range(world_size):  # each device's batch is a run of the megabatch sorted longest first
            batch_lengths = [lengths[index] for index in group[batch * batch_size : (batch + 1) * batch_size]]
            assert batch_lengths == sorted(batch_lengths, reverse=True)
    # Both modalities' full megabatches are interleaved at random, not one modality after the other.
    if images > 2 * megabatch and texts > 2 * megabatch:
        kinds = [has_images[head[start]] for start in range(0, full, megabatch)]
        assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)


def test_one_modality_is_plain_length_grouping():
    lengths, _ = random_mix(20, 0)
    grouped = modality_length_grouped_indices(lengths, [False] * 20, 3, 2, torch.Generator().manual_seed(1))
    assert grouped == length_grouped_indices(lengths, 3, 2, torch.Generator().manual_seed(1))


def test_the_sampler_is_the_same_on_every_rank_and_new_each_epoch():
    lengths, has_images = random_mix(30, 10)
    first, second = (ModalityLengthGroupedSampler(lengths, has_images, 2, 2, seed=7) for _ in range(2))
    assert list(first) == list(second)  # two ranks, one order
    second.set_epoch(1)
    assert list(first) != list(second) and sorted(second) == list(range(40))
    assert len(first) == 40


def test_a_run_with_grouping_trains_on_every_sample_once_per_epoch(checkpoints, train_data, tmp_path, monkeypatch):
    seen = []
    original = LlavaDataCollator.torch_call

    def recording(self, examples):
        seen.append([example["id"] for example in examples])
        return original(self, examples)

    monkeypatch.setattr(LlavaDataCollator, "torch_call", recording)
    # 9 samples, 2 a batch, 2 epochs: one pass of the sampler per epoch.
    args = ["--group_by_modality_length", "true", "--max_steps", "-1", "--num_train_epochs", "2"]
    trainer = train(
        "stage2", run_args(checkpoints, train_data, tmp_path / "run", *args, "--dataloader_num_workers", "0")
    )
    assert isinstance(trainer._get_train_sampler(), ModalityLengthGroupedSampler)
    ids = [f"sample-{index}" for index in range(8)] + ["text-only"]
    epochs = [[name for batch in seen[:5] for name in batch], [name for batch in seen[5:] for name in batch]]
    assert len(seen) == 10 and all(Counter(epoch) == Counter(ids) for epoch in epochs)
    # The text-only sample is its modality's last megabatch: it ends each epoch, in the mixed tail.
    assert all("text-only" in epoch[-3:] for epoch in epochs)
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("size", ["7b", "13b"])
@pytest.mark.parametrize("stage", ["stage2", "lora", "qlora"])
def test_the_llava_1_5_instruction_recipes_group_as_the_original(size, stage):
    """The original's v1.5 finetune scripts pass `--group_by_modality_length True`; its pretrain scripts do not."""
    assert yaml.safe_load((RECIPES / f"llava-1.5-{size}-{stage}.yaml").read_text())["group_by_modality_length"]
    assert "group_by_modality_length" not in yaml.safe_load((RECIPES / f"llava-1.5-{size}-stage1.yaml").read_text())


def test_two_samplers_at_once_are_refused(checkpoints, train_data, tmp_path):
    from trainers.train import check_arguments

    args = run_args(checkpoints, train_data, tmp_path, "--group_by_modality_length", "true")
    script, training, model = parse(["stage2", *args, "--train_sampling_strategy", "group_by_length"])
    with pytest.raises(SetupError, match="group_by_modality_length.*train_sampling_strategy: group_by_length"):
        check_arguments(script, training, model)
