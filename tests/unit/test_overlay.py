"""A direct path must never run through the tunnel it carries: overlay interfaces' addresses
are neither announced nor dialled."""

from __future__ import annotations

import ipaddress

from meshcore._direct import is_overlay_address, local_candidates, overlay_interface
from meshcore.proto.endpoint import Endpoint


def test_overlay_network_addresses_are_recognised_only_while_declared() -> None:
    loopback = ipaddress.ip_address("127.0.0.9")
    assert not is_overlay_address(loopback)
    with overlay_interface("lo"):
        assert is_overlay_address(loopback)  # lo is 127.0.0.1/8
        assert not is_overlay_address(ipaddress.ip_address("192.0.2.1"))
    assert not is_overlay_address(loopback)


def test_overlay_addresses_are_not_announced() -> None:
    relay_side = Endpoint("127.0.0.1", 40000)
    assert Endpoint("127.0.0.1", 5000) in local_candidates(relay_side, 5000)
    with overlay_interface("lo"):
        assert all(not c.ip.is_loopback for c in local_candidates(relay_side, 5000))
