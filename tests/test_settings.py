"""Settings declared once (common/settings.py): flags and TANDEM_* variables come from the declaration."""

import argparse
import dataclasses

import pytest

from cloud.config import CloudConfig
from common import settings
from common.channel import ChannelSettings
from common.errors import InvalidArgument
from edge.config import EdgeConfig
from edge.serve import ServeConfig
from edge.speculation_config import SpeculationConfig

CONFIGS = [CloudConfig, EdgeConfig, ServeConfig, ChannelSettings, SpeculationConfig]


def declared(config_type):
    """(field name, Setting, the nested dataclass holding it) for every setting, nested ones included."""
    for f in dataclasses.fields(config_type):
        if "settings_group" in f.metadata:
            yield from declared(f.metadata["settings_group"][0])
        elif "setting" in f.metadata:
            yield f, f.metadata["setting"], config_type


def parse(config_type, argv):
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, config_type)
    return settings.from_args(config_type, parser.parse_args(argv))


@pytest.fixture(autouse=True)
def no_tandem_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("TANDEM_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("config_type", CONFIGS)
def test_no_flags_give_the_declared_defaults(config_type):
    assert parse(config_type, []) == config_type()


@pytest.mark.parametrize("config_type", CONFIGS)
def test_every_variable_reaches_its_field(config_type, monkeypatch):
    for f, s, owner in declared(config_type):
        if s.env is None:
            continue
        default = f.default
        value = (not default) if isinstance(default, bool) else 3 if isinstance(default, int) else \
            2.5 if isinstance(default, float) else (s.choices[-1] if s.choices else "x.pem")
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        monkeypatch.setenv(f"TANDEM_{s.env}", text)
        parsed = parse(config_type, [])
        holder = parsed if owner is config_type else next(
            getattr(parsed, g.name) for g in dataclasses.fields(config_type)
            if g.metadata.get("settings_group", (None,))[0] is owner)
        assert getattr(holder, f.name) == value, (s.env, text)
        monkeypatch.delenv(f"TANDEM_{s.env}")


@pytest.mark.parametrize("config_type", CONFIGS)
def test_flag_beats_variable(config_type, monkeypatch):
    for f, s, _ in declared(config_type):
        if s.env and type(f.default) is int:
            monkeypatch.setenv(f"TANDEM_{s.env}", "3")
            parser = argparse.ArgumentParser()
            settings.add_arguments(parser, config_type)
            args = parser.parse_args([s.flag_for(f.name), "4"])
            assert getattr(args, s.dest_for(f.name)) == 4
            monkeypatch.delenv(f"TANDEM_{s.env}")


def test_flags_reproduce_a_configuration():
    config = SpeculationConfig(draft_tokens=5, max_in_flight=2, min_confidence=0.25, adaptive=False,
                               min_draft_tokens=3)
    assert parse(SpeculationConfig, settings.to_flags(config)) == config
    assert parse(SpeculationConfig, settings.to_flags(SpeculationConfig())) == SpeculationConfig()


def test_a_bad_variable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TANDEM_MAX_SESSIONS", "many")
    with pytest.raises(InvalidArgument, match="TANDEM_MAX_SESSIONS"):
        parse(CloudConfig, [])


def test_edge_and_health_share_the_connection_flags():
    from cloud import health_probe
    from edge import cli

    def flags(add_parser):
        parser = argparse.ArgumentParser()
        add_parser(parser.add_subparsers())
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return {o for p in sub.choices.values() for a in p._actions for o in a.option_strings}

    shared = {s.flag_for(f.name) for f, s, _ in declared(ChannelSettings)}
    assert shared <= flags(health_probe.add_parser) and shared <= flags(cli.add_parser)
