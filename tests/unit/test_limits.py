"""Relay limits: defaults from the constants, and validators that name the setting."""

from __future__ import annotations

import re

import attrs
import pytest

from meshcore.proto import constants, limits
from meshcore.proto.limits import (
    ONE_OR_MORE,
    POSITIVE,
    RelayLimits,
    above,
    at_least,
    at_most,
    limit,
)


def test_defaults_come_from_the_constants() -> None:
    defaults = RelayLimits()
    assert defaults.max_peers == constants.RELAY_MAX_PEERS
    assert defaults.hello_deadline_s == constants.RELAY_HELLO_DEADLINE_S
    assert defaults.max_message_bytes == constants.MAX_CONTROL_BYTES
    assert defaults.overflow == "drop"


def test_every_limit_says_what_it_bounds() -> None:
    for field in attrs.fields(RelayLimits):
        assert field.metadata["help"], field.name


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"max_peers": 0}, "max_peers must be at least 1, got 0"),
        ({"hello_deadline_s": 0.0}, "hello_deadline_s must be more than 0, got 0.0"),
        ({"max_message_bytes": 1023}, "max_message_bytes must be at least 1024"),
        ({"max_message_bytes": constants.MAX_CONTROL_BYTES + 1}, "must be at most 66048"),
        ({"control_queue_messages": 3}, "control_queue_messages must be at least 4"),
    ],
)
def test_a_limit_out_of_bounds_is_refused_by_name(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        RelayLimits(**changes)  # type: ignore[arg-type]


def test_overflow_is_drop_or_close() -> None:
    assert RelayLimits(overflow="close").overflow == "close"
    with pytest.raises(ValueError, match="overflow"):
        RelayLimits(overflow="ignore")  # type: ignore[arg-type]


def test_validator_factories_serve_other_settings_classes() -> None:
    @attrs.frozen
    class Settings:
        workers: int = limit(2, "worker tasks", ONE_OR_MORE, at_most(8))
        ratio: float = limit(0.5, "a ratio", POSITIVE, at_most(1.0))
        floor: float = limit(1.0, "a floor", at_least(-1.0), above(-2.0))

    assert Settings() == Settings(2, 0.5, 1.0)
    assert attrs.fields(Settings).workers.metadata == {"help": "worker tasks"}
    with pytest.raises(ValueError, match="workers must be at most 8, got 9"):
        Settings(workers=9)
    with pytest.raises(ValueError, match="ratio must be more than 0"):
        Settings(ratio=0.0)
    with pytest.raises(ValueError, match=r"floor must be at least -1\.0"):
        Settings(floor=-1.5)


def test_public_api_is_pinned() -> None:
    assert sorted(limits.__all__) == [
        "ONE_OR_MORE", "POSITIVE", "RelayLimits", "above", "at_least", "at_most", "limit",
    ]  # fmt: skip
