"""The teacher client against a fault-injecting server: it trusts nothing it receives.

Every hostile reply ends as a TeacherError naming what went wrong (or as a retried reason), within
`timeout_s` plus a second, with memory bounded by the reply cap, and never with the key in an error, in
another host's hands or in the cache.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import tracemalloc

import pytest

from fake_teacher import FakeTeacher
from pico.config import TeacherConfig
from pico.errors import ParamsError
from pico.prompt import build_prompt
from pico.spec import sample_specs
from pico.teacher import TeacherCancelled, TeacherClient, TeacherError, api_key_from_env, key_problem, reply_cap_bytes

from conftest import config

KEY = "sk-test-teacher-key-0123456789"
MESSAGES = [{"role": "user", "content": build_prompt(sample_specs(1, 0)[0])}]


@pytest.fixture
def serve():
    servers = []

    def start(**kw) -> FakeTeacher:
        server = FakeTeacher(**kw)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def client_for(server: FakeTeacher, tmp_path, **kw) -> TeacherClient:
    cfg = dataclasses.replace(config("generate").teacher, base_url=server.base_url, model="fake-1",
                              backoff_s=0.0, **{"timeout_s": 5.0, "max_retries": 0, **kw})
    return TeacherClient(cfg, tmp_path / "cache", KEY, seed=0)


def cached(tmp_path) -> list:
    return list((tmp_path / "cache").rglob("*.json"))


# ----------------------------------------------------------------------------------------------- redirects
@pytest.mark.parametrize("fault", ["redirect", "redirect_301"])
def test_a_redirect_to_another_origin_is_refused_and_never_gets_the_key(serve, tmp_path, fault):
    elsewhere = serve()  # another port on the same host: another origin
    server = serve(default_fault=fault, redirect_to=elsewhere.base_url)
    client = client_for(server, tmp_path, max_retries=3)
    with pytest.raises(TeacherError, match=r"redirects \(HTTP 30[17]\) to another origin \(http://127.0.0.1:\d+\)"
                                           r".*not sent there") as e:
        client.complete(MESSAGES)
    assert elsewhere.paths == [] and elsewhere.headers_seen == []  # nothing, let alone the key, went there
    assert len(server.requests) == 1  # refused at once, not retried
    assert cached(tmp_path) == []  # and nothing cached as if it were the reply
    assert KEY not in str(e.value)


def test_a_same_origin_307_is_followed_with_the_post(serve, tmp_path):
    server = serve(faults=["redirect_self"])
    story = client_for(server, tmp_path).complete(MESSAGES)
    assert "Mina" in story or story  # a real template story
    assert server.paths == ["POST /v1/chat/completions", "POST /moved/chat/completions"]
    assert len(cached(tmp_path)) == 1


def test_a_same_origin_301_is_refused_not_turned_into_a_get(serve, tmp_path):
    server = serve(default_fault="redirect_301", redirect_to="")
    server.redirect_to = server.base_url  # 301 to itself: same origin, but a GET would follow
    with pytest.raises(TeacherError, match="turns the POST into a GET"):
        client_for(server, tmp_path).complete(MESSAGES)
    assert not any(p.startswith("GET") for p in server.paths)


# ----------------------------------------------------------------------------------------------- time
@pytest.mark.parametrize("fault", ["trickle", "trickle_headers", "hang"])
def test_a_trickling_or_silent_server_ends_the_request_within_timeout_s(serve, tmp_path, fault):
    server = serve(default_fault=fault, trickle_s=0.05)  # 20 bytes/s: every read gets a byte in time
    client = client_for(server, tmp_path, timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(TeacherError, match=r"last: timeout: no complete reply within timeout_s \(1.5 s\)"):
        client.complete(MESSAGES)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 1.0, elapsed
    assert client.stats["retried/timeout"] == 1 and cached(tmp_path) == []


def test_cancel_ends_a_stuck_request_at_once(serve, tmp_path):
    server = serve(default_fault="hang")
    client = client_for(server, tmp_path, timeout_s=600.0, max_retries=5)
    errors = []

    def run():
        try:
            client.complete(MESSAGES)
        except TeacherError as e:
            errors.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while not server.requests:
        time.sleep(0.01)
    started = time.monotonic()
    client.cancel()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - started < 1.0
    assert isinstance(errors[0], TeacherCancelled)
    assert len(server.requests) == 1  # no retry after a cancel


# ----------------------------------------------------------------------------------------------- size
@pytest.mark.parametrize("fault", ["huge", "huge_chunked", "endless"])
def test_a_huge_or_endless_reply_is_refused_reading_at_most_the_cap(serve, tmp_path, fault):
    server = serve(default_fault=fault)
    client = client_for(server, tmp_path, max_tokens=700)
    cap = reply_cap_bytes(700)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(TeacherError, match=rf"last: oversized: reply (of 52428800 bytes, more than|longer than) "
                                               rf"the {cap} bytes"):
            client.complete(MESSAGES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < cap + 4 * 2**20, peak  # a few MB beyond the cap, not 50 MB
    assert time.monotonic() - started < 5.0
    assert cached(tmp_path) == []


def test_the_cap_follows_max_tokens():
    assert reply_cap_bytes(700) < reply_cap_bytes(100_000) <= 8 * 2**20
    # a real reply of max_tokens tokens (here: 4-byte emoji, JSON-escaped to 12 bytes each) fits
    assert len(('"\\ud83d\\udc7b"' * 700).encode()) + 2000 < reply_cap_bytes(700)


# ----------------------------------------------------------------------------------------------- content
@pytest.mark.parametrize("fault,reason", [
    ("html", "HTML, not JSON"), ("wrong_json", "KeyError"), ("null_content", "TypeError"),
    ("surrogate", "UnicodeEncodeError"), ("deep", "RecursionError"), ("malformed", "JSONDecodeError"),
])
def test_a_reply_that_is_not_a_completion_is_retried_then_reported(serve, tmp_path, fault, reason):
    server = serve(faults=[fault])
    client = client_for(server, tmp_path, max_retries=1)
    assert client.complete(MESSAGES)  # retried once, then a real answer
    assert client.stats["retried/malformed"] == 1 and len(cached(tmp_path)) == 1
    server2 = serve(default_fault=fault)
    with pytest.raises(TeacherError, match=f"after 2 tries \\(last: malformed: {reason}"):
        client_for(server2, tmp_path / "other", max_retries=1).complete(MESSAGES)


# ----------------------------------------------------------------------------------------------- the key
@pytest.mark.parametrize("key,kind", [
    ("sk-abc\ndef", "a line break at character 7"), ("sk-abc def", "whitespace at character 7"),
    ("sk-abcé", "a non-ASCII character at character 7"), ("sk-\x01abc", "a control character at character 4"),
])
def test_a_key_that_cannot_be_a_header_is_refused_without_printing_it(key, kind):
    teacher = config("generate").teacher
    with pytest.raises(TeacherError, match=f"OPENAI_API_KEY .* holds {kind}") as e:
        api_key_from_env({"OPENAI_API_KEY": key}, teacher)
    assert key not in str(e.value) and "abc" not in str(e.value)
    with pytest.raises(TeacherError, match=kind):  # the client checks a key it is handed too
        TeacherClient(teacher, "unused", key)


def test_outer_whitespace_of_a_key_is_stripped():
    assert api_key_from_env({"OPENAI_API_KEY": "  sk-abc\n"}, config("generate").teacher) == "sk-abc"
    assert key_problem("sk-abc") is None


@pytest.mark.parametrize("url", ["https://user:hunter2pass@api.example.com/v1", "http://hunter2pass@127.0.0.1/v1",
                                 "https://:hunter2pass@api.example.com/v1"])
def test_a_base_url_with_user_info_is_refused_naming_api_key_env(url):
    teacher = config("generate").teacher
    fields = {f.name: getattr(teacher, f.name) for f in dataclasses.fields(teacher)}
    with pytest.raises(ParamsError, match="generate.teacher.base_url: holds user info .*generate.teacher.api_key_env") as e:
        TeacherConfig(**{**fields, "base_url": url})
    assert "hunter2pass" not in str(e.value)


def test_the_key_goes_only_to_the_endpoint_in_the_authorization_header(serve, tmp_path):
    server = serve()
    client_for(server, tmp_path).complete(MESSAGES)
    assert server.headers_seen == [f"Bearer {KEY}"]
    assert all(KEY.encode() not in p.read_bytes() for p in cached(tmp_path))
