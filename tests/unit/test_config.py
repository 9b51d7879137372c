"""Settings loading: TOML < environment < flags, strict types, every problem listed by path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.config import env_names, load_toml, parse_text, structure
from meshcore.errors import ConfigError, ConfigProblems


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


@attrs.frozen
class Limits:
    max_peers: int = attrs.field(default=10, validator=_positive)
    max_circuits: int = attrs.field(default=20, validator=_positive)
    rate: float = 1.5


@attrs.frozen
class Settings:
    listen: str = "127.0.0.1:7443"
    log_format: Literal["text", "json"] = "text"
    verbose: bool = False
    allow: list[str] = attrs.field(factory=list)
    relay: str | None = None
    limits: Limits = attrs.field(factory=Limits)


@attrs.frozen
class Required:
    name: str


PREFIX = "TEST_"


def load(
    tmp_path: Path,
    toml: str | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, object] | None = None,
    names: dict[str, str] | None = None,
) -> Settings:
    path = None
    if toml is not None:
        path = tmp_path / "settings.toml"
        path.write_text(toml)
    return load_toml(
        Settings,
        path,
        env_prefix=PREFIX,
        overrides=overrides,
        override_names=names,
        environ=env or {},
    )


def problems(tmp_path: Path, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigProblems) as info:
        load(tmp_path, **kwargs)
    return info.value.problems


# --- merging --------------------------------------------------------------------------------


def test_defaults_apply_when_nothing_is_given(tmp_path: Path) -> None:
    assert load(tmp_path) == Settings()


def test_file_values_are_read(tmp_path: Path) -> None:
    settings = load(tmp_path, 'listen = "0.0.0.0:1"\nallow = ["a"]\n[limits]\nmax_peers = 3\n')
    assert (settings.listen, settings.allow, settings.limits.max_peers) == ("0.0.0.0:1", ["a"], 3)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    settings = load(tmp_path, "[limits]\nmax_peers = 3\n", env={"TEST_LIMITS_MAX_PEERS": "4"})
    assert settings.limits.max_peers == 4


def test_flags_override_the_environment(tmp_path: Path) -> None:
    settings = load(
        tmp_path, env={"TEST_LIMITS_MAX_PEERS": "4"}, overrides={"limits.max_peers": "5"}
    )
    assert settings.limits.max_peers == 5


def test_typed_overrides_are_used_as_given(tmp_path: Path) -> None:
    assert load(tmp_path, overrides={"allow": ["x", "y"]}).allow == ["x", "y"]


def test_environment_names_follow_the_setting_paths() -> None:
    names = env_names(Settings, PREFIX)
    assert names["TEST_LIMITS_MAX_PEERS"] == ("limits", "max_peers")
    assert names["TEST_LOG_FORMAT"] == ("log_format",)


def test_environment_lists_are_comma_separated(tmp_path: Path) -> None:
    assert load(tmp_path, env={"TEST_ALLOW": "a, b,,c"}).allow == ["a", "b", "c"]


@pytest.mark.parametrize(("text", "value"), [("true", True), ("no", False), ("1", True)])
def test_environment_booleans_parse(tmp_path: Path, text: str, value: bool) -> None:
    assert load(tmp_path, env={"TEST_VERBOSE": text}).verbose is value


def test_environment_optional_string_is_read(tmp_path: Path) -> None:
    assert load(tmp_path, env={"TEST_RELAY": "ws://x"}).relay == "ws://x"


# --- problems -------------------------------------------------------------------------------


def test_wrong_type_names_the_path_the_expected_type_and_the_value(tmp_path: Path) -> None:
    assert problems(tmp_path, toml='[limits]\nmax_peers = "ten"\n') == [
        f'limits.max_peers: expected int, got "ten" (in {tmp_path / "settings.toml"})'
    ]


def test_a_float_is_not_silently_truncated_to_an_int(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, toml="[limits]\nmax_peers = 1.5\n")
    assert problem.startswith("limits.max_peers: expected int, got 1.5")


def test_a_boolean_is_not_an_int(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, toml="[limits]\nmax_peers = true\n")
    assert "expected int, got true" in problem


def test_a_number_is_not_a_string(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, toml="listen = 7443\n")
    assert problem.startswith("listen: expected string, got 7443")


def test_a_string_is_not_a_list(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, toml='allow = "abc"\n')
    assert problem.startswith('allow: expected an array, got "abc"')


def test_a_bad_list_item_is_named_by_its_index(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, toml='allow = ["a", 3]\n')
    assert problem.startswith("allow[1]: expected string, got 3")


def test_a_scalar_is_not_a_table(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, toml="limits = 5\n")
    assert problem.startswith("limits: expected a table, got 5")


def test_literal_choices_are_listed(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, toml='log_format = "xml"\n')
    assert problem.startswith('log_format: expected one of "text", "json", got "xml"')


def test_unknown_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, toml="[limits]\nmax_peer = 3\n")
    assert problem.startswith("limits.max_peer: unknown setting (did you mean 'max_peers'?)")


def test_unknown_key_without_a_close_match_lists_the_known_ones(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, toml="[limits]\nzzz = 3\n")
    assert "known here: max_peers, max_circuits, rate" in problem


def test_validator_failures_name_their_paths(tmp_path: Path) -> None:
    found = problems(tmp_path, toml="[limits]\nmax_peers = 0\nmax_circuits = -2\n")
    assert sorted(p.split(" (in")[0] for p in found) == [
        "limits.max_circuits: must be at least 1, got -2",
        "limits.max_peers: must be at least 1, got 0",
    ]


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        toml='log_format = "xml"\nextra = 1\n[limits]\nmax_peers = "ten"\nmax_circuits = 0\n',
        env={"TEST_LIMITS_RATE": "fast", "TEST_LISTN": "x"},
        overrides={"verbose": "maybe"},
    )
    paths = sorted(p.split(":")[0] for p in found)
    assert paths == sorted(
        [
            "TEST_LISTN",
            "extra",
            "limits.max_circuits",
            "limits.max_peers",
            "limits.rate",
            "log_format",
            "verbose",
        ]
    )


def test_problems_name_the_environment_variable_they_came_from(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, env={"TEST_LIMITS_MAX_PEERS": "ten"})
    assert problem == 'limits.max_peers: expected int, got "ten" (from TEST_LIMITS_MAX_PEERS)'


def test_problems_name_the_flag_they_came_from(tmp_path: Path) -> None:
    (problem,) = problems(
        tmp_path,
        overrides={"limits.max_peers": "ten"},
        names={"limits.max_peers": "--max-peers"},
    )
    assert problem == 'limits.max_peers: expected int, got "ten" (from --max-peers)'


def test_unknown_environment_variable_with_the_prefix_is_refused(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, env={"TEST_LIMITS_MAX_PEER": "3"})
    assert problem.startswith("TEST_LIMITS_MAX_PEER: unknown environment variable")
    assert "did you mean TEST_LIMITS_MAX_PEERS?" in problem


def test_reserved_environment_variables_are_left_to_the_caller(tmp_path: Path) -> None:
    settings = load_toml(
        Settings,
        None,
        env_prefix=PREFIX,
        environ={"TEST_CONFIG": "x.toml"},
        reserved_env={"TEST_CONFIG"},
    )
    assert settings == Settings()


def test_missing_required_setting_is_named() -> None:
    with pytest.raises(ConfigProblems) as info:
        structure(Required, {})
    assert info.value.problems == ["name: required setting is missing; add it"]


def test_config_problems_is_a_config_error_listing_each_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid settings \(2 problems\):\n  "):
        load(tmp_path, toml="a = 1\nb = 2\n")


# --- files ----------------------------------------------------------------------------------


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; check the path, or leave out --config"):
        load_toml(Settings, tmp_path / "nope.toml", env_prefix=PREFIX, environ={})


def test_bad_toml_reports_the_line_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 3"):
        load(tmp_path, toml='listen = "a"\n\nallow = ]\nverbose = true\n')


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_toml(Settings, tmp_path, env_prefix=PREFIX, environ={})


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_bytes(b'listen = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_toml(Settings, path, env_prefix=PREFIX, environ={})


# --- for all inputs -------------------------------------------------------------------------

toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["listen", "allow", "limits", "verbose", "x"]), toml_values))
def test_any_data_gives_settings_or_config_problems(data: dict[str, object]) -> None:
    try:
        settings = structure(Settings, data)
    except ConfigProblems as exc:
        assert exc.problems and all(": " in p for p in exc.problems)
    else:
        assert isinstance(settings, Settings)


@given(st.integers())
def test_integer_text_parses_to_the_integer(n: int) -> None:
    assert parse_text(str(n), int) == n


def _as_int(text: str) -> int | None:
    try:
        return int(text.strip().replace("_", ""), 10)
    except ValueError:
        return None


@given(st.text(max_size=12).filter(lambda t: _as_int(t) is None))
def test_non_integer_environment_text_is_reported_verbatim(text: str) -> None:
    with pytest.raises(ConfigProblems) as info:
        load_toml(Settings, None, env_prefix=PREFIX, environ={"TEST_LIMITS_MAX_PEERS": text})
    assert info.value.problems == [
        f"limits.max_peers: expected int, got {json.dumps(text)} (from TEST_LIMITS_MAX_PEERS)"
    ]


def test_public_api_is_pinned() -> None:
    from meshcore import config

    assert sorted(config.__all__) == [
        "env_names",
        "load_toml",
        "make_converter",
        "parse_text",
        "structure",
    ]
