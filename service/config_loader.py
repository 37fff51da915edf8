"""From parsed TOML and ``BMD_NODE_*`` env variables to typed section dataclasses (used by ``service.config``).

A section is a frozen dataclass; its keys are its fields, except fields whose metadata says ``{"toml": False}``
(knobs a stage offers its callers but not the configuration file). Each value is coerced by the field's type hint:
bool, int, float, str, Path, RoiMethod, tuples of those or of VertebraLevel, and ``X | None`` as X (TOML has no
null). Problems raise ``ConfigError`` whose message starts with the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from service.domain.levels import VertebraLevel
from service.domain.results import RoiMethod

ENV_PREFIX = "BMD_NODE_"
ENV_CONFIG_FILE = "BMD_NODE_CONFIG"


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key that is wrong."""


def toml_keys(cls: type) -> list[str]:
    """The keys of a section: its fields, less those marked ``metadata={"toml": False}``."""
    return [f.name for f in fields(cls) if f.metadata.get("toml", True)]


def _optional_inner(hint: Any) -> Any:
    """``X | None`` -> X; any other hint unchanged."""
    if get_origin(hint) is types.UnionType:
        inner = [a for a in get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return hint


def merge_file(raw: dict[str, Any], from_file: Mapping[str, Any]) -> None:
    """Lay a parsed TOML file over ``raw`` (table by table; a file that lists peers replaces the default list)."""
    for section, value in from_file.items():
        if section == "peers":
            raw["peers"] = value
        elif isinstance(value, Mapping) and isinstance(raw.get(section), dict):
            raw[section].update(value)
        else:
            raw[section] = value


def apply_env(raw: dict[str, Any], environ: Mapping[str, str], sections: Mapping[str, type],
              peer_cls: type) -> list[str]:
    """Lay ``BMD_NODE_<SECTION>__<KEY>`` and ``BMD_NODE_PEERS__<index or name>__<KEY>`` over ``raw``;
    returns the names of the variables used."""
    used = []
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if parts[0] == "peers":
            if len(parts) != 3:
                raise ConfigError(f"{name}: expected BMD_NODE_PEERS__<index or name>__<KEY>")
            peers = raw.setdefault("peers", [])
            selector, key = parts[1], parts[2]
            target = select_peer(peers, selector, name)
            target[key] = parse_env_value(peer_cls, key, text, f"peers[{selector}].{key}")
        else:
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise ConfigError(f"{name}: expected BMD_NODE_<SECTION>__<KEY>")
            section, key = parts
            if section not in sections:
                raise ConfigError(f"{section}: unknown section (from env {name}); known: "
                                  f"{sorted([*sections, 'peers'])}")
            raw.setdefault(section, {})[key] = parse_env_value(sections[section], key, text, f"{section}.{key}")
        used.append(name)
    return used


def select_peer(peers: list[dict[str, Any]], selector: str, env_name: str) -> dict[str, Any]:
    if selector.isdigit():
        index = int(selector)
        if index < len(peers):
            return peers[index]
        if index == len(peers):
            peers.append({})
            return peers[index]
        raise ConfigError(f"{env_name}: peer index {index} out of range (there are {len(peers)} peers)")
    for peer in peers:
        if str(peer.get("name", "")).lower() == selector:
            return peer
    raise ConfigError(f"{env_name}: no peer named {selector!r}")


def parse_env_value(cls: type, key: str, text: str, dotted: str) -> Any:
    """An env variable's text as the TOML value it stands for (coerced later with the file's values)."""
    known = toml_keys(cls)
    if key not in known:
        raise ConfigError(f"{dotted}: unknown key; known: {sorted(known)}")
    hint = _optional_inner(get_type_hints(cls)[key])
    if hint is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{dotted}: expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{dotted}: expected an integer, got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{dotted}: expected a number, got {text!r}") from None
    if get_origin(hint) is tuple:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def build_section(cls: type, values: Mapping[str, Any], section: str) -> Any:
    """``cls(**values)`` with every value coerced; errors name the key (``section.key: ...``)."""
    hints = get_type_hints(cls)
    known = toml_keys(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key; known: {sorted(known)}")
        kwargs[key] = coerce(hints[key], value, f"{section}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:  # a required key is missing
        missing = [f.name for f in fields(cls)
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{section}.{missing[0]}: required key is missing") from None
        raise ConfigError(f"{section}: {exc}") from None
    except ValueError as exc:  # sections validate themselves; their messages already name the key
        message = str(exc)
        base = section.split("[")[0]
        named = message.startswith((f"{base}.", f"{base}["))
        raise ConfigError(message if named else f"{section}: {message}") from None


def coerce(hint: Any, value: Any, key: str) -> Any:
    """A parsed TOML value as the type ``hint`` names, or ConfigError naming ``key``."""
    hint = _optional_inner(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        return Path(value)
    if hint is RoiMethod:
        try:
            return RoiMethod(value)
        except ValueError:
            raise ConfigError(f"{key}: expected one of {[m.value for m in RoiMethod]}, got {value!r}") from None
    if get_origin(hint) is tuple:
        (item_hint, _ellipsis) = get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if item_hint is VertebraLevel:
            try:
                return tuple(VertebraLevel.from_name(str(v)) for v in value)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        return tuple(coerce(item_hint, v, key) for v in value)
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")  # a programming error, named anyway


def to_plain(obj: Any) -> Any:
    """A section (or the whole Config) as plain dicts, lists, strings and numbers: the keys a file could set."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: to_plain(getattr(obj, name)) for name in toml_keys(type(obj))}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, VertebraLevel):
        return obj.name
    if isinstance(obj, RoiMethod):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    return obj
