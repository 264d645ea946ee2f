"""The OpenAI chat-completions format, as `llava serve` reads and writes it.

A request's messages become the Hugging Face chat format the processor's template renders (`{"type": "image"}` items
where the request had `image_url` parts, the decoded images beside them in order), and its sampling fields become
`Sampling`. Anything the server cannot honour is refused with a `RequestError` naming the field, rather than ignored:
`n` > 1, `stop`, tools, logprobs, response formats. Decoding is greedy unless `temperature` > 0, as in `llava chat`
(OpenAI's own default is 1). LLaVA-1.5 was trained with at most one image per conversation, hence `--max-images 1`.
"""

import time
import uuid
from dataclasses import dataclass
from typing import Any

from PIL import Image

from modeling_llava.processing_llava_plugin import IMAGE_TOKEN

from .request_error import RequestError
from .request_images import ImagePolicy, load_image

ROLES = ("system", "user", "assistant")
# Fields that would change the answer in a way this server does not implement, with the values that change nothing.
UNSUPPORTED = {
    "n": (None, 1),
    "stop": (None, [], ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "response_format": (None, {"type": "text"}),
}


@dataclass(frozen=True)
class Sampling:
    """How to decode: greedily when `temperature` is 0, else sampling with `temperature` and `top_p` (seeded when
    `seed` is given); `max_new_tokens` None means the server's default."""

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class ChatRequest:
    messages: list[dict]
    images: list[Image.Image]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False


def parse_chat_request(body: Any, policy: ImagePolicy) -> ChatRequest:
    """The request in `body` (parsed JSON), validated; a `RequestError` says what is wrong with which field."""
    if not isinstance(body, dict):
        raise RequestError(f"The request body must be a JSON object, not {_json_type(body)}.", "invalid_body")
    for field, neutral in UNSUPPORTED.items():
        if field in body and body[field] not in neutral:
            raise RequestError(f"{field!r} is not supported by this server; leave it out.", "unsupported_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of messages.", "invalid_messages")
    converted, images = [], []
    for index, message in enumerate(messages):
        converted.append(_message(index, message, images, policy))
    if converted[-1]["role"] != "user":
        raise RequestError("The last message must be the user's: the model answers it.", "invalid_messages")
    stream = _typed(body, "stream", bool, False)
    options = _typed(body, "stream_options", dict, None) or {}
    return ChatRequest(converted, images, _sampling(body), stream, bool(options.get("include_usage", False)))


def _message(index: int, message: Any, images: list[Image.Image], policy: ImagePolicy) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise RequestError(f"{where} must be an object with 'role' and 'content'.", "invalid_messages")
    role = message.get("role")
    if role not in ROLES:
        raise RequestError(
            f"{where} has the role {role!r}; this model knows {', '.join(ROLES)}.", "invalid_role"
        )  # fmt: skip
    if role == "system" and index != 0:
        raise RequestError(f"{where}: a system message may only come first.", "invalid_role")
    content = message.get("content")
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise RequestError(f"{where}.content must be a string or a list of parts.", "invalid_content")
    items, text = [], []
    for number, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if IMAGE_TOKEN in part["text"]:
                raise RequestError(
                    f"{where}: the text may not contain {IMAGE_TOKEN!r}; send images as image_url parts.",
                    "invalid_content",
                )
            text.append(part["text"])
        elif kind == "image_url" and role == "user":
            if len(images) >= policy.max_images:
                raise RequestError(
                    f"{where}: more than {policy.max_images} image(s) in the conversation; this server takes at most "
                    f"{policy.max_images} (LLaVA-1.5 was trained with one image per conversation; --max-images).",
                    "too_many_images",
                )
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str):
                raise RequestError(f"{where}.content[{number}].image_url.url must be a string.", "invalid_content")
            images.append(load_image(url, policy))
            items.append({"type": "image"})
        else:
            allowed = "text and image_url" if role == "user" else "text"
            raise RequestError(
                f"{where}.content[{number}] is not a part this server reads ({allowed}, each with its field).",
                "invalid_content",
            )
    # The template renders a turn's images first, then its text: the order LLaVA was trained on.
    return {"role": role, "content": [*items, {"type": "text", "text": "".join(text)}]}


def _sampling(body: dict) -> Sampling:
    max_new_tokens = _typed(body, "max_completion_tokens", int, None)
    if max_new_tokens is None:
        max_new_tokens = _typed(body, "max_tokens", int, None)
    if max_new_tokens is not None and max_new_tokens < 1:
        raise RequestError("'max_tokens' must be at least 1.", "invalid_value")
    temperature = float(_typed(body, "temperature", float, 0.0))
    top_p = float(_typed(body, "top_p", float, 1.0))
    if not 0 <= temperature <= 2:
        raise RequestError(f"'temperature' must be between 0 and 2, not {temperature}.", "invalid_value")
    if not 0 < top_p <= 1:
        raise RequestError(f"'top_p' must be in (0, 1], not {top_p}.", "invalid_value")
    return Sampling(max_new_tokens, temperature, top_p, _typed(body, "seed", int, None))


def _typed(body: dict, field: str, kind: type, default: Any) -> Any:
    value = body.get(field)
    if value is None:
        return default
    accepted = (int, float) if kind is float else kind
    if isinstance(value, bool) is not (kind is bool) or not isinstance(value, accepted):
        raise RequestError(f"{field!r} must be {kind.__name__}, not {_json_type(value)}.", "invalid_type")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """Token counts as OpenAI reports them; the prompt's include every expanded image token the model reads."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(request_id: str, model: str, text: str, finish_reason: str, counts: dict) -> dict:
    """The whole answer, as a `chat.completion` object."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": counts,
    }


def chunk(request_id: str, model: str, delta: dict, finish_reason: str | None = None, counts: dict | None = None):
    """One `chat.completion.chunk` of a streamed answer; with `counts`, the final usage chunk (no choices)."""
    choices = [] if counts is not None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    body = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    return body | {"choices": choices} | ({"usage": counts} if counts is not None else {})


__all__ = [
    "ChatRequest",
    "Sampling",
    "chunk",
    "completion",
    "completion_id",
    "parse_chat_request",
    "usage",
]
