"""One declaration per setting: type, default, description, flag and environment variable.

A configuration is a dataclass whose fields are declared with `setting(...)` (or `group(...)`
for a nested configuration); `add_arguments` generates the command-line flags from those
declarations and `from_args` builds the dataclass back from the parsed flags. A numeric
setting may declare its range (`low`, `high`, `low_open`); `check_ranges` checks them all with
common.checks.check_range, so a bad value is refused the same way wherever it is declared. A flag's default
is its TANDEM_* environment variable when that is set, else the field's default.

Why a small table of our own rather than pydantic-settings (which llama-cpp-python's server
uses): the thin client (`pip install tandem`, no extras) promises to need only gRPC, protobuf
and numpy, and `tandem health` / `tandem generate --mode cloud` read these settings; pydantic
would add a compiled dependency (pydantic-core) to every install for what is here ~100 lines.
argparse stays the parser, so `--help`, argument groups, choices and `%(default)s` work as
before, and every flag and variable keeps its name.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from common.checks import check_range
from common.errors import InvalidArgument

ENV_PREFIX = "TANDEM_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    help: str
    flag: str | None = None  # default: --field-name
    env: str | None = None  # the variable's name without TANDEM_ (None: no variable)
    type: type | None = None  # default: the default's type (str when the default is None)
    choices: tuple | None = None
    metavar: str | None = None
    dest: str | None = None  # the argparse attribute; default: the flag's name ("--no-x" -> x)
    negatable: bool = False  # a bool with --x / --no-x (argparse.BooleanOptionalAction)
    group: str | None = None  # the --help section; None: the configuration's own
    low: float | None = None  # the range check_ranges enforces; None: unbounded on that side
    high: float | None = None
    low_open: bool = False  # low itself is out of range

    def flag_for(self, field_name: str) -> str:
        return self.flag or "--" + field_name.replace("_", "-")

    def dest_for(self, field_name: str) -> str:
        if self.dest:
            return self.dest
        name = self.flag_for(field_name).lstrip("-")
        return (name[3:] if name.startswith("no-") else name).replace("-", "_")


def setting(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, repr: bool = True,
            **declaration) -> Any:
    """A dataclass field that is also a command-line flag (see Setting for the keywords)."""
    return dataclasses.field(default=default, default_factory=default_factory, repr=repr,
                             metadata={"setting": Setting(help, **declaration)})


def group(config_type: type, title: str | None = None) -> Any:
    """A dataclass field holding a nested configuration whose settings are flags too."""
    return dataclasses.field(default_factory=config_type, metadata={"settings_group": (config_type, title)})


def env_value(name: str, default: Any, kind: type | None = None) -> Any:
    """$TANDEM_<name> converted to `kind` (default: the default's type), or `default` when unset."""
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None:
        return default
    kind = kind or (type(default) if default is not None else str)
    if kind is bool:
        value = raw.strip().lower()
        return True if value in _TRUE else False if value in _FALSE else default
    try:
        return kind(raw)
    except ValueError:
        raise InvalidArgument(f"${ENV_PREFIX}{name}={raw!r} is not a valid {kind.__name__}") from None


def add_arguments(parser: argparse.ArgumentParser, config_type: type, title: str | None = None,
                  exclude: tuple[str, ...] = (), _sections: dict | None = None) -> None:
    """Adds a flag for every setting of `config_type` (nested groups included), under `title`."""
    sections = {} if _sections is None else _sections

    def section(name: str | None):
        name = name or title
        if name not in sections:
            sections[name] = parser.add_argument_group(name) if name else parser
        return sections[name]

    for f in dataclasses.fields(config_type):
        if "settings_group" in f.metadata:
            nested_type, nested_title = f.metadata["settings_group"]
            add_arguments(parser, nested_type, nested_title or title, exclude, sections)
            continue
        declared: Setting | None = f.metadata.get("setting")
        if declared is None or f.name in exclude:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        section(declared.group).add_argument(declared.flag_for(f.name), **_argparse_keywords(f.name, declared, default))


def _argparse_keywords(name: str, s: Setting, default: Any) -> dict:
    kind = s.type or (type(default) if default is not None else str)
    switch = "" if kind is not bool or s.negatable else "=0" if s.flag_for(name).startswith("--no-") else "=1"
    help_text = s.help + (f" [{ENV_PREFIX}{s.env}{switch}]" if s.env else "")
    value = env_value(s.env, default, kind) if s.env else default
    keywords = dict(dest=s.dest_for(name), default=value, help=help_text)
    if kind is bool:
        if s.negatable:
            keywords["action"] = argparse.BooleanOptionalAction
        else:
            keywords["action"] = "store_false" if s.flag_for(name).startswith("--no-") else "store_true"
        return keywords
    keywords.update(type=kind, choices=s.choices, metavar=s.metavar)
    return {k: v for k, v in keywords.items() if v is not None or k == "default"}


def from_args(config_type: type, args: argparse.Namespace, **overrides) -> Any:
    """`config_type` built from parsed flags (settings absent from `args` keep their defaults)."""
    values = {}
    for f in dataclasses.fields(config_type):
        if "settings_group" in f.metadata:
            values[f.name] = from_args(f.metadata["settings_group"][0], args)
        elif "setting" in f.metadata:
            dest = f.metadata["setting"].dest_for(f.name)
            if hasattr(args, dest):
                values[f.name] = getattr(args, dest)
    return config_type(**{**values, **overrides})


def to_flags(config: Any) -> list[str]:
    """The flags that reproduce `config`'s settings (to hand a configuration to another process)."""
    flags = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "settings_group" in f.metadata:
            flags += to_flags(value)
            continue
        declared: Setting | None = f.metadata.get("setting")
        if declared is None or value is None:
            continue
        flag = declared.flag_for(f.name)
        if isinstance(value, bool):
            if declared.negatable:
                flags.append(flag if value else "--no-" + flag[2:])
            elif value != flag.startswith("--no-"):
                flags.append(flag)
        else:
            flags.append(f"{flag}={value}")
    return flags


def read_config_file(path: str | Path, what: str) -> bytes:
    """A file named by a flag (a certificate, key or token list), or a clear error naming the flag."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None


def read_tokens(path: str | Path, what: str) -> list[str]:
    """The bearer tokens of a token file: one per line; blank lines and `#` comments are skipped."""
    text = read_config_file(path, what).decode("utf-8", errors="strict")
    tokens = [line.strip() for line in text.splitlines()]
    return [t for t in tokens if t and not t.startswith("#")]


def check_ranges(config: Any) -> None:
    """Refuses (InvalidArgument, naming the flag) any setting of `config` outside its declared
    range; nested configurations included."""
    for f in dataclasses.fields(config):
        if "settings_group" in f.metadata:
            check_ranges(getattr(config, f.name))
            continue
        declared: Setting | None = f.metadata.get("setting")
        if declared is not None and (declared.low is not None or declared.high is not None):
            check_range(getattr(config, f.name), declared.flag_for(f.name), declared.low, declared.high,
                        declared.low_open)
