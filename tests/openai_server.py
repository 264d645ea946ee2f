"""A real OpenAI-compatible chat-completions server on loopback, answering from a scripted teacher.

The client under test speaks HTTP to it exactly as to a real endpoint: `ScriptedServer(reply)` serves
`POST /v1/chat/completions` on 127.0.0.1 (a free port) from a thread, answering each request with `reply(body)`, the
text that the scripted teacher writes for that request. `server.script(...)` queues what the next requests get, one
each: `"answer"` (the normal reply), `"malformed"` (HTTP 200 with a body that is not JSON), `"http500"`, `"http429"`,
`"http401"`, `"hang"` (no answer until the server closes: longer than any client's timeout), `"truncated"` (a body
shorter than its Content-Length, then the connection closed), `"badstatus"` (a status line that is not HTTP) and
`"reset"` (the connection closed without a word); past the queue, requests get `"answer"`. Every request body is
recorded in `requests`, its `Authorization` header in `authorizations`.
"""

import json
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACTIONS = {"answer", "malformed", "http500", "http429", "http401", "hang", "truncated", "badstatus", "reset"}


class ScriptedServer:
    def __init__(self, reply: Callable[[dict[str, Any]], str]):
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()  # what a "hang" waits for, rather than a time the client might outlast
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        # A short poll interval: `shutdown` waits for it at the end of every test.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def script(self, *actions: str) -> None:
        unknown = set(actions) - ACTIONS
        if unknown:
            raise ValueError(f"Unknown actions {sorted(unknown)}; known: {sorted(ACTIONS)}.")
        with self._lock:
            self._script.extend(actions)

    def _next_action(self, body: dict[str, Any], authorization: str | None) -> str:
        with self._lock:
            self.requests.append(body)
            self.authorizations.append(authorization)
            return self._script.popleft() if self._script else "answer"

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler_for(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            action = server._next_action(body, self.headers.get("Authorization"))
            if action == "malformed":
                return self._send(200, b"{'choices': this is not JSON")
            if action in {"truncated", "badstatus", "reset"}:
                self.close_connection = True
                if action == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [')
                elif action == "badstatus":
                    self.wfile.write(b"NOT-HTTP 200 fine\r\n\r\n")
                return None
            if action.startswith("http"):
                return self._send(int(action[4:]), {"error": {"message": f"scripted {action}"}})
            if action == "hang":
                server._closing.wait()
            content = server.reply(body)
            completion = {
                "id": "chatcmpl-scripted",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
            }
            self._send(200, completion)

        def _send(self, status: int, payload: dict | bytes) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the "hang" misbehaviour): nobody is left to answer

        def log_message(self, format: str, *args) -> None:
            pass  # keep the test output clean

    return Handler
