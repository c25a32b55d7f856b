// Moving entries between daemons: the initiator's side (push, pull) and the other
// side's bookkeeping (reservations), over the native engine. The control plane is
// batched: one round trip per step for a whole BatchTransfer, so thousands of small
// entries cost a few RPCs, not thousands.
//
// PUSH  initiator: lease the sealed entries → peer PrepareReceive (room + handles) →
//       engine writes → peer CommitReceive (the peer seals) → drop the local copies.
// PULL  initiator: peer PrepareSend (leases + handles) → reserve room here → engine
//       reads → commit + seal here → peer FinishSend (the peer drops its copies).
// Every batch of reservations carries a timer: if the other daemon dies, its half of the work
// is undone at the deadline (plus a grace period) and no pool byte leaks.
// Each entry succeeds or fails on its own; one failure never fails the batch.
import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import {
  DeadlineExceededError,
  errorFromStatus,
  grpcStatusOf,
  InvalidArgumentError,
  type KvferryError,
  NotFoundError,
  UnavailableError,
} from "../errors.js";
import type {
  CommitReceiveResponse,
  EntryError,
  ExposedPart,
  IncomingEntry,
  PrepareReceiveRequest,
  PrepareReceiveResponse,
  PrepareSendRequest,
  PrepareSendResponse,
  Reservation,
} from "../gen/kvferry/v1/peer.js";
import type { PoolBlock } from "../engine/pool-memory.js";
import type { OpSpec, TransferEngine } from "../engine/transfer-engine.js";
import type { LookupBuffer, PartWriter, ReadLease } from "../store/lookup-buffer.js";
import { checkLeaseTtl, checkPartName, checkTransferId } from "../store/validate.js";
import type { ResolvePeer } from "./node-resolver.js";
import { remoteSegments, segmentOps, toExposedPart } from "./part-segments.js";
import type { Peer, PeerDirectory } from "./peers.js";

export const MAX_BATCH = 4096;
/** How long a reservation outlives the deadline its initiator announced. */
const RESERVATION_GRACE_MS = 5_000;
const MAX_RESERVATION_MS = 10 * 60_000;
/** A batch moves in chunks of at most this many entries or bytes, a few in flight at once. */
const CHUNK_ENTRIES = 256;
const CHUNK_BYTES = 256 << 20;
const CHUNKS_IN_FLIGHT = 3;
/** Cleanup calls to a peer that may be gone. */
const CLEANUP_TIMEOUT_MS = 5_000;

export type Mode = "push" | "pull";

export interface TransferOutcome {
  transferId: string;
  error?: KvferryError;
  bytes: number;
  micros: number;
}

interface Incoming {
  transferId: string;
  writers: PartWriter[];
  handles: bigint[];
}

interface Outgoing {
  transferId: string;
  lease: ReadLease;
  handles: bigint[];
}

export interface TransfersOptions {
  store: LookupBuffer;
  engine: TransferEngine;
  peers: PeerDirectory;
  log: Logger;
  nodeId: () => string;
  transferDeadlineMs: number;
  /** A target or source (node id or peer address) → the peer API address to call. */
  resolve: ResolvePeer;
  /** Each batch this daemon initiated, once every entry has its outcome (metrics). */
  onBatch?: (mode: Mode, outcomes: readonly TransferOutcome[], seconds: number) => void;
}

/** Per-entry outcomes of one batch, filled in as the steps go. */
class Outcomes {
  readonly #t0 = performance.now();
  readonly #done = new Map<string, TransferOutcome>();

  constructor(private readonly ids: readonly string[]) {}

  has(id: string): boolean {
    return this.#done.has(id);
  }

  fail(transferId: string, error: unknown): void {
    if (this.#done.has(transferId)) return;
    this.#done.set(transferId, { transferId, error: error as KvferryError, bytes: 0, micros: this.#micros() });
  }

  succeed(transferId: string, bytes: number): void {
    this.#done.set(transferId, { transferId, bytes, micros: this.#micros() });
  }

  /** Every id not settled yet fails with `error`. */
  failRest(error: unknown): void {
    for (const id of this.ids) this.fail(id, error);
  }

  list(): TransferOutcome[] {
    return this.ids.map((id) => this.#done.get(id)!);
  }

  #micros(): number {
    return Math.round((performance.now() - this.#t0) * 1000);
  }
}

export class Transfers {
  readonly #incoming = new Map<string, Incoming>();
  readonly #outgoing = new Map<string, Outgoing>();
  /** Pulls in flight for Gets, by transfer id. */
  readonly #pulls = new Map<string, Promise<void>>();

  constructor(private readonly o: TransfersOptions) {}

  /** Reservations held for peers now, for tests and status. */
  get reservations(): { receives: number; sends: number } {
    return { receives: this.#incoming.size, sends: this.#outgoing.size };
  }

  // ---- the initiator ---------------------------------------------------------------

  /** Runs a batch; each id succeeds or fails on its own. Throws only for a bad request. */
  async batch(
    ids: readonly string[],
    target: string,
    mode: Mode,
    options: { deadlineMs?: number; keepSource?: boolean; leaseTtlMs?: number; targetField?: string } = {},
  ): Promise<TransferOutcome[]> {
    if (ids.length === 0 || ids.length > MAX_BATCH) {
      throw new InvalidArgumentError("transfer_ids", `${ids.length} ids; a batch holds 1 to ${MAX_BATCH}`);
    }
    const seen = new Set<string>();
    ids.forEach((id, i) => {
      checkTransferId(id, `transfer_ids[${i}]`);
      if (seen.has(id)) throw new InvalidArgumentError(`transfer_ids[${i}]`, `${JSON.stringify(id)} is named twice`);
      seen.add(id);
    });
    const field = options.targetField ?? "target";
    const { address, nodeId } = await this.o.resolve(target, field);
    const leaseTtlMs = checkLeaseTtl(options.leaseTtlMs);
    const deadlineMs = options.deadlineMs || this.o.transferDeadlineMs;
    if (!Number.isInteger(deadlineMs) || deadlineMs < 0) {
      throw new InvalidArgumentError("deadline_ms", `${options.deadlineMs} must be a positive number of milliseconds`);
    }
    const deadlineAt = Date.now() + deadlineMs;
    const startedAt = performance.now();
    const outcomes = new Outcomes(ids);
    try {
      const peer = await this.o.peers.get(address, deadlineMs);
      if (nodeId !== undefined && peer.hello.nodeId !== nodeId) {
        // A stale record: another daemon now listens where the named node was.
        throw new UnavailableError(`${field}: node ${JSON.stringify(nodeId)} is no longer at ${address} (node ${JSON.stringify(peer.hello.nodeId)} answers there)`);
      }
      const keep = options.keepSource === true;
      // Chunks in flight together: one chunk's bytes move while the next is being
      // reserved and the previous committed.
      const chunks = chunk(ids, (id) => (mode === "push" ? this.o.store.bytesOf(id) : 0));
      await inParallel(chunks, CHUNKS_IN_FLIGHT, (ids) =>
        (mode === "push"
          ? this.#push(ids, peer, deadlineAt, keep, leaseTtlMs, outcomes)
          : this.#pull(ids, peer, deadlineAt, keep, leaseTtlMs, outcomes)
        ).catch((err) => {
          // A chunk-wide failure (the peer's reply never came) fails that chunk only.
          for (const id of ids) outcomes.fail(id, err);
        }),
      );
    } catch (err) {
      outcomes.failRest(err);
    }
    const results = outcomes.list();
    this.o.onBatch?.(mode, results, (performance.now() - startedAt) / 1000);
    const failed = results.filter((r) => r.error);
    if (failed.some((r) => r.error instanceof UnavailableError || r.error instanceof InvalidArgumentError)) {
      // The peer may have restarted with another data address: greet it afresh next time.
      this.o.peers.forget(address);
    }
    const moved = results.reduce((sum, r) => sum + r.bytes, 0);
    (failed.length ? this.o.log.warn.bind(this.o.log) : this.o.log.info.bind(this.o.log))(
      { target, ...(address !== target && { address }), mode, entries: ids.length, failed: failed.length, bytes: moved, firstError: failed[0]?.error?.message },
      "batch transfer",
    );
    return results;
  }

  /**
   * Pulls one entry (for a Get that names a source); throws on failure. Concurrent
   * calls for the same id share one pull, so several readers of an entry that is not
   * here yet all get it.
   */
  pullOnce(transferId: string, source: string): Promise<void> {
    let pulling = this.#pulls.get(transferId);
    if (pulling === undefined) {
      pulling = this.batch([transferId], source, "pull", { targetField: "source" }).then(([outcome]) => {
        if (outcome!.error) throw outcome!.error;
      });
      const forget = () => this.#pulls.delete(transferId);
      pulling.then(forget, forget);
      this.#pulls.set(transferId, pulling);
    }
    return pulling;
  }

  async #push(
    ids: readonly string[], peer: Peer, deadlineAt: number, keep: boolean, leaseTtlMs: number | undefined, out: Outcomes,
  ): Promise<void> {
    const leases = new Map<string, ReadLease>();
    try {
      await Promise.all(
        ids.map(async (id) => {
          try {
            // An entry still being written is waited for (up to the deadline); an absent
            // one fails NOT_FOUND at once instead of holding its chunk back. Moved away
            // (not kept), the entry is held exclusively: no consumer here gets it meanwhile.
            const waitMs = this.o.store.has(id) ? remaining(deadlineAt) : 0;
            leases.set(id, await this.o.store.get({ transferId: id, waitMs, exclusive: !keep }));
          } catch (err) {
            out.fail(id, err);
          }
        }),
      );
      const live = ids.filter((id) => leases.has(id));
      if (live.length === 0) return;

      const prep = await peer.call<PrepareReceiveRequest, PrepareReceiveResponse>(
        "prepareReceive",
        {
          entries: live.map((id) => ({ transferId: id, parts: leases.get(id)!.parts.map((p) => ({ name: p.name, size: p.size })) })),
          deadlineMs: remaining(deadlineAt),
          leaseTtlMs,
          sourceNode: this.o.nodeId(),
        },
        remaining(deadlineAt),
      );
      const reserved = new Map<string, string>(); // transfer id → reservation id
      const plan = new OpPlan();
      live.forEach((id, i) => {
        try {
          const reservation = checkReservation(prep.entries[i], id);
          reserved.set(id, reservation.id);
          const exposed = exposedByName(reservation.parts);
          // All of an entry's ops, or none: a half-planned entry must not write anything.
          const ops = leases.get(id)!.parts.filter((part) => part.size > 0).flatMap((part): OpSpec[] =>
            segmentOps("write", (part.block as PoolBlock).extents, segmentsOf(exposed, part.name, part.size)),
          );
          for (const op of ops) plan.add(id, op);
        } catch (err) {
          out.fail(id, err);
        }
      });
      await plan.run(this.o.engine, peer.hello!.dataAddress, deadlineAt, out, reserved.keys());
      // Whatever failed gives its reservation back now rather than at the peer's timeout.
      const abandoned = [...reserved].filter(([id]) => out.has(id));
      for (const [id] of abandoned) reserved.delete(id);
      if (abandoned.length > 0) {
        // Awaited, so that a caller retrying on our answer finds the target clean.
        const ids = abandoned.map(([, rid]) => rid);
        await peer.call("abortReceive", { ids, reason: "transfer failed" }, CLEANUP_TIMEOUT_MS).catch(() => {});
      }
      if (reserved.size === 0) return;

      const committing = [...reserved];
      const commit = await peer.call<{ ids: string[] }, CommitReceiveResponse>(
        "commitReceive",
        { ids: committing.map(([, rid]) => rid) },
        remaining(deadlineAt),
      );
      committing.forEach(([id], i) => {
        const result = commit.results[i];
        if (result === undefined) return out.fail(id, new UnavailableError(`peer ${peer.address} did not answer for ${id}`));
        if (result.error) return out.fail(id, fromEntryError(result.error, peer.address));
        const lease = leases.get(id)!;
        if (keep) lease.release(false);
        else lease.releaseAndDrop("transferred");
        out.succeed(id, result.bytes);
      });
    } finally {
      for (const lease of leases.values()) lease.release(false); // no-op for the released
    }
  }

  async #pull(
    ids: readonly string[], peer: Peer, deadlineAt: number, keep: boolean, leaseTtlMs: number | undefined, out: Outcomes,
  ): Promise<void> {
    const prep = await peer.call<PrepareSendRequest, PrepareSendResponse>(
      "prepareSend",
      { transferIds: [...ids], deadlineMs: remaining(deadlineAt), destinationNode: this.o.nodeId(), releaseSource: !keep },
      remaining(deadlineAt),
    );
    const held = new Map<string, string>(); // transfer id → the peer's reservation id
    const writers = new Map<string, PartWriter[]>();
    const completed: string[] = [];
    try {
      const exposedParts = new Map<string, ExposedPart[]>();
      ids.forEach((id, i) => {
        try {
          const reservation = checkReservation(prep.entries[i], id);
          held.set(id, reservation.id);
          exposedParts.set(id, reservation.parts);
        } catch (err) {
          out.fail(id, err);
        }
      });
      // Room here, entry by entry (each may wait for eviction or room).
      await Promise.all(
        [...exposedParts].map(async ([id, parts]) => {
          const opened: PartWriter[] = [];
          writers.set(id, opened);
          try {
            for (const part of parts) {
              opened.push(await this.o.store.openPart({ transferId: id, part: part.name, leaseTtlMs }, part.size));
            }
          } catch (err) {
            out.fail(id, err);
          }
        }),
      );
      const plan = new OpPlan();
      for (const [id, parts] of exposedParts) {
        if (out.has(id)) continue;
        try {
          // All of an entry's ops, or none.
          const ops = parts.flatMap((part, i): OpSpec[] =>
            part.size === 0 ? [] : segmentOps("read", (writers.get(id)![i]!.block as PoolBlock).extents, remoteSegments(part)),
          );
          for (const op of ops) plan.add(id, op);
        } catch (err) {
          out.fail(id, err);
        }
      }
      await plan.run(this.o.engine, peer.hello!.dataAddress, deadlineAt, out, exposedParts.keys());
      for (const [id, opened] of writers) {
        if (out.has(id)) continue;
        try {
          for (const w of opened) {
            w.landed();
            w.commit();
          }
          this.o.store.seal(id);
          completed.push(id);
          out.succeed(id, opened.reduce((sum, w) => sum + w.size, 0));
        } catch (err) {
          out.fail(id, err);
        }
      }
    } finally {
      // Whatever did not complete gives its room back (after the engine let go of it).
      for (const [id, opened] of writers) if (!completed.includes(id)) for (const w of opened) w.abort();
      const done = new Set(completed);
      // Awaited: when the batch answers, the source has dropped (or kept) its copies.
      await peer
        .call(
          "finishSend",
          {
            completed: completed.map((id) => held.get(id)!),
            failed: [...held].filter(([id]) => !done.has(id)).map(([, rid]) => rid),
            releaseSource: !keep,
          },
          CLEANUP_TIMEOUT_MS,
        )
        .catch((err) => this.o.log.warn({ peer: peer.address, err: (err as Error).message }, "finishSend failed"));
    }
  }

  // ---- the other side --------------------------------------------------------------

  async prepareReceive(req: PrepareReceiveRequest): Promise<PrepareReceiveResponse> {
    const holdMs = reservationMs(req.deadlineMs);
    const leaseTtlMs = checkLeaseTtl(req.leaseTtlMs);
    checkBatchSize(req.entries.length, "entries");
    const batchId = randomUUID();
    const ids: string[] = [];
    const reserve = (entry: IncomingEntry, index: number, writers: PartWriter[]): Reservation => {
      const handles = writers.map((w) => (w.size > 0 ? this.o.engine.exposeSegments(w.block as PoolBlock, "write") : []));
      const id = `${batchId}/${index}`;
      this.#incoming.set(id, { transferId: entry.transferId, writers, handles: handles.flat() });
      ids.push(id);
      return {
        transferId: entry.transferId,
        id,
        parts: writers.map((w, i) => toExposedPart(entry.parts[i]!.name, w.size, (w.block as PoolBlock).extents, handles[i]!)),
      };
    };
    const refuse = (entry: IncomingEntry, writers: PartWriter[], err: unknown): Reservation => {
      for (const w of writers) w.abort();
      return { transferId: entry.transferId, error: toEntryError(err), id: "", parts: [] };
    };
    // Room now (the common case) is taken synchronously, entry by entry; the entries
    // that must wait for room (like a put) do so afterwards, together.
    const entries: (Reservation | undefined)[] = req.entries.map((entry, index) => {
      const writers: PartWriter[] = [];
      try {
        const transferId = checkTransferId(entry.transferId);
        checkPartSizes(entry.parts, transferId);
        for (const p of entry.parts) {
          const writer = this.o.store.openPartNow({ transferId, part: p.name, leaseTtlMs }, p.size);
          if (writer === undefined) {
            for (const w of writers) w.abort();
            return undefined;
          }
          writers.push(writer);
        }
        return reserve(entry, index, writers);
      } catch (err) {
        return refuse(entry, writers, err);
      }
    });
    await Promise.all(
      entries.map(async (done, index) => {
        if (done !== undefined) return;
        const entry = req.entries[index]!;
        const writers: PartWriter[] = [];
        try {
          for (const p of entry.parts) {
            writers.push(await this.o.store.openPart({ transferId: entry.transferId, part: p.name, leaseTtlMs }, p.size));
          }
          entries[index] = reserve(entry, index, writers);
        } catch (err) {
          entries[index] = refuse(entry, writers, err);
        }
      }),
    );
    // One timer for the batch: whatever is neither committed nor aborted by then is undone.
    this.#arm(ids, this.#incoming, holdMs, (left) => {
      this.o.log.warn({ entries: left.length, source: req.sourceNode }, "receive not committed in time: undone");
      void this.abortReceive(left);
    });
    return { entries: entries as Reservation[] };
  }

  async commitReceive(ids: readonly string[]): Promise<CommitReceiveResponse> {
    const taken = ids.map((id) => {
      const r = this.#incoming.get(id);
      this.#incoming.delete(id);
      return r;
    });
    // The sender says every byte landed; wait until no peer access is still in flight.
    await this.o.engine.revokeAll(taken.flatMap((r) => (r ? r.handles.filter((h) => h !== 0n) : [])));
    const results = taken.map((r, i) => {
      const id = ids[i]!;
      if (r === undefined) {
        return { id, error: toEntryError(new NotFoundError(`no reservation ${id} (committed, aborted, or undone at its deadline)`)), bytes: 0 };
      }
      try {
        for (const w of r.writers) {
          w.landed();
          w.commit();
        }
        this.o.store.seal(r.transferId);
      } catch (err) {
        for (const w of r.writers) w.abort();
        return { id, error: toEntryError(err), bytes: 0 };
      }
      return { id, bytes: r.writers.reduce((sum, w) => sum + w.size, 0) };
    });
    this.o.log.debug({ entries: ids.length }, "entries received");
    return { results };
  }

  async abortReceive(ids: readonly string[]): Promise<void> {
    const taken = ids.flatMap((id) => {
      const r = this.#incoming.get(id);
      this.#incoming.delete(id);
      return r ? [r] : [];
    });
    await this.o.engine.revokeAll(taken.flatMap((r) => r.handles.filter((h) => h !== 0n)));
    for (const r of taken) for (const w of r.writers) w.abort();
  }

  async prepareSend(req: PrepareSendRequest): Promise<PrepareSendResponse> {
    const holdMs = reservationMs(req.deadlineMs);
    checkBatchSize(req.transferIds.length, "transfer_ids");
    const batchId = randomUUID();
    const ids: string[] = [];
    const entries = await Promise.all(
      req.transferIds.map(async (requested, index): Promise<Reservation> => {
        try {
          const transferId = checkTransferId(requested);
          // Absent: NOT_FOUND now, so the other entries of the batch are not held back.
          const waitMs = this.o.store.has(transferId) ? Math.min(holdMs, req.deadlineMs) : 0;
          // To be dropped after the pull: held exclusively, so no consumer here gets it too.
          const lease = await this.o.store.get({ transferId, waitMs, exclusive: req.releaseSource });
          const handles = lease.parts.map((p) => (p.size > 0 ? this.o.engine.exposeSegments(p.block as PoolBlock, "read") : []));
          const id = `${batchId}/${index}`;
          this.#outgoing.set(id, { transferId, lease, handles: handles.flat() });
          ids.push(id);
          return {
            transferId,
            id,
            parts: lease.parts.map((p, i) => toExposedPart(p.name, p.size, (p.block as PoolBlock).extents, handles[i]!)),
          };
        } catch (err) {
          return { transferId: requested, error: toEntryError(err), id: "", parts: [] };
        }
      }),
    );
    this.#arm(ids, this.#outgoing, holdMs, (left) => {
      this.o.log.warn({ entries: left.length, destination: req.destinationNode }, "send not finished in time: released");
      void this.finishSend([], left, false);
    });
    return { entries };
  }

  async finishSend(completed: readonly string[], failed: readonly string[], releaseSource: boolean): Promise<void> {
    const take = (id: string) => {
      const s = this.#outgoing.get(id);
      this.#outgoing.delete(id);
      return s ? [s] : [];
    };
    const done = completed.flatMap(take);
    const undone = failed.flatMap(take);
    await this.o.engine.revokeAll([...done, ...undone].flatMap((s) => s.handles.filter((h) => h !== 0n)));
    for (const s of undone) s.lease.release(false);
    for (const s of done) {
      if (releaseSource) s.lease.releaseAndDrop("transferred");
      else s.lease.release(false);
    }
  }

  /**
   * Arms the undo timer of one batch of reservations. It fires `undo` with the ids still
   * held at `holdMs`, and it is cleared as soon as none is (so a busy daemon does not
   * keep thousands of finished batches alive until their deadlines).
   */
  #arm(ids: string[], held: Map<string, unknown>, holdMs: number, undo: (left: string[]) => void): void {
    if (ids.length === 0) return;
    const check = setInterval(() => {
      if (!ids.some((id) => held.has(id))) clear();
    }, Math.min(1_000, holdMs));
    const timer = setTimeout(() => {
      clear();
      const left = ids.filter((id) => held.has(id));
      if (left.length > 0) undo(left);
    }, holdMs);
    const clear = () => {
      clearInterval(check);
      clearTimeout(timer);
    };
    check.unref();
    timer.unref();
  }

  /** Undoes every reservation (shutdown). */
  async close(): Promise<void> {
    await Promise.all([this.abortReceive([...this.#incoming.keys()]), this.finishSend([], [...this.#outgoing.keys()], false)]);
  }

}

/** The ops of a batch, remembered by entry so failures map back to entries. */
class OpPlan {
  readonly #ops: OpSpec[] = [];
  readonly #owners: string[] = [];

  add(transferId: string, op: OpSpec): void {
    this.#ops.push(op);
    this.#owners.push(transferId);
  }

  /**
   * Runs every op to its terminal completion; an entry whose op failed fails in `out`
   * (its first error). When nothing could be moved — the engine refused the batch, or the
   * deadline had passed — every entry of `all` fails with that.
   */
  async run(engine: TransferEngine, peer: string, deadlineAt: number, out: Outcomes, all: Iterable<string>): Promise<void> {
    if (this.#ops.length === 0) return;
    let results: Awaited<ReturnType<TransferEngine["run"]>>;
    try {
      results = await engine.run(peer, this.#ops, remaining(deadlineAt));
    } catch (err) {
      for (const id of all) out.fail(id, err);
      return;
    }
    results.forEach((r, i) => {
      if (r.error) out.fail(this.#owners[i]!, r.error); // fail() keeps an entry's first error
    });
  }
}

/** Splits ids into chunks of at most CHUNK_ENTRIES entries and (about) CHUNK_BYTES bytes. */
function chunk(ids: readonly string[], bytesOf: (id: string) => number): string[][] {
  const chunks: string[][] = [];
  let current: string[] = [];
  let bytes = 0;
  for (const id of ids) {
    current.push(id);
    bytes += bytesOf(id);
    if (current.length === CHUNK_ENTRIES || bytes >= CHUNK_BYTES) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

/** Runs `work` over the items with at most `limit` running at once. */
async function inParallel<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

function remaining(deadlineAt: number): number {
  const left = deadlineAt - Date.now();
  if (left <= 0) throw new DeadlineExceededError("the transfer's deadline passed");
  return left;
}

function reservationMs(deadlineMs: number): number {
  if (!Number.isInteger(deadlineMs) || deadlineMs <= 0) {
    throw new InvalidArgumentError("deadline_ms", `${deadlineMs} must be a positive number of milliseconds`);
  }
  return Math.min(deadlineMs, MAX_RESERVATION_MS) + RESERVATION_GRACE_MS;
}

function checkPartSizes(parts: readonly { name: string; size: number }[], transferId: string): void {
  if (parts.length === 0) throw new InvalidArgumentError("parts", `entry ${transferId} has no parts`);
  const names = new Set<string>();
  parts.forEach((p, i) => {
    checkPartName(p.name, `parts[${i}].name`);
    if (names.has(p.name)) throw new InvalidArgumentError(`parts[${i}].name`, `${p.name} is named twice`);
    names.add(p.name);
  });
}

function checkBatchSize(n: number, field: string): void {
  if (n === 0 || n > MAX_BATCH) throw new InvalidArgumentError(field, `${n} entries; a batch holds 1 to ${MAX_BATCH}`);
}

function toEntryError(err: unknown): EntryError {
  return { code: grpcStatusOf(err), message: err instanceof Error ? err.message : String(err) };
}

function fromEntryError(e: EntryError, peer: string): KvferryError {
  return errorFromStatus(e.code, `peer ${peer}: ${e.message}`);
}

function checkReservation(r: Reservation | undefined, transferId: string): Reservation {
  if (r === undefined || r.transferId !== transferId) {
    throw new UnavailableError(`the peer answered out of order for ${transferId}`);
  }
  if (r.error) throw errorFromStatus(r.error.code, `peer: ${r.error.message}`);
  return r;
}

function exposedByName(parts: ExposedPart[]): Map<string, ExposedPart> {
  return new Map(parts.map((p) => [p.name, p]));
}

function segmentsOf(byName: Map<string, ExposedPart>, name: string, size: number) {
  const part = byName.get(name);
  if (part === undefined || part.size !== size) throw new UnavailableError(`peer exposed no part ${name} of ${size} bytes`);
  return remoteSegments(part);
}
