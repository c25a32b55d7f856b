"""Real daemons for the tests: `node bin/kvferry.js daemon ...` as a child process, ready once
it logs the JSON line whose msg is "kvferry daemon serving" (src/daemon/server.ts), which
names its three addresses; stopped with SIGTERM (SIGKILL if it does not exit in time)."""
from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "bin" / "kvferry.js"
SERVING = "kvferry daemon serving"
#: Bounds on a hang, not on speed: a busy 2-core machine starts Node slowly.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


class DaemonStartError(RuntimeError):
    pass


class SpawnedDaemon:
    """One running daemon. `address` is its client API, `peer_address` what another
    daemon's batch_transfer names as target."""

    def __init__(self, args: list[str], name: str = "daemon") -> None:
        node = os.environ.get("KVFERRY_NODE") or shutil.which("node")
        if node is None:
            raise DaemonStartError("no `node` on PATH (set KVFERRY_NODE)")
        self.name = name
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        self._ready = threading.Event()
        self.ready: dict = {}
        self.proc = subprocess.Popen(
            [node, str(BIN), "daemon", *args], cwd=REPO, env={**os.environ, "NO_PRETTY": "1"},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S) or not self.ready:
            self.stop()
            raise DaemonStartError(
                f"{name} (pid {self.proc.pid}) did not serve within {START_TIMEOUT_S} s "
                f"(exit status {self.proc.returncode}); its last lines:\n  " + "\n  ".join(self._tail)
            )
        self.address: str = self.ready["listen"]
        self.peer_address: str = self.ready["peer"]
        self.data_address: str = self.ready["data"]
        self.node_id: str = self.ready["nodeId"]

    def _read(self, stream, is_stdout: bool) -> None:
        # Drains the pipe for the whole life of the daemon, so it never blocks on a full pipe.
        for line in stream:
            self._tail.append(line.rstrip())
            if is_stdout and not self._ready.is_set():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("msg") == SERVING:
                    self.ready = rec
                    self._ready.set()
        if is_stdout:
            self._ready.set()  # it exited (or closed stdout) before serving

    def stop(self) -> int | None:
        """SIGTERM, then the exit code (SIGKILL after STOP_TIMEOUT_S)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def daemon_args(token: str | None = None, pool: str = "64MiB") -> list[str]:
    args = ["--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
            "--kv-buffer-size", pool]
    return args + (["--cluster-token", token] if token else [])


@contextlib.contextmanager
def daemon_pair(token: str, names: tuple[str, str], pool: str = "64MiB") -> Iterator[tuple[SpawnedDaemon, SpawnedDaemon]]:
    """Two daemons with the same cluster token (they transfer between each other), stopped on exit."""
    a = SpawnedDaemon(daemon_args(token, pool=pool), name=names[0])
    try:
        b = SpawnedDaemon(daemon_args(token, pool=pool), name=names[1])
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()
