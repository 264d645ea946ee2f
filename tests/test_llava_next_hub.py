"""A LLaVA-NeXT (1.6) checkpoint on the Hub: its model card (what it is, AnyRes, its pinpoints in both orders, the
range of image tokens, whether the tower was trained, a usage snippet that runs) and `llava push` (every remote-code
file it needs, so that a process without this package loads it from the local fake Hub with the same logits).

References: the config's fields, the processor's own token counts over many image sizes, the model's `generate()`
on the original's vicuna_v1 prompt, and the outputs of the checkpoint loaded here.
"""

import contextlib
import io
import json
import re
import shutil
import subprocess
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from command_line.main import main as llava
from hub_cards.model_card import RUN_INFO_NAME, VISION_TOWER_LR, render_model_card
from tests.conftest import GREEDY, QUESTION, REMOTE_SCRIPT, random_image, reference_outputs, vicuna_v1_get_prompt
from tests.test_loading import remote_code_pythons
from tests.test_push import hub  # noqa: F401  (the local fake Hub, with this process pointed at it)

REPO_ID = "someone/tiny-next"


@pytest.fixture
def folder(tmp_path, next_checkpoint):
    shutil.copytree(next_checkpoint, tmp_path / "tiny-next")
    return tmp_path / "tiny-next"


def rows(card: ModelCard) -> dict[str, str]:
    """The card's architecture table, part -> what."""
    return dict(re.findall(r"^\| ([^|]+?) \| (.+?) \|$", card.text, flags=re.MULTILINE))


def test_card_names_llava_next_its_tiling_and_token_range(folder):
    card = render_model_card(folder, repo_id=REPO_ID)
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-text-to-text" and data["library_name"] == "transformers"
    assert {"llava_next_plugin", "llava-next", "llava-1.6", "anyres", "custom_code"} <= set(data["tags"])
    assert "llava_plugin" not in data["tags"]
    assert "LLaVA-NeXT (LLaVA-1.6)" in card.text and "AnyRes" in card.text and "liu2024llavanext" in card.text

    config = json.loads((folder / "config.json").read_text())
    table = rows(card)
    assert table["model type"] == "llava_next_plugin"
    pinpoints = config["image_grid_pinpoints"]  # (height, width); the original's are the same pairs swapped
    assert str(pinpoints) in table["tiling"] and str([pair[::-1] for pair in pinpoints]) in table["tiling"]
    assert "(height, width)" in table["tiling"] and "(width, height)" in table["tiling"]
    # The range against the processor's own count of every image size from 1 to 200 pixels a side (tiny tiles).
    processor = AutoProcessor.from_pretrained(folder)
    counts = {processor.num_image_tokens((height, width)) for height in range(1, 200, 3) for width in range(1, 200, 3)}
    assert table["image tokens per image"].startswith(f"{processor.image_seq_length} to {max(counts)} ")
    assert min(counts) >= processor.image_seq_length
    assert table["image tokens per tile"] == str(processor.image_seq_length)


@pytest.mark.parametrize(
    ("hyperparameters", "expected"),
    [
        (None, "this checkpoint's own, used as saved"),
        ({"learning_rate": 2e-5}, "frozen in this run"),
        ({"learning_rate": 2e-5, VISION_TOWER_LR: 2e-6}, "trained in this run (learning rate 2e-06)"),
    ],
    ids=["converted", "frozen", "trained"],
)
def test_card_says_whether_the_vision_tower_was_trained(folder, hyperparameters, expected):
    if hyperparameters is not None:
        run = {"stage": "stage2", "description": "Stage 2.", "template": "vicuna_v1", "sources": {}}
        (folder / RUN_INFO_NAME).write_text(json.dumps({**run, "hyperparameters": hyperparameters}))
    assert rows(render_model_card(folder, repo_id=REPO_ID))["vision tower weights"].startswith(expected)


def test_card_usage_snippet_runs_on_the_checkpoint(folder, tmp_path):
    """The card's first snippet, pointed at the folder and an image, prints what `generate()` gives on the original's
    vicuna_v1 prompt."""
    image = random_image(5, (47, 13))
    image.save(tmp_path / "photo.jpg", quality=100)
    card = render_model_card(folder, repo_id=REPO_ID)
    snippet = re.findall(r"```python\n(.*?)```", card.text, flags=re.DOTALL)[0]
    snippet = snippet.replace(REPO_ID, str(folder)).replace('"photo.jpg"', repr(str(tmp_path / "photo.jpg")))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet, {})

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    prompt = vicuna_v1_get_prompt([("USER", "<image>\nWhat is in the image?"), ("ASSISTANT", None)])
    inputs = processor(images=Image.open(tmp_path / "photo.jpg"), text=processor.tokenizer.bos_token + prompt,
                       add_special_tokens=False, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=128, do_sample=False)
    assert printed.getvalue().strip() == processor.decode(tokens[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("python", remote_code_pythons())
def test_pushed_checkpoint_loads_from_the_hub_with_remote_code_alone(hub, folder, tmp_path, python):  # noqa: F811
    llava(["push", str(folder), REPO_ID])
    remote = hub.files(REPO_ID)
    modules = {"configuration_llava_next_plugin.py", "modeling_llava_next_plugin.py"}
    assert modules | {"processing_llava_next_plugin.py", "anyres.py"} <= set(remote)
    auto_map = json.loads(remote["config.json"])["auto_map"]
    assert auto_map["AutoModelForImageTextToText"].startswith("modeling_llava_next_plugin.")

    image_path = tmp_path / "image.png"
    random_image(3, (40, 52)).save(image_path)  # both sides above the tile: see test_llava_next's remote-code test
    script = tmp_path / "remote.py"
    script.write_text(textwrap.dedent(REMOTE_SCRIPT))
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    arguments = [REPO_ID, str(image_path), json.dumps(QUESTION), json.dumps(GREEDY), str(tmp_path / "out.safetensors")]
    result = subprocess.run(
        [python, str(script), *arguments], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = load_file(tmp_path / "out.safetensors")
    logits, tokens = reference_outputs(str(folder), image_path)
    torch.testing.assert_close(outputs["logits"], logits, atol=1e-5, rtol=0)
    assert torch.equal(outputs["tokens"], tokens)
    assert f"GET /{REPO_ID}/resolve/" in "\n".join(hub.requests)
