"""Stage `export`: the SFT and DPO checkpoints as Hugging Face model directories (exports/sft/, exports/dpo/):
config.json, model.safetensors, generation_config.json (evaluate's sampling), tokenizer files and a model card
with the data, the training settings and each checkpoint's evaluation numbers; for a model with RoPE or the copy
head (the default), also its modeling code (PicoForCausalLM, loaded with trust_remote_code=True).

A checkpoint no architecture represents exactly (an LSTM or k-gram model, a setting the mapping does not know)
gets a directory holding only README.md that says why, and a warning: a `dvc exp run -S model.type=lstm`
comparison still runs to the end. `pico export` on such a checkpoint is an error.
"""

from __future__ import annotations

import logging
import sys

from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this copy's pico: queued exps run in temp copies
from pico.checkpoint import load_checkpoint
from pico.config import load_params
from pico.errors import ExportError
from pico.export import export_files, not_exported_card, write_export
from pico.io import read_json
from pico.sampling import SamplingConfig
from pico.stage import run_stage, stage_args
from pico.tokenizer import load_tokenizer

log = logging.getLogger("export")


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__, ["sft", "dpo", "tokenizer", "dataset", "evaluation", "sft-out", "dpo-out"], argv)
    sampling = SamplingConfig.of(load_params(args.params).evaluate)
    tok = load_tokenizer(args.tokenizer)
    dataset, evaluation = read_json(args.dataset), read_json(args.evaluation)
    exports = {}
    for name, path, out in (("sft", args.sft, args.sft_out), ("dpo", args.dpo, args.dpo_out)):  # both checked first
        ckpt = load_checkpoint(path, tokenizer_hash=tok.hash)
        try:
            exports[out] = export_files(name, ckpt.model, ckpt.meta, tok, sampling, dataset,
                                        evaluation.get(name) if isinstance(evaluation, dict) else None, source=path)
        except ExportError as e:
            log.warning("not exported: %s", e)
            exports[out] = {"README.md": not_exported_card(name, str(e))}
    for out, files in exports.items():
        write_export(out, files)
        log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
