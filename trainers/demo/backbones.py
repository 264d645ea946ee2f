"""Pretraining of the demo's stand-ins for CLIP and Vicuna on the synthetic world, each in under a minute on a CPU.

LLaVA starts from two pretrained backbones and no weights can be downloaded here, so the demo makes its own: a tiny
`CLIPModel` trained contrastively on (training image, caption) pairs, as CLIP was on the web's, and a tiny
`LlamaForCausalLM` with a BPE tokenizer trained as a causal LM on the world's text (`world_texts`), as Vicuna was on
chat. Both are saved as ordinary checkpoints that `from_backbones` builds a LLaVA from.
"""

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from tqdm.auto import tqdm
from transformers import (
    CLIPConfig,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)
from transformers.models.llava import LlavaImageProcessorPil

from trainers.demo.tokenizer import train_tokenizer
from trainers.demo.world import QUESTION_KINDS, SCENES, WorldFiles, heldout_scenes, world_texts

# Defaults measured on 2 CPU cores (seeds 0 and 1): the CLIP takes 31-38 s and retrieves held-out captions at 0.99-1.0;
# the LM takes 39-41 s and ends at 0.20 nats per token, where its loss curve has flattened.
VISION_STEPS = 400
TEXT_STEPS = 400

# 32 px images in 8 px patches: 16 patch tokens + CLS. Width 128, not 64: at width 64 the contrastive loss is met by
# the CLS alone while the patch tokens, which LLaVA reads (layer -2, CLS dropped), lose the shape (an attention probe
# on them falls to 0.7-0.8, below raw pixels), and LLaVA then stalls near 0.6 on shape questions.
VISION_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "patch_size": 8,
}
CLIP_TEXT_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 16,
}
CLIP_PROJECTION_DIM = 64
# Two layers reach the loss four do (0.19 nats per token after 400 steps) in 60% of the time.
LANGUAGE_MODEL_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
}
# The world's text has under 500 distinct words and pieces: BPE stops merging at 459 tokens.
TEXT_VOCAB_SIZE = 512
VISION_LEARNING_RATE = 1e-3
TEXT_LEARNING_RATE = 2e-3
WARMUP_FRACTION = 0.05
# Matrices this small gain nothing from many threads, and a laptop's default of one per core only adds overhead.
MAX_THREADS = 4

# The CLIP text tower's special tokens, in id order. CLIP pools at the first EOS, except that a config with
# `eos_token_id == 2` takes a legacy path (argmax of the ids), right only where EOS is the largest id, as in OpenAI's
# vocabulary. Here EOS is 3, below every word, so the legacy path would pick a word: pooling at the EOS is testable.
CAPTION_SPECIAL_TOKENS = ("<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>")


def caption_tokenizer(captions: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer for the CLIP text tower, framing texts as CLIP's: `<|startoftext|> ... <|endoftext|>`."""
    pad, unk, bos, eos = CAPTION_SPECIAL_TOKENS
    tokenizer = Tokenizer(models.WordLevel(unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    words = sorted({word for caption in captions for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(caption)})
    tokenizer.add_special_tokens(list(CAPTION_SPECIAL_TOKENS))
    tokenizer.add_tokens(words)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tokenizer.token_to_id(bos)), (eos, tokenizer.token_to_id(eos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=pad, unk_token=unk, bos_token=bos, eos_token=eos
    )


def _image_processor(image_size: int) -> LlavaImageProcessorPil:
    # The one `LlavaPluginProcessor.from_backbones` loads from the checkpoint (CLIP's mean and std, no resize at the
    # tower's own size), so pretraining sees exactly the pixels LLaVA feeds later.
    return LlavaImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


@contextlib.contextmanager
def _at_most_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(
    model: torch.nn.Module,
    batches: Iterator[dict],
    steps: int,
    learning_rate: float,
    progress: bool,
    description: str,
) -> list[float]:
    """AdamW with a short linear warmup and a cosine decay; returns the loss of every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(WARMUP_FRACTION * steps), steps)
    model.train()
    losses = []
    with _at_most_threads(MAX_THREADS):
        bar = tqdm(range(steps), desc=description, disable=not progress)
        for _ in bar:
            loss = model(**next(batches)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def _contrastive_batches(
    pixel_values: torch.Tensor, input_ids: torch.Tensor, batch_size: int, rng: np.random.Generator
) -> Iterator[dict]:
    """Batches of pairs with distinct captions (at most one per scene, so at most 75 pairs).

    Only 75 captions exist, so a random batch of 64 holds some 25 pairs of images with the same caption, each a false
    negative for the other. Distinct-caption batches reach 0.84 held-out retrieval where random ones reach 0.69 (400
    steps at width 64), and the loss can go to zero.
    """
    by_caption: dict[tuple[int, ...], list[int]] = {}
    for index, ids in enumerate(input_ids.tolist()):
        by_caption.setdefault(tuple(ids), []).append(index)
    groups = list(by_caption.values())
    while True:
        chosen = rng.choice(len(groups), size=min(batch_size, len(groups)), replace=False)
        indices = [groups[group][rng.integers(len(groups[group]))] for group in chosen]
        yield {"pixel_values": pixel_values[indices], "input_ids": input_ids[indices], "return_loss": True}


def pretrain_vision_tower(
    world: WorldFiles,
    out_dir: str | Path,
    steps: int = VISION_STEPS,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Path, list[float]]:
    """Trains a tiny CLIP on the world's (training image, caption) pairs and saves it for `from_backbones`.

    Batches hold distinct captions, so `batch_size` is capped at the number of distinct captions (75 at most).
    The checkpoint holds the full `CLIPModel` (LLaVA takes its vision tower), the image processor LLaVA will use, and
    the caption tokenizer of the text tower (which `caption_retrieval_accuracy` needs).

    Returns:
        The checkpoint directory and the contrastive loss of each step.
    """
    torch.manual_seed(seed)
    records = json.loads(world.stage1.read_text())
    images = [Image.open(world.image_folder / record["image"]).convert("RGB") for record in records]
    image_size = images[0].width
    image_processor = _image_processor(image_size)
    tokenizer = caption_tokenizer([scene.caption() for scene in SCENES])
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]  # (num_train, 3, size, size)
    captions = [record["conversations"][1]["value"] for record in records]
    input_ids = tokenizer(captions, padding=True, return_tensors="pt")["input_ids"]  # (num_train, caption length)

    special_tokens = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = CLIPConfig(
        text_config={**CLIP_TEXT_CONFIG, "vocab_size": len(tokenizer), **special_tokens},
        vision_config={**VISION_CONFIG, "image_size": image_size},
        projection_dim=CLIP_PROJECTION_DIM,
    )
    model = CLIPModel(config)
    batches = _contrastive_batches(pixel_values, input_ids, batch_size, np.random.default_rng(seed))
    losses = _train(model, batches, steps, VISION_LEARNING_RATE, progress, "pretraining the CLIP stand-in")

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir, losses


def _language_batches(
    sequences: list[list[int]], pad_token_id: int, batch_size: int, rng: np.random.Generator
) -> Iterator[dict]:
    """Random batches of whole texts, right-padded; the padding is masked out of attention and loss."""
    while True:
        chosen = rng.choice(len(sequences), size=min(batch_size, len(sequences)), replace=False)
        ids = [torch.tensor(sequences[index]) for index in chosen]
        input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_token_id)
        attention_mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(row) for row in ids], batch_first=True)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        yield {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pretrain_language_model(
    world: WorldFiles,
    out_dir: str | Path,
    steps: int = TEXT_STEPS,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Path, list[float]]:
    """Trains a BPE tokenizer and a tiny Llama on `world_texts(world)` and saves both, as a Vicuna stand-in.

    The tokenizer is Llama's layout (`<unk>`=0, `<s>`=1, `</s>`=2, BOS prepended, no pad token, as Vicuna's); the
    model's generation config stops at `</s>`.

    Returns:
        The checkpoint directory and the mean next-token loss of each step.
    """
    torch.manual_seed(seed)
    texts = world_texts(world)
    tokenizer = train_tokenizer(texts, vocab_size=TEXT_VOCAB_SIZE)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **LANGUAGE_MODEL_CONFIG,
    )
    model = LlamaForCausalLM(config)
    # Padding is masked, so any id serves; EOS is one the model knows.
    sequences = tokenizer(texts)["input_ids"]
    batches = _language_batches(sequences, tokenizer.eos_token_id, batch_size, np.random.default_rng(seed))
    losses = _train(model, batches, steps, TEXT_LEARNING_RATE, progress, "pretraining the Vicuna stand-in")

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir, losses


@torch.no_grad()
def caption_retrieval_accuracy(vision_ckpt: str | Path, world: WorldFiles) -> dict[str, float]:
    """Top-1 accuracy of matching each held-out image to its caption among the 75 captions of the world.

    Returns:
        `overall` (the whole caption right) and, for `colour`, `shape` and `position`, how often the chosen caption
        names the right one.
    """
    model = CLIPModel.from_pretrained(vision_ckpt).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(vision_ckpt)
    image_processor = LlavaImageProcessorPil.from_pretrained(vision_ckpt)
    images, scenes = zip(*heldout_scenes(world), strict=True)
    pixel_values = image_processor(
        [Image.open(world.image_folder / image).convert("RGB") for image in images], return_tensors="pt"
    )["pixel_values"]
    captions = tokenizer([scene.caption() for scene in SCENES], padding=True, return_tensors="pt")
    image_embeds = model.get_image_features(pixel_values=pixel_values).pooler_output  # (num_heldout, projection)
    text_embeds = model.get_text_features(**captions).pooler_output  # (75, projection)
    similarity = (
        torch.nn.functional.normalize(image_embeds, dim=-1) @ torch.nn.functional.normalize(text_embeds, dim=-1).T
    )
    guesses = [SCENES[index] for index in similarity.argmax(dim=-1).tolist()]
    accuracy = {"overall": float(np.mean([guess == scene for guess, scene in zip(guesses, scenes, strict=True)]))}
    for kind in QUESTION_KINDS:
        hits = [getattr(guess, kind) == getattr(scene, kind) for guess, scene in zip(guesses, scenes, strict=True)]
        accuracy[kind] = float(np.mean(hits))
    return accuracy


__all__ = [
    "CAPTION_SPECIAL_TOKENS",
    "TEXT_STEPS",
    "VISION_STEPS",
    "caption_retrieval_accuracy",
    "caption_tokenizer",
    "pretrain_language_model",
    "pretrain_vision_tower",
]
