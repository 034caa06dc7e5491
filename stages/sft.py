"""Stage `sft`: prompt-masked supervised fine-tuning of the base model on data/sft (-> checkpoints/sft.pt)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

from pico.checkpoint import load_checkpoint
from pico.config import load_params
from pico.finetune import BucketedBatches, encode_sft_rows, sft_batch, steps_for
from pico.io import read_jsonl
from pico.losses import lm_loss
from pico.stage import file_digest, fingerprint, finish_training, run_stage
from pico.tokenizer import load_tokenizer
from pico.train import dist_info, evaluate_loss, is_main_process, resolve_device, train

log = logging.getLogger("sft")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", default="checkpoints/base.pt")
    ap.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    ap.add_argument("--train", default="data/sft/train.jsonl")
    ap.add_argument("--valid", default="data/sft/valid.jsonl")
    ap.add_argument("--out", default="checkpoints/sft.pt")
    ap.add_argument("--metrics", default="metrics/sft.json")
    ap.add_argument("--plots-dir", default="plots/sft")
    ap.add_argument("--resume", default="checkpoints/resume/sft.pt")
    args = ap.parse_args(argv)
    cfg = load_params(args.params).sft
    device = resolve_device(cfg.device)
    started = time.perf_counter()

    tok = load_tokenizer(args.tokenizer)
    base = load_checkpoint(args.base, tokenizer_hash=tok.hash)
    if cfg.max_len > base.model_cfg.max_seq_len:
        raise_context(cfg.max_len, base.model_cfg.max_seq_len)
    train_rows = read_jsonl(args.train, required=("prompt", "response"))
    valid_rows = read_jsonl(args.valid, required=("prompt", "response"))
    train_enc, train_report = encode_sft_rows(tok, train_rows, cfg.max_len, cfg.truncation)
    valid_enc, valid_report = encode_sft_rows(tok, valid_rows, cfg.max_len, cfg.truncation)
    require_rows(train_enc, args.train, "sft")
    require_rows(valid_enc, args.valid, "sft")

    def batches(encoded):
        return BucketedBatches([len(e.ids) for e in encoded], cfg.batch_size, cfg.seed,
                               lambda idx: sft_batch([encoded[i] for i in idx]))

    train_batches, valid_batches = batches(train_enc), batches(valid_enc).all_in_order()
    micro_per_step = cfg.grad_accum * dist_info()[1]
    total = steps_for(train_batches.batches_per_epoch, micro_per_step, cfg.epochs, cfg.max_steps)

    def evaluate(model):
        return {"val_loss": evaluate_loss(model, valid_batches, lm_loss, device)["val_loss"]}

    model = base.model
    run_id = fingerprint("sft", dataclasses.asdict(cfg), file_digest(args.base), file_digest(args.train),
                         file_digest(args.valid))
    result = train(model, cfg, total_steps=total, get_batch=lambda s, m: train_batches.micro(s * micro_per_step + m),
                   loss_fn=lm_loss, evaluate=evaluate, keep_best=True, resume_path=args.resume,
                   fingerprint=run_id, desc="sft")
    if not is_main_process():  # under torchrun every rank trained in lockstep; rank 0 writes
        return 0
    final = evaluate(model)  # the kept (best) weights
    metrics = {
        "val_loss": round(final["val_loss"], 5),
        "train_loss": round(evaluate_loss(model, batches(train_enc).all_in_order(), lm_loss, device,
                                          prefix="train_")["train_loss"], 5),
        "best_step": result.best_step,
        "steps": result.steps_done,
        "planned_steps": total,
        "stopped_early": result.stopped_early,
        "train_rows": train_report.as_dict(),
        "valid_rows": valid_report.as_dict(),
    }
    finish_training(model=model, model_cfg=base.model_cfg, tokenizer_hash=tok.hash, stage="sft", result=result,
                    metrics=metrics, started=started, out=args.out, metrics_path=args.metrics,
                    plots_dir=args.plots_dir, resume=args.resume, parent=args.base,
                    train_columns=["step", "loss", "lr", "grad_norm"], val_columns=["step", "val_loss"])
    log.info("val loss %.4f (best at step %d of %d)", metrics["val_loss"], result.best_step, result.steps_done)
    return 0


def raise_context(max_len: int, context: int) -> None:
    from pico.errors import ParamsError

    raise ParamsError("sft.max_len", f"is {max_len} but the base model's context is {context}")


def require_rows(encoded: list, path: str, section: str) -> None:
    from pico.errors import DataError

    if not encoded:
        raise DataError(f"{path}: no row fits in {section}.max_len; raise it or shorten the data")


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
