"""Fuzzing an application protocol built on meshcore, the way a user would test their own.

The protocol: a tiny key-value service. A request is `op: u8 | key_len: u8 | key | value`
(op 1 set, 2 get, 3 delete); the answer is `status: u8 | value` (0 found or done, 1 missing,
2 bad request). It runs over a real `Session` on an in-memory network that loses,
duplicates and reorders frames (`meshcore.testing.LossyNetwork`); hypothesis chooses the
requests and, through its random source, what the network does. The answers must match a
plain dict, and the decoder must survive any near-valid input (`mutated_encodings`).

    pytest examples/test_app_protocol.py
"""

from __future__ import annotations

import enum
import random
import struct

import attrs
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import meshcore
from meshcore.testing import LossyNetwork, open_session_pair
from meshcore.testing import strategies as mst

# --- the application protocol -----------------------------------------------------------------


class Op(enum.IntEnum):
    SET = 1
    GET = 2
    DELETE = 3


class Status(enum.IntEnum):
    OK = 0
    MISSING = 1
    BAD_REQUEST = 2


class BadRequest(ValueError):
    """The bytes are not a request."""


@attrs.frozen
class Request:
    op: Op
    key: bytes
    value: bytes = b""


_HEAD = struct.Struct(">BB")


def encode_request(request: Request) -> bytes:
    return _HEAD.pack(request.op, len(request.key)) + request.key + request.value


def decode_request_untrusted(data: bytes) -> Request:
    """The request in `data`, or BadRequest; nothing else."""
    if len(data) < _HEAD.size:
        raise BadRequest("shorter than a request header")
    op, key_len = _HEAD.unpack_from(data)
    if op not in Op.__members__.values():
        raise BadRequest(f"unknown op {op}")
    key = data[_HEAD.size : _HEAD.size + key_len]
    if len(key) != key_len:
        raise BadRequest("truncated key")
    value = data[_HEAD.size + key_len :]
    if op != Op.SET and value:
        raise BadRequest("only set carries a value")
    return Request(Op(op), key, value)


async def serve_store(session: meshcore.Session) -> None:
    """Answer requests until the peer closes the session."""
    store: dict[bytes, bytes] = {}
    async for message in session:
        try:
            request = decode_request_untrusted(message)
        except BadRequest:
            await session.send(bytes([Status.BAD_REQUEST]))
            continue
        if request.op is Op.SET:
            store[request.key] = request.value
            await session.send(bytes([Status.OK]))
        elif request.key not in store:
            await session.send(bytes([Status.MISSING]))
        elif request.op is Op.GET:
            await session.send(bytes([Status.OK]) + store[request.key])
        else:
            del store[request.key]
            await session.send(bytes([Status.OK]))


async def ask(session: meshcore.Session, request: Request) -> tuple[Status, bytes]:
    """One request, one answer (the session keeps them in order)."""
    await session.send(encode_request(request))
    answer = await session.receive()
    return Status(answer[0]), answer[1:]


# --- strategies ---------------------------------------------------------------------------------

keys = st.binary(min_size=0, max_size=8)
requests = st.one_of(
    st.builds(Request, st.just(Op.SET), keys, mst.payloads(max_size=300)),
    st.builds(Request, st.sampled_from([Op.GET, Op.DELETE]), keys),
)


# --- properties ---------------------------------------------------------------------------------


@given(requests)
def test_a_request_decodes_to_itself(request: Request) -> None:
    assert decode_request_untrusted(encode_request(request)) == request


@given(st.one_of(mst.mutated_encodings(requests, encode_request), st.binary(max_size=64)))
def test_any_near_valid_input_decodes_or_is_a_bad_request(data: bytes) -> None:
    try:
        decode_request_untrusted(data)
    except BadRequest:
        pass


@settings(max_examples=25, deadline=None)
@given(
    script=st.lists(requests, max_size=40),
    rng=st.randoms(use_true_random=False),
    loss=st.sampled_from([0.0, 0.05, 0.2]),
)
def test_over_a_lossy_reordering_network_the_store_answers_like_a_dict(
    script: list[Request], rng: random.Random, loss: float
) -> None:
    network = LossyNetwork(rng, loss=loss, duplicate=0.05, reorder=0.1)
    # short timers: the mock clock makes every wait instant, so losses cost no real time
    session_settings = meshcore.SessionSettings(retransmit_timeout_s=0.2, dead_after_s=None)

    async def run() -> None:
        async with (
            open_session_pair(filter=network, settings=session_settings) as (client, server),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(serve_store, server)
            model: dict[bytes, bytes] = {}
            for request in script:
                status, value = await ask(client, request)
                if request.op is Op.SET:
                    model[request.key] = request.value
                    assert (status, value) == (Status.OK, b"")
                elif request.key not in model:
                    assert (status, value) == (Status.MISSING, b"")
                elif request.op is Op.GET:
                    assert (status, value) == (Status.OK, model[request.key])
                else:
                    del model[request.key]
                    assert status is Status.OK
            nursery.cancel_scope.cancel()

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_bad_request_gets_an_answer_and_the_session_goes_on() -> None:
    async def run() -> None:
        async with open_session_pair() as (client, server), trio.open_nursery() as nursery:
            nursery.start_soon(serve_store, server)
            await client.send(b"\x09")
            assert await client.receive() == bytes([Status.BAD_REQUEST])
            assert await ask(client, Request(Op.GET, b"k")) == (Status.MISSING, b"")
            nursery.cancel_scope.cancel()

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
