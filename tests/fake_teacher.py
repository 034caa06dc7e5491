"""A local OpenAI-compatible chat-completions server for tests, with scripted faults.

It writes stories with pico's own template writer for the spec it parses out of the prompt, so answers
are valid unless a fault or a bad answer is scripted. The hostile faults (redirects, trickles, huge or
endless bodies, hangs, HTML, wrong JSON) are what `tests/test_teacher.py` drives the client with.
"""

from __future__ import annotations

import http.server
import json
import random
import threading
import time

from pico.prompt import parse_prompt
from pico.generate import REJECTED_INSTRUCTIONS
from pico.stories import PAIR_KIND_EASY, horror_story, wholesome_story

HUGE_BYTES = 50 * 1024 * 1024


class FakeTeacher:
    """faults: a list consumed one per request (then `default_fault` for every later one):
    None (answer), 'slow', '429', '500', 'malformed', 'drop', 'refuse', 'one_paragraph' (an invalid story), and
    the hostile ones:
    'redirect' (307 to `redirect_to`, e.g. another server), 'redirect_301' (301 to it), 'redirect_self' (307 to
    this server's /v1 under another path, which answers), 'trickle' (a valid Content-Length, then one byte every
    `trickle_s`), 'trickle_headers' (the header lines themselves one byte at a time), 'huge' (a 50 MB reply
    with its Content-Length), 'huge_chunked' (50 MB with no length: chunked), 'endless' (a body with no length
    that never ends), 'hang' (read the request, never answer), 'html' (a 200 HTML page), 'wrong_json' (JSON
    without choices), 'null_content', 'surrogate' (content is a lone \\ud800), 'deep' (JSON nested 40000 deep, under the cap).
    """

    def __init__(self, faults: list | None = None, slow_s: float = 2.0, required_key: str | None = None,
                 redirect_to: str = "", trickle_s: float = 0.2, default_fault: str | None = None):
        self.faults = list(faults or [])
        self.default_fault = default_fault
        self.slow_s = slow_s
        self.trickle_s = trickle_s
        self.required_key = required_key
        self.redirect_to = redirect_to
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.headers_seen: list[str] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):  # a client that followed a 301 would GET here
                with fake.lock:
                    fake.paths.append("GET " + self.path)
                    fake.headers_seen.append(self.headers.get("Authorization", ""))
                self._send(200, {"choices": [{"message": {"content": "a GET answer must never be cached"}}]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with fake.lock:
                    fake.requests.append(body)
                    fake.paths.append("POST " + self.path)
                    fake.headers_seen.append(self.headers.get("Authorization", ""))
                    fault = fake.faults.pop(0) if fake.faults else fake.default_fault
                if self.path.endswith("/moved/chat/completions"):
                    fault = None  # where 'redirect_self' points: answer
                if fake.required_key and self.headers.get("Authorization") != f"Bearer {fake.required_key}":
                    return self._send(401, {"error": {"message": "invalid api key"}})
                try:
                    return self._fault(fault, body)
                except (BrokenPipeError, ConnectionResetError):  # the client hung up: what a good client does
                    return

            def _fault(self, fault, body):
                if fault == "slow":
                    time.sleep(fake.slow_s)
                if fault == "429":
                    return self._send(429, {"error": "rate limited"}, {"Retry-After": "0"})
                if fault == "500":
                    return self._send(500, {"error": "boom"})
                if fault == "malformed":
                    return self._raw(200, b'{"choices": [ {"message": ')
                if fault == "drop":
                    self.connection.shutdown(2)
                    return
                if fault in ("redirect", "redirect_301"):
                    return self._raw(307 if fault == "redirect" else 301, b"",
                                     {"Location": fake.redirect_to + "/chat/completions"})
                if fault == "redirect_self":
                    return self._raw(307, b"", {"Location": "/moved/chat/completions"})
                if fault == "hang":
                    fake.closing.wait(600)
                    return
                if fault == "html":
                    return self._raw(200, b"<!doctype html><html><body>Sign in</body></html>", ctype="text/html")
                if fault == "wrong_json":
                    return self._send(200, {"object": "list", "data": []})
                if fault == "null_content":
                    return self._send(200, {"choices": [{"message": {"content": None}}]})
                if fault == "surrogate":
                    return self._raw(200, b'{"choices": [{"message": {"content": "\\ud800 story"}}]}')
                if fault == "deep":
                    return self._raw(200, b"[" * 40_000 + b"]" * 40_000)
                if fault in ("trickle", "trickle_headers", "huge", "huge_chunked", "endless"):
                    return self._stream(fault, body)
                return self._send(200, self._completion(fake.answer(body, fault)))

            def _stream(self, fault, body):
                data = json.dumps(self._completion(fake.answer(body, None))).encode()
                if fault == "trickle_headers":
                    head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                            + "X-Pad: " + "p" * 4000 + "\r\n\r\n").encode()
                    return self._trickle(head + data)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if fault == "trickle":
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return self._trickle(data)
                if fault == "huge":
                    self.send_header("Content-Length", str(HUGE_BYTES))
                else:
                    self.send_header("Transfer-Encoding" if fault == "huge_chunked" else "Connection",
                                     "chunked" if fault == "huge_chunked" else "close")
                self.end_headers()
                block, sent = b'{"pad": "' + b"x" * 65_000, 0
                while (fault == "endless" or sent < HUGE_BYTES) and not fake.closing.is_set():
                    if fault == "huge_chunked":
                        self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                    else:
                        self.wfile.write(block)
                    sent += len(block)
                if fault == "huge_chunked":
                    self.wfile.write(b"0\r\n\r\n")

            def _trickle(self, data: bytes):
                for i in range(len(data)):
                    if fake.closing.is_set():
                        return
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(fake.trickle_s)

            @staticmethod
            def _completion(content):
                return {"id": "x", "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}

            def _send(self, code, obj, headers=None):
                self._raw(code, json.dumps(obj).encode(), headers)

            def _raw(self, code, data, headers=None, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.block_on_close = False  # a handler stuck in 'hang' must not hold close()
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, body: dict, fault) -> str:
        content = body["messages"][-1]["content"]
        spec = parse_prompt(content)
        rng = random.Random(json.dumps(body, sort_keys=True))
        if fault == "refuse":
            return "I'm sorry, but I can't help with that."
        if fault == "one_paragraph":
            return horror_story(spec, rng, break_rule="wrong_paragraph_count")
        for kind, instruction in REJECTED_INSTRUCTIONS.items():
            if instruction in content:
                if kind == PAIR_KIND_EASY:
                    return wholesome_story(spec, rng)
                return horror_story(spec, rng, break_rule=kind)
        return horror_story(spec, rng)

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
