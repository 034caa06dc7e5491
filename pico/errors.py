"""Errors a user can act on, and the one place that turns any failure into one line and an exit status.

Stage scripts (`pico.stage.run_stage`) and the CLI (`pico.cli.main`) both end in `exit_status`: a PicoError is
one line naming the culprit and exit 2; Ctrl-C is one line and exit 130; anything else is a bug in pico, one
line and exit 1. `PICO_DEBUG=1` (or `pico --debug`) prints the traceback too. Every line is redacted first:
no URL user info and no value of a secret-looking environment variable reaches the terminal or a log.
"""

from __future__ import annotations

import os
import re
import sys
import traceback

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
# scheme://user[:password]@host: everything between "//" and the last "@" before the host is user info
URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s@'\"]*@")
EXIT_ERROR, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 130


class PicoError(Exception):
    """Base class: the message says what is wrong and what to do. URL user info is cut from it when it is made,
    so no log, test report or file that records an error can hold a password from a URL."""

    def __init__(self, *args):
        super().__init__(*(redact(a, secrets=[]) if isinstance(a, str) else a for a in args))


class ParamsError(PicoError):
    """A key in params.yaml is unknown, missing, of the wrong type or out of range."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"params: {key}: {message}")


class DataError(PicoError):
    """An input file is missing, empty or malformed (the message names the file, and the line if any)."""


class CheckpointError(PicoError):
    """A checkpoint is missing, truncated, foreign or does not match the tokenizer/model it is used with."""


class ExportError(PicoError):
    """A checkpoint cannot be written as a Hugging Face model exactly (the message names what does not map)."""


class TrainingError(PicoError):
    """Training cannot go on (e.g. the loss became NaN/inf)."""


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (long enough to search for)."""
    env = dict(os.environ if env is None else env)
    return [v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= 8]


def redact(text: str, secrets: list[str] | None = None) -> str:
    """`text` without URL user info (`https://***@host`) and without any of `secrets` (default: the environment's)."""
    text = URL_USERINFO.sub(lambda m: m["scheme"] + "***@", text)
    for secret in sorted(secrets if secrets is not None else secret_values(), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def debug_wanted() -> bool:
    return os.environ.get("PICO_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def exit_status(exc: BaseException, *, debug: bool = False, stream=None) -> int:
    """Report `exc` as one redacted line on stderr (the traceback too when debugging) and return the exit status."""
    stream = stream or sys.stderr
    if debug or debug_wanted():
        print(redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))), end="", file=stream)
    if isinstance(exc, KeyboardInterrupt):
        line, status = "interrupted; finished outputs are untouched, rerun to resume", EXIT_INTERRUPTED
    elif isinstance(exc, PicoError):
        line, status = str(exc), EXIT_ERROR
    else:
        detail = str(exc).splitlines()[0] if str(exc).strip() else "no detail"
        line = (f"internal error {type(exc).__name__}: {detail[:300]} (a bug in pico: please report it; "
                f"PICO_DEBUG=1 shows the traceback)")
        status = EXIT_BUG
    print(f"error: {redact(' '.join(line.split()))}", file=stream)  # one line, whatever the message holds
    return status
