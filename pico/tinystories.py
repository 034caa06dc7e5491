"""TinyStories: read the `<|endoftext|>`-separated text, clean, deduplicate and split it.

Pure functions over lists of strings; `pico.download` fetches the files and `stages/prepare.py` does the I/O.
"""

from __future__ import annotations

import random
import re
import statistics
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from pico.errors import DataError

EOT = "<|endoftext|>"
VALID_DIR_NAMES = ("valid", "val", "validation")

# The V1 text that went through Hugging Face holds cp1252 mojibake of UTF-8 punctuation ("â€™" for "’").
_MOJIBAKE = {
    "â€™": "'", "â€˜": "'", "â€œ": '"', "â€\x9d": '"', "â€": '"',
    "â€”": "-", "â€“": "-", "â€¦": "...", "Ã©": "é", "Ã¨": "è", "Ã¯": "ï", "Ã±": "ñ", "Â": "",
}
_MOJIBAKE_RE = re.compile("|".join(re.escape(k) for k in sorted(_MOJIBAKE, key=len, reverse=True)))
# Typographic punctuation folded to ASCII: V1 and V2 disagree on quotes, and a 4k vocab should not learn both.
_ASCII_PUNCT = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',
    "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2026": "...",
})
_SPACES_RE = re.compile(r"[ \t\f\v]+")


@dataclass(frozen=True)
class Shard:
    path: Path
    split: str  # "train" or "valid"


def find_shards(source: Path) -> list[Shard]:
    """The .txt files of a source folder (or the one file), sorted, with their split from the folder name."""
    if source.is_file():
        return [Shard(source, "train")]
    if not source.is_dir():
        raise DataError(f"{source}: no such file or folder")
    shards = []
    for path in sorted(source.rglob("*.txt")):
        rel = path.relative_to(source)
        in_valid = any(part.lower() in VALID_DIR_NAMES for part in rel.parts[:-1]) or "valid" in path.stem.lower()
        shards.append(Shard(path, "valid" if in_valid else "train"))
    return shards


def split_stories(text: str, name: str = "<text>") -> list[str]:
    """Split raw text on the `<|endoftext|>` marker; error if the marker never occurs."""
    if EOT not in text:
        raise DataError(f"{name}: no {EOT} separator found; TinyStories text has one after every story")
    return text.split(EOT)


def clean_story(raw: str) -> str:
    """Normalize unicode and whitespace; paragraphs end up separated by single newlines."""
    text = _MOJIBAKE_RE.sub(lambda m: _MOJIBAKE[m.group(0)], raw)
    text = unicodedata.normalize("NFKC", text).translate(_ASCII_PUNCT)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = (_SPACES_RE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def broken_reason(story: str, min_chars: int, max_chars: int) -> str | None:
    """Why a cleaned story is unusable, or None if it is fine."""
    if not story:
        return "empty"
    if len(story) < min_chars:
        return "too_short"
    if len(story) > max_chars:
        return "too_long"
    if "\ufffd" in story or any(unicodedata.category(c) == "Cc" and c != "\n" for c in story):
        return "broken_bytes"
    if "â€" in story or "Ã" in story:
        return "mojibake"
    if not any(c.isalpha() for c in story):
        return "no_letters"
    return None


def dedup_key(story: str) -> str:
    """Stories equal up to case, whitespace and punctuation count as one."""
    return re.sub(r"[^0-9a-z]+", "", story.casefold())


@dataclass
class PrepareReport:
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def clean_all(raw_stories: list[str], min_chars: int, max_chars: int, report: PrepareReport) -> list[str]:
    out = []
    for raw in raw_stories:
        if not raw.strip():
            continue  # the text after the last separator, or blank between two: not a story
        story = clean_story(raw)
        reason = broken_reason(story, min_chars, max_chars)
        if reason:
            report.drop(reason)
        else:
            out.append(story)
    return out


def deduplicate(stories: list[str], seen: set[str], report: PrepareReport, reason: str = "duplicate") -> list[str]:
    """Keep the first occurrence of each story; `seen` is updated in place."""
    out = []
    for story in stories:
        key = dedup_key(story)
        if key in seen:
            report.drop(reason)
            continue
        seen.add(key)
        out.append(story)
    return out


def make_splits(
    train_raw: list[str],
    valid_raw: list[str] | None,
    *,
    seed: int,
    val_fraction: float,
    max_stories: int,
    max_val_stories: int,
    min_chars: int,
    max_chars: int,
) -> tuple[list[str], list[str], PrepareReport]:
    """Clean, deduplicate and split. The source's own valid split is kept when it has one.

    Deterministic: the only randomness is a `random.Random(seed)` shuffle of already-sorted input.
    """
    report = PrepareReport()
    train = clean_all(train_raw, min_chars, max_chars, report)
    rng = random.Random(seed)
    if valid_raw:
        val = clean_all(valid_raw, min_chars, max_chars, report)
        seen: set[str] = set()
        val = deduplicate(val, seen, report)
        # a train story that is also in valid would leak the held-out set into training
        train = deduplicate(train, seen, report, reason="in_valid")
    else:
        train = deduplicate(train, set(), report)
        rng.shuffle(train)
        n_val = max(1, round(len(train) * val_fraction))
        if len(train) < 2:
            raise DataError(f"only {len(train)} usable stories: need at least 2 to split train/val")
        val, train = train[:n_val], train[n_val:]
    rng.shuffle(train)
    if max_stories:
        train = train[:max_stories]
    if max_val_stories:
        val = val[:max_val_stories]
    if not train:
        raise DataError("no usable train stories left after cleaning; check prepare.min_chars/max_chars")
    if not val:
        raise DataError("no usable val stories left after cleaning")
    return train, val, report


def join_stories(stories: list[str]) -> str:
    """The on-disk format of a prepared split: each story followed by a `<|endoftext|>` line."""
    return "".join(f"{s}\n{EOT}\n" for s in stories)


def read_prepared(path: str | Path) -> list[str]:
    """Read a split written by `join_stories`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; run `dvc repro prepare` first")
    text = path.read_text(encoding="utf-8")
    stories = [s.strip("\n") for s in split_stories(text, str(path))]
    stories = [s for s in stories if s]
    if not stories:
        raise DataError(f"{path}: holds no stories")
    return stories


def summarize(values: list[int]) -> dict[str, float]:
    """min/p50/p90/max/mean, the quick-stats shape used in every metrics file."""
    if not values:
        return {"min": 0, "p50": 0, "p90": 0, "max": 0, "mean": 0.0}
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 9
    return {
        "min": ordered[0],
        "p50": statistics.median(ordered),
        "p90": q[8],
        "max": ordered[-1],
        "mean": round(sum(ordered) / len(ordered), 2),
    }


def split_stats(stories: list[str]) -> dict:
    return {
        "stories": len(stories),
        "bytes": sum(len(s.encode("utf-8")) for s in stories),
        "chars": summarize([len(s) for s in stories]),
    }


def read_shards(shards: list[Shard]) -> dict[str, list[str]]:
    """Raw stories of every shard, by split ("train", "valid"); a leading BOM is not part of the first story."""
    raw: dict[str, list[str]] = {"train": [], "valid": []}
    for shard in shards:
        text = shard.path.read_text(encoding="utf-8", errors="replace").removeprefix("\ufeff")
        if not text.strip():
            raise DataError(f"{shard.path}: file is empty")
        raw[shard.split] += split_stories(text, str(shard.path))
    return raw


def prepare_corpus(shards: list[Shard], cfg) -> tuple[list[str], list[str], dict]:
    """Cleaned, deduplicated (train, val) stories of the shards, and the prepare metrics. cfg: PrepareConfig."""
    raw = read_shards(shards)
    train, val, report = make_splits(
        raw["train"], raw["valid"] or None, seed=cfg.seed, val_fraction=cfg.val_fraction,
        max_stories=cfg.max_stories, max_val_stories=cfg.max_val_stories,
        min_chars=cfg.min_chars, max_chars=cfg.max_chars,
    )
    metrics = {
        "train": split_stats(train),
        "val": split_stats(val),
        "source": {"shards": len(shards), "raw_stories": sum(1 for v in raw.values() for s in v if s.strip()),
                   "own_valid_split": bool(raw["valid"])},
        "dropped": dict(sorted(report.dropped.items())),
    }
    return train, val, metrics


def take_chars(stories: list[str], max_chars: int) -> list[str]:
    """The first stories whose total length reaches `max_chars` (0 = all)."""
    if not max_chars:
        return stories
    kept, total = [], 0
    for story in stories:
        if total >= max_chars:
            break
        kept.append(story)
        total += len(story)
    return kept
