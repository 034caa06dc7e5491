"""`pico serve` through the official `openai` client and through pico's own teacher provider: the answers are
pico's own samples (same prompt, settings and seed), streamed or not; bad requests get the OpenAI error shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import openai
import pytest
import torch

from pico.model import build_model
from pico.prompt import build_prompt, encode_prompt
from pico.sampling import SamplingConfig, sample
from pico.spec import sample_specs

from conftest import REPO, config

KEY = "sk-local-test-0123456789"


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return build_model(config("model", type="transformer", d_model=32, n_layer=2, n_head=2, max_seq_len=512),
                       tok.vocab_size).eval()


@pytest.fixture
def serve(model, tok):
    from pico.batcher import Batcher
    from pico.serve import Running, Server

    running = []

    def start(api_key=None, max_batch=8, max_queue=64):
        r = Running(Server(Batcher(model, tok, max_batch=max_batch, max_queue=max_queue), "tiny", api_key))
        running.append(r)
        return r

    yield start
    for r in running:
        r.close()


def client(server, key="unused", **kw):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)


def pico_text(model, tok, prompt: str, n=1, **settings) -> list[str]:
    cfg = SamplingConfig(**{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 64, "no_repeat_ngram": 0,
                            "seed": 0, **settings})
    return [tok.decode(ids) for ids in sample(model, [encode_prompt(tok, prompt)] * n, cfg, tok.eot_id)]


SPEC = sample_specs(1, 7)[0]


# ----------------------------------------------------------------------------------------------- answers
def test_chat_with_a_json_spec_answers_picos_own_samples(serve, model, tok):
    c = client(serve())
    r = c.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "be scary"},
                                                          {"role": "user", "content": json.dumps(SPEC.to_dict())}],
                                  temperature=0.8, top_p=0.95, max_tokens=30, seed=11, n=3)
    assert r.object == "chat.completion" and r.model == "tiny" and len(r.choices) == 3
    expected = pico_text(model, tok, build_prompt(SPEC), n=3, temperature=0.8, top_p=0.95, max_new_tokens=30, seed=11)
    assert [ch.message.content for ch in r.choices] == expected
    assert len(set(expected)) == 3  # each choice its own random stream
    assert r.usage.prompt_tokens == len(encode_prompt(tok, build_prompt(SPEC)))
    assert all(ch.finish_reason in ("stop", "length") and ch.message.role == "assistant" for ch in r.choices)
    full_prompt = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": build_prompt(SPEC)}],
                                            temperature=0.8, top_p=0.95, max_tokens=30, seed=11)
    assert full_prompt.choices[0].message.content == expected[0]  # a full prompt and its spec: the same request


def test_greedy_completion_is_picos_greedy_text(serve, model, tok):
    r = client(serve()).completions.create(model="tiny", prompt="Once upon a time", temperature=0, max_tokens=40)
    assert r.object == "text_completion"
    assert r.choices[0].text == pico_text(model, tok, "Once upon a time", temperature=0.0, max_new_tokens=40)[0]
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 40


def test_streaming_gives_the_same_text_in_pieces(serve, model, tok):
    c = client(serve())
    messages = [{"role": "user", "content": json.dumps(SPEC.to_dict())}]
    whole = c.chat.completions.create(model="tiny", messages=messages, max_tokens=40, seed=5)
    chunks = list(c.chat.completions.create(model="tiny", messages=messages, max_tokens=40, seed=5, stream=True))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [ch.choices[0].delta.content or "" for ch in chunks]
    assert sum(bool(p) for p in pieces) > 3  # really streamed, not one block at the end
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    text_stream = list(c.completions.create(model="tiny", prompt="The dog", max_tokens=20, seed=2, stream=True))
    assert "".join(ch.choices[0].text for ch in text_stream) == \
        c.completions.create(model="tiny", prompt="The dog", max_tokens=20, seed=2).choices[0].text


def test_stop_strings_end_the_answer_before_them(serve, model, tok):
    greedy = pico_text(model, tok, "Once upon a time", temperature=0.0, max_new_tokens=60)[0]
    stop = greedy[len(greedy) // 3: len(greedy) // 3 + 3]  # a piece the answer will reach
    c = client(serve())
    r = c.completions.create(model="tiny", prompt="Once upon a time", temperature=0, max_tokens=60, stop=[stop, "zzzz"])
    assert r.choices[0].text == greedy[: greedy.index(stop)] and r.choices[0].finish_reason == "stop"
    streamed = c.completions.create(model="tiny", prompt="Once upon a time", temperature=0, max_tokens=60,
                                    stop=stop, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed) == greedy[: greedy.index(stop)]


def test_concurrent_requests_are_decoded_together_with_the_same_answers(serve, model, tok):
    server = serve()
    c = client(server)
    prompts = [f"Story {i}: the" + " old" * i for i in range(8)]
    answers = {}

    def ask(i):
        answers[i] = c.completions.create(model="tiny", prompt=prompts[i], max_tokens=100, seed=i,
                                          temperature=0.9).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i in range(8):
        assert answers[i] == pico_text(model, tok, prompts[i], temperature=0.9, max_new_tokens=100, seed=i)[0], i
    health = json.loads(urllib.request.urlopen(server.url + "/health").read())
    assert health["largest_batch"] > 1 and health["batches"] < 8  # some arrived together and shared a batch


def test_models_and_health(serve):
    server = serve()
    assert [m.id for m in client(server).models.list()] == ["tiny"]
    assert json.loads(urllib.request.urlopen(server.url + "/health").read())["status"] == "ok"


# ----------------------------------------------------------------------------------------------- errors
def test_errors_have_the_openai_shapes(serve, tok):
    server = serve()
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="the " * 600, max_tokens=5)
    assert f"is {len(tok.encode('the ' * 600))} tokens but the model's context is 512 tokens" in str(e.value)
    with pytest.raises(openai.NotFoundError, match="'gpt-4o' is not served here; this server serves 'tiny'"):
        c.completions.create(model="gpt-4o", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="temperature must be a number in"):
        c.completions.create(model="tiny", prompt="hi", temperature=3)
    with pytest.raises(openai.BadRequestError, match="single-turn"):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a"},
                                                          {"role": "assistant", "content": "b"}])
    with pytest.raises(openai.BadRequestError, match="unknown field 'villain'"):
        c.chat.completions.create(model="tiny", messages=[{"role": "user",
                                                           "content": json.dumps({**SPEC.to_dict(), "villain": "x"})}])
    with pytest.raises(openai.BadRequestError, match="logprobs is not supported"):
        c.completions.create(model="tiny", prompt="hi", logprobs=2)
    request = urllib.request.Request(server.url + "/v1/completions", data=b"{not json", method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(request)
    assert raw.value.code == 400 and "not valid JSON" in json.loads(raw.value.read())["error"]["message"]


def test_api_key_is_required_when_set(serve):
    server = serve(api_key=KEY)
    with pytest.raises(openai.AuthenticationError):
        client(server, "sk-wrong").completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert client(server, KEY).completions.create(model="tiny", prompt="hi", max_tokens=2).choices
    assert urllib.request.urlopen(server.url + "/health").status == 200  # health needs no key


def test_a_full_queue_answers_429_with_retry_after(serve):
    server = serve(max_batch=1, max_queue=1)
    c = client(server)
    results = []

    def ask():
        try:
            c.completions.create(model="tiny", prompt="Once", max_tokens=120, temperature=0)
            results.append(200)
        except openai.RateLimitError as e:
            results.append((429, e.response.headers.get("Retry-After")))

    threads = [threading.Thread(target=ask) for _ in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    refused = [r for r in results if r != 200]
    assert len(results) == 12 and refused and 200 in results
    assert all(status == 429 and int(after) >= 1 for status, after in refused)


# ----------------------------------------------------------------------------------------------- the pipeline's teacher
def test_generate_stage_with_pico_serve_as_its_teacher(serve, model, tok, tmp_path):
    import yaml

    from pipeline import deep_update

    server = serve(api_key=KEY)
    small = {"train": 2, "valid": 1, "test": 1}
    params = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), {"generate": {
        "provider": "openai", "sft_splits": {**small, "test_unseen": 1}, "dpo_splits": small, "phrase_values": 0,
        "teacher": {"base_url": server.url + "/v1", "model": "tiny", "api_key_env": "PICO_SERVE_TEST_KEY",
                    "max_tokens": 24, "max_attempts": 2, "concurrency": 4, "backoff_s": 0.0}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO / "stages/generate.py"), "--params", str(tmp_path / "params.yaml"),
           "--tokenizer", str(tmp_path / "none.json"), "--train-text", str(tmp_path / "none.txt"),
           "--out-dir", str(tmp_path / "data"),
           "--cache-dir", str(tmp_path / "data/teacher_cache"), "--metrics", str(tmp_path / "metrics.json")]

    def run():
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "PICO_SERVE_TEST_KEY": KEY})

    def answered() -> int:
        return json.loads(urllib.request.urlopen(server.url + "/health").read())["rows"]

    first = run()
    # An untrained 2-layer model writes no story that passes the checker: every row is dropped after its
    # attempts, the stage says so (exit 2) after writing what it has, and every answer is cached.
    assert first.returncode == 2 and "generation left no rows" in first.stderr, first.stderr
    assert KEY not in first.stderr + first.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    asked = answered()
    cached = sorted((tmp_path / "data/teacher_cache").rglob("*.json"))
    assert asked == len(cached) == 2 * (5 + 4)  # max_attempts x (SFT specs + DPO chosen stories)
    assert sum(metrics["dropped"].values()) == 9 and metrics["teacher"]["requests"] == asked
    entry = json.loads(cached[0].read_text())
    prompt = entry["request"]["messages"][0]["content"]
    assert entry["content"] == pico_text(model, tok, prompt, temperature=params["generate"]["teacher"]["temperature"],
                                         max_new_tokens=24, seed=entry["request"]["seed"])[0]
    before = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    again = run()
    assert again.returncode == 2 and answered() == asked  # the rerun asked nothing: every answer from the cache
    assert {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()} == before


# ----------------------------------------------------------------------------------------------- command and load
def test_serve_command_refuses_a_missing_key_variable(tmp_path, tok, capsys):
    from pico.cli import main

    code = main(["serve", "--checkpoint", str(tmp_path / "x.pt"), "--api-key-env", "PICO_NO_SUCH_VAR_123"])
    err = capsys.readouterr().err
    assert code == 2 and "PICO_NO_SUCH_VAR_123 is not set" in err


def test_load_check_reports_and_counts_only_requested_429s(tiny_checkpoint, tmp_path):
    ckpt, tok_path = tiny_checkpoint
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/serve_load.py"), "--checkpoint", str(ckpt),
                           "--tokenizer", str(tok_path), "--clients", "6", "--seconds", "4", "--max-tokens", "16",
                           "--max-queue", "2", "--json", str(tmp_path / "load.json")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "load.json").read_text())
    assert report["ok"] > 0 and report["failed"] == 0 and report["rate_limited"] > 0
    assert report["requests_per_s"] > 0 and report["p50_s"] <= report["p99_s"] and report["peak_rss_mb"] > 50
