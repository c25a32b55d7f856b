// The lookup buffer: entries by transfer id, bounded by the memory's capacity.
//
// Invariants (checked by the property test):
// - memory.used equals the sum of the footprints (sizes rounded to the memory's unit)
//   of every part of every entry that is indexed or retired (removed but still held by
//   a reader or writer);
// - a put whose footprint fits in the free plus the evictable bytes gets its room, and
//   eviction (least recently used first) stops as soon as the free bytes cover it: it
//   frees at most what is missing plus one entry (see eviction.ts);
// - at most maxEntries entries are indexed and no entry has more than maxPartsPerEntry
//   parts (stored or pending); a new entry evicts least-recently-used sealed, unheld
//   entries to stay within maxEntries;
// - the work of a put does not grow with the parts its entry already has;
// - an entry is evicted only when sealed and held by nobody;
// - every wait (for room, for parts, for the seal) has a deadline;
// - every removal is counted, remembered for a while, and reported through onRemoved;
// - at most one exclusive hold (a consume or a move) per entry; while it lasts nobody
//   else gets a lease, and it ends dropped (the entry goes) or returned (readable again);
// - a sealed entry has every part that was being written when the seal was asked for:
//   a part abandoned after that drops the whole entry as "incomplete".
import {
  AbortedError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  AlreadyExistsError,
  NotFoundError,
  OutOfRangeError,
  ResourceExhaustedError,
  type RemovalReason,
  InvalidArgumentError,
  type KvferryError,
} from "../errors.js";
import { Entry, isComplete, type EntryInfo, type Part } from "./entry.js";
import { tooManyParts, WaitingPutBudget, type StoreLimits } from "./limits.js";
import { DEFAULT_CONSUME_LEASE_MS, ExclusiveHold, type HoldPurpose, type ReturnCause } from "./exclusive-hold.js";
import { Eviction } from "./eviction.js";
import { GetWaiters } from "./get-waiters.js";
import { listPage, type ListOptions } from "./list-page.js";
import type { Block, Memory } from "./memory.js";
import { PartWriter, type PartOwner } from "./part-writer.js";
import { createReadLease, type ReadLease } from "./read-lease.js";
import { RecentlyRemoved } from "./recently-removed.js";
import { RoomQueue } from "./room-queue.js";
import {
  checkConsumeLease, checkLeaseTtl, checkPartList, checkPartName, checkTransferId, checkWait,
} from "./validate.js";

export { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, type ListOptions } from "./list-page.js";
export { PartWriter } from "./part-writer.js";
export type { ReadLease, ReadPart } from "./read-lease.js";

export interface LookupBufferOptions extends StoreLimits {
  memory: Memory;
  /** Lease of a new entry when the put names none. */
  leaseTtlMs: number;
  /** How long a put waits for room before RESOURCE_EXHAUSTED. */
  putDeadlineMs: number;
  /** How long a Get waits when the call names no wait. */
  getWaitMs: number;
  /** How many removed transfer ids (and why) are remembered. */
  recentlyRemoved: number;
  /** Bound on calls parked at once (puts waiting for room plus gets waiting for parts). */
  maxWaiters: number;
  /** How long a consume hold lasts unconfirmed (default and most a Get may ask for). */
  consumeLeaseMs?: number;
  onRemoved?: (event: RemovalEvent) => void;
  /** A consuming read gave its entry back (its call failed, or nobody confirmed in time). */
  onConsumeReturned?: (event: ConsumeReturnEvent) => void;
}

export interface ConsumeReturnEvent {
  transferId: string;
  cause: ReturnCause;
  /** How long the hold lasted. */
  heldMs: number;
}

export interface RemovalEvent {
  transferId: string;
  reason: RemovalReason;
  bytes: number;
}

export interface Counters {
  puts: number;
  gets: number;
  evictions: number;
  bytesEvicted: number;
  expiries: number;
  releases: number;
  consumed: number;
  transferred: number;
  putTimeouts: number;
  consumeReturns: number;
  consumeLapses: number;
  incomplete: number;
}

export interface PartTarget {
  transferId: string;
  part: string;
  seal?: boolean;
  leaseTtlMs?: number;
  /** Aborts a wait for room (the caller went away). */
  signal?: AbortSignal;
}

export interface GetOptions {
  transferId: string;
  /** Parts to read; empty or absent for all, which waits for the seal. */
  parts?: readonly string[];
  /**
   * A consuming read: takes the entry's exclusive hold; it is dropped on
   * `confirmConsume` with the lease's token, and given back if the read fails or the
   * hold lapses (`consumeLeaseMs`) unconfirmed.
   */
  consume?: boolean;
  /** With consume: the hold's lease, at most (and by default) the buffer's consumeLeaseMs. */
  consumeLeaseMs?: number;
  /** Takes the exclusive hold to move the entry away (ended by releaseAndDrop or release). */
  exclusive?: boolean;
  waitMs?: number;
  signal?: AbortSignal;
}

export class LookupBuffer implements PartOwner {
  readonly #memory: Memory;
  readonly #options: LookupBufferOptions;
  /** Indexed entries in least-recently-used order: first is the eviction candidate. */
  readonly #entries = new Map<string, Entry>();
  /** Removed entries whose memory a reader or writer still holds. */
  readonly #retired = new Set<Entry>();
  readonly #recent: RecentlyRemoved;
  readonly #room: RoomQueue;
  readonly #eviction: Eviction;
  readonly #getWaiters = new GetWaiters();
  /** Footprint of blocks allocated for puts that have not attached them to their entry yet. */
  #unattached = 0;
  readonly #waitingPuts: WaitingPutBudget;
  #closed = false;
  readonly counters: Counters = {
    puts: 0, gets: 0, evictions: 0, bytesEvicted: 0, expiries: 0, releases: 0, consumed: 0, transferred: 0,
    putTimeouts: 0, consumeReturns: 0, consumeLapses: 0, incomplete: 0,
  };
  readonly #consumeLeaseMs: number;

  constructor(options: LookupBufferOptions) {
    this.#options = options;
    this.#memory = options.memory;
    this.#recent = new RecentlyRemoved(options.recentlyRemoved);
    this.#eviction = new Eviction(this.#entries, this.#memory, (entry) => this.#remove(entry, "evicted"));
    this.#room = new RoomQueue((size) => this.#tryAllocate(size));
    this.#waitingPuts = new WaitingPutBudget(options.maxWaitingPutBytes);
    this.#consumeLeaseMs = options.consumeLeaseMs ?? DEFAULT_CONSUME_LEASE_MS;
  }

  get capacity(): number {
    return this.#memory.capacity;
  }

  get bytesUsed(): number {
    return this.#memory.used;
  }

  get entryCount(): number {
    return this.#entries.size;
  }

  /**
   * Footprint of the parts of indexed and retired entries, plus room granted to puts
   * that are about to attach it; equals bytesUsed at every moment.
   */
  accountedBytes(): number {
    let sum = this.#unattached;
    for (const e of this.#entries.values()) sum += e.footprint;
    for (const e of this.#retired) sum += e.footprint;
    return sum;
  }

  /** Bytes of whole-part puts waiting for room now (they count against maxWaitingPutBytes). */
  get waitingPutBytes(): number {
    return this.#waitingPuts.bytes;
  }

  /**
   * Stores one whole part. The caller holds `data` while the put waits for room, so the
   * wait counts against maxWaitingPutBytes: past it the put fails at once.
   */
  async put(target: PartTarget, data: Uint8Array): Promise<EntryInfo> {
    const writer = await this.#openPart(target, data.length, data.length);
    try {
      writer.write(data);
    } catch (err) {
      writer.abort();
      throw err;
    }
    return writer.commit();
  }

  /**
   * Reserves room for a part of `size` bytes and returns its writer. Waits up to the
   * put deadline for room, evicting least-recently-used sealed entries first.
   */
  openPart(target: PartTarget, size: number): Promise<PartWriter> {
    return this.#openPart(target, size, 0);
  }

  /** `held`: bytes the caller keeps in memory while it waits (budgeted). */
  async #openPart(target: PartTarget, size: number, held: number): Promise<PartWriter> {
    const { entry, name } = this.#beginPart(target, size);
    let block = this.#room.length === 0 ? this.#tryAllocate(size) : undefined;
    if (block === undefined) {
      const what = `part ${name} of ${entry.transferId}`;
      try {
        this.#waitingPuts.admit(held, what);
        try {
          block = await this.#reserve(size, what, target.signal);
        } finally {
          this.#waitingPuts.leave(held);
        }
      } catch (err) {
        // (a failed reservation holds no block)
        entry.pending.delete(name);
        this.#failIfSealRequested(entry, name);
        this.#writerLeft(entry);
        throw err;
      }
    }
    return this.#attach(entry, name, block, target.seal === true);
  }

  /**
   * openPart without waiting: the writer when room is there now (evicting if that
   * helps), undefined when the put would have to wait. Validation errors still throw.
   */
  openPartNow(target: PartTarget, size: number): PartWriter | undefined {
    const { entry, name } = this.#beginPart(target, size);
    const block = this.#room.length === 0 ? this.#tryAllocate(size) : undefined;
    if (block === undefined) {
      entry.pending.delete(name);
      this.#writerLeft(entry);
      return undefined;
    }
    return this.#attach(entry, name, block, target.seal === true);
  }

  /** Checks a part about to be written and registers its writer (creating the entry if absent). */
  #beginPart(target: PartTarget, size: number): { entry: Entry; name: string } {
    this.#checkOpen();
    const transferId = checkTransferId(target.transferId);
    const name = checkPartName(target.part);
    const leaseTtlMs = checkLeaseTtl(target.leaseTtlMs);
    if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError("size", `${size} is not a byte count`);
    if (size > this.#memory.capacity) {
      throw new OutOfRangeError(
        `part ${name} of ${transferId} is ${size} bytes; it can never fit in a buffer of ${this.#memory.capacity} bytes`,
      );
    }
    let entry = this.#entries.get(transferId);
    if (entry === undefined) {
      this.#eviction.makeRoomForEntry(transferId, this.#options.maxEntries);
      entry = new Entry(transferId, Date.now());
      this.#entries.set(transferId, entry);
      this.#recent.forget(transferId);
      this.#renewLease(entry, leaseTtlMs ?? this.#options.leaseTtlMs);
    } else {
      this.#checkWritable(entry, name);
      const parts = entry.parts.size + entry.pending.size;
      const maxParts = this.#options.maxPartsPerEntry;
      if (maxParts !== undefined && parts >= maxParts) throw tooManyParts(transferId, parts, maxParts);
      if (leaseTtlMs !== undefined) this.#renewLease(entry, leaseTtlMs);
    }
    entry.pending.add(name);
    entry.writers++;
    return { entry, name };
  }

  /** Gives a granted block to its part; fails if the entry went away meanwhile. */
  #attach(entry: Entry, name: string, block: Block, seal: boolean): PartWriter {
    entry.pending.delete(name);
    this.#unattached -= block.footprint;
    if (entry.removed !== undefined) {
      this.#memory.free(block);
      this.#room.wake();
      this.#writerLeft(entry);
      throw this.#goneError(entry.transferId, entry.removed);
    }
    const part: Part = { name, size: block.size, block, written: 0, committed: false };
    entry.parts.set(name, part);
    entry.bytes += block.size;
    entry.footprint += block.footprint;
    this.#touch(entry);
    return new PartWriter(this, entry, part, seal);
  }

  /**
   * Seals the entry, or, while parts are still arriving, seals it when the last one
   * lands (and drops it as incomplete if one of them is abandoned instead).
   */
  seal(transferId: string): EntryInfo {
    const entry = this.#indexed(checkTransferId(transferId));
    if (entry.state === "open") {
      entry.sealRequested = true;
      this.#sealIfSettled(entry);
    }
    return entry.info(Date.now());
  }

  /** Drops the entry now. Returns its bytes (freed at once, or when its last reader is done). */
  release(transferId: string, reason: "released" | "transferred" = "released"): number {
    const entry = this.#indexed(checkTransferId(transferId));
    const bytes = entry.bytes;
    this.#remove(entry, reason);
    return bytes;
  }

  /** Bytes of the entry indexed under this id now; 0 when there is none. */
  bytesOf(transferId: string): number {
    return this.#entries.get(transferId)?.bytes ?? 0;
  }

  /** Whether an entry of this id is indexed now. */
  has(transferId: string): boolean {
    return this.#entries.has(transferId);
  }

  stat(transferId: string): EntryInfo {
    return this.#indexed(checkTransferId(transferId)).info(Date.now());
  }

  list(options: ListOptions = {}): { entries: EntryInfo[]; nextPageToken: string } {
    return listPage(this.#entries, options);
  }

  /** Waits (bounded) until the named parts, or the seal, are there, then holds the entry for reading. */
  get(options: GetOptions): Promise<ReadLease> {
    try {
      return this.#get(options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  #get(options: GetOptions): Promise<ReadLease> {
    this.#checkOpen();
    const transferId = checkTransferId(options.transferId);
    const names = checkPartList(options.parts ?? []);
    const waitMs = checkWait(options.waitMs) ?? this.#options.getWaitMs;
    const purpose: HoldPurpose | undefined = options.consume === true ? "consume" : options.exclusive === true ? "move" : undefined;
    const holdMs = purpose === "consume" ? checkConsumeLease(options.consumeLeaseMs, this.#consumeLeaseMs) : undefined;
    const lease = (entry: Entry) => this.#lease(entry, names, purpose, holdMs);
    const ready = this.#readable(transferId, names);
    if (ready !== undefined) return Promise.resolve(lease(ready));
    if (waitMs === 0) return Promise.reject(this.#notReadyError(transferId, names));
    if (options.signal?.aborted) return Promise.reject(new CancelledError(`get of ${transferId} cancelled`));
    this.#checkWaiterRoom();

    return this.#getWaiters.wait(
      transferId,
      waitMs,
      options.signal,
      () => this.#readable(transferId, names),
      lease,
      () => new DeadlineExceededError(`waited ${waitMs} ms for ${transferId}: ${this.#notReadyError(transferId, names).message}`),
    );
  }

  /**
   * Ends a consuming read: its reader holds every byte, so the entry is dropped
   * ("consumed"). Returns the entry's bytes. Confirming again with the token that
   * consumed it is a no-op (0 bytes), so a reader may retry a confirmation whose reply
   * it lost.
   * @throws NotFoundError without such an entry; FailedPreconditionError when `token`
   * is not the token of the consume in progress (it lapsed, or its read failed).
   */
  confirmConsume(transferId: string, token: string): number {
    const id = checkTransferId(transferId);
    if (typeof token !== "string" || token.length === 0) throw new InvalidArgumentError("consume_token", "must not be empty");
    const entry = this.#entries.get(id);
    if (entry === undefined) {
      const gone = this.#recent.record(id);
      if (gone?.reason === "consumed" && gone.token === token) return 0;
      throw this.#absentError(id);
    }
    const hold = entry.hold;
    if (hold === undefined || hold.purpose !== "consume" || hold.token !== token) {
      throw new FailedPreconditionError(
        `consume_token: not the token of a consume in progress on entry ${id} ` +
          `(a consume whose hold lapsed or whose read failed gave the entry back)`,
      );
    }
    hold.end("dropped");
    const bytes = entry.bytes;
    this.#remove(entry, "consumed", { token });
    return bytes;
  }

  /** Rejects every parked call and stops every lease timer. Entries stay readable to holders. */
  close(): void {
    this.#closed = true;
    const err = new CancelledError("the daemon is shutting down");
    this.#room.rejectAll(err);
    this.#getWaiters.cancelAll(err);
    for (const entry of this.#entries.values()) {
      clearTimeout(entry.leaseTimer);
      clearTimeout(entry.hold?.timer);
    }
  }

  // ---- used by PartWriter ----------------------------------------------------------

  /** @internal A part is fully written: wakes readers, applies a seal asked for with it. */
  partLanded(entry: Entry, part: Part, seal: boolean): EntryInfo {
    if (entry.removed !== undefined) {
      // Removed while the part was being written: its bytes go with the entry.
      this.#writerLeft(entry);
      throw this.#goneError(entry.transferId, entry.removed);
    }
    this.counters.puts++;
    part.committed = true;
    if (seal) entry.sealRequested = true;
    // Wakes readers and parked puts; the entry may even be evicted at once once sealed.
    this.#writerLeft(entry);
    this.#notify(entry.transferId);
    return entry.info(Date.now(), part);
  }

  /**
   * @internal A part will never be complete: its bytes go back, readers never see it.
   * After a seal was asked for, the entry can never be complete either: it is dropped.
   */
  partAbandoned(entry: Entry, part: Part): void {
    if (entry.removed === undefined && entry.parts.get(part.name) === part) {
      entry.parts.delete(part.name);
      entry.bytes -= part.size;
      entry.footprint -= part.block.footprint;
      this.#memory.free(part.block);
      this.#room.wake();
    }
    this.#failIfSealRequested(entry, part.name);
    this.#writerLeft(entry);
  }

  // ---- internals ---------------------------------------------------------------------

  #checkOpen(): void {
    if (this.#closed) throw new CancelledError("the daemon is shutting down");
  }

  #checkWaiterRoom(): void {
    if (this.#room.length + this.#getWaiters.count >= this.#options.maxWaiters) {
      throw new ResourceExhaustedError(`${this.#options.maxWaiters} calls are already waiting; try again later`);
    }
  }

  #indexed(transferId: string): Entry {
    const entry = this.#entries.get(transferId);
    if (entry === undefined) throw this.#absentError(transferId);
    return entry;
  }

  #absentError(transferId: string): KvferryError {
    const reason = this.#recent.get(transferId);
    return reason === undefined ? new NotFoundError(`no entry ${transferId}`) : this.#goneError(transferId, reason);
  }

  /** NOT_FOUND with the reason; ABORTED naming the abandoned part for an incomplete entry. */
  #goneError(transferId: string, reason: RemovalReason): KvferryError {
    if (reason === "incomplete") {
      const detail = this.#recent.record(transferId)?.detail ?? "a part was abandoned after the seal";
      return new AbortedError(`entry ${transferId} is incomplete: ${detail}`);
    }
    return new NotFoundError(`entry ${transferId} was ${reason}`, reason);
  }

  /** A writer of `name` left without committing: after a seal was asked for, the entry can never be complete. */
  #failIfSealRequested(entry: Entry, name: string): void {
    if (!entry.sealRequested || entry.removed !== undefined) return;
    this.#remove(entry, "incomplete", { detail: `part ${name} was abandoned after the seal was asked for` });
  }

  #checkWritable(entry: Entry, name: string): void {
    if (entry.state === "sealed" || entry.sealRequested) {
      throw new FailedPreconditionError(`entry ${entry.transferId} is sealed; no more parts may be added`);
    }
    if (entry.hold !== undefined) {
      throw new FailedPreconditionError(`entry ${entry.transferId} is held by a reader; no more parts may be added`);
    }
    if (entry.hasPart(name)) throw new AlreadyExistsError(`entry ${entry.transferId} already has part ${name}`);
  }

  #touch(entry: Entry): void {
    entry.lastAccessMs = Date.now();
    this.#entries.delete(entry.transferId);
    this.#entries.set(entry.transferId, entry);
  }

  #renewLease(entry: Entry, ttlMs: number): void {
    clearTimeout(entry.leaseTimer);
    entry.leaseEndsAtMs = Date.now() + ttlMs;
    // A held entry expires when its hold is given back (#returnHold), never under its reader.
    entry.leaseTimer = setTimeout(() => entry.hold === undefined && this.#remove(entry, "expired"), ttlMs);
    entry.leaseTimer.unref();
  }

  /** Waits in the room queue (after an immediate attempt failed) up to the put deadline. */
  async #reserve(size: number, what: string, signal?: AbortSignal): Promise<Block> {
    this.#checkWaiterRoom();
    const deadlineMs = this.#options.putDeadlineMs;
    try {
      return await this.#room.wait(size, deadlineMs, signal);
    } catch (err) {
      if (err instanceof DeadlineExceededError) {
        this.counters.putTimeouts++;
        const free = this.#memory.capacity - this.#memory.used;
        const need = this.#memory.footprintOf(size);
        const rounding = need === size ? "" : ` (${need} in the pool)`;
        throw new ResourceExhaustedError(
          `no room for ${what}: needs ${size} bytes${rounding}, ${free} free of ${this.#memory.capacity} ` +
            `and nothing more can be evicted (waited ${deadlineMs} ms)`,
        );
      }
      throw err;
    }
  }

  /** Allocates (counted as unattached until the put attaches it), evicting if that can make room. */
  #tryAllocate(size: number): Block | undefined {
    const block = this.#eviction.allocate(size);
    if (block !== undefined) this.#unattached += block.footprint;
    return block;
  }

  #remove(entry: Entry, reason: RemovalReason, note: { token?: string; detail?: string } = {}): void {
    if (entry.removed !== undefined) return;
    const bytes = entry.bytes;
    entry.removed = reason;
    clearTimeout(entry.leaseTimer);
    entry.hold?.end("dropped");
    entry.hold = undefined;
    this.#entries.delete(entry.transferId);
    this.#recent.add(entry.transferId, reason, note);
    switch (reason) {
      case "evicted":
        this.counters.evictions++;
        this.counters.bytesEvicted += bytes;
        break;
      case "expired": this.counters.expiries++; break;
      case "released": this.counters.releases++; break;
      case "consumed": this.counters.consumed++; break;
      case "transferred": this.counters.transferred++; break;
      case "incomplete": this.counters.incomplete++; break;
    }
    if (entry.holds === 0) this.#free(entry);
    else this.#retired.add(entry);
    this.#notify(entry.transferId);
    this.#options.onRemoved?.({ transferId: entry.transferId, reason, bytes });
  }

  #free(entry: Entry): void {
    for (const part of entry.parts.values()) this.#memory.free(part.block);
    entry.parts.clear();
    entry.bytes = 0;
    entry.footprint = 0;
    this.#retired.delete(entry);
    this.#room.wake();
  }

  /** A reader or writer let go: free a removed entry, drop an empty one, seal a settled one. */
  #released(entry: Entry): void {
    if (entry.removed !== undefined) {
      if (entry.holds === 0 && this.#retired.has(entry)) this.#free(entry);
      return;
    }
    if (entry.parts.size === 0 && entry.holds === 0 && entry.pending.size === 0 && !entry.sealRequested) {
      // Created by a put that never stored anything: it never existed for anyone else.
      clearTimeout(entry.leaseTimer);
      this.#entries.delete(entry.transferId);
      return;
    }
    this.#sealIfSettled(entry);
    if (entry.evictable) this.#room.wake();
  }

  #writerLeft(entry: Entry): void {
    entry.writers--;
    this.#released(entry);
  }

  #sealIfSettled(entry: Entry): void {
    if (entry.state !== "open" || !entry.sealRequested || entry.writers > 0 || entry.removed !== undefined) return;
    entry.state = "sealed";
    this.#notify(entry.transferId);
    if (entry.evictable) this.#room.wake();
  }

  #notify(transferId: string): void {
    this.#getWaiters.notify(transferId);
  }

  /** The entry if it can be read now, undefined to keep waiting; throws when it never will be. */
  #readable(transferId: string, names: readonly string[]): Entry | undefined {
    const entry = this.#entries.get(transferId);
    if (entry === undefined) {
      const reason = this.#recent.get(transferId);
      if (reason !== undefined) throw this.#goneError(transferId, reason);
      return undefined;
    }
    // Held by a consumer or a move: wait for the outcome (dropped, or given back).
    if (entry.hold !== undefined) return undefined;
    if (names.length === 0) return entry.state === "sealed" ? entry : undefined;
    for (const name of names) {
      const part = entry.parts.get(name);
      if (part !== undefined && isComplete(part)) continue;
      if (entry.state === "sealed") throw new NotFoundError(`entry ${transferId} is sealed and has no part ${name}`);
      return undefined;
    }
    return entry;
  }

  #notReadyError(transferId: string, names: readonly string[]): KvferryError {
    const entry = this.#entries.get(transferId);
    if (entry === undefined) return this.#absentError(transferId);
    if (entry.hold !== undefined) return new AbortedError(entry.hold.describe(transferId));
    if (names.length === 0) return new FailedPreconditionError(`entry ${transferId} is not sealed yet`);
    const missing = names.filter((n) => {
      const part = entry.parts.get(n);
      return part === undefined || !isComplete(part);
    });
    return new NotFoundError(`entry ${transferId} has no complete part ${missing.join(", ")} yet`);
  }

  #lease(entry: Entry, names: readonly string[], purpose: HoldPurpose | undefined, holdMs: number | undefined): ReadLease {
    const parts = names.length === 0 ? [...entry.parts.values()] : names.map((n) => entry.parts.get(n)!);
    entry.readers++;
    let hold: ExclusiveHold | undefined;
    if (purpose !== undefined) {
      hold = entry.hold = new ExclusiveHold(purpose, holdMs, Date.now());
      if (holdMs !== undefined) {
        const held = hold;
        held.timer = setTimeout(() => entry.hold === held && this.#returnHold(entry, "lapsed"), holdMs);
        held.timer.unref();
      }
    }
    this.counters.gets++;
    this.#touch(entry);
    return createReadLease(entry, parts, hold, {
      readerLeft: (e, h, delivered) => {
        e.readers--;
        if (h !== undefined && e.hold === h) {
          // A consume whose bytes went out waits for its confirmation; anything else gives the entry back.
          if (h.purpose === "consume" && delivered) h.state = "delivered";
          else this.#returnHold(e, "failed");
        }
        this.#released(e);
      },
      readerMoved: (e, _h, reason) => {
        const current = e.removed === undefined && this.#entries.get(e.transferId) === e;
        e.readers--;
        // Removed with its hold still on: waiters learn "transferred", never get it.
        if (current) this.#remove(e, reason);
        this.#released(e);
      },
    });
  }

  /** Ends the entry's hold and makes the entry readable again (or expires it, if its lease ran out meanwhile). */
  #returnHold(entry: Entry, cause: ReturnCause): void {
    const hold = entry.hold!;
    hold.end("returned", cause);
    entry.hold = undefined;
    if (hold.purpose === "consume") {
      this.counters.consumeReturns++;
      if (cause === "lapsed") this.counters.consumeLapses++;
      this.#options.onConsumeReturned?.({ transferId: entry.transferId, cause, heldMs: Date.now() - hold.startedAtMs });
    }
    if (entry.leaseEndsAtMs <= Date.now()) {
      this.#remove(entry, "expired");
      return;
    }
    this.#notify(entry.transferId);
    if (entry.evictable) this.#room.wake();
  }
}
