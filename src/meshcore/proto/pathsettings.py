"""What a session may do about direct paths (`DirectMode`) and the timers of its path policy
(`PathSettings`), checked when made; docs/direct.md lists every setting.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from meshcore.errors import ConfigError
from meshcore.proto import constants as C

__all__ = ["DirectMode", "PathSettings"]


class DirectMode(enum.Enum):
    """Whether a session may leave the relay for a direct connection."""

    AUTO = "auto"
    """Start on the relay, move to a direct path when one validates, fall back when it dies."""
    NEVER = "never"
    """Stay on the relay (no listener, no dials)."""
    ONLY = "only"
    """Application data never crosses the relay: it waits for the direct path, and the
    session ends if no direct path validates or the direct path dies."""

    @classmethod
    def parse(cls, value: DirectMode | str) -> DirectMode:
        """`value` as a DirectMode; raises ConfigError naming the accepted values."""
        if isinstance(value, DirectMode):
            return value
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(
                f"direct={value!r} is not a direct-path mode; use 'auto', 'never' or 'only'"
            ) from None


def _parse_mode(value: DirectMode | str) -> DirectMode:
    return DirectMode.parse(value)


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{attribute.name} must be above 0, got {value}")


def _fraction(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{attribute.name} must be in [0, 1), got {value}")


def _circuits(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= C.MAX_RELAY_CIRCUITS:
        raise ConfigError(f"{attribute.name} must be 1..{C.MAX_RELAY_CIRCUITS}, got {value}")


def _check_settings(inst: PathSettings) -> None:
    if inst.dead_s <= inst.trust_s:
        raise ConfigError(
            f"dead_s ({inst.dead_s:g}) must be longer than trust_s ({inst.trust_s:g}): a path "
            "is first distrusted (traffic on both paths), then declared dead"
        )
    if inst.retry_max_s < inst.retry_s:
        raise ConfigError(
            f"retry_max_s ({inst.retry_max_s:g}) must be at least retry_s ({inst.retry_s:g})"
        )


@attrs.frozen
class PathSettings:
    """Direct-path behaviour of a session; every default comes from `constants`."""

    mode: DirectMode = attrs.field(default=DirectMode.AUTO, converter=_parse_mode)
    race_deadline_s: float = attrs.field(default=C.DIRECT_RACE_DEADLINE_S, validator=_positive)
    """One race (dial every candidate, accept, validate) ends by then."""
    redial_s: float = attrs.field(default=C.DIRECT_REDIAL_S, validator=_positive)
    """A refused dial is tried again this often until the deadline (docs/direct.md)."""
    stagger_s: float = attrs.field(default=C.DIRECT_STAGGER_S, validator=_fraction)
    """Dials to successive candidates start this far apart."""
    retry_s: float = attrs.field(default=C.DIRECT_RETRY_S, validator=_positive)
    """After a failed race or a fallback, direct is tried again after about this long."""
    retry_jitter: float = attrs.field(default=C.DIRECT_RETRY_JITTER, validator=_fraction)
    retry_max_s: float = attrs.field(default=C.DIRECT_RETRY_MAX_S, validator=_positive)
    """The retry interval doubles with each consecutive failure, up to this."""
    stable_s: float = attrs.field(default=C.DIRECT_STABLE_S, validator=_positive)
    """A direct path that lived this long before dying resets the backoff."""
    trust_s: float = attrs.field(default=C.PATH_TRUST_S, validator=_positive)
    """No authenticated frame on the direct path for this long: send on both paths."""
    dead_s: float = attrs.field(default=C.PATH_DEAD_S, validator=_positive)
    """No authenticated frame on the direct path for this long: it is dead, fall back."""
    reopen_retry_s: float = attrs.field(default=C.RELAY_REOPEN_RETRY_S, validator=_positive)
    """A failed re-open of the relay circuit is tried again this often while needed."""
    nominate_margin_s: float = attrs.field(
        default=C.DIRECT_NOMINATE_MARGIN_S, validator=attrs.validators.ge(0)
    )
    """The controlling side nominates nothing this close to the race deadline."""
    relay_circuits: int = attrs.field(default=C.RELAY_CIRCUITS, validator=_circuits)
    """Relay circuits (one per relay) a relayed session keeps: the one carrying it and
    spares, opened by the controlling side on other relays both peers reach (1: no spare)."""
    relay_probe_s: float = attrs.field(default=C.RELAY_PROBE_S, validator=_positive)
    """Each relay circuit of a session with several gets a PATH_CHALLENGE this often."""
    spare_retry_s: float = attrs.field(default=C.RELAY_SPARE_RETRY_S, validator=_positive)
    """A spare relay circuit that could not be opened is tried again after `reopen_retry_s`,
    doubling per failure up to this."""

    def __attrs_post_init__(self) -> None:
        _check_settings(self)
