"""The tunnel's switch against a reference model, and frame packing for all frame sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshcore.errors import DecodeError
from meshcore.proto.switch import LOCAL, FrameAssembler, FramePacker, Local, Switch

CAPACITY = 4
AGEING_S = 5.0
PORTS = ["p", "q", "r"]
UNICAST = [bytes([2, 0, 0, 0, 0, i]) for i in range(1, 8)]
GROUP = [b"\xff" * 6, bytes.fromhex("01005e000001"), bytes.fromhex("333300000001")]
BAD_SOURCES = [b"\xff" * 6, bytes(6), bytes.fromhex("010000000000")]


def frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x08\x00" + b"\x00" * 46


class SwitchModel(RuleBasedStateMachine):
    """Every decision of `Switch` equals a plain dict-and-list model of a learning switch."""

    def __init__(self) -> None:
        super().__init__()
        self.switch: Switch[str] = Switch(capacity=CAPACITY, ageing_s=AGEING_S)
        self.now = 0.0
        self.ports: list[str] = []
        self.table: dict[bytes, tuple[str | Local, float]] = {}
        self.order: list[bytes] = []  # least recently learned first

    # --- the model ----------------------------------------------------------------------
    def learn(self, mac: bytes, port: str | Local) -> None:
        if mac in self.table:
            self.order.remove(mac)
        elif len(self.table) >= CAPACITY:
            for old in [m for m in self.order if self.now - self.table[m][1] >= AGEING_S]:
                del self.table[old]
                self.order.remove(old)
            if len(self.table) >= CAPACITY:
                del self.table[self.order.pop(0)]
        self.table[mac] = (port, self.now)
        self.order.append(mac)

    def where(self, mac: bytes) -> str | Local | None:
        entry = self.table.get(mac)
        if entry is None or self.now - entry[1] >= AGEING_S:
            return None
        return entry[0]

    # --- rules ----------------------------------------------------------------------------
    @rule(port=st.sampled_from(PORTS))
    def add_port(self, port: str) -> None:
        self.switch.add_port(port)
        if port not in self.ports:
            self.ports.append(port)

    @rule(port=st.sampled_from(PORTS))
    def remove_port(self, port: str) -> None:
        self.switch.remove_port(port)
        if port in self.ports:
            self.ports.remove(port)
            for mac in [m for m, (p, _) in self.table.items() if p == port]:
                del self.table[mac]
                self.order.remove(mac)

    @rule(port=st.sampled_from(PORTS))
    def forget_port(self, port: str) -> None:
        self.switch.forget_port(port)
        for mac in [m for m, (p, _) in self.table.items() if p == port]:
            del self.table[mac]
            self.order.remove(mac)

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.999, 5.0, 7.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(dst=st.sampled_from(UNICAST + GROUP), src=st.sampled_from(UNICAST))
    def frame_from_tap(self, dst: bytes, src: bytes) -> None:
        got = self.switch.from_local(frame(dst, src), self.now)
        self.learn(src, LOCAL)
        where = None if dst[0] & 1 else self.where(dst)
        expected: tuple[str | Local, ...]
        if where is None:
            expected = tuple(self.ports)
        elif where is LOCAL:
            expected = ()
        else:
            expected = (where,)
        assert got == expected

    @precondition(lambda self: bool(self.ports))
    @rule(data=st.data(), dst=st.sampled_from(UNICAST + GROUP), src=st.sampled_from(UNICAST))
    def frame_from_peer(self, data: st.DataObject, dst: bytes, src: bytes) -> None:
        port = data.draw(st.sampled_from(self.ports))
        assert self.switch.from_peer(port, frame(dst, src), self.now)
        self.learn(src, port)

    @rule(src=st.sampled_from(BAD_SOURCES), port=st.sampled_from(PORTS))
    def invalid_source_teaches_nothing(self, src: bytes, port: str) -> None:
        assert self.switch.from_local(frame(UNICAST[0], src), self.now) == ()
        assert not self.switch.from_peer(port, frame(UNICAST[0], src), self.now)

    # --- invariants -----------------------------------------------------------------------
    @invariant()
    def agrees_on_every_address(self) -> None:
        for mac in UNICAST:
            assert self.switch.lookup(mac, self.now) == self.where(mac), mac

    @invariant()
    def table_is_bounded(self) -> None:
        assert len(self.switch) == len(self.table) <= CAPACITY

    @invariant()
    def ports_match(self) -> None:
        assert self.switch.ports == tuple(self.ports)


TestSwitchModel = SwitchModel.TestCase
TestSwitchModel.settings = settings(max_examples=100, stateful_step_count=40)


# --- packing ---------------------------------------------------------------------------------


def pattern(index: int, size: int) -> bytes:
    """A frame whose bytes say which frame it is and where in it a byte sits."""
    block = bytes((index * 7 + i) & 0xFF for i in range(251))
    return (block * (size // 251 + 1))[:size]


frame_sizes = st.lists(
    st.one_of(st.integers(1, 300), st.integers(1000, 6000), st.integers(60000, 140000)),
    max_size=12,
)


@given(sizes=frame_sizes, limit=st.integers(1028, 70000), takes=st.lists(st.booleans()))
def test_packed_frames_come_out_whole_and_in_order(
    sizes: list[int], limit: int, takes: list[bool]
) -> None:
    frames = [pattern(i, n) for i, n in enumerate(sizes)]
    packer, assembler = FramePacker(limit), FrameAssembler()
    out: list[bytes] = []

    def take_one() -> None:
        message = packer.take()
        assert message is not None
        assert 0 < len(message) <= limit
        out.extend(bytes(f) for f in assembler.decode_untrusted(message))

    for i, item in enumerate(frames):
        packer.add(item)
        if i < len(takes) and takes[i]:
            take_one()
    while packer.queued_bytes:
        take_one()
    assert packer.take() is None
    assert out == frames
    assert assembler.pending_bytes == 0


@given(sizes=frame_sizes)
def test_packing_splits_only_frames_larger_than_a_message(sizes: list[int]) -> None:
    limit = 65536
    packer = FramePacker(limit)
    for i, size in enumerate(sizes):
        packer.add(pattern(i, size))
    messages = []
    while (message := packer.take()) is not None:
        messages.append(message)
    split = sum(1 for s in sizes if s + 4 > limit)
    chunks = 0
    for message in messages:
        offset = 0
        while offset < len(message):
            chunks += 1
            offset += 4 + (int.from_bytes(message[offset : offset + 4], "big") & 0x7FFF_FFFF)
    assert chunks <= len(sizes) + split * 3


@given(st.lists(st.binary(max_size=64), max_size=6))
def test_assembler_is_total_on_arbitrary_messages(messages: list[bytes]) -> None:
    assembler = FrameAssembler(max_frame=100)
    for message in messages:
        try:
            frames = assembler.decode_untrusted(message)
        except DecodeError:
            assert assembler.pending_bytes == 0
            continue
        assert all(0 < len(f) <= 100 for f in frames)
