"""The projector-only artifact of stage 1 (the original's `mm_projector.bin`, here safetensors + its config).

A few MB instead of a full checkpoint: stage 2 starts from the two backbones plus this file, as the original's
`--pretrain_mm_mlp_adapter` does. Its config records what the weights fit, so a projector trained for another
projector type or other backbone widths is refused with a message instead of failing inside `load_state_dict`.
"""

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from hub_cards.model_card import PROJECTOR_CONFIG_NAME as CONFIG_NAME
from hub_cards.model_card import PROJECTOR_WEIGHTS_NAME as WEIGHTS_NAME
from modeling_llava import LlavaPluginForConditionalGeneration


def projector_fingerprint(model: LlavaPluginForConditionalGeneration) -> dict:
    config = model.config
    return {
        "projector_type": config.projector_type,
        "vision_hidden_size": config.vision_config.hidden_size,
        "text_hidden_size": config.text_config.hidden_size,
        "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "multimodal_projector_bias": config.multimodal_projector_bias,
    }


def save_projector(model: LlavaPluginForConditionalGeneration, directory: str | Path, **provenance) -> Path:
    """Writes `mm_projector.safetensors` and `projector_config.json` (plus any provenance, e.g. the backbones)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.model.multi_modal_projector.state_dict().items()
    }
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps({**projector_fingerprint(model), **provenance}, indent=2) + "\n")
    return directory / WEIGHTS_NAME


def load_projector(model: LlavaPluginForConditionalGeneration, path: str | Path) -> None:
    """Loads a stage-1 projector (a directory holding the two files, or the weights file) into `model`."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{str(directory)!r} holds no projector artifact ({WEIGHTS_NAME} + {CONFIG_NAME}).")
    saved = json.loads((directory / CONFIG_NAME).read_text())
    expected = projector_fingerprint(model)
    mismatches = [
        f"{key}: artifact {saved.get(key)!r}, model {value!r}"
        for key, value in expected.items()
        if saved.get(key) != value
    ]
    if mismatches:
        raise ValueError(f"The projector in {str(directory)!r} does not fit this model: " + "; ".join(mismatches))
    weights = load_file(directory / WEIGHTS_NAME)
    model.model.multi_modal_projector.load_state_dict(weights, strict=True)


__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load_projector", "projector_fingerprint", "save_projector"]
