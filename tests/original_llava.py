"""The original LLaVA's prompt rendering, `tokenizer_image_token` and label masks, written from its description on
SentencePiece itself (not on transformers' tokenizers): the reference that the tokenization and conversion tests
compare this project's ids and labels with; and `save_original`, a tiny checkpoint as the original's trainer
writes it.

The conversation is rendered as `conv_vicuna_v1.get_prompt()` renders it (an empty turn as a bare `ROLE:`), each
`<image>` moved to the start of its turn (`preprocess_multimodal`), then tokenized as `tokenizer_image_token` does:
BOS once, every piece between `<image>` markers as a fresh text, read as the original's slow Llama tokenizer reads it
(`</s>`/`<s>` are special tokens; after one, a legacy tokenizer starts a fresh text, with SentencePiece's `▁` prefix,
a non-legacy one continues without it). Labels: per round, the user part up to `ASSISTANT:` is masked and the answer
with its `</s>` supervised; for `plain`, the image is masked and the caption with its newline supervised.
"""

import json
import re
import shutil
from pathlib import Path

import sentencepiece
import torch
from huggingface_hub import save_torch_state_dict
from sentencepiece import sentencepiece_model_pb2
from transformers import CLIPVisionModel, LlamaForCausalLM

from modeling_llava.chat_templates import VICUNA_V1_SYSTEM

IGNORE = -100
SPECIAL = re.compile(r"(</s>|<s>)")


class OriginalLlava:
    """The original's rendering, `tokenizer_image_token` and label masks, on SentencePiece (see module docstring)."""

    def __init__(self, proto: bytes, legacy: bool, image_token_id: int, image_seq_length: int):
        self.fresh = sentencepiece.SentencePieceProcessor(model_proto=proto)
        model = sentencepiece_model_pb2.ModelProto()
        model.ParseFromString(proto)
        model.normalizer_spec.add_dummy_prefix = False
        self.continued = sentencepiece.SentencePieceProcessor(model_proto=model.SerializeToString())
        self.legacy = legacy
        self.image = [image_token_id] * image_seq_length
        self.special = {"<s>": self.fresh.bos_id(), "</s>": self.fresh.eos_id()}

    @staticmethod
    def multimodal(value: str) -> str:
        """`preprocess_multimodal`: the image to the start of its turn. The original knows one image per sample; a
        turn with several puts each first the same way (`<image>\\n` apiece)."""
        if "<image>" not in value:
            return value
        return ("<image>\n" * value.count("<image>") + value.replace("<image>", "").strip()).strip()

    def vicuna_v1_segments(self, conversations: list[dict], generation_prompt: bool) -> list[tuple[str, bool]]:
        """`conv_vicuna_v1.get_prompt()`, cut into (text, supervised) segments: answers and their `</s>` are.

        Cuts fall before a space or at a special token, where SentencePiece never merges across, and neighbours
        with the same supervision are joined, so the cuts change no id (the test checks it against the whole text).
        """
        segments, separator = [(VICUNA_V1_SYSTEM, False)], " "
        for index, turn in enumerate(conversations):
            role, value = ("USER", "ASSISTANT")[index % 2], self.multimodal(turn["value"])
            if not value:
                segments.append((f"{separator}{role}:", False))
                separator = ""
            elif role == "USER":
                segments.append((f"{separator}USER: {value}", False))
                separator = " "
            else:
                segments += [(f"{separator}ASSISTANT:", False), (f" {value}</s>", True)]
                separator = ""
        if generation_prompt:
            segments.append((f"{separator}ASSISTANT:", False))
        joined = [segments[0]]
        for text, supervised in segments[1:]:
            if supervised == joined[-1][1]:
                joined[-1] = (joined[-1][0] + text, supervised)
            else:
                joined.append((text, supervised))
        return joined

    @staticmethod
    def plain_segments(conversations: list[dict]) -> list[tuple[str, bool]]:
        """`preprocess_plain`: the image alone, then the caption and the separator `\\n`."""
        return [("<image>", False), (conversations[1]["value"] + "\n", True)]

    def encode(self, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
        """Ids and labels. Each `<image>`-separated piece is a fresh text; inside it, the text after a special token
        is fresh (legacy) or continues (non-legacy), any other segment boundary continues the text."""
        ids, labels = [self.fresh.bos_id()], [IGNORE]
        fresh = True
        for text, supervised in segments:
            for index, piece in enumerate(text.split("<image>")):
                if index:
                    ids += self.image
                    labels += [IGNORE] * len(self.image)
                    fresh = True
                for part in SPECIAL.split(piece):
                    if part in self.special:
                        new, fresh = [self.special[part]], self.legacy
                    elif part:
                        new, fresh = (self.fresh if fresh else self.continued).encode(part), False
                    else:
                        continue
                    ids += new
                    labels += new if supervised else [IGNORE] * len(new)
        return ids, labels

    def tokenizer_image_token(self, prompt: str) -> list[int]:
        """The original's function itself: BOS, then every piece tokenized alone, one image run between pieces."""
        ids = [self.fresh.bos_id()]
        for index, piece in enumerate(prompt.split("<image>")):
            if index:
                ids += self.image
            ids += self.encode([(piece, False)])[0][1:]
        return ids


def save_original(
    folder: Path,
    checkpoints,
    projector_type: str,
    dtype=torch.float32,
    vision: str | None = None,
    text: str | None = None,
    tower: CLIPVisionModel | None = None,
    select_layer: int = -2,
    pad: bool = True,
    safetensors: bool = True,
    model_type: str = "llava_llama",
):
    """A tiny checkpoint as the original repository saves it: Llama weights + mm_projector, the tower named.

    `text` is the Llama (weights and tokenizer files) it starts from; the session's BPE Llama by default. With
    `tower`, its weights are saved too, as the original's trainer writes them (`model.vision_tower.vision_tower.*`,
    with the `position_ids` buffer the transformers of its day saved, as also each layer's rotary `inv_freq`).
    LLaVA v1 is `projector_type="linear", select_layer=-1, pad=False`; LLaVA-1.5 the defaults. `safetensors=False`
    writes sharded `pytorch_model-*.bin` files, as the original's older checkpoints are. `model_type` is the config
    class's name: `llava` until LLaVA-1.5, `llava_llama` / `llava_mistral` from 1.6 on.
    """
    text = text or checkpoints["llama"]
    llm = LlamaForCausalLM.from_pretrained(text, dtype=torch.float32)
    torch.manual_seed(1)
    width = llm.config.hidden_size
    if projector_type == "linear":
        projector = {
            "model.mm_projector.weight": torch.randn(width, 32),
            "model.mm_projector.bias": torch.randn(width),
        }
    else:
        projector = {
            "model.mm_projector.0.weight": torch.randn(width, 32) / 4,
            "model.mm_projector.0.bias": torch.randn(width) / 4,
            "model.mm_projector.2.weight": torch.randn(width, width) / 4,
            "model.mm_projector.2.bias": torch.randn(width) / 4,
        }
    weights = {name: tensor.to(dtype) for name, tensor in {**llm.state_dict(), **projector}.items()}
    if tower is not None:
        prefix = "model.vision_tower.vision_tower.vision_model."  # CLIP's weight names in the original's day
        weights |= {prefix + k.removeprefix("vision_model."): v.to(dtype) for k, v in tower.state_dict().items()}
        positions = tower.config.image_size // tower.config.patch_size
        weights["model.vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(
            positions**2 + 1
        )[None]
        for layer in range(llm.config.num_hidden_layers):
            weights[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    folder.mkdir(parents=True)
    save_torch_state_dict(weights, folder, max_shard_size="20KB", safe_serialization=safetensors)
    config = llm.config.to_dict() | {
        "model_type": model_type,
        "architectures": ["LlavaMistralForCausalLM" if model_type == "llava_mistral" else "LlavaLlamaForCausalLM"],
        "mm_vision_tower": vision or checkpoints["clip"],
        "mm_projector_type": projector_type,
        "mm_hidden_size": 32,
        "mm_vision_select_layer": select_layer,
        "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad" if pad else "square",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "tune_mm_mlp_adapter": False,
    }
    (folder / "config.json").write_text(json.dumps(config))
    for tokenizer_file in Path(text).glob("tokenizer*"):
        shutil.copy(tokenizer_file, folder / tokenizer_file.name)
    return folder


__all__ = ["IGNORE", "OriginalLlava", "save_original"]
