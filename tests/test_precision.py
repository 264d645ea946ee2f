"""The precision a checkpoint is loaded in for answering (`--dtype`), and 4-/8-bit loading (`--load-in-4bit`/`8bit`,
bitsandbytes), as `llava chat`, `serve`, `eval` and `predict` take them.

References: transformers' own `from_pretrained(dtype=...)` and `generate` for the answers in a given precision; the
CUDA-only quantized paths run where a GPU and bitsandbytes are present.
"""

import argparse
import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import command_line.main
import modeling_llava
import processing.generation
from command_line.main import main as llava
from processing.generation import generate_greedy, load_llava
from tests.conftest import QUESTION, random_image, refused
from tests.original_llava import save_original
from tests.test_scienceqa import problem

MAX_NEW_TOKENS = 8


def reference_answers(checkpoint: str, dtype: torch.dtype, images: list) -> list[str]:
    """Greedy answers of transformers' own loading in `dtype`, one sample at a time."""
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    prompt = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    answers = []
    for image in images:
        inputs = processor(images=image, text=prompt, add_special_tokens=False, return_tensors="pt").to(dtype=dtype)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answers.append(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("auto", torch.float32), ("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)],
)
def test_a_checkpoint_loads_and_answers_in_the_dtype_asked(llava_checkpoint, dtype, expected):
    model, processor = load_llava(llava_checkpoint, device="cpu", dtype=dtype)
    assert {parameter.dtype for parameter in model.parameters()} == {expected}
    images = [random_image(seed) for seed in range(2)]
    answers = generate_greedy(
        model, processor, [QUESTION] * 2, images, batch_size=1, max_new_tokens=MAX_NEW_TOKENS, progress=False
    )
    assert answers == reference_answers(llava_checkpoint, expected, images)


def test_llava_serve_loads_in_the_dtype_asked(llava_checkpoint, monkeypatch):
    import uvicorn

    import serving.server

    served = {}
    monkeypatch.setattr(serving.server, "create_app", lambda model, processor, *rest: served.update(model=model))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: None)
    llava(["serve", llava_checkpoint, "--port", "0", "--device", "cpu", "--dtype", "bfloat16"])
    assert {parameter.dtype for parameter in served["model"].parameters()} == {torch.bfloat16}


def test_llava_chat_answers_in_bfloat16(llava_checkpoint, tmp_path, capsys):
    random_image(2).save(tmp_path / "a.png")
    capsys.readouterr()
    llava(["chat", llava_checkpoint, "--image", str(tmp_path / "a.png"), "--prompt", QUESTION[0]["content"][1]["text"],
           "--device", "cpu", "--dtype", "bfloat16", "--max-new-tokens", str(MAX_NEW_TOKENS)])  # fmt: skip
    [expected] = reference_answers(llava_checkpoint, torch.bfloat16, [random_image(2)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == expected


def flags(add_arguments) -> list[tuple]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return [
        (action.option_strings, action.dest, action.choices, action.default, action.const, action.help)
        for action in parser._actions
        if action.dest != "help"
    ]


def test_chat_and_serve_take_the_precision_flags_of_eval_and_predict():
    """`command_line` writes the flags out (its parser imports no torch); they must stay those of `processing`."""
    assert flags(command_line.main.add_precision_arguments) == flags(processing.generation.add_precision_arguments)


def test_chat_and_serve_take_the_template_flag_of_eval_and_predict():
    """The same for `--template`: its choices are every chat template `modeling_llava` defines."""
    assert flags(command_line.main.add_template_argument) == flags(processing.generation.add_template_argument)
    assert command_line.main.NAMED_TEMPLATES == tuple(modeling_llava.CHAT_TEMPLATES)
    assert command_line.main.TEMPLATES == modeling_llava.TEMPLATE_NAMES


def test_the_two_quantizations_exclude_each_other(llava_checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        llava(["chat", llava_checkpoint, "--prompt", "Hello?", "--load-in-4bit", "--load-in-8bit"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is missing")
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
@pytest.mark.parametrize("command", ["chat", "serve", "eval", "predict"])
def test_quantized_loading_without_cuda_stops_in_one_line(llava_checkpoint, tmp_path, capsys, command, quantization):
    argv = {
        "chat": ["chat", llava_checkpoint, "--prompt", "Hello?"],
        "serve": ["serve", llava_checkpoint, "--port", "0"],
        "eval": ["eval", "scienceqa", llava_checkpoint, "--data", str(tmp_path), "--output-dir", str(tmp_path)],
        "predict": ["predict", llava_checkpoint, "--questions", str(tmp_path / "q.jsonl"), "--output", "a.jsonl"],
    }[command]  # fmt: skip
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "text": "Hello?"}) + "\n")
    if command == "eval":  # a one-problem release: the data is read before the model
        (tmp_path / "problems.json").write_text(json.dumps({"p1": problem("natural science", 3, "", False, 0)}))
        (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["p1"]}))
    message = refused(capsys, [*argv, f"--load-in-{quantization}"])
    assert f"--load-in-{quantization} quantizes with bitsandbytes, which needs a CUDA GPU" in message


def quantized_layers(model) -> set[str]:
    return {name for name, module in model.named_modules() if type(module).__name__ in ("Linear4bit", "Linear8bitLt")}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes' quantized layers need CUDA")
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_loading_quantizes_the_language_model_only_and_answers(llava_checkpoint, quantization):
    pytest.importorskip("bitsandbytes", reason="4-/8-bit loading needs the qlora extra (bitsandbytes)")
    model, processor = load_llava(llava_checkpoint, device="cuda", quantization=quantization)
    layers = quantized_layers(model)
    assert layers and all(".language_model." in name for name in layers)
    assert model.model.vision_tower.dtype == torch.bfloat16  # `auto` on a GPU, for what is not quantized
    [answer] = generate_greedy(model, processor, [QUESTION], [random_image(0)], max_new_tokens=4, progress=False)
    assert isinstance(answer, str)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes' quantized layers need CUDA")
def test_an_original_checkpoint_is_sent_to_llava_convert_before_quantized_loading(tmp_path, checkpoints):
    pytest.importorskip("bitsandbytes", reason="4-/8-bit loading needs the qlora extra (bitsandbytes)")
    source = save_original(tmp_path / "original", checkpoints, "mlp2x_gelu")
    with pytest.raises(processing.generation.CheckpointError, match="llava convert"):
        load_llava(str(source), device="cuda", quantization="4bit")
