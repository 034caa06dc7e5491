#!/usr/bin/env bash
# A second on-policy DPO round on a finished run's checkpoints, outside DVC (RESEARCH.md finding 66): the dpo stage
# run again with the run's DPO model as its "SFT" model (so it samples that model, rebuilds the pairs from the
# template rows and trains it on against itself frozen) and dpo.seed + 1, then the evaluate stage with that model as
# the DPO checkpoint. `dpo.onpolicy.rounds: 2` does the same steps inside the dpo stage.
#
#   benchmarks/dpo_round2.sh DIR   # DIR holds params.yaml, base.pt, sft.pt and dpo.pt of one run; writes DIR/eval2/
set -euo pipefail
D=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
python - "$D/params.yaml" "$D/params_r2.yaml" <<'PY'
import sys, yaml
src, dst = sys.argv[1:]
text = open(src).read()
i = text.index("\ndpo:\n")
j = text.index("\n  seed: ", i)
k = text.index("\n", j + 1)
seed = int(text[j + 9:k].split()[0])
out = text[:j] + f"\n  seed: {seed + 1}" + text[k:]
a, b = yaml.safe_load(text), yaml.safe_load(out)
assert b["dpo"]["seed"] == a["dpo"]["seed"] + 1
b["dpo"]["seed"] = a["dpo"]["seed"]
assert a == b, "only dpo.seed may differ"
open(dst, "w").write(out)
PY
python stages/dpo.py --params "$D/params_r2.yaml" --sft "$D/dpo.pt" --tokenizer data/tokenizer/tokenizer.json \
  --train data/dpo/train.jsonl --valid data/dpo/valid.jsonl --out "$D/dpo2.pt" --reference-out "$D/ref2.pt" \
  --samples-out "$D/samples2.jsonl" --metrics "$D/dpo2.json" --plots-dir "$D/plots_dpo2" --resume "$D/resume2.pt"
python stages/evaluate.py --params "$D/params.yaml" --base "$D/base.pt" --sft "$D/sft.pt" --dpo "$D/dpo2.pt" \
  --tokenizer data/tokenizer/tokenizer.json --sft-dir data/sft --dpo-dir data/dpo --val-tokens data/tokens/val.bin \
  --out-dir "$D/eval2" --metrics "$D/evaluate2.json" --plots-dir "$D/plots_eval2"
