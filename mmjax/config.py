"""Loading ml_collections configs from files and applying ``--config.KEY=VALUE`` overrides.

A config file defines ``get_config(arg=None) -> ml_collections.ConfigDict``; the command line names
it as ``--config=configs/x.py[:arg]``; ``configs/common.py`` parses ``arg`` and holds the pieces the configs
share, read with ``import_beside``. Overrides must name existing keys: an unknown key is an error
(a typo must not silently train the default), and values are converted to the existing key's type.
``as_overrides`` writes a config back as ``KEY=VALUE`` lines; ``describe`` reads a config file's purpose
and arguments from its docstring (``python -m mmjax.train --help`` lists them).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re

import ml_collections


class ConfigError(ValueError):
    """A problem with the user's configuration or command line; printed as one line."""


class DataError(RuntimeError):
    """A problem with the input data (a damaged record, a data-loader worker that died); printed as one
    line."""


def _import_path(path: str):
    """Run the Python file ``path`` as a module of its own (not added to ``sys.modules``)."""
    module_spec = importlib.util.spec_from_file_location(f"mmjax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def import_beside(config_file: str, name: str):
    """Import the file ``name`` from the directory of ``config_file`` (a config's ``__file__``). Config files
    are loaded by path, not as a package, so this is how a config reads the shared pieces beside it:
    ``common = config_lib.import_beside(__file__, "common.py")``."""
    return _import_path(os.path.join(os.path.dirname(os.path.abspath(config_file)), name))


def load_file(spec: str) -> ml_collections.ConfigDict:
    """Load ``path/to/config.py[:arg]``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass --config=configs/<name>.py")
    module = _import_path(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg=None) function")
    try:
        config = module.get_config(arg or None)
    except ValueError as e:  # a config's check of its argument (configs/common.py's parse_arg), one line
        raise ConfigError(str(e)) from e
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
            raise ConfigError(
                f"config key {key!r} expects a {type(current).__name__}, got {text!r}"
            ) from None
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
            key, eq, value = arg[len("--config.") :].partition("=")
            if not eq:
                raise ConfigError(f"{arg!r} has no value; write --config.{key}=VALUE")
            overrides.append((key, value))
        else:
            rest.append(arg)
    return rest, overrides


def as_overrides(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """One ``KEY=VALUE`` line per leaf of ``config`` (dotted keys, sorted), written as
    ``--config.KEY=VALUE`` takes it back: strings as they are, everything else as a Python literal."""
    lines = []
    for key, value in sorted(config.items()):
        if isinstance(value, ml_collections.ConfigDict):
            lines += as_overrides(value, f"{prefix}{key}.") if len(value) else [f"{prefix}{key}={{}}"]
        else:
            lines.append(f"{prefix}{key}={value if isinstance(value, str) else repr(value)}")
    return lines


def describe(path: str, source: str | None = None) -> tuple[str, list[str]]:
    """``(purpose, arguments)`` of config file ``path``, read from its module docstring without running it.

    ``purpose``: the docstring's first sentence, up to a colon if it has one (what follows elaborates);
    ``arguments``: the ``:ARG`` of each ``--config=...NAME.py:ARG`` in the docstring's example commands,
    in order, without repeats. ``source``: the file's text, where the caller has read it already."""
    if source is None:
        with open(path) as f:
            source = f.read()
    docstring = ast.get_docstring(ast.parse(source, path)) or ""
    first = " ".join(docstring.split("\n\n")[0].split())
    purpose = re.split(r"(?<=\.)\s|:\s", first, maxsplit=1)[0]
    name = re.escape(os.path.basename(path))
    found = re.findall(rf"--config=\S*{name}(:\S+)", docstring)
    return purpose, list(dict.fromkeys(found))
