#!/usr/bin/env python3
"""The audit's resource attacks, replayed against a hub on loopback.

    python3 bench/attack.py [--bin target/release/slo-hub] [--seconds 30]

1. stalled-bodies: one address (127.0.0.2) opens as many connections as it
   can (up to 20,000), each a POST /oauth/token whose body never arrives.
2. descriptors: 12,000 idle connections from 250 addresses (127.0.2.x)
   against a hub limited to 10,000 descriptors (`ulimit -n`).

During each, a well-behaved client on 127.0.0.1 asks /healthz, triggers a
logout with the dev API key, and opens an authenticated socket, every 100 ms.
Printed: what the attacker held, the hub's RSS and descriptors at the peak,
and the well-behaved client's latencies and failures. Bounded in time and
count; loopback only. Figures go to bench/README.md by hand.
"""

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


async def http(port, method, path, body=None, headers=None, timeout=2.0):
    """One HTTP/1.1 request; (status, seconds) or (None, seconds)."""
    started = time.monotonic()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        data = body.encode() if body else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        head += f"Content-Length: {len(data)}\r\n\r\n"
        w.write(head.encode() + data)
        line = await asyncio.wait_for(r.readline(), timeout)
        w.close()
        return int(line.split()[1]), time.monotonic() - started
    except Exception:
        return None, time.monotonic() - started


async def socket_auth(port, token, timeout=2.0):
    """An authenticated /v1/ws socket: seconds until `ready`, or None."""
    started = time.monotonic()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        w.write(
            b"GET /v1/ws HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
        if not head.startswith(b"HTTP/1.1 101"):
            return None
        payload = json.dumps({"type": "auth", "token": token}).encode()
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frame = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + masked
        w.write(frame)
        first = await asyncio.wait_for(r.read(2), timeout)
        n = first[1] & 0x7F
        if n == 126:
            n = int.from_bytes(await r.readexactly(2), "big")
        text = await asyncio.wait_for(r.readexactly(n), timeout)
        w.close()
        return time.monotonic() - started if b'"ready"' in text else None
    except Exception:
        return None


async def well_behaved(port, key, token, stop, out):
    while not stop.is_set():
        s, t = await http(port, "GET", "/healthz")
        out["healthz"].append(t if s == 200 else None)
        s, t = await http(
            port, "POST", "/v1/logout", json.dumps({"sub": "someone-else"}),
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        out["trigger"].append(t if s == 200 else None)
        out["socket"].append(await socket_auth(port, token))
        await asyncio.sleep(0.1)


def summary(values):
    ok = sorted(v for v in values if v is not None)
    failed = len(values) - len(ok)
    if not ok:
        return f"all {failed} failed"
    p = lambda q: ok[min(len(ok) - 1, int(q * len(ok)))] * 1000
    return f"{len(ok)} ok, {failed} failed, p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms"


async def attacker_stalled(port, held, stop):
    """Opens up to 19,000 stalled POSTs from 127.0.0.2 (this process's own
    descriptor limit is 20,000), as fast as allowed."""
    conns = []
    for _ in range(19_000):
        if stop.is_set():
            break
        try:
            s = socket.socket()
            s.setblocking(False)
            s.bind(("127.0.0.2", 0))
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
            s.send(b"POST /oauth/token HTTP/1.1\r\nHost: hub\r\n"
                   b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n")
            conns.append(s)
        except OSError:
            s.close()
        if len(conns) % 200 == 0:
            await asyncio.sleep(0)
            conns = [c for c in conns if alive(c)]
            held.append(len(conns))
    while not stop.is_set():
        await asyncio.sleep(0.5)
        conns = [c for c in conns if alive(c)]
        held.append(len(conns))
    for c in conns:
        c.close()


async def attacker_descriptors(port, held, stop):
    """12,000 idle connections from 250 addresses."""
    conns = []
    for i in range(12_000):
        if stop.is_set():
            break
        try:
            s = socket.socket()
            s.setblocking(False)
            s.bind((f"127.0.2.{i % 250 + 1}", 0))
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port)), 1)
            conns.append(s)
        except (OSError, asyncio.TimeoutError):
            s.close()
        if i % 500 == 0:
            await asyncio.sleep(0)
    while not stop.is_set():
        await asyncio.sleep(0.5)
        conns = [c for c in conns if alive(c)]
        held.append(len(conns))
    for c in conns:
        c.close()


def alive(sock):
    """Still held by the hub: no answer (a 429/503/408 ends it) and no EOF."""
    try:
        answered = sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        answered = True
    sock.close()
    return False


async def run(args, name, attacker, fd_limit=None):
    port = free_port()
    data = tempfile.mkdtemp()
    cmd = [args.bin, "--no-demo", "--listen", f"127.0.0.1:{port}", "--data-dir", data]
    if fd_limit:
        cmd = ["sh", "-c", f'ulimit -n {fd_limit} && exec "$0" "$@"'] + cmd
    hub = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in hub.stdout:
        if line.strip().startswith("ready"):
            break
    key = open(os.path.join(data, "dev-api-key")).read().strip()
    s, _ = await http(port, "GET", "/healthz")
    assert s == 200
    r, w = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"sub": "bystander"}).encode()
    w.write(b"POST /dev/token HTTP/1.1\r\nHost: hub\r\nConnection: close\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    token = json.loads((await r.read()).split(b"\r\n\r\n", 1)[1])["access_token"]
    stop = asyncio.Event()
    out = {"healthz": [], "trigger": [], "socket": []}
    held = []
    peak = {"rss": 0.0, "fds": 0}

    async def watch():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], rss_mib(hub.pid))
            peak["fds"] = max(peak["fds"], fds(hub.pid))
            await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(attacker(port, held, stop)),
             asyncio.create_task(well_behaved(port, key, token, stop, out)),
             asyncio.create_task(watch())]
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.gather(*tasks)
    hub.terminate()
    hub.wait()
    shutil.rmtree(data, ignore_errors=True)
    print(f"## {name} ({args.seconds} s)")
    print(f"attacker held at most {max(held or [0])} connections")
    print(f"hub peak: RSS {peak['rss']:.0f} MiB, {peak['fds']} descriptors")
    for k in ("healthz", "trigger", "socket"):
        print(f"well-behaved {k}: {summary(out[k])}")
    print()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/slo-hub")
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--only", choices=["stalled-bodies", "descriptors"])
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.only in (None, "stalled-bodies"):
        asyncio.run(run(args, "stalled bodies from one address", attacker_stalled))
    if args.only in (None, "descriptors"):
        asyncio.run(run(args, "more connections than descriptors", attacker_descriptors, 10_000))


if __name__ == "__main__":
    main()
