"""A client for any OpenAI-compatible chat-completions endpoint that trusts nothing it receives, with an on-disk
response cache.

Every response is stored under a key derived from the request body (model, messages, sampling settings,
attempt number), so a rerun costs nothing, an interrupted run resumes where it stopped, and the same
cache gives the same dataset. Timeouts, dropped connections, 429 (honouring Retry-After), 5xx and
malformed or oversized replies are retried with exponential backoff.

What the endpoint cannot do to a run:
- hold it: `timeout_s` bounds a whole request, connect to last byte. A watchdog shuts the socket down at the
  deadline, so a server that trickles its headers or body one byte a second ends the request on time (a
  per-read socket timeout, which urllib and httpx give, does not: every byte resets it).
- fill memory: a reply is read up to `reply_cap_bytes(max_tokens)` and refused past it (a larger
  Content-Length is refused before reading), in 64 KiB reads.
- take the key elsewhere: redirects are never followed to another origin (scheme, host, port), and a
  same-origin redirect is followed only when it keeps the POST (307/308). The key travels only in the
  Authorization header to `base_url`'s origin; it is checked once (printable ASCII, no whitespace) and never
  written to the cache, to errors or to logs.
- block Ctrl-C: `cancel()` shuts every open socket and wakes every backoff wait.

The standard library's http.client does the HTTP; the deadline, the cap and the redirect rule are the parts
no client library gives as one rule, so they live here rather than behind a new dependency. DNS lookup is
the one step not bounded by `timeout_s` (getaddrinfo cannot be interrupted); `generate` runs requests on
daemon threads, so even a stuck lookup does not stop Ctrl-C from ending the run.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import re
import select
import socket
import ssl
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pico.config import TeacherConfig
from pico.errors import DataError, PicoError
from pico.io import write_json

log = logging.getLogger(__name__)
CACHE_VERSION = 1
READ_BYTES = 64 * 1024  # one read of the reply body; memory beyond the cap is at most this
REPLY_OVERHEAD_BYTES = 64 * 1024  # the JSON envelope around the content (ids, usage, ...)
REPLY_BYTES_PER_TOKEN = 64  # a token is at most ~16 UTF-8 bytes, and JSON escaping (\uXXXX) can triple that
MAX_REDIRECTS = 3
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: what an HTTP header carries as-is


class TeacherError(PicoError):
    """The teacher endpoint could not give an answer (after retries), or refused the request."""


class TeacherCancelled(TeacherError):
    """The run was interrupted (Ctrl-C) while this request was in flight."""


def reply_cap_bytes(max_tokens: int) -> int:
    """The most bytes a chat-completions reply of at most `max_tokens` tokens can honestly take."""
    return REPLY_OVERHEAD_BYTES + REPLY_BYTES_PER_TOKEN * max_tokens


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an API key (without quoting it), or None. Outer whitespace is the caller's to strip."""
    if not key:
        return "is empty"
    if _KEY_CHARS.fullmatch(key):
        return None
    i, ch = next((i, c) for i, c in enumerate(key) if not _KEY_CHARS.fullmatch(c))
    kind = ("a line break" if ch in "\r\n" else "whitespace" if ch.isspace() else
            "a control character" if ord(ch) < 32 or ord(ch) == 127 else "a non-ASCII character")
    return f"holds {kind} at character {i + 1} of {len(key)}"


def api_key_from_env(env: dict, cfg: TeacherConfig) -> str:
    """The key from the variable `cfg.api_key_env`, checked once; errors name the variable, never the value."""
    key = env.get(cfg.api_key_env, "").strip()  # a trailing newline from `$(cat keyfile)` is harmless
    if not key:
        raise TeacherError(f"generate.provider is 'openai' but the environment variable {cfg.api_key_env} "
                           f"(generate.teacher.api_key_env) is not set; export it or use provider: template")
    problem = key_problem(key)
    if problem:
        raise TeacherError(f"the API key in {cfg.api_key_env} (generate.teacher.api_key_env) {problem}; an API key "
                           f"is one line of printable ASCII without spaces: export it again")
    return key


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL: what must match before the key may be sent."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def origin_text(url: str) -> str:
    """scheme://host:port of a URL, never its user info, path or query: safe to print."""
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"


def _one_line(data: bytes, limit: int = 160) -> str:
    text = data[:limit].decode("utf-8", "replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


class _Retryable(Exception):
    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.wait = reason, wait


class _Deadline:
    """A request's deadline: `kill` shuts its socket down when the time is up (or on cancel), waking any read."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        return self.end - time.monotonic()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            dead = self.expired
        if dead:
            self.kill()

    def expire(self) -> None:
        with self._lock:
            self.expired = True
        self.kill()

    def kill(self) -> None:
        with self._lock:
            sock = self._sock
        if sock is not None:
            try:  # the plain socket's shutdown: it wakes a blocked recv at once, TLS or not
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._timer.cancel()


class TeacherClient:
    def __init__(self, cfg: TeacherConfig, cache_dir: str | Path, api_key: str, seed: int = 0):
        problem = key_problem(api_key)
        if problem:
            raise TeacherError(f"the API key in {cfg.api_key_env} {problem}; an API key is one line of printable "
                               f"ASCII without spaces")
        if urlsplit(cfg.base_url).username is not None or "@" in urlsplit(cfg.base_url).netloc:
            raise TeacherError("generate.teacher.base_url holds user info; put the key in the variable named by "
                               "generate.teacher.api_key_env")
        self.cfg, self.cache_dir, self._key, self.seed = cfg, Path(cache_dir), api_key, seed
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.cap = reply_cap_bytes(cfg.max_tokens)
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._live: set[_Deadline] = set()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    def cancel(self) -> None:
        """End every request in flight now and refuse new ones (Ctrl-C): sockets are shut, waits woken."""
        self._cancelled.set()
        with self._lock:
            live = list(self._live)
        for deadline in live:
            deadline.kill()

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
        except (ValueError, AttributeError, UnicodeDecodeError, RecursionError) as e:
            raise DataError(f"{path}: malformed teacher cache entry ({e}); delete the file to fetch it again") from None

    def _post(self, body: dict) -> str:
        last = "no attempt made"
        data = json.dumps(body).encode()
        for retry in range(self.cfg.max_retries + 1):
            if self._cancelled.is_set():
                raise TeacherCancelled("teacher request cancelled")
            self._count("requests")
            try:
                return self._post_once(data)
            except _Retryable as e:
                last = e.reason
                self._count(f"retried/{e.reason.split(':')[0]}")
                if retry == self.cfg.max_retries:
                    break
                wait = e.wait if e.wait is not None else self.cfg.backoff_s * 2**retry
                if self._cancelled.wait(min(wait, 60.0)):
                    raise TeacherCancelled("teacher request cancelled") from None
        self._count("failed_requests")
        raise TeacherError(f"teacher at {self.url} gave no usable answer after {self.cfg.max_retries + 1} tries "
                           f"(last: {last}); rerun to continue, cached answers are kept")

    def _post_once(self, data: bytes) -> str:
        deadline = _Deadline(self.cfg.timeout_s)
        with self._lock:
            self._live.add(deadline)
        try:
            status, headers, raw = self._exchange(self.url, data, deadline)
        except _Retryable:
            raise
        except ssl.SSLCertVerificationError as e:  # permanent: retrying cannot make the certificate verify
            raise TeacherError(f"teacher at {self.url} presented a TLS certificate that does not verify "
                               f"({e.verify_message}); check generate.teacher.base_url") from None
        except (OSError, http.client.HTTPException, ValueError) as e:  # a killed socket surfaces as any of these
            if self._cancelled.is_set():
                raise TeacherCancelled("teacher request cancelled") from None
            if deadline.expired or isinstance(e, TimeoutError):  # every socket timeout is set to the deadline
                raise _Retryable(f"timeout: no complete reply within timeout_s ({self.cfg.timeout_s:g} s)") from None
            raise _Retryable(f"connection: {type(e).__name__}") from None
        finally:
            deadline.close()
            with self._lock:
                self._live.discard(deadline)
        if self._cancelled.is_set():
            raise TeacherCancelled("teacher request cancelled")
        if deadline.expired:  # a body cut short by the watchdog can look complete: never trust it
            raise _Retryable(f"timeout: no complete reply within timeout_s ({self.cfg.timeout_s:g} s)")
        return self._content(status, headers, raw)

    def _content(self, status: int, headers: http.client.HTTPMessage, raw: bytes) -> str:
        """The reply's text, or why it is unusable (a retryable reason, or a TeacherError for the user)."""
        if status == 429 or status >= 500:
            retry_after = (headers.get("Retry-After") or "").strip()
            wait = float(retry_after) if re.fullmatch(r"\d{1,5}(\.\d{1,6})?", retry_after) else None
            raise _Retryable(f"http_{status}: HTTP {status}", wait)
        if status in (401, 403):
            raise TeacherError(f"teacher at {self.url} refused the API key (HTTP {status}); check the variable "
                               f"{self.cfg.api_key_env}")
        if status != 200:
            raise TeacherError(f"teacher at {self.url} answered HTTP {status}: {_one_line(raw)}")
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not a string")
            content.encode("utf-8")  # a lone surrogate (\ud800) would only fail later, when the cache is written
            return content
        except (ValueError, KeyError, IndexError, TypeError, RecursionError) as e:
            kind = "HTML, not JSON (is base_url the API root, e.g. .../v1?)" if raw.lstrip()[:1] == b"<" else \
                type(e).__name__
            raise _Retryable(f"malformed: {kind}") from None

    def _exchange(self, url: str, data: bytes, deadline: _Deadline,
                  hops: int = 0) -> tuple[int, http.client.HTTPMessage, bytes]:
        """POST `data` to `url` before the deadline: (status, headers, body up to the cap)."""
        conn = self._connection(url, deadline)
        try:
            target = urlsplit(url)
            path = (target.path or "/") + (f"?{target.query}" if target.query else "")
            conn.request("POST", path, body=data, headers={
                "Content-Type": "application/json", "Accept": "application/json",
                "Accept-Encoding": "identity",  # a compressed body could expand past the cap after it is checked
                "Authorization": f"Bearer {self._key}"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                return self._redirect(url, response, data, deadline, hops)
            if response.status != 200:  # an error's body is only for its message: its first bytes do
                return response.status, response.headers, self._read_capped(response, 4096) or b""
            length = (response.getheader("Content-Length") or "").strip()
            if length.isdigit() and int(length) > self.cap:  # refused before reading a byte of it
                raise _Retryable(f"oversized: reply of {int(length)} bytes, more than the {self.cap} bytes "
                                 f"generate.teacher.max_tokens allows")
            raw = self._read_capped(response, self.cap)
            if raw is None:
                raise _Retryable(f"oversized: reply longer than the {self.cap} bytes generate.teacher.max_tokens "
                                 f"allows")
            return response.status, response.headers, raw
        finally:
            conn.close()

    @staticmethod
    def _read_capped(response: http.client.HTTPResponse, limit: int) -> bytes | None:
        """The body, or None once it passes `limit` bytes (then nothing more is read)."""
        chunks, total = [], 0
        while True:
            chunk = response.read(min(READ_BYTES, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                return None

    def _redirect(self, url: str, response: http.client.HTTPResponse, data: bytes, deadline: _Deadline,
                  hops: int) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Follow a same-origin 307/308 (the POST is kept); refuse every other redirect, never sending the key on."""
        location = response.getheader("Location") or ""
        target = urljoin(url, location.strip())
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https") or origin(target) != origin(url):
            raise TeacherError(f"teacher at {self.url} redirects (HTTP {response.status}) to another origin "
                               f"({origin_text(target) if scheme in ('http', 'https') else 'a non-HTTP URL'}); "
                               f"refused, so the API key is not sent there: set generate.teacher.base_url to the "
                               f"endpoint itself")
        if response.status not in (307, 308):
            raise TeacherError(f"teacher at {self.url} answered HTTP {response.status} (a redirect that turns the "
                               f"POST into a GET); set generate.teacher.base_url to the endpoint itself")
        if hops >= MAX_REDIRECTS:
            raise TeacherError(f"teacher at {self.url} redirected more than {MAX_REDIRECTS} times")
        if urlsplit(target).username is not None or "@" in urlsplit(target).netloc:
            raise TeacherError(f"teacher at {self.url} redirects to a URL with user info; refused")
        return self._exchange(target, data, deadline, hops + 1)

    def _connection(self, url: str, deadline: _Deadline) -> http.client.HTTPConnection:
        """An open connection to `url`'s origin, made within the deadline and interruptible by cancel()."""
        scheme, host, port = origin(url)
        sock = self._connect(host, port, deadline)
        conn_cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(host, port, timeout=max(deadline.left(), 0.001))
        if scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            deadline.attach(sock)
            sock.settimeout(max(deadline.left(), 0.001))
            sock.do_handshake()
        conn.sock = sock  # http.client uses a given socket as it is
        return conn

    def _connect(self, host: str, port: int, deadline: _Deadline) -> socket.socket:
        """TCP connect in short waits, so the deadline and cancel() end it (a blocking connect ignores both)."""
        last: OSError = OSError(f"cannot resolve {host}")
        for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                deadline.attach(sock)
                err = sock.connect_ex(address)
                while err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                    if self._cancelled.is_set() or deadline.left() <= 0:
                        raise TimeoutError("connect")
                    _, writable, _ = select.select([], [sock], [], min(0.2, max(deadline.left(), 0)))
                    if writable:
                        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, "connect failed")
                sock.setblocking(True)
                sock.settimeout(max(deadline.left(), 0.001))
                return sock
            except OSError as e:
                sock.close()
                last = e
                if isinstance(e, TimeoutError):
                    if deadline.left() <= 0:
                        deadline.expired = True
                    raise
        raise last
