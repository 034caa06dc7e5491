"""The constraint checker: does a story follow its spec, and does it read as a story? Used by `generate` (to
validate data and hard pairs), by `evaluate` (to score generations) and by `pico check`, so all of them judge with
the same rules. Transparent and deterministic: word lists, counts, and one small table fitted on TinyStories.
`explain_story` says what each check found; `check_story` gives the booleans.

The checks, in `CHECKS` order:
- paragraph_count: 2-4 paragraphs, each a real one (at least 3 words).
- protagonist_named: the protagonist's name occurs as a word.
- object_used: one sentence names the object: its head noun and at least half of its other core words.
- taboo_present: a sentence of the story states the taboo: it holds most of the taboo's distinctive words
  (paraphrase allowed) and its last content word (a taboo cut short is not stated), and words of its own, not
  just field and meta words ('The rule: ...') or a fragment stuffed among other fields; a bare statement counts
  inside narrative ('Agnes had one rule. Never ...').
- twist_present: the same for the twist.
- unsettling_ending: the last paragraph as a whole holds at least two distinct cues of dread (something
  there, something going on, something lost or withheld), more than its happy cues, and does not land on a
  happy last sentence.
- fluent: story-length prose (40 words, 4 sentences) that reads as English: the class-bigram score
  (`pico.fluency`, fitted only on TinyStories) of the story and of each paragraph is above word salad's, and
  no paragraph has words in the wrong case for their place, as shuffled words do, and at most one lower-case
  word is not an English word (`wordfreq` has never seen it, and the spec does not hold it): broken spellings
  and fused fragments ('fliunnel', 'caretakeras') that a reader rejects and a class-bigram model cannot see;
  and no word of the spec copied in pieces: a value's word cut short or run on where the story copies it ('a red
  umbre', 'the iron bellas'), or a piece of a character's name ('Profess', 'Ms. Lindq'; mid-sentence also a
  common word, 'asked Tom' for Tomas); and no line broken off mid-sentence (a line break with no closing
  punctuation before it); and no article that does not fit the sound of its word ('a iron bell', 'an silver
  locket'), what a copy that leaves the value's own article behind writes.
- coherent_order: the sentences come in the order of a telling: the first one does not continue something or
  refer ahead, no pronoun before any character is named, protagonist and setting appear in the first
  paragraph, the object is introduced before it is referred back to, the taboo comes before the twist and the
  twist in the second half, and a present-tense aftermath does not come before past-tense events.
- no_repetition: no loop: no sentence said three times, no 4-word run said eight times, few repeated 4-grams,
  no stutter (a run of 2-4 words said twice in a row, 'after sunset after sunset', or a word three times).
- not_restated: not the spec restated: no `Label: value` or bullet lines of the prompt, no talk about the
  task ('the protagonist', 'the twist is'), and most of its words its own rather than the spec's.
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
MIN_NARRATIVE_OWN_WORDS = 3  # a neighbour with this many words of its own makes a bare statement part of a telling
MIN_STORY_WORDS, MIN_STORY_SENTENCES = 40, 4
MIN_DREAD_CUES = 2  # distinct dread words the last paragraph needs
MIN_STORY_FLUENCY = -0.3  # bits; references score above 0, word salad below -0.8
# A paragraph of at least FLUENCY_MIN_TOKENS tokens reads as word salad below this score or above this share of
# class bigrams the reference text never shows (template, TinyStories and teacher-style paragraphs: > -1.0 and
# <= 0.16 but for one TinyStories paragraph in 4,000; word salad: 96% caught).
MIN_PARAGRAPH_FLUENCY = -1.0
MAX_PARAGRAPH_UNSEEN = 0.2
MAX_CASE_ANOMALIES = 0.06  # share of a paragraph's words out of case for their place (prose <= 0.053, salad ~0.12)
CASE_MIN_WORDS = 8
FLUENCY_MIN_TOKENS = 20
MAX_REPEATED_4GRAM_RATE = 0.3
MAX_4GRAM_COUNT = 7  # a 4-word run said 8 times is a loop (a refrain is said two or three times)
MAX_SENTENCE_REPEATS = 2
MAX_NON_WORDS = 1  # lower-case non-words a story may hold (TinyStories: 1 story in 6,222 has two; references: 0)
# Words English does repeat back to back ('closer and closer', 'ha ha ha', 'very very'): not a stutter.
REPEATABLE_WORDS = frozenset("and or ha la no yes very so knock tick tock bang boom".split())
MAX_SPEC_WORD_SHARE = 0.6  # of the story's content words; templates and teacher stories stay below 0.5

STOPWORDS = frozenset("""
a an the and or but of to in on at for from by with is are was were be been being has have had it its it's
that this these those after before when while your you their them they he she him her his hers what which who
whom whose do does did only own as into out up than then there here so if just very can will would should
could all any some no nor also too even every each other such same about around through again never
where will not
""".split())
# Pronouns a story may change when it retells a value's end ("behind him" said of a woman: "behind her").
RETOLD_WORDS = frozenset("it him her them me us you this that these those".split())
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

# A first sentence that starts like this continues something that was never told.
_OPENS_MID_STORY_RE = re.compile(
    r"^(?:then|now|but|and|so|still|again|later|afterwards|eventually|finally|after that|that was when|that night|"
    r"by then|by the time|at last|the next|the following|(?:hours|days|weeks|months|years|minutes) "
    r"(?:passed|later|went by)|(?:on|by) the (?:second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|"
    r"last|next))\b")
# Tense markers of narration (outside quotes): a past-tense telling may end in the present ('She still hears
# it'), but an aftermath in the present followed by more past-tense events is out of order.
PRESENT_MARKERS = frozenset("is are am has does isn't aren't doesn't hasn't don't haven't".split())
PAST_MARKERS = frozenset("""
was were had did wasn't weren't didn't hadn't couldn't wouldn't could would said told went saw came took gave knew
found felt heard thought made left got ran sat stood held began brought caught kept lost met paid put read sent set
shook slept spoke spent stole struck swore swept swung taught threw understood woke wore won wrote drew drank drove
ate fell fought flew forgot froze grew hid hung led let lay meant rang rose sang sank shut slid spun stuck stung tore
became bent bit blew broke built bought chose clung crept dealt dug fed fled hurt knelt laid leapt lit rode sought
shot shone shrank sprang strode wept wound
""".split())
SUBJECTS = frozenset("he she it they i we you nobody everyone someone something".split())
NOT_VERBS_IN_S = frozenset("was has is its this his as us always sometimes perhaps afterwards towards besides less "
                           "unless".split())
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
called ringing rings rang rung knows knew name moving moves spins turning turned turns touch face faces
reflection mirror open opened count counted counting
""".split())
PERSISTENCE_CUES = frozenset("""
still again always forever every each closer nearer louder waiting wait waits tonight continues continued keep keeps
kept anymore since yet now began begins returned returns back lately started starts soon until tomorrow
already
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
# The object's core ends where a clause or a participle phrase starts: 'a ticket stamped with ...' -> 'ticket'.
_OBJECT_CORE_RE = re.compile(r"\s+(?:(?:that|with|on|which|who|whose|sealed|drawn)\s|\w+(?:ed|en|wn|rn)\s+"
                             r"(?:with|in|on|by|out|from|into|under|at|for)\b).*$")
_FOLD_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u00ab": '"',
                              "\u00bb": '"'})
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"')\]]*\s+")
_TITLES = frozenset({"mr", "mrs", "ms", "dr", "st", "prof", "mt"})
_LABEL_LINE_RE = re.compile(r"^\s*(title|setting|protagonist|supporting character|important object|taboo rule|"
                            r"twist|constraints|story)\s*:", re.IGNORECASE | re.MULTILINE)
_BULLET_LINE_RE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S", re.MULTILINE)


# ----------------------------------------------------------------------------------------------- words
@lru_cache(maxsize=1 << 16)
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


def _stems(lexicon: frozenset[str]) -> frozenset[str]:
    return frozenset(stem(w) for w in lexicon)


META_STEMS = _stems(META_WORDS)
ANNOUNCING_STEMS = _stems(ANNOUNCING_WORDS)


# ----------------------------------------------------------------------------------------------- text units
def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n+", text.strip()) if p.strip()]


def _paragraph_sentences(para: str) -> list[str]:
    out, start = [], 0
    for m in _SENTENCE_END_RE.finditer(para):
        nxt = para[m.end(): m.end() + 1]
        if not (nxt.isupper() or nxt.isdigit() or nxt in "\"'(\u201c\u2018"):
            continue  # '2 a.m. on the dot' or '"Wait," she said' goes on
        before = para[start: m.start()].split()
        if before and before[-1].lower() in _TITLES:
            continue  # 'Mr. Hale'
        out.append(para[start: m.end()].strip())
        start = m.end()
    if para[start:].strip():
        out.append(para[start:].strip())
    return out


def sentences(text: str) -> list[str]:
    """Sentences, paragraph by paragraph: a stop followed by a capital, quote or digit ends one, except after a
    title such as 'Mr.'."""
    return [s for para in paragraphs(text) for s in _paragraph_sentences(para)]


def _speech_only(sentence: str, open_quote: bool) -> tuple[bool, bool]:
    """Whether every word of the sentence is inside a quotation, and whether a quotation is open after it."""
    outside, in_quote = False, open_quote
    for ch in sentence.translate(_FOLD_QUOTES):
        if ch == '"':
            in_quote = not in_quote
        elif ch.isalnum() and not in_quote:
            outside = True
    return not outside, in_quote


def units(paragraph: str) -> list[str]:
    """The sentences of a paragraph with speech joined to its attribution, so a quoted line is part of a sentence:
    '"One rule," Agnes said. "Never answer."' is one unit, and so is '"Never answer." Agnes said it twice.'"""
    out: list[str] = []
    pending: list[str] = []  # speech waiting for the attribution after it
    open_quote = False
    for s in _paragraph_sentences(paragraph):
        speech, open_quote = _speech_only(s, open_quote)
        if speech:
            if out and not pending and '"' in out[-1].translate(_FOLD_QUOTES):
                out[-1] = f"{out[-1]} {s}"  # the same speaker goes on
            else:
                pending.append(s)
            continue
        out.append(" ".join(pending + [s]))
        pending = []
    if pending:
        out.append(" ".join(pending))
    return out


@dataclass(frozen=True)
class Unit:
    """One sentence (with its speech) of a story, and its words."""

    paragraph: int
    text: str
    words: tuple[str, ...]
    content: frozenset[str]


@dataclass(frozen=True)
class Story:
    """A story read once: its paragraphs, sentences and units, so every check works on the same reading."""

    text: str
    paragraphs: tuple[str, ...]
    sentences: tuple[str, ...]
    units: tuple[Unit, ...]

    @property
    def content(self) -> list[str]:
        return content_words(self.text)


def read_story(text: str) -> Story:
    paras = paragraphs(text)
    all_units = tuple(Unit(i, u, tuple(words(u)), frozenset(content_words(u)))
                      for i, p in enumerate(paras) for u in units(p))
    return Story(text, tuple(paras), tuple(s for p in paras for s in _paragraph_sentences(p)), all_units)


# ----------------------------------------------------------------------------------------------- spec words
def object_core(obj: str) -> str:
    """'a pocket watch that runs backward' -> 'pocket watch' (what any mention of it must say)."""
    core = re.sub(r"^(a|an|the)\s+", "", obj.strip(), flags=re.IGNORECASE)
    return _OBJECT_CORE_RE.sub("", core)


@dataclass(frozen=True)
class SpecWords:
    """The content words of each field of a spec, and of the object's core."""

    fields: dict[str, frozenset[str]]
    all: frozenset[str]
    object_core: tuple[str, ...]
    characters: frozenset[str]


def spec_words(spec: Spec) -> SpecWords:
    fields = {name: frozenset(content_words(value)) for name, value in spec.to_dict().items()}
    core = tuple(dict.fromkeys(content_words(object_core(spec.object))))
    return SpecWords(fields, frozenset().union(*fields.values()), core, fields["protagonist"] | fields["supporting"])


def _holds(unit: Unit, field_words: frozenset[str]) -> bool:
    """Whether a unit holds at least half of a field's words."""
    return bool(field_words) and 2 * len(field_words & unit.content) >= len(field_words)


def fields_in(unit: Unit, sw: SpecWords) -> set[str]:
    """The words of the fields a unit holds: the names and the object always, and every other field of which it
    holds at least half (an isolated common word such as 'one' or 'night' does not bring its field in)."""
    held = set(sw.characters) | set(sw.object_core)
    for field_words in sw.fields.values():
        if _holds(unit, field_words):
            held |= field_words
    return held


def own_words(unit: Unit, sw: SpecWords) -> set[str]:
    """Content words of a unit that belong to no field it holds and do not talk about the task."""
    return set(unit.content) - fields_in(unit, sw) - META_STEMS


def announces(unit: Unit, sw: SpecWords) -> bool:
    """Whether a unit introduces a statement next to it: words of its own, one of them a speech, rule or
    knowledge word ('Agnes had one rule.', 'Then she understood.', 'That was what Agnes told her.')."""
    return bool(own_words(unit, sw)) and bool(unit.content & ANNOUNCING_STEMS)


# ----------------------------------------------------------------------------------------------- stated phrases
def _wanted(phrase: str, exclude: set[str]) -> tuple[set[str], float]:
    """The words a statement of `phrase` must hold, and the share of them it must hold."""
    wanted = set(content_words(phrase))
    distinctive = wanted - exclude
    if len(distinctive) >= 2:
        return distinctive, PHRASE_THRESHOLD
    return wanted, 1.0  # too few words of its own: every word of the phrase must be there


def _is_statement(story: Story, k: int, phrase_words: set[str], sw: SpecWords) -> bool:
    """Whether unit k is a sentence of the story rather than a label or a stuffed fragment: it has words of its
    own and at most a few other-field words per word of its own; or it is a bare statement (no word of its own,
    at most one other-field word, such as a name) inside the telling: a unit next to it, in the same paragraph,
    announces it or is narrative with several words of its own."""
    unit = story.units[k]
    own = own_words(unit, sw) - phrase_words
    other = (unit.content & fields_in(unit, sw)) - phrase_words
    if own:
        return len(other) <= MAX_FIELD_WORDS_PER_OWN_WORD * len(own)
    if len(other) > 1:
        return False
    for j in (k - 1, k + 1):
        if 0 <= j < len(story.units) and story.units[j].paragraph == unit.paragraph:
            neighbour = story.units[j]
            if announces(neighbour, sw) or len(own_words(neighbour, sw) - phrase_words) >= MIN_NARRATIVE_OWN_WORDS:
                return True
    return False


def _says_end(unit: Unit, phrase: str) -> bool:
    """Whether the unit holds the phrase's last content word, and its last word when that is a function word
    closing the phrase ("go out", "on its own"; not a pronoun a retelling may change, "behind him" -> "behind
    her"): a statement says the value through its end, as a mention of the object must name its head noun.
    "the staff have been guests" does not state "the staff have been guests who could never leave", though it
    holds 3/4 of its distinctive words (RESEARCH.md, finding 34), and "the reflection has been moving" does not
    state "the reflection has been moving on its own", though it holds its last content word (finding 42)."""
    last, final = content_words(phrase)[-1:], words(phrase)[-1:]
    if last and last[0] not in unit.content:
        return False
    return not final or final[0] not in STOPWORDS or final[0] in RETOLD_WORDS or final[0] in unit.words


def stating_units(phrase: str, story: Story, sw: SpecWords, exclude: set[str]) -> list[int]:
    """Indexes of the units that state `phrase`: they hold enough of its distinctive words (those not in
    `exclude`, the words of other fields such as the object or the names, so naming the object does not make the
    taboo look stated) and its last content word, and they are sentences of the story (`_is_statement`)."""
    wanted, threshold = _wanted(phrase, exclude)
    if not wanted:
        return []
    phrase_words = set(content_words(phrase))
    return [k for k, u in enumerate(story.units)
            if len(wanted & u.content) >= threshold * len(wanted) and _says_end(u, phrase)
            and _is_statement(story, k, phrase_words, sw)]


def taboo_units(story: Story, spec: Spec, sw: SpecWords) -> list[int]:
    return stating_units(spec.taboo, story, sw, set(sw.object_core) | sw.fields["setting"] | sw.characters)


def twist_units(story: Story, spec: Spec, sw: SpecWords) -> list[int]:
    exclude = set(sw.object_core) | sw.fields["setting"] | sw.characters | sw.fields["taboo"]
    return stating_units(spec.twist, story, sw, exclude)


# ----------------------------------------------------------------------------------------------- the checks
# Each returns the problems it finds; a check passes when there are none.
def paragraph_problems(story: Story) -> list[str]:
    n = len(story.paragraphs)
    problems = [] if MIN_PARAGRAPHS <= n <= MAX_PARAGRAPHS else [f"{n} paragraphs"]
    if any(len(words(p)) < MIN_PARAGRAPH_WORDS for p in story.paragraphs):
        problems.append(f"a paragraph of fewer than {MIN_PARAGRAPH_WORDS} words")
    return problems


def _names(text: str, name: str) -> bool:
    name = name.strip()
    return bool(name) and re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


def protagonist_problems(story: Story, spec: Spec) -> list[str]:
    return [] if _names(story.text, spec.protagonist) else [f"{spec.protagonist!r} never named"]


def object_problems(story: Story, sw: SpecWords) -> list[str]:
    """One unit holds the object's head noun and at least half of its other core words."""
    if not sw.object_core:
        return ["the object has no words"]
    head, modifiers = sw.object_core[-1], set(sw.object_core[:-1])
    for u in story.units:
        if head in u.content and 2 * len(modifiers & u.content) >= len(modifiers):
            return []
    return [f"no sentence names the {' '.join(sw.object_core)}"]


def stated_problems(what: str, unit_indexes: list[int]) -> list[str]:
    return [] if unit_indexes else [f"no sentence of the story states the {what}"]


def _happy_cues(tokens: list[str]) -> list[str]:
    """Happy words that are not negated ('did not smile back' is not a happy ending)."""
    return [t for i, t in enumerate(tokens) if t in HAPPY_CUES and not NEGATIONS & set(tokens[max(0, i - 3): i])]


def ending_cues(text: str) -> tuple[dict[str, set[str]], int]:
    """The dread cues of a text by kind (distinct words), and its number of happy cues."""
    toks = words(text)
    kinds = {"presence": PRESENCE_CUES & set(toks), "persistence": PERSISTENCE_CUES & set(toks),
             "loss": LOSS_CUES & set(toks)}
    return kinds, len(_happy_cues(toks))


def ending_problems(story: Story) -> list[str]:
    """Judged on the last paragraph as a whole; its last sentence, where the story lands, must not be a happy one."""
    if not story.paragraphs:
        return ["no ending"]
    kinds, happy = ending_cues(story.paragraphs[-1])
    dread = sum(len(v) for v in kinds.values())
    last_kinds, last_happy = ending_cues(story.sentences[-1])
    problems = []
    if dread < MIN_DREAD_CUES:
        problems.append(f"{dread} cue(s) of dread in the last paragraph")  # one common word is not an ending
    if happy >= dread:
        problems.append("the last paragraph is happy")
    if last_happy > sum(len(v) for v in last_kinds.values()):
        problems.append("the last sentence is happy")
    return problems


_LOWER_WORD_RE = re.compile(r"(?<![A-Za-z'])[a-z]+(?:'[a-z]+)?(?![A-Za-z])")


def non_words(text: str, spec: Spec) -> list[str]:
    """Lower-case words of `text` that are not English words: not in wordfreq's English list (zipf 0) and not a
    word of the spec (whose values may be invented). Capitalized words are left alone: they may be names."""
    from wordfreq import zipf_frequency

    allowed = {w for value in spec.to_dict().values() for w in re.findall(r"[a-z]+", value.lower())}
    found = []
    for word in _LOWER_WORD_RE.findall(text.translate(_FOLD_QUOTES)):
        base = word.split("'")[0]
        if base not in allowed and zipf_frequency(base, "en") == 0:
            found.append(word)
    return found


_LETTERS_RE = re.compile(r"[A-Za-z]+")  # words as they are cased, apostrophes splitting them
BROKEN_FIELDS = ("setting", "protagonist", "supporting", "object", "taboo", "twist")  # values a story copies
INFLECTIONS = frozenset({"s", "es", "ed", "d", "ing", "er", "ers", "ly"})  # what a value's word may grow by
MIN_CUT_LETTERS = 3  # "a red umb" for "a red umbrella"; shorter pieces are too often words of their own
MIN_VALUE_LETTERS = 4  # value words shorter than this ("a", "the", "Mr") grow into other words ("an", "they")
# A word of the story this rare (wordfreq's zipf) that is a value's word cut short or run on is a piece of it: "umbre",
# "bellas", "Profess" for "Professor"; commoner ones are words of their own ("draw" for "drawn" is missed).
RARE_ZIPF = 3.0


def broken_copies(text: str, spec: Spec) -> list[str]:
    """Words of `text` that are a spec value's word cut short or run on where the story copies the value ("a red
    umbre" for "a red umbrella", "the iron bellas" for "an iron bell", "Ms. Lindq" for "Ms. Lindqvist"), and
    capitalized pieces of a character's name ("Profess warned" for "Professor Quill"): as 'piece (word)'."""
    from wordfreq import zipf_frequency

    toks = _LETTERS_RE.findall(text)
    low = [t.lower() for t in toks]
    spec_words = {w.lower() for value in spec.to_dict().values() for w in _LETTERS_RE.findall(value)}
    found = []
    for field in BROKEN_FIELDS:
        value = [w.lower() for w in _LETTERS_RE.findall(getattr(spec, field))]
        follows = {}  # value word -> the words that follow it in the value
        for a, b in zip(value, value[1:]):
            follows.setdefault(a, set()).add(b)
        for prev, word in zip(low, low[1:]):
            for want in follows.get(prev, ()):
                if word in spec_words or len(want) < MIN_VALUE_LETTERS or zipf_frequency(word, "en") >= RARE_ZIPF:
                    continue  # a word of the spec, or English, after a value's word is the telling's choice
                cut = want.startswith(word) and len(word) >= MIN_CUT_LETTERS and want[len(word):] not in INFLECTIONS
                rest = word[len(want):]
                compound = len(rest) >= MIN_VALUE_LETTERS and zipf_frequency(rest, "en") >= RARE_ZIPF
                run_on = word.startswith(want) and rest not in INFLECTIONS and not compound  # "housemistress"
                if cut or run_on:
                    found.append(f"{word} ({want})")
    names = sorted({w for f in ("protagonist", "supporting") for w in _LETTERS_RE.findall(getattr(spec, f))
                    if w[0].isupper()})
    for m in _LETTERS_RE.finditer(text):
        tok = m.group(0)
        if tok.lower() in spec_words or not tok[0].isupper() or len(tok) < 2 or tok.lower() in _TITLES:
            continue
        if zipf_frequency(tok.lower(), "en") >= RARE_ZIPF:
            # a common word that starts a name: a cut name only where it cannot be a capitalized sentence opener
            # ("asked Tom" for Tomas, "Dec" for Declan; "Ever since" may open a story with Everett in it)
            if tok.lower() not in STOPWORDS and not _opens_sentence(text, m.start()):
                found += [f"{tok} ({name})" for name in names if name.startswith(tok) and name != tok]
            continue
        for name in names:
            if name.startswith(tok) or (tok.startswith(name) and tok[len(name):] != "s"):
                found.append(f"{tok} ({name})")
    return list(dict.fromkeys(found))


def _opens_sentence(text: str, i: int) -> bool:
    """Whether the word at `text[i]` may be capitalized for its place: first in the text, a line, a sentence or
    a quotation (after a quote mark, a colon or a dash)."""
    before = text[:i].rstrip(" \t")
    return not before or before[-1] in ".!?:;(\n\"'\u201c\u201d\u2018\u2019-\u2014\u2026"


# "a"/"an" go by the sound a word starts with; the spelling's exceptions. Words either article may take in
# good English ("an historic", "an hotel", "a herb") are left alone.
CONSONANT_SOUND_STARTS = ("unic", "unif", "uniq", "unit", "univ", "union", "unis", "unan", "use", "usu", "ute",
                          "uti", "uto", "ure", "uran", "urol", "ubiq", "uku", "ukr", "eu", "ewe", "one", "once", "oui")
VOWEL_SOUND_STARTS = ("hour", "honest", "honor", "honour", "heir")
EITHER_ARTICLE_STARTS = ("histor", "hotel", "herb")
_ARTICLE_RE = re.compile(r"(?<![A-Za-z'])(an?|An?)\s+([A-Za-z][A-Za-z'-]*)")


def wrong_articles(text: str) -> list[str]:
    """'a'/'an' before a word whose first sound takes the other one ('a iron bell', 'an silver locket'), as
    'article word'. Letters, acronyms and words either article may take are left alone ('an X-ray', 'a UFO').
    TinyStories' own text has such a slip about once per 500,000 characters ('a old')."""
    found = []
    for m in _ARTICLE_RE.finditer(text):
        article, word = m.group(1), m.group(2)
        low = word.lower()
        if article[0] == "A" and not _opens_sentence(text, m.start()):
            continue  # a capital A inside a sentence is a letter ("plan A is")
        if (len(word) == 1 or (word.isupper() and len(word) <= 4) or re.match(r"[A-Za-z]-", word)
                or low.startswith(EITHER_ARTICLE_STARTS)):
            continue  # a letter ("an x"), an acronym, or a word that takes either
        vowel = low[0] in "aeiou"
        if vowel and low.startswith(CONSONANT_SOUND_STARTS):
            vowel = False
        elif not vowel and low.startswith(VOWEL_SOUND_STARTS):
            vowel = True
        if (article.lower() == "an") != vowel:
            found.append(f"{article} {word}")
    return found


_LINE_END_RE = re.compile(r"[.!?\"')\u201d\u2019\u2026:;]$")


def broken_off_lines(text: str) -> list[str]:
    """Lines of `text` that stop mid-sentence (no closing punctuation before the line break), as models write
    when a copy runs into the prompt's newline ("...never leave a chair facing the window\nThe building ...").
    None of the template stories, the checker's reference fixtures or 501 TinyStories validation stories has one."""
    return [line.strip() for line in text.split("\n") if line.strip() and not _LINE_END_RE.search(line.strip())]


def fluency_problems(story: Story, spec: Spec) -> list[str]:
    from pico.fluency import case_anomalies, default_model

    n_words = len(words(story.text))
    if n_words < MIN_STORY_WORDS or len(story.sentences) < MIN_STORY_SENTENCES:
        return [f"too short for a story ({n_words} words, {len(story.sentences)} sentences)"]
    model = default_model()
    problems = []
    per_paragraph = model.paragraph_stats(story.text, known_names=(spec.protagonist, spec.supporting))
    pmis = [v for para, _ in per_paragraph for v in para]
    score = sum(pmis) / len(pmis)
    if score < MIN_STORY_FLUENCY:
        problems.append(f"fluency {score:.2f} bits < {MIN_STORY_FLUENCY}")
    for i, ((para, unseen), text) in enumerate(zip(per_paragraph, story.paragraphs)):
        n, out_of_case = case_anomalies(text)
        if n >= CASE_MIN_WORDS and out_of_case > MAX_CASE_ANOMALIES * n:
            problems.append(f"paragraph {i + 1}: {out_of_case} of {n} words in the wrong case for their place")
        if len(para) < FLUENCY_MIN_TOKENS:
            continue  # too short to judge on its own
        mean = sum(para) / len(para)
        if mean < MIN_PARAGRAPH_FLUENCY or unseen > MAX_PARAGRAPH_UNSEEN:
            problems.append(f"paragraph {i + 1} reads as word salad ({mean:.2f} bits, {unseen:.0%} unseen pairs)")
    bad = non_words(story.text, spec)
    if len(bad) > MAX_NON_WORDS:
        problems.append(f"{len(bad)} words that are not English: {', '.join(bad[:5])}")
    for line in broken_off_lines(story.text)[:1]:
        problems.append(f"a line broken off mid-sentence: '...{' '.join(line.split()[-5:])}'")
    broken = broken_copies(story.text, spec)
    if broken:
        problems.append(f"a word of the spec broken: {', '.join(broken[:5])}")
    articles = wrong_articles(story.text)
    if articles:
        problems.append(f"an article that does not fit its word: {', '.join(articles[:5])}")
    return problems


def _first(indexes) -> int | None:
    return next(iter(indexes), None)


def _object_mentions(unit: Unit, sw: SpecWords) -> tuple[bool, bool]:
    """(definite, indefinite) mention of the object in a unit: its head noun after an article, with one of its
    modifiers in between when it has any ('the brass key'; not 'the key', nor 'the top step' for a spinning top)."""
    toks = unit.words
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


_QUOTED_RE = re.compile(r'"[^"]*"?')


def narration_tense(unit: str, field_values: list[str]) -> str | None:
    """'present', 'past' or None (mixed or no marker) for a unit's narration: speech and the spec's own phrases
    (a twist is written in the present) left out."""
    low = _QUOTED_RE.sub(" ", unit.translate(_FOLD_QUOTES)).lower()
    for value in field_values:
        low = low.replace(value.lower().rstrip("."), " ")
    toks = words(low)
    present = sum(t in PRESENT_MARKERS for t in toks) + sum(
        1 for a, b in zip(toks, toks[1:])
        if a in SUBJECTS and len(b) > 2 and b.endswith("s") and not b.endswith("ss") and b not in NOT_VERBS_IN_S)
    past = sum(t in PAST_MARKERS for t in toks) + sum(  # 'has hired' is the present perfect
        1 for i, t in enumerate(toks) if t.endswith("ed") and len(t) > 4 and not (i and toks[i - 1] in ("has", "have")))
    if present and not past:
        return "present"
    if past and not present:
        return "past"
    return None


def aftermath_too_early(story: Story, spec: Spec) -> bool:
    """In a past-tense telling, a present-tense sentence (the aftermath) followed by two or more past-tense ones."""
    values = [spec.setting, spec.object, spec.taboo, spec.twist, spec.title]
    tenses = [narration_tense(u.text, values) for u in story.units]
    n_past, n_present = tenses.count("past"), tenses.count("present")
    if n_past < 3 or n_past < 2 * n_present:
        return False  # a present-tense telling (or too little to tell)
    return any(t == "present" and tenses[i + 1:].count("past") >= 2 for i, t in enumerate(tenses))


def opening_refers_ahead(story: Story) -> bool:
    """Whether the first sentence says 'the X' of something a later sentence introduces as 'a X' (or 'a new X')."""
    given = {stem(m.group(1)) for m in re.finditer(r"\bthe\s+([a-z]+)\b", " ".join(story.units[0].words))}
    given -= STOPWORDS
    return any(stem(m.group(1)) in given
               for u in story.units[1:] for m in re.finditer(r"\b(?:a|an)\s+(?:[a-z]+\s+)?([a-z]+)\b", " ".join(u.words)))


def order_problems(story: Story, spec: Spec, sw: SpecWords, taboo: list[int], twist: list[int]) -> list[str]:
    """Cues that the sentences are not in the order of a telling: what it presupposes comes before it."""
    us = story.units
    if not us:
        return ["no sentences"]
    problems = []
    if _OPENS_MID_STORY_RE.search(" ".join(us[0].words)):
        problems.append("the first sentence continues something")
    if opening_refers_ahead(story):
        problems.append("the first sentence refers back to something introduced later")
    supporting = sw.fields["supporting"]
    named = _first(k for k, u in enumerate(us)
                   if _names(u.text, spec.protagonist) or (supporting and supporting <= u.content))
    pronoun = _first(k for k, u in enumerate(us) if CHARACTER_PRONOUNS & set(u.words))
    if pronoun is not None and (named is None or pronoun < named):
        problems.append("a pronoun before any character is named")
    protagonist = _first(k for k, u in enumerate(us) if _names(u.text, spec.protagonist))
    if protagonist is not None and us[protagonist].paragraph > 0:
        problems.append("the protagonist first named after the first paragraph")
    setting = sw.fields["setting"]
    opening_words = set().union(*(u.content for u in us if u.paragraph == 0))
    if any(_holds(u, setting) for u in us) and not opening_words & setting:
        problems.append("the setting is named, but not a word of it in the first paragraph")
    if sw.object_core:
        mentions = [_object_mentions(u, sw) for u in us]
        definite = _first(k for k, (d, _) in enumerate(mentions) if d)
        indefinite = _first(k for k, (_, ind) in enumerate(mentions) if ind)
        if definite is not None and indefinite is not None and definite < indefinite:
            problems.append("the object referred back to before it is introduced")
    if aftermath_too_early(story, spec):
        problems.append("the aftermath (present tense) told before the events (past tense)")
    if twist and 2 * twist[-1] < len(us) - 1:
        problems.append("the twist comes in the first half")  # a reveal that opens the story is no twist
    if taboo and twist and twist[-1] < taboo[0]:
        problems.append("the twist before the taboo")
    return problems


_RUN_RE = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")  # words and single punctuation marks


def stutters(text: str) -> list[str]:
    """Runs said twice back to back with nothing between: 2-4 words ('after sunset after sunset'), or one word
    three times ('person person person'); runs holding a REPEATABLE_WORDS word are English, not a stutter."""
    toks = _RUN_RE.findall(text.lower().translate(_FOLD_QUOTES))
    found = []
    for n in (1, 2, 3, 4):
        times = 3 if n == 1 else 2
        for i in range(len(toks) - times * n + 1):
            run = toks[i : i + n]
            if (all(t[0].isalnum() for t in run) and not REPEATABLE_WORDS & set(run)
                    and all(toks[i + k * n : i + (k + 1) * n] == run for k in range(1, times))):
                found.append(" ".join(run * times))
    return found


def repetition_problems(story: Story) -> list[str]:
    problems = []
    stuttered = stutters(story.text)
    if stuttered:
        problems.append(f"a stutter: '{stuttered[0]}'")
    said = Counter(" ".join(words(s)) for s in story.sentences if len(words(s)) >= 3)
    if said and max(said.values()) > MAX_SENTENCE_REPEATS:
        problems.append(f"a sentence said {max(said.values())} times")
    toks = words(story.text)
    fours = Counter(zip(*(toks[i:] for i in range(4))))
    if fours and max(fours.values()) > MAX_4GRAM_COUNT:
        problems.append(f"a 4-word run said {max(fours.values())} times")
    rate = text_stats(story.text)["repeated_4gram_rate"]
    if rate > MAX_REPEATED_4GRAM_RATE:
        problems.append(f"repeated 4-gram rate {rate:.2f}")
    return problems


def restatement_problems(story: Story, sw: SpecWords) -> list[str]:
    problems = []
    if _LABEL_LINE_RE.search(story.text):
        problems.append("a 'Label: value' line of the prompt")
    if _BULLET_LINE_RE.search(story.text):
        problems.append("a bullet line")
    low = " ".join(words(story.text))
    meta = [p for p in META_PHRASES if re.search(rf"\b{p}\b", low) and not set(content_words(p)) <= sw.all]
    if len(meta) >= 2:
        problems.append(f"talks about the task ({', '.join(meta)})")
    cw = story.content
    share = sum(w in sw.all for w in cw) / len(cw) if cw else 1.0
    if share > MAX_SPEC_WORD_SHARE:
        problems.append(f"{share:.0%} of its words are the spec's")
    return problems


def explain_story(text: str, spec: Spec) -> dict[str, list[str]]:
    """Every check with the problems it found (an empty list: the check passes)."""
    story, sw = read_story(text), spec_words(spec)
    taboo, twist = taboo_units(story, spec, sw), twist_units(story, spec, sw)
    return {
        "paragraph_count": paragraph_problems(story),
        "protagonist_named": protagonist_problems(story, spec),
        "object_used": object_problems(story, sw),
        "taboo_present": stated_problems("taboo", taboo),
        "twist_present": stated_problems("twist", twist),
        "unsettling_ending": ending_problems(story),
        "fluent": fluency_problems(story, spec),
        "coherent_order": order_problems(story, spec, sw, taboo, twist),
        "no_repetition": repetition_problems(story),
        "not_restated": restatement_problems(story, sw),
    }


def check_story(story: str, spec: Spec) -> dict[str, bool]:
    """Every check, True when the story satisfies it."""
    return {name: not problems for name, problems in explain_story(story, spec).items()}


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
