"""Stage `sft`: prompt-masked supervised fine-tuning of the base model on data/sft (-> checkpoints/sft.pt)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this copy's pico: queued exps run in temp copies
from pico.checkpoint import load_checkpoint
from pico.config import load_params
from pico.device import check_batch_fits, is_main_process, resolve_device
from pico.io import read_jsonl, sha256_file
from pico.prompt import check_context, longest_example_tokens
from pico.recipes import write_trained
from pico.recipes.finetune import sft
from pico.stage import run_stage, stage_args
from pico.tokenizer import load_tokenizer

log = logging.getLogger("sft")


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__, ["base", "tokenizer", "train", "valid", "out", "metrics", "plots-dir"], argv,
                      resume="checkpoints/resume/sft.pt")
    cfg = load_params(args.params).sft
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    tok = load_tokenizer(args.tokenizer)
    base = load_checkpoint(args.base, tokenizer_hash=tok.hash)
    model = base.model_cfg  # what is trained: the parent checkpoint's shape
    check_batch_fits("sft.batch_size", cfg.batch_size, cfg.max_len, model.d_model, model.n_layer, device)
    rows = [read_jsonl(path, texts=("prompt", "response")) for path in (args.train, args.valid)]
    longest = longest_example_tokens(tok, rows[0] + rows[1])[1]
    check_context(model.max_seq_len, longest, "the SFT examples (prompt + story + end token)")
    inputs_id = tuple(sha256_file(path) for path in (args.base, args.train, args.valid))
    trained = sft(cfg, base, tok, *rows, inputs_id=inputs_id, resume=Path(args.resume))
    if is_main_process():
        metrics = write_trained(trained, stage="sft", tokenizer_hash=tok.hash, started=started, out=args.out,
                                metrics_path=args.metrics, plots_dir=args.plots_dir, resume=args.resume,
                                parent=args.base)
        log.info("val loss %.4f (best at step %d of %d)", metrics["val_loss"], metrics["best_step"], metrics["steps"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
