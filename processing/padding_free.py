"""Padding-free batches for LLaVA (the samples of a batch end to end in one row) and an attention that reads them.

TRL refuses `padding_free` for vision datasets, so a LLaVA batch is padded to its longest sample; with LLaVA-1.5's
length mix (576 image tokens plus conversations up to 2048) about a third of a stage-2 batch is padding. This collator
renders and tokenizes exactly as `LlavaDataCollator` does, then drops the padding and concatenates the rows into one
of shape `(1, total_length)`, which keeps the math of the padded batch:

- `position_ids` restart at 0 for every sample. transformers reads the restarts as sequence boundaries when there is
  neither an `attention_mask` nor a KV cache (`masking_utils.find_packed_sequence_indices`): sdpa, eager and flex
  attention get a block-diagonal causal mask, flash attention gets the varlen boundaries, so no token attends across
  samples, and RoPE sees the same positions as in the padded batch. The batch carries `use_cache=False`, since a
  forward that builds a cache (the default in eval mode) would silently let samples attend to each other.
- The first label of each sample is -100, so no loss is taken on predicting one sample's first token from the
  previous sample's last token; it is never a target in the padded batch either (labels are shifted by one).
- `pixel_values` stay the stack of all the batch's images in order, which is the order their image tokens appear in
  the row, so the model's image-token splice is unchanged.

The loss is the same sum over the same label tokens divided by the same count, also under gradient accumulation
(`num_items_in_batch` counts `labels[..., 1:] != -100`, which the concatenation does not change).

With sdpa or eager attention the block-diagonal mask costs `total_length**2`, not the sum of the samples' squares;
`attn_implementation="torch_varlen"` (`modeling_llava/attention_varlen.py`) attends within each sample instead.
"""

from dataclasses import dataclass
from typing import Any

import torch

from .collator import LlavaDataCollator


@dataclass
class LlavaPaddingFreeCollator(LlavaDataCollator):
    """`LlavaDataCollator` whose batches are one padding-free row.

    Returns `input_ids`, `labels` and `position_ids` of shape `(1, total_length)` (and any other per-token tokenizer
    output, flattened the same way), `pixel_values` of shape `(num_images, channels, height, width)`, and the sequence
    boundaries `cu_seq_lens_q`/`cu_seq_lens_k` of shape `(batch_size + 1,)` with `max_length_q`/`max_length_k`, the
    keyword arguments transformers' flash-attention path reads (TRL's padding-free text collator emits the same).
    There is no `attention_mask`: its absence is what makes transformers look for packed sequences in `position_ids`.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        keep = batch.pop("attention_mask").bool()  # right padding: row-major order concatenates the samples
        lengths = keep.sum(-1)
        batch["labels"][:, 0] = -100
        per_token = {"labels", *self.processor.tokenizer.model_input_names} - {"attention_mask"}
        for key in per_token & batch.keys():
            batch[key] = batch[key][keep][None]
        starts = torch.cumsum(lengths, 0) - lengths
        batch["position_ids"] = (torch.arange(int(lengths.sum())) - starts.repeat_interleave(lengths))[None]
        cu_seq_lens = torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
        batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu_seq_lens
        batch["max_length_q"] = batch["max_length_k"] = int(lengths.max())
        batch["use_cache"] = False
        return batch


__all__ = ["LlavaPaddingFreeCollator"]
