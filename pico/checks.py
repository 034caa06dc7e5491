"""The constraint checker: does a story follow its spec? Used by `generate` (to validate data and hard
pairs) and by `evaluate` (to score generations), so both judge with the same rules.

The checks are lexical on purpose: transparent, fast and deterministic. A phrase such as the taboo rule
counts as present when most of its distinctive content words (lightly stemmed) occur together in one
sentence, so a paraphrase passes and a passing mention of one word does not.
"""

from __future__ import annotations

import re
from collections import Counter

from pico.spec import Spec

CHECKS = ("paragraph_count", "protagonist_named", "object_used", "taboo_present", "twist_present",
          "unsettling_ending", "no_special_tokens")
MIN_PARAGRAPHS, MAX_PARAGRAPHS = 2, 4
PHRASE_THRESHOLD = 0.75

STOPWORDS = frozenset("""
a an the and or but of to in on at for from by with is are was were be been being has have had it its it's
that this these those after before when while your you their them they he she him her his hers what which who
whom whose do does did only own as into out up than then there here so if just very can will would should
could all any some no nor also too even every each other such same about around through again never
where will not
""".split())
HAPPY_WORDS = frozenset("""
happily happy laughed laughing laugh giggled giggling cheerful cheerfully sunshine sunny delighted hugged hug
hugs glad joy joyful relieved wonderful celebrated celebrate cozy fun smiled smiling grinned perfectly
""".split())
EERIE_WORDS = frozenset("""
still again waiting wait waits whisper whispers whispering dark darkness behind cold somewhere watching watches
watched never tonight breath breathing breathes silence quiet shadow shadows knock knocking alone gone empty
beneath under remember remembers closer door doors listening listen nobody something someone wrong
""".split())
SPECIAL_TOKEN_RE = re.compile(r"<\|[^|>]*\|>")
_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_OBJECT_CORE_RE = re.compile(r"\s+(?:that|with|on|sealed|drawn|which|who)\s+.*$")


def stem(word: str) -> str:
    """A deliberately tiny stemmer: knocks/knocking/knocked -> knock, names/named/name -> nam."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "es" and word[-3] not in "sxzh":
                continue  # names -> name (then nam below), but boxes -> box
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def content_words(text: str) -> list[str]:
    return [stem(w) for w in words(text) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n+", text.strip()) if p.strip()]


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])[\"']?\s+|\n+", text) if s.strip()]


def _coverage(wanted: set[str], text: str) -> float:
    return max((len(wanted & set(content_words(s))) / len(wanted) for s in sentences(text)), default=0.0)


def phrase_present(phrase: str, text: str, exclude: set[str] = frozenset()) -> bool:
    """Whether most of the phrase's distinctive content words occur together in one sentence of `text`.

    Words in `exclude` (those of the other spec fields, such as the object or the setting) do not count:
    naming the object must not make the taboo rule look stated. When that leaves fewer than two words,
    every word of the phrase must appear in one sentence instead.
    """
    wanted = set(content_words(phrase))
    if not wanted:
        return True
    distinctive = wanted - exclude
    if len(distinctive) >= 2:
        return _coverage(distinctive, text) >= PHRASE_THRESHOLD
    return _coverage(wanted, text) >= 1.0


def object_core(obj: str) -> str:
    """'a pocket watch that runs backward' -> 'pocket watch' (what any mention of it must say)."""
    core = re.sub(r"^(a|an|the)\s+", "", obj.strip(), flags=re.IGNORECASE)
    return _OBJECT_CORE_RE.sub("", core)


def check_story(story: str, spec: Spec) -> dict[str, bool]:
    """Every check, True when the story satisfies it."""
    paras = paragraphs(story)
    last = paras[-1] if paras else ""
    last_words = set(words(last))
    core = set(content_words(object_core(spec.object)))
    story_words = set(content_words(story))
    names = set(content_words(f"{spec.protagonist} {spec.supporting}"))
    scene = set(content_words(f"{object_core(spec.object)} {spec.setting}")) | names
    return {
        "paragraph_count": MIN_PARAGRAPHS <= len(paras) <= MAX_PARAGRAPHS,
        "protagonist_named": re.search(rf"\b{re.escape(spec.protagonist)}\b", story) is not None,
        "object_used": bool(core) and core <= story_words,
        "taboo_present": phrase_present(spec.taboo, story, scene),
        "twist_present": phrase_present(spec.twist, story, scene | set(content_words(spec.taboo))),
        "unsettling_ending": not (last_words & HAPPY_WORDS) and bool(last_words & EERIE_WORDS),
        "no_special_tokens": SPECIAL_TOKEN_RE.search(story) is None,
    }


def failed_checks(results: dict[str, bool]) -> list[str]:
    return [name for name in CHECKS if not results[name]]


def text_stats(text: str) -> dict[str, float]:
    """Repetition and diversity of a generation: repeated-4-gram rate and distinct-1/2/3."""
    toks = words(text)
    out: dict[str, float] = {"n_words": float(len(toks)), "n_paragraphs": float(len(paragraphs(text)))}
    for n in (1, 2, 3):
        grams = list(zip(*(toks[i:] for i in range(n))))
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    fours = list(zip(*(toks[i:] for i in range(4))))
    counts = Counter(fours)
    repeated = sum(c for c in counts.values() if c > 1)
    out["repeated_4gram_rate"] = repeated / len(fours) if fours else 0.0
    return out
