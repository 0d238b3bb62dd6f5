"""YAML configs with ``key=value`` dotted overrides.

A config is a plain nested dict. ``_base_: other.yaml`` (relative path) merges a parent config first,
so each paper experiment is one small file. Override values are parsed as YAML, so ``epochs=3``,
``data.strict=true`` and ``model.global_blocks=[2,5]`` get their natural types.
"""

from __future__ import annotations

import copy
import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sarmae.errors import ConfigError

CONFIG_DIR = Path(str(resources.files("sarmae") / "configs"))  # shipped as package data


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; configs and overrides mean a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
               r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def resolve_config_path(name: str | Path) -> Path:
    """Find a config by path, or by name among the configs shipped inside the package."""
    path = Path(name)
    candidates = [path, CONFIG_DIR / path, CONFIG_DIR / f"{path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config {name}: no such file (looked in . and {CONFIG_DIR})")


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; ``update`` wins. Returns a new dict."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping of keys")
    base = data.pop("_base_", None)
    if base is not None:
        data = merge(load_yaml((path.parent / base).resolve()), data)
    return data


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    """Set ``cfg['a']['b'] = value`` for ``key='a.b'``, creating missing levels."""
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{part}' is a value ({child!r}), not a section")
        node = child
    node[parts[-1]] = value


def get_dotted(cfg: dict, key: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override '{text}': expected key=value, e.g. epochs=10 or data.root=/data")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_Loader) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Load a YAML config and apply ``key=value`` overrides in order."""
    cfg = load_yaml(resolve_config_path(path))
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(cfg, key, value)
    return cfg


def save_config(cfg: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def check_keys(cfg: dict, schema: dict, where: str = "") -> None:
    """Every key of ``cfg`` must exist in ``schema`` (the command's root config: every key it reads, with its
    default), and a value must have the default's type when that is a number, a bool, a list or a section (ints
    pass for floats). ``null`` and string defaults take anything: strings are often one choice of several kinds
    (``devices: auto`` or ``2``) and their readers check them.

    A typo is a one-line :class:`ConfigError` naming the key and the closest valid one, never a silent default.
    A section whose default is an empty mapping (``{}``) is open: its keys are checked by whatever reads it.
    """
    for key, value in cfg.items():
        name = f"{where}{key}"
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1, cutoff=0.6)
            hint = f"did you mean {where}{close[0]}?" if close else f"known keys here: {', '.join(map(str, schema))}"
            raise ConfigError(f"{name}: unknown key; {hint}")
        default = schema[key]
        if isinstance(default, dict):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{name}={value!r}: expected a mapping of keys (a section)")
            if default and value:
                check_keys(value, default, f"{name}.")
        elif not isinstance(default, (str, type(None))) and value is not None and not _same_kind(value, default):
            raise ConfigError(f"{name}={value!r}: expected {type(default).__name__} like the default {default!r}")


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def complete_config(cfg: dict, root: str, model_keys: tuple[str, ...] = (),
                    open_sections: tuple[str, ...] = ()) -> dict:
    """Check ``cfg`` against its command's schema, then return it complete and typed: every key of the root
    config present (its default where ``cfg`` is silent) and every number of a float key a float.

    The engine then reads ``cfg["optim"]["lr"]``, never ``.get(key, default)``: each default is written once, in
    the root YAML. An ``open_sections`` value (e.g. ``data.scaling``) replaces the default whole, because its keys
    mean different things per mode. Idempotent, so a config that went through it (a run's config.yaml, a
    checkpoint's hyper-parameters) can go through it again.
    """
    check_keys(cfg, config_schema(root, model_keys, open_sections))
    defaults = load_yaml(resolve_config_path(root))
    for dotted in open_sections:
        if get_dotted(cfg, dotted) is not None:
            set_dotted(defaults, dotted, None)
    return _typed(merge(defaults, cfg), defaults)


def _typed(cfg: dict, defaults: dict) -> dict:
    for key, value in cfg.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            _typed(value, default)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            cfg[key] = float(value)
    return cfg


def config_schema(root: str, model_keys: tuple[str, ...] = (), open_sections: tuple[str, ...] = ()) -> dict:
    """The keys a command accepts: its root config (the paper's, which lists every setting with its default),
    plus the model builder's keyword arguments under ``model``; ``open_sections`` are checked by their reader."""
    schema = load_yaml(resolve_config_path(root))
    for key in model_keys:
        schema.setdefault("model", {}).setdefault(key, None)
    for dotted in open_sections:
        set_dotted(schema, dotted, {})
    return schema

