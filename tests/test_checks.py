from pico.checks import check_story, content_words, failed_checks, object_core, phrase_present, stem, text_stats
from pico.spec import Spec

SPEC = Spec(title="The Quiet Floor", setting="an old apartment building during a winter blackout",
            protagonist="Mina", supporting="Agnes", object="a pocket watch that runs backward",
            taboo="never answer knocks after 2 a.m.", twist="the sound is coming from inside the walls")

GOOD = (
    "Mina arrived at the old building as the lights failed. Agnes gave her a pocket watch and one rule: "
    "never answer knocks after 2 a.m.\n\n"
    "At three, the knocking began. Mina held the pocket watch and did not move. Then she understood: the "
    "sound was coming from inside the walls.\n\n"
    "She still hears it some nights, patient and waiting, a little closer each time."
)


def test_a_story_that_follows_the_spec_passes_everything():
    assert failed_checks(check_story(GOOD, SPEC)) == []


def test_paragraph_count():
    one = GOOD.replace("\n\n", " ")
    assert failed_checks(check_story(one, SPEC)) == ["paragraph_count"]
    five = GOOD + "\n\nMore.\n\nAnd more, in the dark."
    assert "paragraph_count" in failed_checks(check_story(five, SPEC))


def test_protagonist_must_be_named_as_a_word():
    assert "protagonist_named" in failed_checks(check_story(GOOD.replace("Mina", "Minal"), SPEC))


def test_object_needs_its_core_words():
    assert object_core("a pocket watch that runs backward") == "pocket watch"
    assert object_core("an envelope sealed with wax") == "envelope"
    assert "object_used" in failed_checks(check_story(GOOD.replace("pocket watch", "watch"), SPEC))


def test_taboo_and_twist_accept_paraphrase_but_not_a_stray_word():
    paraphrased = GOOD.replace("never answer knocks after 2 a.m.", "do not answer any knocking once it is past 2 at night")
    assert check_story(paraphrased, SPEC)["taboo_present"]
    no_taboo = GOOD.replace("and one rule: never answer knocks after 2 a.m.", "and left.")
    assert failed_checks(check_story(no_taboo, SPEC)) == ["taboo_present"]
    no_twist = GOOD.replace("Then she understood: the sound was coming from inside the walls.", "Nothing happened.")
    assert failed_checks(check_story(no_twist, SPEC)) == ["twist_present"]


def test_words_of_other_fields_do_not_count_for_the_taboo():
    spec = Spec(title="t", setting="a library", protagonist="Kai", supporting="Agnes",
                object="a ledger of names", taboo="never read the names in the ledger aloud", twist="x y")
    scene = set(content_words(object_core(spec.object)))
    assert scene == {"ledger", "nam"}
    assert not phrase_present(spec.taboo, "Kai found a ledger of names on the desk.", scene)
    assert phrase_present(spec.taboo, "Never read it aloud, Agnes said.", scene)


def test_happy_endings_are_not_unsettling():
    happy = GOOD.rsplit("\n\n", 1)[0] + "\n\nIn the morning Mina laughed, safe and happy, and all was well."
    assert failed_checks(check_story(happy, SPEC)) == ["unsettling_ending"]


def test_special_tokens_are_caught():
    assert failed_checks(check_story(GOOD + "<|endoftext|>", SPEC)) == ["no_special_tokens"]


def test_stem():
    assert {stem(w) for w in ["knocks", "knocking", "knocked", "knock"]} == {"knock"}
    assert {stem(w) for w in ["names", "named", "name"]} == {"nam"}
    assert {stem(w) for w in ["boxes", "box"]} == {"box"}


def test_text_stats():
    s = text_stats("the cat sat on the mat the cat sat on the mat")
    assert s["distinct_1"] == 5 / 12
    assert s["repeated_4gram_rate"] == 6 / 9  # every 4-gram of the repeated half occurs twice
    assert text_stats("")["distinct_1"] == 0.0
