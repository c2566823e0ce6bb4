"""Plain data (parsed YAML or JSON) to frozen dataclasses and back, for ``unet.config``.

The types are read from the dataclasses' annotations. Unknown keys, wrong types and failed invariants are each
one ``ValueError`` line naming the key (as a dotted path) and the value received, e.g.
``train.model.tile: invalid value 500: ...``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def check(ok: bool, key: str, value: Any, why: str) -> None:
    """Raise the one-line ``ValueError`` naming ``key`` and ``value`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{key}: invalid value {value!r}: {why}")


def check_choices(obj: Any, section: str) -> None:
    """Each ``Literal``-typed field of dataclass ``obj`` holds one of its choices, also when built directly."""
    for name, tp in typing.get_type_hints(type(obj)).items():
        if typing.get_origin(tp) is Literal:
            value, choices = getattr(obj, name), list(typing.get_args(tp))
            check(value in choices, f"{section}.{name}", value, f"must be one of {choices}")


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by dotted key."""
    where = prefix.rstrip(".") or "params"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown key (valid keys: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """``value`` as type ``tp``: exactly that type (no ``'8'`` for 8, no ``true`` for 1), an int widened to a
    float, a list to a tuple, a mapping to a dataclass."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, key)
    if origin is Literal:
        check(value in args, key, value, f"must be one of {list(args)}")
        return value
    if origin is tuple:
        check(isinstance(value, list | tuple), key, value, "expected a list")
        return tuple(_coerce(args[0], v, key) for v in value)
    if origin is dict:
        check(isinstance(value, dict), key, value, "expected a mapping")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    check(tp not in (int, float, str, bool) or type(value) is tp, key, value, f"expected {tp.__name__}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data form of a config (tuples become lists), for YAML/JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def read_yaml(text: str, where: str) -> Any:
    """Parse params text as DVC does (YAML 1.2, ruamel): ``1e-4`` is a float, ``on`` a string."""
    from ruamel.yaml import YAML, YAMLError

    try:
        return YAML(typ="safe", pure=True).load(text) or {}
    except YAMLError as exc:
        raise ValueError(f"{where}: cannot read params: {' '.join(str(exc).split())}") from exc


def fingerprint(cfg: Any) -> str:
    """Stable short hash of a config subtree (used to refuse resuming a different run)."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
