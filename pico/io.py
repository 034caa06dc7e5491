"""File I/O at the edges: atomic writes (temp name, fsync, rename) and JSONL that reports file:line."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from pico.errors import DataError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success fsync it and rename it over `path`.

    A crash or exception leaves `path` as it was: partial files never become outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed run; never let DVC see it
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder next to `path`; on success it replaces `path` (renamed over it), so the folder
    appears whole or not at all. A crash leaves the old `path` (or, for an instant, no `path`), never a partial one."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    for stale in (tmp, old):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, dumps_json(obj))


def read_json(path: str | Path) -> Any:
    """A JSON file; DataError naming the file (and line) when it is missing, not UTF-8 or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: invalid JSON: {type(e).__name__}") from None


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write one JSON object per line (keys in insertion order, so same rows give the same bytes)."""
    lines = [json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows]
    write_text(path, "".join(lines))
    return len(lines)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _encodable(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a JSONL file; DataError naming file:line for a line that is
    not UTF-8, not JSON or not an object. A leading BOM (Windows editors) is skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    for lineno, raw in enumerate(path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line)") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON line: {e.msg}") from None
        except (ValueError, RecursionError) as e:  # e.g. a 5000-digit number, or arrays nested 100000 deep
            raise DataError(f"{path}:{lineno}: malformed JSON line: {type(e).__name__}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        if _SURROGATE_ESCAPE.search(line) and not _encodable(row):  # a pair (an emoji) is fine, a lone half is not
            raise DataError(f"{path}:{lineno}: holds a lone surrogate escape (\\ud800-\\udfff), which is not text")
        yield lineno, row


def text_problem(value: Any) -> str | None:
    """Why a JSONL field cannot be used as text (None, a number, NaN, empty, a lone \\ud800 escape), or None."""
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty string (got {value!r:.40})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"holds a lone surrogate escape at character {e.start + 1} (\\ud800-\\udfff), not text"
    return None


def read_jsonl(path: str | Path, required: Iterable[str] = (), texts: Iterable[str] = ()) -> list[dict]:
    """Read a JSONL file of objects. A malformed line, a row missing a `required` key, or a `texts` key that is
    not a non-empty string (null, a number, NaN, "", a lone surrogate) raises DataError naming file:line."""
    required, texts = tuple(required), tuple(texts)
    rows = []
    for lineno, row in iter_jsonl(path):
        missing = [k for k in required + texts if k not in row]
        if missing:
            raise DataError(f"{path}:{lineno}: missing key(s) {', '.join(missing)}")
        for key in texts:
            problem = text_problem(row[key])
            if problem:
                raise DataError(f"{path}:{lineno}: \"{key}\" {problem}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def progress_bar(**kwargs):
    """tqdm that redraws often on a terminal and only every 10 s in logs (DVC, CI), so logs stay readable."""
    import sys

    from tqdm import tqdm

    tty = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.1 if tty else 10.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)
