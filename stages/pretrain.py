"""Stage `pretrain`: pack the splits into uint16 token files and train the base LM (checkpoints/base.pt)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this copy's pico: queued exps run in temp copies
from pico.config import load_params
from pico.data import pack_tokens, save_tokens
from pico.device import check_batch_fits, is_main_process, resolve_device
from pico.prompt import check_context, longest_prompt_tokens
from pico.recipes import write_trained
from pico.recipes.pretrain import pretrain
from pico.stage import run_stage, stage_args
from pico.tinystories import read_prepared
from pico.tokenizer import load_tokenizer

log = logging.getLogger("pretrain")


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__, ["train", "val", "tokenizer", "tokens-dir", "out", "metrics", "plots-dir"], argv,
                      resume="checkpoints/resume/pretrain.pt")
    params = load_params(args.params)
    device = resolve_device(params.pretrain.device)  # fail on an unavailable device before any work
    cfg, model = params.pretrain, params.model
    check_batch_fits("pretrain.batch_size", cfg.batch_size, cfg.seq_len or model.max_seq_len, model.d_model,
                     model.n_layer, device)
    started = time.perf_counter()
    tok = load_tokenizer(args.tokenizer)
    # before training a context that SFT, DPO and evaluate could not use: every prompt `generate` writes must fit
    check_context(model.max_seq_len, longest_prompt_tokens(tok) + 1, "the prompts `generate` writes (+ 1 story token)")
    train_tokens, val_tokens = (pack_tokens(tok, read_prepared(path)) for path in (args.train, args.val))
    if is_main_process():
        save_tokens(Path(args.tokens_dir) / "train.bin", train_tokens)
        save_tokens(Path(args.tokens_dir) / "val.bin", val_tokens)
    trained = pretrain(params.pretrain, params.model, tok, train_tokens, val_tokens, Path(args.resume))
    if is_main_process():  # under torchrun every rank trained in lockstep; rank 0 writes
        metrics = write_trained(trained, stage="pretrain", tokenizer_hash=tok.hash, started=started, out=args.out,
                                metrics_path=args.metrics, plots_dir=args.plots_dir, resume=args.resume)
        log.info("val loss %.4f (unigram %.4f), val bpb %.4f, %.0f tok/s", metrics["val_loss"],
                 metrics["unigram_val_loss"], metrics["val_bpb"], metrics["speed"]["tokens_per_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
