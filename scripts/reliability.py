#!/usr/bin/env python3
"""Reliability scenarios of issue 11, seen through `examples/proxy`.

Each scenario starts its own origin (a Python server on 127.0.0.1, free
port) and its own proxy process, measures, and stops both. The result is
one table: scenario | bound | measured | PASS/FAIL/SKIP. The exit status is
1 when a scenario that ran failed, 2 on a usage or set-up error, else 0.

Python 3 standard library only. Normally started by scripts/reliability.sh,
which builds the proxy first; run directly with an already built binary:

    python3 scripts/reliability.py --proxy target/release/examples/proxy [--only 3,5]

A scenario that needs a flag the proxy does not list in `--help` is
skipped ("SKIP: proxy lacks --flag"), unless --ignore-missing-flags asks to
run it without the flag (to get a "before" figure).
"""

import argparse
import collections
import http.client
import os
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The origins must accept what the proxy forwards, including scenario 1's
# 300 KB request header: http.server reads header lines through
# http.client.parse_headers, which refuses lines over _MAXLINE (64 KiB).
http.client._MAXLINE = 1 << 20  # pylint: disable=protected-access

MIB = 1024 * 1024
L1_BYTES = 16 * MIB

# ---------------------------------------------------------------------------
# Processes we started, so that every exit path stops them (by PID).

_LIVE_PROCS = []
_LIVE_ORIGINS = []
_LIVE_LOCK = threading.Lock()


def _cleanup():
    with _LIVE_LOCK:
        procs = list(_LIVE_PROCS)
        origins = list(_LIVE_ORIGINS)
    for proc in procs:
        _stop_process(proc)
    for origin in origins:
        try:
            origin.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _stop_process(proc, grace=3.0):
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        except ProcessLookupError:
            pass
    with _LIVE_LOCK:
        if proc in _LIVE_PROCS:
            _LIVE_PROCS.remove(proc)


def _on_signal(signum, _frame):
    sys.stderr.write(f"\nreliability: signal {signum}, stopping what was started\n")
    _cleanup()
    os._exit(128 + signum)  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# Helpers


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg):
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def mib(kib):
    return kib / 1024.0


class Skip(Exception):
    """The scenario cannot run against this proxy (a flag it lacks)."""


class SetupError(Exception):
    """The proxy or an origin did not start."""


# ---------------------------------------------------------------------------
# Origins


class Reply:
    """What an origin route answers."""

    def __init__(self, status=200, headers=None, body=b""):
        self.status = status
        self.headers = list(headers or [])
        self.body = body if isinstance(body, bytes) else body.encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the proxy's pool expects

    def log_message(self, *_args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.origin.handle(self)

    do_HEAD = do_GET
    do_POST = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):  # quiet: resets are normal
        pass


class Origin:
    """A threaded HTTP/1.1 origin on 127.0.0.1. `route(handler, origin)`
    returns a Reply; calls are counted per path (and the most in flight at
    once per path)."""

    def __init__(self, route):
        self.route = route
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.calls = collections.Counter()
        self.in_flight = collections.Counter()
        self.max_in_flight = collections.Counter()
        self.seen = collections.defaultdict(list)  # path -> [headers dict]
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.origin = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()
        with _LIVE_LOCK:
            _LIVE_ORIGINS.append(self)

    def handle(self, h):
        path = h.path
        with self.lock:
            self.calls[path] += 1
            self.in_flight[path] += 1
            self.max_in_flight[path] = max(self.max_in_flight[path], self.in_flight[path])
            if len(self.seen[path]) < 4:
                self.seen[path].append({k.lower(): v[:200] for k, v in h.headers.items()})
        try:
            reply = self.route(h, self)
        finally:
            with self.lock:
                self.in_flight[path] -= 1
        if reply is None:
            return
        try:
            h.send_response(reply.status)
            names = {k.lower() for k, _ in reply.headers}
            for k, v in reply.headers:
                h.send_header(k, v)
            if "content-length" not in names and reply.status not in (204, 304):
                h.send_header("Content-Length", str(len(reply.body)))
            h.end_headers()
            if h.command != "HEAD" and reply.body:
                h.wfile.write(reply.body)
            h.wfile.flush()
        except OSError:
            h.close_connection = True

    def count(self, path):
        with self.lock:
            return self.calls[path]

    def total(self):
        with self.lock:
            return sum(self.calls.values())

    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        with _LIVE_LOCK:
            if self in _LIVE_ORIGINS:
                _LIVE_ORIGINS.remove(self)


class SilentOrigin:
    """Accepts connections, reads whatever comes, never answers."""

    def __init__(self):
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.bytes_read = 0
        self.conns = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        with _LIVE_LOCK:
            _LIVE_ORIGINS.append(self)

    def _run(self):
        while not self.stop.is_set():
            readable, _, _ = select.select([self.sock] + self.conns, [], [], 0.2)
            for s in readable:
                if s is self.sock:
                    conn, _ = self.sock.accept()
                    self.accepted += 1
                    self.conns.append(conn)
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    self.bytes_read += len(data)
                else:
                    self.conns.remove(s)
                    s.close()

    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        for c in self.conns:
            c.close()
        self.sock.close()
        with _LIVE_LOCK:
            if self in _LIVE_ORIGINS:
                _LIVE_ORIGINS.remove(self)


# ---------------------------------------------------------------------------
# The proxy


class ProxyBinary:
    """The binary, the flags its `--help` lists, and the extra arguments."""

    def __init__(self, path, extra_args, logdir, ignore_missing):
        self.path = path
        self.extra_args = extra_args
        self.logdir = logdir
        self.ignore_missing = ignore_missing
        try:
            out = subprocess.run([path, "--help"], capture_output=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SetupError(f"cannot run {path} --help: {e}") from e
        text = (out.stdout + out.stderr).decode(errors="replace")
        self.flags = set(re.findall(r"--[a-z0-9][a-z0-9-]*", text))
        for needed in ("--listen", "--upstream"):
            if needed not in self.flags:
                raise SetupError(f"{path} --help does not list {needed}: is it the proxy example?")

    def has(self, flag):
        return flag in self.flags

    def require(self, flag):
        """True when the flag can be passed; raises Skip when it cannot
        (or returns False with --ignore-missing-flags: run without it)."""
        if self.has(flag):
            return True
        if self.ignore_missing:
            return False
        raise Skip(f"proxy lacks {flag}")

    def start(self, name, upstream, args=()):
        return Proxy(self, name, upstream, list(args))


class Proxy:
    def __init__(self, binary, name, upstream, args):
        self.port = free_port()
        self.logpath = os.path.join(binary.logdir, f"{name}.log")
        argv = [binary.path, "--listen", f"127.0.0.1:{self.port}", "--upstream", upstream]
        argv += args + binary.extra_args
        self.argv = argv
        self.logfile = open(self.logpath, "wb")  # noqa: SIM115 - closed in stop()
        self.logfile.write(("$ " + shlex.join(argv) + "\n").encode())
        self.logfile.flush()
        self.proc = subprocess.Popen(  # noqa: S603 - our own binary
            argv, stdin=subprocess.DEVNULL, stdout=self.logfile, stderr=subprocess.STDOUT
        )
        with _LIVE_LOCK:
            _LIVE_PROCS.append(self.proc)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                self.logfile.flush()
                raise SetupError(
                    f"proxy exited with {self.proc.returncode} at start: {self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise SetupError(f"proxy did not listen on {self.port} within 20 s") from None
                time.sleep(0.05)

    def log_tail(self, n=400):
        try:
            with open(self.logpath, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        return data[-n:].decode(errors="replace").strip().replace("\n", " | ")

    def status(self):
        """VmRSS and VmHWM in KiB, from /proc/PID/status."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0])
        return out.get("VmRSS", 0), out.get("VmHWM", 0)

    def rss_kib(self):
        return self.status()[0]

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        _stop_process(self.proc)
        self.logfile.close()


# ---------------------------------------------------------------------------
# The client


class Resp:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = elapsed

    def header(self, name, default=""):
        return self.headers.get(name.lower(), default)


class Client:
    """One HTTP/1.1 connection (keep-alive) to the proxy; reconnects after
    an error."""

    def __init__(self, port, timeout=10.0):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def get(self, path, headers=(), host=None, timeout=None):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout or self.timeout)
        elif timeout is not None:
            self.conn.timeout = timeout
        start = time.monotonic()
        try:
            self.conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            self.conn.putheader("Host", host or f"127.0.0.1:{self.port}")
            for k, v in headers:
                self.conn.putheader(k, v)
            self.conn.endheaders()
            resp = self.conn.getresponse()
            body = resp.read()
            hdrs = {}
            for k, v in resp.getheaders():
                k = k.lower()
                hdrs[k] = f"{hdrs[k]}, {v}" if k in hdrs else v
            if resp.will_close:
                self.close()
            return Resp(resp.status, hdrs, body, time.monotonic() - start)
        except BaseException:
            self.close()
            raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def get(port, path, headers=(), host=None, timeout=10.0):
    """One request on a fresh connection."""
    c = Client(port, timeout)
    try:
        return c.get(path, list(headers) + [("Connection", "close")], host=host)
    finally:
        c.close()


def try_get(port, path, headers=(), host=None, timeout=10.0):
    """Like get(), but an error is returned as its text."""
    try:
        return get(port, path, headers, host, timeout)
    except (OSError, http.client.HTTPException) as e:
        return f"{type(e).__name__}: {e}"


def settle(proxy, seconds=1.0):
    """Lets the proxy finish what the last responses started (stores,
    connection tear-down) before memory is read."""
    time.sleep(seconds)
    if not proxy.alive():
        raise SetupError(f"proxy died: {proxy.log_tail()}")


# ---------------------------------------------------------------------------
# Scenarios. Each returns (measured, passed); raises Skip to skip.


def scenario_vary_junk_header(px, opts):
    """400 Vary entries of ~1 KB, each on a fresh connection carrying a
    300 KB junk request header: the stored Vary values must not pin the
    connection's read buffer."""
    px.require("--l1-bytes")
    n = opts.scale(400)
    body = b"x" * 1000

    def route(h, _o):
        return Reply(200, [("Cache-Control", "max-age=600"), ("Vary", "Accept-Encoding"),
                           ("Content-Type", "text/plain")], body)

    origin = Origin(route)
    proxy = px.start("s1-vary-junk", origin.url(), ["--l1-bytes", str(L1_BYTES)])
    try:
        get(proxy.port, "/warmup", [("Accept-Encoding", "gzip")])
        settle(proxy, 0.5)
        before = proxy.rss_kib()
        junk = "j" * (300 * 1024)
        ok = errors = 0
        deadline = time.monotonic() + 90
        for i in range(n):
            if time.monotonic() > deadline:
                break
            r = try_get(proxy.port, f"/v/{i}", [("Accept-Encoding", "gzip, br"), ("X-Junk", junk)], timeout=15)
            if isinstance(r, Resp) and r.status == 200:
                ok += 1
            else:
                errors += 1
        settle(proxy)
        after, hwm = proxy.status()
        growth = mib(after - before)
        bound = 2 * L1_BYTES / MIB
        measured = (f"RSS +{growth:.1f} MiB ({mib(before):.1f} -> {mib(after):.1f}, peak {mib(hwm):.1f}); "
                    f"{ok}/{n} answered 200, {origin.total() - 1} origin calls")
        return measured, growth <= bound and ok == n
    finally:
        proxy.stop()
        origin.close()


def scenario_big_small(px, opts):
    """One keep-alive client alternating a 2 MB response and three small
    cacheable ones, x300 distinct URLs: small entries must not pin the
    upstream connection's (grown) read buffer."""
    px.require("--l1-bytes")
    n = opts.scale(300)
    big = b"B" * (2 * 1000 * 1000)
    small = b"s" * 600

    def route(h, _o):
        if h.path.startswith("/big/"):
            return Reply(200, [("Cache-Control", "max-age=600"), ("Content-Type", "application/octet-stream")], big)
        return Reply(200, [("Cache-Control", "max-age=600"), ("Content-Type", "text/plain")], small)

    origin = Origin(route)
    proxy = px.start("s2-big-small", origin.url(), ["--l1-bytes", str(L1_BYTES)])
    client = Client(proxy.port, timeout=15)
    try:
        client.get("/warmup")
        settle(proxy, 0.5)
        before = proxy.rss_kib()
        ok = errors = rounds = 0
        deadline = time.monotonic() + 90
        for i in range(n):
            if time.monotonic() > deadline:
                break
            rounds += 1
            for path in (f"/big/{i}", f"/small/{i}/a", f"/small/{i}/b", f"/small/{i}/c"):
                try:
                    r = client.get(path)
                    ok += r.status == 200
                except (OSError, http.client.HTTPException):
                    errors += 1
        client.close()
        settle(proxy)
        after, hwm = proxy.status()
        growth = mib(after - before)
        bound = 2 * L1_BYTES / MIB
        measured = (f"RSS +{growth:.1f} MiB ({mib(before):.1f} -> {mib(after):.1f}, peak {mib(hwm):.1f}); "
                    f"{rounds} rounds, {ok}/{4 * n} answered 200")
        return measured, growth <= bound and ok == 4 * n
    finally:
        client.close()
        proxy.stop()
        origin.close()


def scenario_herd(px, opts):
    """300 concurrent clients on one URL whose origin takes 20 s: one
    origin call, every client answered 200."""
    n = opts.scale(300)
    delay = 20.0

    def route(h, o):
        o.stop.wait(delay)
        return Reply(200, [("Cache-Control", "max-age=600"), ("Content-Type", "text/plain")], b"slow but sure\n")

    args = []
    note = ""
    if px.has("--upstream-timeout"):
        args = ["--upstream-timeout", "30s"]
    else:
        note = " (proxy lacks --upstream-timeout: its default applies)"
    origin = Origin(route)
    proxy = px.start("s3-herd", origin.url(), args)
    results = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)
    old_stack = threading.stack_size(512 * 1024)

    def one():
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        r = try_get(proxy.port, "/herd", timeout=60)
        with lock:
            results.append(r)

    try:
        threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
        start = time.monotonic()
        for t in threads:
            t.start()
        threading.stack_size(old_stack)
        for t in threads:
            t.join(timeout=max(0.1, start + 75 - time.monotonic()))
        elapsed = time.monotonic() - start
        statuses = collections.Counter(r.status if isinstance(r, Resp) else r.split(":")[0] for r in results)
        ok = statuses.get(200, 0)
        slowest = max((r.elapsed for r in results if isinstance(r, Resp)), default=0.0)
        calls = origin.count("/herd")
        shown = ", ".join(f"{k}x{v}" for k, v in sorted(statuses.items(), key=str))
        measured = (f"{calls} origin call(s); {ok}/{n} answered 200 [{shown}]; "
                    f"slowest {slowest:.1f} s, all done in {elapsed:.1f} s{note}")
        return measured, calls == 1 and ok == n
    finally:
        threading.stack_size(old_stack)
        proxy.stop()
        origin.close()


def scenario_hung_origin(px, opts):
    """An origin that accepts, reads and never answers, with
    --upstream-timeout 2s: a 504 within about 2 s."""
    timeout = 2.0
    args = ["--upstream-timeout", "2s"] if px.require("--upstream-timeout") else []
    origin = SilentOrigin()
    proxy = px.start("s4-hung-origin", origin.url(), args)
    try:
        cap = 15.0 if args else 40.0
        r = try_get(proxy.port, "/hung", timeout=cap)
        if isinstance(r, Resp):
            status = r.header("cache-status") or "-"
            measured = f"{r.status} after {r.elapsed:.2f} s (Cache-Status: {status})"
            ok = r.status == 504 and r.elapsed <= timeout + 1.5
        else:
            measured = f"no answer within {cap:.0f} s ({r})"
            ok = False
        if not args:
            measured += " [run without --upstream-timeout]"
        measured += f"; origin accepted {origin.accepted} connection(s)"
        return measured, ok
    finally:
        proxy.stop()
        origin.close()


def scenario_no_cache_flood(px, opts):
    """32 clients sending no-cache / Pragma: no-cache for 5 s at one cached
    URL whose origin takes 50 ms (ETag): at most one revalidation in flight,
    so about 5 s / 50 ms origin calls, not one per request."""
    clients = 32
    duration = opts.duration(5.0)
    delay = 0.050
    etag = '"hot-v1"'

    def route(h, o):
        o.stop.wait(delay)
        hdrs = [("Cache-Control", "max-age=600"), ("ETag", etag), ("Content-Type", "text/plain")]
        if h.headers.get("If-None-Match") == etag:
            return Reply(304, hdrs)
        return Reply(200, hdrs, b"hot\n" * 256)

    origin = Origin(route)
    proxy = px.start("s5-no-cache-flood", origin.url())
    counts = collections.Counter()
    lock = threading.Lock()
    try:
        first = get(proxy.port, "/hot")
        if first.status != 200:
            return f"priming request answered {first.status}", False
        primed = origin.count("/hot")
        stop_at = [0.0]
        go = threading.Event()

        def worker(idx):
            client = Client(proxy.port, timeout=10)
            mine = collections.Counter()
            go.wait(10)
            sent = 0
            while time.monotonic() < stop_at[0] and sent < 20000:
                hdr = ("Cache-Control", "no-cache") if (idx + sent) % 2 == 0 else ("Pragma", "no-cache")
                sent += 1
                try:
                    r = client.get("/hot", [hdr])
                    mine[r.status] += 1
                except (OSError, http.client.HTTPException) as e:
                    mine[type(e).__name__] += 1
            client.close()
            with lock:
                counts.update(mine)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        start = time.monotonic()
        stop_at[0] = start + duration
        go.set()
        for t in threads:
            t.join(timeout=max(0.1, stop_at[0] + 15 - time.monotonic()))
        elapsed = time.monotonic() - start
        calls = origin.count("/hot") - primed
        requests = sum(counts.values())
        bound = int(elapsed / delay) + 2
        shown = ", ".join(f"{k}x{v}" for k, v in sorted(counts.items(), key=str))
        measured = (f"{calls} origin calls for {requests} requests in {elapsed:.1f} s "
                    f"(max {origin.max_in_flight['/hot']} in flight) [{shown}]; bound {bound}")
        return measured, calls <= bound and counts.get(200, 0) == requests
    finally:
        proxy.stop()
        origin.close()


def _breaker_route(h, _o):
    etag = '"page-v1"'
    if h.path.startswith("/app/err/"):
        return Reply(500, [("Content-Type", "text/plain")], b"this URL is broken\n")
    if h.path.startswith("/down/"):
        return Reply(502, [("Content-Type", "text/plain")], b"bad gateway\n")
    hdrs = [("Cache-Control", "max-age=600, stale-if-error=600"), ("ETag", etag), ("Content-Type", "text/plain")]
    if h.headers.get("If-None-Match") == etag:
        return Reply(304, hdrs)
    return Reply(200, hdrs, b"healthy page\n")


def _breaker_case(px, name, bad_prefix):
    origin = Origin(_breaker_route)
    proxy = px.start(name, origin.url())
    try:
        first = get(proxy.port, "/app/page")
        if first.status != 200:
            return f"priming answered {first.status}", False
        bad = collections.Counter()
        for i in range(8):
            r = try_get(proxy.port, f"{bad_prefix}{i}")
            bad[r.status if isinstance(r, Resp) else "error"] += 1
        before = origin.count("/app/page")
        r = try_get(proxy.port, "/app/page", [("Cache-Control", "no-cache")])
        asked = origin.count("/app/page") - before
        if isinstance(r, Resp):
            answer = f"{r.status}, Cache-Status: {r.header('cache-status') or '-'}"
        else:
            answer = r
        shown = "+".join(f"{v}x{k}" for k, v in bad.items())
        return f"after {shown} on {bad_prefix}*: origin asked {asked}x ({answer})", asked >= 1
    finally:
        proxy.stop()
        origin.close()


def scenario_breaker_scope(px, opts):
    """8 responses with status 500 on other paths (same first segment as
    the healthy page), then a no-cache request on the healthy path: its
    origin must be asked. Also: 8 x 502 on another upstream label (/down),
    then the same check."""
    m1, ok1 = _breaker_case(px, "s6a-500-same-label", "/app/err/")
    m2, ok2 = _breaker_case(px, "s6b-502-other-label", "/down/")
    return f"{m1}; {m2}", ok1 and ok2


EVIL = "evil.example"
# The host a normal client asks for (the proxy's defaults ignore it; in a
# keyed mode it is allowed). Not the proxy's port: the L2 check reads with a
# second proxy on another port.
VICTIM_HOST = "www.example"


def _poison_route(h, _o):
    host = h.headers.get("X-Forwarded-Host") or h.headers.get("Host") or "unknown"
    path = h.path
    if path.startswith("/account"):
        cookie = h.headers.get("Cookie") or ""
        who = cookie.split("=", 1)[1] if "=" in cookie else "anonymous"
        return Reply(200, [("Cache-Control", "max-age=600"), ("Content-Type", "text/html")],
                     f"<p>Hello {who}, your balance is 1234.</p>\n")
    if path.startswith("/r/"):
        return Reply(301, [("Cache-Control", "max-age=600"), ("Location", f"http://{host}/landing")], b"")
    return Reply(200, [("Cache-Control", "max-age=600"), ("Content-Type", "text/html")],
                 f'<html><script src="http://{host}/app.js"></script></html>\n')


_ATTACKS = [
    # (label, path, attacker's Host, attacker's extra headers)
    ("Host page", "/p/host", EVIL, []),
    ("Host 301", "/r/host", EVIL, []),
    ("XFH page", "/p/xfh", None, [("X-Forwarded-Host", EVIL)]),
    ("XFH 301", "/r/xfh", None, [("X-Forwarded-Host", EVIL)]),
]


def _attack(port):
    for _label, path, host, hdrs in _ATTACKS:
        try_get(port, path, hdrs, host=host or VICTIM_HOST)
    try_get(port, "/account", [("Cookie", "session=alice")], host=VICTIM_HOST)


def _victim(port):
    """The labels of what a normal, anonymous client got poisoned."""
    poisoned = []
    for label, path, _host, _hdrs in _ATTACKS:
        r = try_get(port, path, host=VICTIM_HOST)
        if not isinstance(r, Resp):
            poisoned.append(f"{label}: {r}")
            continue
        if EVIL in r.body.decode(errors="replace") or EVIL in r.header("location"):
            poisoned.append(label)
        elif r.status not in (200, 301):
            # Not poisoned, but not a check either: say so (and fail).
            poisoned.append(f"{label}: victim got {r.status}")
    r = try_get(port, "/account", host=VICTIM_HOST)
    if not isinstance(r, Resp) or b"alice" in r.body:
        poisoned.append("Cookie page")
    elif r.status != 200:
        poisoned.append(f"Cookie page: victim got {r.status}")
    return poisoned


def _start_redis(port=None):
    """A redis-server without persistence on `port` (a free one if None):
    (process, port), or (None, None) when there is none or it did not
    answer within 10 s."""
    exe = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not exe:
        return None, None
    port = port or free_port()
    proc = subprocess.Popen(  # noqa: S603
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    with _LIVE_LOCK:
        _LIVE_PROCS.append(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    _stop_process(proc)
    return None, None


def _poison_variants(px):
    """The proxy's modes to try: its defaults, plus each safe-by-design
    mode whose flags it lists (the attack must fail in every one)."""
    variants = [("default", [])]
    keyed = []
    if px.has("--allow-host"):
        # evil.example is allowed here so that the attack reaches the cache:
        # what is checked is that the host is keyed, not that it is refused.
        keyed += ["--allow-host", f"{VICTIM_HOST},{EVIL}"]
    if px.has("--cookies"):
        keyed += ["--cookies", "partition"]
    if keyed:
        variants.append((" ".join(keyed), keyed))
    if px.has("--public-host"):
        variants.append((f"--public-host {VICTIM_HOST}", ["--public-host", VICTIM_HOST]))
    return variants


def _shown(poisoned, total):
    return f"{len(poisoned)}/{total}" + (f" ({', '.join(poisoned)})" if poisoned else "")


def scenario_poison(px, opts):
    """A request with Host: evil.example (and one with X-Forwarded-Host)
    to pages whose origin builds absolute URLs from X-Forwarded-Host (or
    Host), and a Cookie request to a personalised max-age page; then a
    normal anonymous client must see none of it. In the proxy's default
    mode and in each keyed mode it offers; with redis-server on PATH and
    --redis in the proxy, also through L2: attack via one proxy, read via a
    fresh one (empty L1) on the same Redis."""
    total = len(_ATTACKS) + 1
    parts = []
    ok = True
    redis = rport = None
    l2_note = ""
    if not px.has("--redis"):
        l2_note = "L2 not run (proxy lacks --redis)"
    else:
        redis, rport = _start_redis()
        if redis is None:
            l2_note = "L2 not run (no redis-server)"
    try:
        for i, (label, args) in enumerate(_poison_variants(px)):
            origin = Origin(_poison_route)
            try:
                proxy = px.start(f"s7-poison-{i}-l1", origin.url(), args)
                try:
                    _attack(proxy.port)
                    poisoned = _victim(proxy.port)
                finally:
                    proxy.stop()
                text = f"[{label}] L1 {_shown(poisoned, total)} poisoned"
                ok &= not poisoned
                if redis is not None:
                    l2 = args + ["--redis", f"redis://127.0.0.1:{rport}/", "--namespace", f"reliability{i}"]
                    try:
                        a = px.start(f"s7-poison-{i}-l2-attacker", origin.url(), l2)
                    except SetupError as e:
                        text += f", L2 not run (proxy refused --redis: {e})"
                    else:
                        try:
                            _attack(a.port)
                            time.sleep(1.0)  # L2 writes are in the background
                        finally:
                            a.stop()
                        b = px.start(f"s7-poison-{i}-l2-victim", origin.url(), l2)
                        try:
                            poisoned = _victim(b.port)
                        finally:
                            b.stop()
                        text += f", via Redis {_shown(poisoned, total)}"
                        ok &= not poisoned
                parts.append(text)
            finally:
                origin.close()
    finally:
        if redis is not None:
            _stop_process(redis)
    if l2_note:
        parts.append(l2_note)
    return "; ".join(parts), ok


def scenario_inm_star(px, opts):
    """If-None-Match: * on a cached GET must be answered 304: a stored
    response matches `*` whatever its validators (RFC 9110 §13.1.2), so
    both a response with an ETag and one without any validator."""
    etag = '"star-v1"'

    def route(h, _o):
        hdrs = [("Cache-Control", "max-age=600"), ("Content-Type", "text/plain")]
        if h.path == "/star/etag":
            hdrs.append(("ETag", etag))
            if h.headers.get("If-None-Match") in (etag, "*"):
                return Reply(304, hdrs)
        elif h.headers.get("If-None-Match") == "*":
            return Reply(304, hdrs)
        return Reply(200, hdrs, b"stored\n")

    origin = Origin(route)
    proxy = px.start("s8-inm-star", origin.url())
    try:
        parts = []
        ok = True
        for path in ("/star/etag", "/star/plain"):
            get(proxy.port, path)
            hit = get(proxy.port, path)
            star = get(proxy.port, path, [("If-None-Match", "*")])
            ok &= star.status == 304
            parts.append(f"{'with ETag' if path.endswith('etag') else 'no validator'}: {star.status} "
                         f"(2nd GET: {hit.header('cache-status') or '-'}; {origin.count(path)} origin call(s))")
        return "If-None-Match: * -> " + "; ".join(parts), ok
    finally:
        proxy.stop()
        origin.close()


def scenario_redis_blip(px, opts):
    """300 hot URLs (max-age=600) in the proxy's L1 and in Redis; 16
    clients keep requesting them while Redis is SIGKILLed, left dead for
    15 s, and restarted empty (no persistence): L1 must keep serving (no
    flush when the invalidation log's connection drops, none when it comes
    back), so the origin sees only a handful of extra fetches, and no
    request fails."""
    px.require("--redis")
    urls = 300
    clients = 16
    before_kill, dead_for, after = opts.duration(5.0), 15.0, opts.duration(10.0)

    def route(h, _o):
        return Reply(200, [("Cache-Control", "max-age=600"), ("Content-Type", "text/plain")],
                     f"page {h.path}\n".encode() * 16)

    redis, rport = _start_redis()
    if redis is None:
        raise Skip("no redis-server")
    origin = Origin(route)
    proxy = None
    counts = collections.Counter()
    lock = threading.Lock()
    try:
        proxy = px.start("s9-redis-blip", origin.url(),
                         ["--redis", f"redis://127.0.0.1:{rport}/", "--namespace", "reliability9"])
        paths = [f"/hot/{i}" for i in range(urls)]
        for p in paths:
            r = get(proxy.port, p)
            if r.status != 200:
                return f"warm-up {p} answered {r.status}", False
        settle(proxy, 1.0)  # the L2 writes land
        warm = origin.total()
        stop = threading.Event()

        def worker(idx):
            client = Client(proxy.port, timeout=10)
            mine = collections.Counter()
            i = idx * 37
            sent = 0
            while not stop.is_set() and sent < 200000:
                p = paths[i % urls]
                i += 7
                sent += 1
                try:
                    r = client.get(p)
                    mine[r.status] += 1
                except (OSError, http.client.HTTPException) as e:
                    mine[type(e).__name__] += 1
            client.close()
            with lock:
                counts.update(mine)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        time.sleep(before_kill)
        redis.kill()  # SIGKILL
        redis.wait(timeout=5)
        _stop_process(redis)
        killed_at = origin.total()
        time.sleep(dead_for)
        during = origin.total() - killed_at
        redis, _ = _start_redis(rport)
        if redis is None:
            return f"redis-server did not restart on port {rport}", False
        time.sleep(after)
        stop.set()
        for t in threads:
            t.join(timeout=15)
        extra = origin.total() - warm
        requests = sum(counts.values())
        failed = requests - counts.get(200, 0)
        shown = ", ".join(f"{k}x{v}" for k, v in sorted(counts.items(), key=str))
        measured = (f"{extra} extra origin fetches ({during} while Redis was dead), "
                    f"{failed} failed of {requests} requests [{shown}]")
        return measured, extra <= 30 and failed == 0 and requests > 0
    finally:
        if proxy is not None:
            proxy.stop()
        origin.close()
        if redis is not None:
            _stop_process(redis)


SCENARIOS = [
    (1, "L1 16 MiB; 400 Vary entries ~1 KB, fresh conn + 300 KB junk header each",
     "RSS growth <= 32 MiB (2x L1)", scenario_vary_junk_header),
    (2, "L1 16 MiB; keep-alive client: 2 MB + 3 small cacheable, x300",
     "RSS growth <= 32 MiB (2x L1)", scenario_big_small),
    (3, "300 concurrent clients, one URL, origin takes 20 s",
     "1 origin call, all 200", scenario_herd),
    (4, "origin never answers, --upstream-timeout 2s",
     "504 within ~2 s (<= 3.5 s)", scenario_hung_origin),
    (5, "32 clients no-cache/Pragma 5 s, one cached URL, origin 50 ms (ETag)",
     "origin calls <= elapsed/50ms + 2 (~102)", scenario_no_cache_flood),
    (6, "8 x 500 on other paths (then 8 x 502 on /down), then no-cache on healthy path",
     "healthy path's origin asked", scenario_breaker_scope),
    (7, "Host / X-Forwarded-Host: evil.example, Cookie + max-age page; then anonymous client"
        " (L1, and L2 via a fresh proxy; default and keyed modes)",
     "no evil.example, no alice (x/5 poisoned)", scenario_poison),
    (8, "If-None-Match: * on a cached GET",
     "304", scenario_inm_star),
    (9, "300 hot URLs under load (16 clients), Redis SIGKILLed for 15 s, restarted empty",
     "<= 30 extra origin fetches, 0 failed requests", scenario_redis_blip),
]


# ---------------------------------------------------------------------------


def parse_only(text):
    wanted = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            wanted.update(range(int(lo), int(hi) + 1))
        else:
            wanted.add(int(part))
    known = {n for n, *_ in SCENARIOS}
    bad = wanted - known
    if bad:
        raise argparse.ArgumentTypeError(f"no scenario {sorted(bad)} (there are 1..{max(known)})")
    return wanted


def print_table(rows):
    heads = ("#", "scenario", "bound", "measured", "result")
    cells = [[str(n), title, bound, measured, result] for n, title, bound, measured, result in rows]
    print()
    print("| " + " | ".join(heads) + " |")
    print("|" + "|".join("---" for _ in heads) + "|")
    for row in cells:
        print("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy", default=os.environ.get("PROXY_BIN"), help="the proxy binary (or PROXY_BIN)")
    ap.add_argument("--only", type=parse_only, help="scenario numbers to run, e.g. 3 or 1,5 or 2-4")
    ap.add_argument("--proxy-arg", action="append", default=[],
                    help="an extra argument for every proxy (repeat); PROXY_ARGS is split like a shell line")
    ap.add_argument("--logdir", default=os.environ.get("RELIABILITY_LOGDIR"),
                    help="where proxy logs go (default: a new temporary directory, kept)")
    ap.add_argument("--ignore-missing-flags", action="store_true",
                    help="run a scenario whose flag the proxy lacks without that flag, instead of skipping it")
    ap.add_argument("--quick", action="store_true", help="a smaller, faster run (fewer requests, 2 s flood)")
    opts = ap.parse_args()
    if not opts.proxy:
        ap.error("--proxy PATH (or PROXY_BIN) is required")
    if not os.access(opts.proxy, os.X_OK):
        ap.error(f"{opts.proxy} is not an executable file")
    opts.scale = (lambda n: max(1, n // 4)) if opts.quick else (lambda n: n)
    opts.duration = (lambda s: min(s, 2.0)) if opts.quick else (lambda s: s)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    logdir = opts.logdir or tempfile.mkdtemp(prefix="reliability-")
    os.makedirs(logdir, exist_ok=True)
    extra = shlex.split(os.environ.get("PROXY_ARGS", "")) + opts.proxy_arg
    try:
        px = ProxyBinary(os.path.abspath(opts.proxy), extra, logdir, opts.ignore_missing_flags)
    except SetupError as e:
        print(f"reliability: {e}", file=sys.stderr)
        return 2
    log(f"proxy {px.path}; logs in {logdir}")
    if extra:
        log(f"extra proxy arguments: {shlex.join(extra)}")

    rows = []
    failed = False
    started = time.monotonic()
    try:
        for n, title, bound, fn in SCENARIOS:
            if opts.only and n not in opts.only:
                continue
            log(f"scenario {n}: {title}")
            t0 = time.monotonic()
            try:
                measured, ok = fn(px, opts)
                result = "PASS" if ok else "FAIL"
            except Skip as e:
                measured, result = f"SKIP: {e}", "SKIP"
                print(f"SKIP: scenario {n}: {e}", flush=True)
            except SetupError as e:
                measured, result = f"set-up error: {e}", "FAIL"
            except Exception as e:  # noqa: BLE001 - report, go on with the next
                measured, result = f"error: {type(e).__name__}: {e}", "FAIL"
            failed |= result == "FAIL"
            log(f"scenario {n}: {result} in {time.monotonic() - t0:.1f} s: {measured}")
            rows.append((n, title, bound, measured, result))
    finally:
        _cleanup()
    print_table(rows)
    counts = collections.Counter(r[-1] for r in rows)
    print(f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP "
          f"in {time.monotonic() - started:.0f} s; proxy logs in {logdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
