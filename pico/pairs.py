"""Rejected stories made from a chosen one by breaking one copied value, the ways small models break them: a value's
tail said twice ("after sunset after sunset"), a value cut words short ("the storm outside is only inside."), a
copied word broken off ("a red umbre"), the article before it swapped ("a iron bell"). A pair of the two differs
only where the copy must go on, stop or start, so DPO's gradient lands there. Used by `generate` (`stutter_pairs`)
and by the dpo stage (`dpo.onpolicy.cut_pairs`, `dpo.onpolicy.article_pairs`).
"""

from __future__ import annotations

import random
import re
from typing import Callable

from pico.checks import check_story, failed_checks
from pico.spec import Spec
from pico.stories import cap, the

ARTICLE_FIELDS = ("object", "setting", "supporting", "taboo", "twist")  # values that may open with "a"/"an"
WORD_FIELDS = ("object", "taboo", "twist")  # the fields a story quotes whole, whose ends the model must find
VALUE_CHECK = {"object": "object_used", "taboo": "taboo_present", "twist": "twist_present"}  # WORD_FIELDS' checks


def value_forms(value: str) -> list[str]:
    """How a story may quote a value: as is, capitalised, and with "the" for its article ("the brass key")."""
    return list(dict.fromkeys([value, cap(value), the(value), cap(the(value))]))


def stuttered(story: str, value: str, n_words: int) -> str | None:
    """`story` with the last `n_words` words of `value` said twice where the story first quotes it ("never whistle
    after sunset after sunset"), the way small models fail at a copied value's end; None where it is not quoted."""
    words = value.split()
    if len(words) < n_words:
        return None
    for form in sorted(value_forms(value), key=len, reverse=True):
        at = story.find(form)
        if at >= 0:
            end = at + len(form)
            return story[:end] + " " + " ".join(form.split()[-n_words:]) + story[end:]
    return None


def cut_short(story: str, value: str, n_words: int) -> str | None:
    """`story` with the last `n_words` words of `value` dropped where the story first quotes it ("the storm outside
    is only inside." for "... only inside the house"), the way DPO models fail at a copied value's end; None where
    it is not quoted or fewer than two of its words would be left."""
    words = value.split()
    if len(words) - n_words < 2:
        return None
    for form in sorted(value_forms(value), key=len, reverse=True):
        at = story.find(form)
        if at >= 0:
            kept = " ".join(form.split()[:-n_words])
            return story[:at] + kept + story[at + len(form):]
    return None


def broken_word(story: str, value: str, rng: random.Random) -> str | None:
    """`story` with one word of `value` (5 letters or more) broken off after 3 letters or more where the story
    first quotes the value ("a red umbre" for "a red umbrella", "Profess" for "Professor Quill"), the way small
    models stop a copy mid-word; None where the value has no such word or is not quoted."""
    long_words = [i for i, w in enumerate(value.split()) if w.isalpha() and len(w) >= 5]
    if not long_words:
        return None
    for form in sorted(value_forms(value), key=len, reverse=True):
        at = story.find(form)
        if at >= 0:
            words = form.split()
            i = rng.choice(long_words)
            words[i] = words[i][: rng.randint(3, len(words[i]) - 2)]
            return story[:at] + " ".join(words[: i + 1]) + story[at + len(form):]
    return None


def value_edited(story: str, spec: Spec, rng: random.Random, edit: Callable[[str, str, int], str | None],
                 n_range: tuple[int, int], fails: Callable[[str], str]) -> str | None:
    """`story` with `edit(story, value, n)` applied to its taboo, twist or object (in a random order), n drawn from
    `n_range` (then its smallest), where the checker then fails exactly `fails(field)`; None where no edit does."""
    fields = list(WORD_FIELDS)
    rng.shuffle(fields)
    n_words = rng.randint(*n_range)
    for f in fields:
        for n in dict.fromkeys((n_words, n_range[0])):
            out = edit(story, getattr(spec, f), n)
            if out is not None and failed_checks(check_story(out, spec)) == [fails(f)]:
                return out
    return None


def value_cut_story(story: str, spec: Spec, rng: random.Random) -> str | None:
    """`story` (which passes every check) with one copied value broken, such that the checker fails exactly one
    check; None where no break does. The kinds are tried in a random order (by `rng`), each until one works:
    `words_cut`, one of its taboo, twist or object loses 1-3 words (that value's check fails); `word_broken`, a
    word of a copied field or name is broken mid-word (`fluent` fails; a break that leaves an English word, "a
    bra" for "a brass key", fails nothing and is drawn again); `stutter`, a taboo, twist or object's last 2-4
    words are said twice (`no_repetition` fails). The first two are where a copy stopped too early, the last
    where it went on too long: together they pin a copy's end from both sides."""
    def words_cut() -> str | None:
        return value_edited(story, spec, rng, cut_short, (1, 3), lambda f: VALUE_CHECK[f])

    def word_broken() -> str | None:
        fields = ["setting", "protagonist", "supporting", *WORD_FIELDS]
        rng.shuffle(fields)
        for f in fields:
            for _ in range(3):
                cut = broken_word(story, getattr(spec, f), rng)
                if cut is None:
                    break
                if failed_checks(check_story(cut, spec)) == ["fluent"]:
                    return cut
        return None

    def stutter() -> str | None:
        return value_edited(story, spec, rng, stuttered, (2, 4), lambda f: "no_repetition")

    kinds = [words_cut, word_broken, stutter]
    rng.shuffle(kinds)
    return next((out for kind in kinds if (out := kind()) is not None), None)


def article_swapped(story: str, value: str) -> str | None:
    """`story` with "a" and "an" swapped where it first writes `value`'s words after an article ("found a iron bell"
    for "an iron bell"), the way small models write the article themselves and copy the rest; None where `value`
    does not open with "a"/"an" or the story never writes it after one."""
    head, _, core = value.partition(" ")
    if head.lower() not in ("a", "an") or not core:
        return None
    m = re.search(r"(?<![A-Za-z'])(an?|An?) " + re.escape(core) + r"(?![A-Za-z])", story)
    if m is None:
        return None
    swapped = {"a": "an", "an": "a", "A": "An", "An": "A"}[m.group(1)]
    return story[: m.start(1)] + swapped + story[m.end(1):]


def article_swapped_story(story: str, spec: Spec, rng: random.Random) -> str | None:
    """`story` (which passes every check) with the article before one copied value swapped (`article_swapped`, its
    fields in a random order by `rng`), where the checker then fails only `fluent`; None where no value's does."""
    fields = list(ARTICLE_FIELDS)
    rng.shuffle(fields)
    for f in fields:
        out = article_swapped(story, getattr(spec, f))
        if out is not None and failed_checks(check_story(out, spec)) == ["fluent"]:
            return out
    return None
