"""Webhook delivery: a total deadline, no silent redirects, URL checked without printing it."""
from __future__ import annotations

import http.server
import threading
import time

import pytest

from medqa_core.results.alerts import check_url, post


class _Server:
    def __init__(self, handler):
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.srv.daemon_threads = True
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_port}/hook"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.srv.shutdown()


def _handler(do_post):
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            do_post(self)

        do_GET = do_POST

        def log_message(self, *a):
            pass

    return H


def test_delivered_post_returns_its_status():
    def ok(h):
        h.send_response(200)
        h.end_headers()

    with _Server(_handler(ok)) as s:
        assert post(s.url, {"text": "x"}) == 200


def test_a_server_that_drips_bytes_hits_the_total_deadline():
    def drip(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        for _ in range(40):  # one byte every 0.2 s: each read returns before a socket timeout
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.2)

    with _Server(_handler(drip)) as s:
        t0 = time.monotonic()
        with pytest.raises(OSError, match="no complete answer within 1 s"):
            post(s.url, {"text": "x"}, timeout=1.0)
        assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("code", [301, 302, 303, 307])
def test_a_redirect_is_not_reported_as_delivered(code):
    def redirect(h):
        h.send_response(code)
        h.send_header("Location", "/elsewhere")
        h.send_header("Content-Length", "0")
        h.end_headers()

    with _Server(_handler(redirect)) as s:
        with pytest.raises(OSError, match=f"HTTP {code}"):
            post(s.url, {"text": "x"})


@pytest.mark.parametrize("url", ["hooks.example.com/T000/SECRET", "ftp://example.com/SECRET", "http:///SECRET", ""])
def test_bad_url_is_rejected_without_showing_it(url):
    with pytest.raises(ValueError) as info:
        check_url(url)
    assert "SECRET" not in str(info.value)
