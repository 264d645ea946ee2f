"""What each LLaVA training stage trains: the one place that freezes and unfreezes.

Stage 1 (feature alignment) trains the projector alone; stage 2 (visual instruction tuning) trains the projector and
the LLM; `lora`/`qlora` train LoRA adapters on every linear layer of the LLM plus the whole projector. The vision tower
is frozen, as in the LLaVA-1.5 paper, unless a stage-2 recipe trains it (`train_vision_tower`, as LLaVA-1.6 did).

LLaVA-NeXT's `image_newline` goes with the language model, as in LLaVA-NeXT's `llava/train/train.py`: its
`mm_tunable_parts` unfreeze under `mm_language_model` every parameter outside the tower and the projector, so stage 2
trains it, and stage 1 (`mm_mlp_adapter` alone) and LoRA (only the adapters under `mm_language_model`) leave it as is.
"""

from dataclasses import dataclass, replace

from peft import LoraConfig
from torch import nn

from hub_cards.model_card import PARTS, part_of
from modeling_llava import LlavaNextPluginForConditionalGeneration, LlavaPluginForConditionalGeneration


@dataclass(frozen=True)
class Stage:
    name: str
    template: str  # the chat template the stage's data is rendered with
    description: str  # what the stage trains, as the model card says it
    trains_language_model: bool
    uses_lora: bool = False
    quantized: bool = False
    trains_vision_tower: bool = False

    def with_vision_tower(self) -> "Stage":
        """This stage with the vision tower trained too: a full fine-tune only (`stage2`), as LLaVA-1.6's recipe."""
        if not self.trains_language_model:
            raise ValueError(
                f"train_vision_tower: stage {self.name} cannot train the vision tower; LLaVA-1.6 trained it in the "
                "full fine-tune only (stage2, mm_tunable_parts=mm_vision_tower,mm_mlp_adapter,mm_language_model)."
            )
        description = self.description.replace(
            "the vision tower is frozen.", "the vision tower is trained too (LLaVA-1.6)."
        )
        return replace(self, trains_vision_tower=True, description=description)


STAGES = {
    "stage1": Stage(
        "stage1",
        template="plain",
        description="Stage 1 (feature alignment): the projector alone is trained on image-caption pairs; the vision "
        "tower and the language model are frozen.",
        trains_language_model=False,
    ),
    "stage2": Stage(
        "stage2",
        template="vicuna_v1",
        description="Stage 2 (visual instruction tuning): the projector and the language model are trained on "
        "instruction conversations; the vision tower is frozen.",
        trains_language_model=True,
    ),
    "lora": Stage(
        "lora",
        template="vicuna_v1",
        description="Stage 2 with LoRA: adapters on every linear layer of the language model and the whole projector "
        "are trained on instruction conversations; the vision tower and the LLM's own weights are frozen.",
        trains_language_model=False,
        uses_lora=True,
    ),
    "qlora": Stage(
        "qlora",
        template="vicuna_v1",
        description="Stage 2 with QLoRA: as LoRA, on a language model loaded in 4-bit NF4 (bitsandbytes).",
        trains_language_model=False,
        uses_lora=True,
        quantized=True,
    ),
}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"Unknown stage {name!r}: expected one of {', '.join(STAGES)}.")
    return STAGES[name]


def apply_freeze(
    model: LlavaPluginForConditionalGeneration | LlavaNextPluginForConditionalGeneration, stage: Stage
) -> None:
    """Sets `requires_grad` for a full (non-LoRA) model; PEFT handles the LoRA stages on top of an all-frozen model."""
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(not stage.uses_lora)
    if stage.trains_language_model:
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
        if isinstance(model, LlavaNextPluginForConditionalGeneration):  # trained with the LLM (module docstring)
            model.model.image_newline.requires_grad_(True)
    if stage.trains_vision_tower:
        _unfreeze_vision_tower(model)


def _unfreeze_vision_tower(model: LlavaPluginForConditionalGeneration | LlavaNextPluginForConditionalGeneration):
    """The vision tower's parameters on the way to the features the projector reads: the layers up to the deepest
    `vision_feature_layer`. The layers above it, the final norm and a pooling head never reach the loss, and a
    trainable parameter without a gradient stops DDP (with gradient checkpointing, `find_unused_parameters` is off)."""
    tower = model.model.vision_tower
    tower.requires_grad_(True)
    vision_model = getattr(tower, "vision_model", tower)  # CLIPVisionModel, SiglipVisionModel
    layers = getattr(getattr(vision_model, "encoder", None), "layers", None)
    if layers is None:  # a tower of another layout: trained whole
        return
    feature_layers = model.config.vision_feature_layer
    feature_layers = [feature_layers] if isinstance(feature_layers, int) else feature_layers
    # hidden_states[i] is the output of layer i - 1 (hidden_states[0] the embeddings): layers from the deepest on idle.
    deepest = max(index % (len(layers) + 1) for index in feature_layers)
    for layer in layers[deepest:]:
        layer.requires_grad_(False)
    for name in ("post_layernorm", "head"):
        if isinstance(getattr(vision_model, name, None), nn.Module):
            getattr(vision_model, name).requires_grad_(False)


def lora_config(
    model: LlavaPluginForConditionalGeneration,
    r: int,
    alpha: int,
    dropout: float,
    use_rslora: bool = False,
    use_dora: bool = False,
) -> LoraConfig:
    """LoRA on every linear layer of the LLM (not the head), the projector trained in full, as LLaVA's LoRA recipe.

    Target names are full module paths, so the vision tower's linear layers, which share names like `q_proj`, are
    never adapted.
    """
    targets = [
        f"model.language_model.{name}"
        for name, module in model.model.language_model.named_modules()
        if isinstance(module, nn.Linear)
    ]
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        use_rslora=use_rslora,
        use_dora=use_dora,
        target_modules=targets,
        modules_to_save=["multi_modal_projector"],
        task_type="CAUSAL_LM",
    )


def lora_config_of_run(model: LlavaPluginForConditionalGeneration, model_args) -> LoraConfig:
    """`lora_config` with the LoRA fields of a run's `ModelConfig` (`lora_r`, `lora_alpha`, ...): what `llava train`
    applies and `llava plan` counts."""
    return lora_config(
        model,
        model_args.lora_r,
        model_args.lora_alpha,
        model_args.lora_dropout,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
    )


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts per part, for the run's log."""
    parts = dict.fromkeys(PARTS, 0)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            part = part_of(name, default="other")
            parts[part] = parts.get(part, 0) + parameter.numel()
    return parts


__all__ = ["STAGES", "Stage", "apply_freeze", "get_stage", "lora_config", "lora_config_of_run", "trainable_summary"]
