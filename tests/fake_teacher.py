"""A local OpenAI-compatible chat-completions server for tests, with scripted faults.

It writes stories with pico's own template writer for the spec it parses out of the prompt, so answers
are valid unless a fault or a bad answer is scripted.
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


class FakeTeacher:
    """faults: a list consumed one per request: None (answer), 'slow', '429', '500', 'malformed', 'drop',
    'refuse', 'one_paragraph' (an invalid story)."""

    def __init__(self, faults: list | None = None, slow_s: float = 2.0, required_key: str | None = None):
        self.faults = list(faults or [])
        self.slow_s = slow_s
        self.required_key = required_key
        self.requests: list[dict] = []
        self.headers_seen: list[str] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with fake.lock:
                    fake.requests.append(body)
                    fake.headers_seen.append(self.headers.get("Authorization", ""))
                    fault = fake.faults.pop(0) if fake.faults else None
                if fake.required_key and self.headers.get("Authorization") != f"Bearer {fake.required_key}":
                    return self._send(401, {"error": {"message": "invalid api key"}})
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
                content = fake.answer(body, fault)
                return self._send(200, {"id": "x", "object": "chat.completion",
                                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

            def _send(self, code, obj, headers=None):
                self._raw(code, json.dumps(obj).encode(), headers)

            def _raw(self, code, data, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
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
        self.httpd.shutdown()
        self.httpd.server_close()
