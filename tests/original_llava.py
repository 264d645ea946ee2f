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
`conv_llava_v1` is `conv_vicuna_v1` with its own system prompt. For `v0` (the paper's format), `v0_training` follows
`preprocess`'s `--version v0` path (`_add_speaker_and_signal`, then `_mask_targets` walking the parts by their
lengths tokenized alone) and `v0_prompt` is `conv_vicuna_v0.get_prompt()`, the answering prompt. Both were checked
once against the original's own `conversation.py` and `train.py` (commits 8959d5c and 053c284) run on the same
conversations and tokenizer.
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
# The original's `conv_llava_v1` and `conv_vicuna_v0` (`conv_v1_2` in the paper's code) system prompt.
HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# `conv_vicuna_v0.messages`: the example exchange its `get_prompt()` writes before the conversation (offset 2).
V0_EXAMPLE = (
    ("Human", "What are the key differences between renewable and non-renewable energy sources?"),
    (
        "Assistant",
        "Renewable energy sources are those that can be replenished naturally in a relatively short amount of time, "
        "such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the other hand, are "
        "finite and will eventually be depleted, such as coal, oil, and natural gas. Here are some key differences "
        "between renewable and non-renewable energy sources:\n1. Availability: Renewable energy sources are "
        "virtually inexhaustible, while non-renewable energy sources are finite and will eventually run out.\n2. "
        "Environmental impact: Renewable energy sources have a much lower environmental impact than non-renewable "
        "sources, which can lead to air and water pollution, greenhouse gas emissions, and other negative effects.\n"
        "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically have lower "
        "operational costs than non-renewable sources.\n4. Reliability: Renewable energy sources are often more "
        "reliable and can be used in more remote locations than non-renewable sources.\n5. Flexibility: Renewable "
        "energy sources are often more flexible and can be adapted to different situations and needs, while "
        "non-renewable sources are more rigid and inflexible.\n6. Sustainability: Renewable energy sources are more "
        "sustainable over the long term, while non-renewable sources are not, and their depletion can lead to "
        "economic and social instability.\n",
    ),
)


class OriginalLlava:
    """The original's rendering, `tokenizer_image_token` and label masks, on SentencePiece (see module docstring)."""

    def __init__(
        self,
        proto: bytes,
        legacy: bool,
        image_token_id: int,
        image_seq_length: int,
        specials: dict[str, int] | None = None,
        bos: bool = True,
    ):
        """`specials`: the tokenizer's special tokens besides `<s>` and `</s>` (ChatML's), by id; `bos`: whether the
        tokenizer opens a text with its BOS (Yi's does not)."""
        self.fresh = sentencepiece.SentencePieceProcessor(model_proto=proto)
        model = sentencepiece_model_pb2.ModelProto()
        model.ParseFromString(proto)
        model.normalizer_spec.add_dummy_prefix = False
        self.continued = sentencepiece.SentencePieceProcessor(model_proto=model.SerializeToString())
        self.legacy = legacy
        self.image = [image_token_id] * image_seq_length
        self.special = {"<s>": self.fresh.bos_id(), "</s>": self.fresh.eos_id(), **(specials or {})}
        self.special_pattern = re.compile("(" + "|".join(map(re.escape, self.special)) + ")")
        self.bos = [self.fresh.bos_id()] if bos else []

    @staticmethod
    def multimodal(value: str) -> str:
        """`preprocess_multimodal`: the image to the start of its turn. The original knows one image per sample; a
        turn with several puts each first the same way (`<image>\\n` apiece)."""
        if "<image>" not in value:
            return value
        return ("<image>\n" * value.count("<image>") + value.replace("<image>", "").strip()).strip()

    def vicuna_v1_segments(
        self, conversations: list[dict], generation_prompt: bool, system: str = VICUNA_V1_SYSTEM
    ) -> list[tuple[str, bool]]:
        """`conv_vicuna_v1.get_prompt()` (`conv_llava_v1`'s with `system=HUMAN_SYSTEM`), cut into (text, supervised)
        segments: answers and their `</s>` are, as `preprocess_v1` masks.

        Cuts fall before a space or at a special token, where SentencePiece never merges across, and neighbours
        with the same supervision are joined, so the cuts change no id (the test checks it against the whole text).
        """
        segments, separator = [(system, False)], " "
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

    def v0_prompt(self, conversations: list[dict]) -> str:
        """`conv_vicuna_v0.get_prompt()` after appending the turns (each image moved to its turn's start) and an empty
        assistant turn (`SeparatorStyle.SINGLE`, sep `###`): the system prompt, the example exchange, each turn as
        `Role: value###`, an empty one as `Role:`."""
        roles = ("Human", "Assistant")
        turns = [(roles[index % 2], self.multimodal(turn["value"])) for index, turn in enumerate(conversations)]
        prompt = HUMAN_SYSTEM + "###"
        for role, value in [*V0_EXAMPLE, *turns, ("Assistant", None)]:
            prompt += f"{role}: {value}###" if value else f"{role}:"
        return prompt

    def v0_training(self, conversations: list[dict], image_in_place: bool) -> tuple[list[int], list[int]]:
        """Ids and labels of `preprocess` for `--version v0`: `_add_speaker_and_signal` then `_mask_targets`.

        The text is `system + "\\n\\n"`, each turn as `"### " + role + ": " + value + "\\n"`, then `"### "`. Each
        part is tokenized alone as the original does (`tokenizer_image_token`, one id per image, BOS included) for
        its length; `_mask_targets` masks the header, then walks the parts by those lengths, masking a human part
        but for its first two tokens and leaving an assistant part, and what follows the last part, supervised.
        `image_in_place` keeps `<image>` where the turn wrote it (the paper's code), else it moves to the turn's
        start (`preprocess_multimodal` from v1.0.0).
        """
        header = HUMAN_SYSTEM + "\n\n"
        parts = [
            "### "
            + ("Human", "Assistant")[index % 2]
            + ": "
            + (turn["value"] if image_in_place else self.multimodal(turn["value"]))
            + "\n"
            for index, turn in enumerate(conversations)
        ]
        conversation = header + "".join(parts) + "### "

        def narrow_ids(text: str) -> list[int | None]:  # tokenizer_image_token's ids, None for each image's one id
            ids = [self.fresh.bos_id()]
            for index, piece in enumerate(text.split("<image>")):
                ids += [None] if index else []
                ids += self.encode([(piece, False)])[0][1:]
            return ids

        narrow = narrow_ids(conversation)
        target = list(narrow)
        cursor = len(narrow_ids(header))
        target[:cursor] = [IGNORE] * len(target[:cursor])
        for index, part in enumerate(parts):
            part_length = len(narrow_ids(part))
            if index % 2 == 0:  # a human part
                target[cursor + 2 : cursor + part_length] = [IGNORE] * len(target[cursor + 2 : cursor + part_length])
            cursor += part_length
        ids, labels = [], []
        for token, label in zip(narrow, target, strict=True):  # each image's id widened to its features
            ids += self.image if token is None else [token]
            labels += [IGNORE] * len(self.image) if token is None else [label]
        return ids, labels

    def encode(self, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
        """Ids and labels. Each `<image>`-separated piece is a fresh text; inside it, the text after a special token
        is fresh (legacy) or continues (non-legacy), any other segment boundary continues the text."""
        ids, labels = list(self.bos), [IGNORE] * len(self.bos)
        fresh = True
        for text, supervised in segments:
            for index, piece in enumerate(text.split("<image>")):
                if index:
                    ids += self.image
                    labels += [IGNORE] * len(self.image)
                    fresh = True
                for part in self.special_pattern.split(piece):
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
        ids = list(self.bos)
        for index, piece in enumerate(prompt.split("<image>")):
            if index:
                ids += self.image
            ids += self.encode([(piece, False)])[0][len(self.bos) :]
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


# The tokens the paper's training appended to LLaMA's vocabulary, in its order: `[PAD]` (`train.py`'s
# `smart_tokenizer_and_embedding_resize` for `--version v0`), then `initialize_vision_tokenizer`'s `<im_patch>`, and
# `<im_start>`, `<im_end>` with `mm_use_im_start_end`.
PAPER_TOKENS = ("[PAD]", "<im_patch>", "<im_start>", "<im_end>")
PAPER_SPLIT = re.compile("(" + "|".join(map(re.escape, ("</s>", "<s>", *PAPER_TOKENS))) + ")")


def paper_prompt_ids(spm: sentencepiece.SentencePieceProcessor, prompt: str, image_seq_length: int) -> list[int]:
    """The ids the paper's `model_vqa.py` / `run_llava.py` (April-June 2023) give `prompt`, whose `<image>` stands
    for the question's image: it writes `<im_start>` + `image_seq_length` x `<im_patch>` + `<im_end>` in its place and
    runs `tokenizer([prompt])`: BOS, the added tokens (ids after LLaMA's, in `PAPER_TOKENS`' order) split out, every
    text between them a fresh SentencePiece text, as its LLaMA tokenizer (tokenizer config without `legacy`) reads
    text after a special token."""
    added = {token: spm.vocab_size() + index for index, token in enumerate(PAPER_TOKENS)}
    special = {"<s>": spm.bos_id(), "</s>": spm.eos_id(), **added}
    expanded = prompt.replace("<image>", "<im_start>" + "<im_patch>" * image_seq_length + "<im_end>")
    ids = [spm.bos_id()]
    for part in PAPER_SPLIT.split(expanded):
        ids += [special[part]] if part in special else spm.encode(part) if part else []
    return ids


def save_paper_original(folder: Path, clip: str, text: str, seed: int = 1, dtype=torch.float32) -> Path:
    """A tiny checkpoint of the paper's (`LLaVA-13b-v0` once its delta is applied), as its `train.py` saved it.

    The Llama at `text` (SentencePiece `tokenizer.model` only) with four rows appended to `embed_tokens` and `lm_head`
    for `PAPER_TOKENS` (random: trained), a linear `model.mm_projector` (`use_mm_proj`), no vision tower weights (the
    paper's model held its CLIP in a list, outside the state dict) but the rotary `inv_freq` buffers the
    transformers of its day saved; the config as `LlavaLlamaForCausalLM` wrote it (`"model_type": "llava"`, the
    `mm_*` fields, `mm_use_im_start_end`, `tune_mm_mlp_adapter`, `sep_image_conv_front`), and the tokenizer files of
    its day: `tokenizer.model`, a `tokenizer_config.json` without `legacy`, `special_tokens_map.json` with the
    `[PAD]` pad token, `added_tokens.json`.
    """
    llm = LlamaForCausalLM.from_pretrained(text, dtype=torch.float32)
    vocab, width = llm.config.vocab_size, llm.config.hidden_size
    torch.manual_seed(seed)
    weights = dict(llm.state_dict())
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[name] = torch.cat([weights[name], torch.randn(len(PAPER_TOKENS), width) / 4])
    weights |= {"model.mm_projector.weight": torch.randn(width, 32) / 4, "model.mm_projector.bias": torch.randn(width)}
    for layer in range(llm.config.num_hidden_layers):
        weights[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    folder.mkdir(parents=True)
    weights = {name: tensor.to(dtype) for name, tensor in weights.items()}
    save_torch_state_dict(weights, folder, max_shard_size="20KB", safe_serialization=False)
    config = llm.config.to_dict() | {
        "model_type": "llava",
        "architectures": ["LlavaLlamaForCausalLM"],
        "vocab_size": vocab + len(PAPER_TOKENS),
        "mm_vision_tower": clip,
        "mm_hidden_size": 32,
        "mm_vision_select_layer": -2,
        "mm_use_im_start_end": True,
        "use_mm_proj": True,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "sep_image_conv_front": False,
    }
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(Path(text) / "tokenizer.model", folder / "tokenizer.model")
    tokenizer_config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>"}
    tokenizer_config |= {"unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    special_tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "[PAD]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_tokens))
    added = {token: vocab + index for index, token in enumerate(PAPER_TOKENS)}
    (folder / "added_tokens.json").write_text(json.dumps(added))
    return folder


__all__ = [
    "IGNORE",
    "PAPER_TOKENS",
    "OriginalLlava",
    "paper_prompt_ids",
    "save_original",
    "save_paper_original",
]
