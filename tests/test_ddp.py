"""DistributedDataParallel on CPU (gloo): 2 processes give the single-process result for the same global batch."""

from __future__ import annotations

import json

import pytest

from pipeline import BIN, clone_repo, run, set_params, stage, stage_cmd

pytestmark = pytest.mark.e2e


def _metrics(repo, name):
    m = json.loads((repo / f"metrics/{name}.json").read_text())
    m.pop("speed")
    return m


@pytest.mark.parametrize("stage_name,section", [("pretrain", {"batch_size": 4, "max_steps": 8, "eval_every": 4,
                                                             "save_every": 4, "seq_len": 64}),
                                                ("sft", {"batch_size": 2, "max_steps": 4, "eval_every": 2,
                                                         "save_every": 2})])
def test_two_gloo_processes_match_one_process_with_accumulation(built, tmp_path, stage_name, section):
    single = clone_repo(built[0], tmp_path / "single")
    set_params(single, {stage_name: {**section, "grad_accum": 2}})
    proc = stage(single, stage_name)
    assert proc.returncode == 0, proc.stderr[-2000:]

    ddp = clone_repo(built[0], tmp_path / "ddp")
    set_params(ddp, {stage_name: {**section, "grad_accum": 1}})
    run(ddp, str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", *stage_cmd(ddp, stage_name)[1:])
    a, b = _metrics(single, stage_name), _metrics(ddp, stage_name)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
        else:
            assert b[key] == a[key], key
