"""The demo's tokenizer: a small Llama-style BPE trained here, since no pretrained tokenizer can be downloaded.

The tests train theirs with it too, so that both exercise the same kind of tokenizer a Vicuna checkpoint has.
"""

import string
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast


def train_tokenizer(texts: Iterable[str], vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """A Llama-style BPE tokenizer (`<unk>`, `<s>`, `</s>`, BOS prepended, `▁` word marks) trained on `texts`.

    Every printable ASCII character is in the alphabet, so no text of the tests or the demo falls back to `<unk>`.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=list(string.printable)
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


__all__ = ["train_tokenizer"]
