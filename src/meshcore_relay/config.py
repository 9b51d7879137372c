"""Settings of `meshcore-relay`: one attrs class, loaded from TOML < environment < flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from meshcore import Identity, RelayConfig, RelayLimits, parse_metrics_address
from meshcore.config import load_toml
from meshcore.proto.constants import RELAY_DEFAULT_PORT, RELAY_SHUTDOWN_GRACE_S

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_LISTEN",
    "ENV_PREFIX",
    "RelaySettings",
    "load_relay_settings",
    "parse_listen",
]

ENV_PREFIX = "MESHCORE_RELAY_"
CONFIG_ENV = "MESHCORE_RELAY_CONFIG"
"""Path of a TOML config file, when --config is not given."""
DEFAULT_LISTEN = f"127.0.0.1:{RELAY_DEFAULT_PORT}"
_LISTEN_FORM = 'HOST:PORT, e.g. "0.0.0.0:7443", "[::]:7443" or "localhost:0" (0: any free port)'


def parse_listen(text: str) -> tuple[str, int]:
    """Split "HOST:PORT" or "[IPv6]:PORT" into (host, port); raises ValueError saying why."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"must be {_LISTEN_FORM}; missing ']:PORT' in {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"must be {_LISTEN_FORM}; missing ':PORT' in {text!r}")
        if ":" in host:
            raise ValueError(f"must be {_LISTEN_FORM}; an IPv6 address needs brackets")
    if not host:
        raise ValueError(f"must be {_LISTEN_FORM}; the host is empty in {text!r}")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 0xFFFF:
        raise ValueError(f"must be {_LISTEN_FORM}; port {port_text!r} is not 0..65535")
    return host, int(port_text)


def _check_listen(_inst: object, _attr: object, value: str) -> None:
    parse_listen(value)


def _check_metrics(_inst: object, _attr: object, value: str | None) -> None:
    if value is not None:
        parse_metrics_address(value)


def _check_positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be more than 0, got {value}")


@attrs.frozen
class RelaySettings:
    """Everything `meshcore-relay` can be told; every field has a flag, a variable and a key."""

    listen: str = attrs.field(default=DEFAULT_LISTEN, validator=_check_listen)
    """Address and port to accept peers on."""
    identity: str = ""
    """The relay's identity file (created on the first start); empty: the default path in
    the state directory (meshcore_relay.identity.default_identity_path)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    shutdown_grace_s: float = attrs.field(default=RELAY_SHUTDOWN_GRACE_S, validator=_check_positive)
    """On SIGTERM/SIGINT, how long peers get to take their Close before they are cut off."""
    metrics: str | None = attrs.field(default=None, validator=_check_metrics)
    """Serve Prometheus metrics on PORT or HOST:PORT (a bare port: 127.0.0.1); off if unset."""
    udp: bool = True
    """Forward circuits' sealed datagrams by UDP on the listen port's number (docs/datagram.md)."""
    limits: RelayLimits = attrs.field(factory=RelayLimits)

    def relay_config(self, identity: Identity | None = None) -> RelayConfig:
        """What `serve_relay` needs, with the relay's `identity` (loaded from `identity`)."""
        host, port = parse_listen(self.listen)
        return RelayConfig(
            host=host,
            port=port,
            identity=identity,
            limits=self.limits,
            shutdown_grace_s=self.shutdown_grace_s,
            udp=self.udp,
        )


def load_relay_settings(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, object] | None = None,
    override_names: Mapping[str, str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> RelaySettings:
    """Load settings from `path` (optional), MESHCORE_RELAY_* variables and `overrides`
    (dotted keys such as "limits.max_peers").

    Raises ConfigError naming every bad key, where it came from and what is wrong with it.
    """
    return load_toml(
        RelaySettings,
        path,
        env_prefix=ENV_PREFIX,
        overrides=overrides,
        override_names=override_names,
        environ=environ,
        reserved_env={CONFIG_ENV},
    )
