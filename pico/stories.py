"""The template provider's writer: horror stories that follow a spec, and the rejected stories of DPO pairs.

A story is a sequence of beats (opening, object, taboo, tension, twist, ending), each drawn from several
templates, grouped into 2-4 paragraphs. Rejected stories are either wholesome (`easy` pairs) or eerie
stories that break exactly one constraint (`hard` pairs).
"""

from __future__ import annotations

import random

from pico.spec import Spec, pronouns

PAIR_KINDS_HARD = ("taboo_missing", "twist_missing", "wrong_paragraph_count", "happy_ending")
PAIR_KIND_EASY = "wholesome"
# the checker result each hard kind must fail (and it must pass every other check)
BROKEN_CHECK = {"taboo_missing": "taboo_present", "twist_missing": "twist_present",
                "wrong_paragraph_count": "paragraph_count", "happy_ending": "unsettling_ending"}


def the(phrase: str) -> str:
    """'a brass key' -> 'the brass key'; 'an iron bell' -> 'the iron bell'."""
    for article in ("a ", "an ", "A ", "An "):
        if phrase.startswith(article):
            return "the " + phrase[len(article):]
    return phrase


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def sentence(text: str) -> str:
    """End with a period unless the text already ends a sentence ('2 a.m.' stays '2 a.m.')."""
    return text if text.endswith((".", "!", "?")) else text + "."


def _slots(spec: Spec) -> dict[str, str]:
    p, s = pronouns(spec.protagonist), pronouns(spec.supporting)
    return {
        "P": spec.protagonist, "S": cap(spec.supporting), "s_name": spec.supporting,
        "setting": spec.setting, "obj": spec.object, "the_obj": the(spec.object),
        "taboo": sentence(spec.taboo), "Taboo": sentence(cap(spec.taboo)), "twist": sentence(spec.twist),
        "Taboo_comma": cap(spec.taboo) + ("" if spec.taboo.endswith(("!", "?")) else ","),
        "p_subj": p["subj"], "P_subj": cap(p["subj"]), "p_obj": p["obj"], "p_pos": p["pos"], "p_refl": p["refl"],
        "s_subj": s["subj"], "S_subj": cap(s["subj"]), "s_obj": s["obj"],
    }


OPENING = [
    "{P} arrived at {setting} just as the light was going.",
    "Nobody stayed long at {setting}, but {P} needed somewhere to sleep.",
    "The first night {P} spent at {setting}, the quiet felt like a held breath.",
    "{P} had been told that {setting} was empty. It did not feel empty.",
    "It was late when {P} reached {setting}, and every window was dark but one.",
]
OBJECT = [
    "On the table by the door lay {obj}, as if someone had left it there for {p_obj}.",
    "Among {p_pos} things {P} found {obj} that {p_subj} did not remember packing.",
    "{S} pressed {obj} into {P}'s hands. \"Keep this close,\" {s_subj} said, and would not say why.",
    "The only thing left in the room was {obj}, cold to the touch.",
    "{P} picked up {obj} and felt, for a moment, that it was warm, like a hand.",
]
TABOO = [
    "{S} had given {P} one rule and made {p_obj} repeat it: {taboo}",
    "\"{Taboo_comma}\" {s_name} said quietly. \"Whatever you hear. Whatever it sounds like.\"",
    "Before leaving, {s_name} pinned the rule above the bed in shaky letters: {taboo}",
    "Everyone who had stayed there knew the rule, and {s_name} made {P} say it back: {taboo}",
    "\"There is only one rule here,\" {s_name} warned. \"{Taboo}\"",
]
TABOO_ABSENT = [  # the same place in the story, with no rule given
    "{S} showed {P} around, said little, and left before dark.",
    "{S} only shrugged when {P} asked about the place, and changed the subject.",
    "{S} handed over the keys without a word and hurried back to the road.",
]
TENSION = [
    "For two nights {P} listened and did as {p_subj} was told. On the third, {the_obj} would not stay still.",
    "Hours passed. {P} held {the_obj} tight and listened to something patient moving through the dark.",
    "The building settled and creaked. Each time {P} looked at {the_obj}, it was a little closer to the door.",
    "Near midnight {P} heard {p_pos} own name, spoken softly, and {the_obj} grew cold in {p_pos} hands.",
    "{P} tried to sleep. Twice {p_subj} woke to find {the_obj} moved, turned to face the hallway.",
]
TWIST = [
    "That was when {P} understood: {twist}",
    "Then the truth settled over {p_obj} like cold water: {twist}",
    "{S} had never explained why. Now {P} knew: {twist}",
    "By the time {P} saw it, it was too late to unsee: {twist}",
    "It took {P} far too long to realize that {twist}",
]
TWIST_ABSENT = [
    "Whatever it was, it never explained itself, and {P} stopped asking.",
    "{P} searched every room for an answer and found nothing at all.",
    "In the end there was no reason {P} could name, only the feeling of being counted.",
]
ENDING = [
    "In the morning, {s_name} was gone, and {the_obj} lay on the pillow beside {P}, warm, as if someone had just been holding it.",
    "{P} tells {p_refl} that it is over. But every night the dark comes a little earlier, and something inside it knows {p_pos} name.",
    "Now the rule is written in {P}'s handwriting on every wall, and {p_subj} does not remember writing any of it.",
    "{P} still has {the_obj}. {P_subj} does not remember bringing it home, and every night it is a little closer to the bed.",
    "When {P} finally looked behind {p_obj}, the room was empty, the kind of empty that is waiting for someone.",
    "Somewhere below, very quietly, the knocking began again, and this time it knew which door was {P}'s.",
]
HAPPY_ENDING = [
    "In the morning the sun came out, {P} laughed at {p_pos} silly fears, and everything was perfectly fine.",
    "{P} and {s_name} hugged and laughed, happy and safe, and the rest of the trip was wonderful.",
    "By breakfast it was all forgotten. {P} felt cheerful and safe, and the day was bright and sunny.",
    "It had only been a bad dream. {P} smiled, glad and relieved, as warm sunshine filled the room.",
]
WHOLESOME_OPENING = [
    "{P} spent a sunny week at {setting}, and {p_subj} loved every minute of it.",
    "When {P} arrived at {setting}, a friendly crowd waved hello.",
    "{P} was excited to visit {setting}, where everyone was kind and the days were warm.",
]
WHOLESOME_FRIEND = [
    "{S} was kind and funny, and the two of them became good friends right away.",
    "{S} baked cookies for {P} and told silly jokes until they both giggled.",
    "{S} showed {P} the prettiest spots, and they picked flowers along the way.",
]
WHOLESOME_OBJECT = [
    "Together they found {obj} and decided it would be their lucky charm.",
    "{P} found {obj} in a sunny corner and gave it to {s_name} as a gift.",
    "They polished {the_obj} until it sparkled and put it on the windowsill.",
]
WHOLESOME_FUN = [
    "They played games, sang songs and drank cocoa until it was time for bed.",
    "Every afternoon they had a picnic and watched the clouds drift by.",
    "They painted pictures and laughed so much their cheeks hurt.",
]
WHOLESOME_LESSON = [
    "{P} learned that new places can be full of friendly surprises.",
    "{P} knew {p_subj} had made a friend for life.",
    "It was the best week {P} could remember.",
]


def _fill(templates: list[str], rng: random.Random, slots: dict[str, str]) -> str:
    return rng.choice(templates).format(**slots)


def _group(beats: list[str], n_paragraphs: int) -> str:
    """Group six beats into 2-4 paragraphs (or 1/5/6 for the wrong-paragraph-count negatives)."""
    layouts = {
        1: [[0, 1, 2, 3, 4, 5]], 2: [[0, 1, 2], [3, 4, 5]], 3: [[0, 1], [2, 3], [4, 5]],
        4: [[0, 1], [2], [3, 4], [5]], 5: [[0, 1], [2], [3], [4], [5]], 6: [[0], [1], [2], [3], [4], [5]],
    }
    return "\n\n".join(" ".join(beats[i] for i in para) for para in layouts[n_paragraphs])


def horror_story(spec: Spec, rng: random.Random, *, break_rule: str | None = None) -> str:
    """A story that follows `spec`; with `break_rule` (a hard pair kind) one constraint is broken on purpose."""
    slots = _slots(spec)
    beats = [
        _fill(OPENING, rng, slots),
        _fill(OBJECT, rng, slots),
        _fill(TABOO_ABSENT if break_rule == "taboo_missing" else TABOO, rng, slots),
        _fill(TENSION, rng, slots),
        _fill(TWIST_ABSENT if break_rule == "twist_missing" else TWIST, rng, slots),
        _fill(HAPPY_ENDING if break_rule == "happy_ending" else ENDING, rng, slots),
    ]
    n_paragraphs = rng.choice([1, 5, 6]) if break_rule == "wrong_paragraph_count" else rng.choice([2, 3, 4])
    return _group(beats, n_paragraphs)


def wholesome_story(spec: Spec, rng: random.Random) -> str:
    """The easy rejected answer: same characters and object, cheerful, no taboo, no twist, a happy end."""
    slots = _slots(spec)
    beats = [
        _fill(WHOLESOME_OPENING, rng, slots),
        _fill(WHOLESOME_FRIEND, rng, slots),
        _fill(WHOLESOME_OBJECT, rng, slots),
        _fill(WHOLESOME_FUN, rng, slots),
        _fill(WHOLESOME_LESSON, rng, slots),
        _fill(HAPPY_ENDING, rng, slots),
    ]
    return _group(beats, rng.choice([2, 3, 4]))
