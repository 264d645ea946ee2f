"""`llava serve`'s API, driven by the official `openai` client over real HTTP on 127.0.0.1.

The reference for every answer is `llava chat` itself (`ChatSession.ask`, greedy) on the same model, or the model's
own `generate` for token counts: the server must render and answer exactly as the terminal chat does.
"""

import base64
import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from modeling_llava import LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from serving.example_images import EXAMPLES, EXAMPLES_DIR, IMAGE_SIZE
from serving.server import ServeSettings, create_app, listen, serving_in_thread
from serving.terminal import ChatSession
from tests.conftest import data_url, random_image
from trainers.demo.world import Scene, render

QUESTION = "What is the colour of the square?"
MAX_PIXELS = 10_000  # the module server's --max-image-pixels: random_image's 40x52 pass, a 200x200 image does not


@pytest.fixture(scope="module")
def server(loaded):
    settings = ServeSettings(max_image_pixels=MAX_PIXELS, page=False)
    app = create_app(*loaded, "tiny-llava", settings)
    with serving_in_thread(app) as url:
        yield url, app.state.worker


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0)


def chat_answers(loaded, image: Image.Image | None, questions: list[str], max_new_tokens: int = 8) -> list[str]:
    """What `llava chat` answers to each question in turn, about `image`."""
    session = ChatSession(*loaded, max_new_tokens=max_new_tokens)
    session.image = image
    return [session.ask(question) for question in questions]


def user_with_image(image: Image.Image, text: str) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(image)}},
            {"type": "text", "text": text},
        ],
    }


def streamed(client, **request) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(stream=True, **request))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    return text, chunks


def test_openai_client_gets_the_answers_of_llava_chat(client, loaded):
    image = random_image(0)
    first, second = chat_answers(loaded, image, [QUESTION, "Where is the blue circle?"])
    assert first and second  # the tiny random model says something: not a comparison of two empty strings
    messages = [user_with_image(image, QUESTION)]
    answer = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=8, temperature=0)
    assert answer.choices[0].message.content == first
    text, chunks = streamed(client, model="tiny-llava", messages=messages, max_tokens=8)
    assert text == first and len([chunk for chunk in chunks if chunk.choices]) > 2  # streamed, not one piece
    history = [
        *messages,
        {"role": "assistant", "content": first},
        {"role": "user", "content": "Where is the blue circle?"},
    ]
    answer = client.chat.completions.create(model="tiny-llava", messages=history, max_tokens=8)
    assert answer.choices[0].message.content == second


def test_text_only_conversation_and_models(client, loaded, server):
    (expected,) = chat_answers(loaded, None, ["How many shapes are there?"])
    answer = client.chat.completions.create(
        model="tiny-llava", messages=[{"role": "user", "content": "How many shapes are there?"}], max_tokens=8
    )
    assert answer.choices[0].message.content == expected
    assert [model.id for model in client.models.list()] == ["tiny-llava"]


def test_usage_counts_expanded_image_tokens_and_generated_tokens(client, loaded):
    model, processor = loaded
    image = random_image(1)
    messages = [user_with_image(image, QUESTION)]
    answer = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=12)
    # Independently: the prompt's text tokens with `<image>` as one token, plus the patches the tower sees, less one.
    vision = model.config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": f"<image>\n{QUESTION}"}], add_generation_prompt=True
    )
    text_tokens = len(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert answer.usage.prompt_tokens == text_tokens - 1 + patches
    inputs = processor(images=[image], text=prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        generated = (
            model.generate(**inputs, max_new_tokens=12, do_sample=False).shape[1] - inputs["input_ids"].shape[1]
        )
    assert answer.usage.completion_tokens == generated
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + generated
    assert answer.choices[0].finish_reason == ("length" if generated == 12 else "stop")
    _, chunks = streamed(
        client, model="tiny-llava", messages=messages, max_tokens=12, stream_options={"include_usage": True}
    )
    assert chunks[-1].usage == answer.usage and chunks[-1].choices == []


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def raw_data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


LONG_TEXT = "What is the colour of the square? " * 80  # ~700 tokens: past the tiny model's 512 positions


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


BAD_REQUESTS = {
    "not an image": ([{"role": "user", "content": [image_part(raw_data_url(b"just text")), "Hi"]}], "invalid_image"),
    "truncated image": (
        [{"role": "user", "content": [image_part(raw_data_url(png_bytes(random_image(2))[:200])), "Hi"]}],
        "invalid_image",
    ),
    "decompression bomb": (
        [{"role": "user", "content": [image_part(raw_data_url(png_bytes(Image.new("L", (200, 200))))), "Hi"]}],
        "image_too_large",
    ),
    "two images": (
        [{"role": "user", "content": [image_part(data_url(random_image(3))), image_part(data_url(random_image(4)))]}],
        "too_many_images",
    ),
    "remote image": (
        [{"role": "user", "content": [image_part("https://example.com/a.png")]}],
        "remote_images_not_allowed",
    ),
    "local file": ([{"role": "user", "content": [image_part("/etc/passwd")]}], "local_files_not_allowed"),
    "prompt past the context": ([{"role": "user", "content": LONG_TEXT}], "context_length_exceeded"),
    "unknown role": ([{"role": "tool", "content": "Hi"}], "invalid_role"),
    "image token in text": ([{"role": "user", "content": "<image> Hi"}], "invalid_content"),
    "answer last": (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        "invalid_messages",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_messages_get_a_400_and_the_server_goes_on(client, loaded, case):
    messages, code = BAD_REQUESTS[case]
    messages = [{**message, "content": [
        {"type": "text", "text": part} if isinstance(part, str) else part for part in message["content"]
    ]} if isinstance(message["content"], list) else message for message in messages]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=4)
    assert error.value.status_code == 400 and error.value.code == code
    assert error.value.body["message"] and error.value.body["type"] == "invalid_request_error"
    (expected,) = chat_answers(loaded, None, ["Hi"], max_new_tokens=4)
    answer = client.chat.completions.create(
        model="tiny-llava", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content == expected


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'{"model": "x"}', "invalid_messages"),
        (b'{"messages": "Hi"}', "invalid_messages"),
        (b'{"messages": [{"role": "user", "content": 3}]}', "invalid_content"),
        (b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": "hot"}', "invalid_type"),
        (b'{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": true}', "invalid_type"),
        (b'{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0}', "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "Hi"}], "n": 2}', "unsupported_parameter"),
        (b'{"messages": [{"role": "user", "content": [{"type": "audio"}]}]}', "invalid_content"),
    ],
)
def test_malformed_bodies_get_an_openai_error(server, body, code):
    response = httpx.post(f"{server[0]}/v1/chat/completions", content=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"] == "invalid_request_error"


def test_unknown_path_is_an_openai_404(server):
    response = httpx.get(f"{server[0]}/v1/nothing-here", timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def test_remote_and_local_images_only_when_allowed(loaded, tmp_path):
    image = random_image(5)
    image.save(tmp_path / "a.png")
    (expected,) = chat_answers(loaded, image, [QUESTION])
    files = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(tmp_path)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    settings = ServeSettings(allow_remote_images=True, allow_local_files=True, page=False)
    try:
        with serving_in_thread(create_app(*loaded, "tiny-llava", settings)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            for source in (f"http://127.0.0.1:{files.server_port}/a.png", f"file://{tmp_path / 'a.png'}"):
                messages = [{"role": "user", "content": [image_part(source), {"type": "text", "text": QUESTION}]}]
                answer = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=8)
                assert answer.choices[0].message.content == expected, source
    finally:
        files.shutdown()


def test_concurrent_requests_get_their_own_greedy_answers(client, loaded):
    questions = [f"Question {index}: {QUESTION}" for index in range(6)]
    images = [random_image(10 + index) for index in range(6)]
    expected = [chat_answers(loaded, image, [question])[0] for image, question in zip(images, questions, strict=True)]
    assert len(set(expected)) > 1  # different questions, different answers: a crossed answer would show
    answers: list[str | None] = [None] * 6

    def ask(index: int) -> None:
        request = {
            "model": "tiny-llava",
            "messages": [user_with_image(images[index], questions[index])],
            "max_tokens": 8,
        }
        if index % 2:
            answers[index] = streamed(client, **request)[0]
        else:
            answers[index] = client.chat.completions.create(**request).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers == expected


@pytest.fixture(scope="module")
def held_server(llava_checkpoint) -> Iterator[SimpleNamespace]:
    """A server with room for one waiting request, whose model never stops early and is held by the test: each
    forward pass sets `inside`, then waits for `go`; `passes` counts them and `jobs` holds every submitted job.

    Holding the model, not a long generation, keeps a request running for as long as the test needs, however fast or
    busy the machine (a 400-token answer once finished before the test's third request arrived).
    """
    model = LlavaPluginForConditionalGeneration.from_pretrained(llava_checkpoint).eval()
    model.generation_config.eos_token_id = None
    held = SimpleNamespace(inside=threading.Event(), go=threading.Event(), passes=0, jobs=[])
    forward = model.forward

    def held_forward(*args, **kwargs):
        held.passes += 1
        held.inside.set()
        held.go.wait()
        return forward(*args, **kwargs)

    model.forward = held_forward
    app = create_app(
        model, LlavaPluginProcessor.from_pretrained(llava_checkpoint), "held", ServeSettings(max_queue=1, page=False)
    )
    held.worker = app.state.worker
    submit = held.worker.submit

    async def recorded_submit(*args, **kwargs):
        held.jobs.append(await submit(*args, **kwargs))
        return held.jobs[-1]

    held.worker.submit = recorded_submit
    with serving_in_thread(app) as held.url:
        try:
            yield held
        finally:
            held.go.set()  # a failed test leaves no generation waiting


def wait_for(condition, timeout: float = 60) -> None:
    """Polls `condition` until it holds; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_full_queue_answers_429_and_a_disconnect_frees_the_slot(held_server):
    held, worker = held_server, held_server.worker
    url = f"{held.url}/v1/chat/completions"
    body = {"model": "held", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 400, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", url, json=body) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the response, a disconnect
            assert next(lines).startswith("data: ")
            assert held.inside.wait(timeout=60)  # the first request is in the model, and stays there
            with http.stream("POST", url, json=body) as waiting:
                wait_for(lambda: worker.waiting == 1)
                refused = httpx.post(url, json=body | {"stream": False}, timeout=60)
                assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
                client = openai.OpenAI(base_url=f"{held.url}/v1", api_key="unused", max_retries=0)
                with pytest.raises(openai.RateLimitError):
                    client.chat.completions.create(model="held", messages=body["messages"], max_tokens=2)
                assert waiting.status_code == 200
            wait_for(lambda: worker.waiting == 0 and worker.cancelled == 1)  # left before its turn
        # The running request's client is gone too: its job is cancelled while its first forward pass is held, and
        # once let go, the generation stops at that token instead of going on to 400.
        running_job = held.jobs[0]
        wait_for(lambda: running_job.cancelled)
        held.go.set()
        wait_for(lambda: worker.cancelled == 2)
        assert held.passes == 1
        answered = worker.answered
        quick = http.post(url, json=body | {"stream": False, "max_tokens": 3})
        assert quick.status_code == 200 and quick.json()["usage"]["completion_tokens"] == 3
        assert worker.answered == answered + 1


def test_shipped_example_images_are_the_demo_world_drawings(tmp_path):
    for index, (name, scene, _) in enumerate(EXAMPLES):
        drawn = tmp_path / name  # saved as the shipped file was, so that both go through PNG the same way
        render(Scene(*scene), np.random.default_rng(index), IMAGE_SIZE).save(drawn, optimize=True)
        shipped = EXAMPLES_DIR / name
        assert np.array_equal(np.asarray(Image.open(shipped)), np.asarray(Image.open(drawn))), name
        assert shipped.stat().st_size < 10_000


@pytest.mark.slow
def test_llava_serve_command_answers_as_llava_chat(llava_checkpoint, loaded, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "command_line.main", "serve", llava_checkpoint, "--port", "0", "--no-page"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        assert line.startswith("llava serve: ") and "http://127.0.0.1:" in line, line + process.stderr.read()
        base = line.split("(OpenAI API: ")[1].rstrip(")\n")
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
        image = random_image(6)
        answer = client.chat.completions.create(model="x", messages=[user_with_image(image, QUESTION)], max_tokens=8)
        assert answer.choices[0].message.content == chat_answers(loaded, image, [QUESTION])[0]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_served_socket_accepts_connections_before_the_server_has_started():
    """`llava serve` prints its URL before uvicorn starts: a client connecting then waits in the backlog instead of
    being refused (a refused connection failed this file's command test once on a busy machine)."""
    listening, url = listen("127.0.0.1", 0)
    with listening, socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5):
        pass
