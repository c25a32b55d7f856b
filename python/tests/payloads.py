"""Part contents for the tests: deterministic, different for every seed."""
from __future__ import annotations

import hashlib
import random

KiB = 1 << 10
MiB = 1 << 20


def seeded(size: int, seed: str) -> bytes:
    """`size` pseudo-random bytes for `seed`: a part swapped with another, or shifted, shows."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
