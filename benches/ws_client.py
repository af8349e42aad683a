"""WebSocket echo load for the benches: N connections, M round trips each.

    python ws_client.py --url ws://127.0.0.1:18080/ws/echo --conns 200 --messages 50

All connections are opened first (at most --connect-parallel handshakes at a
time), then every connection does its M send/receive round trips at once, then
all stay open for --hold seconds (so the harness samples the fronts' RSS with
every socket open), then all close. Prints one line:
RESULT {"messages": ..., "seconds": ..., "p50_ms": ..., "p99_ms": ..., "errors": ...,
        "connect_seconds": ..., "conns": ...}
`seconds` is the echo phase only. Bounded: --timeout ends everything.
This client is CPU-heavy itself; the harness accounts its CPU separately.
"""

import argparse
import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect


async def main(a):
    payload = "x" * a.size
    lat = []
    errors = 0
    conns = []
    sem = asyncio.Semaphore(a.connect_parallel)

    async def open_one():
        nonlocal errors
        async with sem:
            try:
                ws = await connect(a.url, compression=None, ping_interval=None,
                                   open_timeout=10, close_timeout=2, max_size=2**20)
                conns.append(ws)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                errors += 1
                if errors <= 3:
                    print(f"connect error: {e!r}", file=sys.stderr)

    t0 = time.perf_counter()
    await asyncio.gather(*(open_one() for _ in range(a.conns)))
    connect_s = time.perf_counter() - t0

    async def echo(ws):
        nonlocal errors
        pc = time.perf_counter
        try:
            for _ in range(a.messages):
                s = pc()
                await ws.send(payload)
                got = await ws.recv()
                lat.append(pc() - s)
                if got != payload:
                    errors += 1
        except Exception as e:  # noqa: BLE001
            errors += 1
            print(f"echo error: {e!r}", file=sys.stderr)

    t1 = time.perf_counter()
    await asyncio.gather(*(echo(ws) for ws in conns))
    echo_s = time.perf_counter() - t1
    await asyncio.sleep(a.hold)

    async def close(ws):
        try:
            await ws.close()
        except Exception:  # noqa: BLE001
            pass

    await asyncio.gather(*(close(ws) for ws in conns))
    missing = (a.conns - len(conns)) * a.messages
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, max(0, round(p / 100 * len(lat)) - 1))] * 1000 if lat else 0.0

    print("RESULT " + json.dumps({
        "messages": len(lat), "seconds": round(echo_s, 6), "p50_ms": round(pct(50), 4),
        "p99_ms": round(pct(99), 4), "errors": errors + (1 if missing else 0),
        "connect_seconds": round(connect_s, 4), "conns": len(conns),
    }), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--connect-parallel", type=int, default=100)
    p.add_argument("--hold", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    try:
        asyncio.run(asyncio.wait_for(main(args), args.timeout))
    except asyncio.TimeoutError:
        print(f"ws_client: timed out after {args.timeout}s", file=sys.stderr)
        sys.exit(2)
