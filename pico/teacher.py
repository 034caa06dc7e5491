"""A client for any OpenAI-compatible chat-completions endpoint, with an on-disk response cache.

Every response is stored under a key derived from the request body (model, messages, sampling settings,
attempt number), so a rerun costs nothing, an interrupted run resumes where it stopped, and the same
cache gives the same dataset. Timeouts, dropped connections, 429 (honouring Retry-After), 5xx and
malformed replies are retried with exponential backoff. The API key travels only in the Authorization
header: it is never written to the cache, to errors or to logs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from pico.config import TeacherConfig
from pico.errors import DataError, PicoError
from pico.io import write_json

log = logging.getLogger(__name__)
CACHE_VERSION = 1


class TeacherError(PicoError):
    """The teacher endpoint could not give an answer (after retries), or refused the request."""


def api_key_from_env(env: dict, cfg: TeacherConfig) -> str:
    key = env.get(cfg.api_key_env, "")
    if not key.strip():
        raise TeacherError(f"generate.provider is 'openai' but the environment variable {cfg.api_key_env} "
                           f"(generate.teacher.api_key_env) is not set; export it or use provider: template")
    return key.strip()


class _Retryable(Exception):
    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.wait = reason, wait


class TeacherClient:
    def __init__(self, cfg: TeacherConfig, cache_dir: str | Path, api_key: str, seed: int = 0):
        self.cfg, self.cache_dir, self._key, self.seed = cfg, Path(cache_dir), api_key, seed
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    def request_body(self, messages: list[dict], attempt: int) -> dict:
        return {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
            "seed": self.seed + attempt,  # a new attempt is a new request, and a new cache entry
        }

    def cache_path(self, body: dict) -> Path:
        key = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "url": self.cfg.base_url, **body},
                                        sort_keys=True).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def complete(self, messages: list[dict], attempt: int = 0) -> str:
        """The assistant's reply, from the cache when this exact request was made before."""
        body = self.request_body(messages, attempt)
        path = self.cache_path(body)
        if path.exists():
            self._count("cache_hits")
            return self._read_cache(path)
        content = self._post(body)
        write_json(path, {"version": CACHE_VERSION, "request": body, "content": content})
        return content

    @staticmethod
    def _read_cache(path: Path) -> str:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry.get("version") != CACHE_VERSION or not isinstance(entry.get("content"), str):
                raise ValueError("missing version or content")
            return entry["content"]
        except (ValueError, AttributeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: malformed teacher cache entry ({e}); delete the file to fetch it again") from None

    def _post(self, body: dict) -> str:
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        last = "no attempt made"
        for retry in range(self.cfg.max_retries + 1):
            self._count("requests")
            try:
                return self._post_once(url, body)
            except _Retryable as e:
                last = e.reason
                self._count(f"retried/{e.reason.split(':')[0]}")
                if retry == self.cfg.max_retries:
                    break
                wait = e.wait if e.wait is not None else self.cfg.backoff_s * 2**retry
                time.sleep(min(wait, 60.0))
        self._count("failed_requests")
        raise TeacherError(f"teacher at {url} gave no usable answer after {self.cfg.max_retries + 1} tries "
                           f"(last: {last}); rerun to continue, cached answers are kept")

    def _post_once(self, url: str, body: dict) -> str:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            if e.code == 429 or e.code >= 500:
                retry_after = e.headers.get("Retry-After") if e.headers else None
                wait = float(retry_after) if retry_after and retry_after.strip().replace(".", "", 1).isdigit() else None
                raise _Retryable(f"http_{e.code}: HTTP {e.code}", wait) from None
            if e.code in (401, 403):
                raise TeacherError(f"teacher at {url} refused the API key (HTTP {e.code}); check the variable "
                                   f"{self.cfg.api_key_env}") from None
            detail = e.read()[:300].decode("utf-8", "replace") if e.fp else ""
            raise TeacherError(f"teacher at {url} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                http.client.HTTPException, OSError) as e:
            raise _Retryable(f"connection: {type(e).__name__}") from None
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not a string")
            return content
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Retryable(f"malformed: {type(e).__name__}") from None
