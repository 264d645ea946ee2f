"""`llava chat MODEL [--image PATH] [--prompt TEXT]`: talk to a LLaVA model in the terminal, as the original's CLI.

MODEL is a local folder in any format `llava convert` reads (this plugin's, llava-hf, the original repository's) or a
Hub id. With `--prompt`, one answer is printed and the command exits; without, an interactive multi-turn chat reads
questions from the terminal and streams the answers token by token. `/image PATH` starts a new conversation about
another image (LLaVA-1.5 was trained with one image per conversation), `/reset` forgets the conversation, `/exit` or
end of input leaves.
"""

from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import torch
from PIL import Image
from transformers import TextStreamer

from modeling_llava import AnyLlavaForConditionalGeneration, LlavaPluginProcessor
from processing.conversation import (
    assistant_message,
    decode_answer,
    render_conversation,
    stop_arguments,
    user_message,
)
from processing.generation import load_llava, sampling_arguments
from processing.images import decode_image, image_background

HELP = "Commands: /image PATH (new conversation about that image), /reset, /exit."


class ChatSession:
    """A conversation with one model: the messages so far and the image they are about.

    Decoding is greedy unless `temperature > 0`. The image goes with the first user turn, where LLaVA's training data
    puts it; later turns are text.
    """

    def __init__(
        self,
        model: AnyLlavaForConditionalGeneration,
        processor: LlavaPluginProcessor,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
    ):
        self.model, self.processor = model, processor
        self.generation = {"max_new_tokens": max_new_tokens, **sampling_arguments(temperature)}
        self.image: Image.Image | None = None
        self.messages: list[dict] = []

    def set_image(self, path: str | Path | None) -> None:
        """Starts a new conversation about the image at `path` (or about no image)."""
        if path is not None:
            try:
                self.image = decode_image(str(path), image_background(self.processor))
            except (OSError, Image.DecompressionBombError) as error:
                raise ValueError(f"Cannot read the image {str(path)!r}: {error}") from error
        else:
            self.image = None
        self.messages = []

    def ask(self, text: str, streamer: TextStreamer | None = None) -> str:
        """The model's answer to `text`, given the conversation so far; both join the conversation."""
        with_image = self.image is not None and not self.messages
        messages = [*self.messages, user_message(text, images=int(with_image))]
        images = [self.image] if self.image is not None else None  # every turn sees the image of the first
        inputs = render_conversation(self.processor, messages, images).to(
            self.model.device, dtype=self.model.dtype
        )  # the dtype applies to floating tensors only
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, **self.generation, **stop_arguments(self.processor), streamer=streamer
            )
        answer = decode_answer(self.processor, output[0, inputs["input_ids"].shape[1] :])
        self.messages = [*messages, assistant_message(answer)]
        return answer


def interactive(session: ChatSession, read: Callable[[str], str] = input, out: TextIO | None = None) -> None:
    """The terminal loop: questions from `read`, answers streamed to `out` as they are generated."""
    import sys

    out = out or sys.stdout
    print(HELP, file=out)
    while True:
        try:
            line = read("USER: ").strip()
        except EOFError:
            break
        if not line:
            continue
        if line == "/exit":
            break
        if line == "/reset":
            session.set_image(None)
            print("(conversation reset, no image)", file=out)
        elif line.startswith("/image"):
            try:
                session.set_image(line.removeprefix("/image").strip())
                print("(new conversation about this image)", file=out)
            except ValueError as error:
                print(error, file=out)
        elif line.startswith("/"):
            print(f"Unknown command {line.split()[0]!r}. {HELP}", file=out)
        else:
            print("ASSISTANT: ", end="", file=out, flush=True)
            session.ask(line, streamer=_Streamer(session.processor.tokenizer, out))


class _Streamer(TextStreamer):
    """`TextStreamer` that writes to a given stream instead of stdout."""

    def __init__(self, tokenizer, out: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        print(text, end="" if not stream_end else "\n", file=self.out, flush=True)


def run(
    model: str,
    image: str | None,
    prompt: str | None,
    max_new_tokens: int,
    temperature: float,
    device: str,
    vision_tower: str | None,
    dtype: str = "auto",
    quantization: str | None = None,
    template: str | None = None,
) -> None:
    llava, processor = load_llava(model, device, vision_tower, dtype, quantization, template)
    session = ChatSession(llava, processor, max_new_tokens, temperature)
    session.set_image(image)
    if prompt is not None:
        print(session.ask(prompt))
    else:
        interactive(session)


__all__ = ["ChatSession", "interactive", "run"]
