"""`llava chat`: answers equal the model's own greedy generation on the conversation so far, in every format.

The reference is built by hand from the processor's chat template and `generate`, independently of `ChatSession`.
"""

import io
import subprocess
import sys

import pytest
import torch

from command_line.main import main as llava
from modeling_llava import LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from processing.generation import load_llava
from serving.terminal import ChatSession, interactive
from tests.conftest import random_image
from tests.original_llava import save_original

GREEDY = {"max_new_tokens": 8, "do_sample": False}


def reference_answer(model, processor, messages, image) -> str:
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    images = [image] if image is not None else None
    inputs = processor(images=images, text=prompt, add_special_tokens=False, return_tensors="pt")
    assert inputs["input_ids"][0, 1] != processor.tokenizer.bos_token_id  # one BOS, the template's
    with torch.no_grad():
        output = model.generate(**inputs, **GREEDY)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def loaded(llava_checkpoint):
    model = LlavaPluginForConditionalGeneration.from_pretrained(llava_checkpoint).eval()
    return model, LlavaPluginProcessor.from_pretrained(llava_checkpoint)


def user(text: str, image: bool = False) -> dict:
    content = [{"type": "text", "text": text}]
    return {"role": "user", "content": ([{"type": "image"}] if image else []) + content}


def test_multi_turn_answers_follow_the_conversation(loaded, tmp_path):
    model, processor = loaded
    random_image(0).save(tmp_path / "a.png")
    session = ChatSession(model, processor, max_new_tokens=GREEDY["max_new_tokens"])
    session.set_image(tmp_path / "a.png")
    image = session.image
    first = session.ask("What is the colour of the square?")
    assert first  # the tiny random model does say something: the comparison below is not between two empties
    assert first == reference_answer(model, processor, [user("What is the colour of the square?", True)], image)
    second = session.ask("Where is the blue circle?")
    history = [
        user("What is the colour of the square?", True),
        {"role": "assistant", "content": [{"type": "text", "text": first}]},
        user("Where is the blue circle?"),
    ]
    assert second == reference_answer(model, processor, history, image)


def test_interactive_loop_streams_answers_and_switches_images(loaded, tmp_path):
    model, processor = loaded
    for index in range(2):
        random_image(index).save(tmp_path / f"{index}.png")
    lines = iter(["What is the colour of the square?", f"/image {tmp_path / '1.png'}", "Where is it?", "/bogus"])

    def read(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    session = ChatSession(model, processor, max_new_tokens=GREEDY["max_new_tokens"])
    session.set_image(tmp_path / "0.png")
    first_image = session.image
    out = io.StringIO()
    interactive(session, read, out)
    printed = out.getvalue()
    expected_first = reference_answer(model, processor, [user("What is the colour of the square?", True)], first_image)
    expected_second = reference_answer(model, processor, [user("Where is it?", True)], session.image)
    assert f"ASSISTANT: {expected_first}" in printed
    assert "(new conversation about this image)" in printed and f"ASSISTANT: {expected_second}" in printed
    assert "Unknown command '/bogus'" in printed
    assert len(session.messages) == 2  # the new image started a new conversation


def test_an_unreadable_image_is_named(loaded, tmp_path):
    session = ChatSession(*loaded)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        session.set_image(tmp_path / "broken.png")


def test_chat_loads_an_original_checkpoint_as_converted(tmp_path, checkpoints):
    source = save_original(tmp_path / "original", checkpoints, "mlp2x_gelu")
    model, processor = load_llava(str(source), device="cpu")
    session = ChatSession(model, processor, max_new_tokens=GREEDY["max_new_tokens"])
    random_image(4).save(tmp_path / "a.png")
    session.set_image(tmp_path / "a.png")
    answer = session.ask("What is the colour of the square?")
    assert answer == reference_answer(
        model, processor, [user("What is the colour of the square?", True)], session.image
    )


@pytest.mark.slow
def test_one_shot_command_prints_the_answer(loaded, llava_checkpoint, tmp_path):
    model, processor = loaded
    random_image(2).save(tmp_path / "a.png")
    result = subprocess.run(
        [sys.executable, "-m", "command_line.main", "chat", llava_checkpoint, "--image", str(tmp_path / "a.png"),
         "--prompt", "What is the colour of the square?", "--max-new-tokens", "8"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    session = ChatSession(model, processor)
    session.set_image(tmp_path / "a.png")
    expected = reference_answer(model, processor, [user("What is the colour of the square?", True)], session.image)
    assert result.stdout.strip().splitlines()[-1] == expected


@pytest.mark.parametrize("command", [["chat", "--prompt", "Hello?"], ["serve", "--port", "0"]])
def test_a_peft_folder_without_its_base_record_is_one_line(lora_adapter, capsys, command):
    """A LoRA folder loads through the `llava_base.json` that `llava train lora` writes beside it
    (tests/test_adapters.py); a bare PEFT adapter has none to rebuild its base from."""
    capsys.readouterr()  # only what the command prints
    with pytest.raises(SystemExit) as exit_info:
        llava([command[0], str(lora_adapter), *command[1:]])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"llava {command[0]}: ") and "has no llava_base.json" in message
    assert "llava train lora" in message and "\n" not in message
