"""The ASGI application of `hitl serve` (Starlette): routes under /api/v2, bearer-key
auth in constant time, capped JSON bodies, the hosted API's error envelope for every
refusal, and the background threads (simulated agents, webhook delivery)."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from hitl_webhooks import Dispatcher
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from hitl_core import HitlError

from ._agent import Worker
from ._api import Api, ApiError, Call, Reply
from ._wire import Unmappable

__all__ = ["BODY_LIMIT", "PREFIX", "create_app", "envelope"]

log = logging.getLogger("hitl_server")

PREFIX = "/api/v2"
BODY_LIMIT = 1 << 20
"""The largest request body accepted (1 MiB); more is 413 payload_too_large."""

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "method_not_allowed_error",
    409: "conflict_error",
    413: "payload_too_large_error",
    422: "validation_error",
    503: "service_unavailable_error",
}
_BUSY = frozenset({"store_busy", "concurrent_update"})


def envelope(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The hosted API's error body: `{"error": {"type", "message", "code" (the HTTP
    status), "error_code", "request_id", "details": {"error_code"}}}`."""
    request_id = "req_" + secrets.token_hex(8)
    body = {
        "error": {
            "type": _TYPES.get(status, "api_error"),
            "message": message,
            "code": status,
            "error_code": code,
            "request_id": request_id,
            "details": {"error_code": code},
        }
    }
    return JSONResponse(
        body, status_code=status, headers={"X-Request-Id": request_id, **(headers or {})}
    )


def _refusal(error: Exception) -> JSONResponse:
    if isinstance(error, ApiError):
        return envelope(error.status, error.code, error.message, error.headers)
    if isinstance(error, HitlError):
        if error.code in _BUSY or error.status == 503:  # UnavailableError: retry soon
            return envelope(503, error.code, error.message, {"Retry-After": "1"})
        status = error.status if error.status in (404, 409, 422) else 500
        return envelope(status, error.code, error.message)
    if isinstance(error, Unmappable):
        return envelope(500, "unmappable_id", str(error))
    log.exception("unexpected error", exc_info=error)
    return envelope(500, "internal_error", "the server failed; see its log")


DRAIN = 8
"""A refused body up to this many times the limit is read to its end (and dropped)
before the 413 goes out: a client still sending when the server closes gets a broken
pipe instead of the answer. A larger one is cut off at once."""


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_request", "Content-Length is not a number")
        if int(declared) > limit:
            if int(declared) <= DRAIN * limit:
                await _drain(request, 0, DRAIN * limit)
            raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request, size, DRAIN * limit)
            raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: Request, read: int, cap: int) -> None:
    """Read and drop the rest of a refused body, up to `cap` bytes in all."""
    async for chunk in request.stream():
        read += len(chunk)
        if read > cap:
            return


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ApiError(422, "invalid_json", f"the body is not valid JSON: {error}") from None
    try:  # "\ud800" escapes decode to lone surrogates, which no UTF-8 store can keep
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(422, "invalid_json", "the body holds a lone surrogate escape") from None
    return value


Handler = Callable[[Call], Reply]


def _endpoint(handlers: dict[str, Handler], limit: int) -> Callable[[Request], Awaitable[Response]]:
    """One path's endpoint: read and parse the body, run the method's handler on a worker
    thread (hitl-core calls block), and turn every refusal into the envelope."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        handler = handlers[method]
        try:
            body = None
            if method in ("POST", "PATCH", "PUT"):
                body = _parse(await _read_body(request, limit))
            call = Call(
                path={k: str(v) for k, v in request.path_params.items()},
                query=dict(request.query_params),
                body=body,
                idempotency_key=request.headers.get("idempotency-key") or None,
            )
            reply = await run_in_threadpool(handler, call)
        except Exception as error:
            return _refusal(error)
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

    return endpoint


def _routes(api: Api, limit: int) -> list[BaseRoute]:
    table: list[tuple[str, str, Handler]] = [
        ("POST", "/runs", api.create_run),
        ("GET", "/runs", api.list_runs),
        ("GET", "/runs/{run_id}", api.get_run),
        ("POST", "/runs/{run_id}/cancel", api.cancel_run),
        ("GET", "/runs/{run_id}/permissions", api.list_requests),
        ("POST", "/runs/{run_id}/answer", api.answer),
        ("POST", "/runs/{run_id}/approve", api.approve),
        ("PATCH", "/runs/{run_id}/permission-mode", api.switch_mode),
        ("POST", "/permissions", api.create_policy),
        ("GET", "/permissions", api.list_policies),
        ("DELETE", "/permissions/{policy_id}", api.delete_policy),
        ("POST", "/tasks", api.create_task),
        ("GET", "/tasks/{task_id}", api.get_task),
        ("POST", "/tasks/{task_id}/runs", api.run_task),
        ("POST", "/webhooks", api.create_webhook),
        ("GET", "/webhooks", api.list_webhooks),
        ("GET", "/webhooks/{webhook_id}", api.get_webhook),
        ("PATCH", "/webhooks/{webhook_id}", api.update_webhook),
        ("DELETE", "/webhooks/{webhook_id}", api.delete_webhook),
        ("GET", "/webhooks/{webhook_id}/deliveries", api.list_deliveries),
    ]
    paths: dict[str, dict[str, Handler]] = {}
    for method, path, handler in table:
        paths.setdefault(path, {})[method] = handler
    routes: list[BaseRoute] = []
    collections = {"/runs", "/permissions", "/tasks", "/webhooks"}
    for path, handlers in paths.items():
        endpoint = _endpoint(handlers, limit)
        # The SDK calls collections with a trailing slash ("/runs/"); accept both.
        for variant in (path, path + "/") if path in collections else (path,):
            routes.append(Route(variant, endpoint, methods=list(handlers), include_in_schema=False))
    return routes


class _BearerAuth:
    """Refuses every request without `Authorization: Bearer <key>` (401, enveloped).
    The key is compared with `hmac.compare_digest` (constant time)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            response = envelope(
                401,
                "invalid_api_key",
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        values = [v for k, v in scope.get("headers", []) if k.lower() == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, token = values[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(token.strip(), self.key)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 405:
        return envelope(
            405, "method_not_allowed", f"{request.method} is not allowed here", error.headers
        )
    if error.status_code == 404:
        return envelope(404, "not_found", f"no endpoint {request.url.path}")
    return envelope(error.status_code, "invalid_request", str(error.detail))


async def _server_error(request: Request, error: Exception) -> Response:
    return _refusal(error)


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app(
    api: Api,
    *,
    api_key: str,
    body_limit: int = BODY_LIMIT,
    worker: Worker | None = None,
    dispatcher: Dispatcher | None = None,
    webhook_interval: float = 0.5,
) -> Starlette:
    """The ASGI app serving `api` under /api/v2 behind the bearer `api_key`. Its lifespan
    runs the agent `worker` and the webhook `dispatcher`, when given, on background
    threads; at shutdown the worker releases its leases."""
    if not api_key:
        raise ValueError("an API key is required")
    inner = Router(_routes(api, body_limit), redirect_slashes=False)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        threads = []
        if dispatcher is not None:
            threads.append(
                threading.Thread(
                    target=dispatcher.run_forever,
                    args=(stop, webhook_interval),
                    name="hitl-webhooks",
                    daemon=True,
                )
            )
        for thread in threads:
            thread.start()
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            stop.set()
            if worker is not None:
                worker.stop()  # its thread ends when the engine closes
            for thread in threads:
                thread.join(timeout=15)

    app = Starlette(
        routes=[
            Route("/healthz", _health, methods=["GET"]),
            Mount(PREFIX, app=_BearerAuth(inner, api_key)),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    return app
