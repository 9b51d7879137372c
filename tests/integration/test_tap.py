"""The TAP device on a real kernel: created only inside a network namespace made for the test
(through `ip netns exec`), with virtio-net headers, offloads, the GSO cap, its address and
MTU; frames written into it are answered by the kernel; closing it removes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from tapmesh import tap_marker, tap_prerequisites

from meshcore._tap import TapDevice, check_tap_access, open_tap, validate_device_name
from meshcore.errors import ConfigError

_MISSING = tap_prerequisites()
needs_tap = tap_marker("TAP TESTS", _MISSING)
"""Builds a network namespace and a TAP device in it: marked `lab`, skipped loudly without root
or /dev/net/tun."""


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (loopback up), deleted afterwards whatever happens."""
    name = f"mctap{os.getpid()}{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_in(netns: str, code: str, timeout: float = 15.0) -> dict[str, Any]:
    """Run Python `code` inside `netns`; it prints one JSON object, which is returned."""
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


_CONFIGURED = """
    import ipaddress, json, subprocess, trio
    from meshcore._tap import open_configured_tap

    async def main():
        async with open_configured_tap(
            "tap7", mtu=1380, address=ipaddress.ip_interface("10.99.0.1/24"),
            mac=bytes.fromhex("02aabbccddee"),
        ) as device:
            link = json.loads(subprocess.run(
                ["ip", "-d", "-j", "addr", "show", "dev", "tap7"],
                capture_output=True, text=True, check=True).stdout)[0]
            info = {"offloads": device.offloads, "name": device.name,
                    "vnet": device.vnet_header_bytes, "link": link}
        gone = subprocess.run(["ip", "link", "show", "tap7"], capture_output=True).returncode
        info["exists_after_close"] = gone == 0
        print(json.dumps(info))

    trio.run(main)
"""


@needs_tap
def test_configured_device_has_address_mtu_mac_and_is_up(netns: str) -> None:
    info = run_in(netns, _CONFIGURED)
    link = info["link"]
    assert isinstance(link, dict)
    assert link["mtu"] == 1380
    assert link["address"] == "02:aa:bb:cc:dd:ee"
    assert "UP" in link["flags"]
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"] == [
        ("10.99.0.1", 24)
    ]


@needs_tap
def test_device_passes_virtio_headers_with_offloads_and_capped_gso(netns: str) -> None:
    info = run_in(netns, _CONFIGURED)
    link = info["link"]
    assert isinstance(link, dict)
    assert link["linkinfo"]["info_kind"] == "tun"
    assert link["linkinfo"]["info_data"]["type"] == "tap"
    assert link["linkinfo"]["info_data"]["vnet_hdr"] is True
    assert link["linkinfo"]["info_data"]["pi"] is False
    assert link["gso_max_size"] == 64000
    assert info["vnet"] == 10
    assert info["offloads"][:2] == ["csum", "tso"]


@needs_tap
def test_closing_the_device_removes_it(netns: str) -> None:
    assert run_in(netns, _CONFIGURED)["exists_after_close"] is False


_ARP_AND_PING = """
    import ipaddress, json, os, select, struct, trio
    from meshcore._tap import open_configured_tap

    HOST_MAC = bytes.fromhex("02aabbccddee")
    PEER_MAC = bytes.fromhex("021122334455")
    HDR = bytes(10)

    def checksum(data):
        if len(data) % 2:
            data += b"\\0"
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        total = (total >> 16) + (total & 0xFFFF)
        return ~(total + (total >> 16)) & 0xFFFF

    def read_frame(fd, want_type):
        while True:
            ready, _, _ = select.select([fd], [], [], 5)
            assert ready, "no frame from the kernel within 5 s"
            frame = os.read(fd, 70000)
            if frame[10 + 12 : 10 + 14] == want_type:
                return frame

    async def main():
        async with open_configured_tap(
            "tap8", mtu=1400, address=ipaddress.ip_interface("10.99.0.1/24"), mac=HOST_MAC
        ) as device:
            fd = device.fd
            arp = (HDR + b"\\xff" * 6 + PEER_MAC + b"\\x08\\x06"
                   + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
                   + PEER_MAC + bytes([10, 99, 0, 2]) + bytes(6) + bytes([10, 99, 0, 1]))
            os.write(fd, arp)
            reply = read_frame(fd, b"\\x08\\x06")
            icmp = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"meshcore-tap-test"
            icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                             bytes([10, 99, 0, 2]), bytes([10, 99, 0, 1]))
            ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
            os.write(fd, HDR + HOST_MAC + PEER_MAC + b"\\x08\\x00" + ip + icmp)
            echo = read_frame(fd, b"\\x08\\x00")
            print(json.dumps({"arp": reply.hex(), "echo": echo.hex()}))

    trio.run(main)
"""


@needs_tap
def test_kernel_answers_arp_and_ping_written_into_the_device(netns: str) -> None:
    out = run_in(netns, _ARP_AND_PING)
    arp = bytes.fromhex(str(out["arp"]))
    frame = arp[10:]
    assert frame[0:6] == bytes.fromhex("021122334455")  # to the asker
    assert frame[6:12] == bytes.fromhex("02aabbccddee")  # from the device's MAC
    assert frame[20:22] == b"\x00\x02"  # ARP reply
    assert frame[28:32] == bytes([10, 99, 0, 1])  # "10.99.0.1 is at ..."
    echo = bytes.fromhex(str(out["echo"]))[10:]
    assert echo[14 + 20] == 0  # ICMP echo reply
    assert echo.endswith(b"meshcore-tap-test")


_UDP_GSO = """
    import ipaddress, json, os, select, socket, struct, subprocess, trio
    from meshcore._tap import open_configured_tap

    async def main():
        async with open_configured_tap(
            "tap9", mtu=1400, address=ipaddress.ip_interface("10.99.0.1/24")
        ) as device:
            subprocess.run(["ip", "neigh", "add", "10.99.0.2", "lladdr", "02:11:22:33:44:55",
                            "dev", "tap9"], check=True)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            UDP_SEGMENT = 103
            sock.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 1200)
            sock.sendto(b"x" * 30000, ("10.99.0.2", 9))
            sizes, headers = [], []
            while sum(sizes) < 30000:
                ready, _, _ = select.select([device.fd], [], [], 5)
                assert ready, "no frame within 5 s"
                frame = os.read(device.fd, 70000)
                if frame[10 + 12 : 10 + 14] != b"\\x08\\x00" or frame[10 + 23] != 17:
                    continue  # not IPv4 UDP (e.g. IPv6 router solicitations)
                flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack(
                    "<BBHHHH", frame[:10])
                headers.append([flags, gso_type, gso_size])
                sizes.append(len(frame) - 10 - 14 - 20 - 8)
            print(json.dumps({"sizes": sizes, "headers": headers,
                              "offloads": device.offloads}))

    trio.run(main)
"""


@needs_tap
def test_kernel_hands_over_a_whole_udp_gso_train_in_one_read(netns: str) -> None:
    out = run_in(netns, _UDP_GSO)
    if "uso" not in out["offloads"]:
        pytest.skip("this kernel has no UDP segmentation offload for TAP (Linux < 6.2)")
    assert out["sizes"] == [30000]
    flags, gso_type, gso_size = out["headers"][0]
    assert gso_type == 5  # VIRTIO_NET_HDR_GSO_UDP_L4
    assert gso_size == 1200
    assert flags & 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum is ours (the peer's) to fill


_NAME_TAKEN = """
    import json
    from meshcore._tap import open_tap
    from meshcore.errors import ConfigError
    first = open_tap("dup0")
    try:
        open_tap("dup0")
    except ConfigError as exc:
        print(json.dumps({"error": str(exc)}))
    else:
        print(json.dumps({"error": None}))
"""


@needs_tap
def test_name_in_use_is_a_config_error_naming_it(netns: str) -> None:
    error = run_in(netns, _NAME_TAKEN)["error"]
    assert isinstance(error, str)
    assert "dup0" in error and "--device" in error


def test_access_check_names_a_missing_tun_device() -> None:
    problem = check_tap_access("/nonexistent/net/tun")
    assert problem is not None
    assert "/nonexistent/net/tun does not exist" in problem
    assert "modprobe tun" in problem


def test_access_check_passes_here_when_root() -> None:
    if _MISSING:
        pytest.skip("not root or no /dev/net/tun: " + ", ".join(_MISSING))
    assert check_tap_access() is None


def test_open_tap_without_the_device_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        open_tap("x0", tun_path="/nonexistent/net/tun")


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b", "..", "a:b"])
def test_bad_device_names_are_refused_before_any_system_call(name: str) -> None:
    assert validate_device_name(name) is not None
    with pytest.raises(ConfigError, match="--device"):
        open_tap(name, tun_path="/nonexistent/net/tun")


@pytest.mark.parametrize("name", ["mesh0", "a" * 15, "tap-1.x"])
def test_ordinary_device_names_are_accepted(name: str) -> None:
    assert validate_device_name(name) is None


def test_closing_a_device_twice_is_harmless() -> None:
    read_end, write_end = os.pipe()
    device = TapDevice(read_end, "fake0", ())
    device.close()
    device.close()
    assert device.closed
    os.close(write_end)
