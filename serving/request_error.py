"""How `llava serve` refuses a request: the HTTP status and OpenAI's error body, so that OpenAI clients raise the
matching exception (`BadRequestError` for 400, `RateLimitError` for 429, ...) with the server's message."""


class RequestError(Exception):
    """A refused request: HTTP `status` and `{"error": {"message", "type", "code", "param"}}`."""

    def __init__(self, message: str, code: str, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.code, self.status, self.kind = message, code, status, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code, "param": None}}


__all__ = ["RequestError"]
