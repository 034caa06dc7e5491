"""The `pico` command for people: play with a checkpoint, compare checkpoints or runs, list runs, export a
checkpoint for Hugging Face `transformers`, serve one over an OpenAI-compatible API.

DVC runs the pipeline; these commands read what it produced.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pico.errors import PicoError


# ----------------------------------------------------------------------------------------------- play
def add_play(sub) -> None:
    p = sub.add_parser("play", help="generate stories from a checkpoint",
                       description="Generate horror stories from a checkpoint. Give a prompt, a prompt file, or "
                                   "spec fields as flags (missing fields are drawn at random with --seed).")
    p.add_argument("--checkpoint", default="checkpoints/dpo.pt")
    p.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="a full prompt (the spec fields are then ignored)")
    src.add_argument("--prompt-file", help="a text file holding one prompt, or a .jsonl file of {\"prompt\": ...} rows")
    for field, flag in [("title", "--title"), ("setting", "--setting"), ("protagonist", "--protagonist"),
                        ("supporting", "--supporting"), ("object", "--object"), ("taboo", "--taboo"),
                        ("twist", "--twist")]:
        p.add_argument(flag, dest=field, help=f"spec field: {field}")
    p.add_argument("--mode", choices=["oneshot", "interactive"], default="oneshot")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=320)
    p.add_argument("--no-repeat-ngram", type=int, default=0, help="forbid repeating any n-gram of this size")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast for the forward passes (auto: where the hardware has native bf16)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts decoded together (with --prompt-file)")
    p.add_argument("--truncate", action="store_true", help="cut an over-long prompt from the left instead of failing")
    p.add_argument("--show-prompt", action="store_true", help="print the prompt before the story")
    p.set_defaults(func=cmd_play)


def _spec_from_args(args, seed: int):
    from pico.spec import FIELDS, Spec, sample_specs

    drawn = sample_specs(1, seed)[0]
    return Spec(**{f: getattr(args, f) if getattr(args, f) is not None else getattr(drawn, f) for f in FIELDS})


def _check_play_flags(args) -> None:
    """Every flag checked before a checkpoint is loaded: sampling flags against the evaluate knobs' ranges (the
    same values are refused in params.yaml and here), spec fields and the prompt for being text at all."""
    from pico.config import EvaluateConfig
    from pico.knobs import check_flag
    from pico.spec import FIELDS

    for name in ("temperature", "top_p", "top_k", "max_new_tokens", "no_repeat_ngram", "seed", "batch_size"):
        check_flag(EvaluateConfig, name, getattr(args, name), "--" + name.replace("_", "-"))
    for name in FIELDS:
        value = getattr(args, name)
        if value is not None and (not value.strip() or "\n" in value or "\r" in value or not _is_text(value)):
            raise PicoError(f"--{name}: must be one line of text (got {value!r:.40}); leave it out to draw one")
    if args.prompt is not None and not args.prompt.strip():
        raise PicoError("--prompt: is empty; give the text to continue, or leave --prompt out to play a drawn spec")
    if args.prompt is not None and not _is_text(args.prompt):
        raise PicoError("--prompt: is not valid UTF-8 text (a byte the terminal could not decode)")


def _is_text(value: str) -> bool:
    """False for strings holding lone surrogates: how Python keeps argv bytes that were not UTF-8."""
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _read_prompt_file(path: Path) -> str:
    """The one prompt a text file holds; a DataError naming the file when it is missing, binary, not UTF-8 or empty."""
    from pico.errors import DataError

    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    if b"\x00" in raw:
        raise DataError(f"{path}: looks binary (holds NUL bytes); give a UTF-8 text file or a .jsonl of prompts")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: prompt file is empty")
    return text


def _fit_prompt(ids: list[int], context: int, max_new: int, truncate: bool, label: str) -> list[int]:
    room = context - 1  # at least one token must be left for the story
    if len(ids) <= room:
        return ids
    if not truncate:
        raise PicoError(f"{label} is {len(ids)} tokens but the model's context is {context} tokens; shorten it "
                        f"or pass --truncate to keep its last {max(room - max_new, 1) if max_new < room else room} tokens")
    keep = max(room - max_new, 1) if max_new < room else room
    return ids[len(ids) - keep:]


def cmd_play(args) -> int:
    import torch

    from pico.checkpoint import load_checkpoint
    from pico.device import resolve_device, resolve_precision
    from pico.prompt import build_prompt, encode_prompt
    from pico.sampling import SamplingConfig, sample
    from pico.tokenizer import load_tokenizer

    _check_play_flags(args)
    device = resolve_device(args.device)
    tok = load_tokenizer(args.tokenizer)
    ckpt = load_checkpoint(args.checkpoint, tokenizer_hash=tok.hash, device=device)
    context = ckpt.model_cfg.max_seq_len
    cfg = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         max_new_tokens=args.max_new_tokens, no_repeat_ngram=args.no_repeat_ngram, seed=args.seed)

    def run(prompts: list[str]) -> list[str]:
        ids = [_fit_prompt(encode_prompt(tok, p), context, args.max_new_tokens, args.truncate,
                           f"prompt {i + 1}" if len(prompts) > 1 else "the prompt") for i, p in enumerate(prompts)]
        with torch.no_grad():
            out = sample(ckpt.model, ids, cfg, tok.eot_id, batch_size=args.batch_size, device=device,
                         dtype=resolve_precision(args.precision, device))
        return [tok.decode(o) for o in out]

    if args.mode == "interactive":
        return _interactive(args, run)
    if args.prompt_file and args.prompt_file.endswith(".jsonl"):
        from pico.io import read_jsonl

        rows = read_jsonl(args.prompt_file, texts=("prompt",))
        for row, story in zip(rows, run([r["prompt"] for r in rows])):
            print(json.dumps({"prompt": row["prompt"], "response": story}, ensure_ascii=False))
        return 0
    if args.prompt_file:
        prompt = _read_prompt_file(Path(args.prompt_file))
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        prompt = build_prompt(_spec_from_args(args, args.seed))
    if args.show_prompt:
        print(prompt)
    print(run([prompt])[0])
    return 0


def _interactive(args, run) -> int:
    from pico.prompt import LABELS, build_prompt
    from pico.spec import Spec, sample_specs

    print("pico play: answer each field (Enter keeps the suggestion), Ctrl-D or 'q' to quit.", file=sys.stderr)
    seed = args.seed
    while True:
        suggestion = sample_specs(1, seed)[0]
        values = {}
        try:
            for key, label in LABELS.items():
                given = getattr(args, key) or getattr(suggestion, key)
                answer = input(f"{label} [{given}]: ").strip()
                if answer.lower() in ("q", "quit", "exit"):
                    return 0
                values[key] = answer or given
        except EOFError:
            print(file=sys.stderr)
            return 0
        print()
        print(run([build_prompt(Spec(**values))])[0])
        print()
        seed += 1


# ----------------------------------------------------------------------------------------------- compare
def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare two checkpoints, or runs (revisions/experiments, one or more seeds)",
                       description="`pico compare base dpo`: two checkpoints of this workspace, metric by metric, and "
                                   "for pass rates a paired test over the same specs (eval/generations_*.jsonl). "
                                   "`pico compare --rev A --rev B [CKPT ...]`: two git revisions or DVC experiments, "
                                   "read through DVC. `--rev A1,A2,A3 --rev B1,B2,B3`: several runs (seeds) per side: "
                                   "means, spreads and Welch's t-test. `--rev S0,S1,S2 sft dpo`: two checkpoints of "
                                   "the same runs (seeds): the paired test per run and pooled over the runs.")
    p.add_argument("checkpoints", nargs="*", help="two checkpoint names (base, sft, dpo, ...), or some with --rev")
    p.add_argument("--rev", action="append", default=[],
                   help="one side: a git revision or DVC experiment, or several separated by commas (give two; "
                        "once with two checkpoints: those checkpoints within the runs)")
    p.add_argument("--metrics-file", default="metrics/evaluate.json")
    p.add_argument("--eval-dir", default="eval", help="where evaluate wrote generations_<split>.jsonl")
    p.add_argument("--all-metrics", action="store_true", help="with --rev: every metrics file, not just evaluate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from pico.checks import CHECKS
    from pico.compare import compare_metrics, flatten, significance

    noise: dict[str, list[dict]] = {}
    if len(args.rev) == 1 and len(args.checkpoints) == 2:
        return _compare_within_runs(args, [r.strip() for r in args.rev[0].split(",") if r.strip()])
    if args.rev:
        if len(args.rev) != 2:
            raise PicoError("give --rev twice, one per side (--rev main --rev exp-1a2b3, or --rev a1,a2 --rev b1,b2)")
        sides = [[r.strip() for r in side.split(",") if r.strip()] for side in args.rev]
        if any(len(side) > 1 for side in sides):
            return _compare_seeds(args, sides)
        (a_rev,), (b_rev,) = sides
        a, b = _metrics_pair(a_rev, b_rev)
        ea, eb = _by_checkpoint(a.get(args.metrics_file, {})), _by_checkpoint(b.get(args.metrics_file, {}))
        sections = {}
        for ckpt in args.checkpoints or [k for k in ea if k in eb and k not in ("style_judge", "checker")]:
            if ckpt not in ea or ckpt not in eb:
                raise PicoError(f"checkpoint {ckpt!r} is not in {args.metrics_file} of both revisions")
            sections[ckpt] = compare_metrics(ea[ckpt], eb[ckpt])
            ra, rb = _generations_at(a_rev, args.eval_dir, ckpt), _generations_at(b_rev, args.eval_dir, ckpt)
            if ra and rb:
                noise[ckpt] = significance(ra, rb, list(CHECKS))
        if args.all_metrics or not sections:
            for path in sorted(set(a) | set(b)):
                if path != args.metrics_file or not sections:
                    sections[path] = compare_metrics(a.get(path, {}), b.get(path, {}))
        labels = (a_rev, b_rev)
    else:
        if len(args.checkpoints) != 2:
            raise PicoError("give two checkpoint names (e.g. `pico compare base dpo`) or two --rev")
        from pico.io import read_json

        from pico.errors import DataError

        metrics = read_json(args.metrics_file)
        if not isinstance(metrics, dict):
            raise DataError(f"{args.metrics_file}: expected {{checkpoint: {{metric: value}}}}, got a JSON "
                            f"{type(metrics).__name__}; pass the file `evaluate` writes (metrics/evaluate.json)")
        for name in args.checkpoints:
            if name not in metrics:
                raise PicoError(f"no checkpoint {name!r} in {args.metrics_file} (has: {', '.join(map(str, metrics))}); "
                                f"run `dvc repro evaluate`")
            if not isinstance(metrics[name], dict):
                raise DataError(f"{args.metrics_file}: {name!r} must be an object of metrics (got a JSON "
                                f"{type(metrics[name]).__name__})")
        a_name, b_name = args.checkpoints
        title = f"{a_name} -> {b_name}"
        sections = {title: compare_metrics(flatten(metrics[a_name]), flatten(metrics[b_name]))}
        records = _workspace_generations(Path(args.eval_dir))
        noise[title] = significance([r for r in records if r["checkpoint"] == a_name],
                                    [r for r in records if r["checkpoint"] == b_name], list(CHECKS))
        labels = (a_name, b_name)
    _print_comparison(args, sections, noise, labels)
    return 0


def _print_comparison(args, sections: dict, noise: dict[str, list[dict]], labels: tuple[str, str]) -> None:
    from pico.compare import significance_markdown, to_json, to_markdown

    if args.json:
        out = to_json(sections, *labels)
        for title, rows in noise.items():
            out["sections"].setdefault(title, {})["significance"] = rows
        print(json.dumps(out, indent=2))
        return
    print(to_markdown(sections, *labels))
    for title, rows in noise.items():
        if rows:
            print(f"### {title}: more than noise?\n\n{significance_markdown(rows, *labels)}")


def _compare_seeds(args, sides: list[list[str]]) -> int:
    """Several runs per side: per checkpoint, every metric's mean, spread and Welch's test."""
    from pico.compare import across_seeds, seeds_markdown

    runs = [[_by_checkpoint(_metrics_at(rev, args.metrics_file)) for rev in side] for side in sides]
    common = [k for k in runs[0][0]
              if all(k in r for side in runs for r in side) and k not in ("style_judge", "checker")]
    labels = tuple(",".join(side) for side in sides)
    out = {}
    for ckpt in args.checkpoints or common:
        if ckpt not in common:
            raise PicoError(f"checkpoint {ckpt!r} is not in {args.metrics_file} of every revision")
        out[ckpt] = across_seeds([r[ckpt] for r in runs[0]], [r[ckpt] for r in runs[1]])
    if args.json:
        print(json.dumps({"a": sides[0], "b": sides[1], "checkpoints": out}, indent=2))
    else:
        for ckpt, rows in out.items():
            print(f"### {ckpt}\n\n{seeds_markdown(rows, *labels)}")
    return 0


def _compare_within_runs(args, revs: list[str]) -> int:
    """`pico compare --rev s0,s1,s2 sft dpo`: two checkpoints of the same runs (seeds). Per run, and pooled over
    the runs, the paired test over the same specs; and each metric's mean per checkpoint across the runs."""
    from pico.checks import CHECKS
    from pico.compare import across_seeds, seeds_markdown, significance, significance_markdown

    a_name, b_name = args.checkpoints
    runs = [_by_checkpoint(_metrics_at(rev, args.metrics_file)) for rev in revs]
    for rev, run in zip(revs, runs):
        if a_name not in run or b_name not in run:
            raise PicoError(f"{rev}: {args.metrics_file} has no {a_name!r} or {b_name!r} (has: {', '.join(run)})")
    per_run, pooled_a, pooled_b = {}, [], []
    for k, rev in enumerate(revs):
        ra, rb = _generations_at(rev, args.eval_dir, a_name), _generations_at(rev, args.eval_dir, b_name)
        if not (ra and rb):
            raise PicoError(f"{rev}: no generations of {a_name} and {b_name} readable through DVC "
                            f"({args.eval_dir}/generations_*.jsonl): no paired test")
        per_run[rev] = [r for r in significance(ra, rb, list(CHECKS)) if r["metric"] == "pass_all"]
        # pooled: the same spec in two runs is two pairs (two samples of each checkpoint), told apart by run
        pooled_a += [{**r, "index": (k, r["index"])} for r in ra]
        pooled_b += [{**r, "index": (k, r["index"])} for r in rb]
    pooled = significance(pooled_a, pooled_b, list(CHECKS))
    seeds = across_seeds([r[a_name] for r in runs], [r[b_name] for r in runs])
    if args.json:
        print(json.dumps({"runs": revs, "a": a_name, "b": b_name, "pooled": pooled, "per_run": per_run,
                          "across_runs": seeds}, indent=2))
        return 0
    print(f"## {a_name} -> {b_name} in {len(revs)} runs: {', '.join(revs)}\n")
    print(f"### pooled over the runs ({len(pooled_a)} generations per checkpoint)\n")
    print(significance_markdown(pooled, a_name, b_name))
    print("### pass_all per run\n")
    print(significance_markdown([{**r, "split": f"{rev} {r['split']}"} for rev, rows in per_run.items() for r in rows],
                                a_name, b_name))
    print("### run-level metrics\n")
    print(seeds_markdown(seeds, a_name, b_name))
    return 0


def _workspace_generations(eval_dir: Path) -> list[dict]:
    files = sorted(eval_dir.glob("generations_*.jsonl"))
    if not files:
        print(f"note: {eval_dir} holds no generations_*.jsonl: no paired tests (run `dvc repro evaluate`)",
              file=sys.stderr)
    return [r for f in files for r in _generation_records(f)]


def _generation_records(path: Path) -> list[dict]:
    """evaluate's generation records of one file, each checked for what the paired tests read (file:line errors)."""
    from pico.checks import CHECKS
    from pico.errors import DataError
    from pico.io import iter_jsonl

    records = []
    for lineno, r in iter_jsonl(path):
        ok = (isinstance(r.get("checkpoint"), str) and isinstance(r.get("split"), str)
              and isinstance(r.get("index"), int) and isinstance(r.get("passed_all"), bool)
              and isinstance(r.get("checks"), dict) and all(isinstance(r["checks"].get(c), bool) for c in CHECKS))
        if not ok:
            raise DataError(f"{path}:{lineno}: not a generation record of `evaluate` (needs checkpoint, split, "
                            f"index, passed_all and a true/false for every check); rerun `dvc repro evaluate`")
        records.append(r)
    return records


def _generations_at(rev: str, eval_dir: str, checkpoint: str) -> list[dict]:
    """A checkpoint's generation records at a revision or experiment (empty when DVC cannot read them there)."""
    import dvc.api

    records = []
    for split in ("test_unseen", "test"):
        try:
            text = dvc.api.read(f"{eval_dir}/generations_{split}.jsonl", repo=".", rev=rev)
        except Exception:  # not there at that revision, or not in the cache: compare without the paired test
            continue
        records += [r for r in map(json.loads, text.splitlines()) if r.get("checkpoint") == checkpoint]
    return records


def _metrics_at(rev: str, metrics_file: str) -> dict:
    """{flat key: value} of one metrics file at a revision or DVC experiment."""
    import dvc.api

    try:
        shown = dvc.api.metrics_show(metrics_file, repo=".", rev=rev)
    except Exception as e:  # DVC's errors (unknown revision, missing file) become one line
        raise PicoError(f"cannot read {metrics_file} at {rev!r}: {str(e).splitlines()[0] if str(e) else e}") from None
    from pico.compare import flatten

    return flatten(shown)


def _metrics_pair(a_rev: str, b_rev: str) -> tuple[dict, dict]:
    """{metrics file: {flat key: value}} at two git revisions or DVC experiments, as `dvc metrics diff` reads them."""
    import subprocess

    cmd = ["dvc", "metrics", "diff", a_rev, b_rev, "--all", "--json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise PicoError("dvc is not on PATH; activate the project's venv (source .venv/bin/activate)") from None
    if proc.returncode != 0:
        raise PicoError(f"cannot read metrics at {a_rev!r} and {b_rev!r}: {proc.stderr.strip()[-400:]}")
    diff = json.loads(proc.stdout or "{}")
    a = {path: {k: v.get("old") for k, v in rows.items()} for path, rows in diff.items()}
    b = {path: {k: v.get("new") for k, v in rows.items()} for path, rows in diff.items()}
    return a, b


def _by_checkpoint(flat: dict) -> dict[str, dict]:
    """{"dpo.pass_all": x} -> {"dpo": {"pass_all": x}}, checkpoints in pipeline order, metrics sorted."""
    out: dict[str, dict] = {}
    for key in sorted(flat):
        ckpt, dot, name = key.partition(".")
        if not dot:
            continue  # a run-level value ("precision"), not a checkpoint's metric
        out.setdefault(ckpt, {})[name] = flat[key]
    order = {"base": 0, "sft": 1, "dpo": 2}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))


# ----------------------------------------------------------------------------------------------- runs
def add_runs(sub) -> None:
    p = sub.add_parser("runs", help="list the workspace and DVC experiments, grouped by purpose",
                       description="Runs as DVC reports them (`dvc exp show --json`): a summary per "
                                   "experiment.purpose, or one row per run with --detail.")
    p.add_argument("--detail", action="store_true", help="one row per run: time, rev, model, data, params, metrics")
    p.add_argument("--purpose", help="only runs with this experiment.purpose")
    p.add_argument("--sort", metavar="METRIC", help="best first by a metric: ckpt.metric (evaluate.json, e.g. "
                   "dpo.dpo_test_pref_acc), stage.metric (e.g. pretrain.val_bpb) or file.json:key")
    p.add_argument("--all-commits", action="store_true", help="also runs committed on every branch")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args) -> int:
    from pico.runs import (
        detail,
        group_by_purpose,
        load_runs,
        render_detail,
        render_summary,
        sort_runs,
    )

    runs = load_runs(all_commits=args.all_commits)
    if args.purpose:
        runs = [r for r in runs if r.purpose == args.purpose]
    if args.sort:
        runs = sort_runs(runs, args.sort)
    groups = group_by_purpose(runs)
    rows = [detail(r, args.sort) for r in runs]
    if args.json:
        print(json.dumps({"groups": groups, "runs": rows}, indent=2, default=str))
    elif args.detail or args.sort:
        print(render_detail(rows))
    else:
        print(render_summary(groups))
        uncategorized = groups.get("uncategorized", {}).get("count", 0)
        if uncategorized:
            print(f"\n{uncategorized} run(s) have no experiment.purpose; set it with `-S experiment.purpose=...`",
                  file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------- params
def add_params(sub) -> None:
    p = sub.add_parser("params", help="every params.yaml key with its range, help and current value",
                       description="Every key of params.yaml: its type and range, what it does, and the value in "
                                   "--params (validated first). Give section names to see only those.")
    p.add_argument("sections", nargs="*", help="sections to show (default: all)")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=cmd_params)


def cmd_params(args) -> int:
    from pico.config import SECTIONS, load_params
    from pico.knobs import describe

    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        raise PicoError(f"unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
    params = load_params(args.params).__dict__
    for name in args.sections or SECTIONS:
        doc = SECTIONS[name].__doc__ or ""
        print(f"{name}: {'' if doc.startswith(SECTIONS[name].__name__ + '(') else doc}".rstrip())
        for key, kind, help_line in describe(SECTIONS[name], name):
            value = params[name]
            for part in key.split(".")[1:]:
                value = getattr(value, part)
            print(f"  {key} = {json.dumps(value)}\n      {kind}: {help_line}")
    return 0


# ----------------------------------------------------------------------------------------------- check
def add_check(sub) -> None:
    p = sub.add_parser("check", help="run the constraint checker on stories",
                       description="Check stories against their specs with the checker `generate` and `evaluate` use. "
                                   "Each JSONL row holds a story (\"story\", or \"response\" as in the pipeline's "
                                   "files) and its spec (\"spec\": {field: value}, or a \"prompt\" in the one "
                                   "prompt format). Prints every check of every row, then the pass rates.")
    p.add_argument("--input", required=True, help="a .jsonl file of {\"spec\" or \"prompt\", \"story\"} rows")
    p.add_argument("--json", action="store_true",
                   help="print {\"rows\": [{\"checks\", \"pass_all\"}], \"pass_rates\": {...}} instead")
    p.set_defaults(func=cmd_check)


def _check_rows(path: Path) -> list[tuple[int, str, object]]:
    """(line number, story, Spec) of every row; a bad row is a DataError naming file:line."""
    from pico.errors import DataError
    from pico.prompt import parse_prompt
    from pico.spec import Spec

    from pico.io import iter_jsonl, text_problem

    rows = []
    for lineno, row in iter_jsonl(path):  # not UTF-8, not JSON, not an object: file:line errors
        where = f"{path}:{lineno}"
        key = "story" if "story" in row else "response"
        if key not in row:
            raise DataError(f"{where}: no \"story\" string")
        problem = text_problem(row[key]) if row[key] != "" else None  # an empty story is checked (and fails)
        if problem:
            raise DataError(f"{where}: \"{key}\" {problem}")
        try:
            if isinstance(row.get("spec"), dict):
                spec = Spec.from_dict(row["spec"])
            elif isinstance(row.get("prompt"), str):
                spec = parse_prompt(row["prompt"])
            else:
                raise ValueError("no \"spec\" object and no \"prompt\" string")
        except (ValueError, TypeError, KeyError) as e:
            raise DataError(f"{where}: {e}") from None
        rows.append((lineno, row[key], spec))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def cmd_check(args) -> int:
    from pico.checks import CHECKS, explain_story

    path = Path(args.input)
    results = []
    for lineno, story, spec in _check_rows(path):
        problems = explain_story(story, spec)
        results.append((lineno, problems, all(not problems[c] for c in CHECKS)))
    n = len(results)
    rates = {c: sum(not p[c] for _, p, _ in results) / n for c in CHECKS}
    rates["pass_all"] = sum(ok for _, _, ok in results) / n
    if args.json:
        rows = [{"checks": {c: not p[c] for c in CHECKS}, "pass_all": ok} for _, p, ok in results]
        print(json.dumps({"rows": rows, "pass_rates": rates}, indent=2))
        return 0
    width = max(len(c) for c in CHECKS)
    for lineno, problems, ok in results:
        print(f"{path}:{lineno}: {'pass' if ok else 'FAIL'}")
        for c in CHECKS:
            print(f"  {c:<{width}}  {'ok' if not problems[c] else 'FAIL  ' + '; '.join(problems[c])}")
        print(f"  {'pass_all':<{width}}  {'ok' if ok else 'FAIL'}")
    print(f"\npass rates over {n} row(s):")
    for name, rate in rates.items():
        print(f"  {name:<{width}}  {rate:6.1%}")
    return 0


# ----------------------------------------------------------------------------------------------- export
def add_export(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face model directory (safetensors)",
                       description="Write a transformer checkpoint as a directory `transformers` loads without pico "
                                   "installed: config.json (GPT2LMHeadModel for a plain model; PicoForCausalLM, "
                                   "with its modeling code beside it and auto_map, for RoPE or the copy head: load "
                                   "it with trust_remote_code=True), model.safetensors, generation_config.json "
                                   "(evaluate's sampling in --params), tokenizer.json, tokenizer_config.json with a "
                                   "chat template, and a model card README.md.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the directory to write (replaced whole)")
    p.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    p.add_argument("--params", default="params.yaml", help="its evaluate section gives the sampling defaults")
    p.add_argument("--name", help="the checkpoint's name in --metrics and the card (default: the file's stem)")
    p.add_argument("--dataset", default="data/dataset.json", help="the data card, for the model card (if present)")
    p.add_argument("--metrics", default="metrics/evaluate.json", help="evaluation numbers, for the model card (if present)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from pico.checkpoint import load_checkpoint
    from pico.config import load_params
    from pico.export import export_files, write_export
    from pico.io import read_json
    from pico.sampling import SamplingConfig
    from pico.tokenizer import load_tokenizer

    sampling = SamplingConfig.of(load_params(args.params).evaluate)
    tok = load_tokenizer(args.tokenizer)
    ckpt = load_checkpoint(args.checkpoint, tokenizer_hash=tok.hash)
    name = args.name or Path(args.checkpoint).stem
    dataset = read_json(args.dataset) if Path(args.dataset).is_file() else None
    metrics = read_json(args.metrics) if Path(args.metrics).is_file() else {}
    evaluation = metrics.get(name) if isinstance(metrics, dict) else None
    if evaluation is None:
        print(f"note: no evaluation numbers for {name!r} in {args.metrics}; the model card says so", file=sys.stderr)
    write_export(args.out, export_files(name, ckpt.model, ckpt.meta, tok, sampling, dataset, evaluation,
                                        source=args.checkpoint))
    print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------------------------- serve
def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API",
                       description="Serve a checkpoint at /v1/chat/completions, /v1/completions (stream, temperature, "
                                   "top_p, max_tokens, stop, n, seed), /v1/models and /health. A chat request's user "
                                   "message is a full prompt or a JSON spec. Requests arriving together are decoded "
                                   "together; past --max-queue waiting answers the server answers 429.")
    p.add_argument("--checkpoint", default="checkpoints/dpo.pt")
    p.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", metavar="NAME", help="require `Authorization: Bearer $NAME` on every /v1 request")
    p.add_argument("--model-name", help="the model id clients send (default: the checkpoint file's stem)")
    p.add_argument("--max-batch", type=int, default=8, help="answers decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="answers waiting before 429")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import os

    from pico.checkpoint import load_checkpoint
    from pico.device import resolve_device
    from pico.teacher import key_problem
    from pico.tokenizer import load_tokenizer

    for flag, value, lo in (("--port", args.port, 0), ("--max-batch", args.max_batch, 1), ("--max-queue", args.max_queue, 1)):
        if not lo <= value <= (65535 if flag == "--port" else 4096):
            raise PicoError(f"{flag}: must be in [{lo}, {65535 if flag == '--port' else 4096}] (got {value})")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env, "").strip()
        problem = "is not set" if not api_key else key_problem(api_key)
        if problem:
            raise PicoError(f"--api-key-env: the variable {args.api_key_env} {problem}; export the key there")
    try:
        from pico.serve import Server, serve_forever
        from pico.batcher import Batcher
    except ImportError as e:
        raise PicoError(f"pico serve needs the serve extra ({e.name} is missing): pip install -e '.[serve]'") from None
    device = resolve_device(args.device)
    tok = load_tokenizer(args.tokenizer)
    ckpt = load_checkpoint(args.checkpoint, tokenizer_hash=tok.hash, device=device)
    if not getattr(ckpt.model, "supports_left_padding", False):
        raise PicoError(f"{args.checkpoint}: pico serve decodes requests together in left-padded batches, which a "
                        f"{ckpt.model_cfg.type} model cannot take; serve a transformer checkpoint")
    model_id = args.model_name or Path(args.checkpoint).stem
    batcher = Batcher(ckpt.model, tok, max_batch=args.max_batch, max_queue=args.max_queue, device=device)
    print(f"serving {model_id!r} at http://{args.host}:{args.port}/v1"
          f"{' (API key required)' if api_key else ''}; Ctrl-C stops", file=sys.stderr)
    serve_forever(Server(batcher, model_id, api_key), args.host, args.port)
    return 0


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from pico.stage import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="pico", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (or set PICO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_play(sub)
    add_compare(sub)
    add_runs(sub)
    add_params(sub)
    add_check(sub)
    add_export(sub)
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand: exit 0, or 2 with one line naming the flag or file (130 on Ctrl-C, 1 for a bug in pico);
    `--debug` or PICO_DEBUG=1 adds the traceback."""
    from pico.errors import exit_status

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage errors are one line (OneLineArgumentParser); --help exits 0
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `pico ... | head`
        sys.stderr.close()
        return 0
    except (Exception, KeyboardInterrupt) as e:
        return exit_status(e, debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
