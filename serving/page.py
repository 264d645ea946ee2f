"""The chat page of `llava serve`: a Gradio app, another client of the server's `GenerationWorker`.

A conversation is about one image (LLaVA-1.5 was trained with one image per conversation): uploading or pasting
another starts a new conversation, as `/image` does in `llava chat`. The image goes with the first user turn and the
conversation is rendered by the same path as `llava chat` and the API, so the page's greedy answers are theirs.
Answers stream in; Stop cancels the generation (its job is withdrawn from the worker), Regenerate asks the last
question again, Clear starts over.
"""

from collections.abc import AsyncIterator

import gradio as gr

from processing.conversation import assistant_message, user_message
from processing.images import decode_image

from .example_images import examples
from .openai_format import Sampling
from .request_error import RequestError
from .request_images import ImagePolicy
from .worker import GenerationWorker


def message_text(message: dict) -> str:
    """The text of a chatbot message, whether Gradio gives its content as a string or as a list of parts."""
    content = message["content"]
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(part.get("text", "") for part in parts if isinstance(part, dict) and part.get("type") == "text")


def model_messages(history: list[dict], with_image: bool) -> list[dict]:
    """The chatbot's history (ending with the question) as the model's conversation; the image in the first turn."""
    messages = []
    for message in history:
        if message["role"] == "user":
            messages.append(user_message(message_text(message), images=int(with_image and not messages)))
        else:
            messages.append(assistant_message(message_text(message)))
    return messages


def build_page(worker: GenerationWorker, model_name: str, policy: ImagePolicy) -> gr.Blocks:
    """The page's Blocks; its `answer` event (API name `/answer`) streams the answer to the history's last question."""

    async def answer(
        history: list[dict], image: str | None, temperature: float, top_p: float, max_new_tokens: float
    ) -> AsyncIterator[list[dict]]:
        if not history or history[-1]["role"] != "user":
            yield history
            return
        try:
            images = [decode_image(image, policy.background, policy.max_pixels)] if image else []
        except Exception as error:  # a file Gradio accepted but PIL cannot decode, or one past the pixel limit
            raise gr.Error(f"The image cannot be used: {error}") from error
        sampling = Sampling(int(max_new_tokens), float(temperature), float(top_p))
        try:
            job = await worker.submit(model_messages(history, bool(images)), images, sampling)
        except RequestError as error:
            raise gr.Error(error.message) from error
        history = [*history, {"role": "assistant", "content": ""}]
        try:
            async for piece in job.pieces():
                history[-1] = {"role": "assistant", "content": history[-1]["content"] + piece}
                yield history
        finally:  # Stop cancels this generator: the worker stops writing the answer
            worker.withdraw(job)
        yield history

    def ask(question: str, history: list[dict]) -> tuple[str, list[dict]]:
        if not question.strip():
            return question, history
        return "", [*history, {"role": "user", "content": question.strip()}]

    def without_last_answer(history: list[dict]) -> list[dict]:
        return history[:-1] if history and history[-1]["role"] == "assistant" else history

    with gr.Blocks(title="LLaVA") as page:
        gr.Markdown(f"## LLaVA\nAnswering: `{model_name}`", elem_id="model-line")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    type="filepath", sources=["upload", "clipboard"], label="Image (a new one starts over)"
                )
                with gr.Accordion("Generation", open=False):
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0: greedy)")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
                    max_new_tokens = gr.Slider(
                        1, worker.default_max_new_tokens, value=min(256, worker.default_max_new_tokens), step=1,
                        label="Max new tokens",
                    )  # fmt: skip
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", elem_id="conversation", height=420, render_markdown=False)
                question = gr.Textbox(placeholder="Ask about the image, then Enter", show_label=False, elem_id="ask")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", elem_id="stop")
                    regenerate = gr.Button("Regenerate", elem_id="regenerate")
                    clear = gr.Button("Clear", elem_id="clear")
        gr.Examples([[str(path), text] for path, text in examples()], inputs=[image, question])

        settings = [image, temperature, top_p, max_new_tokens]
        answering = []
        for trigger, api_name in ((send.click, "answer"), (question.submit, False)):
            asked = trigger(ask, [question, chatbot], [question, chatbot], api_name=False)
            answering.append(asked.then(answer, [chatbot, *settings], chatbot, api_name=api_name))
        redo = regenerate.click(without_last_answer, chatbot, chatbot, api_name=False)
        answering.append(redo.then(answer, [chatbot, *settings], chatbot, api_name=False))
        stop.click(None, cancels=answering)
        clear.click(lambda: [], None, chatbot, cancels=answering, api_name=False)
        image.change(lambda: [], None, chatbot, cancels=answering, api_name=False)
    page.queue(default_concurrency_limit=None)  # the worker's queue is the one that bounds and orders requests
    return page


__all__ = ["build_page", "message_text", "model_messages"]
