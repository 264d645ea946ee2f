"""Tiny stand-ins for CLIP and Vicuna, for the tests: no pretrained weights exist here.

They are ordinary Transformers checkpoints (a `CLIPModel` or `SiglipVisionModel`, a `LlamaForCausalLM` or
`Qwen2ForCausalLM`, and a byte-complete BPE tokenizer trained on the given texts), so everything downstream runs the
same code paths a real CLIP-L/336 + Vicuna-7B run does.
"""

from pathlib import Path

from transformers import (
    CLIPConfig,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.llava import LlavaImageProcessorPil

# Transformers' ModelTester sizes: width 32, 2 layers, 30 px images in 6 px patches (25 patches + CLS).
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 30,
    "patch_size": 6,
}
TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def save_tiny_vision(path: str | Path, family: str = "clip", seed: int = 0) -> Path:
    """Saves a tiny vision checkpoint with its preprocessor config: a full `CLIPModel` or a `SiglipVisionModel`."""
    import torch

    torch.manual_seed(seed)
    if family == "clip":
        text = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
        model = CLIPModel(CLIPConfig(vision_config=TINY_VISION, text_config=text, projection_dim=16))
    elif family == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**TINY_VISION))
    else:
        raise ValueError(f"Unknown vision family {family!r}: expected 'clip' or 'siglip'.")
    model.save_pretrained(path)
    size = TINY_VISION["image_size"]
    LlavaImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        path
    )
    return Path(path)


def save_tiny_language_model(
    path: str | Path, tokenizer: PreTrainedTokenizerFast, family: str = "llama", seed: int = 0
) -> Path:
    """Saves a tiny causal LM (`llama` or `qwen2`) sized to `tokenizer`, with the tokenizer beside it."""
    import torch

    torch.manual_seed(seed)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **TINY_TEXT, **special))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), **TINY_TEXT, **special))
    else:
        raise ValueError(f"Unknown language model family {family!r}: expected 'llama' or 'qwen2'.")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


__all__ = ["TINY_TEXT", "TINY_VISION", "save_tiny_language_model", "save_tiny_vision"]
