"""Fault soak: steady mixed load through `asgi-gate run --workers 2` while a
driver kills a worker, reloads the config, restarts Redis EMPTY and opens
slow and silent clients; a second gate sharing Redis must enforce every
revocation posted on the first. Run by benches/fault_soak.sh, which builds the
gate and writes the README block; everything listens on 127.0.0.1 only and
stops by itself after --duration seconds.

Counts: requests sent, failed by cause (and how many of those failed within
one second after a worker kill, i.e. were in flight on it), revocations
posted vs enforced on the second gate (and the slowest), open fds and RSS of
both gates over time. Writes fault_soak.md / fault_soak.csv / fault_soak.png.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

# The load side needs the test venv (httpx, PyJWT, websockets); the plot
# (--plot) runs in benches/.venv, which has matplotlib and nothing else.
try:
    import httpx
    import jwt
    import websockets
except ImportError:
    httpx = jwt = websockets = None

SECRET = "fault-soak-secret-that-is-at-least-32-bytes-long"
ADMIN = "fault-soak-admin-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(jti):
    return jwt.encode({"sub": "soak", "jti": jti, "exp": int(time.time()) + 900}, SECRET, algorithm="HS256")


def gate_yaml(port, admin, redis_port, persist, sockets=None):
    up = f"    sockets: [{sockets}]\n" if sockets else "    pool: { max_connections: 64 }\n"
    return f"""listen:
  - address: 127.0.0.1:{port}
admin:
  address: 127.0.0.1:{admin}
  token_env: SOAK_ADMIN
upstreams:
  app:
{up}auth:
  p:
    algorithms: [HS256]
    secret_env: SOAK_SECRET
    forward_claims: {{ sub: X-Auth-Subject }}
revocation:
  persist_file: {persist}
  redis: redis://127.0.0.1:{redis_port}
limits: {{ header_timeout: 5s }}
routes:
  - path: /echo/{{*rest}}
    upstream: app
    auth: p
  - path: /ws/{{*rest}}
    upstream: app
  - path: /{{*rest}}
    upstream: app
"""


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Soak:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.outcomes = Counter()
        self.failures = []  # (t, cause)
        self.kills = []
        self.reloads = []
        self.redis_restarts = []
        self.samples = []  # (t, fdA, rssA, fdB, rssB)
        self.revocations = []  # (jti, post status, seconds to enforce on B or None)
        self.slow_opened = 0
        self.stop = asyncio.Event()
        self.procs = []

    def now(self):
        return time.monotonic() - self.t0

    def record(self, cause):
        self.outcomes[cause] += 1
        if cause != "ok":
            self.failures.append((self.now(), cause))

    # ------------------------------------------------------------ processes

    def spawn(self, argv, log, env=None):
        p = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.procs.append(p)
        return p

    def start_redis(self):
        self.redis = self.spawn(
            [self.args.redis_bin, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            open(os.path.join(self.tmp, "redis.log"), "a"),
        )

    async def wait_port(self, port, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise SystemExit(f"nothing listens on {port}")

    async def setup(self):
        a = self.args
        self.tmp = tempfile.mkdtemp(prefix="fault-soak.")
        self.redis_port, self.pa, self.aa, self.pb, self.ab = (free_port() for _ in range(5))
        self.start_redis()
        await self.wait_port(self.redis_port)
        env = {"SOAK_SECRET": SECRET, "SOAK_ADMIN": ADMIN}
        cfg_a = os.path.join(self.tmp, "a.yaml")
        with open(cfg_a, "w") as f:
            f.write(gate_yaml(self.pa, self.aa, self.redis_port, os.path.join(self.tmp, "a.log")))
        self.cfg_a = cfg_a
        self.gate_a = self.spawn(
            [a.gate_bin, "run", "-c", cfg_a, "--workers", "2", "--no-access-log", "--",
             os.path.join(a.venv, "bin", "uvicorn"), "app:app", "--app-dir", a.app_dir, "--no-access-log",
             "--proxy-headers", "--forwarded-allow-ips", "*"],
            open(os.path.join(self.tmp, "gate-a.log"), "a"), env,
        )
        sock_b = os.path.join(self.tmp, "b.sock")
        self.worker_b = self.spawn(
            [os.path.join(a.venv, "bin", "uvicorn"), "app:app", "--app-dir", a.app_dir, "--uds", sock_b,
             "--no-access-log", "--proxy-headers", "--forwarded-allow-ips", "*"],
            open(os.path.join(self.tmp, "worker-b.log"), "a"),
        )
        cfg_b = os.path.join(self.tmp, "b.yaml")
        with open(cfg_b, "w") as f:
            f.write(gate_yaml(self.pb, self.ab, self.redis_port, os.path.join(self.tmp, "b.log"), sockets=f'"{sock_b}"'))
        while not os.path.exists(sock_b):
            await asyncio.sleep(0.1)
        self.gate_b = self.spawn(
            [a.gate_bin, "-c", cfg_b, "--no-access-log"], open(os.path.join(self.tmp, "gate-b.log"), "a"), env
        )
        await self.wait_port(self.pa)
        await self.wait_port(self.pb)

    def teardown(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

    # ------------------------------------------------------------ load

    async def http_loop(self, kind):
        base = f"http://127.0.0.1:{self.pa}"
        tok = token("load-not-revoked")
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            while not self.stop.is_set():
                try:
                    if kind == "get":
                        r = await c.get("/hello")
                    elif kind == "post":
                        r = await c.post("/echo", content=b"x" * 4096)
                    else:
                        r = await c.get("/echo/jwt", headers={"authorization": f"Bearer {tok}"})
                    self.record("ok" if r.status_code == 200 else f"http {r.status_code}")
                except httpx.HTTPError as e:
                    self.record(type(e).__name__)
                # Steady, not saturating: the machine is shared with the workers.
                await asyncio.sleep(0.005)

    async def ws_loop(self):
        url = f"ws://127.0.0.1:{self.pa}/ws/echo"
        while not self.stop.is_set():
            try:
                async with websockets.connect(url, open_timeout=10, close_timeout=2) as ws:
                    for i in range(20):
                        await ws.send(f"m{i}")
                        if await asyncio.wait_for(ws.recv(), 10) != f"m{i}":
                            raise ValueError("bad echo")
                self.record("ok")
            except (OSError, asyncio.TimeoutError, ValueError, websockets.WebSocketException) as e:
                # A session open on a killed worker is cut: that is in flight.
                self.record(f"ws {type(e).__name__}")

    # ------------------------------------------------------------ faults

    async def every(self, period, action, first=None):
        await asyncio.sleep(first if first is not None else period)
        while not self.stop.is_set():
            await action()
            try:
                await asyncio.wait_for(self.stop.wait(), period)
            except asyncio.TimeoutError:
                pass

    async def kill_worker(self):
        workers = children(self.gate_a.pid)
        if workers:
            victim = workers[len(self.kills) % len(workers)]
            os.kill(victim, signal.SIGKILL)
            self.kills.append(self.now())

    async def reload(self):
        os.kill(self.gate_a.pid, signal.SIGHUP)
        self.reloads.append(self.now())

    async def restart_redis(self):
        self.redis.kill()
        self.redis.wait()
        await asyncio.sleep(2)
        self.start_redis()  # empty: no dump, no AOF
        self.redis_restarts.append(self.now())

    async def slow_clients(self):
        """Silent connections, half heads, and a reader that never reads."""
        held = []
        for i in range(10):
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.pa)
                if i % 3 == 1:
                    w.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
                elif i % 3 == 2:
                    w.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                held.append(w)
                self.slow_opened += 1
            except OSError:
                pass
        await asyncio.sleep(25)
        for w in held:
            w.close()

    async def revoke(self):
        jti = f"soak-{len(self.revocations)}"
        tok = token(jti)
        status = None
        try:
            async with httpx.AsyncClient(timeout=10) as c:
                r = await c.post(
                    f"http://127.0.0.1:{self.aa}/revocations",
                    json={"token": tok},
                    headers={"authorization": f"Bearer {ADMIN}"},
                )
                status = r.status_code
                t = time.monotonic()
                enforced = None
                while time.monotonic() - t < 30:
                    rb = await c.get(f"http://127.0.0.1:{self.pb}/echo/rev", headers={"authorization": f"Bearer {tok}"})
                    if rb.status_code == 401:
                        enforced = time.monotonic() - t
                        break
                    await asyncio.sleep(0.1)
        except httpx.HTTPError:
            enforced = None
        self.revocations.append((jti, status, enforced))

    async def revoke_loop(self):
        # Concurrent: a revocation posted during a Redis outage may take until
        # Redis is back to reach the other gate.
        tasks = []
        await asyncio.sleep(3)
        while not self.stop.is_set():
            tasks.append(asyncio.create_task(self.revoke()))
            try:
                await asyncio.wait_for(self.stop.wait(), 5)
            except asyncio.TimeoutError:
                pass
        await asyncio.gather(*tasks)

    async def sample(self):
        self.samples.append(
            (self.now(), fd_count(self.gate_a.pid), rss_kb(self.gate_a.pid), fd_count(self.gate_b.pid), rss_kb(self.gate_b.pid))
        )

    # ------------------------------------------------------------ run

    async def run(self):
        await self.setup()
        await asyncio.sleep(1)
        self.t0 = time.monotonic()
        load = [self.http_loop("get"), self.http_loop("get"), self.http_loop("post"), self.http_loop("jwt"), self.ws_loop()]
        drivers = [
            self.every(30, self.kill_worker),
            self.every(20, self.reload),
            self.every(60, self.restart_redis, first=45),
            self.every(30, self.slow_clients, first=10),
            self.every(2, self.sample, first=0),
        ]
        tasks = [asyncio.create_task(c) for c in load + drivers]
        revokes = asyncio.create_task(self.revoke_loop())
        await asyncio.sleep(self.args.duration)
        self.stop.set()
        await asyncio.wait(tasks, timeout=40)
        await revokes
        await self.sample()

    def near_kill(self, t):
        return any(0 <= t - k <= 1.0 for k in self.kills)

    def report(self, out_dir, meta):
        total = sum(self.outcomes.values())
        failed = total - self.outcomes["ok"]
        near = sum(1 for t, _ in self.failures if self.near_kill(t))
        causes = Counter(c for _, c in self.failures)
        posted = len(self.revocations)
        enforced = [e for _, _, e in self.revocations if e is not None]
        pending = sum(1 for _, s, _ in self.revocations if s == 202)
        first, last = self.samples[0], self.samples[-1]
        peak = lambda i: max(s[i] for s in self.samples)  # noqa: E731
        rows = [
            ("duration", f"{self.args.duration} s"),
            ("requests and WebSocket sessions", f"{total}"),
            ("failed", f"{failed}"),
            ("  of them within 1 s after a worker kill (in flight on it)", f"{near}"),
            ("  of them at any other time", f"{failed - near}"),
            ("  by cause", ", ".join(f"{c}: {n}" for c, n in causes.most_common()) or "none"),
            ("worker kills / reloads / Redis restarts (empty)", f"{len(self.kills)} / {len(self.reloads)} / {len(self.redis_restarts)}"),
            ("slow or silent client connections opened", f"{self.slow_opened}"),
            ("revocations posted on gate A", f"{posted} ({pending} answered 202 pending: Redis was down)"),
            ("  enforced on gate B", f"{len(enforced)}; lost: {posted - len(enforced)}"),
            ("  slowest to reach gate B", f"{max(enforced):.1f} s" if enforced else "-"),
            ("gate A open fds: start / end / peak", f"{first[1]} / {last[1]} / {peak(1)}"),
            ("gate A RSS MiB: start / end / peak", f"{first[2] / 1024:.1f} / {last[2] / 1024:.1f} / {peak(2) / 1024:.1f}"),
            ("gate B open fds: start / end / peak", f"{first[3]} / {last[3]} / {peak(3)}"),
        ]
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "fault_soak.md"), "w") as f:
            f.write(f"Machine: {meta['machine']}. Date: {meta['date']}. Commit: {meta['commit']}.\n")
            f.write(f"Command: `{meta['command']}`.\n\n")
            f.write("| measure | value |\n| --- | --- |\n")
            for k, v in rows:
                f.write(f"| {k.strip() if not k.startswith('  ') else '↳ ' + k.strip()} | {v} |\n")
        with open(os.path.join(out_dir, "fault_soak.csv"), "w") as f:
            f.write("t_s,fds_a,rss_kb_a,fds_b,rss_kb_b\n")
            for s in self.samples:
                f.write(",".join(f"{x:.1f}" if isinstance(x, float) else str(x) for x in s) + "\n")
        with open(os.path.join(out_dir, "fault_soak_events.json"), "w") as f:
            json.dump(
                {
                    "duration": self.args.duration,
                    "kills": self.kills,
                    "reloads": self.reloads,
                    "redis_restarts": self.redis_restarts,
                    "failures": [t for t, _ in self.failures],
                    "meta": meta,
                },
                f,
            )
        print(open(os.path.join(out_dir, "fault_soak.md")).read())
        return failed - near, posted - len(enforced)


def plot(out_dir):
    """fault_soak.png from fault_soak.csv and fault_soak_events.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(out_dir, "fault_soak_events.json")) as f:
        ev = json.load(f)
    samples = []
    with open(os.path.join(out_dir, "fault_soak.csv")) as f:
        next(f)
        for line in f:
            samples.append([float(x) for x in line.split(",")])
    t = [s[0] for s in samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    ax1.plot(t, [s[1] for s in samples], label="gate A fds")
    ax1.plot(t, [s[3] for s in samples], label="gate B fds")
    ax1.set_ylabel("open fds")
    ax2.plot(t, [s[2] / 1024 for s in samples], label="gate A RSS")
    ax2.plot(t, [s[4] / 1024 for s in samples], label="gate B RSS")
    ax2.set_ylabel("RSS MiB")
    dur = ev["duration"]
    ax3.hist(ev["failures"], bins=max(1, int(dur)), range=(0, dur), color="tab:red")
    ax3.set_ylabel("failures / s")
    ax3.set_xlabel("seconds")
    for ax in (ax1, ax2, ax3):
        for k in ev["kills"]:
            ax.axvline(k, color="black", lw=0.6, ls="--")
        for r in ev["redis_restarts"]:
            ax.axvline(r, color="tab:purple", lw=0.6, ls=":")
    ax1.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper left", fontsize=8)
    m = ev["meta"]
    fig.suptitle(
        "fault soak: dashed = worker killed, dotted = Redis restarted empty\n"
        f"{m['machine']}, {m['date']}, {m['commit']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "fault_soak.png"), dpi=90)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--plot":
        return plot(sys.argv[2])
    p = argparse.ArgumentParser()
    p.add_argument("--gate-bin", required=True)
    p.add_argument("--venv", required=True)
    p.add_argument("--app-dir", required=True)
    p.add_argument("--redis-bin", default="redis-server")
    p.add_argument("--duration", type=int, default=300)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--meta", required=True, help="JSON: machine, date, commit, command")
    a = p.parse_args()
    if a.duration > 600:
        sys.exit("--duration is at most 600 s")
    soak = Soak(a)
    try:
        asyncio.run(soak.run())
    finally:
        soak.teardown()
    unexpected, lost = soak.report(a.out_dir, json.loads(a.meta))
    # The targets: failures only on killed workers, no revocation lost.
    sys.exit(0 if unexpected == 0 and lost == 0 else 1)


if __name__ == "__main__":
    main()
