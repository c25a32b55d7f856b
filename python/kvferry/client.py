"""kvferry.Client: a typed, blocking client of one daemon's client API (kvferry.v1.KvFerry),
with the semantics of the TypeScript client (src/client/client.ts): consuming reads confirmed
before they return, confirmations retried when their reply was lost, typed errors."""
from __future__ import annotations

import builtins
from typing import Iterator, Literal, Mapping, Sequence

import grpc

from ._gen import kvferry_pb2 as pb
from ._rpc import Rpc
from .consume import confirm_consume
from .datapath import BytesLike, DataPath
from .errors import KvferryError, UnavailableError
from .inline import InlinePath
from .local import LocalLoan, LocalPool, LocalWriter
from .types import Entry, EntryInfo, EntryPage, EntryState, NodeInfo, Nodes, ServerInfo, TransferResult

#: Channel options: room for inline parts up to the daemon's limits (as the TypeScript client),
#: and a daemon back after an outage is dialled again within seconds.
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 80 << 20),
    ("grpc.max_send_message_length", 80 << 20),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


class Client:
    """A client of the daemon at `address` ("127.0.0.1:PORT").

    `timeout` is the default deadline of every call, in seconds (None: no deadline); each
    method's own `timeout` overrides it. Failed calls raise kvferry.errors classes.
    Use as a context manager, or call close().
    """

    def __init__(
        self, address: str, *, timeout: float | None = None,
        options: Sequence[tuple[str, object]] = (),
    ) -> None:
        self.address = address
        self._channel = grpc.insecure_channel(address, options=[*CHANNEL_OPTIONS, *options])
        self._rpc = Rpc(self._channel, timeout)
        self._inline: DataPath = InlinePath(self._rpc)
        #: The daemon's pool mapped here (the local path), once asked for.
        self._local: LocalPool | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        self._channel.close()

    def wait_for_ready(self, timeout: float = 30.0) -> None:
        """Returns once the channel is connected; raises UnavailableError after `timeout` s."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise UnavailableError(f"no connection to the daemon at {self.address} within {timeout} s") from None

    # -- data -----------------------------------------------------------------------------

    def put(
        self, transfer_id: str, parts: Mapping[str, BytesLike], *, seal: bool = True,
        lease_ttl_ms: int | None = None, timeout: float | None = None,
    ) -> EntryInfo:
        """Stores `parts` (name → bytes-like) in the entry, in order, creating it if absent, and
        seals it with the last part unless seal=False. `timeout` covers every part's call.
        An empty `parts` with seal=True only seals. Returns the entry after the last put."""
        return self._inline.put(transfer_id, parts, seal=seal, lease_ttl_ms=lease_ttl_ms, timeout=timeout)

    def get(
        self, transfer_id: str, *, parts: Sequence[str] = (), consume: bool = False,
        wait_ms: int | None = None, source: str = "", consume_lease_ms: int | None = None,
        timeout: float | None = None,
    ) -> Entry:
        """Reads the named parts (every part, once sealed, when `parts` is empty), waiting up to
        `wait_ms` for them (None: the daemon's default; 0: no wait). With consume=True the entry
        is taken: this returns only once the daemon confirmed the bytes are this reader's and
        dropped the entry; if the confirmation fails the error is raised and the bytes must be
        discarded. `source`: a node id or peer address to pull the entry from first."""
        return self._inline.get(
            transfer_id, parts=parts, consume=consume, wait_ms=wait_ms, source=source,
            consume_lease_ms=consume_lease_ms, timeout=timeout,
        )

    # -- the local path (README "The local path") -----------------------------------------

    def local_pool(self, *, timeout: float | None = None) -> LocalPool:
        """The daemon's pool mapped into this process (once). Raises UnavailableError saying
        why there is no local path: the daemon serves none, runs elsewhere, refuses this uid."""
        if self._local is None:
            self._local = LocalPool.open(self._rpc, self.address, timeout)
        return self._local

    def _local_or_none(self) -> LocalPool | None:
        try:
            return self.local_pool()
        except UnavailableError:
            return None

    def reserve_local(
        self, transfer_id: str, parts: Mapping[str, int], *, lease_ttl_ms: int | None = None,
        reservation_ttl_ms: int | None = None, timeout: float | None = None,
    ) -> LocalWriter:
        """Reserves the parts (name → size in bytes) in the local pool: write their views (or
        numpy/torch arrays over them), then commit. Needs the local path (UnavailableError)."""
        req = pb.ReserveRequest(
            transfer_id=transfer_id, parts=[pb.PartSpec(name=n, size=size) for n, size in parts.items()],
            lease_ttl_ms=lease_ttl_ms, reservation_ttl_ms=reservation_ttl_ms,
        )
        for attempt in range(2):
            pool = self.local_pool(timeout=timeout)
            res = self._rpc.unary(self._rpc.stub.Reserve, req, timeout)
            if res.pool_id == pool.pool_id:
                return LocalWriter(self._rpc, pool, transfer_id, res.reservation_id, res.parts)
            # The daemon restarted: its room goes back, and the new pool is mapped (once).
            try:
                self._rpc.unary(self._rpc.stub.Abort, pb.AbortRequest(reservation_id=res.reservation_id), timeout)
            except KvferryError:
                pass
            self._local = None
            if attempt > 0:
                pool.check_pool(res.pool_id)
        raise AssertionError("unreachable")

    def put_local(
        self, transfer_id: str, parts: Mapping[str, BytesLike], *, seal: bool = True,
        lease_ttl_ms: int | None = None, timeout: float | None = None,
    ) -> EntryInfo:
        """put, written straight into the daemon's pool when it is on this node (else inline)."""
        if self._local_or_none() is None:
            return self.put(transfer_id, parts, seal=seal, lease_ttl_ms=lease_ttl_ms, timeout=timeout)
        writer = self.reserve_local(
            transfer_id, {n: memoryview(d).nbytes for n, d in parts.items()}, lease_ttl_ms=lease_ttl_ms, timeout=timeout,
        )
        try:
            for name, data in parts.items():
                writer.write(name, data)
        except BaseException:
            writer.abort(timeout=timeout)
            raise
        return writer.commit(seal=seal, timeout=timeout)

    def get_local(
        self, transfer_id: str, *, parts: Sequence[str] = (), consume: bool = False, wait_ms: int | None = None,
        source: str = "", loan_ttl_ms: int | None = None, timeout: float | None = None,
    ) -> LocalLoan:
        """get, read in place from the daemon's pool when it is on this node: a loan (release
        it, or use it as a context manager). Else inline (a consuming get is confirmed at once)."""
        pool = self._local_or_none()
        if pool is None:
            got = self.get(transfer_id, parts=parts, consume=consume, wait_ms=wait_ms, source=source, timeout=timeout)
            return LocalLoan(got.info, {n: [memoryview(b)] for n, b in got.parts.items()}, lambda consumed: None)
        req = pb.LendRequest(
            transfer_id=transfer_id, parts=list(parts), wait_ms=wait_ms, consume=consume, loan_ttl_ms=loan_ttl_ms, source=source,
        )
        for attempt in range(2):
            res = self._rpc.unary(self._rpc.stub.Lend, req, timeout)

            def end(consumed: bool, loan_id: str = res.loan_id) -> None:
                self._rpc.unary(self._rpc.stub.ReturnLoan, pb.ReturnLoanRequest(loan_id=loan_id, consumed=consumed and consume), timeout)

            if res.pool_id == pool.pool_id:
                return LocalLoan(EntryInfo.from_pb(res.entry), {p.name: pool.views(p) for p in res.parts}, end)
            # The daemon restarted: the loan goes back, and the new pool is mapped (once).
            end(False)
            self._local = None
            if attempt > 0:
                pool.check_pool(res.pool_id)
            pool = self.local_pool(timeout=timeout)
        raise AssertionError("unreachable")

    def confirm_consume(self, transfer_id: str, consume_token: str, *, timeout: float | None = None) -> int:
        """One ConfirmConsume (get(consume=True) does it for you); returns the bytes freed."""
        return confirm_consume(self._rpc, transfer_id, consume_token, timeout)

    # -- entries --------------------------------------------------------------------------

    def seal(self, transfer_id: str, *, timeout: float | None = None) -> EntryInfo:
        """Marks the entry complete (it stays OPEN until parts still being written land)."""
        return EntryInfo.from_pb(self._rpc.unary(self._rpc.stub.Seal, pb.SealRequest(transfer_id=transfer_id), timeout).entry)

    def release(self, transfer_id: str, *, timeout: float | None = None) -> int:
        """Drops the entry now (the abort path); returns the bytes freed."""
        return self._rpc.unary(self._rpc.stub.Release, pb.ReleaseRequest(transfer_id=transfer_id), timeout).bytes_freed

    def stat(self, transfer_id: str, *, timeout: float | None = None) -> EntryInfo:
        return EntryInfo.from_pb(self._rpc.unary(self._rpc.stub.Stat, pb.StatRequest(transfer_id=transfer_id), timeout).entry)

    def list(
        self, *, state: EntryState | None = None, page_size: int = 0, page_token: str = "",
        timeout: float | None = None,
    ) -> EntryPage:
        """One page of entries (page_size 0: the daemon's default, 100), optionally of one state."""
        req = pb.ListRequest(page_size=page_size, page_token=page_token, state=(state or EntryState.UNSPECIFIED).value)
        res = self._rpc.unary(self._rpc.stub.List, req, timeout)
        return EntryPage(tuple(EntryInfo.from_pb(e) for e in res.entries), res.next_page_token)

    def entries(self, *, state: EntryState | None = None, timeout: float | None = None) -> Iterator[EntryInfo]:
        """Every entry, page after page (each page's call gets `timeout`)."""
        token = ""
        while True:
            page = self.list(state=state, page_size=1000, page_token=token, timeout=timeout)
            yield from page.entries
            if not page.next_page_token:
                return
            token = page.next_page_token

    # -- between daemons ------------------------------------------------------------------

    def batch_transfer(
        self, transfer_ids: Sequence[str], target: str, mode: Literal["push", "pull"] = "push", *,
        deadline_ms: int = 0, keep_source: bool = False, lease_ttl_ms: int | None = None,
        timeout: float | None = None,
    ) -> builtins.list[TransferResult]:
        """Moves sealed entries to (push) or from (pull) the daemon `target` (a node id or its
        peer API address). One result per id, in order; the call itself fails only on a bad
        request. deadline_ms 0: the daemon's transfer_deadline_ms."""
        modes = {"push": pb.TRANSFER_MODE_PUSH, "pull": pb.TRANSFER_MODE_PULL}
        if mode not in modes:
            raise ValueError(f"mode must be 'push' or 'pull', not {mode!r}")
        req = pb.BatchTransferRequest(
            transfer_ids=list(transfer_ids), target=target, mode=modes[mode], deadline_ms=deadline_ms,
            keep_source=keep_source, lease_ttl_ms=lease_ttl_ms,
        )
        res = self._rpc.unary(self._rpc.stub.BatchTransfer, req, timeout)
        return [TransferResult.from_pb(r) for r in res.results]

    # -- the daemon -----------------------------------------------------------------------

    def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        return ServerInfo.from_pb(self._rpc.unary(self._rpc.stub.GetServerInfo, pb.GetServerInfoRequest(), timeout))

    def list_nodes(self, *, timeout: float | None = None) -> Nodes:
        """The nodes the daemon's metadata backend knows, this one included."""
        res = self._rpc.unary(self._rpc.stub.ListNodes, pb.ListNodesRequest(), timeout)
        return Nodes(res.backend, res.where, tuple(NodeInfo.from_pb(n) for n in res.nodes))
