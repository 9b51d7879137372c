"""The public API is pinned: exactly these names, each resolving, and importing the package
loads no more than it promises (trio-free `meshcore`, hypothesis-free `meshcore.testing`)."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import meshcore
import meshcore.testing

MESHCORE = [
    # errors
    "AuthenticationError",
    "ClosedByPeer",
    "ConfigError",
    "ConnectFailed",
    "ControlRequestFailed",
    "DecodeError",
    "HandshakeError",
    "MeshError",
    "NoUsablePath",
    "ProtocolError",
    "RelayError",
    "RelayNotVerified",
    "ReplayError",
    "SessionClosed",
    "TransportClosed",
    # identities, addresses, settings and snapshots
    "DirectMode",
    "Endpoint",
    "HandshakeResult",
    "Identity",
    "LinkKind",
    "PathSettings",
    "PathStats",
    "PeerId",
    "PublicBundle",
    "RelayState",
    "Responder",
    "SessionSettings",
    "SessionStats",
    "SessionStatus",
    # transports
    "FramedTransport",
    "Transport",
    "open_transport",
    "serve_transport",
    "wrap_stream_transport",
    # sessions and their paths
    "Migrator",
    "Rendezvous",
    "Session",
    "SessionRoutes",
    "handshake_as_initiator",
    "handshake_as_responder",
    "open_migrator",
    "open_session",
    # datagrams beside a direct path
    "DatagramPort",
    "DatagramSettings",
    "open_datagram_port",
    # through a relay, and the relay
    "Invitation",
    "Pairing",
    "RegistryError",
    "RelayClient",
    "RelayConfig",
    "RelayLimits",
    "RelayServer",
    "RelayStats",
    "connect",
    "open_meeting",
    "open_peer_session",
    "open_relay_client",
    "serve",
    "serve_relay",
    # several relays
    "ChainSource",
    "FileSource",
    "Registry",
    "RegistryListing",
    "RegistrySource",
    "RelayConnectionStatus",
    "RelayEntry",
    "RelayListCache",
    "RelayNetwork",
    "StaticSource",
    "open_registry",
    "open_relay_network",
    "parse_relay_spec",
    "rendezvous_relays",
    # the TAP mesh
    "FramePump",
    "LinkStats",
    "TapDevice",
    "TunnelConfig",
    "check_tap_access",
    "open_configured_tap",
    "overlay_interface",
    "run_tunnel",
    "validate_device_name",
    # a running peer
    "FileReceiveStream",
    "FileSendStream",
    "SessionRegistry",
    "control_request",
    "default_control_path",
    "pipe_command",
    "pipe_session",
    "serve_control",
    # observability
    "MetricsServer",
    "PeerCollector",
    "RelayCollector",
    "RelayCounters",
    "SessionCounters",
    "NatMapping",
    "NetcheckReport",
    "RelayProbe",
    "netcheck",
    "parse_metrics_address",
    "serve_metrics",
    # structured concurrency, version
    "open_hidden_nursery",
    "__version__",
]

TESTING = [
    "Direction",
    "LossyNetwork",
    "MemoryTransport",
    "MessageFilter",
    "SessionCoreMachine",
    "SessionPathsMachine",
    "SessionRelaysMachine",
    "memory_transport_pair",
    "open_session_pair",
    "strategies",
]


def test_meshcore_exports_exactly_the_pinned_names() -> None:
    assert sorted(meshcore.__all__) == sorted(MESHCORE)
    assert len(set(meshcore.__all__)) == len(meshcore.__all__)


def test_meshcore_testing_exports_exactly_the_pinned_names() -> None:
    assert sorted(meshcore.testing.__all__) == sorted(TESTING)


@pytest.mark.parametrize("name", MESHCORE)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(meshcore, name)
    assert value is not None
    if inspect.isclass(value) or inspect.isfunction(value):
        assert not value.__name__.startswith("_"), name
        assert value.__doc__, f"{name} has no docstring"


@pytest.mark.parametrize("name", TESTING)
def test_every_test_kit_name_resolves(name: str) -> None:
    assert getattr(meshcore.testing, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        meshcore.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError, match="no_such_thing"):
        meshcore.testing.no_such_thing  # noqa: B018


NOT_YET_DOCUMENTED: set[str] = set()
"""Public trio APIs whose docstrings do not state their cancellation behaviour yet."""


def _is_trio_api(value: object) -> bool:
    return inspect.iscoroutinefunction(value) or (
        inspect.isfunction(value) and "AsyncIterator" in str(value.__annotations__)
    )


def _trio_apis() -> list[tuple[str, str]]:
    """(name, docstring to check) of every public coroutine function, async context manager
    and public async method of a public class (a method may rely on its class's docstring)."""
    found = []
    for name in MESHCORE:
        value = getattr(meshcore, name)
        if name in NOT_YET_DOCUMENTED:
            continue
        if _is_trio_api(value):
            found.append((name, inspect.getdoc(value) or ""))
        elif inspect.isclass(value):
            for attr in dir(value):
                method = getattr(value, attr)
                if not attr.startswith("_") and _is_trio_api(method):
                    doc = (inspect.getdoc(method) or "") + (inspect.getdoc(value) or "")
                    found.append((f"{name}.{attr}", doc))
    return found


def test_public_trio_apis_say_how_they_behave_on_cancellation() -> None:
    apis = _trio_apis()
    assert len(apis) > 40  # the search finds them
    silent = [name for name, doc in apis if "cancel" not in doc.lower()]
    assert silent == []


def _imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_meshcore_imports_no_trio() -> None:
    loaded = _imported_after("import meshcore")
    assert not {"trio", "trio_websocket", "socket"} & loaded


def test_importing_the_test_kit_imports_neither_hypothesis_nor_trio() -> None:
    loaded = _imported_after("import meshcore.testing")
    assert not {"hypothesis", "trio"} & loaded


ROOT = Path(__file__).resolve().parents[2]
USERS = ("src/meshcore_peer", "src/meshcore_relay", "examples")
PRIVATE = re.compile(r"\bmeshcore\._[a-z]")


def test_the_executables_and_examples_use_only_the_public_api() -> None:
    files = [path for folder in USERS for path in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) >= 8  # the search finds them
    private = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert private == []


def test_the_private_module_check_would_see_an_import() -> None:
    assert PRIVATE.search("from meshcore._session import Session")
    assert PRIVATE.search("import meshcore._relay as relay")
    assert not PRIVATE.search("version=meshcore.__version__")
