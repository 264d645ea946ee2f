"""`llava serve`'s chat page: through its Gradio API with `gradio_client`, and in a headless Chromium.

Both must answer as `llava chat` does (`ChatSession.ask`, greedy) about the same image: the page is one more client
of the server's worker, rendering conversations by the same path.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from serving.server import ServeSettings, create_app, serving_in_thread
from serving.terminal import ChatSession
from tests.conftest import random_image

QUESTION = "What is the colour of the square?"


@pytest.fixture(scope="module")
def page(loaded):
    with serving_in_thread(create_app(*loaded, "tiny-llava-page", ServeSettings())) as url:
        yield url


def chat_answers(loaded, image_path: Path, questions: list[str], max_new_tokens: int) -> list[str]:
    session = ChatSession(*loaded, max_new_tokens=max_new_tokens)
    session.set_image(image_path)
    return [session.ask(question) for question in questions]


@pytest.mark.slow
def test_page_api_answers_as_llava_chat_over_two_turns(page, loaded, tmp_path):
    random_image(7).save(tmp_path / "a.png")
    first, second = chat_answers(loaded, tmp_path / "a.png", [QUESTION, "Where is it?"], max_new_tokens=8)
    client = Client(page, verbose=False)
    history = [user(QUESTION)]
    answered = client.predict(history, handle_file(str(tmp_path / "a.png")), 0, 1, 8, api_name="/answer")
    assert answered[-1]["role"] == "assistant" and page_text(answered[-1]) == first
    history = [*answered, user("Where is it?")]
    answered = client.predict(history, handle_file(str(tmp_path / "a.png")), 0, 1, 8, api_name="/answer")
    assert page_text(answered[-1]) == second


def user(text: str) -> dict:
    """A user message as Gradio's chatbot holds it: content as a list of parts."""
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def page_text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def test_page_names_the_checkpoint_and_ships_examples(page):
    config = httpx.get(f"{page}/config", timeout=30).json()
    assert "tiny-llava-page" in json.dumps(config)
    assert "red-square.png" in json.dumps(config)


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium") or not shutil.which("chromedriver"), reason="no chromium to drive")
def test_a_browser_uploads_an_image_and_reads_the_streamed_answer(page, loaded, tmp_path):
    image = random_image(8, size=(120, 160))
    image.save(tmp_path / "a.png")
    (expected,) = chat_answers(loaded, tmp_path / "a.png", [QUESTION], max_new_tokens=256)  # the page's default
    screenshot = tmp_path / "page.png"
    script = Path(__file__).parent / "browser" / "check_page.py"
    result = subprocess.run(
        [sys.executable, str(script), page, str(tmp_path / "a.png"), QUESTION, str(screenshot), expected],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert " ".join(shown.split()) == " ".join(expected.split())
    with Image.open(screenshot) as saved:
        assert saved.size[0] >= 800
