"""Seal+open cost of the AEADs the envelope could use, against the HMAC it replaced.

Prints JSON then a table: microseconds per seal+open for a gossip-sized datagram, a small
frame and a payload range, for AES-256-GCM, ChaCha20-Poly1305 and HMAC-SHA256 (integrity
only), and the whole envelope (``meshgpu.daemon.auth``: seal, open, replay window) with a
mesh key and without. Run side by side in one process, the schemes taking turns, best
of ``--rounds``; timed in this thread's CPU time (``time.thread_time``), which other
jobs on a loaded machine inflate far less than wall time. Compare ratios, not absolute
numbers.

    python bench/aead.py [--repeat N] [--rounds R]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from meshgpu.daemon.auth import Authenticator, Channel, MeshKey

SIZES = {"datagram 1.2 KiB": 1200, "frame 16 KiB": 16 << 10, "range 16 MiB": 16 << 20}


def _aead(cipher: AESGCM | ChaCha20Poly1305) -> Callable[[bytes, bytes], None]:
    def run(nonce: bytes, data: bytes) -> None:
        sealed = cipher.encrypt(nonce, data, b"header")
        cipher.decrypt(nonce, sealed, b"header")

    return run


def _hmac(key: bytes) -> Callable[[bytes, bytes], None]:
    def run(nonce: bytes, data: bytes) -> None:
        tag = hmac.new(key, data, hashlib.sha256).digest()
        hmac.compare_digest(tag, hmac.new(key, data, hashlib.sha256).digest())

    return run


def _envelope(key: MeshKey | None) -> Callable[[bytes, bytes], None]:
    sealer = Authenticator(key, "node-a", mesh="lab").new_session(Channel.FRAME)
    receiver = Authenticator(key, "node-b", mesh="lab")

    def run(nonce: bytes, data: bytes) -> None:
        receiver.open(sealer.seal(data), Channel.FRAME)

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5, help="turns per scheme (best kept)")
    args = parser.parse_args()
    key = os.urandom(32)
    schemes = {
        "aes-256-gcm": _aead(AESGCM(key)),
        "chacha20-poly1305": _aead(ChaCha20Poly1305(key)),
        "hmac-sha256": _hmac(key),
        "envelope keyed": _envelope(MeshKey(key)),
        "envelope open": _envelope(None),
    }
    results: dict[str, dict[str, float]] = {}
    for label, size in SIZES.items():
        data = os.urandom(size)
        repeat = max(3, args.repeat * 1200 // size) if size > 1 << 20 else args.repeat
        best = dict.fromkeys(schemes, float("inf"))
        for _ in range(args.rounds):  # the schemes take turns: drift hits them alike
            for name, run in schemes.items():
                start = time.thread_time()
                for i in range(repeat):
                    run(i.to_bytes(12, "big"), data)
                best[name] = min(best[name], (time.thread_time() - start) / repeat)
        results[label] = {name: round(seconds * 1e6, 2) for name, seconds in best.items()}
    print(json.dumps({"us_per_seal_and_open": results}))
    print(f"{'payload':<18}" + "".join(f"{name:>20}" for name in schemes))
    for label, row in results.items():
        print(f"{label:<18}" + "".join(f"{row[name]:>18.1f}us" for name in schemes))


if __name__ == "__main__":
    main()
