"""The viewer's HTTP boundary: what a request may send, and a request for a function the page does not have.

Two things Gradio leaves open are closed here, before a request reaches its routes (installed by
:func:`.page.launch` through FastAPI's ``middleware`` and ``exception_handlers``):

* :class:`RequestLimit` (ASGI middleware): a request whose body is above its limit (an upload: one file of
  ``upload_bytes`` and :data:`MULTIPART_BYTES` of multipart headers; any other request, the API's JSON:
  ``other_bytes``) is answered ``413`` with one message naming the size and the limit, from its
  ``Content-Length`` alone: nothing of it reaches memory or
  disk. Its bytes are read and dropped (up to :data:`DRAIN_BYTES`) so that a client still sending gets the
  answer instead of a broken connection. A body without a declared length (chunked) is answered ``411``: every
  browser and HTTP library declares the length of an upload. Gradio's own ``max_file_size`` still limits each
  file of an upload.
* :func:`request_error_handlers`: a request naming an ``fn_index`` or an API name that the page does not
  have is answered ``404`` with the list of the page's API endpoints, and a request to
  ``/gradio_api/call/v2/NAME`` with an argument the endpoint does not take (or without one it needs) ``422``
  with Gradio's message. Gradio raises ``KeyError``, ``FnIndexInferError`` or ``TypeError`` from its routes
  for these (a 500 without a message and a traceback in the server's log); any other such exception is left
  to propagate.

Both answer ``{"detail": message}``, as FastAPI's own HTTP errors do.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

#: Bytes of a refused body read and dropped before the answer (a larger one is answered at once).
DRAIN_BYTES = 1 << 30
#: Bytes an upload's body may hold beyond its file: the multipart boundaries and headers.
MULTIPART_BYTES = 64 << 10

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _megabytes(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MB"


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    """Read the request's body to its end, dropping it."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class RequestLimit:
    """ASGI middleware refusing request bodies above a limit (see the module docstring).

    Args:
        app: the ASGI application.
        upload_bytes: the limit of the file sent to a path ending in ``/upload`` (its body may hold
            :data:`MULTIPART_BYTES` more).
        other_bytes: the limit of any other body.
    """

    def __init__(self, app: Callable, *, upload_bytes: int, other_bytes: int) -> None:
        self.app = app
        self.upload_bytes = upload_bytes
        self.other_bytes = other_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        upload = scope["path"].rstrip("/").endswith("/upload")
        limit, what = (self.upload_bytes, "an upload") if upload else (self.other_bytes, "a request")
        slack = MULTIPART_BYTES if upload else 0
        declared = headers.get(b"content-length")
        if declared is None:
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                return await _answer(send, 411, f"{what} must declare its length (Content-Length); "
                                                "chunked bodies are not accepted")
            return await self.app(scope, receive, send)
        try:
            length = int(declared)
        except ValueError:
            return await _answer(send, 400, f"Content-Length {declared.decode(errors='replace')!r} is not a number")
        if length > limit + slack:
            if length <= DRAIN_BYTES:
                await _drain(receive)
            hint = ": give a smaller or reduced copy of the image" if upload else ""
            return await _answer(send, 413, f"{what} of {_megabytes(length)} is above the viewer's limit of "
                                            f"{_megabytes(limit)}{hint}")
        return await self.app(scope, receive, send)


def request_error_handlers(fns: Callable[[], Iterable[Any]]) -> dict[type, Callable]:
    """FastAPI exception handlers for requests naming an unknown function (``404``) or argument (``422``).

    Args:
        fns: returns the page's functions (Gradio's ``BlockFunction``: ``_id``, ``api_name``, ``api_visibility``).
    """
    from fastapi.responses import JSONResponse
    from gradio.route_utils import FnIndexInferError

    def endpoints() -> str:
        names = [f"/{fn.api_name}" for fn in fns() if fn.api_name and fn.api_visibility == "public"]
        return f"this server's API endpoints are {', '.join(names)} (GET /gradio_api/info describes them)"

    def not_found(what: str) -> JSONResponse:
        return JSONResponse({"detail": f"{what}: {endpoints()}"}, status_code=404)

    async def unknown_name(request, exc: FnIndexInferError) -> JSONResponse:
        name = request.path_params.get("api_name")
        return not_found(f"no API endpoint /{name}" if name else str(exc))

    async def unknown_key(request, exc: KeyError) -> JSONResponse:
        key = exc.args[0] if exc.args else None
        known = {fn._id for fn in fns()}
        if isinstance(key, int) and not isinstance(key, bool) and key not in known:
            return not_found(f"fn_index {key} names no function of this page")
        name = request.path_params.get("api_name")
        if isinstance(key, str) and name is not None and key.lstrip("/") == name:
            return not_found(f"no API endpoint /{name}")
        raise exc

    async def bad_arguments(request, exc: TypeError) -> JSONResponse:
        if "/call/v2/" not in request.url.path:  # Gradio's construct_args, the only TypeError of that route
            raise exc
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=422)

    return {FnIndexInferError: unknown_name, KeyError: unknown_key, TypeError: bad_arguments}
