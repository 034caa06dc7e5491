"""benchmarks/scaling_study.py: FLOPs, rows and outputs from a `dvc exp show --json` shaped record."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("scaling_study", REPO / "benchmarks" / "scaling_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def experiment(name: str, steps: int, d_model: int, unseen: float) -> dict:
    params = {"experiment": {"purpose": "scaling_study"}, "model": {"d_model": d_model, "n_layer": 4},
              "pretrain": {"max_steps": steps}, "sft": {"epochs": 10, "max_steps": 0}, "dpo": {"epochs": 1},
              "generate": {"pair_difficulty": "easy", "sft_splits": {"train": 256}}}
    evaluate = {c: {"unseen_pass_all": unseen, "unseen_pass_all_lo": unseen / 2, "unseen_pass_all_hi": unseen + .1,
                    "seen_pass_all": unseen} for c in ("sft", "dpo")}
    metrics = {"metrics/pretrain.json": {"data": {"params": 1000, "tokens_seen": steps * 10, "val_bpb": 1.5}},
               "metrics/sft.json": {"data": {"tokens_seen": 500}}, "metrics/dpo.json": {"data": {"tokens_seen": 200}},
               "metrics/evaluate.json": {"data": evaluate}}
    return {"name": name, "revs": [{"rev": name * 5, "name": name, "data": {"params": {"params.yaml": {"data": params}},
                                                                           "metrics": metrics}}]}


def test_rows_flops_and_outputs(tmp_path):
    m = load_script()
    show = [{"rev": "workspace", "data": {"params": {"params.yaml": {"data": {"experiment": {"purpose": "x"}}}}}},
            {"rev": "abc", "data": {}, "experiments": [experiment("small", 100, 64, 0.1),
                                                       experiment("large", 1000, 192, 0.5)]}]
    runs = [r for r in m.parse_exp_show(show) if r.purpose == "scaling_study"]
    rows = m.rows_of(runs)
    assert [r["run"] for r in rows] == ["small", "large"]  # sorted by compute
    small = rows[0]
    assert small["sft_flops"] == 6 * 1000 * (100 * 10 + 500)
    assert small["dpo_flops"] == 6 * 1000 * (100 * 10 + 500 + 200)
    assert "| large | 1,000 | 192 x 4 | 1000 |" in m.markdown(rows)
    path = tmp_path / "show.json"
    path.write_text(json.dumps(show))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling_study.py"), "--input", str(path),
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scaling_study.png").stat().st_size > 1000
    assert json.loads((tmp_path / "scaling_study.json").read_text())[1]["dpo_unseen_pass_all"] == 0.5
    assert "| small |" in (tmp_path / "scaling_study.md").read_text()


def test_plot_draws_one_line_per_model_width(tmp_path):
    m = load_script()
    show = [{"rev": "abc", "data": {}, "experiments": [experiment("a", 100, 128, 0.1), experiment("b", 300, 128, 0.2),
                                                       experiment("c", 100, 192, 0.3)]}]
    rows = m.rows_of(m.parse_exp_show(show))
    assert m.plot(rows, tmp_path / "p.png", "t") == ["SFT, d_model 192", "DPO, d_model 192",
                                                     "SFT, d_model 128", "DPO, d_model 128"]
    one_width = [r for r in rows if r["model.d_model"] == 128]
    assert m.plot(one_width, tmp_path / "q.png", "t") == ["SFT", "DPO"]


def test_unfinished_runs_are_left_out_and_runs_can_be_chosen(tmp_path):
    """A queued or running experiment shows its baseline's metrics in `dvc exp show`: never a point."""
    running = experiment("running", 300, 64, 0.9)
    running["executor"] = {"state": "running"}
    done = experiment("done", 100, 64, 0.1)
    done["executor"] = {"state": "success"}
    show = [{"rev": "abc", "data": {}, "experiments": [done, running, experiment("other", 200, 64, 0.2)]}]
    path = tmp_path / "show.json"
    path.write_text(json.dumps(show))

    def points(*extra):
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling_study.py"), "--input", str(path),
                               "--out-dir", str(tmp_path), *extra], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        return [r["run"] for r in json.loads((tmp_path / "scaling_study.json").read_text())]

    assert points() == ["done", "other"]
    assert points("--runs", "other") == ["other"]


def test_recheck_scores_the_stored_stories_with_todays_checker(monkeypatch):
    """--recheck replaces the recorded rates by today's checker's verdicts on the run's own generations."""
    import dvc.api

    from pico.checker_fixtures import load_checker_fixtures

    fixtures = load_checker_fixtures()
    good = next(f for f in fixtures if f["kind"] == "reference_template")
    bad = next(f for f in fixtures if f["kind"] == "stutter")
    m = load_script()
    runs = [r for r in m.parse_exp_show([{"rev": "abc", "data": {}, "experiments": [experiment("one", 100, 64, 0.9)]}])
            if r.purpose == "scaling_study"]

    def stored(path, rev):
        assert rev == runs[0].rev and path.startswith("eval/generations_")
        recs = [{"checkpoint": c, "response": f["story"], "spec": f["spec"]} for c, f in
                (("sft", bad), ("sft", bad), ("dpo", good), ("dpo", bad))]
        return "\n".join(json.dumps(r) for r in recs) + "\n"

    monkeypatch.setattr(dvc.api, "read", stored)
    row = m.recheck(m.rows_of(runs), runs)[0]
    assert row["sft_unseen_pass_all"] == 0.0 and row["dpo_unseen_pass_all"] == 0.5
    assert row["dpo_unseen_pass_all_lo"] < 0.5 < row["dpo_unseen_pass_all_hi"]
    assert row["dpo_seen_pass_all"] == 0.5 and row["rechecked"]
