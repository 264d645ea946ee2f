"""A LoRA folder (`llava train lora`) is loaded as it is, unmerged, by every command that loads a checkpoint, and
answers as the checkpoint `llava merge-lora` makes of it.

References: PEFT's own `PeftModel.from_pretrained` on transformers' own loading of the base, and the merged checkpoint
loaded as any checkpoint.
"""

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor

from command_line.main import main as llava
from hub_cards.model_card import ADAPTER_BASE_NAME
from processing.generation import generate_greedy, load_llava
from serving.server import serving_in_thread
from serving.terminal import ChatSession
from tests.conftest import QUESTION, random_image, run_args, train
from trainers.merge_lora import merge_lora
from trainers.stages import lora_config
from trainers.train import base_description, parse

MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, llava_checkpoint):
    """A LoRA folder as `llava train lora --model_name_or_path CHECKPOINT` leaves it, with adapters and projector
    moved away from their initial values (as training moves them), so that the adapter changes the answers."""
    folder = tmp_path_factory.mktemp("adapter") / "lora"
    base = AutoModelForImageTextToText.from_pretrained(llava_checkpoint)
    model = get_peft_model(base, lora_config(base, r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    AutoProcessor.from_pretrained(llava_checkpoint).save_pretrained(folder)
    script_args, _, model_args = parse(
        ["lora", "--model_name_or_path", llava_checkpoint, "--output_dir", str(folder), "--bf16", "false"]
    )
    (folder / ADAPTER_BASE_NAME).write_text(json.dumps(base_description(script_args, model_args)))
    return folder


@pytest.fixture(scope="module")
def merged(adapter, tmp_path_factory):
    return merge_lora(adapter, tmp_path_factory.mktemp("merged") / "merged")


def logits(model, processor, image) -> torch.Tensor:
    prompt = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def test_an_adapter_loads_unmerged_and_answers_as_peft_and_as_its_merged_checkpoint(adapter, merged, llava_checkpoint):
    model, processor = load_llava(str(adapter), device="cpu")
    assert isinstance(model, PeftModel) and any("lora_A" in name for name, _ in model.named_parameters())
    image = random_image(3)

    reference = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(llava_checkpoint), adapter)
    expected = logits(reference.eval(), processor, image)
    assert torch.equal(logits(model, processor, image), expected)
    base = AutoModelForImageTextToText.from_pretrained(llava_checkpoint).eval()
    assert not torch.allclose(logits(base, processor, image), expected, atol=1e-2)  # the adapter does change them

    merged_model, merged_processor = load_llava(str(merged), device="cpu")
    torch.testing.assert_close(logits(merged_model, merged_processor, image), expected, atol=1e-5, rtol=1e-5)
    images = [random_image(seed) for seed in range(4)]
    conversations = [QUESTION] * len(images)
    answers = generate_greedy(model, processor, conversations, images, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    merged_answers = generate_greedy(
        merged_model, merged_processor, conversations, images, max_new_tokens=MAX_NEW_TOKENS, progress=False
    )
    assert answers == merged_answers and any(answers)


def test_llava_chat_answers_with_an_adapter_as_with_its_merged_checkpoint(adapter, merged, tmp_path, capsys):
    random_image(5).save(tmp_path / "a.png")
    question = "What is the colour of the square?"
    capsys.readouterr()
    llava(["chat", str(adapter), "--image", str(tmp_path / "a.png"), "--prompt", question, "--device", "cpu",
           "--max-new-tokens", str(MAX_NEW_TOKENS)])  # fmt: skip
    session = ChatSession(*load_llava(str(merged), device="cpu"), max_new_tokens=MAX_NEW_TOKENS)
    session.set_image(tmp_path / "a.png")
    expected = session.ask(question)
    assert expected and capsys.readouterr().out.strip().splitlines()[-1] == expected


def test_llava_serve_answers_with_an_adapter_as_with_its_merged_checkpoint(adapter, merged, monkeypatch):
    import openai
    import uvicorn

    import serving.server
    from tests.test_serve import user_with_image

    created = {}
    create_app = serving.server.create_app
    monkeypatch.setattr(serving.server, "create_app", lambda *args: created.setdefault("app", create_app(*args)))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: None)  # returns at once: served below instead
    llava(["serve", str(adapter), "--port", "0", "--device", "cpu", "--no-page"])
    monkeypatch.undo()
    assert isinstance(created["app"].state.worker.model, PeftModel)
    image, question = random_image(6), "What is the colour of the square?"
    with serving_in_thread(created["app"]) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        messages = [user_with_image(image, question)]
        reply = client.chat.completions.create(model="x", messages=messages, max_tokens=MAX_NEW_TOKENS)
    session = ChatSession(*load_llava(str(merged), device="cpu"), max_new_tokens=MAX_NEW_TOKENS)
    session.image = image
    expected = session.ask(question)
    assert expected and reply.choices[0].message.content == expected


def test_llava_eval_scores_an_adapter_as_its_merged_checkpoint(adapter, merged, tmp_path):
    from tests.test_scienceqa import PROBLEMS, problem

    release = tmp_path / "scienceqa"
    (release / "images" / "test").mkdir(parents=True)
    (release / "problems.json").write_text(json.dumps(PROBLEMS | {"t1": problem("natural science", 1, "", False, 0)}))
    (release / "pid_splits.json").write_text(json.dumps({"train": ["t1"], "test": list(PROBLEMS)}))
    for seed, pid in enumerate(pid for pid, p in PROBLEMS.items() if p["image"]):
        (release / "images" / "test" / pid).mkdir()
        random_image(seed).save(release / "images" / "test" / pid / "image.png")
    outputs = {}
    for name, folder in {"adapter": adapter, "merged": merged}.items():
        llava(["eval", "scienceqa", str(folder), "--data", str(release), "--output-dir", str(tmp_path / name),
               "--device", "cpu", "--max-new-tokens", str(MAX_NEW_TOKENS)])  # fmt: skip
        results = json.loads((tmp_path / name / "scienceqa_results.json").read_text())
        outputs[name] = [prediction["output"] for prediction in results["predictions"]]
    assert outputs["adapter"] == outputs["merged"] and any(outputs["adapter"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes' quantized layers need CUDA")
def test_an_adapter_loads_on_a_4bit_base(adapter):
    pytest.importorskip("bitsandbytes", reason="4-bit loading needs the qlora extra (bitsandbytes)")
    model, processor = load_llava(str(adapter), device="cuda", quantization="4bit")
    assert isinstance(model, PeftModel)
    assert any(type(module).__name__ == "Linear4bit" for module in model.modules())
    [answer] = generate_greedy(model, processor, [QUESTION], [random_image(0)], max_new_tokens=4, progress=False)
    assert isinstance(answer, str)


@pytest.mark.slow
def test_a_trained_lora_run_from_backbones_answers_unmerged_as_merged(checkpoints, train_data, tmp_path):
    """The LLaVA-1.5 LoRA recipe's shape: two backbones, a projector trained in full beside the adapters."""
    train("lora", run_args(checkpoints, train_data, tmp_path / "lora"))
    model, processor = load_llava(str(tmp_path / "lora"), device="cpu")
    merged_model, merged_processor = load_llava(str(merge_lora(tmp_path / "lora", tmp_path / "merged")), device="cpu")
    image = random_image(7)
    expected = logits(merged_model, merged_processor, image)
    torch.testing.assert_close(logits(model, processor, image), expected, atol=1e-5, rtol=1e-5)
    images = [random_image(seed) for seed in range(4)]
    answers = [
        generate_greedy(m, p, [QUESTION] * 4, images, max_new_tokens=MAX_NEW_TOKENS, progress=False)
        for m, p in ((model, processor), (merged_model, merged_processor))
    ]
    assert answers[0] == answers[1]
