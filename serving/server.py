"""`llava serve CHECKPOINT`: a LLaVA model behind an OpenAI-compatible API and a chat page, on 127.0.0.1 by default.

`POST /v1/chat/completions` (streamed as server-sent events or whole) and `GET /v1/models` speak the OpenAI format
(`openai_format.py`, images per `request_images.py`); the Gradio page at `/` (`page.py`) is another client of the same
`GenerationWorker`, which owns the model and answers one request at a time. Every refusal is an OpenAI error body with
a 4xx status, and the server goes on serving.
"""

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import gradio as gr
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from modeling_llava import AnyLlavaForConditionalGeneration, LlavaPluginProcessor
from processing.images import image_background

from .openai_format import ChatRequest, chunk, completion, completion_id, parse_chat_request, usage
from .page import build_page
from .request_error import RequestError
from .request_images import ImagePolicy
from .worker import GenerationWorker, Job

API_PREFIX = "/v1"


@dataclass(frozen=True)
class ServeSettings:
    """What `llava serve`'s flags set; the defaults are the safe ones (loopback only, no fetching, no local files)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 16
    max_new_tokens: int = 512
    max_images: int = 1
    max_image_pixels: int = 4096 * 4096
    allow_remote_images: bool = False
    allow_local_files: bool = False
    page: bool = True


def create_app(
    model: AnyLlavaForConditionalGeneration,
    processor: LlavaPluginProcessor,
    model_name: str,
    settings: ServeSettings = ServeSettings(),
) -> FastAPI:
    """The ASGI app: the API under `/v1`, the page at `/`; its worker thread runs while the app does."""
    worker = GenerationWorker(model, processor, settings.max_queue, settings.max_new_tokens)
    policy = ImagePolicy(
        max_images=settings.max_images,
        max_pixels=settings.max_image_pixels,
        allow_remote_images=settings.allow_remote_images,
        allow_local_files=settings.allow_local_files,
        background=image_background(processor),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="llava serve", lifespan=lifespan, docs_url=f"{API_PREFIX}/docs", openapi_url=None)
    app.state.worker, app.state.model_name = worker, model_name

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        body = RequestError(str(error.detail), "not_found" if error.status_code == 404 else "invalid_request").body()
        return JSONResponse(body, status_code=error.status_code)

    @app.get(f"{API_PREFIX}/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "local"}]}

    @app.post(f"{API_PREFIX}/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestError(f"The request body is not valid JSON: {error}", "invalid_json") from error
        parsed = parse_chat_request(body, policy)
        job = await worker.submit(parsed.messages, parsed.images, parsed.sampling)
        if parsed.stream:
            return StreamingResponse(_events(worker, job, parsed, model_name), media_type="text/event-stream")
        answer = asyncio.ensure_future(job.answer())
        while not answer.done():  # nothing cancels a plain response when its client leaves: look, now and then
            await asyncio.wait({answer}, timeout=0.25)
            if not answer.done() and await request.is_disconnected():
                worker.withdraw(job)
        text = answer.result()
        counts = usage(job.prompt_tokens, job.completion_tokens)
        return completion(completion_id(), model_name, text, job.finish_reason, counts)

    if settings.page:
        app = gr.mount_gradio_app(app, build_page(worker, model_name, policy), path="/")
    return app


async def _events(worker: GenerationWorker, job: Job, request: ChatRequest, model_name: str) -> AsyncIterator[str]:
    """The answer as server-sent events: a role chunk, text chunks, the finish chunk, usage if asked, `[DONE]`.

    A client that disconnects cancels this generator, which withdraws the job: its generation stops at the next token.
    """
    request_id = completion_id()
    try:
        yield _event(chunk(request_id, model_name, {"role": "assistant", "content": ""}))
        async for piece in job.pieces():
            yield _event(chunk(request_id, model_name, {"content": piece}))
        yield _event(chunk(request_id, model_name, {}, job.finish_reason))
        if request.include_usage:
            yield _event(chunk(request_id, model_name, {}, counts=usage(job.prompt_tokens, job.completion_tokens)))
    except RequestError as error:  # the headers are sent: the error travels as an event, as OpenAI's do
        yield _event(error.body())
    finally:
        worker.withdraw(job)
    yield "data: [DONE]\n\n"


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def listen(host: str, port: int) -> tuple[socket.socket, str]:
    """A socket listening on `host:port` (IPv4 or IPv6; port 0 takes a free one) and the base URL it answers at.

    It listens from here, not from when uvicorn has started: a client that connects as soon as the URL is printed
    waits in the backlog instead of being refused.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind((host, port))
    listening.listen(2048)  # uvicorn's default backlog
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return listening, f"http://{shown}:{listening.getsockname()[1]}"


@contextmanager
def serving_in_thread(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Serves `app` on a free port of `host` from a thread until the block ends; yields the base URL. For tests and
    benchmarks, which talk to the server over real HTTP from the same process."""
    listening, url = listen(host, 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("The server did not start; see its log above.")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve(
    checkpoint: str,
    settings: ServeSettings = ServeSettings(),
    device: str | None = None,
    vision_tower: str | None = None,
    dtype: str = "auto",
    quantization: str | None = None,
    template: str | None = None,
) -> None:
    """Loads `checkpoint` (anything `llava chat` reads, in `dtype` or `quantization`, answering in `template` or its
    own chat template: see `load_llava`) and serves it until interrupted."""
    from processing.generation import load_llava

    model, processor = load_llava(checkpoint, device, vision_tower, dtype, quantization, template)
    app = create_app(model, processor, str(checkpoint), settings)
    listening, url = listen(settings.host, settings.port)  # bound here so that --port 0 can print the port it got
    print(f"llava serve: {checkpoint} answers at {url}/ (OpenAI API: {url}{API_PREFIX})", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listening])


__all__ = ["ServeSettings", "create_app", "serve", "serving_in_thread"]
