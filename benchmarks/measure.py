"""What the benchmark measures: step times, real and padded tokens, model FLOPs, peak memory.

Everything is read off the model's backbone (`model.model`, the same module in the built-in Llava and ours), which
TRL's fused LM head calls once per micro-batch on both sides, through PEFT too: a forward pre-hook sees each batch as
the model gets it, whatever collator and dataloader workers made it.

Model FLOPs count only non-padding tokens (so padding is waste, not work) and not the recomputation of gradient
checkpointing, as MFU is usually defined (PaLM, appendix B). Per step, with `T` the real tokens, `n_i` the length of
sample `i` and `I` the number of images:

- language model, `N` its parameters without the input embeddings and the head: `6 N T` when its weights train
  (stage 2), `4 N T` when they are frozen but gradients still flow through it to the projector or the LoRA adapters
  (stage 1, LoRA: forward + input gradients, no weight gradients), plus `6 N_lora T` for the adapters;
- LM head, `N_head` parameters, the same `6` or `4` times `N_head` but over the `T_loss` tokens that carry the loss
  only: TRL's fused LM head projects only those (`trl.trainer.utils.add_fused_lm_head`);
- causal attention, `L` layers of width `d`: `6 L d sum(n_i^2)` (forward `2 L d n^2`: QK^T and AV over half the
  square; backward twice that);
- vision tower (frozen, no gradient): `I (2 N_vision P + 4 L_v d_v P^2)` over its `P` patches (577 for CLIP-L/336);
- projector (always trained): `6 N_projector I S` over the `S` image tokens per image.

For LLaVA-NeXT, `I` counts tiles (the base image and the grid's tiles, each a 336-pixel image to the tower and 576
features to the projector), and `T` includes the `image_newline` tokens, which the LLM computes on like any other.

MFU is those FLOPs per second over the GPU's dense bf16 peak (H100/H200: 989 TFLOPS).

The share of real tokens that carry the loss (labels other than -100) is read off the model's own inputs, so that a
side that computes the loss on fewer tokens shows it; so are the image tokens of each sample (a LLaVA-NeXT image's
depend on its grid) and every sample's length, by which the two sides' records show they trained on the same samples.
"""

import statistics
import time
from dataclasses import dataclass, field

import torch
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

# Dense bf16 peak per GPU model, TFLOPS (the datasheets' "without sparsity" figures).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def peak_flops(device: str, override_tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of `device`, or `None` where unknown (a CPU): MFU is then not reported."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass
class ModelCounts:
    """Parameter counts and widths of one LLaVA, by part, for the FLOPs formula."""

    language_model: int
    lora: int
    vision: int
    projector: int
    text_layers: int
    text_width: int
    vision_layers: int
    vision_width: int
    vision_patches: int
    image_tokens: int
    language_model_trains: bool
    lm_head: int = 0  # part of `language_model`, counted apart because only the loss tokens go through it

    @classmethod
    def of(cls, model: torch.nn.Module, config) -> "ModelCounts":
        """Counts of `model` (plain or PEFT-wrapped; names are the same on both sides) under `config`."""
        counts = {"language_model": 0, "lora": 0, "vision": 0, "projector": 0}
        language_model_trains, lm_head = False, 0
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                counts["lora"] += parameter.numel()
            elif "vision_tower" in name:
                counts["vision"] += parameter.numel()
            elif "multi_modal_projector" in name:
                counts["projector"] += parameter.numel() if "original_module" not in name else 0
            elif "embed_tokens" not in name:  # the LLM's layers and the head
                counts["language_model"] += parameter.numel()
                lm_head += parameter.numel() if "lm_head" in name else 0
                language_model_trains |= parameter.requires_grad
        vision, text = config.vision_config, config.text_config
        return cls(
            **counts,
            text_layers=text.num_hidden_layers,
            text_width=text.hidden_size,
            vision_layers=vision.num_hidden_layers,
            vision_width=vision.hidden_size,
            vision_patches=(vision.image_size // vision.patch_size) ** 2 + 1,
            image_tokens=config.image_seq_length,
            language_model_trains=language_model_trains,
            lm_head=lm_head,
        )

    def training_flops(self, lengths: list[int], num_images: int, loss_tokens: int | None = None) -> float:
        """Model FLOPs of one training step over samples of `lengths` real tokens and `num_images` images.

        `loss_tokens`, the tokens whose label is not -100, are the only ones the LM head projects; `None` counts the
        head on every token.
        """
        tokens = sum(lengths)
        head_tokens = tokens if loss_tokens is None else loss_tokens
        language_model = (6 if self.language_model_trains else 4) * (
            (self.language_model - self.lm_head) * tokens + self.lm_head * head_tokens
        )
        attention = 6 * self.text_layers * self.text_width * sum(length**2 for length in lengths)
        vision = num_images * (
            2 * self.vision * self.vision_patches + 4 * self.vision_layers * self.vision_width * self.vision_patches**2
        )
        projector = 6 * self.projector * num_images * self.image_tokens
        return language_model + 6 * self.lora * tokens + attention + vision + projector


@dataclass
class BatchRecorder:
    """Forward pre-hook on the backbone: when each micro-batch started, its sample lengths, padded size, the images
    the vision tower encodes (for LLaVA-NeXT, tiles) and, once `attach` has read the model's image token, each
    sample's image tokens."""

    device: str
    starts: list[float] = field(default_factory=list)
    lengths: list[list[int]] = field(default_factory=list)
    padded: list[int] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    loss_tokens: list[int] = field(default_factory=list)
    image_tokens: list[list[int]] = field(default_factory=list)
    image_token_id: int | None = None
    config: object = None  # the model's config, for a LLaVA-NeXT batch's tile count

    def attach(self, model: torch.nn.Module) -> None:
        """Hooks `model`'s backbone (`model.model`) for the batches and `model` itself for their labels."""
        self.config, self.image_token_id = model.config, model.config.image_token_id
        model.model.register_forward_pre_hook(self, with_kwargs=True)
        model.register_forward_pre_hook(self.record_labels, with_kwargs=True)

    def record_labels(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        labels = kwargs.get("labels")
        if labels is not None:
            self.loss_tokens.append(int((labels != -100).sum()))

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        synchronize(self.device)  # the previous step's kernels belong to the previous step
        self.starts.append(time.perf_counter())
        # TRL's fused LM head passes it by name; LlavaNext's own forward, first by position.
        input_ids = kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]
        if kwargs.get("attention_mask") is not None:
            lengths = kwargs["attention_mask"].sum(-1).tolist()
        elif kwargs.get("cu_seq_lens_q") is not None:  # a padding-free row
            lengths = kwargs["cu_seq_lens_q"].diff().tolist()
        else:
            lengths = [input_ids.shape[-1]] * input_ids.shape[0]
        self.lengths.append(lengths)
        self.padded.append(input_ids.numel())
        self.images.append(self.encoded_images(kwargs.get("pixel_values"), kwargs.get("image_sizes")))
        if self.image_token_id is not None:
            is_image = input_ids == self.image_token_id
            if kwargs.get("cu_seq_lens_q") is not None:  # one row: each sample's image tokens by its boundaries
                per_sample = is_image[0].split(lengths)
            else:
                per_sample = is_image
            self.image_tokens.append([int(sample.sum()) for sample in per_sample])

    def encoded_images(self, pixel_values: torch.Tensor | None, image_sizes: torch.Tensor | None) -> int:
        """Images the vision tower encodes in one batch. LLaVA-NeXT's `pixel_values` are `(images, most tiles, ...)`,
        padded with blank tiles that the model skips: count each image's own tiles, as the model does."""
        if pixel_values is None:
            return 0
        if pixel_values.dim() == 4:
            return pixel_values.shape[0]
        pinpoints, tile_size = self.config.image_grid_pinpoints, self.config.vision_config.image_size
        return sum(image_size_to_num_patches(size.tolist(), pinpoints, tile_size) for size in image_sizes)

    def summary(self, warmup: int, counts: ModelCounts, peak: float | None) -> dict[str, float | None]:
        """Throughput over the steps after `warmup`, timed from one step's first forward to the next one's.

        The last step recorded only opens the last interval, so `n` recorded steps time `n - 1 - warmup` whole
        steps (data loading, forward, backward and optimizer alike).
        """
        if len(self.starts) < warmup + 2:
            raise RuntimeError(
                f"{len(self.starts)} steps were recorded, and {warmup} warm-up steps and one timed step need "
                f"{warmup + 2}: give the case more time (--deadline, CASE_SECONDS in gpu.sh) or lower --warmup."
            )
        measured = slice(warmup, len(self.starts) - 1)
        seconds = self.starts[-1] - self.starts[warmup]
        lengths, padded, images = self.lengths[measured], self.padded[measured], self.images[measured]
        real, samples = sum(map(sum, lengths)), sum(map(len, lengths))
        loss_tokens = self.loss_tokens[measured] if self.loss_tokens else [None] * len(lengths)
        flops = sum(
            counts.training_flops(step, count, loss)
            for step, count, loss in zip(lengths, images, loss_tokens, strict=True)
        )
        return {
            "steps": len(lengths),
            "seconds": seconds,
            "samples_per_s": samples / seconds,
            "tokens_per_s": real / seconds,
            "padding_fraction": 1 - real / sum(padded),
            "loss_token_fraction": sum(self.loss_tokens[measured]) / real if self.loss_tokens else None,
            "tflops_per_s": flops / seconds / 1e12,
            "mfu": None if peak is None else flops / seconds / peak,
            "image_tokens_per_sample": self.image_token_spread(measured),
            "samples": self.samples(),
        }

    def image_token_spread(self, steps: slice) -> dict[str, float] | None:
        """Minimum, median, mean and maximum image tokens of the samples with an image in `steps`."""
        counts = [count for step in self.image_tokens[steps] for count in step if count]
        if not counts:
            return None
        return {
            "min": min(counts),
            "median": statistics.median(counts),
            "mean": statistics.fmean(counts),
            "max": max(counts),
        }

    def samples(self) -> list[list[int]] | None:
        """Every recorded sample, warm-up and last step included, as `[length, image tokens]`, sorted: two sides that
        trained on the same samples, in whatever order, have equal lists."""
        if len(self.image_tokens) != len(self.lengths):
            return None
        pairs = zip(sum(self.lengths, []), sum(self.image_tokens, []), strict=True)
        return sorted([length, images] for length, images in pairs)


class PeakMemory:
    """Peak memory of a block: `torch.cuda.max_memory_allocated` on a GPU; on a CPU, `None` (no per-block peak)."""

    def __init__(self, device: str):
        self.device = device
        self.gib: float | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device == "cuda":
            self.gib = torch.cuda.max_memory_allocated() / 2**30


__all__ = ["BatchRecorder", "ModelCounts", "PeakMemory", "peak_flops", "synchronize"]
