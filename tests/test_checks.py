"""The constraint checker: each check fails on the stories it is meant to catch and passes a story that follows
the spec; `pico check` on files. The fixture set is tested in test_check_fixtures.py."""

import json
import random

import pytest

from pico.checks import (CHECKS, check_story, content_words, explain_story, failed_checks, object_core, read_story,
                         sentences, stem, text_stats, units)
from pico.cli import main
from pico.fluency import MODEL_PATH, default_model, fit_table, reference_texts
from pico.prompt import build_prompt
from pico.spec import Spec, sample_specs
from pico.stories import horror_story

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
TABOO_SENTENCE = "Agnes gave her a pocket watch and one rule: never answer knocks after 2 a.m."
TWIST_SENTENCE = "Then she understood: the sound was coming from inside the walls."


def failed(story: str, spec: Spec = SPEC) -> list[str]:
    return failed_checks(check_story(story, spec))


def test_a_story_that_follows_the_spec_passes_everything():
    assert failed(GOOD) == []
    assert list(check_story(GOOD, SPEC)) == list(CHECKS)
    assert "no_special_tokens" not in CHECKS  # decoding strips EOS: a check that could not fail


def test_template_stories_pass_everything():
    rng = random.Random(0)
    for spec in sample_specs(60, 4):
        story = horror_story(spec, rng)
        assert failed(story, spec) == [], explain_story(story, spec)


# ----------------------------------------------------------------------------------------------- structure
def test_paragraph_count():
    assert failed(GOOD.replace("\n\n", " ")) == ["paragraph_count"]
    five = GOOD + "\n\nMore.\n\nAnd more, in the dark."
    assert "paragraph_count" in failed(five)
    assert "paragraph_count" in failed(GOOD.replace("\n\nShe still", "\n\nDark.\n\nShe still"))  # not a paragraph


def test_protagonist_must_be_named_as_a_word():
    assert "protagonist_named" in failed(GOOD.replace("Mina", "Minal"))


def test_object_needs_its_head_noun_and_core_words():
    assert object_core("a pocket watch that runs backward") == "pocket watch"
    assert object_core("an envelope sealed with wax") == "envelope"
    assert object_core("a ticket stamped with tomorrow's date") == "ticket"
    assert object_core("an old painted sign") == "old painted sign"
    assert "object_used" in failed(GOOD.replace("pocket watch", "watch"))
    spec = Spec(**{**SPEC.to_dict(), "object": "a wind-up tin soldier"})
    story = GOOD.replace("a pocket watch", "a wind-up tin soldier").replace("the pocket watch", "the tin soldier")
    assert failed(story, spec) == []  # 'the tin soldier' names it: head noun and half of the other words


# ----------------------------------------------------------------------------------------------- taboo and twist
def test_taboo_and_twist_accept_paraphrase_but_not_a_stray_word():
    paraphrased = GOOD.replace("never answer knocks after 2 a.m.", "do not answer any knocking once it is past 2 at night")
    assert check_story(paraphrased, SPEC)["taboo_present"]
    no_taboo = GOOD.replace("and one rule: never answer knocks after 2 a.m.", "and left.")
    assert failed(no_taboo) == ["taboo_present"]
    no_twist = GOOD.replace(TWIST_SENTENCE, "Nothing happened.")
    assert failed(no_twist) == ["twist_present"]


def test_a_taboo_or_twist_cut_before_its_end_is_not_stated():
    # 3 of the twist's 4 distinctive words, but not its end: what DPO with the checker as judge learned to write
    cut = GOOD.replace(TWIST_SENTENCE, "Then she understood: the sound was coming from inside.")
    assert failed(cut) == ["twist_present"]
    spec = Spec(**{**SPEC.to_dict(), "twist": "the staff have been guests who could never leave"})
    whole = GOOD.replace(TWIST_SENTENCE, "Then she understood: the staff had been guests who could never leave.")
    assert check_story(whole, spec)["twist_present"]
    assert not check_story(GOOD.replace(TWIST_SENTENCE, "Then she understood: the staff had been guests."),
                           spec)["twist_present"]
    assert not check_story(GOOD.replace("never answer knocks after 2 a.m.", "never answer knocks"), SPEC)["taboo_present"]


def test_a_twist_that_drops_its_closing_words_is_not_stated():
    # "on its own" is all stopwords, so the last content word ("moving") is there in the cut sentence: what the
    # default's SFT and DPO models wrote for this unseen twist (RESEARCH.md finding 42)
    spec = Spec(**{**SPEC.to_dict(), "twist": "the reflection in the glass has been moving on its own"})

    def twist_ok(sentence: str) -> bool:
        return check_story(GOOD.replace(TWIST_SENTENCE, sentence), spec)["twist_present"]

    assert twist_ok("Then she understood: the reflection in the glass has been moving on its own.")
    assert not twist_ok("Then she understood: the reflection in the glass has been moving.")
    assert not twist_ok("Then she understood: the reflection in the glass has been moving on its.")
    # a pronoun at the end may change in the retelling
    spec = Spec(**{**SPEC.to_dict(), "twist": "the thing in the hall was waiting behind him"})
    assert check_story(GOOD.replace(TWIST_SENTENCE, "Then she understood: the thing in the hall was waiting "
                                    "behind her."), spec)["twist_present"]


def test_the_taboo_must_be_stated_in_a_sentence_of_the_story():
    def taboo_ok(sentence: str) -> bool:
        return check_story(GOOD.replace(TABOO_SENTENCE, sentence), SPEC)["taboo_present"]

    # a label, or the phrase stuffed among other field words, is not a statement
    assert not taboo_ok("Agnes gave her a pocket watch. The rule: never answer knocks after 2 a.m.")
    assert not taboo_ok("Mina Agnes pocket watch never answer knocks after 2 a.m. the sound inside the walls.")
    # speech, with its attribution before or after, or in a sentence of its own next to an announcing one
    assert taboo_ok('"One rule," Agnes said, handing her a pocket watch. "Never answer knocks after 2 a.m."')
    assert taboo_ok('"Never answer knocks after 2 a.m.," Agnes warned, and gave her a pocket watch.')
    assert taboo_ok("Agnes gave her a pocket watch and told her the house rule. Never answer knocks after 2 a.m.")


def test_words_of_other_fields_do_not_state_the_taboo():
    spec = Spec(title="t", setting="a library", protagonist="Kai", supporting="Agnes",
                object="a ledger of names", taboo="never read the names in the ledger aloud", twist="x y")
    assert set(content_words(object_core(spec.object))) == {"ledger", "nam"}
    story = "Kai found a ledger of names on the desk of the empty library and opened it to the first page."
    assert not check_story(story + "\n\nIt was cold.", spec)["taboo_present"]
    assert check_story(story + ' "Never read it aloud," Agnes said.\n\nIt was cold.', spec)["taboo_present"]


def test_speech_is_one_unit_with_its_attribution():
    para = '"There is only one rule here," Mr. Hale warned. "Never open the door. Whatever you hear." Then he left.'
    assert units(para) == ['"There is only one rule here," Mr. Hale warned. "Never open the door. Whatever you hear."',
                           "Then he left."]
    assert sentences("Mr. Hale left at 2 a.m. on the dot. It was late.") == ["Mr. Hale left at 2 a.m. on the dot.",
                                                                             "It was late."]


# ----------------------------------------------------------------------------------------------- ending
def test_happy_endings_are_not_unsettling():
    happy = GOOD.rsplit("\n\n", 1)[0] + "\n\nIn the morning Mina laughed, safe and happy, and all was well."
    assert failed(happy) == ["unsettling_ending"]


def test_one_eerie_word_is_not_an_ending_but_several_cues_are():
    body = GOOD.rsplit("\n\n", 1)[0]
    assert failed(body + "\n\nShe moved to a new flat in the spring, and the door was never mentioned.") == [
        "unsettling_ending"]
    assert failed(body + "\n\nShe smiled at the mirror. In the glass, her reflection did not.") == []
    assert failed(body + "\n\nShe had a lovely, happy week after that and laughed a lot. Something waited.") == [
        "unsettling_ending"]


# ----------------------------------------------------------------------------------------------- reads as a story
def test_fluency_rejects_word_salad_and_accepts_teacher_prose():
    rng = random.Random(3)
    salad = "\n\n".join(" ".join(rng.sample(p.split(), len(p.split()))) for p in GOOD.split("\n\n"))
    assert "fluent" in failed(salad)
    model = default_model()
    assert model.score(GOOD) > 0 > model.score(salad)


def test_fluency_model_is_the_one_fitted_on_the_tinystories_train_shards(tinystories):
    table = fit_table(reference_texts(tinystories / "train"))
    assert json.loads(MODEL_PATH.read_text(encoding="utf-8")) == table  # rebuild: python -m pico.fluency


def test_sentences_out_of_order_are_caught():
    shuffled = "\n\n".join([
        "She still hears it some nights, patient and waiting, a little closer each time. " + TWIST_SENTENCE,
        "At three, the knocking began. Mina held the pocket watch and did not move.",
        "Mina arrived at the old building as the lights failed. " + TABOO_SENTENCE,
    ])
    problems = explain_story(shuffled, SPEC)["coherent_order"]
    assert "a pronoun before any character is named" in problems
    assert "the twist before the taboo" in problems
    assert "the object referred back to before it is introduced" in problems
    assert "coherent_order" in failed(shuffled)


def test_an_aftermath_in_the_present_before_past_events_is_out_of_order():
    paras = GOOD.split("\n\n")
    story = "\n\n".join([paras[0], "Mina still has nightmares about it. " + paras[1], "It was waiting, still, for her."])
    assert "the aftermath (present tense) told before the events (past tense)" in explain_story(story, SPEC)[
        "coherent_order"]


def test_repetition_loops_are_caught():
    loop = GOOD + " " + " ".join(["It is still waiting."] * 3)
    assert failed(loop) == ["no_repetition"]
    phrase_loop = GOOD.rsplit("\n\n", 1)[0] + "\n\n" + "and the door and the door " * 5 + "opened."
    assert "no_repetition" in failed(phrase_loop)


def test_stutters_are_caught_and_english_repeats_are_not():
    # what the default run's DPO model wrote on unseen specs (eval/generations_test_unseen.jsonl)
    for stutter in ("never whistle after sunset after sunset", "the pocket watch of the pocket watch of the",
                    "a person person person wearing faces"):
        story = GOOD.replace("Mina held the pocket watch and did not move.", f"Mina said {stutter} twice.")
        assert "no_repetition" in failed(story), stutter
    for english in ("closer and closer and closer", "ha ha ha", "very very quiet", "that that door", "no, no, no"):
        story = GOOD.replace("Mina held the pocket watch and did not move.", f"Mina heard {english} again.")
        assert "no_repetition" not in failed(story), english


def test_broken_spellings_are_not_fluent():
    one = GOOD.replace("the lights failed", "the lights faildeed")
    assert "fluent" not in failed(one)  # one odd word: a typo, or a rare word wordfreq lacks
    two = one.replace("did not move", "did not mlovve")
    assert failed(two) == ["fluent"]
    assert "2 words that are not English: faildeed, mlovve" in explain_story(two, SPEC)["fluent"]
    # the spec's own invented words and capitalized names are not counted
    spec = Spec(**{**SPEC.to_dict(), "object": "a glimmerwick lantern", "supporting": "Agnesz"})
    invented = GOOD.replace("a pocket watch", "a glimmerwick lantern").replace("the pocket watch", "the glimmerwick "
                            "lantern").replace("Agnes", "Agnesz")
    assert "fluent" not in failed(invented.replace("did not move", "did not glimmerwick"), spec)


def test_a_value_or_name_copied_in_pieces_is_not_fluent():
    # what the models write when a copy stops or runs on mid-word: one such word is enough for a reader to reject
    spec = Spec(**{**SPEC.to_dict(), "object": "a red umbrella", "supporting": "Professor Quill"})
    good = GOOD.replace("a pocket watch", "a red umbrella").replace("the pocket watch", "the red umbrella").replace(
        "Agnes", "Professor Quill")
    assert failed(good, spec) == []
    cut = good.replace("held the red umbrella", "held the red umbre")
    assert failed(cut, spec) == ["fluent"]
    assert "a word of the spec broken: umbre (umbrella)" in explain_story(cut, spec)["fluent"]
    assert failed(good.replace("the red umbrella and", "the red umbrellas and"), spec) == []  # a plural grows it
    assert failed(good.replace("the red umbrella and", "the red umbrellaqua and"), spec) == ["fluent"]
    assert failed(good.replace("Professor Quill gave", "Profess gave"), spec) == ["fluent"]  # a name cut short
    assert "a word of the spec broken: Minaside (Mina)" in explain_story(good.replace("Mina held", "Minaside held"),
                                                                          spec)["fluent"]
    # English words after a value's words are the telling's own: "the sound" (twist) then "the soundproof room"
    assert failed(good.replace("Mina held", "In the soundproof room Mina held"), spec) == []
    house = Spec(**{**spec.to_dict(), "twist": "the house is breathing"})
    assert "fluent" not in failed(good.replace("Mina held", "In the housekeeper's room Mina held"), house)


def test_a_name_cut_to_a_common_word_is_not_fluent():
    # what the models write when a name's copy stops early on an English word ("Tom" for Tomas): where the word cannot
    # be a sentence's capitalized opener it is a piece of the name
    spec = Spec(**{**SPEC.to_dict(), "protagonist": "Tomas"})
    good = GOOD.replace("Mina", "Tomas")
    assert failed(good, spec) == []
    cut = good.replace("Agnes gave her", "Agnes gave Tom")
    assert failed(cut, spec) == ["fluent"]
    assert "a word of the spec broken: Tom (Tomas)" in explain_story(cut, spec)["fluent"]
    # the same word opening a sentence or a quotation may be the telling's own ("Ever since", "Max said")
    everett = Spec(**{**SPEC.to_dict(), "protagonist": "Everett"})
    opener = GOOD.replace("Mina", "Everett").replace("At three,", 'Ever since three, "Ever')
    assert "fluent" not in failed(opener, everett)
    assert failed(GOOD.replace("Agnes gave her", "Mr. Quill gave her"),  # a title is not a piece of another
                  Spec(**{**SPEC.to_dict(), "supporting": "Mrs. Okafor"})) == []


def test_an_article_that_does_not_fit_its_word_is_not_fluent():
    from pico.checks import wrong_articles

    assert wrong_articles("She found a iron bell and an silver locket.") == ["a iron", "an silver"]
    fitting = ("an hourglass, a unicorn, a one-eyed cat, an X-ray, a UFO, an honest man, a European, an uninvited "
               "guest, an historic house, a historic house, a utopia, a Ukrainian song, a unanimous vote, a Ouija "
               "board, a uranium mine, an x on the map. A owl")
    assert wrong_articles(fitting) == ["A owl"]  # a capital A opening a sentence is the article
    assert wrong_articles("plan A is") == [] and wrong_articles("Row A of an old house") == []
    wrong = GOOD.replace("her a pocket watch", "her an pocket watch")
    assert failed(wrong) == ["fluent"]
    assert "an article that does not fit its word: an pocket" in explain_story(wrong, SPEC)["fluent"]


def test_a_line_broken_off_mid_sentence_is_not_fluent():
    broken = GOOD.replace("Mina held the pocket watch and did not move.",
                          "Mina held the pocket watch\nShe did not move.")
    assert failed(broken) == ["fluent"]
    assert "a line broken off mid-sentence: '...Mina held the pocket watch'" in explain_story(broken, SPEC)["fluent"]
    for ending in ('move!"', "move?", "move:", "move\u2019", "move.\u201d"):  # closing punctuation, quotes included
        assert "fluent" not in failed(GOOD.replace("did not move.", f"did not {ending}\n")), ending


def test_a_restated_spec_is_not_a_story():
    fields = build_prompt(SPEC).split("\n\n")[1]
    assert "not_restated" in failed(fields + "\n\n" + GOOD)
    assert "not_restated" in failed("- 2 to 4 paragraphs.\n" + GOOD)
    prose = GOOD.replace("At three, the knocking began.", "The protagonist is Mina and the twist is coming.")
    assert "not_restated" in failed(prose)


def test_the_examples_of_issue_14_fail():
    for spec in sample_specs(20, 1):
        dump = f"{spec.protagonist} held {spec.object}. The rule: {spec.taboo}.\n\nSomething is still waiting behind the door."
        salad = f"{spec.protagonist} {spec.object} {spec.taboo} {spec.twist}\n\ndark"
        assert {"taboo_present", "twist_present", "fluent"} <= set(failed(dump, spec))
        assert {"taboo_present", "twist_present", "unsettling_ending", "fluent"} <= set(failed(salad, spec))


def test_an_empty_story_fails_every_check_but_the_loop_check_and_says_why():
    problems = explain_story("", SPEC)
    assert list(problems) == list(CHECKS)
    assert [c for c, p in problems.items() if not p] == ["no_repetition"]
    assert read_story("").units == ()


def test_stem():
    assert {stem(w) for w in ["knocks", "knocking", "knocked", "knock"]} == {"knock"}
    assert {stem(w) for w in ["names", "named", "name"]} == {"nam"}
    assert {stem(w) for w in ["boxes", "box"]} == {"box"}


def test_text_stats():
    s = text_stats("the cat sat on the mat the cat sat on the mat")
    assert s["distinct_1"] == 5 / 12
    assert s["repeated_4gram_rate"] == 6 / 9  # every 4-gram of the repeated half occurs twice
    assert text_stats("")["distinct_1"] == 0.0


# ----------------------------------------------------------------------------------------------- pico check
def write_rows(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_pico_check_prints_every_check_and_the_pass_rates(capsys, tmp_path):
    f = write_rows(tmp_path / "s.jsonl", [{"spec": SPEC.to_dict(), "story": GOOD},
                                          {"prompt": build_prompt(SPEC), "story": GOOD.replace("\n\n", " ")}])
    assert main(["check", "--input", f]) == 0
    out = capsys.readouterr().out
    assert f"{f}:1: pass" in out and f"{f}:2: FAIL" in out
    assert all(out.count(c) >= 3 for c in CHECKS)  # two rows and the pass rates
    assert "paragraph_count    FAIL  1 paragraphs" in out
    assert "pass_all            50.0%" in out

    assert main(["check", "--input", f, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["pass_all"] for r in data["rows"]] == [True, False]
    assert data["rows"][1]["checks"] == {c: c != "paragraph_count" for c in CHECKS}
    assert data["pass_rates"] == {**{c: 1.0 for c in CHECKS}, "paragraph_count": 0.5, "pass_all": 0.5}


@pytest.mark.parametrize("row, why", [
    ("{not json", "malformed JSON line"),
    ('["a list"]', "expected a JSON object"),
    ({"spec": SPEC.to_dict()}, 'no "story" string'),
    ({"spec": {"title": "t", "protagonist": "Mina"}, "story": "x"}, "spec is missing field(s) setting, supporting"),
    ({"prompt": "Write a story about Mina.", "story": "x"}, "prompt is missing 'Title:'"),
    ({"story": "x"}, 'no "spec" object and no "prompt" string'),
])
def test_pico_check_bad_rows_are_file_line_errors(capsys, tmp_path, row, why):
    f = write_rows(tmp_path / "bad.jsonl", [{"spec": SPEC.to_dict(), "story": GOOD}, "", row])
    assert main(["check", "--input", f]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {f}:3: ") and why in err and "Traceback" not in err


def test_pico_check_missing_or_empty_file(capsys, tmp_path):
    assert main(["check", "--input", str(tmp_path / "nope.jsonl")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["check", "--input", write_rows(tmp_path / "empty.jsonl", [])]) == 2
    assert "no rows" in capsys.readouterr().err
