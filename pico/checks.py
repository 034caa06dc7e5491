"""The constraint checker: does a story follow its spec, and does it read as a story? Used by `generate`
(to validate data and hard pairs), by `evaluate` (to score generations) and by `pico check`, so all of them
judge with the same rules. Transparent and deterministic: word lists, counts and one small fitted table.

The checks, in `CHECKS` order:
- paragraph_count: 2-4 paragraphs, each a real one (at least 3 words).
- protagonist_named: the protagonist's name occurs as a word.
- object_used: one sentence names the object: its head noun and at least half of its other core words.
- taboo_present: one sentence states the taboo (most of its distinctive words, paraphrase allowed) with words
  of its own, not as a label or a fragment stuffed among other field words.
- twist_present: the same for the twist.
- unsettling_ending: the last paragraph, as a whole, carries cues of dread from two kinds (presence,
  persistence, loss), outweighs any happy cues, and its last sentence is not a happy one.
- fluent: story-length English prose: the class-bigram fluency score of the story and of each paragraph
  (`pico.fluency`, fitted on TinyStories) is above that of word salad.
- coherent_order: sentences come in a readable order: no pronoun before any character is named, no opening
  sentence that continues something, the object introduced before it is referred back to, the taboo
  before the twist.
- no_repetition: no loop: no sentence said three times, no 4-word run eight times or more, and few
  repeated 4-grams.
- not_restated: the story is not the spec restated: no `Label: value` or bullet lines of the prompt, no
  talk of protagonists and twists, and most of its words are its own rather than the spec's.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from pico.spec import Spec

CHECKS = ("paragraph_count", "protagonist_named", "object_used", "taboo_present", "twist_present",
          "unsettling_ending", "fluent", "coherent_order", "no_repetition", "not_restated")
MIN_PARAGRAPHS, MAX_PARAGRAPHS = 2, 4
MIN_PARAGRAPH_WORDS = 3
PHRASE_THRESHOLD = 0.75  # share of a taboo/twist's distinctive words one sentence must hold
MAX_FIELD_WORDS_PER_OWN_WORD = 3  # a stating sentence: at most this many other-field words per word of its own
MIN_STORY_WORDS, MIN_STORY_SENTENCES = 40, 4
MIN_STORY_FLUENCY = -0.3  # bits; references score above 0, word salad below -0.8
MIN_PARAGRAPH_FLUENCY = -1.2  # for paragraphs of at least FLUENCY_MIN_TOKENS tokens
FLUENCY_MIN_TOKENS = 25
MAX_REPEATED_4GRAM_RATE = 0.3
MAX_4GRAM_COUNT = 7  # a 4-word run said 8 times is a loop (a refrain is said two or three times)
MAX_SENTENCE_REPEATS = 2
MAX_SPEC_WORD_SHARE = 0.6  # of the story's content words; templates and teacher stories stay below 0.5

STOPWORDS = frozenset("""
a an the and or but of to in on at for from by with is are was were be been being has have had it its it's
that this these those after before when while your you their them they he she him her his hers what which who
whom whose do does did only own as into out up than then there here so if just very can will would should
could all any some no nor also too even every each other such same about around through again never
where will not
""".split())
# Words that talk about the task rather than tell the story: they are never a sentence's "own" words.
META_WORDS = frozenset("""
rule rules taboo taboos twist twists story stories spec specification setting protagonist character characters
object objects important supporting title constraint constraints paragraph paragraphs horror eerie suspenseful
unsettling implication field prompt
""".split())
# Phrases a story does not use but a restated spec does (each counts once).
META_PHRASES = ("protagonist", "supporting character", "important object", "taboo rule", "the taboo", "the twist",
                "twist is", "the setting is", "the title", "story specification", "paragraphs", "constraint")
# Words that announce a statement, so a bare rule or reveal right after them is part of the telling:
# 'Agnes had one rule. Never answer the door.' / 'Then she understood. The sound came from the walls.'
ANNOUNCING_WORDS = frozenset("""
rule law warned warning told tell said say whispered wrote written read note sign knew know understood
understand realized realised saw see truth remembered learned meant promised explained
""".split())

CONTINUATION_OPENERS = ("then", "now", "but", "and", "so", "still", "later", "afterwards", "again",
                        "that was when", "that night", "by then", "after that")
CHARACTER_PRONOUNS = frozenset({"he", "she", "him", "her", "his", "hers", "himself", "herself"})
NEGATIONS = frozenset({"not", "never", "no", "n't", "nobody", "nothing", "without", "didn't", "don't", "doesn't",
                       "wasn't", "couldn't", "can't", "won't", "isn't", "wouldn't", "hadn't"})

# Cues of an unsettling ending, by kind: something unseen is there, it goes on, something is lost, wrong or
# withheld (negation: "has not lifted", "does not remember"). Happy cues count against it.
PRESENCE_CUES = frozenset("""
something someone somebody somewhere whoever whatever thing things watching watched watches watch eyes stare
stares staring stared whisper whispers whispering whispered knock knocks knocking knocked breath breathing
breathes footsteps footstep steps shadow shadows behind beneath under underneath below inside voice voices figure
shape dark darkness hums humming scratching scratch tapping hear hears heard listen listens listening calling calls
called ringing rings knows knew name moving moves spins turning touch face faces reflection mirror
""".split())
PERSISTENCE_CUES = frozenset("""
still again always forever every each closer nearer louder waiting wait waits tonight continues continued keep keeps
kept anymore since yet now began begins returned returns back lately started starts soon until tomorrow
""".split())
LOSS_CUES = frozenset("""
gone empty missing vanished disappeared nobody nothing never not no none cannot can't couldn't don't doesn't didn't
isn't wasn't hasn't haven't hadn't won't wouldn't forgot forgotten remember remembers wrong cold alone late dead died
drowned buried grave bones blood silent silence lost stopped afraid fear scream screamed begging trapped
""".split())
HAPPY_CUES = frozenset("""
happily happy laughed laughing laugh laughs giggled giggling cheerful cheerfully sunshine sunny delighted hugged
hug hugs glad joy joyful relieved wonderful celebrated celebrate cozy fun smiled smiling smile grinned perfectly
safe fine best friends friend lovely bright sweet cheered peaceful nice great love loved loves proud thanked thank
together learned lesson moral enjoyed excited beautiful kissed shared helped
""".split())

_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_OBJECT_CORE_RE = re.compile(r"\s+(?:that|with|on|sealed|drawn|which|who|of|from|in|for)\s+.*$")
_FOLD_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u00ab": '"',
                              "\u00bb": '"'})
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"')\]]*\s+")
_TITLES = frozenset({"mr", "mrs", "ms", "dr", "st", "prof", "mt"})
_LABEL_LINE_RE = re.compile(r"^\s*(title|setting|protagonist|supporting character|important object|taboo rule|"
                            r"twist|constraints|story)\s*:", re.IGNORECASE | re.MULTILINE)
_BULLET_LINE_RE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S", re.MULTILINE)


# ----------------------------------------------------------------------------------------------- words
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
    return _WORD_RE.findall(text.lower().translate(_FOLD_QUOTES))


def content_words(text: str) -> list[str]:
    return [stem(w) for w in words(text) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


@lru_cache(maxsize=1)
def _meta_stems() -> frozenset[str]:
    return frozenset(stem(w) for w in META_WORDS)


@lru_cache(maxsize=1)
def _announcing_stems() -> frozenset[str]:
    return frozenset(stem(w) for w in ANNOUNCING_WORDS)


# ----------------------------------------------------------------------------------------------- text units
def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n+", text.strip()) if p.strip()]


def sentences(text: str) -> list[str]:
    """Sentences of a text, paragraph by paragraph. A stop followed by a capital (or quote or digit) ends one,
    except after a title such as 'Mr.' ('Mr. Hale said')."""
    out = []
    for para in paragraphs(text):
        start = 0
        for m in _SENTENCE_END_RE.finditer(para):
            nxt = para[m.end(): m.end() + 1]
            if not (nxt.isupper() or nxt.isdigit() or nxt in "\"'(\u201c\u2018"):
                continue
            last_word = para[start: m.start()].rsplit(None, 1)[-1].lower() if para[start: m.start()].strip() else ""
            if last_word in _TITLES:
                continue
            out.append(para[start: m.end()].strip())
            start = m.end()
        if para[start:].strip():
            out.append(para[start:].strip())
    return out


def _is_pure_speech(sentence: str, open_quote: bool) -> tuple[bool, bool]:
    """Whether every word of the sentence is inside a quotation, and whether a quotation is open after it."""
    outside = False
    in_quote = open_quote
    for ch in sentence.translate(_FOLD_QUOTES):
        if ch == '"':
            in_quote = not in_quote
        elif ch.isalnum() and not in_quote:
            outside = True
    return not outside, in_quote


def units(paragraph: str) -> list[str]:
    """Sentences of a paragraph with speech joined to its attribution, so a quoted line is part of a sentence:
    '"One rule," Agnes said. "Never answer."' is one unit, and so is '"Never answer." Agnes said.'"""
    out: list[str] = []
    pending: list[str] = []  # speech waiting for an attribution after it
    open_quote = False
    for s in sentences(paragraph):
        pure, open_quote = _is_pure_speech(s, open_quote)
        if pure:
            if out and '"' in out[-1].translate(_FOLD_QUOTES) and not pending:
                out[-1] = f"{out[-1]} {s}"
            else:
                pending.append(s)
            continue
        out.append(" ".join(pending + [s]))
        pending = []
    if pending:
        out.append(" ".join(pending))
    return out


def story_units(text: str) -> list[tuple[int, str]]:
    """(paragraph index, unit) for every unit of the story, in order."""
    return [(i, u) for i, p in enumerate(paragraphs(text)) for u in units(p)]


# ----------------------------------------------------------------------------------------------- spec words
def object_core(obj: str) -> str:
    """'a pocket watch that runs backward' -> 'pocket watch' (what any mention of it must say)."""
    core = re.sub(r"^(a|an|the)\s+", "", obj.strip(), flags=re.IGNORECASE)
    return _OBJECT_CORE_RE.sub("", core)


@dataclass(frozen=True)
class SpecWords:
    """The content words of each field, computed once per spec."""

    fields: dict[str, frozenset[str]]
    all: frozenset[str]
    object_core: tuple[str, ...]
    character_words: frozenset[str]


def spec_words(spec: Spec) -> SpecWords:
    fields = {name: frozenset(content_words(value)) for name, value in spec.to_dict().items()}
    every = frozenset().union(*fields.values())
    characters = fields["protagonist"] | fields["supporting"]
    return SpecWords(fields, every, tuple(content_words(object_core(spec.object))), characters)


# ----------------------------------------------------------------------------------------------- stated phrases
def coverage(wanted: set[str], unit: str) -> float:
    return len(wanted & set(content_words(unit))) / len(wanted) if wanted else 1.0


def fields_in(unit: str, sw: SpecWords) -> set[str]:
    """The words of the fields a unit holds: the names and object always, and every other field of which it
    holds at least half (an isolated common word such as 'one' or 'night' does not bring its field in)."""
    found = set(content_words(unit))
    held = set(sw.character_words) | set(sw.object_core)
    for name, field_words in sw.fields.items():
        if field_words and 2 * len(field_words & found) >= len(field_words):
            held |= field_words
    return held


def own_words(unit: str, sw: SpecWords) -> set[str]:
    """Content words of the unit that belong to no field it holds and do not talk about the task."""
    held = fields_in(unit, sw)
    return {w for w in content_words(unit) if w not in held and w not in _meta_stems()}


def announces(unit: str, sw: SpecWords) -> bool:
    """Whether a unit introduces what follows it: it has words of its own, one of them a speech/knowledge word."""
    return bool(own_words(unit, sw)) and bool(set(content_words(unit)) & _announcing_stems())


def _wanted(phrase: str, exclude: set[str]) -> tuple[set[str], float]:
    """The words a statement of `phrase` must hold, and the share of them it must hold."""
    wanted = set(content_words(phrase))
    distinctive = wanted - exclude
    if len(distinctive) >= 2:
        return distinctive, PHRASE_THRESHOLD
    return wanted, 1.0  # too few words of its own: every word of the phrase must be there


def stating_unit(phrase: str, text: str, sw: SpecWords, exclude: set[str], *, last: bool = False) -> int | None:
    """Index (in `story_units`) of the first (or last) unit that states `phrase`, or None.

    A unit states the phrase when it holds enough of the phrase's distinctive words (those not in `exclude`,
    the words of other fields such as the object or the names, so naming the object does not make the
    taboo look stated), and when it is a sentence of the story: it has words of its own (or the unit
    right before it, in the same paragraph, announces it), and no more than a few other-field words per
    word of its own, so a fragment stuffed among field words does not count.
    """
    wanted, threshold = _wanted(phrase, exclude)
    if not wanted:
        return None
    phrase_words = set(content_words(phrase))
    found = None
    all_units = story_units(text)
    for k, (para, unit) in enumerate(all_units):
        if coverage(wanted, unit) < threshold:
            continue
        own = own_words(unit, sw) - phrase_words
        if not own and k > 0 and all_units[k - 1][0] == para and announces(all_units[k - 1][1], sw):
            own = own_words(all_units[k - 1][1], sw)
        other = (set(content_words(unit)) & fields_in(unit, sw)) - phrase_words
        if own and len(other) <= MAX_FIELD_WORDS_PER_OWN_WORD * len(own):
            found = k
            if not last:
                return k
    return found


def _taboo_exclude(sw: SpecWords) -> set[str]:
    return set(sw.object_core) | sw.fields["setting"] | sw.character_words


def _twist_exclude(sw: SpecWords) -> set[str]:
    return _taboo_exclude(sw) | sw.fields["taboo"]


# ----------------------------------------------------------------------------------------------- the checks
def check_paragraph_count(text: str) -> bool:
    paras = paragraphs(text)
    return MIN_PARAGRAPHS <= len(paras) <= MAX_PARAGRAPHS and all(len(words(p)) >= MIN_PARAGRAPH_WORDS for p in paras)


def check_protagonist_named(text: str, spec: Spec) -> bool:
    return bool(spec.protagonist.strip()) and re.search(rf"(?<!\w){re.escape(spec.protagonist.strip())}(?!\w)", text) is not None


def check_object_used(text: str, sw: SpecWords) -> bool:
    """One sentence holds the object's head noun and at least half of its other core words."""
    if not sw.object_core:
        return False
    head, modifiers = sw.object_core[-1], set(sw.object_core[:-1]) - {sw.object_core[-1]}
    for s in sentences(text):
        found = set(content_words(s))
        if head in found and 2 * len(modifiers & found) >= len(modifiers):
            return True
    return False


def _cues(tokens: list[str], lexicon: frozenset[str]) -> list[str]:
    return [t for t in tokens if t in lexicon]


def _happy_cues(tokens: list[str]) -> list[str]:
    """Happy words that are not negated ('did not smile back' is not a happy ending)."""
    return [t for i, t in enumerate(tokens) if t in HAPPY_CUES and not NEGATIONS & set(tokens[max(0, i - 3): i])]


def ending_cues(paragraph: str) -> tuple[dict[str, set[str]], int]:
    """The dread cues of a paragraph by kind (distinct words), and its count of happy cues."""
    toks = words(paragraph)
    kinds = {"presence": set(_cues(toks, PRESENCE_CUES)), "persistence": set(_cues(toks, PERSISTENCE_CUES)),
             "loss": set(_cues(toks, LOSS_CUES))}
    return kinds, len(_happy_cues(toks))


def check_unsettling_ending(text: str) -> bool:
    paras = paragraphs(text)
    if not paras:
        return False
    kinds, happy = ending_cues(paras[-1])
    n_dread = sum(len(v) for v in kinds.values())
    last_sentence = (sentences(paras[-1]) or [""])[-1]
    last_kinds, last_happy = ending_cues(last_sentence)
    last_dread = sum(len(v) for v in last_kinds.values())
    varied = sum(bool(v) for v in kinds.values()) >= 2 or n_dread >= 3  # not one common word
    return varied and n_dread >= 2 and n_dread > happy and last_dread >= 1 and last_happy < last_dread


def check_fluent(text: str) -> bool:
    from pico.fluency import default_model

    model = default_model()
    if len(words(text)) < MIN_STORY_WORDS or len(sentences(text)) < MIN_STORY_SENTENCES:
        return False
    if model.score(text) < MIN_STORY_FLUENCY:
        return False
    for para in paragraphs(text):
        pmis = model.bigram_pmis(para)
        if len(pmis) >= FLUENCY_MIN_TOKENS and sum(pmis) / len(pmis) < MIN_PARAGRAPH_FLUENCY:
            return False
    return True


def _first_index(units_: list[str], test) -> int | None:
    return next((i for i, u in enumerate(units_) if test(u)), None)


def _mentions_character(unit: str, spec: Spec, sw: SpecWords) -> bool:
    if re.search(rf"(?<!\w){re.escape(spec.protagonist.strip())}(?!\w)", unit):
        return True
    supporting = sw.fields["supporting"]
    return bool(supporting) and supporting <= set(content_words(unit))


def _object_mentions(unit: str, sw: SpecWords) -> tuple[bool, bool]:
    """(definite, indefinite) mention of the object in a unit: its head noun after an article, with one of its
    modifiers in between when it has any ('the brass key', not 'the key' nor 'the top step' for a spinning top)."""
    toks = words(unit)
    head, modifiers = sw.object_core[-1], set(sw.object_core[:-1])
    definite = indefinite = False
    for i, w in enumerate(toks):
        if stem(w) != head:
            continue
        for j in range(i - 1, max(-1, i - 5), -1):  # the article sits before the modifiers: 'a wind-up tin soldier'
            if toks[j] in ("a", "an", "the", "this", "that", "its", "his", "her", "their", "my", "your"):
                if not modifiers or modifiers & {stem(t) for t in toks[j + 1: i]}:
                    indefinite |= toks[j] in ("a", "an")
                    definite |= toks[j] not in ("a", "an")
                break
    return definite, indefinite


def order_problems(text: str, spec: Spec, sw: SpecWords) -> list[str]:
    """What is out of order in the story (empty when it reads in order)."""
    all_units = [u for _, u in story_units(text)]
    if not all_units:
        return ["empty"]
    problems = []
    first = " ".join(words(all_units[0])[:3])
    if any(first == o or first.startswith(o + " ") for o in CONTINUATION_OPENERS):
        problems.append("opens by continuing something")
    named = _first_index(all_units, lambda u: _mentions_character(u, spec, sw))
    pronoun = _first_index(all_units, lambda u: bool(CHARACTER_PRONOUNS & set(words(u))))
    if pronoun is not None and (named is None or pronoun < named):
        problems.append("a pronoun before any character is named")
    if sw.object_core:
        mentions = [_object_mentions(u, sw) for u in all_units]
        first_definite = next((i for i, (d, _) in enumerate(mentions) if d), None)
        first_indefinite = next((i for i, (_, ind) in enumerate(mentions) if ind), None)
        if first_definite is not None and first_indefinite is not None and first_definite < first_indefinite:
            problems.append("the object referred back to before it is introduced")
    taboo = stating_unit(spec.taboo, text, sw, _taboo_exclude(sw))
    twist = stating_unit(spec.twist, text, sw, _twist_exclude(sw), last=True)
    if taboo is not None and twist is not None and twist < taboo:
        problems.append("the twist before the taboo")
    return problems


def repetition_problems(text: str) -> list[str]:
    problems = []
    said = Counter(" ".join(words(s)) for s in sentences(text) if len(words(s)) >= 3)
    if said and max(said.values()) > MAX_SENTENCE_REPEATS:
        problems.append("a sentence said three times or more")
    toks = words(text)
    fours = Counter(zip(*(toks[i:] for i in range(4))))
    if fours and max(fours.values()) > MAX_4GRAM_COUNT:
        problems.append("a 4-word run repeated in a loop")
    if text_stats(text)["repeated_4gram_rate"] > MAX_REPEATED_4GRAM_RATE:
        problems.append("too many repeated 4-grams")
    return problems


def restatement_problems(text: str, sw: SpecWords) -> list[str]:
    problems = []
    if _LABEL_LINE_RE.search(text):
        problems.append("a 'Label: value' line of the prompt")
    if _BULLET_LINE_RE.search(text):
        problems.append("a bullet line")
    low = " ".join(words(text))
    meta = [p for p in META_PHRASES if re.search(rf"\b{p}\b", low) and not set(content_words(p)) <= sw.all]
    if len(meta) >= 2:
        problems.append(f"talks about the task ({', '.join(meta)})")
    cw = content_words(text)
    if cw and sum(w in sw.all for w in cw) / len(cw) > MAX_SPEC_WORD_SHARE:
        problems.append("mostly the spec's own words")
    return problems


def check_story(story: str, spec: Spec) -> dict[str, bool]:
    """Every check, True when the story satisfies it."""
    sw = spec_words(spec)
    return {
        "paragraph_count": check_paragraph_count(story),
        "protagonist_named": check_protagonist_named(story, spec),
        "object_used": check_object_used(story, sw),
        "taboo_present": stating_unit(spec.taboo, story, sw, _taboo_exclude(sw)) is not None,
        "twist_present": stating_unit(spec.twist, story, sw, _twist_exclude(sw)) is not None,
        "unsettling_ending": check_unsettling_ending(story),
        "fluent": check_fluent(story),
        "coherent_order": not order_problems(story, spec, sw),
        "no_repetition": not repetition_problems(story),
        "not_restated": not restatement_problems(story, sw),
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
