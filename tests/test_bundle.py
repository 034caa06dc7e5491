"""The results bundle's sample pages (pico/bundle.py): which stories are shown, and the values marked in them."""

from __future__ import annotations

from pico.bundle import highlighted, passing_markdown

SPEC = {"title": "The Ward", "setting": "a hospital", "protagonist": "Kai", "supporting": "Dr. Lee",
        "object": "a silver locket that hums", "taboo": "never open the door after dark",
        "twist": "the nurse was never alive"}


def record(index: int, checkpoint: str, response: str, failed: list[str]) -> dict:
    return {"index": index, "checkpoint": checkpoint, "spec": SPEC, "response": response, "failed": failed}


def test_highlighted_marks_each_value_said_word_for_word():
    story = "Kai found the Silver Locket. Never open the door after dark, Dr. Lee said. The nurse was never alive."
    assert highlighted(story, SPEC) == ("Kai found the **Silver Locket**. **Never open the door after dark**, Dr. "
                                        "Lee said. **The nurse was never alive**.")
    assert highlighted("The nurse was never", SPEC) == "The nurse was never"  # a value cut short is not marked
    nested = {**SPEC, "object": "a door", "taboo": "never open the door after dark"}
    assert highlighted("never open the door after dark", nested) == "**never open the door after dark**"


def test_passing_page_lists_every_passing_dpo_story_beside_sft():
    records = [record(0, "sft", "sft zero", ["fluent"]), record(0, "dpo", "dpo zero", []),
               record(1, "sft", "sft one", []), record(1, "dpo", "dpo one", ["twist_present"]),
               record(2, "dpo", "dpo two\n\nthe nurse was never alive", []), record(2, "sft", "sft two", [])]
    page = passing_markdown(records)
    assert "2 of 3 unseen specs" in page
    assert "## Spec 1: The Ward" in page and "## Spec 3: The Ward" in page and "## Spec 2" not in page
    assert page.index("### dpo") < page.index("> dpo zero") < page.index("### sft") < page.index("> sft zero")
    assert "> **the nurse was never alive**" in page and ">\n" in page  # paragraphs kept, value marked
    assert "Failed checks: fluent." in page and "dpo one" not in page
    assert "0 of 0" in passing_markdown([])
