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


def load_bundle_stage():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "stages" / "bundle.py"
    spec = importlib.util.spec_from_file_location("bundle_stage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_time_honours_source_date_epoch_and_names_it_when_bad():
    import datetime as dt

    import pytest

    from pico.errors import PicoError

    stage = load_bundle_stage()
    assert stage.build_time({"SOURCE_DATE_EPOCH": "1764720000"}) == "2025-12-03T00:00:00+00:00"
    assert stage.build_time({"SOURCE_DATE_EPOCH": "0"}) == "1970-01-01T00:00:00+00:00"
    now = dt.datetime.fromisoformat(stage.build_time({}))
    assert now.tzinfo is not None and abs((dt.datetime.now(dt.timezone.utc) - now).total_seconds()) < 60
    for bad in ["abc", "1.5", "", "99999999999999999999"]:
        with pytest.raises(PicoError, match="SOURCE_DATE_EPOCH"):
            stage.build_time({"SOURCE_DATE_EPOCH": bad})
