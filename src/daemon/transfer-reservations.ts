// The other side of a transfer: the room (PrepareReceive) or the copies (PrepareSend) this
// daemon holds for a peer that initiated a batch, exposed to it through one engine handle
// per batch (BatchHandle in peer.proto: every held entry's parts back to back), until the
// peer commits, aborts or finishes. The handle is revoked, once, by the first commit,
// abort or finish that names an entry of its batch (the initiator sends those when its
// ops are over), or by the batch's timer: if the initiator dies, its half of the work is
// undone at the deadline (plus a grace period) — a frame still arriving then is refused —
// and no pool byte leaks. Each entry is reserved or refused on its own.
import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import { InvalidArgumentError, NotFoundError } from "../errors.js";
import { grpcStatusOf } from "../grpc-errors.js";
import type {
  BatchHandle,
  CommitReceiveResponse,
  EntryError,
  IncomingEntry,
  PrepareReceiveRequest,
  PrepareReceiveResponse,
  PrepareSendRequest,
  PrepareSendResponse,
  Reservation,
} from "../gen/kvferry/v1/peer.js";
import type { TransferEngine } from "../engine/transfer-engine.js";
import type { LookupBuffer, PartWriter, ReadLease } from "../store/lookup-buffer.js";
import { checkLeaseTtl, checkPartName, checkTransferId } from "../store/validate.js";
import type { Block } from "../store/memory.js";

/** Most entries one batch (a BatchTransfer, or one peer request of it) holds. */
export const MAX_BATCH = 4096;
/** How long a reservation outlives the deadline its initiator announced. */
const RESERVATION_GRACE_MS = 5_000;
const MAX_RESERVATION_MS = 10 * 60_000;

/** One batch's handle, shared by its entries; revoked once. */
class BatchExposure {
  #revoked: Promise<void> | undefined;

  constructor(
    private readonly engine: TransferEngine,
    readonly handle: bigint,
  ) {}

  /** Resolves once no peer access to the batch is in flight (then its blocks may be freed). */
  revoke(): Promise<void> {
    return (this.#revoked ??= this.engine.revokeAll([this.handle]));
  }
}

interface Incoming {
  transferId: string;
  writers: PartWriter[];
  batch: BatchExposure | undefined;
}

interface Outgoing {
  transferId: string;
  lease: ReadLease;
  batch: BatchExposure | undefined;
}

export interface ReservationsOptions {
  store: LookupBuffer;
  engine: TransferEngine;
  log: Logger;
}

export class Reservations {
  readonly #incoming = new Map<string, Incoming>();
  readonly #outgoing = new Map<string, Outgoing>();

  constructor(private readonly o: ReservationsOptions) {}

  /** Reservations held for peers now. */
  get held(): { receives: number; sends: number } {
    return { receives: this.#incoming.size, sends: this.#outgoing.size };
  }

  async prepareReceive(req: PrepareReceiveRequest): Promise<PrepareReceiveResponse> {
    const holdMs = reservationMs(req.deadlineMs);
    const leaseTtlMs = checkLeaseTtl(req.leaseTtlMs);
    checkBatchSize(req.entries.length, "entries");
    const refuse = (entry: IncomingEntry, writers: PartWriter[], err: unknown): Reservation => {
      for (const w of writers) w.abort();
      return { transferId: entry.transferId, error: toEntryError(err), id: "", parts: [] };
    };
    // Room now (the common case) is taken synchronously, entry by entry; the entries
    // that must wait for room (like a put) do so afterwards, together.
    const held: (PartWriter[] | Reservation | undefined)[] = req.entries.map((entry) => {
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
        return writers;
      } catch (err) {
        return refuse(entry, writers, err);
      }
    });
    await Promise.all(
      held.map(async (done, index) => {
        if (done !== undefined) return;
        const entry = req.entries[index]!;
        const writers: PartWriter[] = [];
        try {
          for (const p of entry.parts) {
            writers.push(await this.o.store.openPart({ transferId: entry.transferId, part: p.name, leaseTtlMs }, p.size));
          }
          held[index] = writers;
        } catch (err) {
          held[index] = refuse(entry, writers, err);
        }
      }),
    );
    // Every reserved entry's parts behind one handle, in order.
    const reserved = held.flatMap((h, index) => (Array.isArray(h) ? [{ index, writers: h }] : []));
    let batch: BatchExposure | undefined;
    try {
      batch = this.#expose(reserved.flatMap((r) => r.writers.map((w) => w.block)), "write");
    } catch (err) {
      for (const r of reserved) held[r.index] = refuse(req.entries[r.index]!, r.writers, err);
      reserved.length = 0;
    }
    const batchId = randomUUID();
    const ids: string[] = [];
    for (const { index, writers } of reserved) {
      const entry = req.entries[index]!;
      const id = `${batchId}/${index}`;
      this.#incoming.set(id, { transferId: entry.transferId, writers, batch });
      ids.push(id);
      held[index] = { transferId: entry.transferId, id, parts: entry.parts.map((p) => ({ name: p.name, size: p.size })) };
    }
    // One timer for the batch: whatever is neither committed nor aborted by then is undone.
    this.#arm(ids, this.#incoming, holdMs, (left) => {
      this.o.log.warn({ entries: left.length, source: req.sourceNode }, "receive not committed in time: undone");
      void this.abortReceive(left);
    });
    return { entries: held as Reservation[], batch: batchOf(batch, reserved.flatMap((r) => r.writers)) };
  }

  async commitReceive(ids: readonly string[]): Promise<CommitReceiveResponse> {
    const taken = ids.map((id) => {
      const r = this.#incoming.get(id);
      this.#incoming.delete(id);
      return r;
    });
    // The sender says every byte landed; wait until no peer access is still in flight.
    await revokeBatches(taken);
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
    await revokeBatches(taken);
    for (const r of taken) for (const w of r.writers) w.abort();
  }

  async prepareSend(req: PrepareSendRequest): Promise<PrepareSendResponse> {
    const holdMs = reservationMs(req.deadlineMs);
    checkBatchSize(req.transferIds.length, "transfer_ids");
    const leases = await Promise.all(
      req.transferIds.map(async (requested): Promise<ReadLease | EntryError> => {
        try {
          const transferId = checkTransferId(requested);
          // Absent: NOT_FOUND now, so the other entries of the batch are not held back.
          const waitMs = this.o.store.has(transferId) ? Math.min(holdMs, req.deadlineMs) : 0;
          // To be dropped after the pull: held exclusively, so no consumer here gets it too.
          return await this.o.store.get({ transferId, waitMs, exclusive: req.releaseSource });
        } catch (err) {
          return toEntryError(err);
        }
      }),
    );
    const lent = leases.flatMap((l, index) => ("parts" in l ? [{ index, lease: l }] : []));
    let batch: BatchExposure | undefined;
    try {
      batch = this.#expose(lent.flatMap((l) => l.lease.parts.map((p) => p.block)), "read");
    } catch (err) {
      for (const l of lent) {
        l.lease.release(false);
        leases[l.index] = toEntryError(err);
      }
      lent.length = 0;
    }
    const batchId = randomUUID();
    const ids: string[] = [];
    const entries = leases.map((l, index): Reservation => {
      const transferId = req.transferIds[index]!;
      if (!("parts" in l)) return { transferId, error: l, id: "", parts: [] };
      const id = `${batchId}/${index}`;
      this.#outgoing.set(id, { transferId, lease: l, batch });
      ids.push(id);
      return { transferId, id, parts: l.parts.map((p) => ({ name: p.name, size: p.size })) };
    });
    this.#arm(ids, this.#outgoing, holdMs, (left) => {
      this.o.log.warn({ entries: left.length, destination: req.destinationNode }, "send not finished in time: released");
      void this.finishSend([], left, false);
    });
    return { entries, batch: batchOf(batch, lent.flatMap((l) => l.lease.parts)) };
  }

  async finishSend(completed: readonly string[], failed: readonly string[], releaseSource: boolean): Promise<void> {
    const take = (id: string) => {
      const s = this.#outgoing.get(id);
      this.#outgoing.delete(id);
      return s ? [s] : [];
    };
    const done = completed.flatMap(take);
    const undone = failed.flatMap(take);
    await revokeBatches([...done, ...undone]);
    for (const s of undone) s.lease.release(false);
    for (const s of done) {
      if (releaseSource) s.lease.releaseAndDrop("transferred");
      else s.lease.release(false);
    }
  }

  /** One handle over the blocks' extents in order; none when they hold no bytes. */
  #expose(blocks: readonly Block[], access: "read" | "write"): BatchExposure | undefined {
    const extents = blocks.flatMap((b) => (b.size > 0 ? this.o.engine.extentsOf(b) : []));
    if (extents.length === 0) return undefined;
    return new BatchExposure(this.o.engine, this.o.engine.exposeExtents(extents, access));
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

/** The wire form of a batch's handle over `held` (parts or writers, in order). */
function batchOf(batch: BatchExposure | undefined, held: readonly { size: number }[]): BatchHandle {
  return { handle: batch?.handle.toString() ?? "", size: held.reduce((sum, h) => sum + h.size, 0) };
}

/** Revokes the batches of `held` (each once) and resolves when no peer access to any is in flight. */
async function revokeBatches(held: readonly ({ batch: BatchExposure | undefined } | undefined)[]): Promise<void> {
  const batches = new Set<BatchExposure>();
  for (const h of held) if (h?.batch) batches.add(h.batch);
  await Promise.all([...batches].map((b) => b.revoke()));
}

function toEntryError(err: unknown): EntryError {
  return { code: grpcStatusOf(err), message: err instanceof Error ? err.message : String(err) };
}
