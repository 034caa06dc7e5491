"""SFT and DPO rows for the horror-story task, from the template writer or a teacher LLM.

Rows are made per (dataset, split, index) with their own seeded RNG, so the output does not depend on
thread scheduling or on how many rows other splits have.
"""

from __future__ import annotations

import queue
import random
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

from pico.checks import check_story, failed_checks
from pico.config import SFT_SPLITS, SPLITS, UNSEEN, GenerateConfig
from pico.pairs import WORD_FIELDS, stuttered, value_edited, value_forms
from pico.prompt import build_prompt
from pico.fluency import FUNCTION_WORDS
from pico.spec import Spec, Values, compose_name, compose_word, is_curated, sample_specs, split_values, with_phrases
from pico.stories import (
    BROKEN_CHECK,
    PAIR_KIND_EASY,
    PAIR_KINDS_HARD,
    horror_story,
    wholesome_story,
)
from pico.teacher import TeacherClient
from pico.tinystories import summarize
from pico.tokenizer import Tokenizer

T = TypeVar("T")
R = TypeVar("R")
DATASETS = ("sft", "dpo")
TRAINING_SPLITS = ("train", "valid")  # the splits fresh_names, fresh_words, an_values, twist_openers change
REFUSALS = ("i can't", "i cannot", "i'm sorry", "i am sorry", "as an ai", "i won't")


def splits_of(dataset: str) -> tuple[str, ...]:
    return SFT_SPLITS if dataset == "sft" else SPLITS


def assign_specs(cfg: GenerateConfig, phrases: Values | None = None) -> dict[tuple[str, str], list[Spec]]:
    """Distinct specs for every (dataset, split); no spec is shared between any two.

    A seeded `heldout_share` of every value list is held out: train, valid and test specs use only the other
    values, and sft/test_unseen only held-out ones, so it measures following a spec rather than recalling
    value-to-sentence pairs seen in training. `phrases` (values cut from TinyStories, none of them held out)
    widen the train and valid draws of `phrase_datasets` only, so the test splits are the same whatever the
    training values.
    """
    seen, heldout = split_values(cfg.heldout_share, cfg.seed)
    sizes = [(d, s, getattr(cfg, f"{d}_splits")[s]) for d in DATASETS for s in splits_of(d) if s != UNSEEN]
    specs = sample_specs(sum(n for _, _, n in sizes), cfg.seed, seen)
    out, start = {}, 0
    for dataset, split, n in sizes:
        out[(dataset, split)] = specs[start : start + n]
        start += n
    out[("sft", UNSEEN)] = sample_specs(cfg.sft_splits[UNSEEN], cfg.seed, heldout)
    if phrases:
        train_values = with_phrases(seen, phrases)
        tests = {spec for (_, split), specs in out.items() if split in ("test", UNSEEN) for spec in specs}
        widened = [(d, s, n) for d, s, n in sizes if s != "test" and d in cfg.phrase_datasets]
        draw = iter(spec for spec in sample_specs(sum(n for *_, n in widened) + len(tests), cfg.seed + 1, train_values)
                    if spec not in tests)
        for dataset, split, n in widened:
            out[(dataset, split)] = [next(draw) for _ in range(n)]
    return out


def row_rng(seed: int, dataset: str, split: str, index: int) -> random.Random:
    return random.Random(f"{seed}/{dataset}/{split}/{index}")


def pick_pair_kind(rng: random.Random, difficulty: str | float) -> str:
    share = {"easy": 0.0, "hard": 1.0}.get(difficulty, difficulty) if isinstance(difficulty, str) else difficulty
    if share > 0 and rng.random() < share:
        return rng.choice(PAIR_KINDS_HARD)
    return PAIR_KIND_EASY


def rejected_is_valid(story: str, spec: Spec, kind: str) -> bool:
    """A hard rejected story breaks exactly its one constraint; an easy one is not a horror story at all."""
    failed = failed_checks(check_story(story, spec))
    if kind == PAIR_KIND_EASY:
        return "unsettling_ending" in failed and "twist_present" in failed
    return failed == [BROKEN_CHECK[kind]]


def chosen_is_valid(story: str, spec: Spec) -> bool:
    text = story.strip().lower()
    return bool(text) and not text.startswith(REFUSALS) and not failed_checks(check_story(story, spec))


# ----------------------------------------------------------------------------------------------- template
def template_row(dataset: str, spec: Spec, rng: random.Random, difficulty: str | float) -> dict | None:
    """One row written by the templates; None when a spec with TinyStories phrase values makes a story that
    fails its own checks (such a row would teach a failure)."""
    prompt = build_prompt(spec)
    chosen = horror_story(spec, rng)
    if dataset == "sft":
        row = {"prompt": prompt, "response": chosen, "spec": spec.to_dict()}
        return row if is_curated(spec) or chosen_is_valid(chosen, spec) else None
    kind = pick_pair_kind(rng, difficulty)
    rejected = wholesome_story(spec, rng) if kind == PAIR_KIND_EASY else horror_story(spec, rng, break_rule=kind)
    if not chosen_is_valid(chosen, spec) or not rejected_is_valid(rejected, spec, kind):
        if is_curated(spec):  # the templates are built so these hold for every curated spec: a bug in pico
            raise AssertionError(f"template pair of kind {kind} fails its own checks for spec {spec}")
        return None
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "spec": spec.to_dict(), "pair_kind": kind}


# ----------------------------------------------------------------------------------------------- made-up names
TEXT_KEYS = ("prompt", "response", "chosen", "rejected")


def with_fresh_names(row: dict, rng: random.Random) -> dict:
    """The row with made-up names (`compose_name`) for its protagonist and for its supporting character's name
    (the last word of "Captain Rooke", "Agnes"; "the landlord" keeps its role), in the spec and every text.

    Written after the story, so pronouns stay right; the same whole-word replacement everywhere, so a rejected
    story that names someone else (a renamed protagonist) still does."""
    spec = dict(row["spec"])
    swaps = {spec["protagonist"]: compose_name(rng)}
    last = spec["supporting"].split()[-1]
    if last[:1].isupper() and last not in swaps:
        swaps[last] = compose_name(rng, frozenset(swaps.values()))
    pattern = re.compile(r"\b(" + "|".join(re.escape(old) for old in swaps) + r")\b")
    out = {k: pattern.sub(lambda m: swaps[m.group(1)], v) if k in TEXT_KEYS else v for k, v in row.items()}
    spec["protagonist"] = swaps[spec["protagonist"]]
    spec["supporting"] = pattern.sub(lambda m: swaps[m.group(1)], spec["supporting"])
    out["spec"] = spec
    return out


def fresh_names_rng(seed: int, dataset: str, split: str, index: int) -> random.Random:
    """Its own stream: rows keep every other draw whatever `fresh_names` is."""
    return random.Random(f"{seed}/{dataset}/{split}/{index}/names")


# ----------------------------------------------------------------------------------------------- made-up words
_LAST_WORD = re.compile(r"^(.*?)(\b(an?) )?([a-z]+)$")


def fresh_value(value: str, word: str) -> str | None:
    """`value` with its last word replaced by `word` ("a brass key" -> "a brass drovit"); None where that would
    not read as English: the last word is a function word ("... slept in it") or not a word ("2 a.m."), or
    directly follows "an" (the made-up words start with a consonant)."""
    m = _LAST_WORD.match(value)
    if not m or m.group(4) in FUNCTION_WORDS or m.group(3) == "an":
        return None
    return value[: m.start(4)] + word


def with_fresh_words(row: dict, rng: random.Random, share: float) -> dict:
    """The row with each of its object, taboo and twist (drawn on its own with probability `share`) ending in a
    made-up word (`compose_word`), in the spec and in every quote of the value in every text.

    A field is left as it is where its last word is also used outside the quotes (a teacher's "the key" for
    "a brass key": renaming the quotes alone would leave the story about a key), and the whole row is left as
    it is where the new stories no longer pass their checks. Like `with_fresh_names`, this teaches the model to
    copy a value it cannot have memorised and to find where it ends (RESEARCH.md, finding 23)."""
    spec = row["spec"]
    new_values: dict[str, str] = {}
    used: set[str] = set()
    for f in WORD_FIELDS:
        if rng.random() >= share:
            continue
        word = compose_word(rng, frozenset(used))
        new_value = fresh_value(spec[f], word)
        if new_value is None:
            continue
        old_word = spec[f].rsplit(" ", 1)[-1]
        quoted = re.compile("|".join(re.escape(v) for v in sorted(value_forms(spec[f]), key=len, reverse=True)))
        alone = re.compile(rf"\b{re.escape(old_word)}\b", re.IGNORECASE)
        texts = [row[k] for k in TEXT_KEYS if k in row]
        if sum(len(alone.findall(t)) for t in texts) != sum(len(quoted.findall(t)) for t in texts):
            continue
        used.add(word)
        new_values[f] = new_value
    return with_values(row, new_values)


def with_values(row: dict, new_values: dict[str, str]) -> dict:
    """The row with spec fields given new values, in the spec and in every quote of the old value (each of its
    `value_forms`) in every text; the row as it is where there is nothing to change or the new stories no longer
    pass their checks."""
    spec = dict(row["spec"])
    swaps: dict[str, str] = {}
    for f, new_value in new_values.items():
        swaps.update(zip(value_forms(spec[f]), value_forms(new_value)))
        spec[f] = new_value
    if not swaps:
        return row
    pattern = re.compile("|".join(re.escape(v) for v in sorted(swaps, key=len, reverse=True)))
    out = {k: pattern.sub(lambda m: swaps[m.group(0)], v) if k in TEXT_KEYS else v for k, v in row.items()}
    out["spec"] = spec
    new_spec = Spec.from_dict(spec)
    chosen = out.get("chosen", out.get("response", ""))
    valid = chosen_is_valid(chosen, new_spec) and (
        "rejected" not in out or rejected_is_valid(out["rejected"], new_spec, out["pair_kind"]))
    return out if valid else row


def fresh_words_rng(seed: int, dataset: str, split: str, index: int) -> random.Random:
    """Its own stream, like `fresh_names_rng`."""
    return random.Random(f"{seed}/{dataset}/{split}/{index}/words")


# ----------------------------------------------------------------------------------------------- "an" values
ARTICLE_FIELDS = ("setting", "object")  # the fields whose values start with an article a story quotes with them
VOWEL_ADJECTIVES = ("old", "odd", "empty", "icy", "ancient", "oily", "eerie", "ugly", "unlit", "abandoned",
                    "ordinary", "elegant", "ivory", "ashen", "open", "overgrown", "unused", "enormous", "awful", "idle")


def with_an_values(row: dict, rng: random.Random, share: float) -> dict:
    """The row with each of its setting and object that starts with "a " (drawn on its own with probability
    `share`) given a vowel-initial adjective, so its article becomes "an" ("a brass key" -> "an old brass key"),
    in the spec and every quote of it.

    Most values start with "a", so a model can write a value's article from its vocabulary side alone, by that
    prior, and copy the rest: "found a iron bell". Where "a" and "an" are about as likely, the article can be got
    right only from the value, by copying it too (RESEARCH.md, finding 50)."""
    return with_rewritten_values(row, rng, share, ARTICLE_FIELDS, an_value)


def an_value(value: str, rng: random.Random) -> str | None:
    """'a brass key' -> 'an old brass key' (a random vowel-initial adjective); None for a value not starting 'a '."""
    return f"an {rng.choice(VOWEL_ADJECTIVES)} {value[2:]}" if value.startswith("a ") else None


def with_rewritten_values(row: dict, rng: random.Random, share: float, fields: tuple[str, ...],
                          rewrite: Callable[[str, random.Random], str | None]) -> dict:
    """The row with each of `fields` (drawn on its own with probability `share`) rewritten by `rewrite` (None:
    left as it is), through `with_values`."""
    new_values = {}
    for f in fields:
        if rng.random() < share:
            new_value = rewrite(row["spec"][f], rng)
            if new_value is not None:
                new_values[f] = new_value
    return with_values(row, new_values)


def an_values_rng(seed: int, dataset: str, split: str, index: int) -> random.Random:
    """Its own stream, like `fresh_names_rng`."""
    return random.Random(f"{seed}/{dataset}/{split}/{index}/an")


# ----------------------------------------------------------------------------------------------- twist openers
TWIST_OPENERS = ("all along", "somehow", "in truth", "by then", "even now", "from the start", "in the end",
                 "after all", "of course", "worst of all")


def with_twist_openers(row: dict, rng: random.Random, share: float) -> dict:
    """The row with its twist (with probability `share`) opened by an adverbial ("the caller has been dead for ten
    years" -> "all along the caller has been dead for ten years"), in the spec and every quote of it.

    Every template twist starts with "the", so a model can write a twist's first word from its vocabulary side by
    that prior and copy on from the first "the" it finds in the prompt: "realize that the story has been asleep for
    years" for "everyone else in the story has been asleep for years". Where twists start with many words, the
    first can be got right only by copying it (RESEARCH.md, finding 51)."""
    return with_rewritten_values(row, rng, share, ("twist",), lambda v, r: f"{r.choice(TWIST_OPENERS)} {v}")


def twist_openers_rng(seed: int, dataset: str, split: str, index: int) -> random.Random:
    """Its own stream, like `fresh_names_rng`."""
    return random.Random(f"{seed}/{dataset}/{split}/{index}/twist")


# ----------------------------------------------------------------------------------------------- stutter pairs
PAIR_KIND_STUTTER = "value_stutter"


def with_stutter_rejected(row: dict, rng: random.Random) -> dict:
    """The pair with its rejected story replaced by the chosen one with a value's tail stuttered (kind
    `value_stutter`): the two differ only where the copy head must stop, so DPO's gradient lands there. Taboo,
    twist or object in a random order, 2-4 words; the row is left as it is where no stutter fails exactly
    `no_repetition` (a tail that is English said twice, "...in it in it", is not a stutter to the checker).
    Measured: it cures the stutter and costs the fields (RESEARCH.md, finding 24); off by default."""
    rejected = value_edited(row["chosen"], Spec.from_dict(row["spec"]), rng, stuttered, (2, 4),
                            lambda f: "no_repetition")
    return row if rejected is None else {**row, "rejected": rejected, "pair_kind": PAIR_KIND_STUTTER}


def stutter_rng(seed: int, split: str, index: int) -> random.Random:
    """Its own stream, like `fresh_names_rng`."""
    return random.Random(f"{seed}/dpo/{split}/{index}/stutter")


# ----------------------------------------------------------------------------------------------- teacher
REJECTED_INSTRUCTIONS = {
    PAIR_KIND_EASY: "Ignore the horror request: write a cheerful, wholesome story with these characters and "
                    "this object, 2 to 4 paragraphs, with no rule and no twist, ending happily.",
    "taboo_missing": "Keep it eerie and follow every part of the specification except one: never mention or "
                     "hint at the taboo rule.",
    "twist_missing": "Keep it eerie and follow every part of the specification except one: do not reveal "
                     "or hint at the twist.",
    "wrong_paragraph_count": "Follow the specification, but write the whole story as one single paragraph.",
    "happy_ending": "Follow the specification, but end happily: everyone safe, cheerful and smiling.",
}


def teacher_messages(prompt: str, rejected_kind: str | None = None) -> list[dict]:
    content = prompt if rejected_kind is None else f"{prompt}\n\n{REJECTED_INSTRUCTIONS[rejected_kind]}\n"
    return [{"role": "user", "content": content}]


@dataclass
class TeacherOutcome:
    row: dict | None
    regenerated: int = 0
    dropped: str = ""  # which story was unusable after every attempt


def _first_valid(client: TeacherClient, messages: list[dict], attempts: int, valid) -> tuple[str | None, int]:
    for attempt in range(attempts):
        story = client.complete(messages, attempt).strip()
        if valid(story):
            return story, attempt
    return None, attempts


def teacher_row(client: TeacherClient, dataset: str, spec: Spec, rng: random.Random, difficulty: str | float,
                attempts: int) -> TeacherOutcome:
    prompt = build_prompt(spec)
    chosen, tries = _first_valid(client, teacher_messages(prompt), attempts, lambda s: chosen_is_valid(s, spec))
    if chosen is None:
        return TeacherOutcome(None, tries, "chosen" if dataset == "dpo" else "response")
    if dataset == "sft":
        return TeacherOutcome({"prompt": prompt, "response": chosen, "spec": spec.to_dict()}, tries)
    kind = pick_pair_kind(rng, difficulty)
    rejected, more = _first_valid(client, teacher_messages(prompt, kind), attempts,
                                  lambda s: rejected_is_valid(s, spec, kind))
    if rejected is None:
        return TeacherOutcome(None, tries + more, "rejected")
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "spec": spec.to_dict(), "pair_kind": kind}
    return TeacherOutcome(row, tries + more)


# ----------------------------------------------------------------------------------------------- all rows
@dataclass
class Generated:
    rows: dict[tuple[str, str], list[dict]]
    dropped: Counter = field(default_factory=Counter)
    regenerated: int = 0


def generate_rows(cfg: GenerateConfig, client: TeacherClient | None = None, progress=None,
                  phrases: Values | None = None) -> Generated:
    """Every (dataset, split)'s rows, in spec order. `client` is required for the openai provider."""
    parts = assign_specs(cfg, phrases)
    jobs = [(d, s, i, spec) for (d, s), specs in parts.items() for i, spec in enumerate(specs)]
    out = Generated(rows={key: [] for key in parts})

    def renamed(d: str, s: str, i: int, row: dict) -> dict:
        if s not in TRAINING_SPLITS:
            return row
        if cfg.fresh_names > 0:
            rng = fresh_names_rng(cfg.seed, d, s, i)
            if rng.random() < cfg.fresh_names:
                row = with_fresh_names(row, rng)
        if cfg.fresh_words > 0:
            row = with_fresh_words(row, fresh_words_rng(cfg.seed, d, s, i), cfg.fresh_words)
        if cfg.an_values > 0:
            row = with_an_values(row, an_values_rng(cfg.seed, d, s, i), cfg.an_values)
        if cfg.twist_openers > 0:
            row = with_twist_openers(row, twist_openers_rng(cfg.seed, d, s, i), cfg.twist_openers)
        if d == "dpo" and cfg.stutter_pairs > 0:
            rng = stutter_rng(cfg.seed, s, i)
            if rng.random() < cfg.stutter_pairs:
                row = with_stutter_rejected(row, rng)
        return row

    if cfg.provider == "template":
        for d, s, i, spec in jobs:
            row = template_row(d, spec, row_rng(cfg.seed, d, s, i), cfg.pair_difficulty)
            if row is None:
                out.dropped[f"{d}/{s}/fails_checks"] += 1
            else:
                out.rows[(d, s)].append(renamed(d, s, i, row))
            if progress:
                progress.update(1)
        return out

    assert client is not None, "the openai provider needs a TeacherClient"

    def work(job):
        d, s, i, spec = job
        return teacher_row(client, d, spec, row_rng(cfg.seed, d, s, i), cfg.pair_difficulty,
                           cfg.teacher.max_attempts)

    try:
        for (d, s, i, _), outcome in zip(jobs, map_in_threads(work, jobs, cfg.teacher.concurrency)):  # spec order
            out.regenerated += outcome.regenerated
            if outcome.row is None:
                out.dropped[f"{d}/{s}/{outcome.dropped}"] += 1
            else:
                out.rows[(d, s)].append(renamed(d, s, i, outcome.row))
            if progress:
                progress.update(1)
    except BaseException:  # Ctrl-C or an error: end the requests in flight now; the cache keeps every answer
        client.cancel()
        raise
    return out


def map_in_threads(fn: Callable[[T], R], items: list[T], workers: int) -> Iterator[R]:
    """fn over items on `workers` daemon threads, results in input order; the first error is raised in order.

    Unlike ThreadPoolExecutor, nothing joins the workers: when the caller stops (Ctrl-C, an error) the
    remaining items are never started and a worker still stuck in a request cannot hold the process open.
    """
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for index, item in enumerate(items):
        todo.put((index, item))
    done: dict[int, tuple[bool, object]] = {}
    ready = threading.Condition()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                index, item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                result: tuple[bool, object] = (True, fn(item))
            except BaseException as e:  # handed to the caller, who raises it
                result = (False, e)
            with ready:
                done[index] = result
                ready.notify_all()

    for _ in range(min(workers, len(items))):
        threading.Thread(target=worker, daemon=True, name="pico-teacher").start()
    try:
        for index in range(len(items)):
            with ready:
                while index not in done:
                    ready.wait(0.5)  # a timed wait, so Ctrl-C reaches the main thread at once
                ok, value = done.pop(index)
            if not ok:
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        stop.set()


def dataset_stats(rows: list[dict], tok: Tokenizer | None) -> dict:
    """Quick stats of one split, in the shape of the original results bundle."""
    answer_key = "response" if rows and "response" in rows[0] else "chosen"
    stats: dict = {"n_rows": len(rows)}
    columns = {"prompt": "prompt", "answer": answer_key}
    if rows and "rejected" in rows[0]:
        columns["rejected"] = "rejected"
    for name, key in columns.items():
        texts = [r[key] for r in rows]
        stats[f"{name}_chars"] = summarize([len(t) for t in texts])
        if tok is not None:
            stats[f"{name}_tokens"] = summarize([len(ids) for ids in tok.encode_batch(texts)])
    return stats


def generate_metrics(cfg: GenerateConfig, result: Generated, tok: Tokenizer | None,
                     client: TeacherClient | None) -> dict:
    """metrics/generate.json: per dataset and split, row counts and length stats (and DPO pair kinds)."""
    metrics: dict = {}
    for dataset in DATASETS:
        metrics[dataset] = {}
        for split in splits_of(dataset):
            rows = result.rows[(dataset, split)]
            metrics[dataset][split] = dataset_stats(rows, tok)
            if dataset == "dpo":
                metrics[dataset][split]["pair_kinds"] = dict(sorted(Counter(r["pair_kind"] for r in rows).items()))
    metrics["dropped"] = dict(sorted(result.dropped.items()))
    metrics["regenerated"] = result.regenerated
    if client is not None:
        metrics["teacher"] = dict(sorted(client.stats.items()))
    return metrics


def dataset_card(cfg: GenerateConfig, result: Generated, digests: dict[str, str]) -> dict:
    """data/dataset.json: why and how the data was made, row counts, and each file's sha256."""
    return {
        "purpose": cfg.purpose,
        "description": cfg.description,
        "provider": cfg.provider,
        "teacher": {"base_url": cfg.teacher.base_url, "model": cfg.teacher.model,
                    "temperature": cfg.teacher.temperature} if cfg.provider == "openai" else None,
        "seed": cfg.seed,
        "pair_difficulty": cfg.pair_difficulty,
        "heldout_share": cfg.heldout_share,
        "rows": {f"{d}/{s}": len(result.rows[(d, s)]) for d in DATASETS for s in splits_of(d)},
        "sha256": digests,
    }
