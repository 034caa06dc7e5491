"""How often the checker's broken-spelling and stutter rules fire on text a reader accepts: TinyStories (train
and val, as `prepare` wrote them) and the checker fixtures' reference stories (RESEARCH.md, finding 16).

    python benchmarks/checker_false_alarms.py
"""

from __future__ import annotations

from pico.checker_fixtures import is_reference, load_checker_fixtures
from pico.checks import MAX_NON_WORDS, non_words, stutters
from pico.spec import Spec
from pico.tinystories import read_prepared

NO_SPEC = Spec(title="", setting="", protagonist="", supporting="", object="", taboo="", twist="")


def report(name: str, items: list[tuple[str, Spec]]) -> None:
    spelled = [t for t, spec in items if len(non_words(t, spec)) > MAX_NON_WORDS]
    stuttered = [t for t, _ in items if stutters(t)]
    print(f"{name}: {len(items)} stories, {len(spelled)} with > {MAX_NON_WORDS} non-words, "
          f"{len(stuttered)} with a stutter {[stutters(t)[0] for t in stuttered]}")


def main() -> int:
    stories = [t for split in ("train", "val") for t in read_prepared(f"data/prepared/{split}.txt")]
    report("TinyStories", [(t, NO_SPEC) for t in stories])
    refs = [r for r in load_checker_fixtures() if is_reference(r)]
    report("checker references", [(r["story"], Spec.from_dict(r["spec"])) for r in refs])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
