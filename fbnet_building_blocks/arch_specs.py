"""Named architectures are data: an :class:`ArchSpec` is the ordered op choices plus a little metadata.

The macro skeleton (widths and strides) belongs to the search space, so an architecture is only its
22 op names, a head width and, where it departs from the defaults, a width multiplier and input size.
Built-in architectures live in :data:`ARCHS`; architectures sampled by the search are JSON files in a
registry folder (:func:`arch_registry_dir`), found by name. No source file is ever generated or rewritten.

Sources: paper (Wu et al., CVPR 2019) Fig. 4 and the authors' model zoo for FBNet-A/B/C; the original
CIFAR-10 reproduction (github AnnaAraslanova/FBNet) for the others. FBNet-A's layer 15 is ``ir_k5_e3``
as in the authors' definition (the original reproduction wrote ``ir_k5_e1``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from general_functions.io_utils import atomic_write_json, read_json

from .registry import get_op_args
from .search_space import get_search_space

__all__ = [
    "ArchSpec",
    "ARCHS",
    "arch_registry_dir",
    "load_arch",
    "save_arch",
    "list_archs",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ArchSpec:
    """One architecture of a search space: an op name per searched layer.

    ``head_channels``, ``width_mult`` and ``input_size`` of ``None`` mean "the search space's default".
    ``source`` records where a sampled architecture came from (run, epoch, LUT, predicted latency).
    """

    name: str
    ops: tuple[str, ...]
    search_space: str = "fbnet"
    head_channels: int | None = None
    width_mult: float = 1.0
    input_size: int | None = None
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))

    def validate(self, search_space: str | None = None) -> None:
        """Raise a ``ValueError``/``KeyError`` naming what is wrong for ``search_space``."""
        space = get_search_space(search_space or self.search_space)
        if len(self.ops) != space.num_layers:
            raise ValueError(
                f"architecture {self.name!r} has {len(self.ops)} layers, but search space "
                f"{space.name!r} has {space.num_layers}"
            )
        for i, op in enumerate(self.ops):
            try:
                get_op_args(op)
            except KeyError as err:
                raise KeyError(f"architecture {self.name!r}, layer {i}: {err.args[0]}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ops"] = list(self.ops)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown architecture fields {sorted(unknown)}; known: {sorted(known)}"
            )
        missing = {"name", "ops"} - set(d)
        if missing:
            raise ValueError(f"architecture is missing fields {sorted(missing)}")
        for key, value in d.items():
            _check_field(key, value)
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        return cls.from_dict(json.loads(text))


# What each field of an architecture file may hold (checked by ArchSpec.from_dict).
MAX_OPS = 1000
HEAD_CHANNELS_RANGE = (1, 65536)
WIDTH_MULT_RANGE = (0.0, 10.0)  # (0, 10]: the paper's networks use 0.35 to 1.0
INPUT_SIZE_RANGE = (8, 4096)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_field(key: str, value: Any) -> None:
    """Raise a one-line ``ValueError`` when ``value`` is not what field ``key`` allows."""
    problem = None
    if key == "name" and not (isinstance(value, str) and _NAME_RE.match(value)):
        problem = "a name of letters, digits, '_', '-', '.' (no path separators, at most 128)"
    elif key == "ops" and not (
        isinstance(value, (list, tuple))
        and 0 < len(value) <= MAX_OPS
        and all(isinstance(o, str) and len(o) <= 64 for o in value)
    ):
        problem = f"a list of 1 to {MAX_OPS} op names"
    elif key == "search_space" and not (isinstance(value, str) and _NAME_RE.match(value)):
        problem = "the name of a search space"
    elif key in ("head_channels", "input_size") and value is not None:
        low, high = HEAD_CHANNELS_RANGE if key == "head_channels" else INPUT_SIZE_RANGE
        if not (_is_int(value) and low <= value <= high):
            problem = f"null or an integer in [{low}, {high}]"
    elif key == "width_mult":
        low, high = WIDTH_MULT_RANGE
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and low < value <= high):  # NaN fails both comparisons
            problem = f"a number in ({low:g}, {high:g}]"
    elif key == "source" and not isinstance(value, dict):
        problem = "an object"
    if problem:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(f"field {key!r} must be {problem}, got {shown}")


def _spec(name: str, ops: str, head: int, **kw: Any) -> ArchSpec:
    return ArchSpec(name=name, ops=tuple(ops.split()), head_channels=head, **kw)


# fmt: off
ARCHS: dict[str, ArchSpec] = {s.name: s for s in (
    _spec("fbnet_a", "skip ir_k3_e3 ir_k3_e1 skip skip ir_k5_e6 ir_k3_e3 ir_k5_e1 ir_k3_e3 ir_k5_e6 "
          "ir_k5_e3 ir_k5_s2 ir_k5_e6 ir_k3_e6 ir_k5_s2 ir_k5_e3 ir_k3_s2 ir_k5_e6 ir_k5_e6 ir_k5_e3 "
          "ir_k5_e6 ir_k5_e6", 1504),
    _spec("fbnet_b", "ir_k3_e1 ir_k3_e6 ir_k5_e1 ir_k3_e1 ir_k3_e1 ir_k5_e6 ir_k5_e3 ir_k3_e6 ir_k5_e6 "
          "ir_k5_e6 ir_k5_e1 skip ir_k5_e3 ir_k5_e6 ir_k3_e1 ir_k5_e1 ir_k5_e3 ir_k5_e6 ir_k5_e1 "
          "ir_k5_e6 ir_k5_e6 ir_k3_e6", 1984),
    _spec("fbnet_c", "ir_k3_e1 ir_k3_e6 skip ir_k3_e1 ir_k3_e1 ir_k5_e6 ir_k5_e3 ir_k5_e6 ir_k3_e6 "
          "ir_k5_e6 ir_k5_e3 ir_k5_e6 ir_k5_e6 ir_k5_e6 ir_k5_e6 ir_k5_e6 ir_k5_e3 ir_k5_e6 ir_k5_e6 "
          "ir_k5_e6 ir_k5_e6 ir_k3_e6", 1984),
    _spec("fbnet_96_035_1", "ir_k3_e1 ir_k3_e6 ir_k3_e6 skip skip ir_k5_e6 ir_k5_e6 skip skip ir_k5_e6 "
          "skip skip skip ir_k3_e6 skip skip skip ir_k5_e6 ir_k5_e6 skip skip ir_k5_e6", 1504,
          width_mult=0.35, input_size=96),
    _spec("fbnet_samsung_s8", "ir_k3_e1 ir_k3_e3 ir_k3_e1 skip skip ir_k5_e6 ir_k3_e3 ir_k3_e3 "
          "ir_k3_e6 ir_k5_e6 ir_k5_e3 ir_k5_e3 ir_k5_e3 ir_k3_e6 ir_k5_e3 ir_k5_e3 ir_k5_e3 ir_k5_e6 "
          "ir_k5_e6 ir_k5_e3 ir_k5_e6 ir_k5_e6", 1504),
    _spec("fbnet_iphonex", "skip ir_k3_e6 ir_k3_e1 ir_k3_e1 ir_k3_e1 ir_k3_e6 ir_k3_e6 ir_k3_e6 "
          "ir_k3_e6 ir_k3_e6 ir_k3_e6 ir_k3_e3 ir_k3_e6 ir_k3_e6 ir_k3_e3 ir_k3_e3 ir_k3_e3 ir_k5_e6 "
          "ir_k5_e6 ir_k5_e6 ir_k5_e3 ir_k5_e6", 1504),
    _spec("fbnet_cpu_sample1", "ir_k5_e6 ir_k3_e6 ir_k5_e6 ir_k5_e6 ir_k5_e6 ir_k3_e6 ir_k5_e6 "
          "ir_k5_e3 skip ir_k5_e6 ir_k3_e6 skip skip ir_k5_e6 ir_k5_e6 skip skip ir_k5_e6 skip skip "
          "skip skip", 1504),
    _spec("fbnet_cpu_sample2", "ir_k5_e6 ir_k3_e6 ir_k3_e6 ir_k5_e6 ir_k5_e6 ir_k5_e6 ir_k5_e6 skip "
          "skip ir_k3_e6 ir_k5_e6 skip skip ir_k5_e6 skip skip skip ir_k5_e6 skip skip skip skip",
          1504),
)}
# fmt: on
# Aliases under the names the original reproduction's README used.
ARCH_ALIASES = {"fbnet_s8": "fbnet_samsung_s8"}


def arch_registry_dir() -> Path:
    """Folder of saved (sampled) architectures: ``$FBNET_ARCH_DIR`` or ``<repo>/sampled_architectures``."""
    return Path(os.environ.get("FBNET_ARCH_DIR", REPO_ROOT / "sampled_architectures"))


def list_archs(arch_dir: str | os.PathLike | None = None) -> list[str]:
    folder = Path(arch_dir) if arch_dir else arch_registry_dir()
    saved = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    return sorted(ARCHS) + saved


def _read_arch_file(path: Path) -> ArchSpec:
    """The architecture in the JSON file ``path``; every field checked (:func:`_check_field`)."""
    data = read_json(path, "architecture file")
    if not isinstance(data, dict):
        raise ValueError(f"architecture file {path} must hold a JSON object")
    try:
        return ArchSpec.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"architecture file {path}: {err}") from None


def load_arch(name_or_path: str | ArchSpec, arch_dir: str | os.PathLike | None = None) -> ArchSpec:
    """Resolve a built-in name, a saved name in the registry folder, or a path to a JSON file."""
    if isinstance(name_or_path, ArchSpec):
        return name_or_path
    name = ARCH_ALIASES.get(name_or_path, name_or_path)
    if name in ARCHS:
        return ARCHS[name]
    path = Path(name_or_path)
    if path.suffix == ".json" or os.sep in name_or_path:
        if not path.is_file():
            raise FileNotFoundError(f"architecture file {path} does not exist")
        return _read_arch_file(path)
    folder = Path(arch_dir) if arch_dir else arch_registry_dir()
    if _NAME_RE.match(name) and (folder / f"{name}.json").is_file():
        return _read_arch_file(folder / f"{name}.json")
    raise KeyError(
        f"unknown architecture {name_or_path!r}: not a built-in name, not in {folder}, and not a "
        f".json path; known: {', '.join(list_archs(folder))}"
    )


def save_arch(spec: ArchSpec, arch_dir: str | os.PathLike | None = None) -> Path:
    """Save a (sampled) architecture as ``<arch_dir>/<name>.json``; never overwrite an existing name."""
    if not _NAME_RE.match(spec.name):
        raise ValueError(
            f"invalid architecture name {spec.name!r}: use letters, digits, '_', '-', '.', "
            "no path separators, at most 128 characters"
        )
    if spec.name in ARCHS or spec.name in ARCH_ALIASES:
        raise FileExistsError(f"{spec.name!r} is a built-in architecture; choose another name")
    spec.validate()
    folder = Path(arch_dir) if arch_dir else arch_registry_dir()
    path = folder / f"{spec.name}.json"
    folder.mkdir(parents=True, exist_ok=True)
    try:  # claim the name first, so two concurrent saves cannot both win
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise FileExistsError(f"architecture {spec.name!r} already exists at {path}") from None
    os.close(fd)
    try:
        atomic_write_json(path, spec.to_dict())
    except BaseException:  # e.g. a full disk: give the claimed name back, not an empty file
        path.unlink(missing_ok=True)
        raise
    return path
