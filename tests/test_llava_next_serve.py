"""`llava serve` with a LLaVA-NeXT (1.6) checkpoint: the OpenAI API (whole and streamed, concurrent requests whose
images tile into different grids) and the chat page's API.

The reference for every answer is the model's own `generate()` on the question alone
(`tests.test_llava_next_downstream.reference_answer`: the processor's inputs from the original's vicuna_v1 prompt),
independently of the server's rendering path.
"""

import threading
from math import isqrt

import openai
import pytest
from gradio_client import Client, handle_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from serving.server import ServeSettings, create_app, serving_in_thread
from tests import original_llava_next as original_next
from tests.conftest import random_image
from tests.test_llava_next_downstream import MAX_NEW_TOKENS, reference_answer
from tests.test_serve import streamed, user_with_image

# (height, width): sizes whose grids differ on the tiny tower's pinpoints (1x1, 2x1, 1x2 tiles and others), so that
# requests answered one after another carry different tile and image-token counts.
SIZES = [(20, 64), (47, 13), (40, 52), (30, 30)]
QUESTIONS = [f"Question {index}: what is the colour of the square?" for index in range(len(SIZES))]


@pytest.fixture(scope="module")
def loaded_next(next_checkpoint):
    model = AutoModelForImageTextToText.from_pretrained(next_checkpoint).eval()
    return model, AutoProcessor.from_pretrained(next_checkpoint)


@pytest.fixture(scope="module")
def images():
    return [random_image(20 + index, size) for index, size in enumerate(SIZES)]


@pytest.fixture(scope="module")
def expected(next_checkpoint, loaded_next, images) -> list[str]:
    processor = loaded_next[1]
    counts = {processor.num_image_tokens(size) for size in SIZES}
    assert len(counts) > 2, "the images must expand to different token counts, or the mix says little"
    answers = [reference_answer(next_checkpoint, image, text) for image, text in zip(images, QUESTIONS, strict=True)]
    assert len(set(answers)) > 1, "the reference answers must differ, or a crossed answer would not show"
    return answers


@pytest.fixture(scope="module")
def server(loaded_next):
    with serving_in_thread(create_app(*loaded_next, "tiny-next", ServeSettings())) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def request(image, text: str) -> dict:
    return {"model": "tiny-next", "messages": [user_with_image(image, text)], "max_tokens": MAX_NEW_TOKENS}


def test_api_answers_whole_and_streamed_as_generate_alone(client, images, expected):
    answer = client.chat.completions.create(**request(images[0], QUESTIONS[0]), temperature=0)
    assert answer.choices[0].message.content == expected[0]
    text, chunks = streamed(client, **request(images[1], QUESTIONS[1]))
    assert text == expected[1] and len([chunk for chunk in chunks if chunk.choices]) > 2


def test_usage_counts_each_images_own_token_count(client, next_checkpoint, images):
    """The prompt's tokens are its text's with `<image>` as one token, plus that image's tokens as the original
    counts them (`tests/original_llava_next.py`, on the original's (width, height) pinpoints)."""
    processor = AutoProcessor.from_pretrained(next_checkpoint)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": f"<image>\n{QUESTIONS[2]}"}], add_generation_prompt=True
    )
    text_tokens = len(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    pinpoints = [pair[::-1] for pair in processor.image_processor.image_grid_pinpoints]
    tile = processor.image_processor.crop_size["height"]
    side = isqrt(processor.image_seq_length)
    image_tokens = original_next.token_count(SIZES[2][::-1], pinpoints, tile, side)
    answer = client.chat.completions.create(**request(images[2], QUESTIONS[2]))
    assert answer.usage.prompt_tokens == text_tokens - 1 + image_tokens


def test_concurrent_requests_with_images_of_different_grids_get_their_own_answers(client, images, expected):
    answers: list[str | None] = [None] * len(SIZES)

    def ask(index: int) -> None:
        if index % 2:
            answers[index] = streamed(client, **request(images[index], QUESTIONS[index]))[0]
        else:
            answers[index] = client.chat.completions.create(**request(images[index], QUESTIONS[index]))
            answers[index] = answers[index].choices[0].message.content

    threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(SIZES))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers == expected


def test_text_only_request_answers_as_generate_alone(client, next_checkpoint):
    text = "How many shapes are there?"
    answer = client.chat.completions.create(
        model="tiny-next", messages=[{"role": "user", "content": text}], max_tokens=MAX_NEW_TOKENS
    )
    assert answer.choices[0].message.content == reference_answer(next_checkpoint, None, text)


def test_page_api_answers_as_generate_alone(server, images, expected, tmp_path):
    images[3].save(tmp_path / "image.png")
    history = [{"role": "user", "content": [{"type": "text", "text": QUESTIONS[3]}]}]
    client = Client(server, verbose=False)
    answered = client.predict(
        history, handle_file(str(tmp_path / "image.png")), 0, 1, MAX_NEW_TOKENS, api_name="/answer"
    )
    content = answered[-1]["content"]
    text = content if isinstance(content, str) else "".join(part.get("text", "") for part in content)
    assert answered[-1]["role"] == "assistant" and text == expected[3]
