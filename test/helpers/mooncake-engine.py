"""One Mooncake transfer engine (Mooncake's own, from PyPI) in its own process, for tests.

    python mooncake-engine.py NAME METADATA_URL SIZE

Initializes a TransferEngine named NAME (Mooncake's local_hostname, e.g. 127.0.0.1:20001)
on the TCP transport with METADATA_URL as its http metadata server, registers a buffer of
SIZE random bytes, and prints one JSON line: {"initialized": true, "rpc_port": N}, or
{"initialized": false, "rc": RC} and exits 1 at the end of stdin (so that the test sees the
metadata server's records before the failed engine's clean-up). Then it answers one JSON
line per command read on stdin:

    write PEER    writes the whole buffer into PEER's first registered buffer
                  (the address is read from the metadata server): {"rc": RC}
    sha256        {"sha256": HEX} of the buffer
    quit / EOF    exits 0; the engine removes its records from the metadata server

Mooncake logs (glog) go to stderr.
"""
import ctypes
import hashlib
import json
import os
import sys

from mooncake.engine import TransferEngine


def say(obj):
    print(json.dumps(obj), flush=True)


def main():
    name, metadata_url, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    engine = TransferEngine()
    rc = engine.initialize(name, metadata_url, "tcp", "")
    if rc != 0:
        say({"initialized": False, "rc": rc})
        sys.stdin.read()
        return 1
    buffer = ctypes.create_string_buffer(os.urandom(size), size)
    address = ctypes.addressof(buffer)
    rc = engine.register_memory(address, size)
    if rc != 0:
        say({"initialized": False, "rc": rc, "step": "register_memory"})
        return 1
    say({"initialized": True, "rpc_port": engine.get_rpc_port()})
    for line in sys.stdin:
        command = line.split()
        if command[:1] == ["write"] and len(command) == 2:
            peer = command[1]
            peer_address = engine.get_first_buffer_address(peer)
            say({"rc": engine.transfer_sync_write(peer, address, peer_address, size)})
        elif command == ["sha256"]:
            say({"sha256": hashlib.sha256(buffer.raw).hexdigest()})
        elif command == ["quit"]:
            break
        else:
            say({"error": f"unknown command {line.strip()!r}: expected write PEER, sha256 or quit"})
    engine.unregister_memory(address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
