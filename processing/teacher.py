"""Chatting with a teacher or a judge: an OpenAI-compatible endpoint or a local Transformers causal LM, cached on disk.

`llava generate-data` asks a teacher to write instruction data and `llava eval llava-bench` asks a judge to score
answers; both go through `Teacher.chat`. The backend is `OpenAIChat` (any server that speaks the chat-completions
protocol: OpenAI, vLLM, TGI, llama.cpp, ...; retried with exponential backoff on HTTP 429, 5xx, timeouts, dropped or
reset connections, truncated bodies and garbled status lines, and failing with an error that names the URL and the
problem) or `LocalChat` (`AutoModelForCausalLM` with its tokenizer's chat template). `Teacher` adds an on-disk cache,
one JSON file per call named by a hash of (backend, model, messages, parameters), where the backend is the endpoint
URL or the local model, so a rerun of an interrupted job pays for no call twice and two judges never share replies.
A cache file that cannot be read is named in a warning, set aside (`*.corrupt`) and the call made again; one that
cannot be written (a full disk, no permission) is a `TeacherError` naming it, and leaves no staging file. The
command-line default for that cache is one folder under the Hugging Face cache, shared by every job: a key says
everything about a call.
"""

import argparse
import hashlib
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Protocol, TypeVar

from huggingface_hub import constants
from tqdm.auto import tqdm

Message = dict[str, str]
DEFAULT_CACHE = Path(constants.HF_HOME) / "llava_plugin" / "teacher_cache"
Item = TypeVar("Item")
Result = TypeVar("Result")


class TeacherError(RuntimeError):
    """A call that failed for good (after its retries); the message names the endpoint or model and the problem."""


class ChatBackend(Protocol):
    name: str

    def complete(self, messages: list[Message], temperature: float, max_tokens: int) -> str: ...


class OpenAIChat:
    """A client of `POST {url}/chat/completions`, the protocol of OpenAI and of most model servers.

    Args:
        url: the API base (`https://api.openai.com/v1`, `http://localhost:8000/v1`) or the full endpoint URL.
        model: the model name the server expects.
        api_key: sent as a bearer token; default `$OPENAI_API_KEY`, none for servers that need none.
        timeout: seconds to wait for each answer.
        retries: further attempts after HTTP 429 / 5xx, a timeout or a dropped connection, waiting
            `backoff * 2**attempt` seconds before each. Other HTTP errors (a wrong key or model) fail at once.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 1.0,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                f"Teacher URL {url!r} must start with http:// or https:// (e.g. https://api.openai.com/v1)."
            )
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
        self.name = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def complete(self, messages: list[Message], temperature: float, max_tokens: int) -> str:
        body = {"model": self.name, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._content(response.read())
            except urllib.error.HTTPError as error:
                problem = f"HTTP {error.code}: {error.read()[:300].decode(errors='replace')}"
                if error.code != 429 and error.code < 500:
                    raise TeacherError(f"{self.url} answered {problem}") from error
            except (TimeoutError, ConnectionError, urllib.error.URLError, http.client.HTTPException) as error:
                # HTTPException: a truncated body (IncompleteRead), a garbled status line (BadStatusLine), ...
                reason = getattr(error, "reason", error)
                timed_out = isinstance(error, TimeoutError) or isinstance(reason, TimeoutError)
                problem = f"no answer within {self.timeout} s" if timed_out else f"connection failed ({reason!r})"
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise TeacherError(f"{self.url} failed {self.retries + 1} times; the last time: {problem}")

    def _content(self, payload: bytes) -> str:
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise TeacherError(
                f"{self.url} answered something that is not a chat completion ({error!r}): {payload[:300]!r}"
            ) from error
        if not isinstance(content, str):
            raise TeacherError(f"{self.url} answered a completion without text content: {payload[:300]!r}")
        return content


class LocalChat:
    """A Transformers causal LM as teacher or judge, prompted through its tokenizer's chat template.

    A base model without a template gets a plain transcript (`System: ...`, `User: ...`, ending in `Assistant:`).
    Temperature 0 decodes greedily. Calls from several threads take turns: they share one model.
    """

    def __init__(self, model: str, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.name = model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model).to(device).eval()
        except (OSError, ValueError) as error:  # no such folder or Hub model, or not a causal LM
            raise TeacherError(f"Cannot load {model!r} as a local causal LM: {error}") from error
        self._lock = threading.Lock()

    def complete(self, messages: list[Message], temperature: float, max_tokens: int) -> str:
        import torch

        if self.tokenizer.chat_template:
            prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            prompt = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
        # A chat template writes its own BOS; the plain transcript needs the tokenizer's.
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not self.tokenizer.chat_template).to(
            self.model.device
        )
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self._lock, torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=max_tokens, pad_token_id=pad, **sampling)
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


class Teacher:
    """A chat backend behind an optional on-disk cache; counts the calls it paid for and those it found cached.

    `attempt` is part of the cache key, so asking again after an unusable reply (`attempt=1, 2, ...`) makes a new
    call, while a rerun of the same job finds every earlier reply.
    """

    def __init__(
        self,
        backend: ChatBackend,
        cache_dir: str | Path | None = None,
        temperature: float = 0.2,
        max_tokens: int = 1024,
    ):
        self.backend, self.temperature, self.max_tokens = backend, temperature, max_tokens
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise TeacherError(f"Cannot create the cache folder {str(self.cache_dir)!r}: {error}") from error
        self.calls = self.cache_hits = 0
        self._count = threading.Lock()

    def chat(self, messages: list[Message], attempt: int = 0) -> str:
        params = {"temperature": self.temperature, "max_tokens": self.max_tokens, "attempt": attempt}
        endpoint = getattr(self.backend, "url", "local")
        request = {"endpoint": endpoint, "model": self.backend.name, "messages": messages, "params": params}
        path = None
        if self.cache_dir is not None:
            key = hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
            path = self.cache_dir / f"{key}.json"
            if path.is_file():
                try:
                    reply = json.loads(path.read_text())["reply"]
                except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
                    aside = path.with_name(f"{path.name}.corrupt")
                    path.replace(aside)
                    warnings.warn(
                        f"Cache file {str(path)!r} is unreadable ({error!r}): set aside as {aside.name}, "
                        "the call is made again.",
                        stacklevel=2,
                    )
                else:
                    with self._count:
                        self.cache_hits += 1
                    return reply
        reply = self.backend.complete(messages, self.temperature, self.max_tokens)
        with self._count:
            self.calls += 1
        if path is not None:
            self._store(path, {**request, "reply": reply})
        return reply

    @staticmethod
    def _store(path: Path, entry: dict) -> None:
        """Writes a cache entry whole or not at all: a failed write (a full disk) removes its staging file."""
        staging = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")  # unique across threads and processes
        try:
            staging.write_text(json.dumps(entry, ensure_ascii=False, indent=1))
            staging.replace(path)
        except OSError as error:
            staging.unlink(missing_ok=True)
            raise TeacherError(
                f"Cannot write the cache file {str(path)!r} ({error}); free space there or use another cache folder."
            ) from error


def chat_concurrently(
    work: Callable[[Item], Result], items: Iterable[Item], workers: int, desc: str
) -> Iterator[Result]:
    """`work(item)` for every item on `workers` threads, yielded as each finishes, under a progress bar.

    At most `workers` calls are in flight, which is the endpoint's concurrency limit. If the consumer stops (an error,
    Ctrl-C), calls not yet started are cancelled.
    """
    items = list(items)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(work, item) for item in items]
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc):
            yield future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def add_teacher_arguments(parser: argparse.ArgumentParser, role: str, required: bool = True) -> None:
    """The `--{role}-*` flags that choose and tune a teacher (`role` is `teacher` or `judge`)."""
    group = parser.add_argument_group(f"{role} (an OpenAI-compatible endpoint, or a local causal LM)")
    group.add_argument(
        f"--{role}-model",
        required=required,
        help=f"model name at --{role}-url; without --{role}-url, a local causal LM (folder or Hub id)",
    )
    group.add_argument(f"--{role}-url", help="API base of an OpenAI-compatible server, e.g. https://api.openai.com/v1")
    group.add_argument(f"--{role}-api-key", help="bearer token for the server (default: $OPENAI_API_KEY)")
    group.add_argument(f"--{role}-timeout", type=float, default=120.0, help="seconds to wait for each answer")
    group.add_argument(f"--{role}-retries", type=int, default=4, help="retries after 429, 5xx, timeouts")
    group.add_argument(f"--{role}-workers", type=int, default=8, help="calls in flight at once")
    group.add_argument(f"--{role}-temperature", type=float, default=0.2)
    group.add_argument(f"--{role}-max-tokens", type=int, default=1024, help="longest reply, in tokens")
    group.add_argument(f"--{role}-cache", type=Path, default=DEFAULT_CACHE, help="folder of cached replies")


def teacher_from_args(args: argparse.Namespace, role: str) -> Teacher:
    """The `Teacher` that the `--{role}-*` flags describe."""
    flags = vars(args)
    model, url = flags[f"{role}_model"], flags[f"{role}_url"]
    if url:
        backend = OpenAIChat(url, model, flags[f"{role}_api_key"], flags[f"{role}_timeout"], flags[f"{role}_retries"])
    else:
        backend = LocalChat(model)
    return Teacher(backend, flags[f"{role}_cache"], flags[f"{role}_temperature"], flags[f"{role}_max_tokens"])


__all__ = [
    "ChatBackend",
    "LocalChat",
    "Message",
    "OpenAIChat",
    "Teacher",
    "TeacherError",
    "add_teacher_arguments",
    "chat_concurrently",
    "teacher_from_args",
]
