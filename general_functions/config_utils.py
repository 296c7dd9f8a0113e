"""Configuration: a flat ``@dataclass`` of defaults, each a command-line flag with its own help.

Precedence: dataclass defaults < ``--preset NAME`` < ``--config file.json`` < explicit flags.
Every field becomes ``--<field>``; a field's help names its source (paper or original reproduction).
Values read from a JSON file are type-checked against the field, and unknown keys are refused.
:func:`given_fields` tells which fields the user set (a resumed run takes the others from its checkpoint),
:func:`given_flags` which of them on the command line.
A class may rename fields: ``DEPRECATED_NAMES = {"old": "new"}`` keeps ``--old`` (and ``old`` in JSON)
working, with one warning line, and reads old checkpoints' configurations silently.
A class may bound its numbers with a ``BOUNDS`` class variable of intervals (``"[1, inf)"``,
``"(0, 1)"``); a value outside is a :class:`ConfigError` that names the flag, whatever set it.

    @dataclass
    class TrainConfig:
        lr: float = opt(0.1, "SGD learning rate", "original reproduction")
        BOUNDS: ClassVar[dict[str, str]] = {"lr": "[0, inf)"}

    cfg = parse_config(TrainConfig, argv, presets={"smoke": {"epochs": 1}})
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .io_utils import read_json

__all__ = [
    "ConfigError",
    "opt",
    "parse_config",
    "build_parser",
    "check_bounds",
    "config_to_dict",
    "config_from_dict",
    "given_fields",
    "given_flags",
    "str2bool",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """An unknown key or a value of the wrong type in a configuration."""


def opt(default: Any, help: str, source: str | None = None, choices: tuple | None = None) -> Any:
    """A dataclass field with a help text, an optional source and optional allowed values."""
    meta = {"help": help, "source": source, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def str2bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(underlying type, optional?) for ``int``, ``int | None``, ``list[int]``..."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert ``value`` (a CLI string or a JSON value) to the field's type, or raise ConfigError."""
    base, optional = _base_type(tp)
    if value is None or (isinstance(value, str) and value.lower() == "none" and optional):
        if optional:
            return None
        raise ConfigError(f"{name}: None is not allowed")
    origin = typing.get_origin(base) or base
    try:
        if origin is bool:
            return str2bool(value)
        if origin in (list, tuple):
            if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
                value = value[0]  # one word on the command line: a list in any of its forms
            if isinstance(value, str):
                text = value.strip()
                value = ast.literal_eval(text) if text[:1] in "[(" else text.split(",")
                if isinstance(value, (int, float)):
                    value = [value]
            (item,) = typing.get_args(base)[:1] or (str,)
            return [_coerce(name, item, v) for v in value]
        if origin is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if origin is str and isinstance(value, str):
            return value
    except (ValueError, SyntaxError, argparse.ArgumentTypeError) as err:
        raise ConfigError(f"{name}: cannot read {value!r} as {base}: {err}") from None
    raise ConfigError(f"{name}: expected {base}, got {value!r} ({type(value).__name__})")


@functools.cache  # get_type_hints is slow, and a class's fields do not change
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, f in fields.items():
        f.type = hints[name]
    return fields


def _renamed(cls: type, values: dict[str, Any], warn_about: str | None = None) -> dict[str, Any]:
    """``values`` with the deprecated keys of ``cls`` renamed; ``warn_about`` names their source."""
    renames = getattr(cls, "DEPRECATED_NAMES", {})
    out = {}
    for key, value in values.items():
        if key in renames:
            if warn_about:
                _deprecation(f"{warn_about}: key {key!r}", repr(renames[key]))
            key = renames[key]
        out[key] = value
    return out


def _deprecation(old: str, new: str) -> None:
    print(f"warning: {old} is deprecated and will be removed; use {new}", file=sys.stderr)


def config_from_dict(cls: type[T], values: dict[str, Any], base: T | None = None) -> T:
    """Build ``cls`` from ``base`` (or the defaults) updated with ``values``; type-checked.

    Deprecated names (``cls.DEPRECATED_NAMES``) are read as their new ones, without a warning.
    """
    fields = _fields(cls)
    values = _renamed(cls, values)
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown configuration keys {sorted(unknown)} for {cls.__name__}")
    merged = config_to_dict(base) if base is not None else {}
    for key, value in values.items():
        merged[key] = _coerce(key, fields[key].type, value)
        choices = fields[key].metadata.get("choices")
        if choices and merged[key] not in choices:
            raise ConfigError(f"{key}: {merged[key]!r} is not one of {list(choices)}")
    cfg = cls(**merged)
    check_bounds(cfg)
    return cfg


_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])$")


def _bound_problem(interval: str, value: float) -> str | None:
    """What is wrong with ``value`` for ``interval`` (e.g. ``"[1, inf)"``), or None when it fits."""
    match = _INTERVAL.match(interval)
    if match is None:
        raise ValueError(f"malformed interval {interval!r}: write e.g. '[1, inf)' or '(0, 1)'")
    left, low, high, right = match.groups()
    low, high = float(low), float(high)
    inf_allowed = (value == high and right == "]") or (value == low and left == "[")
    unbounded = math.isinf(low) or math.isinf(high)  # "at least 0" would not say what is wrong
    if unbounded and (math.isnan(value) or (math.isinf(value) and not inf_allowed)):
        return "a finite number"
    too_low = value < low or (left == "(" and value == low)
    too_high = value > high or (right == ")" and value == high)
    if not (too_low or too_high or math.isnan(value)):
        return None
    if math.isinf(high):
        return f"at least {low:g}" if left == "[" else f"greater than {low:g}"
    if math.isinf(low):
        return f"at most {high:g}" if right == "]" else f"less than {high:g}"
    return f"in {interval}"


def check_bounds(cfg: Any) -> None:
    """Raise :class:`ConfigError` naming the first field of ``cfg`` outside its ``BOUNDS``."""
    for name, interval in getattr(type(cfg), "BOUNDS", {}).items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # None (unset) or not a number
        problem = _bound_problem(interval, value)
        if problem:
            raise ConfigError(f"--{name} must be {problem}, got {value}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def given_fields(cfg: Any) -> set[str]:
    """The fields the user set: flags, ``--config`` keys and ``--preset`` values (:func:`parse_config`).

    For a configuration built in code, the fields whose value differs from the default.
    """
    given = getattr(cfg, "_given", None)
    if given is not None:
        return set(given)
    default = type(cfg)()
    return {
        f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)
    }


def given_flags(cfg: Any) -> set[str]:
    """The fields set by command-line flags (not by ``--preset`` or ``--config``; :func:`parse_config`).

    Empty for a configuration built in code.
    """
    return set(getattr(cfg, "_flags", ()))


class _DeprecatedFlag(argparse.Action):
    """``--old VALUE``: one warning line, then the value goes to the new field."""

    def __call__(self, parser, namespace, values, option_string=None):
        _deprecation(str(option_string), f"--{self.dest}")
        setattr(namespace, self.dest, values)


def _default_text(value: Any) -> str:
    if value == "":
        return "empty"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "empty"
    return str(value)


def _help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    notes = [f"default: {_default_text(default)}"]
    if default == "" and ("empty" in text or "default" in text):
        notes = []  # the help already says what an empty value means
    if f.metadata.get("source"):
        notes.append(f.metadata["source"])
    if notes:
        text += f" ({'; '.join(notes)})"
    return text.replace("%", "%%")  # argparse %-formats help strings


class _Parser(argparse.ArgumentParser):
    """An argument error is one line that points at --help, not the whole usage. Flags are never
    abbreviated: ``--epoch`` is an error, not ``--epochs`` (nor a prefix of another flag)."""

    def __init__(self, **kwargs: Any):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


Groups = list[tuple[str, tuple[str, ...] | None]]


def build_parser(
    cls: type,
    description: str = "",
    presets: dict[str, dict[str, Any]] | None = None,
    groups: Groups | None = None,
    hidden: tuple[str, ...] = (),
    prog: str | None = None,
) -> argparse.ArgumentParser:
    """A parser with one flag per field of ``cls`` (``prog``: how the usage line names the command).

    ``groups``: (heading, field names) pairs, in order; ``None`` as the names takes every field no
    other group names (by default one group holds them all). Fields in ``hidden`` are accepted but
    left out of ``--help`` (e.g. the options of another mode).
    """
    parser = _Parser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="JSON file of field values (see --help)")
    if presets:
        parser.add_argument(
            "--preset", default=None, choices=sorted(presets), help="a named set of defaults"
        )
    fields = _fields(cls)
    groups = groups or [(f"{cls.__name__} fields", None)]
    named = {name for _, names in groups if names for name in names}
    if named - set(fields):
        raise ValueError(f"help groups name unknown fields {sorted(named - set(fields))}")
    for title, names in groups:
        names = names if names is not None else tuple(n for n in fields if n not in named)
        if all(name in hidden for name in names):
            group = parser
        else:
            group = parser.add_argument_group(title)
        for name in names:
            kwargs = _flag_kwargs(name, fields[name], name in hidden)
            group.add_argument(f"--{name}", **kwargs)
            for old in (
                o for o, new in getattr(cls, "DEPRECATED_NAMES", {}).items() if new == name
            ):
                kwargs.update(help=argparse.SUPPRESS, dest=name, action=_DeprecatedFlag)
                group.add_argument(f"--{old}", **kwargs)
    return parser


def _flag_kwargs(name: str, f: dataclasses.Field, hidden: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"default": None, "help": _help(f), "metavar": name.upper()}
    if f.metadata.get("choices"):
        kwargs["metavar"] = "{" + ",".join(map(str, f.metadata["choices"])) + "}"
    base = _base_type(f.type)[0]
    # a bare ``--flag`` means True; ``--flag False`` works too
    if base is bool:
        kwargs.update(nargs="?", const="true", metavar="BOOL")
    # a list: ``--seeds 0 1``, ``--seeds 0,1`` or ``--seeds [0,1]``
    if typing.get_origin(base) in (list, tuple):
        kwargs["nargs"] = "+"
    if hidden:
        kwargs["help"] = argparse.SUPPRESS
    return kwargs


def parse_config(
    cls: type[T],
    argv: list[str] | None = None,
    description: str = "",
    presets: dict[str, dict[str, Any]] | None = None,
    groups: Groups | None = None,
    hidden: tuple[str, ...] = (),
    prog: str | None = None,
) -> T:
    """Parse ``argv`` into ``cls`` with the precedence described in the module docstring.

    ``groups`` and ``hidden`` arrange ``--help`` (:func:`build_parser`); every field stays a flag.
    """
    parser = build_parser(cls, description, presets, groups, hidden, prog)
    args = parser.parse_args(argv)
    cfg = cls()
    given: set[str] = set()
    try:
        layers = [presets[args.preset]] if presets and args.preset else []
        if args.config:
            layers.append(_renamed(cls, load_json_config(args.config), warn_about=args.config))
        flags = {k: v for k, v in vars(args).items() if k in _fields(cls) and v is not None}
        layers.append(flags)
        for values in layers:
            cfg = config_from_dict(cls, values, cfg)
            given |= set(values)
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    cfg._given = frozenset(given)  # not a field: see given_fields
    cfg._flags = frozenset(flags)  # see given_flags
    return cfg


def load_json_config(path: str | Path) -> dict[str, Any]:
    try:
        values = read_json(path, "config file")
    except (FileNotFoundError, ValueError) as err:  # missing, a folder, binary, huge, not JSON
        raise ConfigError(str(err)) from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return values
