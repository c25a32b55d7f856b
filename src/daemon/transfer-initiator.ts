// The initiator's side of a BatchTransfer (push, pull) over the native engine. The
// control plane is batched: one round trip per step for a whole chunk of entries, so
// thousands of small entries cost a few RPCs, not thousands; a few chunks are in flight
// at once. Each entry succeeds or fails on its own; one failure never fails the batch.
import type { Logger } from "pino";
import { InvalidArgumentError, type KvferryError, UnavailableError } from "../errors.js";
import { errorFromStatus } from "../grpc-errors.js";
import { KvFerryPeerService, type EntryError, type PartSize, type Reservation } from "../gen/kvferry/v1/peer.js";
import type { PoolExtent } from "../engine/pool-memory.js";
import type { TransferEngine } from "../engine/transfer-engine.js";
import type { LookupBuffer, PartWriter, ReadLease } from "../store/lookup-buffer.js";
import type { Block } from "../store/memory.js";
import type { ReadPart } from "../store/read-lease.js";
import { checkLeaseTtl, checkTransferId } from "../store/validate.js";
import type { ResolvePeer } from "./node-resolver.js";
import { BatchPlan, remaining } from "./batch-plan.js";
import type { Peer, PeerDirectory } from "./peers.js";
import { MAX_BATCH } from "./transfer-reservations.js";

/** A batch moves in chunks of at most this many entries or bytes, a few in flight at once. */
const CHUNK_ENTRIES = 256;
const CHUNK_BYTES = 256 << 20;
const CHUNKS_IN_FLIGHT = 3;
/** The longest a chunk waits for the one before it to be reserved (see Stagger). */
const STAGGER_MS = 20;
/** Cleanup calls to a peer that may be gone. */
const CLEANUP_TIMEOUT_MS = 5_000;

export type Mode = "push" | "pull";

export interface TransferOutcome {
  transferId: string;
  error?: KvferryError;
  bytes: number;
  micros: number;
}

export interface InitiatorOptions {
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

export class TransferInitiator {
  /** Pulls in flight for Gets, by transfer id. */
  readonly #pulls = new Map<string, Promise<void>>();

  constructor(private readonly o: InitiatorOptions) {}

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
      const stagger = new Stagger();
      await inParallel(chunks, CHUNKS_IN_FLIGHT, (ids) =>
        (mode === "push"
          ? this.#push(ids, peer, deadlineAt, keep, leaseTtlMs, outcomes, stagger)
          : this.#pull(ids, peer, deadlineAt, keep, leaseTtlMs, outcomes, stagger)
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
    stagger: Stagger,
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

      const prep = await stagger.turn(() => peer.call(
        KvFerryPeerService.prepareReceive,
        {
          entries: live.map((id) => ({ transferId: id, parts: leases.get(id)!.parts.map((p) => ({ name: p.name, size: p.size })) })),
          deadlineMs: remaining(deadlineAt),
          leaseTtlMs,
          sourceNode: this.o.nodeId(),
        },
        remaining(deadlineAt),
      ));
      const reserved = new Map<string, string>(); // transfer id → reservation id
      const plan = new BatchPlan("write");
      live.forEach((id, i) => {
        let reservation: Reservation;
        try {
          reservation = checkReservation(prep.entries[i], id);
        } catch (err) {
          return out.fail(id, err); // refused (no bytes of it behind the handle), or an answer out of order (the chunk fails)
        }
        reserved.set(id, reservation.id);
        try {
          plan.add(id, localExtents(leases.get(id)!.parts, reservation.parts, (b) => this.o.engine.extentsOf(b)), reservation.parts);
        } catch (err) {
          out.fail(id, err);
          plan.skip(reservation.parts);
        }
      });
      await plan.run(this.o.engine, peer.dataTarget, prep.batch, deadlineAt, out, reserved.keys());
      // Every reservation the peer made that will not be committed — the failed entries',
      // and any its answer made unusable (a malformed handle, out of order) — is given
      // back now rather than at the peer's timeout.
      const committing = [...reserved].filter(([id]) => !out.has(id));
      const abandoned = unclaimed(prep.entries, committing.map(([, rid]) => rid));
      if (abandoned.length > 0) {
        // Awaited, so that a caller retrying on our answer finds the target clean.
        await peer.call(KvFerryPeerService.abortReceive, { ids: abandoned, reason: "transfer failed" }, CLEANUP_TIMEOUT_MS).catch(() => {});
      }
      if (committing.length === 0) return;

      const commit = await peer.call(
        KvFerryPeerService.commitReceive,
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
    stagger: Stagger,
  ): Promise<void> {
    const prep = await stagger.turn(() => peer.call(
      KvFerryPeerService.prepareSend,
      { transferIds: [...ids], deadlineMs: remaining(deadlineAt), destinationNode: this.o.nodeId(), releaseSource: !keep },
      remaining(deadlineAt),
    ));
    const held = new Map<string, string>(); // transfer id → the peer's reservation id
    const writers = new Map<string, PartWriter[]>();
    const completed: string[] = [];
    try {
      const lent = new Map<string, PartSize[]>();
      ids.forEach((id, i) => {
        try {
          const reservation = checkReservation(prep.entries[i], id);
          held.set(id, reservation.id);
          lent.set(id, reservation.parts);
        } catch (err) {
          out.fail(id, err);
        }
      });
      // Room here, entry by entry (each may wait for eviction or room).
      await Promise.all(
        [...lent].map(async ([id, parts]) => {
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
      const plan = new BatchPlan("read");
      for (const [id, parts] of lent) {
        if (out.has(id)) {
          plan.skip(parts);
          continue;
        }
        try {
          plan.add(id, writers.get(id)!.flatMap((w) => (w.size > 0 ? this.o.engine.extentsOf(w.block) : [])), parts);
        } catch (err) {
          out.fail(id, err);
          plan.skip(parts);
        }
      }
      await plan.run(this.o.engine, peer.dataTarget, prep.batch, deadlineAt, out, lent.keys());
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
      // Awaited: when the batch answers, the source has dropped (or kept) its copies.
      await peer
        .call(
          KvFerryPeerService.finishSend,
          {
            completed: completed.map((id) => held.get(id)!),
            // Every other hold the peer made, however its answer went.
            failed: unclaimed(prep.entries, completed.map((id) => held.get(id)!)),
            releaseSource: !keep,
          },
          CLEANUP_TIMEOUT_MS,
        )
        .catch((err) => this.o.log.warn({ peer: peer.address, err: (err as Error).message }, "finishSend failed"));
    }
  }
}

/**
 * Staggers a batch's chunks: each asks for its reservation once the chunk before it has
 * its own (or STAGGER_MS have passed), so one chunk's bytes move while the next is being
 * reserved. Without it the chunks in flight run in lockstep — all reserve, then all move,
 * then all commit — and the data plane idles while they talk.
 */
class Stagger {
  #previous: Promise<unknown> = Promise.resolve();

  turn<T>(reserve: () => Promise<T>): Promise<T> {
    const before = this.#previous;
    const reserved = (async () => {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([before, new Promise<void>((resolve) => (timer = setTimeout(resolve, STAGGER_MS)))]);
      clearTimeout(timer);
      return reserve();
    })();
    this.#previous = reserved.catch(() => {});
    return reserved;
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

/** The reservation ids of a peer's answer that are not in `claimed`: what to give back. */
function unclaimed(entries: readonly (Reservation | undefined)[], claimed: readonly string[]): string[] {
  const keep = new Set(claimed);
  return entries.flatMap((r) => (r !== undefined && r.id !== "" && !keep.has(r.id) ? [r.id] : []));
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

/**
 * The local extents of a leased entry's parts in the order the peer lists them: the same
 * names and sizes on both sides, or UnavailableError.
 */
function localExtents(local: readonly ReadPart[], remote: readonly PartSize[], extentsOf: (block: Block) => readonly PoolExtent[]): PoolExtent[] {
  if (local.length !== remote.length) throw new UnavailableError(`peer reserved ${remote.length} parts, the entry has ${local.length}`);
  return remote.flatMap((r) => {
    const part = local.find((p) => p.name === r.name);
    if (part === undefined || part.size !== r.size) throw new UnavailableError(`peer reserved no part ${r.name} of ${r.size} bytes`);
    return part.size > 0 ? extentsOf(part.block) : [];
  });
}
