"""Transport frame cost: seal+open per frame, and seal against the bare AEAD call it wraps.

For 64 B, 1400 B, 16 KiB and 64 KiB plaintexts it times, in the same run and in turns:
`SendKey.seal` + `ReceiveKey.open`, `SendKey.seal` alone, `KeyRing` seal+open, the bare
`cryptography` ChaCha20Poly1305 encrypt (same nonce, 16-byte AD and plaintext), and the same
frame built with PyNaCl (libsodium) beside its own bare call. Each figure is the median over
`--repeat` runs of many frames. Targets (docs/design.md §4): seal at 64 KiB >= 0.85x the bare
AEAD; seal+open at 1400 B <= 5 us. Writes benchmarks/results/framing.json.

    .venv/bin/python benchmarks/bench_framing.py [--quick] [--repeat 31]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import nacl.bindings
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey

SIZES = (64, 1400, 16 * 1024, 64 * 1024)
TARGET_SEAL_RATIO_64K = 0.85
TARGET_SEAL_OPEN_1400_US = 5.0
RESULTS = Path(__file__).resolve().parent / "results" / "framing.json"

_HEADER = struct.Struct("<IIQ")
_NONCE = struct.Struct("<4xQ")


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """Microseconds per call of `fn` over `n` calls."""
    clock = time.perf_counter
    start = clock()
    for _ in range(n):
        fn()
    return (clock() - start) / n * 1e6


def variants(size: int) -> dict[str, Callable[[], object]]:
    """The timed operations for one plaintext size; each call handles one new frame."""
    key = os.urandom(32)
    plaintext = os.urandom(size)
    send, receive = SendKey(key, 7, 0.0), ReceiveKey(key, 7, 0.0)
    seal_only = SendKey(key, 7, 0.0)
    ring_a, ring_b = KeyRing(), KeyRing()
    ring_a.install(SendKey(key, 9, 0.0), ReceiveKey(os.urandom(32), 8, 0.0), 0.0)
    ring_b.install(SendKey(os.urandom(32), 8, 0.0), ReceiveKey(key, 9, 0.0), 0.0)
    aead = ChaCha20Poly1305(key)
    header = _HEADER.pack(4, 7, 12345)
    nonce = _NONCE.pack(12345)
    nacl_encrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt
    counter = iter(range(1 << 62))

    def nacl_seal() -> bytes:
        n = next(counter)
        hdr = _HEADER.pack(4, 7, n)
        return hdr + nacl_encrypt(plaintext, hdr, _NONCE.pack(n), key)

    return {
        "seal_open": lambda: receive.open(send.seal(plaintext, 1.0), 1.0),
        "seal": lambda: seal_only.seal(plaintext, 1.0),
        "keyring_seal_open": lambda: ring_b.open(ring_a.seal(plaintext, 1.0), 1.0),
        "bare_encrypt": lambda: aead.encrypt(nonce, plaintext, header),
        "bare_encrypt_decrypt": lambda: aead.decrypt(
            nonce, aead.encrypt(nonce, plaintext, header), header
        ),
        "nacl_bare_encrypt": lambda: nacl_encrypt(plaintext, header, nonce, key),
        "nacl_seal": nacl_seal,
    }


def measure(size: int, repeat: int, budget_ms: float) -> dict[str, float]:
    """Median microseconds per frame of every variant, the variants taking turns."""
    ops = variants(size)
    n = max(50, int(budget_ms * 1e3 / max(1.0, 2.0 + size / 1400)))
    for fn in ops.values():  # warm-up
        per_call_us(fn, max(10, n // 10))
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeat):
        for name, fn in ops.items():
            samples[name].append(per_call_us(fn, n))
    result = {f"{name}_us": statistics.median(values) for name, values in samples.items()}
    result.update({f"{name}_best_us": min(values) for name, values in samples.items()})
    result["frames_per_run"] = n
    result["seal_vs_bare"] = result["bare_encrypt_us"] / result["seal_us"]
    result["nacl_seal_vs_nacl_bare"] = result["nacl_bare_encrypt_us"] / result["nacl_seal_us"]
    result["seal_mb_s"] = size / result["seal_us"]
    result["bare_mb_s"] = size / result["bare_encrypt_us"]
    result["nacl_bare_mb_s"] = size / result["nacl_bare_encrypt_us"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=31, help="runs per variant (median)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (smoke test)")
    args = parser.parse_args(argv)
    repeat = 5 if args.quick else args.repeat
    budget_ms = 3.0 if args.quick else 20.0

    results = {size: measure(size, repeat, budget_ms) for size in SIZES}

    print("microseconds per frame, median of runs (best run in brackets)")
    print(
        f"{'size':>7} {'seal+open':>16} {'seal':>8} {'bare enc':>9} {'seal/bare':>9} "
        f"{'bare e+d':>9} {'ring s+o':>9} {'nacl bare':>10} {'nacl seal/bare':>14}"
    )
    for size, r in results.items():
        print(
            f"{size:>7} {r['seal_open_us']:>7.2f} [{r['seal_open_best_us']:>5.2f}] "
            f"{r['seal_us']:>8.2f} {r['bare_encrypt_us']:>9.2f} {r['seal_vs_bare']:>9.2f} "
            f"{r['bare_encrypt_decrypt_us']:>9.2f} {r['keyring_seal_open_us']:>9.2f} "
            f"{r['nacl_bare_encrypt_us']:>10.2f} {r['nacl_seal_vs_nacl_bare']:>14.2f}"
        )
    ratio_64k = results[64 * 1024]["seal_vs_bare"]
    seal_open_1400 = results[1400]["seal_open_us"]
    targets = {
        "seal_vs_bare_64k": {
            "value": ratio_64k,
            "target": TARGET_SEAL_RATIO_64K,
            "met": ratio_64k >= TARGET_SEAL_RATIO_64K,
        },
        "seal_open_1400_us": {
            "value": seal_open_1400,
            "target": TARGET_SEAL_OPEN_1400_US,
            "met": seal_open_1400 <= TARGET_SEAL_OPEN_1400_US,
        },
    }
    for name, t in targets.items():
        verdict = "met" if t["met"] else "MISSED"
        print(f"target {name}: {t['value']:.2f} (target {t['target']}) {verdict}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "host": {
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "cryptography": version("cryptography"),
            "pynacl": version("pynacl"),
        },
        "repeat": repeat,
        "sizes": {str(size): r for size, r in results.items()},
        "targets": targets,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
