"""A fault proxy in front of an S3 server on 127.0.0.1, for what a flaky store does to a job: a seeded share of
requests is answered 503 SlowDown without reaching the store, another share is answered 500 InternalError
after the store did them (the worst case for a retry: the write happened). Bounded: it serves only the
loopback clients of one test session and stops with it."""
from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERROR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
         '<RequestId>fault-proxy</RequestId></Error>')
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class FaultProxy:
    def __init__(self, upstream: str, slow_down: float, internal: float, seed: int = 0):
        self.upstream = urlsplit(upstream)
        self.slow_down, self.internal = slow_down, internal
        self.rng, self.lock = random.Random(seed), threading.Lock()
        self.counts: Counter = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, slow_down: float, internal: float) -> None:
        with self.lock:
            self.slow_down, self.internal = slow_down, internal

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        with self.lock:
            x = self.rng.random()
            fault = "slow_down" if x < self.slow_down else "internal" if x < self.slow_down + self.internal else None
            self.counts[fault or "ok"] += 1
        if fault == "slow_down":
            return self._reply(h, 503, ERROR.format(code="SlowDown", message="Please reduce your request rate.").encode(), {})
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(h.command, h.path, body=body,
                         headers={k: v for k, v in h.headers.items() if k.lower() not in HOP})
            resp = conn.getresponse()
            data = resp.read()
            headers = {k: v for k, v in resp.getheaders() if k.lower() not in HOP | {"content-length"}}
            status, length = resp.status, resp.getheader("Content-Length") or len(data)
        finally:
            conn.close()
        if fault == "internal":  # the store did it; the client hears it failed
            return self._reply(h, 500, ERROR.format(code="InternalError", message="We encountered an internal error.").encode(), {})
        self._reply(h, status, data, headers, length=length)

    @staticmethod
    def _reply(h, status: int, data: bytes, headers: dict, length=None) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if status >= 400:
            h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", str(len(data) if length is None else length))
        h.end_headers()
        if data and h.command != "HEAD":  # a HEAD answer has no body, whatever its length says
            h.wfile.write(data)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
