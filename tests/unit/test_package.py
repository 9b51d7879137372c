"""Package-level promises: the public API, the sans-IO boundary, the test kit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meshcore
from meshcore.proto import inner, wire
from meshcore.proto.framing import FrameHeader, decode_frame_header_untrusted
from meshcore.proto.handshake import HandshakeConfirm, HandshakeInit, HandshakeResponse
from meshcore.proto.resume import (
    Resume,
    ResumeAck,
    decode_resume_ack_untrusted,
    decode_resume_untrusted,
)
from meshcore.testing import strategies as mst


def test_every_error_derives_from_mesh_error() -> None:
    for name in meshcore.__all__:
        obj = getattr(meshcore, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, meshcore.MeshError), name


def test_sans_io_core_imports_no_io_library() -> None:
    code = (
        "import sys, meshcore.proto, pkgutil, importlib\n"
        "for m in pkgutil.iter_modules(meshcore.proto.__path__):\n"
        "    importlib.import_module('meshcore.proto.' + m.name)\n"
        "bad = [m for m in ('trio', 'trio_websocket', 'socket', 'pyroute2') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


MESSAGE_CLASSES = [
    wire.Hello, wire.Challenge, wire.Auth, wire.Registered, wire.Connect, wire.Invite,
    wire.Accept, wire.Reject, wire.Paired, wire.CircuitOpen, wire.CircuitClose, wire.Relayed,
    wire.Ping, wire.Pong, wire.Error, wire.Close, inner.Data, inner.Keepalive, inner.Ack,
    inner.PathChallenge, inner.PathResponse, inner.Endpoints, inner.RekeyFragment, inner.Close,
    HandshakeInit, HandshakeResponse, HandshakeConfirm, Resume, ResumeAck, FrameHeader,
]  # fmt: skip


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: f"{c.__module__}.{c.__name__}")
@settings(max_examples=10, suppress_health_check=[HealthCheck.large_base_example])
@given(data=st.data())
def test_from_type_works_for_every_message_class(cls: type, data: st.DataObject) -> None:
    assert isinstance(data.draw(st.from_type(cls)), cls)


@given(mst.resumes(), mst.resume_acks(), mst.frame_headers())
def test_resume_and_frame_header_strategies_round_trip(
    resume: Resume, ack: ResumeAck, header: FrameHeader
) -> None:
    assert decode_resume_untrusted(resume.encode()) == resume
    assert decode_resume_ack_untrusted(ack.encode()) == ack
    assert decode_frame_header_untrusted(header.encode() + bytes(16)) == header
