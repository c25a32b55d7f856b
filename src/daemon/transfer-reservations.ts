// The other side of a transfer: the room (PrepareReceive) or the copies (PrepareSend) this
// daemon holds for a peer that initiated a batch, exposed to it through engine handles,
// until the peer commits, aborts or finishes. Every batch of reservations carries a timer:
// if the initiator dies, its half of the work is undone at the deadline (plus a grace
// period) and no pool byte leaks. Each entry is reserved or refused on its own.
import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import { InvalidArgumentError, NotFoundError } from "../errors.js";
import { grpcStatusOf } from "../grpc-errors.js";
import type {
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
import { toExposedPart } from "./part-segments.js";

/** Most entries one batch (a BatchTransfer, or one peer request of it) holds. */
export const MAX_BATCH = 4096;
/** How long a reservation outlives the deadline its initiator announced. */
const RESERVATION_GRACE_MS = 5_000;
const MAX_RESERVATION_MS = 10 * 60_000;

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
    const batchId = randomUUID();
    const ids: string[] = [];
    const reserve = (entry: IncomingEntry, index: number, writers: PartWriter[]): Reservation => {
      const handles = writers.map((w) => (w.size > 0 ? this.o.engine.exposeSegments(w.block, "write") : []));
      const id = `${batchId}/${index}`;
      this.#incoming.set(id, { transferId: entry.transferId, writers, handles: handles.flat() });
      ids.push(id);
      return {
        transferId: entry.transferId,
        id,
        parts: writers.map((w, i) => toExposedPart(entry.parts[i]!.name, w.size, this.o.engine.extentsOf(w.block), handles[i]!)),
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
          const handles = lease.parts.map((p) => (p.size > 0 ? this.o.engine.exposeSegments(p.block, "read") : []));
          const id = `${batchId}/${index}`;
          this.#outgoing.set(id, { transferId, lease, handles: handles.flat() });
          ids.push(id);
          return {
            transferId,
            id,
            parts: lease.parts.map((p, i) => toExposedPart(p.name, p.size, this.o.engine.extentsOf(p.block), handles[i]!)),
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
