"""The one error type the server turns into a JSON response: status, message, and the field at fault."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request the server refuses (4xx) or cannot serve now (503), said in one sentence.

    `field` names the form field, path parameter or header at fault so a client can point at it."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"detail": self.message}
        if self.field:
            data["field"] = self.field
        return data
