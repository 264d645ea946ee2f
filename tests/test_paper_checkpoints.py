"""The paper's checkpoints (April-June 2023: `LLaVA-13b-delta-v0`, `LLaVA-7b-delta-v0`, ...): `llava convert
--delta-base` and the `<im_start>` / `<im_end>` framing of each image.

A tiny checkpoint is written in the paper's layout (`tests/original_llava.py`, `save_paper_original`: LLaMA weights
with the `[PAD]`, `<im_patch>`, `<im_start>`, `<im_end>` rows appended, `model.mm_projector`, the config and tokenizer
files of its day). References, written from the paper's code and independent of this plugin: the prompt ids of its
`model_vqa.py` (`paper_prompt_ids`, on SentencePiece) and the forward of its `llava/model/llava.py`
(`paper_reference_logits` below: CLIP's `mm_vision_select_layer` without CLS, the linear `mm_projector`, the features
put at the positions between `<im_start>` and `<im_end>`, LLaMA on the result); for the delta, the target built in
the test, of which the delta is the difference to a base LLaMA as the paper's `make_delta` took it.
"""

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from command_line.main import main as llava
from modeling_llava import LlavaPluginConfig, LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from modeling_llava.convert_checkpoint import apply_delta, convert, read_weights, to_llava_hf
from processing.lengths import sample_length, tokenization_key
from tests.conftest import GREEDY, QUESTION, REMOTE_SCRIPT, random_image, reference_outputs
from tests.original_llava import HUMAN_SYSTEM, PAPER_TOKENS, V0_EXAMPLE, paper_prompt_ids, save_paper_original
from tests.test_loading import remote_code_pythons

QUESTION_TEXT = "What is the colour of the square?"


def paper_reference_logits(folder: Path, clip: str, pixel_values: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The paper's `LlavaLlamaModel.forward` (llava/model/llava.py, April-June 2023) with `use_im_start_end`, written
    out on plain Llama / CLIP / nn.Linear modules: the features of `mm_vision_select_layer` without CLS, through
    `mm_projector`, replace the embeddings after each `<im_start>`, up to its `<im_end>`."""
    config = json.loads((folder / "config.json").read_text())
    weights = {}
    for file in sorted(folder.glob("pytorch_model*.bin")):
        weights.update(torch.load(file, weights_only=True))
    llm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if not k.startswith("mm_")})).eval()
    llm.load_state_dict({k: v.float() for k, v in weights.items() if "mm_projector" not in k and "inv_freq" not in k})
    projector = nn.Linear(config["mm_hidden_size"], llm.config.hidden_size)
    projector.load_state_dict(
        {k.removeprefix("model.mm_projector."): v.float() for k, v in weights.items() if "mm_" in k}
    )
    tower = CLIPVisionModel.from_pretrained(clip).eval()
    im_start = llm.config.vocab_size - len(PAPER_TOKENS) + PAPER_TOKENS.index("<im_start>")
    im_end = im_start + 1
    with torch.no_grad():
        features = tower(pixel_values, output_hidden_states=True).hidden_states[config["mm_vision_select_layer"]]
        features = projector(features[0, 1:])
        embeds = llm.get_input_embeddings()(torch.tensor(ids))
        start = ids.index(im_start)
        assert ids[start + len(features) + 1] == im_end  # the paper's check: the end token follows the patches
        embeds = torch.cat([embeds[: start + 1], features, embeds[start + len(features) + 1 :]])
        return llm(inputs_embeds=embeds[None]).logits


def paper_prompt(question: str) -> str:
    """`conv_vicuna_v0.get_prompt()` (the `v0` template) after the paper's `model_vqa.py` appended the question with
    its image after it (`qs + '\\n' + image`) and the empty assistant turn."""
    example = "".join(f"{role}: {text}###" for role, text in V0_EXAMPLE)
    return f"{HUMAN_SYSTEM}###{example}Human: {question}\n<image>###Assistant:"


@pytest.fixture
def paper_checkpoint(tmp_path, checkpoints, sentencepiece_llama) -> Path:
    return save_paper_original(tmp_path / "paper", checkpoints["clip"], sentencepiece_llama[0])


def test_a_paper_checkpoint_answers_with_the_originals_ids_and_logits(
    tmp_path, checkpoints, sentencepiece_llama, paper_checkpoint
):
    """The converted checkpoint with the `v0` template: the paper's prompt ids (the image run aside, which holds
    this plugin's image token where the paper wrote `<im_patch>`: features replace both), pixels, logits and greedy
    tokens."""
    _, spm = sentencepiece_llama
    convert(paper_checkpoint, tmp_path / "plugin", template="v0")
    model = LlavaPluginForConditionalGeneration.from_pretrained(tmp_path / "plugin").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "plugin")
    patches = model.config.image_seq_length

    prompt = paper_prompt(QUESTION_TEXT)
    original_ids = paper_prompt_ids(spm, prompt, patches)
    messages = [{"role": "user", "content": f"{QUESTION_TEXT}\n<image>"}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == "<s>" + prompt
    image = random_image(3)
    inputs = processor(images=image, text=rendered, return_tensors="pt")
    im_patch = spm.vocab_size() + PAPER_TOKENS.index("<im_patch>")
    image_token = model.config.image_token_id
    assert inputs["input_ids"][0].tolist() == [image_token if i == im_patch else i for i in original_ids]
    pixel_values = CLIPImageProcessor.from_pretrained(checkpoints["clip"])(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(inputs["pixel_values"], pixel_values, atol=1e-6, rtol=0)

    greedy = []
    with torch.no_grad():
        logits = model(**inputs).logits
        for _ in range(4):
            reference = paper_reference_logits(
                paper_checkpoint, checkpoints["clip"], pixel_values, original_ids + greedy
            )
            greedy.append(int(reference[0, -1].argmax()))
        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    reference = paper_reference_logits(paper_checkpoint, checkpoints["clip"], pixel_values, original_ids)
    torch.testing.assert_close(logits[..., : reference.shape[-1]], reference, atol=1e-4, rtol=1e-4)
    assert generated[0, inputs["input_ids"].shape[1] :].tolist() == greedy


@pytest.mark.parametrize("python", remote_code_pythons())
def test_the_framing_survives_saving_and_remote_code(tmp_path, paper_checkpoint, python):
    """`image_start_token_id` / `image_end_token_id` and the processor's framing tokens are saved and reloaded, also
    by the shipped code in a process that cannot import this package, with this interpreter's transformers and with
    the oldest one supported for remote code (same logits and greedy tokens)."""
    convert(paper_checkpoint, tmp_path / "plugin", template="v0")
    saved = json.loads((tmp_path / "plugin" / "config.json").read_text())
    tokenizer = AutoProcessor.from_pretrained(tmp_path / "plugin").tokenizer
    assert tokenizer.convert_ids_to_tokens([saved["image_start_token_id"], saved["image_end_token_id"]]) == [
        "<im_start>",
        "<im_end>",
    ]
    config = LlavaPluginConfig.from_pretrained(tmp_path / "plugin")
    assert (config.image_start_token_id, config.image_end_token_id) == tuple(
        tokenizer.convert_tokens_to_ids(["<im_start>", "<im_end>"])
    )

    image_path = tmp_path / "image.png"
    random_image(3).save(image_path)
    script = tmp_path / "remote.py"
    script.write_text(textwrap.dedent(REMOTE_SCRIPT))
    out = tmp_path / "remote.safetensors"
    result = subprocess.run(
        [python, str(script), str(tmp_path / "plugin"), str(image_path), json.dumps(QUESTION)]
        + [json.dumps(GREEDY), str(out)],
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = load_file(out)
    logits, tokens = reference_outputs(str(tmp_path / "plugin"), image_path)
    torch.testing.assert_close(remote["logits"], logits, atol=1e-5, rtol=0)
    assert torch.equal(remote["tokens"], tokens)


def test_image_tokens_without_their_frame_are_refused(tmp_path, paper_checkpoint):
    """The paper's model raised on an image whose end token does not follow its patches; so does the converted one,
    naming the sample, for a prompt built without the framing (another checkpoint's processor)."""
    convert(paper_checkpoint, tmp_path / "plugin", template="v0")
    model = LlavaPluginForConditionalGeneration.from_pretrained(tmp_path / "plugin").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "plugin")
    inputs = processor(images=[random_image(1), random_image(2)], text=["<image> a", "<image> b"], return_tensors="pt")
    with torch.no_grad():
        model(**inputs)  # framed: accepted
    start = model.config.image_start_token_id
    inputs["input_ids"][1][inputs["input_ids"][1] == start] = processor.tokenizer.unk_token_id
    with torch.no_grad(), pytest.raises(ValueError, match="Sample 1 has image tokens not framed"):
        model(**inputs)


def make_delta(target: Path, base: Path, delta: Path) -> None:
    """The paper's `make_delta` (the inverse of `apply_delta`): the target less the base, on the base's rows."""
    base_weights = LlamaForCausalLM.from_pretrained(base).state_dict()
    weights = read_weights(target)
    for name, tensor in base_weights.items():
        rows = tuple(slice(0, size) for size in tensor.shape)
        weights[name] = weights[name].clone()
        weights[name][rows] -= tensor
    shutil.copytree(target, delta, ignore=shutil.ignore_patterns("pytorch_model*"))
    torch.save(weights, delta / "pytorch_model.bin")


@pytest.fixture
def delta_and_base(tmp_path, sentencepiece_llama, paper_checkpoint) -> tuple[Path, Path]:
    """A base LLaMA other than the one the target was trained from (other random weights, same shapes), and the delta
    of the paper checkpoint to it."""
    text, _ = sentencepiece_llama
    torch.manual_seed(11)
    base = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig.from_pretrained(text)).save_pretrained(base, max_shard_size="20KB")
    make_delta(paper_checkpoint, base, tmp_path / "delta")
    return tmp_path / "delta", base


def test_delta_plus_base_is_the_target(tmp_path, paper_checkpoint, delta_and_base):
    """Every LLM weight, the appended token rows (kept as the delta holds them) and the projector (not in the base)
    come out as the target's; converting the delta with its base gives the target's converted weights."""
    delta, base = delta_and_base
    target = read_weights(paper_checkpoint)
    applied = apply_delta(read_weights(delta), base, str(delta))
    assert applied.keys() == target.keys()
    for name, tensor in target.items():
        torch.testing.assert_close(applied[name], tensor, msg=name)

    convert(paper_checkpoint, tmp_path / "from-target", template="v0")
    assert llava(["convert", str(delta), str(tmp_path / "from-delta"), "--delta-base", str(base)]) in (None, 0)
    expected = LlavaPluginForConditionalGeneration.from_pretrained(tmp_path / "from-target").state_dict()
    converted = LlavaPluginForConditionalGeneration.from_pretrained(tmp_path / "from-delta").state_dict()
    assert converted.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(converted[name], tensor, msg=name)


def test_a_base_that_is_not_the_deltas_is_named(tmp_path, sentencepiece_llama, delta_and_base, capsys):
    delta, _ = delta_and_base
    text, _ = sentencepiece_llama
    wider = LlamaConfig.from_pretrained(text)
    wider.intermediate_size *= 2
    LlamaForCausalLM(wider).save_pretrained(tmp_path / "other-llama")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        llava(["convert", str(delta), str(tmp_path / "out"), "--delta-base", str(tmp_path / "other-llama")])
    assert exit_info.value.code == 2
    output = capsys.readouterr().err
    assert "Traceback" not in output
    error = output.strip().splitlines()[-1]  # after the progress bars
    assert error.startswith("llava convert: ")
    assert re.search(r"mlp\.(down|gate|up)_proj\.weight' is \(\d+, \d+\) in the delta", error)
    assert "pass the LLaMA the delta was made from as --delta-base" in error
    assert not (tmp_path / "out").exists()


def test_delta_base_is_refused_for_a_checkpoint_that_is_no_original_delta(tmp_path, llava_checkpoint, checkpoints):
    with pytest.raises(ValueError, match="a llava_plugin checkpoint, not an original LLaVA delta"):
        convert(llava_checkpoint, tmp_path / "out", delta_base=checkpoints["llama"])


def test_a_framed_checkpoint_is_not_exported_to_llava_hf(tmp_path, paper_checkpoint):
    """Transformers' LlavaProcessor writes the image tokens alone, which this model's images were not trained with."""
    convert(paper_checkpoint, tmp_path / "plugin", template="v0")
    model = LlavaPluginForConditionalGeneration.from_pretrained(tmp_path / "plugin")
    with pytest.raises(ValueError, match="<im_start> / <im_end>.*keep it in this plugin's format"):
        to_llava_hf(model, AutoProcessor.from_pretrained(tmp_path / "plugin"))


def test_measured_lengths_count_the_frame(tmp_path, paper_checkpoint):
    """Length-grouped batching measures each row with the processor's ids, two tokens more per framed image, and
    keeps framed and unframed measurements apart in its cache."""
    convert(paper_checkpoint, tmp_path / "plugin", template="v0")
    framed = AutoProcessor.from_pretrained(tmp_path / "plugin")
    unframed = LlavaPluginProcessor(framed.image_processor, framed.tokenizer, framed.image_seq_length)
    row = {"messages": [{"role": "user", "content": f"{QUESTION_TEXT}\n<image>"}]}
    template = framed.chat_template["default"]
    assert sample_length(row, framed, template) == sample_length(row, unframed, template) + 2
    assert tokenization_key(framed, template) != tokenization_key(unframed, template)
