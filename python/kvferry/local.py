"""SEAM — the local zero-copy path (not implemented yet; the daemon side is being added).

On the daemon's node a client can skip copying part bytes through gRPC: the daemon passes its
pool's memfd over a Unix socket (peer credentials checked), the client maps it once, and

  put_local: gRPC reserves extents for the parts → the client writes its bytes straight into
             the mapping (a GPU engine copies device memory there) → gRPC commits them (and
             seals with the last part);
  get_local: gRPC lends the parts' extents (consuming or not) → the client reads them in place
             as memoryviews over the mapping → it gives the loan back (confirming a consume
             as kvferry.consume does for the inline path).

How it plugs in: a `LocalPath` implementing kvferry.datapath.DataPath, built by
`connect_local(rpc, socket_path)` from the same Rpc (stub, deadlines, typed errors) that the
inline path uses; Client gains `put_local` / `get_local` that delegate to it exactly as
`put` / `get` delegate to InlinePath. The RPCs (reserve, commit, lend) and the socket's
protocol come with the daemon's change to proto/; until then this module only states the
contract, and connect_local refuses.
"""
from __future__ import annotations

from ._rpc import Rpc
from .datapath import DataPath


class LocalPathUnavailable(NotImplementedError):
    """The local zero-copy path is not available (not implemented by this client yet)."""


def connect_local(rpc: Rpc, socket_path: str) -> DataPath:
    """The local path over the daemon's pool memfd, received on `socket_path`."""
    raise LocalPathUnavailable(
        "the local zero-copy path (pool memfd over a Unix socket) is not implemented yet: use put/get"
    )
