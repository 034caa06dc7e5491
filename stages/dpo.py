"""Stage `dpo`: Direct Preference Optimization of the SFT model on data/dpo, its pairs rebuilt from the model's own
stories (`dpo.onpolicy`), against the frozen SFT reference, whose log-probs are computed once and cached
(-> checkpoints/dpo.pt, checkpoints/dpo_reference.pt, checkpoints/dpo_samples.jsonl); with `dpo.onpolicy.rounds` > 1,
iterative DPO (pico/recipes/onpolicy.py)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this copy's pico: queued exps run in temp copies
import pico.model
import pico.onpolicy
import pico.sampling
from pico.checkpoint import load_checkpoint
from pico.config import load_params
from pico.device import check_batch_fits, is_main_process, resolve_device
from pico.errors import DataError
from pico.io import read_jsonl, sha256_file, write_jsonl
from pico.recipes import fingerprint, write_trained
from pico.recipes.onpolicy import onpolicy_dpo, round_resume
from pico.stage import run_stage, stage_args
from pico.tokenizer import load_tokenizer

log = logging.getLogger("dpo")


def read_earlier(path: str) -> list[dict]:
    """The records of the last run's samples file; none when it is missing or unreadable (it is only a cache)."""
    try:
        return read_jsonl(path) if Path(path).exists() else []
    except DataError as e:
        log.warning("not reusing %s: %s", path, e)
        return []


def samples_fingerprint(cfg, inputs_id: tuple) -> str:
    """What the on-policy stories depend on: the SFT model and rows (`inputs_id`), the sampling settings, and the
    code that draws them, so that a change to the sampler draws them again instead of reusing the last run's."""
    sampler_code = tuple(sha256_file(m.__file__) for m in (pico.model, pico.onpolicy, pico.sampling))
    return fingerprint("dpo-samples", *inputs_id, cfg.onpolicy.sampling_settings(), cfg.seed, cfg.device,
                       cfg.precision, *sampler_code)


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__, ["sft", "tokenizer", "train", "valid", "out", "reference-out", "samples-out", "metrics",
                                "plots-dir"],
                      argv, resume="checkpoints/resume/dpo.pt")
    cfg = load_params(args.params).dpo
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    tok = load_tokenizer(args.tokenizer)
    sft_ckpt = load_checkpoint(args.sft, tokenizer_hash=tok.hash)
    model = sft_ckpt.model_cfg  # what is trained: the parent checkpoint's shape (chosen and rejected: two rows a pair)
    check_batch_fits("dpo.batch_size", 2 * cfg.batch_size, cfg.max_len, model.d_model, model.n_layer, device)
    rows = [read_jsonl(path, texts=("prompt", "chosen", "rejected")) for path in (args.train, args.valid)]
    inputs_id = tuple(sha256_file(path) for path in (args.sft, args.train, args.valid))
    # on-policy pairs: the model's own stories on these prompts, judged by the checker, in dpo.onpolicy.rounds
    # rounds (pico/recipes/onpolicy.py); the stories of the last run are reused while what draws them stays (a beta
    # sweep reuses round 1's)
    samples_id = samples_fingerprint(cfg, inputs_id)
    trained, samples = onpolicy_dpo(cfg, sft_ckpt, tok, {"train": rows[0], "valid": rows[1]},
                                    earlier=read_earlier(args.samples_out), samples_id=samples_id, inputs_id=inputs_id,
                                    reference_cache=Path(args.reference_out), resume=Path(args.resume))
    if is_main_process():
        # written with the other outputs, never before them: a killed run leaves every output as it was
        write_jsonl(args.samples_out, samples)
        metrics = write_trained(trained, stage="dpo", tokenizer_hash=tok.hash, started=started, out=args.out,
                                metrics_path=args.metrics, plots_dir=args.plots_dir, resume=args.resume,
                                parent=args.sft)
        for r in range(2, cfg.onpolicy.rounds + 1):
            round_resume(Path(args.resume), r).unlink(missing_ok=True)
        log.info("val loss %.4f, val reward accuracy %.3f, margin %.3f", metrics["val_loss"],
                 metrics["val_rewards/accuracies"], metrics["val_rewards/margins"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
