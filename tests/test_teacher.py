"""The teacher/judge client: HTTP against a real loopback server (retries, errors, timeouts), the local causal LM,
the on-disk cache and the concurrency limit."""

import argparse
import socket
import threading

import pytest

from processing.teacher import (
    LocalChat,
    OpenAIChat,
    Teacher,
    TeacherError,
    add_teacher_arguments,
    chat_concurrently,
    teacher_from_args,
)
from tests.conftest import fill_the_disk
from tests.openai_server import ScriptedServer
from tests.tiny_backbones import save_tiny_language_model

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


def echo(body: dict) -> str:
    return f"hello from {body['model']}: {body['messages'][-1]['content']}"


@pytest.fixture
def server():
    with ScriptedServer(echo) as server:
        yield server


def client(server: ScriptedServer, **kwargs) -> OpenAIChat:
    return OpenAIChat(server.url, "teacher-1", **{"api_key": "sk-test", "retries": 2, "backoff": 0.01, **kwargs})


def test_a_completion_returns_the_reply_and_sends_the_request_fields(server):
    reply = client(server).complete(MESSAGES, temperature=0.3, max_tokens=17)
    assert reply == "hello from teacher-1: Say hello."
    assert server.requests == [{"model": "teacher-1", "messages": MESSAGES, "temperature": 0.3, "max_tokens": 17}]
    assert server.authorizations == ["Bearer sk-test"]


def test_the_api_key_defaults_to_the_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    OpenAIChat(server.url + "/chat/completions", "m").complete(MESSAGES, 0.0, 5)
    assert server.authorizations == ["Bearer sk-from-env"]


def test_server_errors_are_retried_until_an_answer_comes(server):
    server.script("http500", "http429")
    assert client(server).complete(MESSAGES, 0.0, 5).startswith("hello")
    assert len(server.requests) == 3


def test_broken_transfers_are_retried_until_an_answer_comes(server):
    server.script("truncated", "badstatus", "reset")
    assert client(server, retries=3).complete(MESSAGES, 0.0, 5).startswith("hello")
    assert len(server.requests) == 4


def test_retries_give_up_with_an_error_naming_the_url_and_the_status(server):
    server.script("http500", "http500", "http500")
    with pytest.raises(TeacherError, match=r"/v1/chat/completions failed 3 times; the last time: HTTP 500"):
        client(server).complete(MESSAGES, 0.0, 5)
    assert len(server.requests) == 3


def test_a_client_error_is_not_retried(server):
    server.script("http401")
    with pytest.raises(TeacherError, match=r"127\.0\.0\.1:\d+/v1/chat/completions answered HTTP 401"):
        client(server).complete(MESSAGES, 0.0, 5)
    assert len(server.requests) == 1


def test_a_reply_that_is_not_a_chat_completion_fails_clearly(server):
    server.script("malformed")
    with pytest.raises(TeacherError, match="answered something that is not a chat completion"):
        client(server).complete(MESSAGES, 0.0, 5)


def test_a_timeout_is_retried_then_reported(server):
    """A hung request never answers, so any timeout ends it; only the answered retry must beat the timeout, which
    a loopback answer does by far however busy the machine (0.2 s did not always suffice for it)."""
    server.script("hang")
    assert client(server, timeout=2.0).complete(MESSAGES, 0.0, 5).startswith("hello")
    server.script("hang", "hang", "hang")
    with pytest.raises(TeacherError, match=r"failed 3 times; the last time: no answer within 0.2 s"):
        client(server, timeout=0.2).complete(MESSAGES, 0.0, 5)


def test_a_refused_connection_is_reported():
    # A port held for the test and never listened on: nothing else on the machine can take it in the meantime.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        chat = OpenAIChat(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff=0.01)
        with pytest.raises(TeacherError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions failed 2 times.*connection"):
            chat.complete(MESSAGES, 0.0, 5)


def test_a_url_without_scheme_is_refused():
    with pytest.raises(ValueError, match=r"Teacher URL 'localhost:8000/v1' must start with http:// or https://"):
        OpenAIChat("localhost:8000/v1", "m")


def test_the_cache_answers_a_repeated_call_and_survives_a_restart(server, tmp_path):
    teacher = Teacher(client(server), tmp_path / "cache", temperature=0.0, max_tokens=5)
    first = teacher.chat(MESSAGES)
    assert teacher.chat(MESSAGES) == first
    assert (teacher.calls, teacher.cache_hits, len(server.requests)) == (1, 1, 1)
    teacher.chat(MESSAGES, attempt=1)  # asking again after an unusable reply is a new call
    assert len(server.requests) == 2

    restarted = Teacher(client(server), tmp_path / "cache", temperature=0.0, max_tokens=5)
    assert restarted.chat(MESSAGES) == first and restarted.chat(MESSAGES, attempt=1)
    assert (restarted.calls, len(server.requests)) == (0, 2)
    other_params = Teacher(client(server), tmp_path / "cache", temperature=0.7, max_tokens=5)
    other_params.chat(MESSAGES)
    assert len(server.requests) == 3
    assert sorted(path.suffix for path in (tmp_path / "cache").iterdir()) == [".json"] * 3  # no staging file left


def test_concurrency_never_exceeds_the_worker_limit():
    """Calls go three at a time: each waits at a barrier until three are in flight (a pool of fewer threads would
    break it instead of hanging), so the peak reaches three however the threads are scheduled."""
    in_flight, peak, lock = 0, 0, threading.Lock()
    three = threading.Barrier(3, timeout=60)

    def work(item: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        three.wait()
        with lock:
            in_flight -= 1
        return item * item

    results = sorted(chat_concurrently(work, range(12), workers=3, desc="test"))
    assert results == [i * i for i in range(12)]
    assert peak == 3


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory, tokenizer):
    return str(save_tiny_language_model(tmp_path_factory.mktemp("teacher") / "llama", tokenizer))


def test_a_local_model_answers_greedily_and_is_cached(tiny_causal_lm, tmp_path):
    teacher = Teacher(LocalChat(tiny_causal_lm, device="cpu"), tmp_path, temperature=0.0, max_tokens=6)
    reply = teacher.chat(MESSAGES)
    assert isinstance(reply, str) and reply  # a random model: only the plumbing is checked
    assert teacher.backend.complete(MESSAGES, 0.0, 6) == reply  # greedy: the same text again
    assert teacher.chat(MESSAGES) == reply and (teacher.calls, teacher.cache_hits) == (1, 1)


def test_a_local_model_uses_its_chat_template_when_it_has_one(tiny_causal_lm):
    chat = LocalChat(tiny_causal_lm, device="cpu")
    rendered = []
    chat.tokenizer.chat_template = "{% for m in messages %}{{ m.role }}|{{ m.content }}\n{% endfor %}>"
    original = chat.tokenizer.apply_chat_template
    chat.tokenizer.apply_chat_template = lambda *a, **k: rendered.append(original(*a, **k)) or rendered[-1]
    chat.complete(MESSAGES, 0.0, 3)
    assert rendered == ["system|Be brief.\nuser|Say hello.\n>"]


def test_flags_choose_the_backend(tiny_causal_lm, tmp_path):
    parser = argparse.ArgumentParser()
    add_teacher_arguments(parser, "judge")
    cache = ["--judge-cache", str(tmp_path / "c")]
    remote = teacher_from_args(
        parser.parse_args(["--judge-model", "gpt-x", "--judge-url", "http://h/v1", "--judge-timeout", "5", *cache]),
        "judge",
    )
    assert isinstance(remote.backend, OpenAIChat)
    assert (remote.backend.url, remote.backend.name, remote.backend.timeout) == (
        "http://h/v1/chat/completions",
        "gpt-x",
        5,
    )
    assert remote.cache_dir == tmp_path / "c"
    local = teacher_from_args(parser.parse_args(["--judge-model", tiny_causal_lm, *cache]), "judge")
    assert isinstance(local.backend, LocalChat)


def test_each_endpoint_has_its_own_cache_entries(tmp_path):
    with ScriptedServer(echo) as first, ScriptedServer(lambda body: "the other judge") as second:
        assert Teacher(client(first), tmp_path / "cache").chat(MESSAGES).startswith("hello")
        assert Teacher(client(second), tmp_path / "cache").chat(MESSAGES) == "the other judge"  # same model name
        assert (len(first.requests), len(second.requests)) == (1, 1)


def test_an_unreadable_cache_file_is_named_set_aside_and_recomputed(server, tmp_path):
    teacher = Teacher(client(server), tmp_path / "cache")
    first = teacher.chat(MESSAGES)
    [cached] = (tmp_path / "cache").iterdir()
    cached.write_text('{"reply": "trunc')
    with pytest.warns(UserWarning, match=rf"Cache file .*{cached.name}' is unreadable .* set aside as"):
        assert Teacher(client(server), tmp_path / "cache").chat(MESSAGES) == first
    assert len(server.requests) == 2
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == [cached.name, f"{cached.name}.corrupt"]


class Hello:
    name = "hello-1"

    def complete(self, messages, temperature, max_tokens):
        return "hello"


def test_a_cache_write_on_a_full_disk_says_where_and_leaves_no_staging_file(tmp_path, monkeypatch):
    teacher = Teacher(Hello(), tmp_path / "cache")
    fill_the_disk(monkeypatch, tmp_path / "cache")
    with pytest.raises(TeacherError, match=r"Cannot write the cache file '.*/cache/[0-9a-f]{64}\.json' \(.*No space"):
        teacher.chat(MESSAGES)
    assert list((tmp_path / "cache").iterdir()) == []
