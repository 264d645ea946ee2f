"""The one thread that owns the model in `llava serve`: requests wait in a bounded queue, answered one at a time.

On a CPU (and for one GPU with a small model) a single generation already uses the whole machine, so answering
requests one after another costs little throughput (see `benchmarks/serve_load.py`) and buys the simplest guarantees:
no answer can leak into another, and a greedy answer is the same token for token whether its request came alone or
with others (batching would pad prompts and change the arithmetic). A full queue refuses at once (HTTP 429) rather
than letting latency grow without bound; a cancelled job leaves the queue at once, or stops its generation at the next
token through a `StoppingCriteria`. The API and the web page both submit here.
"""

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator

import torch
from jinja2 import TemplateError
from PIL import Image
from transformers import BatchFeature, StoppingCriteria, StoppingCriteriaList

from modeling_llava import AnyLlavaForConditionalGeneration, LlavaPluginProcessor
from processing.conversation import answer_text, decode_answer, render_conversation, stop_arguments
from processing.generation import sampling_arguments

from .openai_format import Sampling
from .request_error import RequestError

_END = object()


class Job:
    """One request's generation: its rendered inputs, the answer's text as it grows, and how it ended.

    Created on the server's event loop; the worker thread hands pieces of text over to that loop, where `pieces()`
    reads them.
    """

    def __init__(self, inputs: BatchFeature, generation: dict, seed: int | None):
        self.inputs, self.generation, self.seed = inputs, generation, seed
        self.prompt_tokens = int(inputs["input_ids"].shape[1])
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.text = ""
        self.error: BaseException | None = None
        self._cancelled = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._pieces: asyncio.Queue = asyncio.Queue()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stops the generation at its next token (or before it starts); safe to call from any thread, twice."""
        self._cancelled.set()

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text piece by piece as the model writes it; re-raises what failed the generation."""
        while (piece := await self._pieces.get()) is not _END:
            yield piece
        if self.error is not None:
            raise self.error

    async def answer(self) -> str:
        """The whole answer, once generated."""
        async for _ in self.pieces():
            pass
        return self.text

    def _emit(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._pieces.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()


class QueueFull(RequestError):
    def __init__(self, size: int):
        super().__init__(
            f"The server is busy: {size} request(s) are already waiting (--max-queue). Retry in a moment.",
            "queue_full",
            status=429,
            kind="rate_limit_error",
        )


class GenerationWorker:
    """Answers jobs one at a time in a thread of its own; at most `max_queue` wait behind the one being answered.

    `default_max_new_tokens` applies when a request names no limit; every limit is cut to what still fits the model's
    context (`max_position_embeddings` of its text config).
    """

    def __init__(
        self,
        model: AnyLlavaForConditionalGeneration,
        processor: LlavaPluginProcessor,
        max_queue: int = 16,
        default_max_new_tokens: int = 512,
    ):
        self.model, self.processor = model, processor
        self.max_queue, self.default_max_new_tokens = max_queue, default_max_new_tokens
        self.context_length: int | None = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        self.answered = self.cancelled = 0
        self._waiting: deque[Job] = deque()
        self._ready = threading.Condition()
        self._render_lock = threading.Lock()  # a fast tokenizer refuses concurrent calls that reconfigure it
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llava-generation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Cancels every job and ends the thread once the current token is written."""
        with self._ready:
            self._stopping = True
            for job in self._waiting:
                job.cancel()
            self._ready.notify_all()
        self._thread.join(timeout=30)

    @property
    def waiting(self) -> int:
        with self._ready:
            return len(self._waiting)

    def prompt_inputs(self, messages: list[dict], images: list[Image.Image]) -> BatchFeature:
        """The model inputs of a conversation (the one rendering path of `llava chat`), or a `RequestError` when the
        processor refuses it or it leaves no room for an answer in the model's context."""
        try:
            with self._render_lock:
                inputs = render_conversation(self.processor, messages, images)
        except (ValueError, TemplateError) as error:
            message = f"The conversation cannot be rendered for this model: {error}"
            raise RequestError(message, "invalid_messages") from error
        length = inputs["input_ids"].shape[1]
        if self.context_length is not None and length >= self.context_length:
            raise RequestError(
                f"The prompt is {length} tokens long (image tokens included); this model reads at most "
                f"{self.context_length} tokens, answer included. Shorten the conversation.",
                "context_length_exceeded",
            )
        return inputs

    async def submit(self, messages: list[dict], images: list[Image.Image], sampling: Sampling) -> Job:
        """Renders the conversation (off the event loop) and queues its generation; `QueueFull` when full."""
        if self.waiting >= self.max_queue:  # before the work of rendering: a full server answers at once
            raise QueueFull(self.max_queue)
        inputs = await asyncio.to_thread(self.prompt_inputs, messages, images)
        room = self.context_length - inputs["input_ids"].shape[1] if self.context_length else None
        max_new_tokens = min(sampling.max_new_tokens or self.default_max_new_tokens, room or 2**31)
        generation = {
            "max_new_tokens": max_new_tokens,
            **sampling_arguments(sampling.temperature, sampling.top_p),
            **stop_arguments(self.processor),
        }
        job = Job(inputs, generation, sampling.seed)
        with self._ready:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(self.max_queue)
            self._waiting.append(job)
            self._ready.notify()
        return job

    def withdraw(self, job: Job) -> None:
        """Cancels `job`; if it is still waiting, its place in the queue is freed now."""
        job.cancel()
        with self._ready:
            if job in self._waiting:
                self._waiting.remove(job)
                self.cancelled += 1
                job._emit(_END)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
            try:
                if not job.cancelled:
                    self._generate(job)
            except Exception as error:  # reported to that request's client; the server goes on
                job.error = RequestError(f"Generation failed: {error}", "generation_failed", 500, "server_error")
            finally:
                self.answered += not job.cancelled
                self.cancelled += job.cancelled
                job._emit(_END)

    def _generate(self, job: Job) -> None:
        inputs = job.inputs.to(self.model.device, dtype=self.model.dtype)  # the dtype applies to floating tensors only
        streamer = _AnswerStreamer(self.processor, job)
        if job.seed is not None and job.generation["do_sample"]:
            torch.manual_seed(job.seed)
        with torch.inference_mode():
            stop = StoppingCriteriaList([_Cancelled(job)])
            output = self.model.generate(**inputs, **job.generation, streamer=streamer, stopping_criteria=stop)
        new_tokens = output[0, job.prompt_tokens :]
        job.completion_tokens = int(new_tokens.shape[0])
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        text = self.processor.decode(new_tokens, skip_special_tokens=True)
        stopped = "stop_strings" in job.generation and job.generation["stop_strings"][0] in text
        ended = job.completion_tokens and int(new_tokens[-1]) in eos
        job.finish_reason = "stop" if ended or stopped else "length"
        streamer.finish(decode_answer(self.processor, new_tokens))


class _Cancelled(StoppingCriteria):
    def __init__(self, job: Job):
        self.job = job

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.job.cancelled, dtype=torch.bool, device=input_ids.device)


class _AnswerStreamer:
    """Hands the answer to its job as it grows, such that the pieces add up to `decode_answer` of the whole answer.

    Each step decodes all the new tokens so far (an answer is at most a few hundred tokens) and emits what the text
    gained; it holds back trailing whitespace (the final answer is stripped) and a trailing replacement character (a
    multi-byte character whose bytes are still arriving).
    """

    def __init__(self, processor: LlavaPluginProcessor, job: Job):
        self.processor, self.job = processor, job
        self.tokens: list[int] = []
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        self.tokens += value.reshape(-1).tolist()
        text = self.processor.decode(self.tokens, skip_special_tokens=True).removesuffix("\ufffd")
        self._send(answer_text(self.processor, text, partial=True))

    def end(self) -> None:
        pass  # `finish` sends the rest, once the answer's end is known

    def finish(self, answer: str) -> None:
        self._send(answer)
        self.job.text = answer

    def _send(self, text: str) -> None:
        if text.startswith(self.job.text) and len(text) > len(self.job.text):
            self.job._emit(text[len(self.job.text) :])
            self.job.text = text


__all__ = ["GenerationWorker", "Job", "QueueFull"]
