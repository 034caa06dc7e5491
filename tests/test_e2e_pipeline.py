"""The real pipeline through DVC, on tiny params, in a temp git repo."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pipeline import dvc, ran_stages, set_params

pytestmark = pytest.mark.e2e


def test_repro_runs_every_stage_and_writes_outputs(built):
    repo, proc = built
    assert set(ran_stages(proc)) == {"prepare", "tokenizer", "generate", "pretrain", "sft", "dpo", "evaluate", "export",
                                   "bundle"}
    for rel in ["data/prepared/train.txt", "data/prepared/val.txt", "data/tokenizer/tokenizer.json",
                "data/tokens/train.bin", "data/tokens/val.bin", "checkpoints/base.pt",
                "plots/pretrain/train.csv", "plots/pretrain/val.csv", "data/sft/train.jsonl", "data/sft/test.jsonl",
                "data/dpo/train.jsonl", "data/dpo/valid.jsonl", "data/dataset.json", "metrics/generate.json",
                "checkpoints/sft.pt", "checkpoints/dpo.pt", "checkpoints/dpo_reference.pt", "metrics/sft.json",
                "metrics/dpo.json", "plots/sft/train.csv", "plots/dpo/train.csv", "plots/dpo/val.csv"]:
        assert (repo / rel).is_file(), rel
    prepare = json.loads((repo / "metrics/prepare.json").read_text())
    assert prepare["train"]["stories"] == 400 and prepare["val"]["stories"] == 60
    assert prepare["source"]["own_valid_split"] is True
    pretrain = json.loads((repo / "metrics/pretrain.json").read_text())
    assert pretrain["val_loss"] < pretrain["unigram_val_loss"]  # it learned more than word frequencies
    assert pretrain["steps"] == 60 and pretrain["val_bpb"] > 0
    ckpt = torch.load(repo / "checkpoints/base.pt", weights_only=True)
    assert ckpt["format"] == "pico-checkpoint" and ckpt["model"]["d_model"] == 32
    assert not (repo / "checkpoints/resume/pretrain.pt").exists()  # removed once the stage finished
    sft = json.loads((repo / "metrics/sft.json").read_text())
    assert sft["train_rows"]["kept"] == 24 and sft["steps"] == 6
    dpo = json.loads((repo / "metrics/dpo.json").read_text())
    for name in ["val_loss", "val_rewards/chosen", "val_rewards/rejected", "val_rewards/margins",
                 "val_rewards/accuracies", "val_logps/chosen", "val_logps/rejected"]:
        assert name in dpo
    header = (repo / "plots/dpo/train.csv").read_text().splitlines()[0].split(",")
    assert header[:8] == ["step", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                          "rewards/accuracies", "logps/chosen", "logps/rejected"]
    sft_ckpt = torch.load(repo / "checkpoints/sft.pt", weights_only=True)
    assert sft_ckpt["stage"] == "sft" and len(sft_ckpt["parent"]) == 64


def test_evaluate_scores_every_checkpoint(built):
    repo, _ = built
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(metrics) == {"base", "sft", "dpo", "style_judge", "checker", "precision"}
    for name in ("base", "sft", "dpo"):
        for split in ("unseen_", "seen_"):
            for key in ("pass_all", "pass_all_lo", "pass_all_hi", "pass_taboo_present", "pass_taboo_present_lo",
                        "pass_fluent_hi", "style_score", "repeated_4gram_rate", "distinct_3"):
                assert split + key in metrics[name], (name, split + key)
            assert metrics[name][f"{split}pass_all_lo"] <= metrics[name][f"{split}pass_all"]
        for key in ("sft_test_loss", "sft_test_unseen_loss", "pref_acc_logp", "pref_acc_logp_norm", "val_bpb"):
            assert key in metrics[name], (name, key)
    # implicit-reward accuracy only for the checkpoint DPO trained, with the beta it recorded
    assert "dpo_test_pref_acc" in metrics["dpo"] and "dpo_test_pref_acc" not in metrics["sft"]
    assert "dpo_test_reward_margin" not in metrics["base"]
    assert metrics["checker"]["checker_adversarial_pass_rate"] == 0.0
    assert metrics["checker"]["checker_reference_pass_rate"] >= 0.95
    for split in ("test_unseen", "test"):
        records = [json.loads(x) for x in (repo / f"eval/generations_{split}.jsonl").read_text().splitlines()]
        assert len(records) == 3 * 8  # n_generations of the 8 rows of each split, for each checkpoint
        for r in records:
            assert {"prompt", "response", "checkpoint", "temperature", "top_p", "max_new_tokens", "checks"} <= set(r)
        prompts = {(r["index"], r["prompt"]) for r in records}
        assert len(prompts) == 8  # the same prompts for every checkpoint
        summary = json.loads((repo / f"eval/summary_{split}.json").read_text())
        assert set(summary) == {"base", "sft", "dpo"} and "most_frequent_failures" in summary["dpo"]
    comparisons = json.loads((repo / "eval/comparisons.json").read_text())
    assert set(comparisons) == {"sft vs base", "dpo vs sft", "dpo vs base"}
    d = comparisons["dpo vs sft"]["test_unseen"]
    assert d["n"] == 8 and d["lo"] <= d["diff"] <= d["hi"] and 0 <= d["p_value"] <= 1
    header = (repo / "plots/evaluate/checkpoints.csv").read_text().splitlines()[0]
    assert header.startswith("checkpoint,unseen_pass_all")


def test_bundle_is_complete_and_renders_offline(built, tmp_path):
    from browser import dump_dom, images_ok, screenshot

    repo, _ = built
    results = repo / "results"
    for rel in ["README.md", "report.html", "figures/headline.png", "figures/summary.png", "figures/checkpoint_bars.png",
                "figures/training_curves.png", "figures/check_pass_rates.png", "tables/checkpoint_metrics.csv",
                "tables/checkpoint_metrics.md", "samples/generations.md", "samples/passing.md", "run_snapshot/params.yaml",
                "run_snapshot/dvc.lock", "run_snapshot/experiment_config.yaml", "run_snapshot/metrics/evaluate.json",
                "run_snapshot/dataset.json"]:
        assert (results / rel).is_file(), rel
    readme = (results / "README.md").read_text()
    assert "```mermaid" in readme and "pretrain --> sft" in readme and "sft --> dpo" in readme
    import yaml

    config = yaml.safe_load((results / "run_snapshot/experiment_config.yaml").read_text())
    assert {"timestamp", "experiment", "git", "command", "model", "data", "hyperparameters", "libraries",
            "device", "environment"} <= set(config)
    assert config["experiment"]["purpose"] == "baseline_comparison"
    assert config["libraries"]["torch"].startswith("2.")
    samples = (results / "samples/generations.md").read_text()
    assert samples.count("### base") == samples.count("### dpo") >= 1
    assert (results / "samples/passing.md").read_text().startswith("# Unseen specs whose dpo story passes every check")
    ok, total = images_ok(dump_dom(results / "report.html"))
    assert total == 5 and ok == total
    png = screenshot(results / "report.html", tmp_path / "shot.png")
    from PIL import Image

    pixels = Image.open(png).convert("L").getextrema()
    assert pixels[0] < 100 < pixels[1]  # not a blank page


def test_pico_compare_inside_the_repo(built):
    from pipeline import run, BIN

    repo, _ = built
    out = run(repo, str(BIN / "pico"), "compare", "base", "dpo").stdout
    assert "sft_test_loss" in out and "Average improvement" in out


def test_nothing_to_do_after_repro(repo_copy):
    status = dvc(repo_copy, "status", "--json")
    assert json.loads(status.stdout) == {}
    assert ran_stages(dvc(repo_copy, "repro")) == []


def test_pretrain_param_change_reruns_only_pretrain_and_downstream(repo_copy):
    set_params(repo_copy, {"pretrain": {"lr": 0.003}})
    ran = ran_stages(dvc(repo_copy, "repro"))
    assert "pretrain" in ran
    assert "prepare" not in ran and "tokenizer" not in ran


def test_generate_param_change_does_not_rerun_pretraining(repo_copy):
    set_params(repo_copy, {"generate": {"pair_difficulty": "hard"}})
    ran = ran_stages(dvc(repo_copy, "repro"))
    assert "generate" in ran
    assert not {"prepare", "tokenizer", "pretrain"} & set(ran)
    generated = json.loads((repo_copy / "metrics/generate.json").read_text())
    assert "wholesome" not in generated["dpo"]["train"]["pair_kinds"]
    assert generated["sft"]["train"]["answer_tokens"]["max"] > 0  # token stats with the project tokenizer


def test_dpo_beta_experiment_reruns_only_dpo_and_downstream(repo_copy):
    proc = dvc(repo_copy, "exp", "run", "-S", "dpo.beta=0.2")
    ran = ran_stages(proc)
    assert ran[0] == "dpo"
    assert not {"prepare", "tokenizer", "generate", "pretrain", "sft"} & set(ran)
    assert "reusing reference log-probs" in proc.stdout + proc.stderr
    assert "reusing the SFT model's" in proc.stdout + proc.stderr  # beta does not change the on-policy samples


def test_bad_dpo_params_fail_naming_the_key(repo_copy):
    before = (repo_copy / "checkpoints/dpo.pt").read_bytes()
    for key, value in [("beta", 0), ("label_smoothing", 0.5), ("loss_type", "hinge")]:
        set_params(repo_copy, {"dpo": {"beta": 0.1, "label_smoothing": 0.0, "loss_type": "sigmoid", key: value}})
        proc = dvc(repo_copy, "repro", check=False)
        assert proc.returncode != 0 and f"dpo.{key}" in proc.stdout + proc.stderr
    assert (repo_copy / "checkpoints/dpo.pt").read_bytes() == before


def test_metrics_and_plots_are_readable_by_dvc(repo_copy):
    shown = json.loads(dvc(repo_copy, "metrics", "show", "--json").stdout)
    flat = json.dumps(shown)
    assert "val_bpb" in flat and "val_bytes_per_token" in flat
    plots = dvc(repo_copy, "plots", "show", "--json")
    assert "plots/pretrain/val.csv" in plots.stdout or "Pretrain" in plots.stdout


def test_bad_param_fails_fast_naming_the_key_and_touches_nothing(repo_copy):
    before = (repo_copy / "checkpoints/base.pt").read_bytes()
    set_params(repo_copy, {"pretrain": {"lr": -1}})
    proc = dvc(repo_copy, "repro", check=False)
    assert proc.returncode != 0
    assert "pretrain.lr" in proc.stdout + proc.stderr
    assert (repo_copy / "checkpoints/base.pt").read_bytes() == before


@pytest.mark.parametrize("model_type", ["lstm", "kgram_mlp"])
def test_every_model_type_trains_and_evaluates_through_the_same_stages(repo_copy, model_type):
    set_params(repo_copy, {"model": {"type": model_type}})
    ran = ran_stages(dvc(repo_copy, "repro", "evaluate"))
    assert ran == ["pretrain", "sft", "dpo", "evaluate"]
    ckpt = torch.load(repo_copy / "checkpoints/dpo.pt", weights_only=True)
    assert ckpt["model"]["type"] == model_type
    metrics = json.loads((repo_copy / "metrics/evaluate.json").read_text())
    pretrain = json.loads((repo_copy / "metrics/pretrain.json").read_text())
    assert pretrain["val_loss"] < math.log(1024)  # better than uniform over the vocabulary (60 tiny steps)
    assert metrics["dpo"]["unseen_n_words"] > 0  # it generated, in equal-length batches with its own cache


def test_bundle_is_byte_identical_with_source_date_epoch(repo_copy):
    """Two builds of the same run with SOURCE_DATE_EPOCH set give the same files, byte for byte; a bad value
    fails naming it and leaves the bundle as it was."""
    from pipeline import stage

    def snapshot() -> dict:
        results = repo_copy / "results"
        return {str(p.relative_to(results)): p.read_bytes() for p in sorted(results.rglob("*")) if p.is_file()}

    epoch = {"SOURCE_DATE_EPOCH": "1764720000"}
    assert stage(repo_copy, "bundle", check=True, extra_env=epoch).returncode == 0
    first = snapshot()
    assert "2025-12-03T00:00:00+00:00" in first["run_snapshot/experiment_config.yaml"].decode()
    assert stage(repo_copy, "bundle", check=True, extra_env=epoch).returncode == 0
    second = snapshot()
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
    bad = stage(repo_copy, "bundle", extra_env={"SOURCE_DATE_EPOCH": "tomorrow"})
    assert bad.returncode != 0 and "SOURCE_DATE_EPOCH='tomorrow'" in bad.stderr
    assert snapshot() == second
