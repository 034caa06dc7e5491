"""Stage `dpo`: Direct Preference Optimization of the SFT model on data/dpo, against the frozen SFT
reference, whose log-probs are computed once and cached (-> checkpoints/dpo.pt, checkpoints/dpo_reference.pt)."""

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
from pico.onpolicy import onpolicy_pairs
from pico.prompt import check_context, longest_example_tokens
from pico.recipes import fingerprint, write_trained
from pico.recipes.finetune import dpo
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
    # on-policy pairs: the SFT model's own stories on these prompts, judged by the checker (pico/onpolicy.py);
    # the stories of the last run are reused while the model, rows, sampling settings and sampler stay (a beta sweep)
    samples_id = samples_fingerprint(cfg, inputs_id)
    earlier = [r for r in read_earlier(args.samples_out) if r.get("fingerprint") == samples_id]
    splits, samples, onpolicy = onpolicy_pairs(cfg, sft_ckpt, tok, {"train": rows[0], "valid": rows[1]}, earlier)
    if onpolicy:
        rows = [splits["train"], splits["valid"]]
        inputs_id += (fingerprint(rows),)
    longest = longest_example_tokens(tok, rows[0] + rows[1])[1]
    check_context(model.max_seq_len, longest, "the DPO examples (prompt + story + end token)")
    trained = dpo(cfg, sft_ckpt, tok, *rows, reference_cache=Path(args.reference_out), inputs_id=inputs_id,
                          resume=Path(args.resume))
    if is_main_process():
        if onpolicy:
            trained.metrics["onpolicy"] = onpolicy
        # written with the other outputs, never before them: a killed run leaves every output as it was
        write_jsonl(args.samples_out, [{**r, "fingerprint": samples_id} for r in samples])
        metrics = write_trained(trained, stage="dpo", tokenizer_hash=tok.hash, started=started, out=args.out,
                                metrics_path=args.metrics, plots_dir=args.plots_dir, resume=args.resume,
                                parent=args.sft)
        log.info("val loss %.4f, val reward accuracy %.3f, margin %.3f", metrics["val_loss"],
                 metrics["val_rewards/accuracies"], metrics["val_rewards/margins"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
