"""meshcore: post-quantum, peer-to-peer encrypted sessions that meet through a relay.

The relay is a matchmaker, not a middleman: peers authenticate each other end to end with a
hybrid X25519 + ML-KEM-768 handshake, then move their session onto a direct path.

The objects, each living inside the `async with` (or nursery) that made it:

- `open_transport(url)` / `serve_transport(...)`: message connections (`Transport`);
- `open_session(transport, result)` after `handshake_as_initiator` / `_responder`: a
  `Session`, an encrypted, ordered, exactly-once `trio.abc.Channel[bytes]`;
- `open_migrator(session, rendezvous)`: a `Migrator` that moves the session between the
  relay and a direct connection;
- `connect` / `serve` / `open_peer_session`: all of that through a relay, in one call;
- `open_relay_client` (`RelayClient`), `serve_relay(config)`: both sides of the relay;
- `open_relay_network(relays)` (`RelayNetwork`) over a list or an `open_registry(source)`
  (a `StaticSource`, `FileSource` or the on-chain `ChainSource`):
  several relays, rendezvous by hashing, sessions that move between relays;
- `run_tunnel(fd, vnet_header_bytes, TunnelConfig(...))`: the layer-2 TAP mesh;
- `serve_metrics(address, [RelayCollector(server)])` or `[PeerCollector(registry)]`:
  Prometheus metrics (the `metrics` extra).

`meshcore.testing` is the test kit (strategies, in-memory and lossy networks, machines).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from meshcore.errors import (
    AuthenticationError,
    ClosedByPeer,
    ConfigError,
    ConnectFailed,
    ControlRequestFailed,
    DecodeError,
    HandshakeError,
    MeshError,
    NoUsablePath,
    ProtocolError,
    RegistryError,
    RelayError,
    RelayNotVerified,
    ReplayError,
    SessionClosed,
    TransportClosed,
)
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.paths import DirectMode, LinkKind, PathSettings, PathStats, RelayState
from meshcore.proto.session import SessionSettings, SessionStats

if TYPE_CHECKING:
    from meshcore._api import connect, open_meeting, open_peer_session, serve
    from meshcore._chainsource import ChainSource
    from meshcore._client import Invitation, Pairing, RelayClient, open_relay_client
    from meshcore._control import (
        SessionRegistry,
        control_request,
        default_control_path,
        serve_control,
    )
    from meshcore._counters import SessionCounters
    from meshcore._datagramport import DatagramPort, open_datagram_port
    from meshcore._direct import FramedTransport, SessionRoutes, overlay_interface
    from meshcore._handshake import handshake_as_initiator, handshake_as_responder
    from meshcore._metrics import MetricsServer, parse_metrics_address, serve_metrics
    from meshcore._metrics_peer import PeerCollector
    from meshcore._metrics_relay import RelayCollector
    from meshcore._migrator import Migrator, Rendezvous, open_migrator
    from meshcore._netcheck import netcheck
    from meshcore._network import RelayConnectionStatus, RelayNetwork, open_relay_network
    from meshcore._nursery import open_hidden_nursery
    from meshcore._pipe import FileReceiveStream, FileSendStream, pipe_command, pipe_session
    from meshcore._registry import (
        FileSource,
        Registry,
        RegistryListing,
        RegistrySource,
        RelayListCache,
        StaticSource,
        open_registry,
    )
    from meshcore._relay import RelayConfig, RelayCounters, RelayServer, RelayStats, serve_relay
    from meshcore._session import Session, SessionStatus, open_session
    from meshcore._tap import TapDevice, check_tap_access, open_configured_tap, validate_device_name
    from meshcore._transport import (
        Transport,
        open_transport,
        serve_transport,
        wrap_stream_transport,
    )
    from meshcore._tunnel import FramePump, LinkStats, TunnelConfig, run_tunnel
    from meshcore.proto.datagram import DatagramSettings
    from meshcore.proto.handshake import HandshakeResult, Responder
    from meshcore.proto.limits import RelayLimits
    from meshcore.proto.netcheck import NatMapping, NetcheckReport, RelayProbe
    from meshcore.proto.relaylist import RelayEntry, parse_relay_spec
    from meshcore.proto.rendezvous import rendezvous_relays

__version__ = "0.1.0"

# The trio-based parts (and the larger sans-IO modules) load on first use, so that
# `import meshcore.proto` (the sans-IO cores) never imports trio or sockets.
_LAZY = {
    # transports
    "FramedTransport": "meshcore._direct",
    "Transport": "meshcore._transport",
    "open_transport": "meshcore._transport",
    "serve_transport": "meshcore._transport",
    "wrap_stream_transport": "meshcore._transport",
    # sessions
    "HandshakeResult": "meshcore.proto.handshake",
    "Responder": "meshcore.proto.handshake",
    "Session": "meshcore._session",
    "SessionStatus": "meshcore._session",
    "handshake_as_initiator": "meshcore._handshake",
    "handshake_as_responder": "meshcore._handshake",
    "open_session": "meshcore._session",
    # moving sessions between paths
    "Migrator": "meshcore._migrator",
    "Rendezvous": "meshcore._migrator",
    "SessionRoutes": "meshcore._direct",
    "open_migrator": "meshcore._migrator",
    # datagrams beside a direct path
    "DatagramPort": "meshcore._datagramport",
    "DatagramSettings": "meshcore.proto.datagram",
    "open_datagram_port": "meshcore._datagramport",
    # through a relay
    "Invitation": "meshcore._client",
    "Pairing": "meshcore._client",
    "RelayClient": "meshcore._client",
    "connect": "meshcore._api",
    "open_meeting": "meshcore._api",
    "open_peer_session": "meshcore._api",
    "open_relay_client": "meshcore._client",
    "serve": "meshcore._api",
    # several relays: the list, its sources, the network of connections
    "ChainSource": "meshcore._chainsource",
    "FileSource": "meshcore._registry",
    "Registry": "meshcore._registry",
    "RegistryListing": "meshcore._registry",
    "RegistrySource": "meshcore._registry",
    "RelayConnectionStatus": "meshcore._network",
    "RelayEntry": "meshcore.proto.relaylist",
    "RelayListCache": "meshcore._registry",
    "RelayNetwork": "meshcore._network",
    "StaticSource": "meshcore._registry",
    "open_registry": "meshcore._registry",
    "open_relay_network": "meshcore._network",
    "parse_relay_spec": "meshcore.proto.relaylist",
    "rendezvous_relays": "meshcore.proto.rendezvous",
    # the relay
    "RelayConfig": "meshcore._relay",
    "RelayLimits": "meshcore.proto.limits",
    "RelayServer": "meshcore._relay",
    "RelayStats": "meshcore._relay",
    "serve_relay": "meshcore._relay",
    # the TAP mesh
    "FramePump": "meshcore._tunnel",
    "LinkStats": "meshcore._tunnel",
    "TapDevice": "meshcore._tap",
    "TunnelConfig": "meshcore._tunnel",
    "check_tap_access": "meshcore._tap",
    "open_configured_tap": "meshcore._tap",
    "overlay_interface": "meshcore._direct",
    "run_tunnel": "meshcore._tunnel",
    "validate_device_name": "meshcore._tap",
    # a running peer: its control socket, sessions spliced to streams
    "FileReceiveStream": "meshcore._pipe",
    "FileSendStream": "meshcore._pipe",
    "SessionRegistry": "meshcore._control",
    "control_request": "meshcore._control",
    "default_control_path": "meshcore._control",
    "pipe_command": "meshcore._pipe",
    "pipe_session": "meshcore._pipe",
    "serve_control": "meshcore._control",
    # structured concurrency
    "open_hidden_nursery": "meshcore._nursery",
    # observability: counters, Prometheus metrics (the metrics extra), netcheck
    "MetricsServer": "meshcore._metrics",
    "PeerCollector": "meshcore._metrics_peer",
    "RelayCollector": "meshcore._metrics_relay",
    "RelayCounters": "meshcore._relay",
    "SessionCounters": "meshcore._counters",
    "parse_metrics_address": "meshcore._metrics",
    "serve_metrics": "meshcore._metrics",
    "NatMapping": "meshcore.proto.netcheck",
    "NetcheckReport": "meshcore.proto.netcheck",
    "RelayProbe": "meshcore.proto.netcheck",
    "netcheck": "meshcore._netcheck",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AuthenticationError",
    "ChainSource",
    "ClosedByPeer",
    "ConfigError",
    "ConnectFailed",
    "ControlRequestFailed",
    "DatagramPort",
    "DatagramSettings",
    "DecodeError",
    "DirectMode",
    "Endpoint",
    "FileReceiveStream",
    "FileSendStream",
    "FileSource",
    "FramePump",
    "FramedTransport",
    "HandshakeError",
    "HandshakeResult",
    "Identity",
    "Invitation",
    "LinkKind",
    "LinkStats",
    "MeshError",
    "MetricsServer",
    "Migrator",
    "NatMapping",
    "NetcheckReport",
    "NoUsablePath",
    "Pairing",
    "PathSettings",
    "PathStats",
    "PeerCollector",
    "PeerId",
    "ProtocolError",
    "PublicBundle",
    "Registry",
    "RegistryError",
    "RegistryListing",
    "RegistrySource",
    "RelayClient",
    "RelayCollector",
    "RelayConfig",
    "RelayConnectionStatus",
    "RelayCounters",
    "RelayEntry",
    "RelayError",
    "RelayLimits",
    "RelayListCache",
    "RelayNetwork",
    "RelayNotVerified",
    "RelayProbe",
    "RelayServer",
    "RelayState",
    "RelayStats",
    "Rendezvous",
    "ReplayError",
    "Responder",
    "Session",
    "SessionClosed",
    "SessionCounters",
    "SessionRegistry",
    "SessionRoutes",
    "SessionSettings",
    "SessionStats",
    "SessionStatus",
    "StaticSource",
    "TapDevice",
    "Transport",
    "TransportClosed",
    "TunnelConfig",
    "__version__",
    "check_tap_access",
    "connect",
    "control_request",
    "default_control_path",
    "handshake_as_initiator",
    "handshake_as_responder",
    "netcheck",
    "open_configured_tap",
    "open_datagram_port",
    "open_hidden_nursery",
    "open_meeting",
    "open_migrator",
    "open_peer_session",
    "open_registry",
    "open_relay_client",
    "open_relay_network",
    "open_session",
    "open_transport",
    "overlay_interface",
    "parse_metrics_address",
    "parse_relay_spec",
    "pipe_command",
    "pipe_session",
    "rendezvous_relays",
    "run_tunnel",
    "serve",
    "serve_control",
    "serve_metrics",
    "serve_relay",
    "serve_transport",
    "validate_device_name",
    "wrap_stream_transport",
]
