"""Loading ml_collections configs from files and applying ``--config.KEY=VALUE`` overrides.

A config file defines ``get_config(arg=None) -> ml_collections.ConfigDict``; the command line names
it as ``--config=configs/x.py[:arg]``. Overrides must name existing keys: an unknown key is an error
(a typo must not silently train the default), and values are converted to the existing key's type.
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections


class ConfigError(ValueError):
    """A problem with the user's configuration or command line; printed as one line."""


class DataError(RuntimeError):
    """A problem with the input data (a damaged record, a data-loader worker that died); printed as one line."""


def load_file(spec: str) -> ml_collections.ConfigDict:
    """Load ``path/to/config.py[:arg]``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass --config=configs/<name>.py")
    module_spec = importlib.util.spec_from_file_location(f"mmjax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg=None) function")
    config = module.get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    return config


def _convert(key: str, text: str, current):
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key {key!r} expects true/false, got {text!r}")
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        try:
            value = float(text) if isinstance(current, float) else int(text)
        except ValueError:
            raise ConfigError(f"config key {key!r} expects a {type(current).__name__}, got {text!r}") from None
        return value
    if isinstance(current, str):
        return text
    try:  # None, tuples, lists: a Python literal, else the raw string
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
        value = (value,)
    return type(current)(value) if isinstance(current, (tuple, list)) else value


def override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set dotted ``key`` of ``config`` from its command-line text, checking that the key exists."""
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
        known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        if part not in known:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(f"unknown config key {key!r}: {where} has keys {', '.join(sorted(known))}")
        if depth < len(parts) - 1:
            node = node[part]
    with node.unlocked():
        node[parts[-1]] = _convert(key, text, node[parts[-1]])


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separate ``--config.KEY=VALUE`` arguments from the rest of ``argv``."""
    rest, overrides = [], []
    for arg in argv:
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                raise ConfigError(f"{arg!r} has no value; write --config.{key}=VALUE")
            overrides.append((key, value))
        else:
            rest.append(arg)
    return rest, overrides

