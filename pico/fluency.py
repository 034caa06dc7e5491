"""Fluency of English prose, for the checker's `fluent` check: a word-class bigram model fitted only on
TinyStories (reference text, never model outputs), shipped as the counts table `pico/fluency_model.json`, and a
case test.

Each word becomes a class: itself if it is one of the 300 most frequent words of the reference text (mostly
function words and common verbs: the skeleton of a sentence), otherwise a shape class (<Name>, <num>, <ly>,
<ing>, <ed>, <s>, <w>). So a rich vocabulary (a teacher LLM's) reads like a simple one, while word order still
counts. A text scores the mean pointwise mutual information of its class bigrams, log2 P(class | previous) /
P(class), in bits: fluent text is positive (neighbours predict each other), word salad strongly negative; word
salad also holds many class bigrams the reference text never showed. `case_anomalies` counts words whose case
does not fit their place (a lower-case word opening a sentence, a capital 'the' inside one), which shuffled
words show and prose does not. Deterministic, about a millisecond per story.

Rebuild the table (byte-identical for the same shards; a test checks it) with
    python -m pico.fluency --tinystories ../shared/data/tinystories/train --out pico/fluency_model.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable

MODEL_PATH = Path(__file__).with_name("fluency_model.json")
VOCAB_SIZE = 300  # the frequent words kept as themselves; every other word becomes a shape class
MIN_BIGRAM_COUNT = 2  # pairs seen once are dropped from the table (noise, and half its size)
DISCOUNT = 0.75  # absolute discounting, interpolated with the unigram

_FOLD = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": " - ",
                       "\u2013": " - ", "\u2026": "..."})
_TITLE_ABBREV_RE = re.compile(r"\b(Mr|Mrs|Ms|Dr|St|Prof|Mt)\.")
_AM_PM_RE = re.compile(r"\b([ap])\.m\.", re.IGNORECASE)
_TOKEN_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|\d+(?:[.:]\d+)?|[.!?]+|[,;:()\"-]")
_SUFFIX_CLASSES = (("ly", "<ly>"), ("ing", "<ing>"), ("ed", "<ed>"))
# Words that English writes in lower case inside a sentence (so a capital one there is out of place).
FUNCTION_WORDS = frozenset("""
a an the and or but of to in on at for from by with is are was were be been being has have had it its that this these
those after before when while your you their them they he she him her his what which who whom whose do does did as
into out up than then there here so if just very can will would should could all any some no nor also too even every
each other such about around through again never where not
""".split())


def tokens(text: str) -> list[str]:
    """Words, numbers and punctuation; 'Mr.' and 'a.m.' lose their dots so they do not end a sentence."""
    text = _TITLE_ABBREV_RE.sub(r"\1", text.translate(_FOLD))
    return _TOKEN_RE.findall(_AM_PM_RE.sub(lambda m: m.group(1) + "m", text))


def _ends_sentence(tok: str, initial: bool) -> bool:
    # an opening quote keeps the next word sentence-initial: '"Never' starts a sentence
    return tok[0] in ".!?" or (tok == '"' and initial)


def _names(paragraph_tokens: list[list[str]], vocab: frozenset[str]) -> set[str]:
    """Capitalized rare words seen inside a sentence: names, also when they start one."""
    names = set()
    for toks in paragraph_tokens:
        initial = True
        for t in toks:
            if t[0].isupper() and not initial and t.lower() not in vocab:
                names.add(t)
            initial = _ends_sentence(t, initial)
    return names


def word_class(tok: str, initial: bool, vocab: frozenset[str], names: set[str], known_names: frozenset[str] = frozenset()) -> str:
    c = tok[0]
    if c in ".!?":
        return c
    if c in ",;:()-":
        return ","  # clause punctuation is one class: rich prose uses dashes and semicolons where TinyStories has commas
    if c == '"':
        return '"'
    if c.isdigit():
        return "<num>"
    if tok in known_names:
        return "<Name>"  # 'Old Pete' is a name even though 'old' is a frequent word
    low = tok.lower()
    if low in vocab:
        return low
    if c.isupper() and (not initial or tok in names):
        return "<Name>"
    for suffix, cls in _SUFFIX_CLASSES:
        if low.endswith(suffix) and len(low) > len(suffix) + 2:
            return cls
    if low.endswith("s") and not low.endswith("ss") and len(low) > 3:
        return "<s>"
    return "<w>"


def case_anomalies(paragraph: str) -> tuple[int, int]:
    """(words, words whose case does not fit their place): a lower-case word starting a sentence, or a capital
    function word inside one. Shuffled words keep their case and land in the wrong place; prose almost never does."""
    n = bad = 0
    state = "start"  # start: a capital is due; mid: function words are lower case; free: either (after a quote or colon)
    for tok in tokens(paragraph):
        c = tok[0]
        if c in ".!?":
            state = "free" if tok == "..." else "start"
        elif c == '"' or c in ":(-":
            state = "free"
        elif c in ",;)":
            state = "mid"
        elif c.isalpha():
            n += 1
            bad += (state == "start" and c.islower()) or (state == "mid" and c.isupper() and tok.lower() in FUNCTION_WORDS)
            state = "mid"
        else:
            state = "mid"
    return n, bad


def class_sequences(text: str, vocab: frozenset[str], known_names: Iterable[str] = ()) -> list[list[str]]:
    """One class sequence per paragraph (a line), framed by <p> and </p>. `known_names` (the spec's characters)
    are names wherever they stand, also where a word of theirs is a frequent word."""
    known = frozenset(t for name in known_names for t in tokens(name) if t[0].isupper())
    paragraph_tokens = [tokens(p) for p in text.split("\n") if p.strip()]
    names = _names(paragraph_tokens, vocab)
    out = []
    for toks in paragraph_tokens:
        seq, initial = ["<p>"], True
        for t in toks:
            seq.append(word_class(t, initial, vocab, names, known))
            initial = _ends_sentence(t, initial)
        seq.append("</p>")
        out.append(seq)
    return out


class ClassBigramModel:
    """P(class | previous class) by absolute discounting, interpolated with the add-half unigram."""

    def __init__(self, vocab: Iterable[str], unigram: dict[str, int], bigram: dict[str, int]):
        self.vocab = frozenset(vocab)
        self.unigram = unigram
        self.bigram = {tuple(k.split(" ")): v for k, v in bigram.items()}
        self.total = sum(unigram.values())
        self.context_total: Counter = Counter()
        self.context_types: Counter = Counter()
        for (a, _), n in self.bigram.items():
            self.context_total[a] += n
            self.context_types[a] += 1

    def p_unigram(self, cls: str) -> float:
        return (self.unigram.get(cls, 0) + 0.5) / (self.total + 0.5 * (len(self.unigram) + 1))

    def pmi(self, prev: str, cls: str) -> float:
        """log2 P(cls | prev) / P(cls): how much the previous class predicts this one, in bits."""
        pu = self.p_unigram(cls)
        n_ctx = self.context_total.get(prev, 0)
        if not n_ctx:
            return 0.0
        backoff = DISCOUNT * self.context_types[prev] / n_ctx
        p = max(self.bigram.get((prev, cls), 0) - DISCOUNT, 0) / n_ctx + backoff * pu
        return math.log2(p / pu)

    def paragraph_stats(self, text: str, known_names: Iterable[str] = ()) -> list[tuple[list[float], float]]:
        """Per paragraph: the PMI of every class bigram, and the share of its class bigrams the reference text never
        showed (twice), high for word salad. Names are found over the whole text."""
        out = []
        for seq in class_sequences(text, self.vocab, known_names):
            pairs = list(zip(seq, seq[1:]))
            unseen = sum(p not in self.bigram for p in pairs) / len(pairs) if pairs else 0.0
            out.append(([self.pmi(a, b) for a, b in pairs], unseen))
        return out

    def bigram_pmis(self, text: str) -> list[float]:
        return [v for pmis, _ in self.paragraph_stats(text) for v in pmis]

    def score(self, text: str) -> float:
        """Mean bigram PMI of the text in bits; 0.0 for text without words."""
        vals = self.bigram_pmis(text)
        return sum(vals) / len(vals) if vals else 0.0


@lru_cache(maxsize=1)
def default_model() -> ClassBigramModel:
    table = json.loads(MODEL_PATH.read_text(encoding="utf-8"))
    return ClassBigramModel(table["vocab"], table["unigram"], table["bigram"])


# ----------------------------------------------------------------------------------------------- building
def fit_table(texts: list[str], vocab_size: int = VOCAB_SIZE, min_count: int = MIN_BIGRAM_COUNT) -> dict:
    """The counts table of the model, from reference texts only. Sorted keys: same texts, same bytes."""
    words: Counter = Counter()
    for text in texts:
        initial = True
        for t in tokens(text):
            if t[0].isalpha() and (initial or not t[0].isupper()):  # names inside sentences are not vocabulary
                words[t.lower()] += 1
            initial = _ends_sentence(t, initial)
    vocab = frozenset(w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size])
    unigram: Counter = Counter()
    bigram: Counter = Counter()
    for text in texts:
        for seq in class_sequences(text, vocab):
            unigram.update(seq[1:])
            bigram.update(f"{a} {b}" for a, b in zip(seq, seq[1:]))
    return {
        "about": "pico.fluency class-bigram counts fitted on TinyStories train shards; rebuild with "
                 "`python -m pico.fluency`",
        "vocab": sorted(vocab),
        "unigram": dict(sorted(unigram.items())),
        "bigram": {k: v for k, v in sorted(bigram.items()) if v >= min_count},
    }


def reference_texts(folder: Path) -> list[str]:
    """Every TinyStories story of the .txt shards in `folder`, in sorted file order, cleaned as `prepare` does."""
    from pico.tinystories import clean_story, split_stories

    out = []
    for path in sorted(folder.glob("*.txt")):
        out += [s for s in (clean_story(raw) for raw in split_stories(path.read_text(encoding="utf-8"), str(path))) if s]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fit the fluency model's counts table on TinyStories shards.")
    ap.add_argument("--tinystories", type=Path, required=True, help="a folder of TinyStories .txt shards (train)")
    ap.add_argument("--out", type=Path, default=MODEL_PATH)
    args = ap.parse_args(argv)
    table = fit_table(reference_texts(args.tinystories))
    args.out.write_text(json.dumps(table, separators=(",", ":"), sort_keys=False) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(table['vocab'])} words, {len(table['bigram'])} class bigrams")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
