"""Worker for the differential path test (tests/integrity.rs): a plain
Starlette router with the gate's own route patterns, so the test can compare
the route the gate matched with the one the worker's framework matches on the
path the worker received.

ROUTES (env): JSON list of [gate pattern, protected] in Starlette's match
order (most specific first). Every handler answers
{"route": <gate pattern>, "path": scope["path"], "raw_path": ...}.
GET /__stats (straight to the socket) gives the number of requests that
reached a protected route without an Authorization header.
"""

import json
import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

_unauthenticated_protected = 0


def _starlette_pattern(gate_pattern: str) -> str:
    # matchit's `{*rest}` is Starlette's `{rest:path}`; `{id}` is the same.
    out = []
    for seg in gate_pattern.split("/"):
        if seg.startswith("{*") and seg.endswith("}"):
            seg = "{" + seg[2:-1] + ":path}"
        out.append(seg)
    return "/".join(out)


def _handler(gate_pattern: str, protected: bool):
    async def endpoint(request):
        global _unauthenticated_protected
        if protected and "authorization" not in request.headers:
            _unauthenticated_protected += 1
        scope = request.scope
        return JSONResponse(
            {
                "route": gate_pattern,
                "path": scope["path"],
                "raw_path": scope["raw_path"].decode("latin-1"),
            }
        )

    return endpoint


async def stats(request):
    return JSONResponse({"unauthenticated_protected": _unauthenticated_protected})


async def healthz(request):
    return JSONResponse({"ok": True})


_routes = [Route("/__stats", stats), Route("/healthz", healthz)]
for pattern, protected in json.loads(os.environ.get("ROUTES", "[]")):
    _routes.append(Route(_starlette_pattern(pattern), _handler(pattern, protected)))

app = Starlette(routes=_routes)
