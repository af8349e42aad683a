"""N concurrent HTTP/1.1 GETs of one URL, each on its own connection, all
sent at once (the coalescing scenario). Prints `ok=N other=M elapsed_ms=T`.
Standard library only; `--unix SOCK` connects to a Unix socket instead."""

import argparse
import asyncio
import time
from urllib.parse import urlsplit


async def one(connect, host: str, target: str, start: asyncio.Event) -> int:
    reader, writer = await connect()
    await start.wait()
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--unix")
    a = ap.parse_args()
    u = urlsplit(a.url)
    target = u.path + (f"?{u.query}" if u.query else "")
    if a.unix:
        connect = lambda: asyncio.open_unix_connection(a.unix)  # noqa: E731
    else:
        connect = lambda: asyncio.open_connection(u.hostname, u.port)  # noqa: E731
    start = asyncio.Event()
    tasks = [asyncio.create_task(one(connect, u.netloc, target, start)) for _ in range(a.n)]
    await asyncio.sleep(1.0)  # every connection open before the first byte
    t0 = time.monotonic()
    start.set()
    codes = await asyncio.gather(*tasks, return_exceptions=True)
    ms = int((time.monotonic() - t0) * 1000)
    ok = sum(1 for c in codes if isinstance(c, int) and 200 <= c < 300)
    print(f"ok={ok} other={len(codes) - ok} elapsed_ms={ms}")


asyncio.run(main())
