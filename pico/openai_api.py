"""The OpenAI API's shapes for `pico serve`: a request body checked and turned into a `Completion` to decode, and
the response, chunk and error bodies. Pure functions; the HTTP server is pico/serve.py, decoding pico/batcher.py.

A chat request's prompt is its last user message: a JSON object of the spec fields (as text, or as an object) is
written in pico's one prompt format (`build_prompt`); any other text is the full prompt, as `pico play --prompt`
takes it. System messages are not part of pico's format and are not used (the exported chat template does the
same); an assistant turn is refused, since the models are single-turn.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass

from pico.prompt import build_prompt
from pico.spec import FIELDS, Spec

MAX_N = 16
MAX_STOPS = 4
# Parameters pico cannot honour: a request that sets them (to anything but the no-op value) is refused, not ignored.
UNSUPPORTED = {"tools": None, "functions": None, "tool_choice": None, "logprobs": False, "top_logprobs": None,
               "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": None, "echo": False, "best_of": 1,
               "suffix": None, "response_format": None, "audio": None, "modalities": None, "prediction": None}


class RequestError(Exception):
    """A request the server refuses: the HTTP status, the message and the parameter at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Completion:
    """One request, checked: its prompt text and how to sample n answers to it."""

    kind: str  # "chat" or "text"
    prompt: str
    max_tokens: int | None  # None: until the end token or the context is full
    temperature: float
    top_p: float
    n: int
    stop: tuple[str, ...]
    seed: int | None
    stream: bool


# ----------------------------------------------------------------------------------------------- requests
def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise RequestError(400, f"the request body is not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def _number(body: dict, key: str, default: float, lo: float, hi: float, integer: bool = False):
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise RequestError(400, f"{key} must be {kind} in [{lo:g}, {hi:g}] (got {json.dumps(value)[:40]})", key)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(400, f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    return tuple(stops)


def _refuse_unsupported(body: dict) -> None:
    for key, noop in UNSUPPORTED.items():
        value = body.get(key)
        if value is not None and value != noop and value not in ([], {}, "", {"type": "text"}):
            raise RequestError(400, f"{key} is not supported by pico serve", key)


def spec_prompt(text: str) -> str:
    """The prompt for a chat message's text: a JSON object of the seven spec fields is written in the one prompt
    format; anything else is the prompt itself. A JSON object that is not a spec is an error naming the field."""
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return text
    try:
        spec = json.loads(stripped)
    except ValueError:
        return text  # text that only looks like an object: it is the prompt
    return spec_object_prompt(spec)


def spec_object_prompt(spec: object) -> str:
    if not isinstance(spec, dict):
        raise RequestError(400, "a spec must be an object of the fields " + ", ".join(FIELDS), "messages")
    unknown = sorted(set(spec) - set(FIELDS))
    bad = [f for f in FIELDS if not isinstance(spec.get(f), str) or not spec[f].strip() or "\n" in spec[f]]
    if unknown or bad:
        what = f"unknown field {unknown[0]!r}" if unknown else f"field {bad[0]!r} must be one line of text"
        raise RequestError(400, f"the spec in the user message: {what} (fields: {', '.join(FIELDS)})", "messages")
    return build_prompt(Spec.from_dict(spec))


def _message_text(content: object) -> str | dict:
    if isinstance(content, (str, dict)):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise RequestError(400, "a message's content must be text (a string or a list of text parts)", "messages")


def chat_prompt(messages: object) -> str:
    """The prompt of a chat request's messages (see the module's docstring)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", "messages")
    users = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise RequestError(400, "each message must be an object with role system, user or assistant", "messages")
        if m["role"] == "assistant":
            raise RequestError(400, "pico models are single-turn: send one user message (a prompt or a spec), "
                                    "no assistant turns", "messages")
        if m["role"] == "user":
            users.append(m)
    if not users:
        raise RequestError(400, "no user message: send the prompt or the spec as the user message", "messages")
    content = _message_text(users[-1].get("content"))
    return spec_object_prompt(content) if isinstance(content, dict) else spec_prompt(content)


def parse_request(body: dict, kind: str, model_id: str) -> Completion:
    """A chat ("chat") or completions ("text") request body, checked; RequestError naming the parameter."""
    if body.get("model") != model_id:
        raise RequestError(404, f"model {body.get('model')!r} is not served here; this server serves {model_id!r}",
                           "model", "model_not_found")
    _refuse_unsupported(body)
    if kind == "chat":
        prompt = chat_prompt(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError(400, "prompt must be one string", "prompt")
    if not prompt:
        raise RequestError(400, "the prompt is empty: nothing to continue", "messages" if kind == "chat" else "prompt")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "stream must be true or false", "stream")
    return Completion(
        kind=kind, prompt=prompt,
        max_tokens=None if max_tokens is None else _number({key: max_tokens}, key, 0, 1, 1 << 20, integer=True),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        n=_number(body, "n", 1, 1, MAX_N, integer=True), stop=_stop(body),
        seed=_number(body, "seed", None, -(1 << 63), (1 << 63) - 1, integer=True), stream=stream)


# ----------------------------------------------------------------------------------------------- responses
def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def _choice(kind: str, index: int, text: str | None, finish: str | None, delta: bool, first: bool = False) -> dict:
    if kind == "text":
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
    if not delta:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}
    content = {} if text is None else {"content": text}
    return {"index": index, "delta": ({"role": "assistant"} if first else {}) | content, "logprobs": None,
            "finish_reason": finish}


def response_body(req: Completion, rid: str, model_id: str, texts: list[str], finishes: list[str],
                  prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": rid, "object": "chat.completion" if req.kind == "chat" else "text_completion",
        "created": int(time.time()), "model": model_id,
        "choices": [_choice(req.kind, i, t, f, delta=False) for i, (t, f) in enumerate(zip(texts, finishes))],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def chunk_body(req: Completion, rid: str, model_id: str, index: int, text: str | None, finish: str | None,
               first: bool = False) -> dict:
    """One server-sent event of a streamed answer: a piece of choice `index`'s text, or its finish reason."""
    return {"id": rid, "object": "chat.completion.chunk" if req.kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model_id,
            "choices": [_choice(req.kind, index, text, finish, delta=True, first=first)]}


def models_body(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "pico"}]}
