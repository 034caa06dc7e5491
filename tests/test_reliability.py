"""Reliability: bad input, kills, NaNs, reruns and secrets, on the real stages of a tiny pipeline."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO as REPO_ROOT
from pipeline import (BIN, TINY_PARAMS, clone_repo, deep_update, dvc, env, make_repo, ran_stages, read_params,
                      set_params, stage, stage_cmd, write_params)

pytestmark = pytest.mark.e2e

OUTPUTS = {
    "prepare": ["data/prepared/train.txt", "data/prepared/val.txt", "metrics/prepare.json"],
    "tokenizer": ["data/tokenizer/tokenizer.json", "metrics/tokenizer.json"],
    "generate": ["data/sft/train.jsonl", "data/dpo/train.jsonl", "data/dataset.json", "metrics/generate.json"],
    "pretrain": ["checkpoints/base.pt", "data/tokens/train.bin", "metrics/pretrain.json", "plots/pretrain/train.csv"],
    "sft": ["checkpoints/sft.pt", "metrics/sft.json", "plots/sft/train.csv"],
    "dpo": ["checkpoints/dpo.pt", "checkpoints/dpo_reference.pt", "metrics/dpo.json", "plots/dpo/val.csv"],
    "evaluate": ["metrics/evaluate.json", "eval/generations_test.jsonl", "plots/evaluate/checkpoints.csv"],
    "bundle": ["results/README.md", "results/report.html"],
}


def snapshot(repo: Path, stage_name: str) -> dict[str, bytes | None]:
    return {p: (repo / p).read_bytes() if (repo / p).exists() else None for p in OUTPUTS[stage_name]}


# ----------------------------------------------------------------------------------------------- 1. bad input
BAD_PARAMS = [
    ("prepare", {"prepare": {"val_fraction": 0}}, "prepare.val_fraction"),
    ("prepare", {"prepare": {"max_stories": -1}}, "prepare.max_stories"),
    ("tokenizer", {"tokenizer": {"vocab_size": "big"}}, "tokenizer.vocab_size"),
    ("generate", {"generate": {"provider": "claude"}}, "generate.provider"),
    ("generate", {"generate": {"teacher": {"concurrency": 0}}}, "generate.teacher.concurrency"),
    ("pretrain", {"pretrain": {"lr": 0}}, "pretrain.lr"),
    ("pretrain", {"pretrain": {"batch_size": 0}}, "pretrain.batch_size"),
    ("pretrain", {"pretrain": {"device": "tpu"}}, "pretrain.device"),
    ("pretrain", {"model": {"type": "mamba"}}, "model.type"),
    ("sft", {"sft": {"lr": -1e-3}}, "sft.lr"),
    ("sft", {"sft": {"batch_size": 0}}, "sft.batch_size"),
    ("sft", {"sft": {"truncation": "middle"}}, "sft.truncation"),
    ("dpo", {"dpo": {"beta": 0}}, "dpo.beta"),
    ("dpo", {"dpo": {"beta": -0.1}}, "dpo.beta"),
    ("dpo", {"dpo": {"label_smoothing": 0.5}}, "dpo.label_smoothing"),
    ("dpo", {"dpo": {"loss_type": "hinge"}}, "dpo.loss_type"),
    ("evaluate", {"evaluate": {"top_p": 0}}, "evaluate.top_p"),
    ("evaluate", {"evaluate": {"device": "gpu"}}, "evaluate.device"),
    ("bundle", {"bundle": {"dpi": 10}}, "bundle.dpi"),
    ("bundle", {"experiment": {"purpose": "Not A Slug"}}, "experiment.purpose"),
    # non-finite and out-of-range numbers, by name, before any work
    ("generate", {"generate": {"teacher": {"timeout_s": float("inf")}}}, "generate.teacher.timeout_s"),
    ("dpo", {"dpo": {"beta": float("inf")}}, "dpo.beta"),
    ("pretrain", {"pretrain": {"seed": 2**32}}, "pretrain.seed"),
    ("evaluate", {"evaluate": {"temperature": float("inf")}}, "evaluate.temperature"),
    ("evaluate", {"evaluate": {"top_p": float("nan")}}, "evaluate.top_p"),
    # credentials in a committed file: refused without printing them
    ("generate", {"generate": {"teacher": {"base_url": "https://user:hunter2pass@api.example.com/v1"}}},
     "generate.teacher.base_url"),
    # sizes checked against what they imply: a batch no machine can hold, a context shorter than the prompts
    ("pretrain", {"pretrain": {"batch_size": 65536, "seq_len": 0}, "model": {"d_model": 4096, "n_head": 32}},
     "pretrain.batch_size"),
    ("pretrain", {"model": {"max_seq_len": 128}, "pretrain": {"seq_len": 64}, "sft": {"max_len": 128},
                  "dpo": {"max_len": 128}}, "model.max_seq_len"),
    ("generate", {"model": {"max_seq_len": 128}, "pretrain": {"seq_len": 64}, "sft": {"max_len": 128},
                  "dpo": {"max_len": 128}}, "model.max_seq_len"),
]


@pytest.mark.parametrize("stage_name,update,key", BAD_PARAMS, ids=[c[2] + "=" + json.dumps(c[1])[-12:] for c in BAD_PARAMS])
def test_bad_params_fail_naming_the_key_and_write_nothing(repo_copy, stage_name, update, key):
    before = snapshot(repo_copy, stage_name)
    set_params(repo_copy, update)
    proc = stage(repo_copy, stage_name)
    assert proc.returncode == 2
    assert key in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1:]) == 1 and proc.stderr.strip().splitlines()[-1].startswith("error:")
    assert "hunter2pass" not in proc.stdout + proc.stderr
    assert snapshot(repo_copy, stage_name) == before


@pytest.mark.parametrize("text_change,message", [
    (lambda t: t.replace("dpo:\n  seed: 1337\n", "dpo:\n  seed: 1337\n  seed: 7\n"), "params: dpo.seed: given twice"),
    (lambda t: t.replace("tokenizer:\n", "tokenizer:\n  # caf\udcff\n"), "is not UTF-8 text"),
    (lambda t: t.replace("tokenizer:\n", "tokenizer:\n  x: \x07\n"), "which YAML does not allow"),
])
def test_params_file_problems_are_refused_by_every_stage(repo_copy, text_change, message):
    path = repo_copy / "params.yaml"
    path.write_bytes(text_change(path.read_text()).encode("utf-8", "surrogateescape"))
    before = snapshot(repo_copy, "tokenizer")
    proc = stage(repo_copy, "tokenizer")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(repo_copy, "tokenizer") == before


def test_pico_debug_shows_the_traceback(repo_copy):
    set_params(repo_copy, {"tokenizer": {"vocab_size": "big"}})
    proc = stage(repo_copy, "tokenizer", extra_env={"PICO_DEBUG": "1"})
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: params: tokenizer.vocab_size")


def test_missing_empty_and_separatorless_corpus(repo_copy, tmp_path):
    before = snapshot(repo_copy, "prepare")
    empty = tmp_path / "empty"
    empty.mkdir()
    params = read_params(repo_copy)
    params["prepare"].update(source=str(empty), files={}, sha256={})
    write_params(repo_copy, params)
    proc = stage(repo_copy, "prepare")
    assert proc.returncode == 2 and str(empty) in proc.stderr and "prepare.files is empty" in proc.stderr
    (empty / "train.txt").write_text("")
    proc = stage(repo_copy, "prepare")
    assert proc.returncode == 2 and "train.txt: file is empty" in proc.stderr
    (empty / "train.txt").write_text("Once upon a time there was a story without any separator at all.\n")
    proc = stage(repo_copy, "prepare")
    assert proc.returncode == 2 and "no <|endoftext|> separator" in proc.stderr and "train.txt" in proc.stderr
    assert snapshot(repo_copy, "prepare") == before


def test_malformed_jsonl_line_is_reported_as_file_and_line(repo_copy):
    path = repo_copy / "data/sft/train.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:40]  # cut line 3 mid-object
    path.write_text("\n".join(lines) + "\n")
    before = snapshot(repo_copy, "sft")
    proc = stage(repo_copy, "sft")
    assert proc.returncode == 2 and "data/sft/train.jsonl:3: malformed JSON line" in proc.stderr
    assert snapshot(repo_copy, "sft") == before


@pytest.mark.parametrize("line,message", [
    (b'{"prompt": null, "response": "x"}', '"prompt" must be a non-empty string (got None)'),
    (b'{"prompt": "Story:", "response": 42}', '"response" must be a non-empty string (got 42)'),
    (b'{"prompt": "Story:", "response": NaN}', '"response" must be a non-empty string (got nan)'),
    (b'{"prompt": "", "response": "x"}', '"prompt" must be a non-empty string'),
    (b'{"prompt": "Story:", "response": "\\ud800"}', "holds a lone surrogate escape"),
    (b'{"prompt": "caf\xe9", "response": "x"}', "not UTF-8 text (byte 15 of the line)"),
    (b'["prompt", "response"]', "expected a JSON object, got list"),
])
def test_bad_jsonl_rows_are_reported_as_file_and_line(repo_copy, line, message):
    path = repo_copy / "data/sft/train.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[2] = line
    path.write_bytes(b"\n".join(lines))
    before = snapshot(repo_copy, "sft")
    proc = stage(repo_copy, "sft")
    assert proc.returncode == 2 and f"data/sft/train.jsonl:3: {message}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(repo_copy, "sft") == before


def test_a_bom_and_identical_pairs_are_handled(repo_copy):
    set_params(repo_copy, {"dpo": {"onpolicy": {"share": 0.0}}})  # the data's own pairs, not rebuilt from samples
    path = repo_copy / "data/dpo/train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["rejected"] = rows[1]["chosen"]
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    proc = stage(repo_copy, "dpo")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dropped 1 pair(s) whose chosen and rejected stories are identical" in proc.stderr
    assert json.loads((repo_copy / "metrics/dpo.json").read_text())["train_pairs"]["identical"] == 1


def _bad_checkpoint(repo: Path, kind: str) -> None:
    base = repo / "checkpoints/base.pt"
    if kind == "truncated":
        base.write_bytes(base.read_bytes()[:5000])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, base)
    elif kind == "wrong_model_config":
        payload = torch.load(base, weights_only=True)
        payload["model"]["d_model"] = 64
        torch.save(payload, base)
    elif kind == "absurd_config":
        payload = torch.load(base, weights_only=True)
        payload["model"]["d_model"] = 4_000_000
        torch.save(payload, base)
    elif kind == "model_is_a_list":
        payload = torch.load(base, weights_only=True)
        payload["model"] = [1, 2, 3]
        torch.save(payload, base)
    elif kind == "nan_weights":
        payload = torch.load(base, weights_only=True)
        payload["state_dict"]["wte.weight"][0, 0] = float("nan")
        torch.save(payload, base)
    elif kind == "huge_recorded_model":  # small weights, a config that would allocate 64 GB
        payload = torch.load(base, weights_only=True)
        payload["model"].update(d_model=16384, n_head=16, vocab_size=1 << 20)
        torch.save(payload, base)
    elif kind == "wrong_tokenizer":
        tok_path = repo / "data/tokenizer/tokenizer.json"
        tok = json.loads(tok_path.read_text())
        tok["ranks"] = tok["ranks"][:-1]
        tok["special_tokens"] = {"<|endoftext|>": len(tok["ranks"])}
        tok_path.write_text(json.dumps(tok))


@pytest.mark.parametrize("kind,message", [
    ("truncated", "truncated or not a torch checkpoint"),
    ("foreign", "not a pico checkpoint"),
    ("wrong_model_config", "weights do not match the model config"),
    ("wrong_tokenizer", "trained with tokenizer"),
    ("absurd_config", "bad model config in checkpoint: params: model.d_model: must be in (0, 16384]"),
    ("model_is_a_list", "bad model config in checkpoint: 'model' is not a mapping"),
    ("nan_weights", "weights are not finite (NaN or inf) in wte.weight"),
    ("huge_recorded_model", "weights do not match the model config it records: wte.weight is"),
])
def test_bad_checkpoints_are_refused_clearly(repo_copy, kind, message):
    _bad_checkpoint(repo_copy, kind)
    before = snapshot(repo_copy, "sft")
    proc = stage(repo_copy, "sft")
    assert proc.returncode == 2 and message in proc.stderr and "checkpoints/base.pt" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(repo_copy, "sft") == before


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    from pico.checkpoint import load_checkpoint
    from pico.errors import CheckpointError

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "pico-checkpoint", "version": 1, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- 2. kills
KILL_PARAMS = {
    "pretrain": {"pretrain": {"max_steps": 160, "save_every": 10, "eval_every": 40, "batch_size": 8, "seq_len": 128}},
    "sft": {"sft": {"max_steps": 48, "save_every": 6, "eval_every": 12, "batch_size": 4}},
    "dpo": {"dpo": {"max_steps": 48, "save_every": 6, "eval_every": 12, "batch_size": 2}},
}


def _metrics(repo: Path, stage_name: str) -> dict:
    m = json.loads((repo / f"metrics/{stage_name}.json").read_text())
    m.pop("speed")
    return m


@pytest.mark.parametrize("stage_name", ["pretrain", "sft", "dpo"])
def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(built, tmp_path, stage_name):
    straight = clone_repo(built[0], tmp_path / "straight")
    set_params(straight, KILL_PARAMS[stage_name])
    assert stage(straight, stage_name).returncode == 0
    want = _metrics(straight, stage_name)

    repo = clone_repo(built[0], tmp_path / "killed")
    set_params(repo, KILL_PARAMS[stage_name])
    before = snapshot(repo, stage_name)
    resume = repo / f"checkpoints/resume/{stage_name}.pt"
    proc = subprocess.Popen(stage_cmd(repo, stage_name), cwd=repo, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not resume.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the stage finished before it could be killed; make KILL_PARAMS longer"
    time.sleep(random.Random(stage_name).uniform(0.0, 0.6))  # a random point after the first save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(repo, stage_name) == before  # outputs untouched: partial files never become outputs
    saved_step = torch.load(resume, weights_only=True)["result"]["steps_done"]
    save_every = KILL_PARAMS[stage_name][stage_name]["save_every"]
    assert saved_step % save_every == 0 and saved_step > 0

    rerun = stage(repo, stage_name)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming from step {saved_step}" in rerun.stderr
    assert not resume.exists()
    got = _metrics(repo, stage_name)
    assert got.keys() == want.keys()
    for key, value in want.items():  # numbers within float rounding; "precision": "fp32" and the like exactly
        exact = isinstance(value, (str, dict))  # dpo's on-policy counts: a dict of integers and rates, exactly
        assert got[key] == (value if exact else pytest.approx(value, rel=1e-6, abs=1e-6)), key
    if stage_name != "pretrain":  # a stray temp file would end up inside a DVC-tracked directory
        assert not list((repo / "checkpoints").glob(".*.tmp"))


# ----------------------------------------------------------------------------------------------- 3. reruns
def _lock_outs(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}


def test_two_clean_runs_give_identical_data_and_metrics(built, tmp_path):
    first = built[0]
    second = make_repo(tmp_path / "second")
    dvc(second, "repro")
    a, b = _lock_outs(first), _lock_outs(second)
    assert a.keys() == b.keys()
    # the bundle records when it was made and run timings; everything else must match to the byte
    varying = {"results"} | {p for p in a if p.startswith("metrics/")}
    differing = sorted(p for p in a if p not in varying and a[p] != b[p])
    assert differing == [], differing
    for path in sorted(p for p in a if p.startswith("metrics/")):
        ma, mb = (json.loads((r / path).read_text()) for r in (first, second))
        for m in (ma, mb):
            m.pop("speed", None)
        assert ma == mb, path


# ----------------------------------------------------------------------------------------------- 4. NaN
def test_a_huge_learning_rate_stops_with_a_clear_error_and_keeps_the_last_good_state(repo_copy):
    set_params(repo_copy, {"pretrain": {"lr": 1e9, "grad_clip": 0.0, "warmup_steps": 0, "save_every": 1,
                                        "log_every": 1, "max_steps": 50}})
    before = snapshot(repo_copy, "pretrain")
    proc = stage(repo_copy, "pretrain")
    assert proc.returncode == 2
    assert "lower the learning rate" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(repo_copy, "pretrain")["checkpoints/base.pt"] == before["checkpoints/base.pt"]
    state = torch.load(repo_copy / "checkpoints/resume/pretrain.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# ----------------------------------------------------------------------------------------------- 5. teacher
def test_teacher_generation_killed_midway_resumes_from_its_cache(built, tmp_path):
    from fake_teacher import FakeTeacher

    server = FakeTeacher(slow_s=0.0)
    try:
        params = {"generate": {"provider": "openai", "teacher": {
            "base_url": server.base_url, "api_key_env": "PICO_TEST_TEACHER_KEY", "concurrency": 2, "backoff_s": 0.0}}}
        key = {"PICO_TEST_TEACHER_KEY": "sk-test-teacher-0000"}
        straight = clone_repo(built[0], tmp_path / "straight")
        set_params(straight, params)
        assert stage(straight, "generate", extra_env=key).returncode == 0
        total = len(server.requests)

        repo = clone_repo(built[0], tmp_path / "killed")
        set_params(repo, params)
        server.faults = ["slow"] * 10_000  # slow enough to kill midway
        server.slow_s = 0.05
        proc = subprocess.Popen(stage_cmd(repo, "generate"), cwd=repo, env=env(key),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache = repo / "data/teacher_cache"
        while len(list(cache.rglob("*.json"))) < total // 3 and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cached = len(list(cache.rglob("*.json")))
        assert 0 < cached < total
        server.faults, n_before = [], len(server.requests)
        assert stage(repo, "generate", extra_env=key).returncode == 0
        assert len(server.requests) - n_before == total - cached  # nothing asked twice
        for rel in ("data/sft/train.jsonl", "data/dpo/train.jsonl", "data/dpo/test.jsonl"):
            assert (repo / rel).read_bytes() == (straight / rel).read_bytes(), rel
    finally:
        server.close()


# ----------------------------------------------------------------------------------------------- 6. secrets
def test_no_api_key_in_any_output_or_log(tmp_path):
    from fake_teacher import FakeTeacher

    secret = "sk-live-pico-secret-3f9a1c2b7d"
    server = FakeTeacher(required_key=secret)
    try:
        repo = make_repo(tmp_path / "repo", deep_update(
            yaml.safe_load(yaml.safe_dump(TINY_PARAMS)),
            {"generate": {"provider": "openai", "teacher": {"base_url": server.base_url, "backoff_s": 0.0}}}))
        proc = dvc(repo, "repro", extra_env={"OPENAI_API_KEY": secret})
        assert "generate" in ran_stages(proc)
        assert len(server.requests) > 0
        assert secret not in proc.stdout + proc.stderr
        for folder in ("data", "metrics", "plots", "results", "eval", "checkpoints", ".dvc/tmp"):
            for path in (repo / folder).rglob("*"):
                if path.is_file() and not path.is_symlink():
                    assert secret.encode() not in path.read_bytes(), path
        assert secret.encode() not in (repo / "dvc.lock").read_bytes()
    finally:
        server.close()


def sigint_default() -> None:
    """In the child, before exec: Ctrl-C's default action. A test run started in the background by a shell without
    job control (`nohup make test &`) ignores SIGINT, and its children would inherit that and never see the
    signal these tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_a_stuck_generate_within_20_s_leaving_nothing_half_written(tmp_path):
    """A teacher that never answers, timeout_s one hour: only Ctrl-C can end the run, and it must, promptly."""
    from fake_teacher import FakeTeacher

    server = FakeTeacher(default_fault="hang")
    try:
        set_params_file = tmp_path / "params.yaml"
        params = read_params(REPO_ROOT)
        deep_update(params, {"generate": {"provider": "openai", "phrase_values": 0, "teacher": {
            "base_url": server.base_url, "api_key_env": "PICO_TEST_TEACHER_KEY", "timeout_s": 3600,
            "max_retries": 100, "concurrency": 4}}})
        set_params_file.write_text(yaml.safe_dump(params))
        cmd = [str(BIN / "python"), str(REPO_ROOT / "stages/generate.py"), "--params", str(set_params_file),
               "--tokenizer", str(tmp_path / "none.json"), "--train-text", str(tmp_path / "none.txt"),
           "--out-dir", str(tmp_path / "data"),
               "--cache-dir", str(tmp_path / "data/teacher_cache"), "--metrics", str(tmp_path / "metrics.json")]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env({"PICO_TEST_TEACHER_KEY": "sk-test-0000"}),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
        deadline = time.time() + 120
        while len(server.requests) < 4 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and len(server.requests) == 4  # every worker is stuck in a request
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - started
        assert proc.returncode == 130 and elapsed < 20, (proc.returncode, elapsed, err)
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted")
        assert not (tmp_path / "data/sft").exists() and not (tmp_path / "metrics.json").exists()
        assert not list((tmp_path / "data").rglob("*.tmp"))
    finally:
        server.close()


def test_a_password_in_base_url_is_refused_and_written_nowhere(repo_copy):
    """dvc repro with credentials in base_url: one line naming api_key_env; dvc.lock, outputs and logs stay clean."""
    password = "hunter2-pico-pass"
    lock = (repo_copy / "dvc.lock").read_bytes()
    before = snapshot(repo_copy, "generate")
    set_params(repo_copy, {"generate": {"provider": "openai", "teacher": {
        "base_url": f"https://pico:{password}@api.example.com/v1"}}})
    proc = dvc(repo_copy, "repro", "generate", check=False, extra_env={"OPENAI_API_KEY": "sk-test-0000"})
    assert proc.returncode != 0
    assert "generate.teacher.base_url: holds user info" in proc.stderr and "api_key_env" in proc.stderr
    assert password not in proc.stdout + proc.stderr
    assert (repo_copy / "dvc.lock").read_bytes() == lock and snapshot(repo_copy, "generate") == before
    for path in repo_copy.rglob("*"):
        source = {".git", "tests"} & set(path.relative_to(repo_copy).parts) or path.name == "params.yaml"
        if path.is_file() and not path.is_symlink() and not source:
            assert password.encode() not in path.read_bytes(), path


def test_ctrl_c_during_pretrain_exits_130_and_the_rerun_resumes(repo_copy):
    set_params(repo_copy, {"pretrain": {"max_steps": 80, "save_every": 5, "eval_every": 40, "batch_size": 8,
                                        "seq_len": 128}})
    before = snapshot(repo_copy, "pretrain")
    resume = repo_copy / "checkpoints/resume/pretrain.pt"
    proc = subprocess.Popen(stage_cmd(repo_copy, "pretrain"), cwd=repo_copy, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    deadline = time.time() + 300
    while not resume.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "pretrain finished before it could be interrupted"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - started < 10, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted")
    assert snapshot(repo_copy, "pretrain") == before
    saved = torch.load(resume, weights_only=True)["result"]["steps_done"]
    rerun = stage(repo_copy, "pretrain")
    assert rerun.returncode == 0 and f"resuming from step {saved}" in rerun.stderr, rerun.stderr[-2000:]
