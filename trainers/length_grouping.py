"""LLaVA-1.5's `group_by_modality_length` sampler: image samples and text-only samples in separate batches, samples
of similar length together, in an order that is still random.

The original (`llava/train/llava_trainer.py`) builds one epoch's order so:

1. Each modality's indices are shuffled and cut into megabatches of one optimizer step (per-device batch x devices x
   gradient accumulation). Within a megabatch the samples are sorted longest first and dealt into that many
   per-device batches of roughly equal total length (`split_to_even_chunks`).
2. The megabatches of both modalities, each modality's last (short) one excepted, are shuffled together; the two
   short ones form one mixed megabatch at the end.

The sampler only orders: every index appears exactly once per epoch. Unlike the original, whose per-modality shuffle
reads the global random state, every draw comes from one generator seeded with the run's seed and the epoch, so all
ranks agree on the order and a resumed run replays it.
"""

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def split_to_even_chunks(indices: list[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """`indices` (longest first) dealt into `num_chunks` chunks of equal size and roughly equal total length: each
    goes to the chunk with the least length so far that still has room. An uneven split is dealt round-robin."""
    if len(indices) % num_chunks:
        return [indices[chunk::num_chunks] for chunk in range(num_chunks)]
    size = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == size:
            totals[shortest] = float("inf")
    return chunks


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """A random order of `range(len(lengths))` in which each megabatch of `batch_size x world_size` is sorted by
    length and split evenly into `world_size` batches."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch_size = batch_size * world_size
    grouped = []
    for start in range(0, len(order), megabatch_size):
        megabatch = sorted(order[start : start + megabatch_size], key=lambda index: lengths[index], reverse=True)
        for chunk in split_to_even_chunks(megabatch, lengths, world_size):
            grouped += chunk
    return grouped


def modality_length_grouped_indices(
    lengths: Sequence[int], has_images: Sequence[bool], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """The original's `get_modality_length_grouped_indices`, with `has_images` in place of the sign of a length."""
    if all(has_images) or not any(has_images):
        return length_grouped_indices(lengths, batch_size, world_size, generator)
    megabatch_size = batch_size * world_size
    per_modality = []
    for images in (True, False):
        indices = [index for index, flag in enumerate(has_images) if bool(flag) == images]
        order = length_grouped_indices([lengths[index] for index in indices], batch_size, world_size, generator)
        shuffled = [indices[position] for position in order]
        per_modality.append(
            [shuffled[start : start + megabatch_size] for start in range(0, len(shuffled), megabatch_size)]
        )
    (*image_megabatches, last_image), (*text_megabatches, last_text) = per_modality
    megabatches = image_megabatches + text_megabatches
    megabatches = [megabatches[position] for position in torch.randperm(len(megabatches), generator=generator)]
    megabatches.append(sorted(last_image + last_text))
    return [index for megabatch in megabatches for index in megabatch]


class ModalityLengthGroupedSampler(Sampler[int]):
    """Indices in `modality_length_grouped_indices` order, a new order each epoch (`set_epoch`, which the trainer
    calls), the same on every rank; accelerate then deals the batches to the ranks."""

    def __init__(
        self, lengths: Sequence[int], has_images: Sequence[bool], batch_size: int, world_size: int, seed: int
    ) -> None:
        if len(lengths) != len(has_images):
            raise ValueError(f"{len(lengths)} lengths but {len(has_images)} modality flags.")
        self.lengths, self.has_images = list(lengths), list(has_images)
        self.batch_size, self.world_size, self.seed, self.epoch = batch_size, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(
            modality_length_grouped_indices(self.lengths, self.has_images, self.batch_size, self.world_size, generator)
        )


__all__ = [
    "ModalityLengthGroupedSampler",
    "length_grouped_indices",
    "modality_length_grouped_indices",
    "split_to_even_chunks",
]
