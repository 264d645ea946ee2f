"""The original LLaVA's prompt rendering, `tokenizer_image_token` and label masks, written from its description on
SentencePiece itself (not on transformers' tokenizers): the reference that the tokenization and conversion tests
compare this project's ids and labels with.

The conversation is rendered as `conv_vicuna_v1.get_prompt()` renders it (an empty turn as a bare `ROLE:`), each
`<image>` moved to the start of its turn (`preprocess_multimodal`), then tokenized as `tokenizer_image_token` does:
BOS once, every piece between `<image>` markers as a fresh text, read as the original's slow Llama tokenizer reads it
(`</s>`/`<s>` are special tokens; after one, a legacy tokenizer starts a fresh text, with SentencePiece's `▁` prefix,
a non-legacy one continues without it). Labels: per round, the user part up to `ASSISTANT:` is masked and the answer
with its `</s>` supervised; for `plain`, the image is masked and the caption with its newline supervised.
"""

import re

import sentencepiece
from sentencepiece import sentencepiece_model_pb2

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


__all__ = ["IGNORE", "OriginalLlava"]
