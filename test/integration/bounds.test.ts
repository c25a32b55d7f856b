// The store's bounds against real daemons: max_entries, max_parts_per_entry,
// max_waiting_put_bytes, and a put whose cost does not grow with its entry's parts.
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { KvferryClient } from "../../src/client/client.js";
import type { PutResponse } from "../../src/gen/kvferry/v1/kvferry.js";
import {
  MiB,
  expectSameBytes,
  expectStatus,
  listAll,
  pattern,
  rawUnary,
  startDaemon,
  type Outcome,
  type TestDaemon,
} from "../helpers/daemon.js";

const MAX_ENTRIES = 20;
const MAX_PARTS = 3;
const WAITING_BUDGET = 1536 * 1024;

/** Few entries, few parts per entry. */
let counts: TestDaemon;
/** A 4 MiB pool whose unary puts may hold 1.5 MiB while they wait (up to 20 s) for room. */
let waiting: TestDaemon;

beforeAll(async () => {
  [counts, waiting] = await Promise.all([
    startDaemon([
      "--kv-buffer-size", "4MiB", "--max-entries", String(MAX_ENTRIES), "--max-parts-per-entry", String(MAX_PARTS),
    ]),
    startDaemon([
      "--kv-buffer-size", "4MiB", "--put-deadline-ms", "20000", "--max-waiting-put-bytes", String(WAITING_BUDGET),
    ]),
  ]);
});

afterAll(async () => {
  const codes = await Promise.all([counts?.stop(), waiting?.stop()]);
  expect(codes).toEqual([0, 0]);
});

async function empty(c: KvferryClient): Promise<void> {
  for (const e of await listAll(c)) await c.release(e.transferId).catch(() => undefined);
  expect((await c.serverInfo()).entries).toBe(0);
}

/** A unary Put whatever the size (the typed client streams big parts). */
function rawPut(d: TestDaemon, transferId: string, part: string, data: Buffer, seal = false, timeoutMs = 30_000) {
  return rawUnary<PutResponse>(
    (md, opts, cb) => d.client.raw.put({ transferId, part, data, seal }, md, opts, cb),
    timeoutMs,
  );
}

describe("max_entries", () => {
  beforeEach(() => empty(counts.client));

  it("refuses the put of a new entry past max_entries with RESOURCE_EXHAUSTED naming the limit, and keeps serving", async () => {
    const c = counts.client;
    for (let i = 0; i < MAX_ENTRIES; i++) await c.put(`e-${i}`, "p", pattern(100, i)); // open: never evicted
    const refused = await rawPut(counts, "one-too-many", "p", pattern(100, 99));
    expectStatus(refused, status.RESOURCE_EXHAUSTED, new RegExp(`max_entries ${MAX_ENTRIES}\\b`));
    // Still up and whole: every entry is there, readable, and a part may still join one.
    const info = await c.serverInfo();
    expect(info.entries).toBe(MAX_ENTRIES);
    expectSameBytes((await c.get("e-7", { parts: ["p"], waitMs: 0 })).parts.get("p"), pattern(100, 7));
    await c.put("e-7", "q", pattern(10, 1));
    expect(counts.proc.child.exitCode).toBeNull();
  });

  it("evicts the least recently used sealed entry to make room for a new one", async () => {
    const c = counts.client;
    for (let i = 0; i < MAX_ENTRIES; i++) await c.put(`e-${i}`, "p", pattern(100, i), { seal: i === 3 || i === 7 });
    await c.get("e-3", { waitMs: 0 }); // e-7 is now the least recently used sealed entry
    const evictionsBefore = (await c.serverInfo()).counters!.evictions;
    await c.put("newcomer", "p", pattern(100, 50));
    const after = await c.serverInfo();
    expect(after.entries).toBe(MAX_ENTRIES);
    expect(after.counters!.evictions).toBe(evictionsBefore + 1);
    const gone = await rawUnary((md, opts, cb) => c.raw.stat({ transferId: "e-7" }, md, opts, cb));
    expectStatus(gone, status.NOT_FOUND, /evicted/);
    expect((await c.stat("e-3")).state).toBeDefined();
  });
});

describe("max_parts_per_entry", () => {
  beforeEach(() => empty(counts.client));

  it("refuses one part too many with RESOURCE_EXHAUSTED naming the limit, keeping the parts already there", async () => {
    const c = counts.client;
    for (let i = 0; i < MAX_PARTS; i++) await c.put("layers", `layer.${i}`, pattern(10, i));
    const refused = await rawPut(counts, "layers", `layer.${MAX_PARTS}`, pattern(10, 9));
    expectStatus(refused, status.RESOURCE_EXHAUSTED, new RegExp(`max_parts_per_entry is ${MAX_PARTS}\\b`));
    const info = await c.stat("layers");
    expect(info.partCount).toBe(MAX_PARTS);
    expect(info.parts.map((p) => p.name)).toEqual(["layer.0", "layer.1", "layer.2"]);
  });
});

describe("max_waiting_put_bytes", () => {
  beforeEach(() => empty(waiting.client));

  it("fails a unary put at once with RESOURCE_EXHAUSTED naming the budget when waiting would pass it", async () => {
    const c = waiting.client;
    // A full pool of an open entry: nothing can be evicted, puts must wait.
    for (let i = 0; i < 4; i++) await c.put("full", `p${i}`, pattern(MiB, i));
    expect((await c.serverInfo()).bytesUsed).toBe(4 * MiB);
    // Two 1 MiB puts: one may wait (1 MiB of a 1.5 MiB budget), the other may not.
    const puts = [rawPut(waiting, "w-a", "p", pattern(MiB, 10)), rawPut(waiting, "w-b", "p", pattern(MiB, 11))];
    const first = await Promise.race(puts.map((p, i) => p.then((o) => ({ i, o }))));
    // It settles long before the 20 s put deadline (or this test's timeout would end it first).
    expectStatus(first.o, status.RESOURCE_EXHAUSTED, new RegExp(`max_waiting_put_bytes is ${WAITING_BUDGET}\\b`));
    await c.release("full");
    const other: Outcome<PutResponse> = await puts[1 - first.i]!;
    expect(other.ok, other.ok ? "" : other.error.details).toBe(true);
    expect((await c.serverInfo()).bytesUsed).toBe(MiB);
  }, 15_000);
});

describe("a put's cost does not grow with the entry's parts", () => {
  beforeEach(() => empty(waiting.client));

  it("each PutResponse lists only the part it stored and counts every part; Stat lists them all", async () => {
    const c = waiting.client;
    const n = 1000;
    for (let i = 0; i < n; i++) {
      const entry = await c.put("many", `layer.${i}`, pattern(16, i), { seal: i === n - 1 });
      if (entry.parts.length !== 1 || entry.partCount !== i + 1) {
        expect({ listed: entry.parts.length, partCount: entry.partCount }).toEqual({ listed: 1, partCount: i + 1 });
      }
      expect(entry.parts[0]!.name).toBe(`layer.${i}`);
    }
    const all = await c.stat("many");
    expect(all.partCount).toBe(n);
    expect(all.parts).toHaveLength(n);
  }, 60_000);
});
