"""`llava plan --config RECIPE [--gpus N] [--gpu-memory GB] [--zero {0,2,3} | --fsdp]`: the GPU memory a run needs.

The model is built from the backbones' configs on the meta device (no weight is read or downloaded), frozen as its
stage freezes it (`stages.apply_freeze`, PEFT's LoRA wrapping as TRL applies it), and its parameters are counted per
GPU as the chosen strategy holds them:

- DDP (`--zero 0`, the default): every GPU holds all weights in their dtype, the gradients of the trainable ones in
  the same dtype, and torch AdamW's `exp_avg` and `exp_avg_sq`, which `zeros_like` allocates in the parameter's dtype
  (bf16 for a bf16 run, not fp32), plus one fp32 `step` per trainable tensor. These three equal a built trainer's
  tensors exactly (tests/test_plan.py counts them). With several GPUs, DDP's gradient buckets hold one more copy of
  the gradients.
- DeepSpeed ZeRO-2 / ZeRO-3: DeepSpeed's mixed-precision optimizer keeps an fp32 master copy and fp32 Adam states,
  12 bytes per trainable parameter (8 when the weights already are fp32), and the gradients in the weights' dtype;
  ZeRO-2 divides gradients and optimizer states by N, ZeRO-3 the weights too (the ZeRO paper's 2 + 2 + 12 bytes).
- FSDP (accelerate's, full shard, `mixed_precision: bf16`): accelerate upcasts the trainable parameters to fp32
  before sharding, so weights (frozen ones in their dtype), fp32 gradients and torch AdamW's fp32 states are all
  divided by N.

QLoRA's 4-bit language model (bitsandbytes NF4, blocks of 64) takes n/2 bytes per linear weight of n elements, plus
per block an absmax: 1 byte each with double quantization (and one fp32 constant per 256 blocks), 4 bytes without.

Activations are an estimate (`activation_bytes`), linear in the tokens of a micro-batch (padding-free batches and
varlen/SDPA attention keep no s x s score matrix). Its decoder-layer term is what autograd keeps in a Llama layer,
trained, frozen or with LoRA, checked to the byte on a CPU by summing the tensors it saves (tests/test_plan.py);
peaks of the backward pass and of the loss's chunks, and CUDA's own memory, are not in it.
"""

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import torch
from peft import get_peft_model
from transformers import AutoConfig
from trl import ModelConfig, SFTConfig

from modeling_llava import LlavaNextPluginConfig, LlavaPluginConfig, LlavaPluginForConditionalGeneration
from modeling_llava.configuration_llava_plugin import VISION_TOWERS_WITHOUT_CLS
from modeling_llava.processing_llava_plugin import tokenizer_with_image_token

from .stages import Stage, apply_freeze, lora_config_of_run
from .train import LlavaScriptArguments, SetupError, check_arguments, parse

GIB = 2**30
# The part of `--gpu-memory` a plan fills: the rest is left to the CUDA context, kernels' workspaces and the
# allocator's fragmentation, none of which is counted.
USABLE = 0.9
TEXT_TOKENS = (128, 512)  # text tokens beside one image, for the activation rows; the longest sample is max_length


@dataclass
class Inventory:
    """The parameters of a run's model as its stage leaves them: what each strategy's arithmetic starts from."""

    parameters: int
    trainable: int
    trainable_bytes: int  # in the trainable parameters' own dtype(s)
    trainable_tensors: int
    frozen_bytes: int  # QLoRA's 4-bit linear layers at their quantized size
    hidden_size: int
    kv_size: int  # width of the keys (and of the values): heads x head dimension
    intermediate_size: int
    layers: int
    heads: int
    vocab_size: int
    image_tokens: int
    projector_input_size: int
    adapter_element: int  # bytes per value of the LoRA adapters (fp32 as PEFT upcasts them); 0 without LoRA
    lora_rank: int  # 0 without LoRA
    dtype: str  # the language model's, which its activations are in


def _language_vocabulary(language_model: str, vocab_size: int) -> tuple[int, str | None]:
    """The embedding rows after `from_backbones` adds `<image>` to the tokenizer; without a tokenizer, one more."""
    try:
        return max(len(tokenizer_with_image_token(language_model)), vocab_size), None
    except (OSError, ValueError):  # a folder holding config.json alone, as tests/fixtures/llava-1.5-7b
        return vocab_size + 1, f"no tokenizer in {language_model!r}: assumed one added token (<image>)"


# The estimate counts one tile per image and a frozen tower, which is not how a LLaVA-NeXT run spends its memory.
NOT_PLANNED = (
    "llava plan sizes LLaVA-1.5 runs only: a LLaVA-NeXT (AnyRes) run's images take up to five tiles and a varying "
    "number of tokens each, and its tower may train, which the estimate does not count yet."
)


def meta_model(
    script_args: LlavaScriptArguments, model_args: ModelConfig
) -> tuple[LlavaPluginForConditionalGeneration, list[str]]:
    """The run's model on the meta device, from configs alone, in the recipe's dtype; and notes on what was assumed."""
    notes = []
    if script_args.anyres or script_args.train_vision_tower:
        raise SetupError(NOT_PLANNED)
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
        if isinstance(config, LlavaNextPluginConfig):
            raise SetupError(NOT_PLANNED)
        if not isinstance(config, LlavaPluginConfig):
            raise SetupError(
                f"{model_args.model_name_or_path!r} is a {config.model_type} checkpoint: convert it first "
                f"(`llava convert {model_args.model_name_or_path} CONVERTED`) and plan from CONVERTED."
            )
    elif script_args.vision_tower and script_args.language_model:
        vision_config = AutoConfig.from_pretrained(script_args.vision_tower)
        vision_config = getattr(vision_config, "vision_config", vision_config)
        text_config = AutoConfig.from_pretrained(script_args.language_model)
        text_config.vocab_size, note = _language_vocabulary(script_args.language_model, text_config.vocab_size)
        notes += [note] if note else []
        no_cls = vision_config.model_type in VISION_TOWERS_WITHOUT_CLS
        config = LlavaPluginConfig(
            vision_config=vision_config,
            text_config=text_config,
            projector_type=script_args.projector_type,
            vision_feature_layer=script_args.vision_feature_layer,
            vision_feature_select_strategy="full" if no_cls else "default",
            image_token_id=text_config.vocab_size - 1,
        )
    else:
        raise SetupError(
            "Nothing to plan for: the recipe needs `model_name_or_path` or both `vision_tower` and `language_model` "
            "(give local config folders with --vision_tower DIR --language_model DIR)."
        )
    with torch.device("meta"):
        model = LlavaPluginForConditionalGeneration(config)
    # As `from_pretrained` loads them: in the recipe's dtype, or ("auto") each backbone in its checkpoint's own, the
    # projector in the language model's.
    model.to(_dtype(model_args.dtype, config.text_config))
    model.model.vision_tower.to(_dtype(model_args.dtype, config.vision_config))
    return model, notes


def _dtype(recipe_dtype: str | None, config) -> torch.dtype:
    """The dtype a backbone loads in: the recipe's, or for `auto` (transformers' default) the one its config names."""
    name = recipe_dtype if recipe_dtype not in (None, "auto") else getattr(config, "dtype", None) or "float32"
    return name if isinstance(name, torch.dtype) else getattr(torch, name)


def four_bit_bytes(elements: int, nested: bool) -> int:
    """Bytes of one bitsandbytes NF4 weight of `elements` values, with its quantization constants (blocks of 64)."""
    blocks = -(-elements // 64)
    if nested:  # the absmax of each block in 8 bits, with an fp32 scale per 256 of them
        return elements // 2 + blocks + 4 * -(-blocks // 256)
    return elements // 2 + 4 * blocks


def inventory(
    script_args: LlavaScriptArguments, model_args: ModelConfig, stage: Stage, zero3: bool = False
) -> tuple[Inventory, list[str]]:
    """Counts the parameters of the run's model after its stage's freezing, LoRA wrapping and quantization."""
    model, notes = meta_model(script_args, model_args)
    apply_freeze(model, stage)
    quantized = set()
    if stage.quantized:
        quantized = {
            id(module.weight) for module in model.model.language_model.modules() if isinstance(module, torch.nn.Linear)
        }
    if stage.uses_lora:
        config = lora_config_of_run(model, model_args)
        # As TRL's SFTTrainer: PEFT upcasts the adapters to fp32, except under ZeRO-3 for a model not quantized.
        with torch.device("meta"):
            model = get_peft_model(model, config, autocast_adapter_dtype=not zero3 or stage.quantized)
    trainable = trainable_bytes = tensors = frozen_bytes = 0
    for parameter in model.parameters():
        if parameter.requires_grad:
            trainable += parameter.numel()
            trainable_bytes += parameter.numel() * parameter.element_size()
            tensors += 1
        elif id(parameter) in quantized:
            frozen_bytes += four_bit_bytes(parameter.numel(), model_args.use_bnb_nested_quant)
        else:
            frozen_bytes += parameter.numel() * parameter.element_size()
    llava = model.base_model.model if stage.uses_lora else model
    text = llava.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    counts = Inventory(
        parameters=sum(parameter.numel() for parameter in model.parameters()),
        trainable=trainable,
        trainable_bytes=trainable_bytes,
        trainable_tensors=tensors,
        frozen_bytes=frozen_bytes,
        hidden_size=text.hidden_size,
        kv_size=kv_heads * head_dim,
        intermediate_size=text.intermediate_size,
        layers=text.num_hidden_layers,
        heads=text.num_attention_heads,
        vocab_size=text.vocab_size,
        image_tokens=llava.config.image_seq_length,
        projector_input_size=llava.config.vision_config.hidden_size * llava.config.num_vision_feature_layers,
        adapter_element=next((p.element_size() for n, p in model.named_parameters() if "lora_A" in n), 0),
        lora_rank=model_args.lora_r if stage.uses_lora else 0,
        dtype=str(model.get_input_embeddings().weight.dtype).removeprefix("torch."),
    )
    return counts, notes


def state_bytes(counts: Inventory, strategy: str, gpus: int, mixed_precision: bool) -> dict[str, float]:
    """Per-GPU bytes of weights, gradients, optimizer states (and DDP's buckets) under `strategy`.

    `strategy` is `ddp`, `zero2`, `zero3` or `fsdp`; see the module's docstring for each one's layout.
    """
    weights = counts.frozen_bytes + counts.trainable_bytes
    steps = 4 * counts.trainable_tensors  # AdamW's fp32 `step`, one per parameter tensor
    if strategy == "ddp":
        parts = {"weights": weights, "gradients": counts.trainable_bytes}
        parts["optimizer"] = 2 * counts.trainable_bytes + steps
        if gpus > 1:
            parts["ddp_buckets"] = counts.trainable_bytes
        return parts
    if strategy == "fsdp":
        fp32 = 4 * counts.trainable if mixed_precision else counts.trainable_bytes
        return {
            "weights": (counts.frozen_bytes + fp32) / gpus,
            "gradients": fp32 / gpus,
            "optimizer": (2 * fp32 + steps) / gpus,
        }
    master = 4 * counts.trainable if mixed_precision else 0
    return {
        "weights": weights / gpus if strategy == "zero3" else weights,
        "gradients": counts.trainable_bytes / gpus,
        "optimizer": (8 * counts.trainable + master) / gpus,
    }


def layer_bytes(counts: Inventory, element: int, trains: bool, lora_dropout: bool, mask_bytes: int = 1) -> int:
    """Bytes autograd keeps per token in one Llama decoder layer, h its width, k the key/value width, f the MLP width,
    a its heads and e the bytes of the dtype: 8h + 8 + 4a + e(6h + 2k + 4f) when the layer trains (stage 2),
    8h + 8 + 4a + e(2h + 2k + 3f) when it is frozen (stage 1, and LoRA's base).

    Each RMSNorm keeps its input in fp32 (4h) and its inverse RMS (4); a trained one also its input cast back (e x h)
    and, for the trained linear layers it feeds, its output (e x h). Attention (SDPA, flash or varlen: no s x s
    matrix) keeps the rotated q and k, v, its output, which o_proj reads as a view (e(2h + 2k)), and the fp32
    log-sum-exp per head (4a). The MLP keeps gate, SiLU(gate) and up (e x 3f), and their product for a trained
    down_proj (e x f). LoRA on the seven linear layers adds each one's input in the adapters' dtype a' (PEFT casts
    it to the fp32 adapters; with dropout, the dropped input and its mask of `mask_bytes`: a bool on CUDA, a' on a
    CPU), and the r values of its `lora_A` output: (a' + mask)(6h + f) + 7a'r.
    """
    h, k, f = counts.hidden_size, counts.kv_size, counts.intermediate_size
    layer = 2 * (4 * h + 4) + 4 * counts.heads + element * (2 * h + 2 * k + 3 * f)
    if trains:
        layer += element * (4 * h + f)
    if counts.lora_rank:
        adapter, mask = counts.adapter_element, mask_bytes if lora_dropout else 0
        layer += (adapter + mask) * (6 * h + f) + 7 * adapter * counts.lora_rank
    return layer


def activation_bytes(
    counts: Inventory,
    tokens: int,
    image_tokens: int,
    checkpointing: bool,
    element: int,
    trains: bool,
    lora_dropout: bool,
    eager: bool,
) -> int:
    """Estimated bytes autograd keeps for a micro-batch of `tokens` tokens, `image_tokens` of them from images.

    Without gradient checkpointing every decoder layer keeps `layer_bytes` per token; with it, each layer keeps its
    input (e x h) and one layer at a time is recomputed in full during the backward pass (A once). Eager attention
    adds its fp32 probabilities and their cast, (4 + e) x heads x s per token and layer. The final RMSNorm keeps
    4h + 2e x h; TRL's fused LM head computes the loss in chunks and keeps no logits, only a few values per token
    (log-probability, entropy, top-1, label: 18 bytes); the projector keeps its input and its GELU's input and
    output per image token, e(v + 2h) with v its input width. The vision tower is frozen and gets no gradient, so it
    keeps nothing.
    """
    h = counts.hidden_size
    layer = layer_bytes(counts, element, trains, lora_dropout)
    kept = tokens * (counts.layers * element * h + layer if checkpointing else counts.layers * layer)
    if eager:  # s x s per head, for one sample of `tokens` tokens
        kept += (1 if checkpointing else counts.layers) * (4 + element) * counts.heads * tokens * tokens
    kept += tokens * (4 * h + 2 * element * h + 18)
    return kept + image_tokens * element * (counts.projector_input_size + 2 * h)


def fit_batch(
    fixed: float, per_sample: int, gpu_memory_gib: float, global_batch: int | None, gpus: int, accumulation: int
) -> tuple[int, int] | None:
    """The largest per-device batch that fits `USABLE` of the GPU and divides the global batch, with its accumulation
    (per-device batch x GPUs x accumulation = global batch, as `train.fill_global_batch` derives it)."""
    budget = USABLE * gpu_memory_gib * GIB - fixed
    largest = int(budget // per_sample) if budget > 0 else 0
    if global_batch is None:
        return (largest, accumulation) if largest else None
    for batch in range(min(largest, global_batch // gpus), 0, -1):
        if global_batch % (batch * gpus) == 0:
            return batch, global_batch // (batch * gpus)
    return None


def plan(
    script_args: LlavaScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    gpus: int = 1,
    gpu_memory_gib: float = 80.0,
    strategy: str = "ddp",
) -> dict:
    """The memory plan of a parsed recipe: parameter counts, per-GPU bytes of each part, activations per sample
    length with and without gradient checkpointing, and the per-device batch that fits."""
    stage = check_arguments(script_args, training_args, model_args)
    counts, notes = inventory(script_args, model_args, stage, zero3=strategy == "zero3")
    mixed_precision = bool(training_args.bf16 or training_args.fp16)
    parts = state_bytes(counts, strategy, gpus, mixed_precision)
    fixed = sum(parts.values())
    element = getattr(torch, counts.dtype).itemsize
    max_length = training_args.max_length or 2048
    lengths = [counts.image_tokens + text for text in TEXT_TOKENS if counts.image_tokens + text < max_length]
    lengths.append(max_length)
    dropout = stage.uses_lora and model_args.lora_dropout > 0
    eager = model_args.attn_implementation == "eager"
    trains = stage.trains_language_model
    activations = {
        length: {
            checkpointing: activation_bytes(
                counts, length, counts.image_tokens, checkpointing, element, trains, dropout, eager
            )
            for checkpointing in (False, True)
        }
        for length in lengths
    }
    fits = {}
    for checkpointing in (False, True):
        found = fit_batch(
            fixed,
            activations[max_length][checkpointing],
            gpu_memory_gib,
            script_args.global_batch_size,
            gpus,
            training_args.gradient_accumulation_steps,
        )
        fits[checkpointing] = {"per_device_batch": found[0], "accumulation": found[1]} if found else None
    return {
        "stage": stage.name,
        "strategy": strategy,
        "gpus": gpus,
        "gpu_memory_gib": gpu_memory_gib,
        "dtype": counts.dtype,
        "counts": asdict(counts),
        "bytes": parts,
        "activations": {str(length): {"off": a[False], "on": a[True]} for length, a in activations.items()},
        "max_length": max_length,
        "global_batch_size": script_args.global_batch_size,
        "recipe_gradient_checkpointing": training_args.gradient_checkpointing,
        "fits": {"off": fits[False], "on": fits[True]},
        "notes": notes,
    }


STRATEGY_NAMES = {"ddp": "DDP", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3", "fsdp": "FSDP full shard"}
PART_NAMES = {
    "weights": "weights",
    "gradients": "gradients",
    "optimizer": "optimizer states",
    "ddp_buckets": "DDP gradient buckets",
}


def render(result: dict, recipe: str) -> str:
    """The plan as a plain-text table, in GiB."""
    counts = result["counts"]
    lines = [
        f"{recipe}: {result['stage']}, {result['dtype']} weights, {STRATEGY_NAMES[result['strategy']]} on "
        f"{result['gpus']} GPU(s) of {result['gpu_memory_gib']:g} GiB",
        f"parameters {counts['parameters']:,}, trainable {counts['trainable']:,}",
        "",
        f"{'per GPU':<44}{'GiB':>9}",
    ]
    lines += [f"  {PART_NAMES[name]:<42}{value / GIB:>9.2f}" for name, value in result["bytes"].items()]
    lines.append(f"  {'total before activations':<42}{sum(result['bytes'].values()) / GIB:>9.2f}")
    lines += ["", f"{'activations per sample (estimate)':<44}{'GiB':>9}{'with checkpointing':>21}"]
    for length, values in result["activations"].items():
        image = counts["image_tokens"]
        label = f"{length} tokens ({image} image + {int(length) - image} text)"
        lines.append(f"  {label:<42}{values['off'] / GIB:>9.2f}{values['on'] / GIB:>21.2f}")
    lines.append("")
    batch = result["global_batch_size"]
    for key, name in (("off", "without"), ("on", "with")):
        fit = result["fits"][key]
        if fit is None:
            lines.append(
                f"{name} gradient checkpointing: no per-device batch of samples of {result['max_length']} tokens fits"
                + (f" and divides the global batch {batch}" if batch else "")
            )
            continue
        total = f" = global batch {batch}" if batch else ""
        lines.append(
            f"{name} gradient checkpointing: per_device_train_batch_size {fit['per_device_batch']} x "
            f"{result['gpus']} GPU(s) x gradient_accumulation_steps {fit['accumulation']}{total}"
        )
    lines.append(f"(samples of max_length {result['max_length']} tokens, in {USABLE:.0%} of each GPU's memory)")
    lines += result["notes"]
    return "\n".join(lines)


def cli(argv: list[str]) -> None:
    """`llava plan`: its own flags, then any recipe field as `--FIELD VALUE` (`--vision_tower DIR`, ...)."""
    parser = argparse.ArgumentParser(
        prog="llava plan",
        description="Per-GPU memory of a training recipe: weights, gradients, optimizer states (exact) and "
        "activations (estimated), and the per-device batch that fits. Recipe fields may follow as --FIELD VALUE "
        "(e.g. --vision_tower DIR --language_model DIR: local folders holding the backbones' config.json).",
    )
    parser.add_argument("--config", required=True, help="a recipe: shipped name or YAML path")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the run is spread over (default: %(default)s)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default: %(default)s)")
    sharding = parser.add_mutually_exclusive_group()
    sharding.add_argument("--zero", type=int, choices=(0, 2, 3), default=0, help="DeepSpeed ZeRO stage (0: DDP)")
    sharding.add_argument("--fsdp", action="store_true", help="FSDP full shard (accelerate, mixed precision)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (bytes)")
    args, rest = parser.parse_known_args(argv)
    if args.gpus < 1 or args.gpu_memory <= 0:
        print("llava plan: --gpus must be at least 1 and --gpu-memory positive.", file=sys.stderr)
        raise SystemExit(2)
    strategy = "fsdp" if args.fsdp else {0: "ddp", 2: "zero2", 3: "zero3"}[args.zero]
    try:
        # `use_cpu` only lets a bf16 recipe parse on a machine without a GPU: the plan is for `--gpus` GPUs.
        arguments = parse(["--config", args.config, *rest, "--use_cpu", "true"])
        result = plan(*arguments, gpus=args.gpus, gpu_memory_gib=args.gpu_memory, strategy=strategy)
    except (SetupError, ValueError, OSError) as error:
        print(f"llava plan: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2) if args.json else render(result, args.config))


__all__ = ["Inventory", "activation_bytes", "cli", "fit_batch", "four_bit_bytes", "inventory", "plan", "state_bytes"]
