"""A `llava convert --to llava-hf` export served by vLLM gives this plugin's prompt ids and greedy tokens, for a prompt
text and for a chat message rendered by the export's chat template.

vLLM is the independent reference here: its own Llava, CLIP and Llama implementations read the export's config and
weights, and its own processing expands `<image>`. One environment cannot hold vLLM's CPU build (it pins
`transformers<5.20`) and this plugin (5.23 or newer), so vLLM runs in the interpreter that `LLAVA_VLLM_PYTHON` names
(README "Serving in vLLM" says how to make one), or in this one where `vllm` imports; elsewhere, CI included, the test
is skipped with that reason.
"""

import importlib.util
import os
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.vllm_export_check import compare
from modeling_llava import LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from tests.conftest import random_image
from tests.tiny_backbones import TINY_TEXT

VLLM_PYTHON = os.environ.get("LLAVA_VLLM_PYTHON") or (sys.executable if importlib.util.find_spec("vllm") else None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        VLLM_PYTHON is None, reason="vLLM is not importable here; set LLAVA_VLLM_PYTHON to a python that has it"
    ),
]


def test_export_served_by_vllm_gives_the_plugins_greedy_tokens(tmp_path, tokenizer, checkpoints):
    # vLLM's CPU attention takes head sizes from 32 up: the suite's tiny Llama (head size 8) widened to 2 heads of 32.
    text = TINY_TEXT | {"hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1}
    torch.manual_seed(0)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **text, **special)).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    torch.manual_seed(0)
    model = LlavaPluginForConditionalGeneration.from_backbones(checkpoints["clip"], str(tmp_path / "llama"))
    model.save_pretrained(tmp_path / "llava")
    LlavaPluginProcessor.from_backbones(checkpoints["clip"], str(tmp_path / "llama")).save_pretrained(
        tmp_path / "llava"
    )
    random_image(5, size=(36, 48)).save(tmp_path / "image.png")

    ours, served = compare(
        tmp_path / "llava", tmp_path / "image.png", "What is the colour of the square?", VLLM_PYTHON
    )

    assert set(served) == {"generate", "chat"}
    for kind, answer in served.items():  # a prompt text; an OpenAI-style message through the export's chat template
        assert answer["prompt_ids"] == ours["prompt_ids"], kind
        assert answer["tokens"] == ours["tokens"] and len(ours["tokens"]) > 1, kind
