"""An open-loop HTTP/1.1 load generator for benches/scenarios/overload.sh.

    python openloop.py --port 18080 --path /api/big --rate 6000 --duration 7 \
        [--host 127.0.0.1] [-H 'Accept-Encoding: gzip']... [--max-conns 1024] \
        [--preopen 64] [--grace 5]

Requests are due at a constant rate (request i at t0 + i/rate) whatever the
server does: a due request goes out on an idle keep-alive connection, or on a
new one (up to --max-conns), or else waits in the generator's own backlog
until a connection frees. Every latency is measured from the time the request
was DUE, not from when it went out, so a server that falls behind is charged
for the wait (no coordinated omission), and the generator reports its own send
lag: `lag_*` is how late each request was handed to a connection or to the
backlog (due -> dispatched: the generator's own scheduling delay; when it is
large the generator, not the server, was the bottleneck), and `queued` counts
the requests that had to wait for a connection because --max-conns were all
busy (a server holding that many requests at once).

Why not h2load --rps (checked with nghttp2 1.52): each h2load client holds at
most one HTTP/1.1 request in flight and keeps due requests pending until its
request finishes, timing them from when they finally go out (coordinated
omission: the slow answers hide the wait behind them); and a client whose
connection is closed reconnects and sends at once, outside the rate.

Plain asyncio (no uvloop: the pinned test venv has none) and httptools (the
parser uvicorn uses) from the test venv. Prints one line: RESULT {json}. Times
in ms. `goodput_rps` counts 2xx answers that completed inside the sending
window (the run's duration), so a backlog served after the window does not
inflate it; latency percentiles cover every request sent in the window and
answered before the grace period ran out; `unanswered` counts the rest.
"""

import argparse
import asyncio
import json
import math
import time

import httptools


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, math.ceil(p / 100 * len(sorted_vals)) - 1))
    return sorted_vals[i]


class Conn(asyncio.Protocol):
    __slots__ = ("gen", "transport", "parser", "due", "sent")

    def __init__(self, gen):
        self.gen = gen
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.due = None  # the due time of the request in flight
        self.sent = None

    # asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.gen.failed(self)
            self.transport.close()

    def connection_lost(self, exc):
        self.gen.lost(self)

    # httptools
    def on_message_complete(self):
        status = self.parser.get_status_code()
        keep = self.parser.should_keep_alive()
        self.gen.done(self, status, keep)


class Gen:
    def __init__(self, a, loop):
        self.a = a
        self.loop = loop
        host_hdr = f"{a.host}:{a.port}"
        lines = [f"GET {a.path} HTTP/1.1", f"Host: {host_hdr}", "User-Agent: benches-openloop"]
        lines += a.header
        self.req = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.idle = []  # LIFO: few hot connections when the load allows
        self.conns = 0  # open or opening
        self.opened = 0
        self.backlog = []  # due times waiting for a connection (FIFO via index)
        self.bl_head = 0
        self.t0 = 0.0
        self.t_end = 0.0
        self.outstanding = 0
        self.sent = 0
        self.queued = 0
        self.lags = []  # due -> dispatched
        self.ok = []  # latency of 2xx, from due
        self.ok_sent = []  # the same from the moment it went out
        self.ok_in_window = 0
        self.shed = []  # latency of non-2xx answers, from due
        self.shed_sent = []
        self.status = {}
        self.errors = 0
        self.drained = None
        self.events = []  # (due - t0, latency from due, from send, 2xx?, done - t0)

    # --- sending
    def send(self, c, due):
        c.due, c.sent = due, self.loop.time()
        self.sent += 1
        c.transport.write(self.req)

    def dispatch(self, due):
        self.outstanding += 1
        self.lags.append(self.loop.time() - due)
        if self.idle:
            self.send(self.idle.pop(), due)
        elif self.conns < self.a.max_conns:
            self.open_conn(due)
        else:
            self.backlog.append(due)
            self.queued += 1

    def open_conn(self, due=None):
        self.conns += 1
        self.opened += 1
        self.loop.create_task(self._open(due))

    async def _open(self, due):
        try:
            _, c = await self.loop.create_connection(lambda: Conn(self), self.a.host, self.a.port)
        except OSError:
            self.conns -= 1
            if due is not None:
                self.errors += 1
                self.finish()
            return
        if due is not None:
            self.send(c, due)
        else:
            self.free(c)

    def free(self, c):
        if self.bl_head < len(self.backlog):
            due = self.backlog[self.bl_head]
            self.bl_head += 1
            self.send(c, due)
        else:
            self.idle.append(c)

    # --- answers
    def finish(self):
        self.outstanding -= 1
        if self.drained and self.outstanding <= 0:
            self.drained.set()

    def done(self, c, status, keep):
        if c.due is None:  # an answer to nothing (a server refusing the connection)
            self.status[status] = self.status.get(status, 0) + 1
            c.transport.close()
            return
        now = self.loop.time()
        lat, lat_sent = now - c.due, now - c.sent
        c_due, c.due = c.due, None
        if 200 <= status < 300:
            self.ok.append(lat)
            self.ok_sent.append(lat_sent)
            if now <= self.t_end:
                self.ok_in_window += 1
        else:
            self.shed.append(lat)
            self.shed_sent.append(lat_sent)
        self.status[status] = self.status.get(status, 0) + 1
        self.events.append((c_due - self.t0, lat, lat_sent, 200 <= status < 300, now - self.t0))
        self.finish()
        if keep:
            self.free(c)
        else:
            c.transport.close()

    def failed(self, c):
        if c.due is not None:
            c.due = None
            self.errors += 1
            self.finish()

    def lost(self, c):
        self.conns -= 1
        if c in self.idle:
            self.idle.remove(c)
        self.failed(c)
        # A request waiting for a connection gets a new one.
        if self.bl_head < len(self.backlog) and self.conns < self.a.max_conns:
            due = self.backlog[self.bl_head]
            self.bl_head += 1
            self.open_conn(due)

    def write_series(self, path, ms):
        """Per 250 ms of due time: served and shed counts and their p99 from send."""
        buckets = {}
        for t, _, lat, ok, _ in self.events:
            b = buckets.setdefault(int(t / 0.25), ([], []))
            b[0 if ok else 1].append(lat)
        with open(path, "w") as f:
            for k in sorted(buckets):
                ok, shed = sorted(buckets[k][0]), sorted(buckets[k][1])
                f.write(json.dumps({
                    "t": k * 0.25, "ok": len(ok), "ok_p99_ms": ms(pct(ok, 99)),
                    "shed": len(shed), "shed_p99_ms": ms(pct(shed, 99)),
                }) + "\n")

    # --- the run
    async def run(self):
        a = self.a
        for _ in range(min(a.preopen, a.max_conns)):
            self.open_conn()
        for _ in range(200):
            if len(self.idle) >= min(a.preopen, a.max_conns) or self.conns == 0:
                break
            await asyncio.sleep(0.01)
        total = max(1, int(a.rate * a.duration))
        self.t0 = self.loop.time() + 0.01
        self.t_end = self.t0 + a.duration
        cpu0 = time.process_time()
        i = 0
        while i < total:
            now = self.loop.time()
            due_n = min(total, int((now - self.t0) * a.rate) + 1)
            while i < due_n:
                self.dispatch(self.t0 + i / a.rate)
                i += 1
            nxt = self.t0 + i / a.rate
            delay = nxt - self.loop.time()
            await asyncio.sleep(max(0.0, delay))
        sent_end = self.loop.time()
        await asyncio.sleep(max(0.0, self.t_end - self.loop.time()))
        if self.outstanding > 0:
            self.drained = asyncio.Event()
            try:
                await asyncio.wait_for(self.drained.wait(), timeout=a.grace)
            except asyncio.TimeoutError:
                pass
        cpu = time.process_time() - cpu0
        wall = self.loop.time() - self.t0
        unanswered = self.outstanding
        for c in list(self.idle):
            c.transport.close()
        ok, shed, lags = sorted(self.ok), sorted(self.shed), sorted(self.lags)
        ok_s, shed_s = sorted(self.ok_sent), sorted(self.shed_sent)
        ms = lambda v: None if v is None else round(v * 1000, 3)
        if a.series:
            self.write_series(a.series, ms)
        answered = len(ok) + len(shed)
        # The same for requests due after --settle s: the state the front
        # settles in, without its first reaction to the load.
        late = [e for e in self.events if e[0] >= a.settle]
        s_ok = sorted(e[1] for e in late if e[3])
        s_shed = sorted(e[2] for e in late if not e[3])
        s_good = sum(1 for e in late if e[3] and e[4] <= a.duration)
        steady = {
            "settle_s": a.settle,
            "steady_goodput_rps": round(s_good / max(1e-9, a.duration - a.settle), 1),
            "steady_ok_p99_ms": ms(pct(s_ok, 99)),
            "steady_shed_sent_p50_ms": ms(pct(s_shed, 50)),
            "steady_shed_sent_p99_ms": ms(pct(s_shed, 99)),
        }
        return steady | {
            "rate": a.rate, "duration_s": a.duration, "due": total,
            "sent": self.sent, "send_s": round(sent_end - self.t0, 3), "wall_s": round(wall, 3),
            "lag_p50_ms": ms(pct(lags, 50)), "lag_p99_ms": ms(pct(lags, 99)), "lag_max_ms": ms(lags[-1] if lags else None),
            "queued": self.queued,
            "answered": answered, "ok": len(ok), "ok_in_window": self.ok_in_window,
            "goodput_rps": round(self.ok_in_window / a.duration, 1),
            "ok_p50_ms": ms(pct(ok, 50)), "ok_p99_ms": ms(pct(ok, 99)), "ok_p999_ms": ms(pct(ok, 99.9)),
            "ok_sent_p50_ms": ms(pct(ok_s, 50)), "ok_sent_p99_ms": ms(pct(ok_s, 99)),
            "shed": len(shed), "shed_share": round(len(shed) / total, 4),
            "shed_p50_ms": ms(pct(shed, 50)), "shed_p99_ms": ms(pct(shed, 99)),
            "shed_max_ms": ms(shed[-1] if shed else None),
            "shed_sent_p50_ms": ms(pct(shed_s, 50)), "shed_sent_p99_ms": ms(pct(shed_s, 99)),
            "shed_sent_max_ms": ms(shed_s[-1] if shed_s else None),
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "errors": self.errors, "unanswered": unanswered,
            "conns_opened": self.opened, "client_cpu_s": round(cpu, 3),
        }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds of sending")
    p.add_argument("-H", "--header", action="append", default=[])
    p.add_argument("--max-conns", type=int, default=1024)
    p.add_argument("--preopen", type=int, default=64)
    p.add_argument("--grace", type=float, default=5.0, help="seconds to wait for answers after the window")
    p.add_argument("--settle", type=float, default=1.0,
                   help="steady_* figures cover requests due after this many seconds")
    p.add_argument("--series", help="write served/shed counts and p99 per 250 ms of due time here (JSON lines)")
    a = p.parse_args()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    res = loop.run_until_complete(Gen(a, loop).run())
    print("RESULT " + json.dumps(res, separators=(",", ":")), flush=True)


main()
