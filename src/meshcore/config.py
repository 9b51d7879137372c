"""Settings for the executables: attrs classes loaded from TOML < environment < flags.

One strict cattrs converter turns the merged data into a settings object: it refuses unknown
keys, never coerces (a string is not an int, 1.5 is not an int), and collects every problem
with its path and its source, e.g. ``limits.max_peers: expected int, got "ten" (from
MESHCORE_RELAY_LIMITS_MAX_PEERS)``. `load_toml` raises one `ConfigProblems` listing them all.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from meshcore.errors import ConfigError, ConfigProblems

__all__ = [
    "env_names",
    "load_toml",
    "make_converter",
    "parse_text",
    "structure",
]

T = TypeVar("T")
Path_ = tuple[str | int, ...]


class _Problem(ValueError):
    """A value of the wrong kind; the message is already user-facing."""


_TYPE_NAMES: dict[type, str] = {int: "int", float: "float", str: "string", bool: "true or false"}


def _show(value: object) -> str:
    """A value as the user wrote it in TOML (strings quoted, tables and arrays named)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _mismatch(expected: str, value: object) -> _Problem:
    return _Problem(f"expected {expected}, got {_show(value)}")


# --- the converter --------------------------------------------------------------------------


def _structure_int(value: object, _: type) -> int:
    if type(value) is int:
        return value
    raise _mismatch("int", value)


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _mismatch("float", value)


def _structure_str(value: object, _: type) -> str:
    if isinstance(value, str):
        return value
    raise _mismatch("string", value)


def _structure_bool(value: object, _: type) -> bool:
    if isinstance(value, bool):
        return value
    raise _mismatch("true or false", value)


def _is_literal(tp: Any) -> bool:
    return get_origin(tp) is Literal


def _structure_literal(value: object, tp: Any) -> object:
    choices = get_args(tp)
    if any(type(value) is type(choice) and value == choice for choice in choices):
        return value
    raise _mismatch("one of " + ", ".join(_show(c) for c in choices), value)


def _is_list(tp: Any) -> bool:
    return get_origin(tp) is list


def make_converter() -> cattrs.Converter:
    """A cattrs converter that forbids extra keys, never coerces, and reports every error."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook_func(_is_literal, _structure_literal)

    def list_hook(tp: Any) -> Callable[[object, Any], list[Any]]:
        (item_type,) = get_args(tp) or (Any,)

        def structure_list(value: object, _: Any) -> list[Any]:
            if not isinstance(value, list):
                raise _mismatch("an array", value)
            items, errors = [], []
            for index, item in enumerate(value):
                try:
                    items.append(conv.structure(item, item_type))
                except Exception as exc:
                    exc.add_note(IterableValidationNote(f"@ index {index}", index, item_type))
                    errors.append(exc)
            if errors:
                raise IterableValidationError(f"While structuring {tp}", errors, tp)
            return items

        return structure_list

    def attrs_hook(cls: type) -> Callable[[object, Any], object]:
        base: Callable[[Mapping[str, Any], Any], object] = make_dict_structure_fn(
            cls, conv, _cattrs_forbid_extra_keys=True
        )
        hints = typing.get_type_hints(cls)

        def structure_attrs(value: object, _: Any) -> object:
            if not isinstance(value, Mapping):
                raise _mismatch("a table", value)
            try:
                return base(value, cls)
            except ClassValidationError as exc:
                # attrs stops at the first failing validator, and runs none when a field has
                # the wrong type: check every well-typed field here, so that all are listed.
                with_notes, without = exc.group_exceptions()
                failed = {note.name for _, note in with_notes}
                checked = list(_validator_errors(conv, cls, hints, value, failed))
                if not checked:
                    raise
                kept = [e for e in exc.exceptions if e not in without or _is_extra_keys(e)]
                raise ClassValidationError(
                    f"While structuring {cls.__name__}", kept + checked, cls
                ) from exc

        return structure_attrs

    conv.register_structure_hook_factory(_is_list, list_hook)
    conv.register_structure_hook_factory(attrs.has, attrs_hook)
    return conv


def _is_extra_keys(exc: BaseException) -> bool:
    return isinstance(exc, ForbiddenExtraKeysError)


def _validator_errors(
    conv: cattrs.Converter,
    cls: type,
    hints: Mapping[str, Any],
    value: Mapping[str, Any],
    skip: set[str],
) -> Iterator[Exception]:
    """Run the validator of every given, well-typed field not in `skip` (field-local
    validators only: they get no instance)."""
    for field in attrs.fields(cls):
        if field.validator is None or field.name in skip or field.name not in value:
            continue
        try:
            item = conv.structure(value[field.name], hints.get(field.name, field.type))
        except Exception:
            continue
        try:
            field.validator(None, field, item)
        except (ValueError, TypeError) as exc:
            exc.add_note(AttributeValidationNote(f"@ {field.name}", field.name, field.type))
            yield exc


_CONVERTER = make_converter()


# --- errors with paths ----------------------------------------------------------------------


def _format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def _collect(exc: BaseException, path: Path_) -> Iterator[tuple[Path_, str]]:
    """(path, message) for every leaf error inside a cattrs exception tree."""
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            yield from _collect(sub, (*path, note.name))
        for sub in without:
            yield from _collect(sub, path)
    elif isinstance(exc, IterableValidationError):
        with_index, without = exc.group_exceptions()
        for sub, inote in with_index:
            yield from _collect(sub, (*path, inote.index))
        for sub in without:
            yield from _collect(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        known = [f.name for f in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        for key in sorted(exc.extra_fields):
            yield (*path, key), _unknown_key_message(key, known)
    elif isinstance(exc, KeyError):
        yield path, "required setting is missing; add it"
    elif isinstance(exc, _Problem):
        yield path, str(exc)
    elif isinstance(exc, ValueError | TypeError):
        text = str(exc)
        if path and isinstance(path[-1], str) and text.startswith(f"{path[-1]} "):
            text = text[len(path[-1]) + 1 :]  # validators name their field; the path already does
        yield path, text
    else:
        yield path, f"invalid value ({exc})"


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown setting (did you mean {close[0]!r}?); remove it or fix its spelling"
    return f"unknown setting; remove it (known here: {', '.join(known) or 'none'})"


def structure(
    cls: type[T], data: Mapping[str, Any], sources: Mapping[Path_, str] | None = None
) -> T:
    """Build `cls` from plain data, or raise ConfigProblems listing every problem.

    `sources` maps a path to where its value came from ("in relay.toml", "from --max-peers"),
    which is appended to each problem under that path.
    """
    try:
        return _CONVERTER.structure(data, cls)
    except Exception as exc:
        problems = [_describe(path, msg, sources or {}) for path, msg in _collect(exc, ())]
        raise ConfigProblems(problems or [str(exc)]) from None


def _describe(path: Path_, message: str, sources: Mapping[Path_, str]) -> str:
    for n in range(len(path), 0, -1):
        source = sources.get(path[:n])
        if source:
            return f"{_format_path(path)}: {message} ({source})"
    return f"{_format_path(path)}: {message}"


# --- environment and flags ------------------------------------------------------------------


def _leaves(cls: type, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every settable (path, type) of an attrs class, descending into nested attrs classes."""
    hints = typing.get_type_hints(cls)
    for field in attrs.fields(cls):
        tp = hints.get(field.name, field.type)
        if isinstance(tp, type) and attrs.has(tp):
            yield from _leaves(tp, (*path, field.name))
        else:
            yield (*path, field.name), tp


def env_names(cls: type, env_prefix: str) -> dict[str, Path_]:
    """The environment variable of every setting: prefix + path in capitals, joined by "_"
    (``limits.max_peers`` -> ``MESHCORE_RELAY_LIMITS_MAX_PEERS``)."""
    return {env_prefix + "_".join(str(p) for p in path).upper(): path for path, _ in _leaves(cls)}


def parse_text(text: str, tp: Any) -> object:
    """Turn text from the environment or a flag into the value `tp` expects, when it can.

    Text that does not parse is returned unchanged, so that `structure` reports it with its
    path ("expected int, got "ten""). Lists are comma-separated.
    """
    origin = get_origin(tp)
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        return text
    if tp is int:
        try:
            return int(text.strip().replace("_", ""), 10)
        except ValueError:
            return text
    if tp is float:
        try:
            return float(text.strip().replace("_", ""))
        except ValueError:
            return text
    if origin is list:
        (item_type,) = get_args(tp) or (str,)
        return [parse_text(part.strip(), item_type) for part in text.split(",") if part.strip()]
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return parse_text(text, options[0])
    return text


def _set(data: dict[str, Any], path: Path_, value: object) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(str(part))
        if not isinstance(child, dict):
            child = node[str(part)] = {}
        node = child
    node[str(path[-1])] = value


def _file_leaves(data: Mapping[str, Any], path: Path_ = ()) -> Iterator[Path_]:
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _file_leaves(value, (*path, key))
        else:
            yield (*path, key)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; check the path, or leave out --config"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"config file {path} is a directory; give the path of a .toml file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}; fix the syntax there"
        ) from None


def load_toml(
    cls: type[T],
    path: str | os.PathLike[str] | None,
    *,
    env_prefix: str,
    overrides: Mapping[str, object] | None = None,
    override_names: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    reserved_env: Collection[str] = (),
) -> T:
    """Load `cls` from a TOML file (optional), then the environment, then `overrides`.

    Later sources win: file < environment variables named by `env_names(cls, env_prefix)` <
    `overrides` (dotted keys such as ``"limits.max_peers"``; string values are parsed like
    environment text). `override_names` says how the user spelled each override (its flag),
    for error messages. An environment variable with the prefix that names no setting is an
    error too (a typo would otherwise be silently ignored), unless it is in `reserved_env`
    (variables the caller reads itself, such as the config file's path).

    Raises ConfigError for a missing or unreadable file or bad TOML (with its line number),
    and ConfigProblems listing every bad key, type or value with its path and source.
    """
    data: dict[str, Any] = {}
    sources: dict[Path_, str] = {}
    problems: list[str] = []
    if path is not None:
        file = Path(path)
        data = _read_toml(file)
        sources.update((leaf, f"in {file}") for leaf in _file_leaves(data))
    types_by_path = dict(_leaves(cls))
    names = env_names(cls, env_prefix)
    env = os.environ if environ is None else environ
    for name in sorted(k for k in env if k.startswith(env_prefix) and k not in reserved_env):
        setting = names.get(name)
        if setting is None:
            close = difflib.get_close_matches(name, list(names), n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(names))}"
            problems.append(f"{name}: unknown environment variable; {hint} (unset or rename it)")
            continue
        _set(data, setting, parse_text(env[name], types_by_path[setting]))
        sources[setting] = f"from {name}"
    for key, value in (overrides or {}).items():
        setting = tuple(key.split("."))
        tp = types_by_path.get(setting)
        if isinstance(value, str) and tp is not None and tp is not str:
            value = parse_text(value, tp)
        _set(data, setting, value)
        sources[setting] = f"from {(override_names or {}).get(key, 'the command line')}"
    try:
        result = structure(cls, data, sources)
    except ConfigProblems as exc:
        problems.extend(exc.problems)
        raise ConfigProblems(problems) from None
    if problems:
        raise ConfigProblems(problems)
    return result
