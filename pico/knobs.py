"""The machinery behind pico.config: a typed field with its range and help (`knob`), one loop that checks
every field (`Section`), a YAML loader that refuses duplicate keys, and `describe` for `pico params`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml

from pico.errors import ParamsError, PicoError


def knob(help: str, range: str = "", pattern: str = "") -> Any:
    """A params field: help line, range in interval notation ("(0, 1]") and/or a regex. No default."""
    return field(metadata={"help": help, "range": range, "pattern": pattern})


def in_range(value: float, interval: str) -> bool:
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    return (lo <= value if interval[0] == "[" else lo < value) and (value <= hi if interval[-1] == "]" else value < hi)


def _typed(value: Any, tp: Any, key: str) -> Any:
    """`value` checked against the annotation `tp` (ints widened where a float is due)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ParamsError(key, f"must be one of {', '.join(map(repr, args))} (got {value!r})")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _typed(value, option, key)
            except ParamsError:
                pass
        raise ParamsError(key, f"must be {' or '.join(type_name(a) for a in args)} (got {value!r})")
    if origin in (list, dict) and not isinstance(value, origin):
        raise ParamsError(key, f"must be a {'list' if origin is list else 'mapping'} (got {value!r})")
    if origin is list:
        return [_typed(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        return {_typed(k, args[0], key): _typed(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else build_section(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ParamsError(key, f"must be {type_name(tp)} (got {value!r})")
    if tp is float and not math.isfinite(value):
        raise ParamsError(key, f"must be a finite number (got {value!r})")
    return value


def check_flag(cls: type, name: str, value: Any, flag: str) -> Any:
    """A command-line flag that sets what the knob `cls.name` sets, checked against the knob's type and range:
    the same values are refused in params.yaml and on the command line, each error naming where it came from."""
    f = next(f for f in fields(cls) if f.name == name)
    try:
        value = _typed(value, typing.get_type_hints(cls)[name], flag)
    except ParamsError as e:
        raise PicoError(str(e).removeprefix("params: ")) from None
    if f.metadata["range"] and not in_range(value, f.metadata["range"]):
        raise PicoError(f"{flag}: must be in {f.metadata['range']} (got {value!r})")
    return value


def url_problem(url: str) -> str | None:
    """Why an http(s) URL in params.yaml is unusable, without quoting it (it may hold a password), or None."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        return "is not a valid URL"
    if "@" in parts.netloc:
        return ("holds user info (user:password@host): credentials never belong in params.yaml, a committed file "
                "that DVC copies into dvc.lock; remove them and put the API key in the environment variable "
                "named by generate.teacher.api_key_env")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number in [0, 65535])
        parts.hostname.encode("idna")  # a host http.client could not put in a request
    except (ValueError, UnicodeError):
        return "has a port that is not a number in [0, 65535]"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain spaces or control characters"
    return None


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(map(repr, typing.get_args(tp)))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


class Section:
    """Base of every section: each field's type, range and pattern, then the section's own `validate`."""

    KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            key, meta = f"{self.KEY}.{f.name}", f.metadata
            value = _typed(getattr(self, f.name), hints[f.name], key)
            object.__setattr__(self, f.name, value)
            if meta["range"] and isinstance(value, (int, float)) and not in_range(value, meta["range"]):
                raise ParamsError(key, f"must be in {meta['range']} (got {value!r})")
            if meta["pattern"] and isinstance(value, str) and meta["pattern"].startswith("https?://"):
                problem = url_problem(value)
                if problem:
                    raise ParamsError(key, problem)
            if meta["pattern"] and isinstance(value, str) and not re.fullmatch(meta["pattern"], value):
                raise ParamsError(key, f"must match {meta['pattern']} (got {value!r})")
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields."""

    def require(self, ok: bool, name: str, message: str) -> None:
        if not ok:
            raise ParamsError(f"{self.KEY}.{name}", message)


def build_section(cls: type, raw: Any, key: str) -> Any:
    """One section from its mapping: unknown and missing keys are errors that name them."""
    if not isinstance(raw, dict):
        raise ParamsError(key, f"must be a mapping of keys to values (got {raw!r})")
    known = {f.name: f for f in fields(cls)}
    for name in raw:
        if name not in known:
            shown = name if str(name).isprintable() else repr(name)  # a key with a newline stays one line
            raise ParamsError(f"{key}.{shown}", f"unknown key (known keys: {', '.join(sorted(known))})")
    for name, f in known.items():
        if name not in raw:
            raise ParamsError(f"{key}.{name}", f"missing ({f.metadata['help']})")
    return cls(**raw)


def duplicate_key(node: yaml.Node, path: str = "", seen: set[int] | None = None) -> tuple[str, int] | None:
    """(dotted key, line) of the first key given twice in one mapping of a composed YAML document, or None.
    Plain YAML silently keeps the last value; `dvc repro` refuses the file, so every entry point must too."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias to a node already checked
        return None
    seen.add(id(node))
    children: list[tuple[str, yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        names: set[str] = set()
        for key_node, value_node in node.value:
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            full = f"{path}.{name}" if path else name
            if isinstance(key_node, yaml.ScalarNode) and name in names:
                return full, key_node.start_mark.line + 1
            names.add(name)
            children.append((full, value_node))
    elif isinstance(node, yaml.SequenceNode):
        children = [(f"{path}[{i}]", item) for i, item in enumerate(node.value)]
    for child_path, child in children:
        found = duplicate_key(child, child_path, seen)
        if found:
            return found
    return None


def read_yaml(path: str | Path) -> Any:
    """A YAML file, with one-line errors naming it (missing, not UTF-8, not YAML, a key given twice)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(str(path), "file not found; run from the repository root or pass --params")
    try:
        loader = yaml.SafeLoader(path.read_bytes().decode("utf-8"))
        try:
            node = loader.get_single_node()
            duplicate = duplicate_key(node) if node is not None else None
            if duplicate:
                raise ParamsError(duplicate[0], f"given twice (line {duplicate[1]} of {path}); keep one")
            return loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except UnicodeDecodeError as e:
        raise ParamsError(str(path), f"is not UTF-8 text (byte {e.start})") from None
    except yaml.reader.ReaderError as e:
        raise ParamsError(str(path), f"holds the character {chr(e.character)!r} (byte {e.position}), which YAML "
                                     f"does not allow; remove it") from None
    except yaml.YAMLError as e:  # one line: the problem and where, not PyYAML's multi-line excerpt
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ParamsError(str(path), f"is not valid YAML: {problem}{where}") from None
    except RecursionError:
        raise ParamsError(str(path), "is nested too deeply to be a params file") from None


def describe(cls: type, prefix: str) -> list[tuple[str, str, str]]:
    """(key, type and range, help) of every field of a section, nested sections expanded."""
    hints, rows = typing.get_type_hints(cls), []
    for f in fields(cls):
        key, tp, meta = f"{prefix}.{f.name}", hints[f.name], f.metadata
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, key)
        else:
            rows.append((key, " ".join(x for x in (type_name(tp), meta["range"], meta["pattern"]) if x), meta["help"]))
    return rows
