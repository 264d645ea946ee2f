"""Prompt ids as the original LLaVA's `tokenizer_image_token` builds them, on any transformers tokenizer.

The original tokenizes each piece of a prompt between `<image>` markers as a fresh text with its slow (SentencePiece)
Llama tokenizer, after one BOS, and splices the image between pieces. Every released LLaVA was trained on those ids.
A transformers tokenizer reads a whole text otherwise in two places, both handled here: text right after a special
token (a non-legacy Llama tokenizer writes no `▁` there, while the start of a fresh text gets one), and a fresh text
that starts with a space (SentencePiece writes its `▁` prefix and then the space's own, transformers' fast Llama
tokenizer folds the two). It ships with checkpoints as remote code, beside the processor that calls it.
"""

import re

Offsets = list[tuple[int, int]]


def folds_leading_space(tokenizer) -> bool:
    """Whether the tokenizer gives a text that starts with a space the same tokens as without it (`▁a` for both):
    transformers' fast Llama tokenizers do, SentencePiece and byte-level BPE tokenizers do not."""
    return tokenizer.tokenize("a") == tokenizer.tokenize(" a")


def encode_fresh_text(tokenizer, text: str, folds_space: bool) -> tuple[list[int], Offsets]:
    """Ids and offsets of `text` tokenized as the start of a text, without special tokens added.

    For a legacy Llama tokenizer, the text after each special token is a fresh text too (the original's slow
    tokenizer runs SentencePiece on each part), so each part is tokenized on its own.
    """
    ids, offsets, start = [], [], 0
    parts = [text]
    if getattr(tokenizer, "legacy", False):
        specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
        parts = re.split("(" + "|".join(map(re.escape, specials)) + ")", text)
    for part in parts:
        if part in tokenizer.all_special_tokens:
            ids.append(tokenizer.convert_tokens_to_ids(part))
            offsets.append((start, start + len(part)))
        elif part:
            # Give the space twice to a tokenizer that would fold it into the `▁` prefix; map offsets back.
            shift = int(folds_space and part.startswith(" "))
            tokens = tokenizer(" " * shift + part, add_special_tokens=False, return_offsets_mapping=True)
            ids += tokens["input_ids"]
            offsets += [(max(b - shift, 0) + start, max(e - shift, 0) + start) for b, e in tokens["offset_mapping"]]
        start += len(part)
    return ids, offsets


def encode_prompt(
    tokenizer,
    text: str,
    image_token: str,
    image_ids: list[int] | list[list[int]],
    add_special_tokens: bool = True,
    folds_space: bool | None = None,
) -> tuple[list[int], Offsets]:
    """Ids of one prompt as the original's `tokenizer_image_token` builds them, with offsets into `text`.

    The BOS comes first, once: the one the chat template wrote at the start of `text`, else the one the tokenizer
    opens a text with when `add_special_tokens`. Then each piece between `image_token` markers is a fresh text, and
    each marker becomes `image_ids` (the image's feature positions, with the paper's `<im_start>` and `<im_end>`
    around them where the checkpoint frames its images; a list of such runs: one per marker in turn, for images of
    different sizes). The BOS and image ids have empty offsets.
    """
    folds_space = folds_leading_space(tokenizer) if folds_space is None else folds_space
    bos, start = tokenizer.bos_token, 0
    ids, offsets = [], []
    if bos is not None and text.startswith(bos):
        start = len(bos)
        ids, offsets = [tokenizer.bos_token_id], [(0, 0)]
    elif add_special_tokens:
        ids = tokenizer("", add_special_tokens=True)["input_ids"]
        offsets = [(0, 0)] * len(ids)
    for index, piece in enumerate(text[start:].split(image_token)):
        if index:
            run = image_ids[index - 1] if image_ids and isinstance(image_ids[0], list) else image_ids
            ids += run
            offsets += [(0, 0)] * len(run)
        piece_ids, piece_offsets = encode_fresh_text(tokenizer, piece, folds_space)
        ids += piece_ids
        offsets += [(begin + start, end + start) for begin, end in piece_offsets]
        start += len(piece) + len(image_token)
    return ids, offsets


__all__ = ["encode_fresh_text", "encode_prompt", "folds_leading_space"]
