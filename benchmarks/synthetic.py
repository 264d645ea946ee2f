"""Synthetic LLaVA-1.5 and LLaVA-NeXT (1.6) workloads for the benchmark: model shapes, a word-level tokenizer, images
and the length mix.

Nothing is downloaded and every weight is random: training and decoding speed depend on shapes and lengths, not on
values. The tokenizer maps each word to one token, so a sample's length is exactly what the length mix draws. Both
sides of the benchmark get the same configs, the same rows and the same image files. The LLaVA-NeXT workload differs
by its images only: sizes and aspect ratios that land on each of LLaVA-1.6's five grids, so that samples carry from
1,752 to 2,928 image tokens, around the same LLaVA-1.5-like conversations.
"""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Image, Sequence
from PIL import Image as PILImage
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from modeling_llava import (
    CHAT_TEMPLATES,
    LlavaNextPluginConfig,
    LlavaNextPluginProcessor,
    LlavaPluginConfig,
    LlavaPluginProcessor,
)
from modeling_llava.chat_templates import VICUNA_V1_SYSTEM
from modeling_llava.processing_llava_next_plugin import LLAVA_NEXT_PINPOINTS

# CLIP ViT-L/14 at 336 px, LLaVA-1.5's tower: 576 patches (+ CLS) of width 1024.
CLIP_L_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16}
LLAMA = {
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
    # TinyLlama-1.1B's shape: with AdamW, full training fits one 80 GB GPU.
    "1.1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
    },
}
# --small keeps the real token lengths (576 image tokens, conversations up to 2048) and shrinks only the widths.
SMALL_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
SMALL_TEXT = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4}
FULL_VOCAB, SMALL_VOCAB = 32000, 2048
IMAGE_SIZE, PATCH_SIZE, MAX_LENGTH = 336, 14, 2048
COCO_SIZE = (640, 480)  # (width, height), LLaVA-1.5's images
# LLaVA-NeXT's images, (width, height), each picked by LLaVA-1.6's pinpoints for one grid (rows x columns) and giving
# 576 base-tile tokens plus `rows x (columns + 1)` kept feature rows (`modeling_llava.anyres`): COCO-like photos
# (2x2: 2,340, 2,352, 2,144 tokens) most often, then square (2x2: 2,928), 2:1 and 1:2 (1x2: 1,752, 2x1: 1,776),
# 3:1 and 1:3 (1x3: 2,328, 3x1: 2,376). Every side is above 336, so that the original's and transformers' reading
# of the pinpoints pick the same grid, and transformers' LlavaNextProcessor counts what this project counts.
NEXT_IMAGE_SIZES = (
    (640, 480), (480, 640), (640, 427), (600, 600), (640, 480), (800, 400),
    (400, 800), (640, 427), (1200, 400), (400, 1200), (640, 480), (500, 375),
)  # fmt: skip


@dataclass
class Shapes:
    """Configs of one LLaVA shape, as the built-in `LlavaConfig` and as this project's `LlavaPluginConfig`."""

    vision: dict[str, int]
    text: dict[str, int]
    vocab_size: int

    def sub_configs(self, image_token_id: int) -> dict[str, Any]:
        vision = CLIPVisionConfig(**self.vision, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
        text = LlamaConfig(
            **self.text, vocab_size=self.vocab_size, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2
        )
        return {"vision_config": vision, "text_config": text, "image_token_id": image_token_id}

    def builtin_config(self, image_token_id: int, anyres: bool = False) -> LlavaConfig | LlavaNextConfig:
        """transformers' `LlavaConfig`, or with `anyres` its `LlavaNextConfig` with LLaVA-1.6's pinpoints."""
        settings = {
            "image_seq_length": (IMAGE_SIZE // PATCH_SIZE) ** 2,
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
        }
        if anyres:
            return LlavaNextConfig(
                **self.sub_configs(image_token_id), **settings, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS
            )
        return LlavaConfig(**self.sub_configs(image_token_id), **settings)

    def plugin_config(self, image_token_id: int, anyres: bool = False) -> LlavaPluginConfig | LlavaNextPluginConfig:
        """This project's `LlavaPluginConfig`, or with `anyres` its `LlavaNextPluginConfig`, on the same shapes."""
        if anyres:
            return LlavaNextPluginConfig(
                **self.sub_configs(image_token_id),
                projector_type="mlp2x_gelu",
                image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
            )
        return LlavaPluginConfig(**self.sub_configs(image_token_id), projector_type="mlp2x_gelu")


def shapes(llm: str, small: bool) -> Shapes:
    """CLIP-L/336 with a Llama of `llm` size ("7b" or "1.1b"), or, with `small`, tiny widths at the same lengths."""
    if small:
        return Shapes(SMALL_VISION, SMALL_TEXT, SMALL_VOCAB)
    return Shapes(CLIP_L_336, LLAMA[llm], FULL_VOCAB)


def word_tokenizer(vocab_size: int, folder: Path) -> Path:
    """Saves a Llama-like word-level tokenizer (`<unk>`, `<s>`, `</s>`, BOS prepended) of `vocab_size - 1` tokens.

    The last id is left for `<image>`, which `tokenizer_with_image_token` adds. The template's own words are in the
    vocabulary; the rest are `w0`, `w1`, ...
    """
    template_words = VICUNA_V1_SYSTEM.replace(".", " . ").replace("'", " ' ").split() + ["USER", "ASSISTANT", ":"]
    words = list(dict.fromkeys(["<unk>", "<s>", "</s>", *template_words]))
    words += [f"w{index}" for index in range(vocab_size - 1 - len(words))]
    tokenizer = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return folder


def processors_for(
    shape: Shapes, folder: Path, anyres: bool = False
) -> tuple[LlavaPluginProcessor, LlavaProcessor] | tuple[LlavaNextPluginProcessor, LlavaNextProcessor]:
    """This project's processor and the built-in one (`LlavaProcessor`, or with `anyres` `LlavaNextProcessor`) over the
    same tokenizer and image preprocessing (for AnyRes, the PIL tiler with LLaVA-1.6's pinpoints)."""
    vision_folder = folder / "vision"
    CLIPVisionConfig(**shape.vision, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE).save_pretrained(vision_folder)
    text_folder = word_tokenizer(shape.vocab_size, folder / "text")
    ours_class, builtin_class = (
        (LlavaNextPluginProcessor, LlavaNextProcessor) if anyres else (LlavaPluginProcessor, LlavaProcessor)
    )
    ours = ours_class.from_backbones(str(vision_folder), str(text_folder))
    builtin = builtin_class(
        image_processor=ours.image_processor,
        tokenizer=ours.tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATES["vicuna_v1"],
    )
    return ours, builtin


def save_images(
    folder: Path, count: int = 32, seed: int = 0, sizes: tuple[tuple[int, int], ...] = (COCO_SIZE,)
) -> list[str]:
    """Noise JPEGs of `sizes` (width, height) in turn, COCO's 640x480 by default: decoding and resizing cost what
    LLaVA's real images cost."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"{index}.jpg"
        width, height = sizes[index % len(sizes)]
        PILImage.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def _words(rng: random.Random, count: int) -> str:
    return " ".join(f"w{rng.randrange(1000)}" for _ in range(count))


def _turn(role: str, text: str, image: bool = False) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "image"}] * image + [{"type": "text", "text": text}]}


def stage1_rows(
    count: int, images: list[str], image_tokens: list[int] | None = None, max_length: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """LLaVA-558K-like rows: one image and a caption of 10-60 tokens (BLIP captions are short, far below any
    `max_length` with any `image_tokens`)."""
    rng = random.Random(seed)
    return [
        {
            "messages": [_turn("user", "", image=True), _turn("assistant", _words(rng, rng.randint(10, 60)))],
            "images": [images[index % len(images)]],
        }
        for index in range(count)
    ]


def stage2_rows(
    count: int,
    images: list[str],
    image_tokens: list[int] | None = None,
    max_length: int = MAX_LENGTH,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """LLaVA-665K-like rows, up to `max_length` tokens with the image.

    About 6% are long text-only conversations (ShareGPT, up to `MAX_LENGTH`); the rest carry an image (of
    `image_tokens[i]` tokens for `images[i]`, 576 by default) and 1-10 turns whose answers are half VQA-short (1-4
    tokens, VQAv2/GQA) and half free-form (log-normal, median ~55 tokens, LLaVA-Instruct). With LLaVA-1.5's images,
    lengths run from ~300 to ~2,000 (median ~770); a padded batch of 16 is ~38% padding (of 4, ~22%), near the third
    the issue measured on the real mix.
    """
    rng = random.Random(seed)
    overhead = 40  # system prompt and role markers, in this tokenizer
    rows = []
    for index in range(count):
        if rng.random() < 0.06:
            budget = rng.randint(256, MAX_LENGTH - overhead - 64)
            messages = [_turn("user", _words(rng, 32)), _turn("assistant", _words(rng, budget - 32))]
            rows.append({"messages": messages, "images": []})
            continue
        image = index % len(images)
        total = overhead + (image_tokens[image] if image_tokens else (IMAGE_SIZE // PATCH_SIZE) ** 2)
        messages = []
        for turn in range(rng.choices([1, 2, 3, 4, 5, 6, 8, 10], [30, 15, 12, 10, 8, 8, 8, 9])[0]):
            question = rng.randint(4, 24)
            answer = rng.randint(1, 4) if rng.random() < 0.5 else max(1, int(rng.lognormvariate(4.0, 0.8)))
            if total + question + answer + 8 > max_length:
                break
            total += question + answer + 8
            messages.append(_turn("user", _words(rng, question), image=turn == 0))
            messages.append(_turn("assistant", _words(rng, answer)))
        rows.append({"messages": messages, "images": [images[image]]})
    return rows


def as_dataset(rows: list[dict[str, Any]], decode: bool = True) -> Dataset:
    """Rows as a `datasets.Dataset` whose images are files, decoded when a batch is collated (as in a real run): by
    `datasets` as a row is read (what TRL's collator takes), or without `decode` by the collator itself (as `llava
    train` holds a dataset's images, whose headers it reads for LLaVA-NeXT's lengths)."""
    return Dataset.from_list(rows).cast_column("images", Sequence(Image(decode=decode)))


def generation_prompts(processor: LlavaPluginProcessor, batch_size: int, question_tokens: int = 40) -> list[str]:
    """`batch_size` vicuna_v1 prompts, each an image and a question of `question_tokens` tokens, all of one length."""
    rng = random.Random(batch_size)
    return [
        processor.apply_chat_template(
            [_turn("user", _words(rng, question_tokens), image=True)], add_generation_prompt=True
        )
        for _ in range(batch_size)
    ]


__all__ = [
    "NEXT_IMAGE_SIZES",
    "Shapes",
    "as_dataset",
    "generation_prompts",
    "processors_for",
    "save_images",
    "shapes",
    "stage1_rows",
    "stage2_rows",
]
