"""pico's tokenizer and prompt format as Hugging Face files: `tokenizer.json` (the `tokenizers` library's format,
loaded by `PreTrainedTokenizerFast`), `tokenizer_config.json` and a chat template.

The BPE is rebuilt from pico's ranks, not retrained: the vocabulary is the ranks (bytes shown through GPT-2's
byte-to-unicode table), the merges are every (left, right) split of a token whose halves are tokens, ordered by
the rank of the token they make (tiktoken merges the adjacent pair whose concatenation has the lowest rank), and
`ignore_merges` takes a whole pre-token that is itself a token at once, as tiktoken does. The result gives
exactly pico's ids (tests/test_export.py checks it on TinyStories val text and the SFT prompts).

Pure functions of a `Tokenizer`: they return JSON-ready dicts; `pico/export.py` writes them.
"""

from __future__ import annotations

from functools import lru_cache

from pico.prompt import CONSTRAINTS, LABELS, PREAMBLE, STORY_MARKER
from pico.tokenizer import EOT, Tokenizer


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte as a printable character (printable Latin-1 bytes map to themselves, the other
    68 bytes to U+0100 onwards, in byte order). `tokenizers`' ByteLevel pre-tokenizer and decoder use it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def token_text(token: bytes) -> str:
    """A token's bytes as the byte-level string `tokenizers` stores in the vocabulary."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def bpe_merges(ranks: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Every (left, right) with left, right and left + right all tokens, ordered by the rank of left + right
    (then by the split point), so `tokenizers`' merge order is tiktoken's."""
    rank_of = {token: rank for rank, token in enumerate(ranks)}
    merges = []
    for token in ranks:
        if len(token) > 1:
            merges += [(token[:i], token[i:]) for i in range(1, len(token))
                       if token[:i] in rank_of and token[i:] in rank_of]
    return merges  # ranks are in order, and each token's splits in split-point order


def tokenizer_json(tok: Tokenizer) -> dict:
    """The `tokenizers` library's serialized tokenizer (tokenizer.json) giving exactly `tok`'s ids."""
    vocab = {token_text(token): rank for rank, token in enumerate(tok.ranks)}
    if len(vocab) != len(tok.ranks):
        raise ValueError("two ranks hold the same bytes: not a BPE vocabulary")
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": tok.eot_id, "content": EOT, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab,
                  "merges": [[token_text(a), token_text(b)] for a, b in bpe_merges(tok.ranks)]},
    }


# ----------------------------------------------------------------------------------------------- chat template
def _jinja_string(text: str) -> str:
    """`text` as a Jinja string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def chat_template() -> str:
    """Jinja for `apply_chat_template`, rendering what `pico serve` renders (`pico.serve.prompt_of_messages`):
    the last user message is the prompt; when its content is a mapping of the spec fields (title, setting,
    protagonist, supporting, object, taboo, twist) it is written in pico's one prompt format (`build_prompt`),
    otherwise its text is taken as the full prompt. System messages are not part of pico's format and are left
    out; an assistant turn is refused (the models are single-turn). The prompt ends with "Story:\\n", where the
    story begins, so `add_generation_prompt` adds nothing."""
    head = PREAMBLE + "\n\n"
    tail = "\n\nConstraints:\n" + "".join(f"- {c}\n" for c in CONSTRAINTS) + "\n" + STORY_MARKER
    fields = "".join(
        f"{{{{ {_jinja_string(label + ': ')} }}}}{{{{ spec[{_jinja_string(key)}] }}}}"
        + ("" if i == len(LABELS) - 1 else "{{ '\\n' }}")
        for i, (key, label) in enumerate(LABELS.items()))
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'assistant' -%}"
        "{{ raise_exception('pico models are single-turn: send one user message (a prompt or a spec)') }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- set users = messages | selectattr('role', 'equalto', 'user') | list -%}"
        "{%- if users | length == 0 -%}"
        "{{ raise_exception('no user message: send a prompt or a spec as the user message') }}"
        "{%- endif -%}"
        "{%- set spec = users[-1]['content'] -%}"
        "{%- if spec is mapping -%}"
        f"{{{{ {_jinja_string(head)} }}}}{fields}{{{{ {_jinja_string(tail)} }}}}"
        "{%- else -%}"
        "{{ spec }}"
        "{%- endif -%}"
    )


def tokenizer_config(tok: Tokenizer, context: int) -> dict:
    """tokenizer_config.json: the class, the end token (also the pad token: pico pads with masks, not ids), the
    context, and `split_special_tokens`, so "<|endoftext|>" typed in a prompt is text, as in pico, never the id."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOT,
        "pad_token": EOT,
        "unk_token": None,
        "model_max_length": context,
        "padding_side": "left",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
        "chat_template": chat_template(),
    }
