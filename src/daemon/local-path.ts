// The local path's control side: clients on this node that mapped the pool (the memfd the
// local socket hands out, native/engine/local/) write and read entries in place; these
// calls only say where. A reservation is a set of part writers (the store's own, as a
// PutStream holds) whose extents the client writes; a loan is a read lease (as a Get
// holds) whose extents the client reads. Each lives until the client ends it or its lease
// lapses: a client that dies frees what it held then, never before — the pool does not
// reuse a block while a writer or a reader holds it.
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import { CancelledError, InvalidArgumentError, NotFoundError, ResourceExhaustedError } from "../errors.js";
import type { PartExtents } from "../gen/kvferry/v1/kvferry.js";
import type { Block } from "../store/memory.js";
import type { EntryInfo } from "../store/entry.js";
import type { LookupBuffer, PartWriter, ReadLease } from "../store/lookup-buffer.js";
import { checkConsumeLease, checkLeaseTtl, checkPartList, checkPartName, checkTransferId, checkWait } from "../store/validate.js";

/** At most this many reservations and loans at once (each holds memory until it ends or lapses). */
const MAX_OPEN = 65_536;
/** The longest a reservation or a non-consuming loan may ask for. */
const MAX_TTL_MS = 10 * 60_000;

export interface LocalPathOptions {
  store: LookupBuffer;
  log: Logger;
  /** The pool's extents of a block (TransferEngine.extentsOf). */
  extentsOf(block: Block): readonly { offset: number; length: number }[];
  /** A reservation's default lease (the daemon's lease_ttl_ms). */
  reservationTtlMs: number;
  /** A loan's default and, for a consuming loan, its longest lease (consume_lease_ms). */
  consumeLeaseMs: number;
}

interface Reservation {
  transferId: string;
  /** When its entry was created: an entry of the same id made since is another one. */
  createdAtMs: number;
  writers: Map<string, PartWriter>;
  timer: NodeJS.Timeout;
}

interface Loan {
  lease: ReadLease;
  timer: NodeJS.Timeout;
}

export class LocalPath {
  /** Changes with every start: extents are offsets into this pool only. */
  readonly poolId = randomBytes(8).toString("hex");
  readonly #reservations = new Map<string, Reservation>();
  readonly #loans = new Map<string, Loan>();

  constructor(private readonly o: LocalPathOptions) {}

  /** Room for the parts, as PutStream's header makes it; the client writes their extents. */
  async reserve(r: {
    transferId: string;
    parts: readonly { name: string; size: number }[];
    leaseTtlMs?: number;
    reservationTtlMs?: number;
    /** The caller went away: a wait for room ends, and no reservation is made for nobody. */
    signal?: AbortSignal;
  }): Promise<{ reservationId: string; parts: PartExtents[] }> {
    const transferId = checkTransferId(r.transferId);
    if (r.parts.length === 0) throw new InvalidArgumentError("parts", "name at least one part to reserve");
    const names = new Set<string>();
    r.parts.forEach((p, i) => {
      checkPartName(p.name, `parts[${i}].name`);
      if (names.has(p.name)) throw new InvalidArgumentError(`parts[${i}].name`, `${JSON.stringify(p.name)} is named twice`);
      names.add(p.name);
      if (!Number.isSafeInteger(p.size) || p.size < 0) throw new InvalidArgumentError(`parts[${i}].size`, `${p.size} is not a size in bytes`);
    });
    const leaseTtlMs = checkLeaseTtl(r.leaseTtlMs);
    const ttlMs = this.#ttl(r.reservationTtlMs, "reservation_ttl_ms", this.o.reservationTtlMs, MAX_TTL_MS);
    this.#checkRoomForOne();
    const writers = new Map<string, PartWriter>();
    try {
      for (const p of r.parts) {
        writers.set(p.name, await this.o.store.openPart({ transferId, part: p.name, leaseTtlMs, signal: r.signal }, p.size));
        if (r.signal?.aborted) throw new CancelledError(`reserve of ${transferId} cancelled`);
      }
    } catch (err) {
      for (const w of writers.values()) w.abort();
      throw err;
    }
    const reservationId = randomBytes(12).toString("hex");
    const timer = setTimeout(() => this.#lapseReservation(reservationId), ttlMs);
    timer.unref();
    const { createdAtMs } = this.o.store.stat(transferId);
    this.#reservations.set(reservationId, { transferId, createdAtMs, writers, timer });
    return { reservationId, parts: [...writers].map(([name, w]) => this.#extents(name, w.size, w.block)) };
  }

  /** Written parts become readable; one with fewer bytes than reserved is abandoned. */
  commit(r: { reservationId: string; parts: readonly { name: string; bytes: number }[]; seal: boolean }): EntryInfo {
    const reservation = this.#reservation(r.reservationId);
    // Every name first: a commit naming a part that is not (or no longer) reserved commits none.
    const named = new Set<string>();
    r.parts.forEach((p, i) => {
      if (!reservation.writers.has(p.name) || named.has(p.name)) {
        throw new NotFoundError(`parts[${i}].name: ${JSON.stringify(p.name)} is not an uncommitted part of reservation ${r.reservationId}`);
      }
      named.add(p.name);
    });
    let info: EntryInfo | undefined;
    try {
      r.parts.forEach((p, i) => {
        const writer = reservation.writers.get(p.name)!;
        reservation.writers.delete(p.name);
        if (p.bytes !== writer.size) {
          writer.abort();
          throw new InvalidArgumentError(`parts[${i}].bytes`, `part ${p.name}: ${p.bytes} bytes written of the ${writer.size} reserved; the part is abandoned`);
        }
        writer.landed();
        info = writer.commit();
      });
      if (r.seal) info = this.o.store.seal(reservation.transferId);
    } finally {
      // No part left (even after a failure): the reservation is over; a lapse must not
      // drop the entry with the parts that were committed.
      if (reservation.writers.size === 0) this.#endReservation(r.reservationId);
    }
    return info ?? this.o.store.stat(reservation.transferId);
  }

  /** Abandons what is not committed, and drops the entry unless it is sealed. */
  abort(reservationId: string): void {
    const reservation = this.#reservation(reservationId);
    this.#endReservation(reservationId);
    this.#abandon(reservation);
  }

  /** Holds an entry's parts for reading in place, as a Get does. */
  async lend(r: {
    transferId: string;
    parts: readonly string[];
    waitMs?: number;
    consume: boolean;
    loanTtlMs?: number;
    signal?: AbortSignal;
  }): Promise<{ loanId: string; lease: ReadLease; parts: PartExtents[] }> {
    const transferId = checkTransferId(r.transferId);
    const parts = checkPartList(r.parts);
    const waitMs = checkWait(r.waitMs);
    const ttlMs = r.consume
      ? checkConsumeLease(r.loanTtlMs, this.o.consumeLeaseMs, "loan_ttl_ms")
      : this.#ttl(r.loanTtlMs, "loan_ttl_ms", this.o.consumeLeaseMs, MAX_TTL_MS);
    this.#checkRoomForOne();
    const lease = await this.o.store.get({ transferId, parts, waitMs, consume: r.consume, consumeLeaseMs: ttlMs, signal: r.signal });
    const loanId = randomBytes(12).toString("hex");
    const timer = setTimeout(() => this.#lapseLoan(loanId), ttlMs);
    timer.unref();
    this.#loans.set(loanId, { lease, timer });
    return { loanId, lease, parts: lease.parts.map((p) => this.#extents(p.name, p.size, p.block)) };
  }

  /** Ends a loan; a consuming one drops its entry when `consumed`, else gives it back. */
  returnLoan(loanId: string, consumed: boolean): void {
    const loan = this.#takeLoan(loanId);
    if (loan === undefined) throw new NotFoundError(`loan_id: no loan ${JSON.stringify(loanId)} (returned already, or its lease lapsed)`);
    const token = loan.lease.consumeToken;
    if (token === undefined) {
      loan.lease.release();
      return;
    }
    loan.lease.release(consumed);
    if (consumed) this.o.store.confirmConsume(loan.lease.entry.transferId, token);
  }

  /** Reservations and loans held now. */
  get open(): { reservations: number; loans: number } {
    return { reservations: this.#reservations.size, loans: this.#loans.size };
  }

  /** Ends every reservation (abandoned) and loan (given back): the daemon stops. */
  close(): void {
    for (const id of [...this.#reservations.keys()]) this.abort(id);
    for (const id of [...this.#loans.keys()]) this.#takeLoan(id)!.lease.release(false);
  }

  #extents(name: string, size: number, block: Block): PartExtents {
    return { name, size, extents: this.o.extentsOf(block).map((e) => ({ offset: e.offset, length: e.length })) };
  }

  #reservation(reservationId: string): Reservation {
    const reservation = this.#reservations.get(reservationId);
    if (reservation === undefined) {
      throw new NotFoundError(`reservation_id: no reservation ${JSON.stringify(reservationId)} (committed or aborted already, or its lease lapsed)`);
    }
    return reservation;
  }

  /** The reservation, out of the table with its timer stopped; undefined when it is over. */
  #endReservation(reservationId: string): Reservation | undefined {
    const reservation = this.#reservations.get(reservationId);
    if (reservation === undefined) return undefined;
    clearTimeout(reservation.timer);
    this.#reservations.delete(reservationId);
    return reservation;
  }

  /** The loan, out of the table with its timer stopped; undefined when it is over. */
  #takeLoan(loanId: string): Loan | undefined {
    const loan = this.#loans.get(loanId);
    if (loan === undefined) return undefined;
    clearTimeout(loan.timer);
    this.#loans.delete(loanId);
    return loan;
  }

  #abandon(reservation: Reservation): void {
    for (const w of reservation.writers.values()) w.abort();
    reservation.writers.clear();
    try {
      // Never another entry that took the id since (this one was released, then reused).
      const now = this.o.store.stat(reservation.transferId);
      if (now.state !== "sealed" && now.createdAtMs === reservation.createdAtMs) this.o.store.release(reservation.transferId);
    } catch {
      // gone already (dropped as incomplete when a part was abandoned after its seal)
    }
  }

  #lapseReservation(reservationId: string): void {
    const reservation = this.#endReservation(reservationId);
    if (reservation === undefined) return;
    this.o.log.warn({ transferId: reservation.transferId, parts: [...reservation.writers.keys()] }, "a local reservation lapsed uncommitted: its parts are abandoned");
    this.#abandon(reservation);
  }

  #lapseLoan(loanId: string): void {
    const loan = this.#takeLoan(loanId);
    if (loan === undefined) return;
    this.o.log.warn({ transferId: loan.lease.entry.transferId }, "a local loan lapsed unreturned: the entry's parts are free again");
    loan.lease.release(false);
  }

  #ttl(value: number | undefined, field: string, fallback: number, max: number): number {
    if (value === undefined) return Math.min(fallback, max);
    if (!Number.isInteger(value) || value < 1 || value > max) throw new InvalidArgumentError(field, `${value} must be 1 to ${max} milliseconds`);
    return value;
  }

  #checkRoomForOne(): void {
    if (this.#reservations.size + this.#loans.size >= MAX_OPEN) {
      throw new ResourceExhaustedError(`this daemon holds ${MAX_OPEN} local reservations and loans, its maximum: commit, abort or return some first`);
    }
  }
}
