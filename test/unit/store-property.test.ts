// Randomized runs of the lookup buffer: random sequences of puts, part writers, seals,
// releases, gets (consuming or not, leases held for a while), stats, lists and clock
// advances over a small buffer, checking after every step that no byte is lost, counted
// twice or handed out twice, and that every byte read back is a byte that was written.
//
// Timing discipline (fake timers): every step starts at a time ≡ 0 (mod 4); lease TTLs are
// ≡ 0, put deadlines ≡ 2 and get waits ≡ 1 (mod 4). So when a put's deadline fires nothing
// else fires in that millisecond, and "the put timed out" can be checked against the room
// that was free at that moment.
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  AbortedError,
  AlreadyExistsError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  KvferryError,
  NotFoundError,
  ResourceExhaustedError,
} from "../../src/errors.js";
import type { EntryInfo } from "../../src/store/entry.js";
import type { LookupBuffer, PartWriter, ReadLease, RemovalEvent } from "../../src/store/lookup-buffer.js";
import type { HeapMemory } from "../../src/store/memory.js";
import { makeBuffer, pattern } from "./helpers/store.js";

const CAPACITY = 4096;
const IDS = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];
const PARTS = ["p0", "p1", "p2", "p3"];
const STEP_MS = 4;
const PUT_DEADLINE_MS = 42; // ≡ 2 (mod 4)
const DEFAULT_LEASE_MS = 800; // ≡ 0 (mod 4)
const LEASE_TTLS = [200, 800, 2000] as const;
const GET_WAITS = [0, 1, 9, 41, 161] as const; // 0 or ≡ 1 (mod 4)
const NUM_RUNS = 200;
const CONSUME_LEASE_MS = 400; // lapses happen within a run

type Finish = "commit" | "abort" | "short";

type Command =
  | { kind: "put"; id: string; part: string; size: number; seal: boolean; ttl: number | undefined }
  | { kind: "open"; id: string; part: string; size: number; seal: boolean; fraction: number; then: Finish | "keep" }
  | { kind: "finish"; index: number; action: Finish }
  | { kind: "seal"; id: string }
  | { kind: "release"; id: string }
  | { kind: "get"; id: string; parts: string[]; consume: boolean; waitMs: number; hold: boolean; completed: boolean }
  | { kind: "drop"; index: number; completed: boolean }
  | { kind: "stat"; id: string }
  | { kind: "list"; pageSize: number; state: "open" | "sealed" | undefined }
  | { kind: "advance"; ms: number };

// A few hot ids and parts, so that entries are written, read and removed again and again.
const id = fc.oneof({ arbitrary: fc.constantFrom(...IDS.slice(0, 3)), weight: 4 }, { arbitrary: fc.constantFrom(...IDS.slice(3)), weight: 1 });
const part = fc.oneof({ arbitrary: fc.constantFrom(...PARTS.slice(0, 2)), weight: 3 }, { arbitrary: fc.constantFrom(...PARTS.slice(2)), weight: 1 });
const partsToGet = fc.oneof(
  { arbitrary: fc.constant([] as string[]), weight: 3 },
  { arbitrary: part.map((p) => [p]), weight: 3 },
  { arbitrary: fc.subarray(PARTS, { minLength: 1 }), weight: 1 },
);
const seal = fc.oneof({ arbitrary: fc.constant(true), weight: 2 }, { arbitrary: fc.constant(false), weight: 3 });
const size = fc.oneof(fc.integer({ min: 0, max: 1500 }), fc.constantFrom(0, 1, 1500));

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant("put" as const), id, part, size, seal, ttl: fc.option(fc.constantFrom(...LEASE_TTLS), { nil: undefined }) }), weight: 6 },
  {
    arbitrary: fc.record({
      kind: fc.constant("open" as const),
      id,
      part,
      size,
      seal,
      fraction: fc.oneof(fc.double({ min: 0, max: 1, noNaN: true }), fc.constantFrom(0, 1)),
      then: fc.constantFrom("commit" as const, "abort" as const, "short" as const, "keep" as const, "keep" as const),
    }),
    weight: 4,
  },
  { arbitrary: fc.record({ kind: fc.constant("finish" as const), index: fc.nat(), action: fc.constantFrom("commit" as const, "abort" as const, "short" as const) }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant("seal" as const), id }), weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant("release" as const), id }), weight: 1 },
  {
    arbitrary: fc.record({
      kind: fc.constant("get" as const),
      id,
      parts: partsToGet,
      consume: fc.boolean(),
      waitMs: fc.constantFrom(...GET_WAITS),
      hold: fc.boolean(),
      completed: fc.boolean(),
    }),
    weight: 5,
  },
  { arbitrary: fc.record({ kind: fc.constant("drop" as const), index: fc.nat(), completed: fc.boolean() }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant("stat" as const), id }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant("list" as const), pageSize: fc.integer({ min: 1, max: 5 }), state: fc.constantFrom(undefined, "open" as const, "sealed" as const) }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant("advance" as const), ms: fc.integer({ min: 1, max: 60 }).map((k) => k * STEP_MS) }), weight: 3 },
);

const commandsArb = fc.array(commandArb, { minLength: 1, maxLength: 60, size: "max" });

function keyOf(transferId: string, createdAtMs: number): string {
  return `${transferId}@${createdAtMs}`;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

interface HeldLease {
  lease: ReadLease;
  key: string;
  /** Copies of the bytes read, taken when the read was checked. */
  snapshot: Map<string, Uint8Array> | undefined;
  allParts: boolean;
  consume: boolean;
  /** Release as soon as the read is checked (a get that does not hold its lease). */
  dropWhenChecked: boolean;
  completed: boolean;
}

interface OpenWriter {
  writer: PartWriter;
  key: string | undefined;
  part: string;
  data: Uint8Array;
}

/** Drives one LookupBuffer and keeps the model the checks compare it with. */
class Harness {
  readonly buf: LookupBuffer;
  readonly memory: HeapMemory;
  /** Problems found inside callbacks; reported by the next check. */
  readonly problems: string[] = [];
  /** Creation time of the entry each id names now (entries are told apart by id@createdAtMs). */
  readonly #identity = new Map<string, number>();
  /** How many of our calls, writers and leases hold each entry. */
  readonly #holders = new Map<string, number>();
  /** Bytes of removed entries, from onRemoved, for the ones still held. */
  readonly #removedBytes = new Map<string, number>();
  /** Committed bytes of every part of every entry: the model of the contents. */
  readonly #committed = new Map<string, Map<string, Uint8Array>>();
  readonly writers: OpenWriter[] = [];
  readonly leases: HeldLease[] = [];
  readonly #unchecked: HeldLease[] = [];
  /** Entries a seal was asked for (seal, or a put or part writer with seal): the only ones that may be evicted. */
  readonly #sealAsked = new Set<string>();
  /** Removals seen through onRemoved, by reason. */
  readonly #removals = new Map<string, number>();
  #serial = 0;
  readonly log: string[] = [];

  constructor(readonly checkLiveness: boolean) {
    const { buf, memory } = makeBuffer({
      capacity: CAPACITY,
      leaseTtlMs: DEFAULT_LEASE_MS,
      putDeadlineMs: PUT_DEADLINE_MS,
      getWaitMs: 41,
      recentlyRemoved: 4,
      maxWaiters: 10_000,
      consumeLeaseMs: CONSUME_LEASE_MS,
      onRemoved: (e) => this.#onRemoved(e),
    });
    this.buf = buf;
    this.memory = memory;
  }

  #onRemoved(e: RemovalEvent): void {
    const created = this.#identity.get(e.transferId);
    if (created === undefined) {
      this.problems.push(`removal of ${e.transferId}, an id never seen`);
      return;
    }
    const key = keyOf(e.transferId, created);
    this.#removedBytes.set(key, e.bytes);
    this.#removals.set(e.reason, (this.#removals.get(e.reason) ?? 0) + 1);
    if (e.reason === "evicted") {
      if (!this.#sealAsked.has(key)) this.problems.push(`evicted ${key}, which nobody ever asked to seal`);
      if (this.leases.some((l) => l.key === key)) this.problems.push(`evicted ${key} while a reader held it`);
      if (this.writers.some((w) => w.key === key)) this.problems.push(`evicted ${key} while a part writer was open on it`);
    }
  }

  /** The key of the entry indexed under `id` right now (recording it), if any. */
  #current(transferId: string): string | undefined {
    let info: EntryInfo;
    try {
      info = this.buf.stat(transferId);
    } catch {
      return undefined;
    }
    this.#identity.set(transferId, info.createdAtMs);
    return keyOf(transferId, info.createdAtMs);
  }

  #hold(key: string | undefined): void {
    if (key !== undefined) this.#holders.set(key, (this.#holders.get(key) ?? 0) + 1);
  }

  #unhold(key: string | undefined): void {
    if (key === undefined) return;
    const n = (this.#holders.get(key) ?? 0) - 1;
    if (n < 0) this.problems.push(`holder count of ${key} below zero`);
    if (n <= 0) this.#holders.delete(key);
    else this.#holders.set(key, n);
  }

  #record(info: EntryInfo, partName: string, data: Uint8Array): void {
    const key = keyOf(info.transferId, info.createdAtMs);
    let parts = this.#committed.get(key);
    if (parts === undefined) this.#committed.set(key, (parts = new Map()));
    if (parts.has(partName)) this.problems.push(`part ${partName} of ${key} committed twice`);
    parts.set(partName, data);
  }

  #expectError(what: string, err: unknown, allowed: (new (...args: never[]) => Error)[]): void {
    if (!(err instanceof KvferryError) || !allowed.some((c) => err instanceof c)) {
      this.problems.push(`${what} failed unexpectedly: ${err instanceof Error ? err.stack : String(err)}`);
      return;
    }
    if (this.checkLiveness && err instanceof ResourceExhaustedError) {
      const m = /needs (\d+) bytes, (\d+) free/.exec(err.message);
      if (m !== null && Number(m[2]) >= Number(m[1])) {
        this.problems.push(`${what} timed out although the room it needed was free: ${err.message}`);
      }
    }
  }

  #data(n: number): Uint8Array {
    return pattern(n, ++this.#serial);
  }

  /** Writes the rest of the part and commits; or aborts; or commits with a byte missing. */
  #finish(w: OpenWriter, action: Finish): void {
    const partName = w.part;
    try {
      if (action === "abort") {
        w.writer.abort();
      } else if (action === "short" && w.writer.written < w.writer.size) {
        try {
          w.writer.commit();
          this.problems.push(`a commit of ${w.writer.written}/${w.writer.size} bytes succeeded`);
        } catch (err) {
          this.#expectError("short commit", err, [InvalidArgumentError]);
        }
      } else {
        // The rest in two chunks.
        const middle = w.writer.written + Math.floor((w.data.length - w.writer.written) / 2);
        w.writer.write(w.data.subarray(w.writer.written, middle));
        w.writer.write(w.data.subarray(middle));
        this.#record(w.writer.commit(), partName, w.data);
      }
    } catch (err) {
      // The entry went away under the writer (released, expired): give the part back.
      this.#expectError(`finish ${partName}`, err, [NotFoundError, AbortedError]);
      w.writer.abort();
    }
    this.#unhold(w.key);
  }

  async step(c: Command): Promise<void> {
    this.log.push(JSON.stringify(c));
    const buf = this.buf;
    switch (c.kind) {
      case "put": {
        const data = this.#data(c.size);
        const p = buf.put({ transferId: c.id, part: c.part, seal: c.seal, leaseTtlMs: c.ttl }, data);
        const key = this.#current(c.id);
        if (c.seal && key !== undefined) this.#sealAsked.add(key);
        this.#hold(key);
        p.then(
          (info) => this.#record(info, c.part, data),
          (err) => this.#expectError(`put ${c.id}/${c.part}`, err, [FailedPreconditionError, AlreadyExistsError, ResourceExhaustedError, NotFoundError, AbortedError]),
        ).finally(() => this.#unhold(key));
        break;
      }
      case "open": {
        const data = this.#data(c.size);
        const p = buf.openPart({ transferId: c.id, part: c.part, seal: c.seal }, c.size);
        const key = this.#current(c.id);
        if (c.seal && key !== undefined) this.#sealAsked.add(key);
        this.#hold(key);
        p.then(
          (writer) => {
            const w: OpenWriter = { writer, key, part: c.part, data };
            this.#hold(key);
            try {
              writer.write(data.subarray(0, Math.floor(c.fraction * c.size)));
            } catch (err) {
              this.#expectError(`write ${c.id}/${c.part}`, err, [NotFoundError, AbortedError]);
              writer.abort();
              this.#unhold(key);
              return;
            }
            if (c.then === "keep") this.writers.push(w);
            else this.#finish(w, c.then);
          },
          (err) => this.#expectError(`openPart ${c.id}/${c.part}`, err, [FailedPreconditionError, AlreadyExistsError, ResourceExhaustedError, NotFoundError, AbortedError]),
        ).finally(() => this.#unhold(key));
        break;
      }
      case "finish": {
        if (this.writers.length === 0) break;
        const [w] = this.writers.splice(c.index % this.writers.length, 1);
        this.#finish(w!, c.action);
        break;
      }
      case "seal":
        try {
          const key = this.#current(c.id);
          if (key !== undefined) this.#sealAsked.add(key);
          const info = buf.seal(c.id);
          if (info.transferId !== c.id) this.problems.push("seal reported another entry");
        } catch (err) {
          this.#expectError(`seal ${c.id}`, err, [NotFoundError, AbortedError]);
        }
        break;
      case "release": {
        let before: EntryInfo | undefined;
        try {
          before = buf.stat(c.id);
        } catch {
          before = undefined;
        }
        try {
          const bytes = buf.release(c.id);
          if (before === undefined) this.problems.push(`release of absent ${c.id} succeeded`);
          else if (bytes !== before.bytes) this.problems.push(`release of ${c.id} returned ${bytes}, stat said ${before.bytes}`);
        } catch (err) {
          this.#expectError(`release ${c.id}`, err, [NotFoundError, AbortedError]);
          if (before !== undefined) this.problems.push(`release of present ${c.id} failed`);
        }
        break;
      }
      case "get": {
        let p: Promise<ReadLease>;
        try {
          p = buf.get({ transferId: c.id, parts: c.parts, consume: c.consume, waitMs: c.waitMs });
        } catch (err) {
          // A synchronous throw is its own bug (see store.test.ts); judge the error itself here.
          p = Promise.reject(err);
        }
        p.then(
          (lease) => {
            const key = keyOf(lease.entry.transferId, lease.entry.createdAtMs);
            this.#hold(key);
            const held: HeldLease = {
              lease,
              key,
              snapshot: undefined,
              allParts: c.parts.length === 0,
              consume: c.consume,
              dropWhenChecked: !c.hold,
              completed: c.completed,
            };
            // A consume whose hold lapsed no longer owns the entry: another may take it.
            if (c.consume && this.leases.some((l) => l.consume && l.key === key && !l.lease.lapsed!.aborted)) {
              this.problems.push(`two consuming gets of ${key} both got the entry`);
            }
            this.leases.push(held);
            this.#unchecked.push(held);
            if (lease.entry.transferId !== c.id) this.problems.push(`get of ${c.id} returned ${lease.entry.transferId}`);
          },
          (err) => this.#expectError(`get ${c.id}`, err, [NotFoundError, FailedPreconditionError, DeadlineExceededError, AbortedError]),
        );
        break;
      }
      case "drop": {
        if (this.leases.length === 0) break;
        const held = this.leases[c.index % this.leases.length]!;
        this.#drop(held, c.completed);
        break;
      }
      case "stat":
        try {
          const info = buf.stat(c.id);
          const sum = info.parts.reduce((s, p) => s + p.size, 0);
          if (sum !== info.bytes) this.problems.push(`stat ${c.id}: bytes ${info.bytes} but parts sum to ${sum}`);
        } catch (err) {
          this.#expectError(`stat ${c.id}`, err, [NotFoundError, AbortedError]);
        }
        break;
      case "list": {
        const seen: string[] = [];
        let pageToken = "";
        for (let pages = 0; ; pages++) {
          if (pages > IDS.length + 1) {
            this.problems.push("list does not end");
            break;
          }
          const page = buf.list({ pageSize: c.pageSize, pageToken, state: c.state });
          if (page.entries.length > c.pageSize) this.problems.push("list page larger than pageSize");
          for (const e of page.entries) {
            if (c.state !== undefined && e.state !== c.state) this.problems.push(`list state ${c.state} returned ${e.state}`);
            seen.push(e.transferId);
          }
          pageToken = page.nextPageToken;
          if (pageToken === "") break;
        }
        const expected = buf
          .list({ pageSize: 1000 })
          .entries.filter((e) => c.state === undefined || e.state === c.state)
          .map((e) => e.transferId);
        if (JSON.stringify(seen) !== JSON.stringify([...expected].sort())) {
          this.problems.push(`paged list ${JSON.stringify(seen)} differs from ${JSON.stringify(expected)}`);
        }
        break;
      }
      case "advance":
        await vi.advanceTimersByTimeAsync(c.ms);
        break;
    }
    await vi.advanceTimersByTimeAsync(STEP_MS);
    this.#checkReads();
    await vi.advanceTimersByTimeAsync(0);
    this.check();
  }

  #drop(held: HeldLease, completed: boolean): void {
    this.#verifySnapshot(held);
    const i = this.leases.indexOf(held);
    if (i >= 0) this.leases.splice(i, 1);
    held.lease.release(completed);
    this.#unhold(held.key);
    if (!held.consume || !completed) return;
    const transferId = held.lease.entry.transferId;
    try {
      this.buf.confirmConsume(transferId, held.lease.consumeToken!);
      if (this.#current(transferId) === held.key) this.problems.push(`${held.key} is still there after its consume was confirmed`);
    } catch (err) {
      // Refused only when the hold lapsed (given back) or the entry went (released, expired...,
      // perhaps replaced by a newer entry under the same id).
      this.#expectError(`confirm ${held.key}`, err, [FailedPreconditionError, NotFoundError, AbortedError]);
      if (err instanceof FailedPreconditionError && !held.lease.lapsed!.aborted && this.#current(transferId) === held.key) {
        this.problems.push(`the confirmation of ${held.key} was refused although its hold had not lapsed: ${err.message}`);
      }
    }
  }

  /** Every newly granted lease reads exactly the committed bytes of its entry. */
  #checkReads(): void {
    for (const held of this.#unchecked.splice(0)) {
      const model = this.#committed.get(held.key) ?? new Map<string, Uint8Array>();
      const names = held.lease.parts.map((p) => p.name);
      if (held.allParts && JSON.stringify([...names].sort()) !== JSON.stringify([...model.keys()].sort())) {
        this.problems.push(`get of all parts of ${held.key} returned ${JSON.stringify(names)}, committed ${JSON.stringify([...model.keys()])}`);
      }
      held.snapshot = new Map();
      for (const p of held.lease.parts) {
        const bytes = Uint8Array.from(p.view());
        held.snapshot.set(p.name, bytes);
        const expected = model.get(p.name);
        if (expected === undefined) this.problems.push(`read part ${p.name} of ${held.key}, which was never committed`);
        else if (!same(bytes, expected)) this.problems.push(`part ${p.name} of ${held.key} reads other bytes than were written`);
        if (p.size !== bytes.length) this.problems.push(`part ${p.name} size ${p.size} but ${bytes.length} bytes`);
      }
      if (held.dropWhenChecked) this.#drop(held, held.completed);
    }
  }

  #verifySnapshot(held: HeldLease): void {
    if (held.snapshot === undefined) return;
    for (const p of held.lease.parts) {
      if (!same(Uint8Array.from(p.view()), held.snapshot.get(p.name)!)) {
        this.problems.push(`bytes of ${p.name} of ${held.key} changed while a lease held them`);
      }
    }
  }

  /** The accounting invariants, checked between steps. */
  check(): void {
    const buf = this.buf;
    if (this.problems.length > 0) {
      throw new Error(`${this.problems.join("\n")}\nafter the steps:\n${this.log.join("\n")}`);
    }
    expect(buf.bytesUsed, "bytesUsed === accountedBytes()").toBe(buf.accountedBytes());
    expect(buf.bytesUsed).toBeLessThanOrEqual(buf.capacity);
    expect(buf.bytesUsed).toBe(this.memory.used);
    const c = buf.counters;
    expect({ evicted: c.evictions, expired: c.expiries, released: c.releases, consumed: c.consumed }, "counters = removals reported").toEqual({
      evicted: this.#removals.get("evicted") ?? 0,
      expired: this.#removals.get("expired") ?? 0,
      released: this.#removals.get("released") ?? 0,
      consumed: this.#removals.get("consumed") ?? 0,
    });

    const listed = buf.list({ pageSize: 1000 }).entries;
    expect(listed.length).toBe(buf.entryCount);
    let listedBytes = 0;
    const listedKeys = new Set<string>();
    for (const e of listed) {
      const sum = e.parts.reduce((s, p) => s + p.size, 0);
      expect(e.bytes, `bytes of ${e.transferId}`).toBe(sum);
      listedBytes += sum;
      listedKeys.add(keyOf(e.transferId, e.createdAtMs));
      expect(this.#identity.get(e.transferId), `${e.transferId} was created by a call the model saw`).toBe(e.createdAtMs);
    }
    let heldRemoved = 0;
    for (const [key, count] of this.#holders) {
      if (count > 0 && !listedKeys.has(key)) heldRemoved += this.#removedBytes.get(key) ?? 0;
    }
    expect(buf.bytesUsed, `used = listed parts (${listedBytes}) + removed entries still held (${heldRemoved})\n${this.log.join("\n")}`).toBe(
      listedBytes + heldRemoved,
    );
  }

  /** Lets go of everything and checks that every byte comes back. */
  async drain(): Promise<void> {
    for (const held of [...this.leases]) this.#drop(held, false);
    for (const w of this.writers.splice(0)) {
      w.writer.abort();
      this.#unhold(w.key);
    }
    await vi.advanceTimersByTimeAsync(1000);
    this.#checkReads();
    for (const held of [...this.leases]) this.#drop(held, false);
    for (const w of this.writers.splice(0)) {
      w.writer.abort();
      this.#unhold(w.key);
    }
    await vi.advanceTimersByTimeAsync(1000);
    for (const e of this.buf.list({ pageSize: 1000 }).entries) this.buf.release(e.transferId);
    this.check();
    expect(this.buf.entryCount).toBe(0);
    expect(this.buf.bytesUsed, "bytes left over after every holder let go").toBe(0);
    this.buf.close();
  }
}

async function run(commands: Command[], checkLiveness: boolean): Promise<void> {
  // Steps start at a multiple of STEP_MS (see the timing discipline above).
  vi.clearAllTimers();
  await vi.advanceTimersByTimeAsync((STEP_MS - (Date.now() % STEP_MS)) % STEP_MS);
  const h = new Harness(checkLiveness);
  for (const c of commands) await h.step(c);
  await h.drain();
}

describe("lookup buffer under random operations", () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 0 });
  });
  afterEach(() => {
    vi.clearAllTimers();
    vi.useRealTimers();
  });

  it("keeps byte accounting exact and reads back exactly the bytes written", async () => {
    await fc.assert(
      fc.asyncProperty(commandsArb, (commands) => run(commands, false)),
      { numRuns: NUM_RUNS },
    );
  });

  it("never times a put out while the room it needs is free", async () => {
    await fc.assert(
      fc.asyncProperty(commandsArb, (commands) => run(commands, true)),
      { numRuns: NUM_RUNS },
    );
  });
});
