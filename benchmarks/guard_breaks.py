"""Which broken spec words did the sampler's n-gram guard make? (RESEARCH.md, finding 63.)

    python benchmarks/guard_breaks.py eval [more eval directories ...]

For every story in `generations_*.jsonl` that `fluent` fails with "a word of the spec broken" (`pico.checks`),
find the broken copy in the story's tokens: the first k tokens of the value (" S", "il" of " Silas") followed by
something other than the value's token k+1 ("as"). The guard (`evaluate.no_repeat_ngram: 4`) banned that token
when the 4-gram of the copy's last three tokens and it had occurred earlier in the story and was not one of the
prompt's 4-grams. Prints each break and, per directory and checkpoint, how many breaks the guard explains.
The stories are re-tokenized from their text, which gives the sampled tokens in all but rare cases.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

from pico.checks import explain_story
from pico.sampling import ngrams
from pico.spec import Spec
from pico.tokenizer import load_tokenizer

BROKEN = "a word of the spec broken"


def breaks(tok, story: str, prompt: str, broken: str, value: str) -> list[tuple[str, bool]]:
    """(context, banned by the guard) for each place the story's tokens copy `value` in part, spelling `broken`."""
    ids, want = tok.encode(story), tok.encode(" " + value)
    allowed = ngrams(tok.encode(prompt), 4)
    found = []
    for j in range(len(ids)):
        for k in range(1, len(want)):
            if ids[j : j + k] != want[:k] or (j + k < len(ids) and ids[j + k] == want[k]) or j + k < 3:
                continue
            if tok.decode(ids[j : j + k]).strip() != broken:
                continue
            gram = tuple(ids[j + k - 3 : j + k] + [want[k]])
            banned = gram in ngrams(ids[: j + k], 4) and gram not in allowed
            found.append((tok.decode(ids[max(0, j - 3) : j + k + 2]), banned))
    return found


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    tok = load_tokenizer("data/tokenizer/tokenizer.json")
    for eval_dir in argv:
        total, banned = Counter(), Counter()
        for path in sorted(Path(eval_dir).glob("generations_*.jsonl")):
            for row in map(json.loads, path.open()):
                spec = Spec(**row["spec"])
                for problem in explain_story(row["response"], spec).get("fluent", []):
                    if not problem.startswith(BROKEN):
                        continue
                    for broken, value in re.findall(r"(\S+) \(([^)]+)\)", problem.split(": ", 1)[1]):
                        for context, by_guard in breaks(tok, row["response"], row["prompt"], broken, value):
                            total[row["checkpoint"]] += 1
                            banned[row["checkpoint"]] += by_guard
                            print(f"{eval_dir} {path.stem[12:]} {row['checkpoint']}: {context!r} "
                                  f"(want {value!r}){' <- the guard' if by_guard else ''}")
        print(f"{eval_dir}: " + ", ".join(f"{c} {banned[c]} of {total[c]} broken copies banned by the guard"
                                          for c in sorted(total)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
