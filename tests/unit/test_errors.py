"""The error hierarchy: one module holds every error class, all rooted in MeshError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import meshcore
from meshcore import errors
from meshcore.errors import (
    ConfigError,
    ConfigProblems,
    ConnectFailed,
    CryptoLibraryMissing,
    DecodeError,
    MeshError,
    MessageTooLarge,
    RelayError,
    RelayNotVerified,
    TransportClosed,
    UnsupportedVersion,
)

INTERNAL = {"meshcore.config._Problem", "meshcore.chain._rpc._Stopped"}
"""Exception classes that never leave their module (a cattrs hook's ValueError, a stop signal
between two RPC requests), caught there."""


def _library_modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.walk_packages(meshcore.__path__, prefix="meshcore.")
    )


def test_every_exception_class_of_the_library_is_defined_in_errors() -> None:
    strays = []
    for name in _library_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == name
                and name != "meshcore.errors"
                and f"{name}.{obj.__qualname__}" not in INTERNAL
            ):
                strays.append(f"{name}.{obj.__qualname__}")
    assert strays == []


def test_the_walk_sees_the_whole_library() -> None:
    modules = _library_modules()
    assert {"meshcore.config", "meshcore._transport", "meshcore.proto.wire"} <= set(modules)
    assert len(modules) > 30


def test_every_error_class_derives_from_mesh_error() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    ]
    assert {cls.__name__ for cls in classes} == set(errors.__all__)
    assert all(issubclass(cls, MeshError) for cls in classes)


def test_specific_conditions_derive_from_their_category() -> None:
    assert issubclass(UnsupportedVersion, DecodeError)
    assert issubclass(MessageTooLarge, DecodeError)
    assert issubclass(ConfigProblems, ConfigError)
    assert issubclass(CryptoLibraryMissing, ConfigError)
    assert issubclass(CryptoLibraryMissing, ImportError)
    assert issubclass(ConnectFailed, TransportClosed)
    assert issubclass(RelayNotVerified, RelayError)


def test_relay_not_verified_keeps_the_url_and_the_expected_id() -> None:
    exc = RelayNotVerified("not that relay", url="ws://192.0.2.1:7443/", expected="abc")
    assert (exc.url, exc.expected, exc.code) == ("ws://192.0.2.1:7443/", "abc", 0)


def test_unsupported_version_names_both_versions_and_the_fix() -> None:
    exc = UnsupportedVersion(7)
    assert exc.version == 7
    assert "version 7" in str(exc) and "speaks 1" in str(exc) and "upgrade" in str(exc)


def test_config_problems_lists_every_problem() -> None:
    exc = ConfigProblems(["a: bad", "b: worse"], what="relay.toml")
    assert exc.problems == ["a: bad", "b: worse"]
    assert str(exc) == "invalid relay.toml (2 problems):\n  a: bad\n  b: worse"


def test_connect_failed_keeps_the_os_error_number() -> None:
    assert ConnectFailed("refused", errno=111).errno == 111
    assert ConnectFailed("timed out").errno is None


def test_public_api_is_pinned() -> None:
    assert sorted(errors.__all__) == [
        "AuthenticationError", "BadWebSocketFrame", "ClosedByPeer", "ConfigError",
        "ConfigProblems", "ConnectFailed",
        "ControlRequestFailed", "CryptoLibraryMissing", "DecodeError", "FrameTooLarge",
        "HandshakeError", "KeyExpired", "MeshError", "MessageTooLarge", "NoUsablePath",
        "ProtocolError", "RegistryError", "RelayError", "RelayNotVerified", "ReplayError",
        "SessionClosed", "TransportClosed", "UnknownReceiverIndex", "UnsupportedVersion",
    ]  # fmt: skip
