"""FastAPI app used by the integration tests, the demo and the load benches.

Run behind the gate:
    uvicorn app:app --app-dir integration-tests/app --uds /path/app.sock \
        --proxy-headers --forwarded-allow-ips '*'

Hit counting (`GET /count`): an app-wide async dependency counts every request
that reaches an existing endpoint (WebSocket connections count once), except
/count, /count/reset, /healthz and /ws/stats. Requests the router rejects (404, 405) never
reach a dependency and are not counted, so tests can prove the gate answered a
request itself.
"""

import asyncio
import gzip
import hashlib
import json
import os
import time

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import HTTPConnection

_UNCOUNTED = frozenset({"/count", "/count/reset", "/healthz", "/ws/stats"})
_hits = 0


async def _count_hit(conn: HTTPConnection) -> None:
    # async on purpose: a sync dependency would run in the thread pool.
    global _hits
    if conn.scope["path"] not in _UNCOUNTED:
        _hits += 1


app = FastAPI(
    title="asgi-gate test app",
    dependencies=[Depends(_count_hit)],
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


# About 64 KiB; the same bytes on every call and in every process.
BIG = [
    {
        "id": i,
        "name": f"item-{i:05d}",
        "tags": ["alpha", "beta", "gamma"][: 1 + i % 3],
        "value": (i * 7919) % 100003,
        "note": "lorem ipsum dolor sit amet " * 2,
    }
    for i in range(480)
]
BIG_BYTES = json.dumps(BIG, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
# /gzipped is /big compressed once at import (mtime=0 keeps the bytes stable).
GZIPPED_BYTES = gzip.compress(BIG_BYTES, compresslevel=6, mtime=0)


class _Inflight:
    current = 0
    max = 0


@app.get("/hello")
async def hello():
    return {"message": "hello"}


@app.get("/healthz")
async def healthz():
    return {"ok": True}


@app.get("/pid")
async def pid():
    return {"pid": os.getpid()}


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    scope = request.scope
    client = request.client
    return JSONResponse(
        {
            "method": request.method,
            "path": scope["path"],
            "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "client": [client.host, client.port] if client else None,
            "scheme": scope["scheme"],
            "http_version": scope["http_version"],
            "body_bytes": len(body),
        }
    )


_ECHO_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
app.add_api_route("/echo", _echo, methods=_ECHO_METHODS)
app.add_api_route("/echo/{rest:path}", _echo, methods=_ECHO_METHODS)


@app.get("/big")
async def big():
    return Response(content=BIG_BYTES, media_type="application/json")


@app.get("/stream")
async def stream(kib: int = 1024):
    # Streamed in 64 KiB chunks: more than socket buffers hold, so a client
    # that stops reading holds the response up.
    chunk = b"x" * 65536

    async def chunks():
        for _ in range(max(kib, 0) // 64):
            yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream")


@app.get("/sized")
async def sized(kib: int = 1024):
    # kib KiB of 'x' with a Content-Length (unlike /stream).
    return Response(b"x" * (max(kib, 0) * 1024), media_type="application/octet-stream")


@app.get("/gzipped")
async def gzipped():
    return Response(
        content=GZIPPED_BYTES,
        media_type="application/json",
        headers={"Content-Encoding": "gzip"},
    )


@app.get("/sse")
async def sse():
    async def events():
        for i in range(5):
            if i:
                await asyncio.sleep(0.2)
            yield f"data: {i}\n\n".encode()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@app.api_route("/slow", methods=["GET", "POST"])
async def slow(ms: int = 500):
    _Inflight.current += 1
    _Inflight.max = max(_Inflight.max, _Inflight.current)
    try:
        await asyncio.sleep(max(ms, 0) / 1000)
    finally:
        _Inflight.current -= 1
    return {"slept_ms": ms, "pid": os.getpid()}


@app.get("/cpu")
async def cpu(ms: float = 2.0):
    # CPU-bound work that yields to the loop every 0.2 ms, so the requests
    # uvicorn has accepted interleave and each takes longer the more there are.
    _Inflight.current += 1
    _Inflight.max = max(_Inflight.max, _Inflight.current)
    try:
        end = time.perf_counter() + max(ms, 0) / 1000
        while time.perf_counter() < end:
            stop = time.perf_counter() + 0.0002
            while time.perf_counter() < stop:
                pass
            await asyncio.sleep(0)
    finally:
        _Inflight.current -= 1
    return {"ms": ms}


@app.get("/concurrency")
async def concurrency():
    return {"current": _Inflight.current, "max": _Inflight.max}


@app.post("/concurrency/reset")
async def concurrency_reset():
    _Inflight.max = _Inflight.current
    return {"current": _Inflight.current, "max": _Inflight.max}


_upload_arrivals: list[float] = []


@app.get("/upload/arrivals")
async def upload_arrivals():
    # Wall-clock times (time.time()) at which /upload requests reached the app.
    return {"arrivals": _upload_arrivals}


@app.post("/upload")
async def upload(request: Request):
    _upload_arrivals.append(time.time())
    digest = hashlib.sha256()
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
        digest.update(chunk)
    return {"bytes": n, "sha256": digest.hexdigest()}


@app.get("/count")
async def count():
    return {"hits": _hits}


@app.post("/count/reset")
async def count_reset():
    global _hits
    _hits = 0
    return {"hits": 0}


# Under /api/ for the auth benches: the gate (or app_stack's middleware) has
# already verified the token and put the subject in X-Auth-Subject.
@app.get("/api/big")
async def api_big():
    # Rendered on every call, as a real endpoint would: the benches measure
    # what the worker still spends once the gate took compression and auth.
    return JSONResponse(BIG)


# For the cache benches (benches/scenarios/cache_hit.sh, coalescing.sh):
# answers every proxy cache may keep.
_CACHEABLE = {"Cache-Control": "public, max-age=3600"}


@app.get("/cacheable/big")
async def cacheable_big():
    return Response(content=BIG_BYTES, media_type="application/json", headers=_CACHEABLE)


@app.get("/cacheable/slow")
async def cacheable_slow(ms: int = 500):
    await asyncio.sleep(max(ms, 0) / 1000)
    return JSONResponse({"slow": ms}, headers=_CACHEABLE)


@app.get("/api/hello")
async def api_hello():
    return {"message": "hello"}


@app.get("/api/whoami")
async def api_whoami(request: Request):
    return {"sub": request.headers.get("x-auth-subject")}


# What /ws/echo received, for tests that must prove a message never reached
# the app: sessions ended, messages and the largest one (after inflating).
_ws_stats = {"ended": 0, "messages": 0, "largest": 0}


@app.get("/ws/stats")
async def ws_stats():
    return _ws_stats


@app.websocket("/ws/echo")
async def ws_echo(ws: WebSocket):
    await ws.accept()
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("text") or msg.get("bytes") or b""
            _ws_stats["messages"] += 1
            _ws_stats["largest"] = max(_ws_stats["largest"], len(data))
            if msg.get("text") is not None:
                await ws.send_text(msg["text"])
            elif msg.get("bytes") is not None:
                await ws.send_bytes(msg["bytes"])
    finally:
        _ws_stats["ended"] += 1


# Agrees to permessage-deflate whether or not the client offered it: a worker
# the gate must not trust to stay within what the handshake allowed.
@app.websocket("/ws/rogue")
async def ws_rogue(ws: WebSocket):
    await ws.accept(headers=[(b"sec-websocket-extensions", b"permessage-deflate")])
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass


@app.api_route("/cached/{name:path}", methods=["GET", "HEAD"])
@app.api_route("/private/{name:path}", methods=["GET", "HEAD"])
@app.api_route("/user/{name:path}", methods=["GET", "HEAD"])
async def cached(
    request: Request,
    name: str,
    cc: str = "max-age=60",
    vary: str = "",
    tags: str = "",
    cookie: int = 0,
    sleep_ms: int = 0,
    status: int = 200,
    kib: int = 0,
    etag: str = "",
):
    """For the response cache tests: headers set from the query; `n` counts
    this endpoint's calls (so a test tells a stored answer from a new one)."""
    _Cached.calls += 1
    n = _Cached.calls
    if sleep_ms:
        await asyncio.sleep(sleep_ms / 1000)
    if _Cached.failing:
        return JSONResponse({"n": n, "failing": True}, status_code=503)
    headers = {}
    if cc:
        headers["Cache-Control"] = cc
    if vary:
        headers["Vary"] = vary
    if tags:
        headers["Surrogate-Key"] = tags
    if cookie:
        headers["Set-Cookie"] = "session=abc"
    if etag:
        headers["ETag"] = '"' + etag + '"'
    body = {
        "n": n,
        "name": name,
        "tenant": request.headers.get("x-tenant"),
        "user": request.headers.get("x-user"),
        "authorized": "authorization" in request.headers,
        "range": request.headers.get("range"),
        "if_none_match": request.headers.get("if-none-match"),
        "host": request.headers.get("host"),
        "forwarded_host": request.headers.get("x-forwarded-host"),
        "body": (await request.body()).decode("utf-8", "replace"),
        "pad": "x" * (max(kib, 0) * 1024),
    }
    return JSONResponse(body, status_code=status, headers=headers)


class _Cached:
    calls = 0
    failing = False


@app.post("/cached-failing")
async def cached_failing(on: int = 1):
    """Makes every /cached/ call answer 503 (on=1) or not (on=0)."""
    _Cached.failing = bool(on)
    return {"failing": _Cached.failing}
