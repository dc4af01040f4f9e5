"""The gate in front of every API call: bearer token first, then the request body's size.

Both are checked before the framework reads or parses anything, so an unauthenticated or oversized
upload costs the server nothing but the bytes it refuses. A plain ASGI middleware rather than a
route dependency because FastAPI parses a form before it runs dependencies.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.serve.errors import ApiError

API_PREFIX = "/api/"


class Guard:
    """Refuse `/api/` requests without the token (401) or with a body over `max_body` bytes (413)."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int):
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None:
            given = headers.get(b"authorization")
            if given is None:
                await _refuse(send, ApiError(401, "missing token: send the header 'Authorization: Bearer TOKEN' (the "
                                                   "server was started with --token or MEDRAG_TOKEN)", "Authorization"))
                return
            if not hmac.compare_digest(given, self.expected):  # constant time: the token cannot be guessed bytewise
                await _refuse(send, ApiError(401, "wrong token in the Authorization header", "Authorization"))
                return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _refuse(send, ApiError(413, f"the request body ({int(declared)} bytes) is over the limit of "
                                               f"{self.max_body} bytes", "body"))
            return
        # A chunked body declares no length: read it here, up to the limit, and hand it on whole.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                await _refuse(send, ApiError(413, f"the request body is over the limit of {self.max_body} bytes", "body"))
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(messages, receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()

    return replayed


async def _refuse(send: Send, error: ApiError) -> None:
    """The same JSON as every other refusal (the app's ApiError handler), sent before the app runs."""
    body = json.dumps(error.to_json()).encode()
    headers: list[tuple[bytes, Any]] = [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
