"""Errors of the HTTP API: each one a status code and an ``{"error": {"type", "message", "param"?}}`` body."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

ERROR_TYPES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "bad_request",
    422: "invalid_request", 429: "overloaded", 500: "internal_error", 503: "not_ready", 504: "timeout",
}


class ApiError(Exception):
    """A request the server answers with an error status (never a traceback)."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": ERROR_TYPES.get(self.status, "error"), "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None) -> ApiError:
    """422: the request is well-formed JSON but a field has the wrong type, value or size."""
    return ApiError(422, message, param)
