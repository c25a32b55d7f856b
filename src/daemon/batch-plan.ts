// The engine ops of one step of a batch transfer. The peer exposes a whole batch behind
// one handle (BatchHandle in peer.proto: the reserved entries' parts back to back, in
// order); this side lays the entries it moves along that range, and each run of
// consecutive entries becomes ONE engine op that gathers (WRITE) or scatters (READ) their
// local extents. An entry that failed here leaves a gap: its bytes are skipped and the
// run ends. A batch of 256 small entries is then one op, cut by the engine into a few
// full-size frames, and one completion.
//
// An op that fails fails every entry of its run; a batch the engine refuses (or a
// deadline already passed) fails every entry given to `run`.
import { DeadlineExceededError, UnavailableError } from "../errors.js";
import type { BatchHandle, PartSize } from "../gen/kvferry/v1/peer.js";
import type { PoolExtent } from "../engine/pool-memory.js";
import type { OpSpec, TransferEngine } from "../engine/transfer-engine.js";

/** Where an entry's failure is recorded; an entry keeps its first error. */
export interface Failures {
  fail(transferId: string, error: unknown): void;
}

/** Most local extents one op gathers (native HandleTable::kMaxExtents); a longer run is cut. */
export const MAX_GATHER = 1 << 20;

interface Run {
  readonly op: Omit<OpSpec, "gather"> & { gather: PoolExtent[] };
  readonly owners: string[];
}

export class BatchPlan {
  readonly #runs: Run[] = [];
  #run: Run | undefined;
  /** Handle offset of the next entry: the bytes laid so far, moved or skipped. */
  #at = 0;

  constructor(private readonly kind: OpSpec["kind"]) {}

  /** Bytes of the handle's range laid out so far. */
  get size(): number {
    return this.#at;
  }

  /**
   * The next entry of the handle's range, whose parts the peer lists as `parts`, moves
   * between there and `local` (its parts' local extents, in the peer's part order).
   * @throws UnavailableError when the extents do not hold the parts' bytes (nothing is laid)
   */
  add(transferId: string, local: readonly PoolExtent[], parts: readonly PartSize[]): void {
    const size = bytesOf(parts);
    const have = local.reduce((sum, e) => sum + e.length, 0);
    if (have !== size) throw new UnavailableError(`entry ${transferId}: the peer's parts hold ${size} bytes, ours ${have}`);
    let run = this.#run;
    if (run === undefined || run.op.gather.length + local.length > MAX_GATHER) {
      run = this.#run = {
        op: { kind: this.kind, remoteHandle: 0n, remoteOffset: this.#at, length: 0, gather: [] },
        owners: [],
      };
      this.#runs.push(run);
    }
    for (const e of local) if (e.length > 0) run.op.gather.push(e);
    run.op.length += size;
    run.owners.push(transferId);
    this.#at += size;
  }

  /** The next entry of the handle's range is not moved (it failed here): its bytes are a gap. */
  skip(parts: readonly PartSize[]): void {
    this.#at += bytesOf(parts);
    this.#run = undefined;
  }

  /**
   * Checks that the peer's batch handle is well-formed and that the entries laid out fill
   * it exactly, then runs every op against it to its terminal completion; an op's failure
   * fails its entries in `out`. When nothing could be moved — a malformed handle, a layout
   * that does not match it, the engine refusing the batch, or the deadline passed — every
   * entry of `all` fails with that.
   */
  async run(engine: TransferEngine, peer: string, batch: BatchHandle | undefined, deadlineAt: number, out: Failures, all: Iterable<string>): Promise<void> {
    const ops = this.#runs.filter((r) => r.op.length > 0);
    try {
      if ((batch?.size ?? 0) !== this.#at) {
        throw new UnavailableError(`peer ${peer}'s batch handle holds ${batch?.size ?? 0} bytes, its entries ${this.#at}`);
      }
      if (ops.length === 0) return;
      const handle = parseHandle(batch!.handle); // a non-empty batch has one
      for (const r of ops) r.op.remoteHandle = handle;
      const results = await engine.run(peer, ops.map((r) => r.op), remaining(deadlineAt));
      results.forEach((r, i) => {
        if (r.error) for (const id of ops[i]!.owners) out.fail(id, r.error); // fail() keeps an entry's first error
      });
    } catch (err) {
      for (const id of all) out.fail(id, err);
    }
  }
}

const MAX_HANDLE = (1n << 64n) - 1n;

function parseHandle(text: string): bigint {
  const handle = /^\d{1,20}$/.test(text) ? BigInt(text) : -1n;
  if (handle <= 0n || handle > MAX_HANDLE) throw new UnavailableError(`peer sent a malformed handle ${JSON.stringify(text)}`);
  return handle;
}

function bytesOf(parts: readonly PartSize[]): number {
  return parts.reduce((sum, p) => sum + p.size, 0);
}

/** Milliseconds left until `deadlineAt`; none left is DEADLINE_EXCEEDED. */
export function remaining(deadlineAt: number): number {
  const left = deadlineAt - Date.now();
  if (left <= 0) throw new DeadlineExceededError("the transfer's deadline passed");
  return left;
}
