// Parts on the data plane when they span several extents of a pool: what a daemon lends
// (one handle per segment, ExposedPart on the wire) and the ops that move a part between
// two daemons whose segments need not line up (cut at the union of both sides' boundaries).
// A part of one extent on both sides is one handle and one op, as it always was.
import { UnavailableError } from "../errors.js";
import type { ExposedPart } from "../gen/kvferry/v1/peer.js";
import type { PoolExtent } from "../engine/pool-memory.js";
import type { OpSpec } from "../engine/transfer-engine.js";

/** One segment of a peer's part: a handle and how many of the part's bytes it holds. */
export interface RemoteSegment {
  readonly handle: bigint;
  readonly length: number;
}

/** The wire form of a lent part whose segments are `extents`, exposed as `handles` (one each). */
export function toExposedPart(name: string, size: number, extents: readonly PoolExtent[], handles: readonly bigint[]): ExposedPart {
  if (handles.length <= 1) return { name, size, handle: (handles[0] ?? 0n).toString(), segments: [] };
  return {
    name,
    size,
    handle: "",
    segments: handles.map((h, i) => ({ handle: h.toString(), size: extents[i]!.length })),
  };
}

/** A peer's part as segments, checked: well-formed handles whose sizes add up to the part's size. */
export function remoteSegments(part: ExposedPart): RemoteSegment[] {
  if (part.segments.length === 0) return [{ handle: parseHandle(part.handle), length: part.size }];
  if (part.handle !== "") throw new UnavailableError(`peer sent part ${part.name} with both a handle and segments`);
  let sum = 0;
  const out = part.segments.map((s) => {
    sum += s.size;
    return { handle: parseHandle(s.handle), length: s.size };
  });
  if (sum !== part.size) {
    throw new UnavailableError(`peer sent part ${part.name} of ${part.size} bytes in segments of ${sum}`);
  }
  return out;
}

/**
 * The ops that move a part between local extents and a peer's segments, both holding
 * the part's bytes in order (their lengths add up to the same size): one op per stretch
 * that lies in one local extent and one remote segment, addressed within that segment.
 */
export function segmentOps(kind: OpSpec["kind"], local: readonly PoolExtent[], remote: readonly RemoteSegment[]): OpSpec[] {
  if (local.length === 1 && remote.length === 1) {
    return [{ kind, localOffset: local[0]!.offset, remoteHandle: remote[0]!.handle, remoteOffset: 0, length: local[0]!.length }];
  }
  const ops: OpSpec[] = [];
  let li = 0;
  let ri = 0;
  let inLocal = 0;
  let inRemote = 0;
  while (li < local.length && ri < remote.length) {
    const l = local[li]!;
    const r = remote[ri]!;
    const n = Math.min(l.length - inLocal, r.length - inRemote);
    if (n > 0) ops.push({ kind, localOffset: l.offset + inLocal, remoteHandle: r.handle, remoteOffset: inRemote, length: n });
    inLocal += n;
    inRemote += n;
    if (inLocal === l.length) {
      li++;
      inLocal = 0;
    }
    if (inRemote === r.length) {
      ri++;
      inRemote = 0;
    }
  }
  return ops;
}

const MAX_HANDLE = (1n << 64n) - 1n;

export function parseHandle(text: string): bigint {
  const handle = /^\d{1,20}$/.test(text) ? BigInt(text) : -1n;
  if (handle <= 0n || handle > MAX_HANDLE) throw new UnavailableError(`peer sent a malformed handle ${JSON.stringify(text)}`);
  return handle;
}
