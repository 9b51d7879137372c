"""The OS side of the layer-2 tunnel: a TAP device from /dev/net/tun that hands over whole
GSO segments (virtio-net headers, checksum and TSO/USO offloads), configured with pyroute2.

pyroute2 0.9 runs asyncio inside, so every netlink call runs in a worker thread
(`trio.to_thread.run_sync`), never on the trio thread. The device is not persistent: closing
its file descriptor, or the process ending in any way, removes it.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from meshcore.errors import ConfigError, MeshError
from meshcore.proto.constants import TAP_GSO_MAX_BYTES, TAP_VNET_HEADER_BYTES

__all__ = [
    "TUN_PATH",
    "TapDevice",
    "check_tap_access",
    "configure_tap",
    "open_configured_tap",
    "open_tap",
    "validate_device_name",
]

log = logging.getLogger("meshcore.tap")

TUN_PATH: Final = "/dev/net/tun"

# <linux/if_tun.h>
_TUNSETIFF: Final = 0x400454CA
_TUNSETOFFLOAD: Final = 0x400454D0
_TUNSETVNETHDRSZ: Final = 0x400454D8
_TUNSETVNETLE: Final = 0x400454DC
_IFF_TAP: Final = 0x0002
_IFF_NO_PI: Final = 0x1000
_IFF_VNET_HDR: Final = 0x4000
_TUN_F_CSUM: Final = 0x01
_TUN_F_TSO4: Final = 0x02
_TUN_F_TSO6: Final = 0x04
_TUN_F_USO4: Final = 0x20
_TUN_F_USO6: Final = 0x40
_IFNAMSIZ: Final = 16
_IFREQ: Final = struct.Struct("16sH22x")
_CAP_NET_ADMIN: Final = 12

_OFFLOAD_CHOICES: Final = (
    (_TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6 | _TUN_F_USO4 | _TUN_F_USO6, ("csum", "tso", "uso")),
    (_TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6, ("csum", "tso")),
    (_TUN_F_CSUM, ("csum",)),
)
"""Tried in order: kernels before 6.2 refuse USO, and only the offloads a kernel accepts count."""


def validate_device_name(name: str) -> str | None:
    """What is wrong with `name` as a Linux interface name, or None if it is fine."""
    if not name:
        return "is empty"
    if len(name.encode()) >= _IFNAMSIZ:
        return f"is {len(name.encode())} bytes long; Linux allows at most {_IFNAMSIZ - 1}"
    if name in (".", "..") or any(ch in name for ch in "/:") or any(ch.isspace() for ch in name):
        return "may not be '.', '..' or contain '/', ':' or spaces"
    return None


def _has_cap_net_admin() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def check_tap_access(tun_path: str = TUN_PATH) -> str | None:
    """Why this process cannot create a TAP device (missing device or privilege), or None.

    Cheap and side-effect free, so `meshcore-peer up` can fail at once with a useful message.
    """
    if not os.path.exists(tun_path):
        return (
            f"{tun_path} does not exist: load the tun module (modprobe tun), or in a container "
            f"pass the device in (docker run --device {tun_path} --cap-add NET_ADMIN)"
        )
    if not _has_cap_net_admin():
        return (
            "creating a TAP device needs the CAP_NET_ADMIN capability: run as root "
            "(sudo meshcore-peer up ...) or grant it (setcap cap_net_admin+ep on the Python "
            "interpreter)"
        )
    if not os.access(tun_path, os.R_OK | os.W_OK):
        return f"{tun_path} cannot be opened for reading and writing by this user"
    return None


class TapDevice:
    """An open TAP device: every read returns one frame behind a virtio-net header of
    `vnet_header_bytes` (little-endian), every write takes one. Non-blocking.

    `close()` (or leaving the `with` block) removes the device from the system.
    """

    def __init__(self, fd: int, name: str, offloads: tuple[str, ...]) -> None:
        self.fd = fd
        self.name = name
        self.offloads = offloads
        """Offloads the kernel accepted: "csum", "tso" (TCP segments up to gso_max_size),
        "uso" (UDP segments)."""
        self.vnet_header_bytes = TAP_VNET_HEADER_BYTES

    def fileno(self) -> int:
        return self.fd

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        """Close the file descriptor, which removes the device. Idempotent."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> TapDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TapDevice(name={self.name!r}, fd={self.fd}, offloads={self.offloads})"


def _ioctl_int(fd: int, request: int, value: int) -> None:
    fcntl.ioctl(fd, request, struct.pack("i", value))


def open_tap(name: str, *, offloads: bool = True, tun_path: str = TUN_PATH) -> TapDevice:
    """Create the TAP device `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), non-blocking.

    With `offloads` the kernel may hand over unchecksummed frames and TCP (and, from Linux
    6.2, UDP) segments of up to gso_max_size bytes, described by the virtio-net header.
    Raises `ConfigError` when the name is bad or taken, or the privilege or device is missing.
    """
    problem = validate_device_name(name)
    if problem:
        raise ConfigError(f"device name {name!r} {problem}; choose another with --device")
    try:
        fd = os.open(tun_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(check_tap_access(tun_path) or f"{tun_path} does not exist") from None
    except PermissionError:
        raise ConfigError(
            check_tap_access(tun_path) or f"no permission to open {tun_path}"
        ) from None
    try:
        request = _IFREQ.pack(name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR)
        try:
            reply = fcntl.ioctl(fd, _TUNSETIFF, request)
        except OSError as exc:
            raise _setiff_error(name, exc, tun_path) from None
        actual = _IFREQ.unpack(reply)[0].rstrip(b"\0").decode()
        _ioctl_int(fd, _TUNSETVNETHDRSZ, TAP_VNET_HEADER_BYTES)
        # the header travels to other peers: one byte order everywhere
        _ioctl_int(fd, _TUNSETVNETLE, 1)
        accepted: tuple[str, ...] = ()
        if offloads:
            for flags, names in _OFFLOAD_CHOICES:
                try:
                    fcntl.ioctl(fd, _TUNSETOFFLOAD, flags)
                except OSError:
                    continue
                accepted = names
                break
        else:
            fcntl.ioctl(fd, _TUNSETOFFLOAD, 0)
    except BaseException:
        os.close(fd)
        raise
    return TapDevice(fd, actual, accepted)


def _setiff_error(name: str, exc: OSError, tun_path: str) -> MeshError:
    if exc.errno == errno.EPERM:
        return ConfigError(check_tap_access(tun_path) or f"not allowed to create {name}")
    if exc.errno == errno.EBUSY:
        return ConfigError(
            f"device {name} already exists and is in use (another tunnel, or not a TAP "
            "device); stop that or choose another name with --device"
        )
    if exc.errno == errno.EINVAL:
        return ConfigError(
            f"the kernel refused to create TAP device {name} ({exc.strerror}); an interface "
            "of another kind may have that name: choose another with --device"
        )
    return MeshError(f"cannot create TAP device {name}: {exc.strerror}")


def _configure_sync(
    name: str,
    mtu: int,
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None,
    mac: bytes | None,
    gso_max_size: int | None,
) -> bool:
    """The netlink part of `configure_tap` (runs in a worker thread). Returns whether the
    GSO cap was applied."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    ipr: Any
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise MeshError(f"device {name} vanished while it was being configured")
        index = found[0]
        changes: dict[str, object] = {"mtu": mtu}
        if mac is not None:
            changes["address"] = ":".join(f"{b:02x}" for b in mac)
        try:
            ipr.link("set", index=index, **changes)
        except NetlinkError as exc:
            raise ConfigError(f"cannot set MTU {mtu} on {name}: {exc.args[-1]}") from None
        capped = False
        if gso_max_size is not None:
            try:
                ipr.link("set", index=index, gso_max_size=gso_max_size)
                capped = True
            except NetlinkError:
                pass  # older kernels: large segments are then split over messages
        if address is not None:
            try:
                ipr.addr(
                    "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
                )
            except NetlinkError as exc:
                raise ConfigError(
                    f"cannot add address {address} to {name}: {exc.args[-1]}; check that no "
                    "other interface has it"
                ) from None
        ipr.link("set", index=index, state="up")
    return capped


async def configure_tap(
    name: str,
    *,
    mtu: int,
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None,
    mac: bytes | None = None,
    gso_max_size: int | None = TAP_GSO_MAX_BYTES,
) -> bool:
    """Set MTU, MAC address, GSO cap and address of device `name`, then bring it up.

    Runs pyroute2 in a worker thread (not cancellable while it runs; it takes milliseconds).
    Returns whether the kernel accepted the GSO cap. Raises `ConfigError` for a value the
    kernel refuses (the message names it).
    """
    return await trio.to_thread.run_sync(_configure_sync, name, mtu, address, mac, gso_max_size)


@asynccontextmanager
async def open_configured_tap(
    name: str,
    *,
    mtu: int,
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None,
    mac: bytes | None = None,
    offloads: bool = True,
    tun_path: str = TUN_PATH,
) -> AsyncIterator[TapDevice]:
    """Create, configure and bring up a TAP device; leaving the block removes it.

    The configuration runs in a worker thread and is not cancellable while it runs (it takes
    milliseconds); cancellation, like leaving the block, then removes the device.
    """
    device = open_tap(name, offloads=offloads, tun_path=tun_path)
    try:
        capped = await configure_tap(
            device.name,
            mtu=mtu,
            address=address,
            mac=mac,
            gso_max_size=TAP_GSO_MAX_BYTES if "tso" in device.offloads else None,
        )
        log.info(
            "device %s up: mtu %d, address %s, offloads %s%s",
            device.name,
            mtu,
            address or "none",
            ",".join(device.offloads) or "none",
            f", gso_max_size {TAP_GSO_MAX_BYTES}" if capped else "",
        )
        yield device
    finally:
        device.close()
