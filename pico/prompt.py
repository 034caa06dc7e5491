"""The one prompt format, and `encode_sft`: the (ids, loss mask) every SFT/DPO/eval/play path uses.

The prompt and the response are tokenized separately and concatenated, never tokenized as one string,
so the ids the model is trained on after the prompt are exactly the ids of the response it must learn
to produce, and the loss mask lines up with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pico.errors import ParamsError
from pico.spec import FIELDS, VALUES, Spec
from pico.tokenizer import Tokenizer

PREAMBLE = "You are a creative writing assistant.\nWrite a short horror story that follows this story specification."
LABELS = {
    "title": "Title",
    "setting": "Setting",
    "protagonist": "Protagonist",
    "supporting": "Supporting character",
    "object": "Important object",
    "taboo": "Taboo rule",
    "twist": "Twist",
}
CONSTRAINTS = [
    "2 to 4 paragraphs.",
    "Keep it suspenseful and eerie, not graphic.",
    "End with an unsettling implication.",
]
STORY_MARKER = "Story:\n"


def build_prompt(spec: Spec) -> str:
    lines = [PREAMBLE, ""]
    lines += [f"{label}: {getattr(spec, key)}" for key, label in LABELS.items()]
    lines += ["", "Constraints:"] + [f"- {c}" for c in CONSTRAINTS] + ["", STORY_MARKER]
    return "\n".join(lines)


_FIELD_RE = re.compile(r"^(" + "|".join(re.escape(v) for v in LABELS.values()) + r"): (.*)$", re.MULTILINE)


def parse_prompt(prompt: str) -> Spec:
    """The spec a prompt was built from; ValueError naming what is missing if it is not in the format."""
    found: dict[str, str] = {}
    by_label = {label: key for key, label in LABELS.items()}
    for label, value in _FIELD_RE.findall(prompt):
        key = by_label[label]
        if key in found:
            raise ValueError(f"prompt has '{label}:' twice")
        found[key] = value.strip()
    missing = [LABELS[k] for k in LABELS if k not in found]
    if missing:
        raise ValueError(f"prompt is missing {', '.join(repr(m + ':') for m in missing)}")
    return Spec(**found)


@dataclass(frozen=True)
class Encoded:
    """ids = prompt ids + response ids + [EOS]; the loss covers ids[loss_start:] (the response and EOS)."""

    ids: list[int]
    loss_start: int
    truncated: bool  # prompt cut from the left to fit max_len
    skip: tuple[int, ...] = ()  # response positions (0 = first response id) DPO's log-ratios leave out
    starts: tuple[int, ...] = ()  # response positions where a copy of a spec value starts (SFT may weight them)
    continues: tuple[int, ...] = ()  # response positions of those copies' later tokens (SFT may weight them)

    @property
    def n_loss_tokens(self) -> int:
        return len(self.ids) - self.loss_start


def encode_responses(tok: Tokenizer, prompt: str, responses: list[str], max_len: int,
                     truncation: str = "left") -> list[Encoded] | None:
    """Encode responses after one prompt, all against the same prompt ids; None when they cannot fit.

    Over-long rows lose prompt tokens from the left (the instructions at the top go first; the spec and
    "Story:" stay next to the response), so the response ids and their mask never shift. The longest
    response decides the cut, so every response (chosen and rejected of a DPO pair) sees the same prompt, as
    TRL does. `truncation: drop` drops over-long rows instead; a row whose response alone does not fit is
    always dropped (at least one prompt token must give the first response token its context).
    """
    if not prompt:
        raise ValueError("the prompt is empty: nothing to condition the response on")
    prompt_ids = tok.encode(prompt)
    response_ids = [tok.encode(r) + [tok.eot_id] for r in responses]
    overflow = len(prompt_ids) + max(len(r) for r in response_ids) - max_len
    if overflow > 0:
        if truncation == "drop" or overflow >= len(prompt_ids):
            return None
        prompt_ids = prompt_ids[overflow:]
    return [Encoded(ids=prompt_ids + r, loss_start=len(prompt_ids), truncated=overflow > 0) for r in response_ids]


def encode_sft(tok: Tokenizer, prompt: str, response: str, max_len: int, truncation: str = "left") -> Encoded | None:
    """Encode one (prompt, response) pair: ids and the loss start; None when it cannot fit."""
    encoded = encode_responses(tok, prompt, [response], max_len, truncation)
    return encoded[0] if encoded else None


def encode_prompt(tok: Tokenizer, prompt: str) -> list[int]:
    """The ids a model is given to continue at generation time: exactly the prompt part of `encode_sft`."""
    return tok.encode(prompt)


# ----------------------------------------------------------------------------------------------- copied values
_WORD_RE = re.compile(r"[A-Za-z0-9]+")  # "Kofi's" copies "Kofi"
COPIED_FIELDS = ("setting", "protagonist", "supporting", "object", "taboo", "twist")  # the title is not told


def copied_value_spans(response: str, spec: Spec, whole_only: bool = False) -> list[tuple[int, int]]:
    """Character spans of `response` that copy a spec value: a run of its words from the value's first word on,
    case-insensitive, at least two words long (or the whole value when it is one word). A copy cut short
    (the value's first words only) counts as far as it goes, unless `whole_only`; the punctuation after a copy is
    outside its span.
    """
    words = [(m.group().lower(), m.start(), m.end()) for m in _WORD_RE.finditer(response)]
    spans = []
    for field in COPIED_FIELDS:
        value = [w.lower() for w in _WORD_RE.findall(getattr(spec, field))]
        if not value:
            continue
        shortest = min(2, len(value))
        for i, (word, start, _) in enumerate(words):
            if word != value[0]:
                continue
            n = 1
            while n < len(value) and i + n < len(words) and words[i + n][0] == value[n]:
                n += 1
            if n >= shortest and (n == len(value) or not whole_only):
                spans.append((start, words[i + n - 1][2]))
    return sorted(spans)


def token_positions(tok: Tokenizer, ids: list[int], text: str, spans: list[tuple[int, int]]) -> tuple[int, ...]:
    """Positions of the tokens of `ids` (which encode `text`) whose bytes overlap any character span of `text`."""
    if not spans:
        return ()
    byte_spans = [(len(text[:s].encode()), len(text[:e].encode())) for s, e in spans]
    out, at = [], 0
    for j, token in enumerate(ids):
        end = at + len(tok.enc.decode_single_token_bytes(token))
        if any(s < end and at < e for s, e in byte_spans):
            out.append(j)
        at = end
    return tuple(out)


def with_copies_skipped(tok: Tokenizer, encoded: Encoded, response: str, spec: Spec,
                        whole_only: bool = False) -> Encoded:
    """`encoded` with `skip` set to the response tokens that copy a value of `spec` (`copied_value_spans`; with
    `whole_only`, only the copies of a whole value: a copy cut short stays in)."""
    response_ids = encoded.ids[encoded.loss_start : -1]  # the response, without its EOS
    skip = token_positions(tok, response_ids, response, copied_value_spans(response, spec, whole_only))
    return Encoded(encoded.ids, encoded.loss_start, encoded.truncated, skip, encoded.starts, encoded.continues)


def with_copy_positions(tok: Tokenizer, encoded: Encoded, response: str, spec: Spec) -> Encoded:
    """`encoded` with `starts` set to the first token of each copy of a value of `spec` (`copied_value_spans`)
    that the prompt holds (the article of "an iron bell", " Kofi" after a word) and `continues` to those copies'
    later tokens. At a start the model must find the value in the prompt without the previous token to match on
    (the copy head's exact-match terms only continue a copy); at a later token it must go on copying rather than
    end the word ("Sil" for Silas). A copy whose first token the prompt lacks ("Kofi" opening a paragraph, without
    its space) is left out: only the vocabulary side can write it, and weighting it teaches the training values'
    names (RESEARCH.md 60)."""
    response_ids = encoded.ids[encoded.loss_start : -1]
    in_prompt = set(encoded.ids[: encoded.loss_start])
    starts, continues = set(), set()
    for span in copied_value_spans(response, spec):
        first, *rest = token_positions(tok, response_ids, response, [span]) or (None,)
        if first is not None and response_ids[first] in in_prompt:
            starts.add(first)
            continues.update(rest)
    continues -= starts  # a token that ends one copy and starts the next (none in pico's values) counts as a start
    return Encoded(encoded.ids, encoded.loss_start, encoded.truncated, encoded.skip, tuple(sorted(starts)),
                   tuple(sorted(continues)))


# ----------------------------------------------------------------------------------------------- lengths
def longest_prompt_tokens(tok: Tokenizer) -> int:
    """The longest prompt any spec of the value lists can make, in tokens: the prompt built from each field's
    longest value (tokens do not cross the prompt's line breaks, so fields add up)."""
    longest = {f: max(VALUES[f], key=lambda v: len(tok.encode(f" {v}"))) for f in FIELDS}
    return len(encode_prompt(tok, build_prompt(Spec(**longest))))


def longest_example_tokens(tok: Tokenizer, rows: list[dict]) -> tuple[int, int]:
    """(longest prompt, longest prompt + response + EOS) over SFT rows ("response") or DPO pairs ("chosen" and
    "rejected"), in tokens, encoded as `encode_responses` does."""
    prompts = tok.encode_batch([r["prompt"] for r in rows])
    answers = [[r[k] for k in ("response", "chosen", "rejected") if k in r] for r in rows]
    lengths = tok.encode_batch([a for group in answers for a in group])
    longest_prompt = longest_example = 0
    at = 0
    for prompt_ids, group in zip(prompts, answers):
        response = max(len(ids) for ids in lengths[at : at + len(group)])
        at += len(group)
        longest_prompt = max(longest_prompt, len(prompt_ids))
        longest_example = max(longest_example, len(prompt_ids) + response + 1)
    return longest_prompt, longest_example


def check_context(context: int, needed: int, what: str, key: str = "model.max_seq_len") -> None:
    """ParamsError naming `key` when `needed` tokens (`what`) do not fit a context of `context` tokens."""
    if needed > context:
        raise ParamsError(key, f"is {context} tokens but {what} take up to {needed} tokens with this tokenizer; "
                               f"raise {key} to at least {needed} (and sft.max_len, dpo.max_len with it)")
