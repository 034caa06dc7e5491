"""How often generations state their spec's values word for word, beside the checker's pass rates.

The checker accepts a value stated in other words (a taboo or twist sentence holding 3/4 of its distinctive
words, the object's head noun and half its modifiers), which teacher-written stories need. This counts the
stricter thing a reader checks first: the object (without its article), taboo and twist appearing verbatim
(case and spacing folded),
and stories with no made-up word outside the spec (the `fluent` check allows one); beside them pass_all as the
run's checker stored it and as this checkout's checker scores the same stories. Used to see whether a training
change passes the checks by stating values more loosely (RESEARCH.md, finding 35).

    python benchmarks/verbatim_values.py eval/generations_test_unseen.jsonl [more generation files]
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict

from pico.checks import check_story, failed_checks, non_words
from pico.io import read_jsonl
from pico.spec import Spec

FIELDS = ("object", "taboo", "twist")


def folded(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower())


def verbatim(record: dict) -> dict[str, bool]:
    """Each value word for word; the object without its article ("the silver locket" names "a silver locket")."""
    story = folded(record["response"])
    values = {f: record["spec"][f] for f in FIELDS}
    values["object"] = re.sub(r"^(a|an|the) ", "", values["object"].strip(), flags=re.IGNORECASE)
    return {f: folded(v) in story for f, v in values.items()}


def summary(records: list[dict]) -> dict[str, float]:
    n = len(records)
    rows = [verbatim(r) for r in records]
    out = {f"verbatim_{f}": sum(r[f] for r in rows) / n for f in FIELDS}
    out["verbatim_all"] = sum(all(r.values()) for r in rows) / n
    out["no_made_up_word"] = sum(not non_words(r["response"], Spec.from_dict(r["spec"])) for r in records) / n
    out["pass_all"] = sum(r["passed_all"] for r in records) / n  # as stored by the run's checker
    out["pass_all_now"] = sum(not failed_checks(check_story(r["response"], Spec.from_dict(r["spec"])))
                              for r in records) / n  # re-scored by this checkout's checker
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for path in argv:
        by_checkpoint = defaultdict(list)
        for r in read_jsonl(path, required=("checkpoint", "response", "spec", "passed_all")):
            by_checkpoint[r["checkpoint"]].append(r)
        for name, records in by_checkpoint.items():
            cells = " ".join(f"{k} {v:.3f}" for k, v in summary(records).items())
            print(f"{path} {name} (n={len(records)}): {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
