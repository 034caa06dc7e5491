"""Experiments on top of DVC: queued sweeps, pico runs, pico compare --rev, plots diff, push/pull."""

from __future__ import annotations

import json
import time

import pytest

from pipeline import BIN, commit_all, dvc, ran_stages, run, set_params

pytestmark = pytest.mark.e2e


def wait_for_queue(repo, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = dvc(repo, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(3)
    raise AssertionError(f"queue did not finish:\n{status}")


@pytest.fixture(scope="module")
def swept(built, tmp_path_factory):
    """Three queued DPO-beta experiments run by `dvc queue start`, on a committed copy of the pipeline."""
    from pipeline import clone_repo

    repo = clone_repo(built[0], tmp_path_factory.mktemp("sweep") / "repo")
    commit_all(repo, "baseline run")
    dvc(repo, "exp", "run", "--queue", "-S", "dpo.beta=0.05,0.2,0.5", "-S", "experiment.purpose=hyperparameter_tuning")
    dvc(repo, "queue", "start")
    status = wait_for_queue(repo)
    assert "Failed" not in status, status
    exps = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    names = [e["name"] for e in exps[1]["experiments"]]
    return repo, names


def pico(repo, *args):
    return run(repo, str(BIN / "pico"), *args)


def test_queued_sweep_runs_every_experiment(swept):
    repo, names = swept
    assert len(names) == 3
    exps = json.loads(dvc(repo, "exp", "show", "--json").stdout)[1]["experiments"]
    betas = sorted(e["revs"][0]["data"]["params"]["params.yaml"]["data"]["dpo"]["beta"] for e in exps)
    assert betas == [0.05, 0.2, 0.5]


def test_pico_runs_groups_by_purpose_and_sorts(swept):
    repo, names = swept
    summary = json.loads(pico(repo, "runs", "--json").stdout)
    assert summary["groups"]["hyperparameter_tuning"] == {"count": 3, "by_model_type": {"transformer": 3}}
    assert summary["groups"]["baseline_comparison"]["count"] == 1
    table = pico(repo, "runs").stdout
    assert "| hyperparameter_tuning | 3 | transformer: 3 |" in table
    detail = json.loads(pico(repo, "runs", "--purpose", "hyperparameter_tuning", "--sort",
                             "dpo.dpo_test_reward_margin", "--json").stdout)["runs"]
    assert {r["name"] for r in detail} == set(names)
    margins = [r["metrics"]["dpo.dpo_test_reward_margin"] for r in detail]
    assert margins == sorted(margins, reverse=True)
    assert "| run | time | rev |" in pico(repo, "runs", "--detail").stdout


def test_compare_two_experiments_through_dvc(swept):
    repo, names = swept
    out = json.loads(pico(repo, "compare", "--rev", names[0], "--rev", names[1], "--json").stdout)
    assert set(out["sections"]) == {"base", "sft", "dpo"}
    rows = {r["metric"]: r for r in out["sections"]["dpo"]["rows"]}
    assert rows["dpo_test_reward_margin"]["a"] != rows["dpo_test_reward_margin"]["b"]
    assert rows["sft_test_loss"]["direction"] == -1
    md = pico(repo, "compare", "--rev", names[0], "--rev", names[1], "dpo").stdout
    assert "### dpo" in md and "Average improvement" in md


def test_metrics_diff_between_experiments_shows_evaluate_per_checkpoint(swept):
    repo, names = swept
    diff = json.loads(dvc(repo, "metrics", "diff", names[0], names[1], "--json").stdout)
    assert "dpo.dpo_test_reward_margin" in diff["metrics/evaluate.json"]


def test_plots_diff_overlays_experiments_and_renders_offline(swept, tmp_path):
    from browser import dump_dom

    repo, names = swept
    out = tmp_path / "plots"
    dvc(repo, "plots", "diff", names[0], names[1], "-o", str(out))
    html = (out / "index.html").read_text()
    assert "cdn.jsdelivr" not in html  # vega is inlined by our template
    dom = dump_dom(out / "index.html")
    for plot in ("dpo_loss", "dpo_margins"):
        assert f'id="{plot}"' in dom
    assert dom.count("<svg") >= 10  # vega-embed drew the charts
    for name in names[:2]:
        assert f">{name}</text>" in dom  # legend entries: one per experiment


def test_purpose_change_reruns_only_bundle(repo_copy):
    set_params(repo_copy, {"experiment": {"purpose": "ablation_study", "description": "why not"}})
    assert ran_stages(dvc(repo_copy, "repro")) == ["bundle"]
    import yaml

    config = yaml.safe_load((repo_copy / "results/run_snapshot/experiment_config.yaml").read_text())
    assert config["experiment"]["purpose"] == "ablation_study"


def test_uncategorized_purpose_warns(repo_copy):
    set_params(repo_copy, {"experiment": {"purpose": "uncategorized"}})
    proc = dvc(repo_copy, "repro")
    assert "experiment.purpose is 'uncategorized'" in proc.stdout + proc.stderr


def test_push_then_pull_into_a_fresh_clone_leaves_nothing_to_do(built, tmp_path):
    from pipeline import clone_repo

    repo = clone_repo(built[0], tmp_path / "repo")
    commit_all(repo, "run")
    dvc(repo, "push")
    assert any((tmp_path / "pico-dvc-remote").rglob("*")), "the default remote is ../pico-dvc-remote"
    other = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(other))
    dvc(other, "pull")
    assert (other / "checkpoints/dpo.pt").read_bytes() == (repo / "checkpoints/dpo.pt").read_bytes()
    assert json.loads(dvc(other, "status", "--json").stdout) == {}
    assert ran_stages(dvc(other, "repro")) == []
