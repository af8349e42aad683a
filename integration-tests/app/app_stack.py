"""The same app with the Python middleware stack people run today, for benches.

    JWT_SECRET=... uvicorn app_stack:app --app-dir integration-tests/app

Outermost first: per-IP token-bucket rate limit -> HS256 JWT on /api/ ->
Starlette GZipMiddleware (defaults) -> app. The order matches the gate's:
IP limits run before the token check. Env: JWT_SECRET (required),
JWT_ISSUER / JWT_AUDIENCE (optional), RATE_LIMIT_RPS (100), RATE_LIMIT_BURST (200).
"""

import json
import math
import os
import time

import jwt
from starlette.middleware.gzip import GZipMiddleware

from app import app as inner_app

SUBJECT_HEADER = b"x-auth-subject"


async def _send_json(send, status: int, error: str, detail: str, headers=()):
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class JWTAuth:
    """HS256 bearer tokens on /api/; the verified `sub` goes to X-Auth-Subject."""

    def __init__(self, app, secret: str, issuer=None, audience=None):
        self.app, self.secret, self.issuer, self.audience = app, secret, issuer, audience

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        # Never let a client forge the identity header, on any path.
        headers = [(k, v) for k, v in scope["headers"] if k != SUBJECT_HEADER]
        if scope["path"].startswith("/api/"):
            auth = next((v for k, v in headers if k == b"authorization"), b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return await _send_json(
                    send, 401, "unauthorized", "missing bearer token",
                    [(b"www-authenticate", b'Bearer realm="asgi-gate"')],
                )
            try:
                claims = jwt.decode(
                    token.strip(), self.secret, algorithms=["HS256"],
                    issuer=self.issuer, audience=self.audience,
                    options={"verify_aud": self.audience is not None},
                )
            except jwt.PyJWTError as e:
                return await _send_json(
                    send, 401, "invalid_token", str(e),
                    [(b"www-authenticate", b'Bearer realm="asgi-gate", error="invalid_token"')],
                )
            if "sub" in claims:
                headers.append((SUBJECT_HEADER, str(claims["sub"]).encode("latin-1", "replace")))
        scope = dict(scope, headers=headers)
        return await self.app(scope, receive, send)


class RateLimit:
    """Token bucket per client IP; the table is bounded, oldest keys dropped first."""

    def __init__(self, app, rate: float, burst: float, max_keys: int = 100_000):
        self.app, self.rate, self.burst, self.max_keys = app, rate, burst, max_keys
        self.buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, last time)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        ip = scope["client"][0] if scope.get("client") else "-"
        now = time.monotonic()
        tokens, last = self.buckets.pop(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self.buckets) >= self.max_keys:
            self.buckets.pop(next(iter(self.buckets)))
        if tokens < 1:
            self.buckets[ip] = (tokens, now)
            retry = max(1, math.ceil((1 - tokens) / self.rate))
            return await _send_json(
                send, 429, "rate_limited", "too many requests",
                [(b"retry-after", str(retry).encode())],
            )
        self.buckets[ip] = (tokens - 1, now)
        return await self.app(scope, receive, send)


def build():
    secret = os.environ.get("JWT_SECRET")
    if not secret:
        raise RuntimeError("app_stack: set JWT_SECRET")
    stack = GZipMiddleware(inner_app)
    stack = JWTAuth(stack, secret, os.environ.get("JWT_ISSUER"), os.environ.get("JWT_AUDIENCE"))
    return RateLimit(
        stack,
        rate=float(os.environ.get("RATE_LIMIT_RPS", "100")),
        burst=float(os.environ.get("RATE_LIMIT_BURST", "200")),
    )


app = build()
