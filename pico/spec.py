"""Story specifications for the horror-story task: the fields, curated value lists, and a seeded sampler."""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, fields

from pico.errors import ParamsError

# Every value below was written for pico. Names carry their pronouns so stories get them right.
PROTAGONISTS: dict[str, str] = {
    "Mina": "she", "Kai": "he", "Elena": "she", "Tomas": "he", "Ruth": "she", "Oskar": "he",
    "Priya": "she", "Jonah": "he", "Ada": "she", "Felix": "he", "Nora": "she", "Silas": "he",
    "Ines": "she", "Marcus": "he", "Lena": "she", "Theo": "he", "Yara": "she", "Declan": "he",
    "Hana": "she", "Ivan": "he", "Clara": "she", "Rafael": "he", "Greta": "she", "Emil": "he",
    "Saoirse": "she", "Tobias": "he", "Leila": "she", "Anton": "he", "Maeve": "she", "Dario": "he",
    "Freya": "she", "Benedict": "he", "Amara": "she", "Lucas": "he", "Edith": "she", "Kofi": "he",
}
SUPPORTING: dict[str, str] = {
    "Agnes": "she", "Mr. Hale": "he", "Grandma Vera": "she", "Father Aldo": "he", "Dr. Imre": "he",
    "Mrs. Okafor": "she", "Uncle Bram": "he", "Sister Lucia": "she", "Old Pete": "he", "Wren": "she",
    "Captain Rooke": "he", "Nell": "she", "Mr. Castellan": "he", "Aunt Hester": "she", "Jasper": "he",
    "Ms. Lindqvist": "she", "the landlord": "he", "the night nurse": "she", "Professor Quill": "he",
    "Dagny": "she", "the caretaker": "he", "Marisol": "she", "Brother Tam": "he", "Ottilie": "she",
    "Cousin Remy": "he", "the ferryman": "he", "Mrs. Abernathy": "she", "Gideon": "he", "Beatrix": "she",
    "the lighthouse keeper": "he", "Mother Irina": "she", "Solomon": "he", "Paloma": "she",
    "the museum guard": "he", "Ysolde": "she", "Mr. Ferris": "he",
}
TITLES = [
    "The Door That Wasn't There", "The Lullaby in the Vents", "Count the Stairs Twice", "Room Without a Number",
    "The Last Bus to Alder Hill", "What the Snow Kept", "The Neighbor Who Never Blinked", "Static on Channel Nine",
    "The Well Under the Kitchen", "Second Shadow", "The Quiet Floor", "Nobody Lives in Apartment 4C",
    "The Lantern Rule", "A Letter From Tomorrow", "The House That Hums", "Low Tide at Greyhaven",
    "The Portrait's Left Hand", "Knock Once for Yes", "The Orchard After Dark", "The Thirteenth Passenger",
    "Under the Ice Rink", "The Doll Maker's Shop", "Visiting Hours", "The Empty Swing",
    "Echoes in Ward Seven", "The Map With an Extra Street", "Mirror, Mirror, Wait", "The Bell Beneath the Lake",
    "Borrowed Faces", "The Night Shift at Holloway", "The Attic Calendar", "Footsteps in the Flour",
    "The Radio That Answered", "Sleepwalkers' Parade", "The Fog Keeper", "Don't Feed the Quiet",
]
SETTINGS = [
    "an old apartment building during a winter blackout", "a lighthouse on a fogbound island",
    "a shuttered seaside hotel in the off-season", "a night train crossing the mountains",
    "a farmhouse at the edge of a cornfield", "a hospital wing that closed years ago",
    "a village where the church bell no longer rings", "a boarding school emptied for the holidays",
    "a research station buried in Antarctic snow", "a flooded subway tunnel beneath the city",
    "a roadside motel in the desert", "a museum after closing time", "a houseboat on a still black river",
    "a mining town with one working streetlight", "a monastery high in the clouds",
    "a suburban cul-de-sac where every house looks the same", "a ferry stuck in fog halfway across a lake",
    "a summer camp the week after it closed", "a dollhouse factory on the night shift",
    "a cabin in a forest where no birds sing", "an underground parking garage at 3 a.m.",
    "a recording studio in a converted chapel", "a laundromat that never closes",
    "a greenhouse full of plants that turn to watch", "a sleeper car on the last train of the year",
    "a call center on the top floor of an empty tower", "a ski lodge cut off by an avalanche",
    "a carnival that arrived overnight", "a radio station broadcasting to a town that is gone",
    "a crumbling manor with one lit window", "a rooftop garden above a sleeping city",
    "an island where the tide goes out and never returns", "a library that stays open past midnight",
    "a bakery that bakes before dawn", "a cemetery caretaker's cottage", "a bus depot at the end of the line",
]
OBJECTS = [
    "a brass key", "an antique music box", "a cracked hand mirror", "a wind-up tin soldier",
    "a silver locket", "an old rotary phone", "a moth-eaten wedding veil", "a jar of buttons",
    "a porcelain doll", "a pocket watch that runs backward", "a red umbrella", "a child's drawing",
    "an unmarked cassette tape", "a glass eye", "a candle that will not go out", "a wooden spinning top",
    "a hotel room key on a heavy fob", "an iron bell", "a map drawn in pencil", "a film camera",
    "a knitted scarf", "a bone-handled comb", "an empty birdcage", "a crystal radio",
    "a photograph with a face scratched out", "a rusted lantern", "a velvet ribbon", "a ledger of names",
    "a snow globe", "a chipped teacup", "a pair of muddy boots", "an envelope sealed with wax",
    "a conductor's whistle", "a jar of river stones", "a stuffed rabbit with one ear", "an hourglass",
]
TABOOS = [
    "never answer knocks after 2 a.m.", "never look into the mirror after the lights go out",
    "never say your own name inside the house", "never open the door at the end of the hall",
    "never count the stairs out loud", "never whistle after sunset", "never leave a chair facing the window",
    "never answer the phone when it rings three times", "never step on the thirteenth floorboard",
    "never let the candle burn down to the dish", "never turn around when someone calls from behind",
    "never sleep with the wardrobe open", "never feed anything that knocks on the glass",
    "never follow the music into the basement", "never write the date on anything",
    "never go past the last lamp on the road", "never touch water that is warm in winter",
    "never wave back at the house across the street", "never read the names in the ledger aloud",
    "never wind the clock in the parlor", "never let the fire go out before dawn",
    "never open the window for a voice you know", "never take the elevator to the lowest floor",
    "never thank the quiet neighbor", "never walk the hallway barefoot", "never cover the bird's cage",
    "never sing along to the lullaby", "never leave food on the top step", "never look at the lake at midnight",
    "never pick up a doll you did not put down", "never ring the bell twice", "never say goodnight to the portrait",
]
TWISTS = [
    "the sound is coming from inside the walls", "the caller has been dead for ten years",
    "the reflection in the glass has been moving on its own", "the house remembers everyone who slept in it",
    "every neighbor is the same person wearing different faces", "the map shows where they will be buried",
    "the voice on the radio was recorded tomorrow", "the missing child never existed at all",
    "the staff have been guests who could never leave", "the snow is falling upward",
    "the photographs are taken while everyone sleeps", "the footsteps stop exactly where they stand",
    "the town on the map was drowned a century ago", "the kind stranger was the thing they were warned about",
    "the heartbeat in the dark is counting backward", "the storm outside is only inside the house",
    "the last passenger is wearing the same coat", "the letters were written by someone already inside",
    "the knocking has been a warning, not a threat", "the doll is growing a little every night",
    "the bell calls the drowned back to shore", "the rule was written to keep something inside, not out",
    "the family upstairs has been replaced one by one", "the lighthouse light is looking for someone",
    "the clock has been counting down to tonight", "the garden is planted over the old guests",
    "the echo answers questions no one asked", "the night has lasted three days",
    "the elevator goes down further than the building", "everyone else in the story has been asleep for years",
    "the whispering is coming from the locked trunk", "the hotel has no rooms above the second floor",
]

FIELDS = ("title", "setting", "protagonist", "supporting", "object", "taboo", "twist")
VALUES: dict[str, list[str]] = {
    "title": TITLES, "setting": SETTINGS, "protagonist": list(PROTAGONISTS), "supporting": list(SUPPORTING),
    "object": OBJECTS, "taboo": TABOOS, "twist": TWISTS,
}


@dataclass(frozen=True)
class Spec:
    title: str
    setting: str
    protagonist: str
    supporting: str
    object: str
    taboo: str
    twist: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        missing = [f.name for f in fields(cls) if not isinstance(d.get(f.name), str)]
        if missing:
            raise ValueError(f"spec is missing field(s) {', '.join(missing)}")
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def pronouns(name: str) -> dict[str, str]:
    """Subject/object/possessive pronouns for a character (known names; 'they' otherwise)."""
    p = PROTAGONISTS.get(name) or SUPPORTING.get(name) or "they"
    return {"she": {"subj": "she", "obj": "her", "pos": "her", "refl": "herself"},
            "he": {"subj": "he", "obj": "him", "pos": "his", "refl": "himself"},
            "they": {"subj": "they", "obj": "them", "pos": "their", "refl": "themselves"}}[p]


Values = dict[str, list[str]]


def split_values(heldout_share: float, seed: int, values: Values = VALUES) -> tuple[Values, Values]:
    """(seen, held-out) parts of every value list: a seeded `heldout_share` of each list (at least one value
    when the share is above 0) is kept out of training data, for specs no model has seen a value of."""
    seen, heldout = {}, {}
    for f in FIELDS:
        order = list(values[f])
        random.Random(f"{seed}/heldout/{f}").shuffle(order)
        k = math.ceil(heldout_share * len(order))
        heldout[f] = sorted(order[:k], key=values[f].index)  # in list order, so the draw below is stable
        seen[f] = [v for v in values[f] if v not in heldout[f]]
    return seen, heldout


def n_distinct_specs(values: Values = VALUES) -> int:
    return math.prod(len(values[f]) for f in FIELDS)


def sample_specs(n: int, seed: int, values: Values = VALUES) -> list[Spec]:
    """`n` distinct specs, drawn field by field from the value lists with `random.Random(seed)`."""
    limit = n_distinct_specs(values)
    if n > limit:
        raise ParamsError("generate.sft_splits", f"asks for {n} distinct specs but the value lists allow only {limit}")
    if n > limit // 2:
        # dense request: sample indices without replacement so the loop below cannot stall
        rng = random.Random(seed)
        out = []
        for index in rng.sample(range(limit), n):
            drawn = {}
            for f in reversed(FIELDS):
                index, i = divmod(index, len(values[f]))
                drawn[f] = values[f][i]
            out.append(Spec(**drawn))
        return out
    rng = random.Random(seed)
    seen: set[Spec] = set()
    out: list[Spec] = []
    while len(out) < n:
        spec = Spec(**{f: rng.choice(values[f]) for f in FIELDS})
        if spec not in seen:
            seen.add(spec)
            out.append(spec)
    return out


# ----------------------------------------------------------------------------------------------- phrase values
_STOP_END = frozenset("a an the and of to in on with very so was is his her my your their it they he she for at but "
                      "or that this some".split())
PHRASE_FIELDS = ("title", "setting", "object", "taboo", "twist")  # names keep the curated lists: they carry pronouns


def _ends_well(words: list[str]) -> bool:
    return words[-1] not in _STOP_END


def phrase_values(text: str, exclude: Values, limit: int) -> Values:
    """Up to `limit` values per phrase field cut out of TinyStories text, none of them in `exclude`.

    Thousands of natural values ('a big red ball', 'never go near the water', 'the sun was shining in the
    sky') that no small list or grammar could make: a model trained on them cannot memorise value-to-sentence
    pairs and has to copy from its prompt (RESEARCH.md, finding 6). Deterministic for the same text.
    """
    found: dict[str, set[str]] = {f: set() for f in PHRASE_FIELDS}
    for m in re.finditer(r"\b(an?) ((?:[a-z]+ ){1,2}[a-z]+)(?=[.,!])", text):
        words = m.group(2).split()
        if _ends_well(words) and not set(words) & {"was", "is", "and", "were", "to"}:
            found["object"].add(f"{m.group(1)} {m.group(2)}")
    for m in re.finditer(r"\b(?:not|never|don't|didn't|to) ((?:[a-z]+ ){2,6}[a-z]+)(?=[.,!])", text):
        words = m.group(1).split()
        if _ends_well(words) and words[0] not in _STOP_END:
            found["taboo"].add("never " + m.group(1))
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        m = re.match(r"^The ((?:[a-z]+ ){2,8}[a-z]+)[.!]$", sentence.strip())
        if m and _ends_well(m.group(1).split()):
            found["twist"].add("the " + m.group(1))
    for m in re.finditer(r"\b(?:in|at|near) (the|a) ((?:[a-z]+ ){0,2}[a-z]+)(?=[.,!])", text):
        if _ends_well(m.group(2).split()):
            found["setting"].add(f"{m.group(1)} {m.group(2)}")
    found["title"] = {"The " + " ".join(w.capitalize() for w in o.split()[1:]) for o in found["object"]}
    out: Values = {}
    for f in PHRASE_FIELDS:
        banned = set(exclude.get(f, ()))
        values = sorted(v for v in found[f] if v not in banned)
        random.Random(f"phrases/{f}").shuffle(values)
        out[f] = values[:limit]
    return out


def is_curated(spec: Spec) -> bool:
    """Every value of the spec is from pico's curated lists (not a TinyStories phrase)."""
    return all(getattr(spec, f) in VALUES[f] for f in FIELDS)


def with_phrases(values: Values, phrases: Values) -> Values:
    """`values` with `phrases` appended to the fields it has (duplicates dropped, order kept)."""
    return {f: list(dict.fromkeys(values[f] + phrases.get(f, []))) for f in FIELDS}


# ----------------------------------------------------------------------------------------------- made-up names
_ONSETS = "B D F G H J K L M N P R S T V W Z Br Dr Gr Kr Tr Sh Th Fl Gl Cl".split()
_VOWELS = "a e i o u a e i o ai ea io".split()
_MIDDLES = "b d g k l m n p r s t v z".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "x", "nd", "ck"]
CURATED_NAME_WORDS = frozenset(w for name in (*PROTAGONISTS, *SUPPORTING) for w in re.findall(r"[A-Z][a-z]+", name))
CURATED_VALUE_WORDS = frozenset(w.lower() for f in FIELDS for v in VALUES[f] for w in re.findall(r"[A-Za-z]+", v))


def _syllables(rng: random.Random) -> str:
    """An onset, a vowel, 0-2 more syllables and a coda: the shape of every made-up name and word."""
    middle = "".join(rng.choice(_MIDDLES) + rng.choice(_VOWELS) for _ in range(rng.randint(0, 2)))
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + middle + rng.choice(_CODAS)


def compose_name(rng: random.Random, avoid: frozenset[str] = frozenset()) -> str:
    """A pronounceable made-up name ("Dravo", "Shelitand"): never a word of a curated name (so never a held-out
    one), never an English word or known name (wordfreq has never seen it), never one of `avoid`. Training rows
    with such names make SFT copy a name it cannot have memorised and hand back to the language at its end, the
    decision it gets wrong on unseen names (RESEARCH.md, findings 14 and 20)."""
    from wordfreq import zipf_frequency

    while True:
        name = _syllables(rng)
        if (len(name) >= 3 and name not in CURATED_NAME_WORDS and name not in avoid
                and zipf_frequency(name.lower(), "en") == 0):
            return name


def compose_word(rng: random.Random, avoid: frozenset[str] = frozenset()) -> str:
    """A pronounceable made-up lower-case word ("drovit", "kraigasi"), built like `compose_name`: never a word of
    any curated value (so never part of a held-out one), never a word wordfreq knows, never one of `avoid`.
    `generate.fresh_words` ends object, taboo and twist values with such words (RESEARCH.md, finding 23)."""
    from wordfreq import zipf_frequency

    while True:
        word = _syllables(rng).lower()
        if len(word) >= 4 and word not in CURATED_VALUE_WORDS and word not in avoid and zipf_frequency(word, "en") == 0:
            return word
