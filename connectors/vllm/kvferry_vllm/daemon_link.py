"""The connector's link to its local daemon: one kvferry.Client, and a background thread for
the calls nobody waits for (releasing entries no request will read, learning this node's
identity), so that vLLM's scheduler loop never blocks on the daemon."""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

import kvferry

from .settings import Settings

log = logging.getLogger("kvferry_vllm")


class DaemonLink:
    def __init__(self, settings: Settings, client: kvferry.Client | None = None) -> None:
        self.settings = settings
        self.client = client or kvferry.Client(settings.daemon, timeout=settings.call_timeout_s)
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        #: This node's identity, once the daemon told it: {"source_node": peer address, "source_node_id": id}.
        self.source: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name="kvferry-daemon-link", daemon=True)
        self._thread.start()
        self._learning = False
        self.learn_source()

    def submit(self, job: Callable[[], None]) -> None:
        with self._idle:
            self._pending += 1
        self._jobs.put(job)

    def release_later(self, transfer_id: str, why: str) -> None:
        """Drops the entry on the local daemon (in the background; an absent one is fine)."""

        def job() -> None:
            try:
                freed = self.client.release(transfer_id)
                log.info("kvferry: released %s (%s): %d bytes", transfer_id, why, freed)
            except kvferry.NotFoundError:
                pass
            except kvferry.KvferryError as err:
                log.warning("kvferry: cannot release %s (%s) on the daemon at %s: %s", transfer_id, why, self.settings.daemon, err)

        self.submit(job)

    def drain(self, timeout: float | None = None) -> bool:
        """Waits until the queued jobs ran (tests, shutdown); False when `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self.drain(self.settings.call_timeout_s)
        self._jobs.put(None)
        self._thread.join(self.settings.call_timeout_s)
        self.client.close()

    def learn_source(self) -> None:
        """Asks the daemon who this node is (in the background), unless known or being asked."""
        if self.source or self._learning:
            return
        self._learning = True
        self.submit(self._learn_source)

    def _learn_source(self) -> None:
        self._learning = False
        try:
            info = self.client.server_info()
            nodes = self.client.list_nodes()
        except kvferry.KvferryError as err:
            log.warning("kvferry: the daemon at %s (%s) does not answer: %s", self.settings.daemon, self.settings.daemon_from, err)
            return
        self.source["source_node_id"] = info.node_id
        for n in nodes.nodes:
            if n.node_id == info.node_id and n.peer_address:
                self.source["source_node"] = n.peer_address

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # a job's own failure is logged, never the thread's end
                log.exception("kvferry: a background call to the daemon failed")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
