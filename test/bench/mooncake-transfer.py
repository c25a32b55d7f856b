"""One side of a Mooncake Transfer Engine transfer, for the transfer bench (transfer-bench.ts).

    python mooncake-transfer.py SIZE

Mooncake's own engine (PyPI: mooncake-transfer-engine-non-cuda, in the virtual environment
scripts/mooncake-venv.sh makes) on its TCP transport with "P2PHANDSHAKE" metadata: no
metadata server, the two engines exchange their segments' descriptions directly when the
first transfer opens the connection. The bench sets MC_TCP_BIND_ADDRESS=127.0.0.1 (the
address the engine publishes) and MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER.

Registers one buffer of SIZE bytes, filled with random bytes (every page touched before any
transfer, as kvferry's pre-faulted pool), and prints one JSON line:
{"segment": "127.0.0.1:PORT", "buffer": ADDRESS, "version": V}, or {"error": WHY} and exits 1.
Then it answers one JSON line per command read on stdin:

    write SEGMENT ADDRESS COUNT SIZE   one batch_transfer_sync_write of COUNT entries of SIZE
                                       bytes: entry i from this buffer at i*SIZE to
                                       ADDRESS + i*SIZE in SEGMENT (another engine's buffer):
                                       {"rc": RC, "seconds": S}, S the call's wall time
    clear COUNT SIZE                   zeroes the first COUNT*SIZE bytes: {}
    sha256 COUNT SIZE                  {"sha256": HEX} of the first COUNT*SIZE bytes
    quit / EOF                         exits 0

Mooncake logs (glog) go to stderr.
"""
import ctypes
import hashlib
import importlib.metadata
import json
import os
import sys
import time

from mooncake.engine import TransferEngine

PACKAGE = "mooncake-transfer-engine-non-cuda"
# The random block tiled over the buffer: enough to keep every entry's bytes distinct
# from its neighbours' at every shape the bench runs (16 MiB is its largest entry).
FILL_BLOCK = 16 << 20 | 4096


def say(obj):
    print(json.dumps(obj), flush=True)


def region(command, size):
    """COUNT and SIZE of a command, checked against the buffer: (count, entry size)."""
    count, entry = int(command[-2]), int(command[-1])
    if count < 1 or entry < 1 or count * entry > size:
        raise ValueError(f"{count} × {entry} B does not fit the {size} B buffer")
    return count, entry


def main():
    size = int(sys.argv[1])
    engine = TransferEngine()
    rc = engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
    if rc != 0:
        say({"error": f"TransferEngine.initialize(127.0.0.1, P2PHANDSHAKE, tcp) returned {rc}"})
        return 1
    buffer = ctypes.create_string_buffer(size)
    address = ctypes.addressof(buffer)
    block = os.urandom(FILL_BLOCK)
    for offset in range(0, size, FILL_BLOCK):
        ctypes.memmove(address + offset, block, min(FILL_BLOCK, size - offset))
    rc = engine.register_memory(address, size)
    if rc != 0:
        say({"error": f"register_memory of {size} B returned {rc}"})
        return 1
    say({
        "segment": f"127.0.0.1:{engine.get_rpc_port()}",
        "buffer": address,
        "version": importlib.metadata.version(PACKAGE),
    })
    for line in sys.stdin:
        command = line.split()
        try:
            if command[:1] == ["write"] and len(command) == 5:
                count, entry = region(command, size)
                peer, peer_address = command[1], int(command[2])
                sources = [address + i * entry for i in range(count)]
                targets = [peer_address + i * entry for i in range(count)]
                started = time.perf_counter()
                rc = engine.batch_transfer_sync_write(peer, sources, targets, [entry] * count)
                say({"rc": rc, "seconds": time.perf_counter() - started})
            elif command[:1] == ["clear"] and len(command) == 3:
                count, entry = region(command, size)
                ctypes.memset(address, 0, count * entry)
                say({})
            elif command[:1] == ["sha256"] and len(command) == 3:
                count, entry = region(command, size)
                view = memoryview(buffer).cast("B")[: count * entry]
                say({"sha256": hashlib.sha256(view).hexdigest()})
            elif command == ["quit"]:
                break
            else:
                say({"error": f"unknown command {line.strip()!r}: expected write, clear, sha256 or quit"})
        except ValueError as err:
            say({"error": str(err)})
    engine.unregister_memory(address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
