// The lookup buffer's bounds other than bytes (src/store/limits.ts): entries, parts per
// entry, bytes of whole-part puts waiting for room, and the per-put cost of many parts.
// Fake timers: a call that should not wait is checked to settle before any timer fires.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ResourceExhaustedError } from "../../src/errors.js";
import { failsAtOnce, flushMicrotasks, makeBuffer, pattern, succeedsAtOnce, track } from "./helpers/store.js";

beforeEach(() => {
  vi.useFakeTimers({ now: 1_000_000 });
});

afterEach(() => {
  vi.clearAllTimers();
  vi.useRealTimers();
});

type Buf = ReturnType<typeof makeBuffer>["buf"];

function put(buf: Buf, id: string, part: string, size: number, seal = false) {
  return succeedsAtOnce(() => buf.put({ transferId: id, part, seal }, pattern(size, id.length + part.length)));
}

describe("max_entries", () => {
  it("refuses a new entry with RESOURCE_EXHAUSTED naming max_entries and its value when none can be evicted", async () => {
    const { buf } = makeBuffer({ maxEntries: 2 });
    await put(buf, "a", "p", 10);
    await put(buf, "b", "p", 10);
    const err = await failsAtOnce(() => buf.put({ transferId: "c", part: "p" }, pattern(10, 1)));
    expect(err).toBeInstanceOf(ResourceExhaustedError);
    expect((err as Error).message).toContain("max_entries 2");
    expect((err as Error).message).toContain("entry c");
    expect(buf.has("c")).toBe(false);
    expect(buf.entryCount).toBe(2);
    // Entries already held still take parts.
    await put(buf, "a", "q", 10);
    expect(buf.stat("a").partCount).toBe(2);
  });

  it("evicts the least recently used sealed, unheld entry to make room for a new one", async () => {
    const { buf, events } = makeBuffer({ maxEntries: 3 });
    await put(buf, "old", "p", 10, true);
    await put(buf, "read", "p", 10, true);
    await put(buf, "open", "p", 10);
    (await succeedsAtOnce(() => buf.get({ transferId: "old", waitMs: 0 }))).release(false); // "old" is now recent
    await put(buf, "new", "p", 10);
    expect(events).toEqual([{ transferId: "read", reason: "evicted", bytes: 10 }]);
    expect(buf.counters.evictions).toBe(1);
    expect([buf.has("old"), buf.has("read"), buf.has("open"), buf.has("new")]).toEqual([true, false, true, true]);
  });

  it("never evicts an open entry or one a reader holds to make room for a new one", async () => {
    const { buf, events } = makeBuffer({ maxEntries: 2 });
    await put(buf, "held", "p", 10, true);
    await put(buf, "open", "p", 10);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "held", waitMs: 0 }));
    const err = await failsAtOnce(() => buf.put({ transferId: "new", part: "p" }, pattern(10, 1)));
    expect(err).toBeInstanceOf(ResourceExhaustedError);
    expect(events).toEqual([]);
    lease.release(false);
    await put(buf, "new", "p", 10);
    expect(events.map((e) => e.transferId)).toEqual(["held"]);
  });

  it("counts an entry whose put is still waiting for room", async () => {
    const { buf } = makeBuffer({ maxEntries: 2, capacity: 100 });
    await put(buf, "full", "p", 100);
    const waiting = track(() => buf.put({ transferId: "waits", part: "p" }, pattern(10, 1)));
    await flushMicrotasks();
    expect(waiting.settled).toBe(false);
    const err = await failsAtOnce(() => buf.put({ transferId: "third", part: "p" }, pattern(10, 1)));
    expect((err as Error).message).toContain("max_entries 2");
    buf.release("full");
    await waiting.promise;
    expect(buf.entryCount).toBe(1);
  });
});

describe("max_parts_per_entry", () => {
  it("refuses one part too many with RESOURCE_EXHAUSTED naming max_parts_per_entry and its value", async () => {
    const { buf } = makeBuffer({ maxPartsPerEntry: 2 });
    await put(buf, "e", "a", 10);
    await put(buf, "e", "b", 10);
    const err = await failsAtOnce(() => buf.put({ transferId: "e", part: "c" }, pattern(10, 1)));
    expect(err).toBeInstanceOf(ResourceExhaustedError);
    expect((err as Error).message).toContain("max_parts_per_entry is 2");
    expect((err as Error).message).toContain("entry e");
    expect(buf.stat("e").parts.map((p) => p.name)).toEqual(["a", "b"]);
    expect(buf.bytesUsed).toBe(20);
  });

  it("counts a part still being written, and frees its place when it is aborted", async () => {
    const { buf } = makeBuffer({ maxPartsPerEntry: 2 });
    await put(buf, "e", "a", 10);
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "e", part: "b" }, 10));
    const err = await failsAtOnce(() => buf.put({ transferId: "e", part: "c" }, pattern(10, 1)));
    expect((err as Error).message).toContain("max_parts_per_entry");
    writer.abort();
    await put(buf, "e", "c", 10);
    expect(buf.stat("e").parts.map((p) => p.name)).toEqual(["a", "c"]);
  });
});

describe("max_waiting_put_bytes", () => {
  it("fails a put that would wait past the budget at once, naming max_waiting_put_bytes and its value", async () => {
    const { buf } = makeBuffer({ capacity: 1000, maxWaitingPutBytes: 500 });
    await put(buf, "full", "p", 1000); // open: never evicted
    const first = track(() => buf.put({ transferId: "w1", part: "p" }, pattern(300, 1)));
    await flushMicrotasks();
    expect(first.settled).toBe(false);
    expect(buf.waitingPutBytes).toBe(300);
    const err = await failsAtOnce(() => buf.put({ transferId: "w2", part: "p" }, pattern(300, 2)));
    expect(err).toBeInstanceOf(ResourceExhaustedError);
    expect((err as Error).message).toContain("max_waiting_put_bytes is 500");
    expect(buf.has("w2")).toBe(false);
    // A streamed part holds no bytes while it waits: not counted, still allowed to wait.
    const streamed = track(() => buf.openPart({ transferId: "s", part: "p" }, 300));
    await flushMicrotasks();
    expect(streamed.settled).toBe(false);
    expect(buf.waitingPutBytes).toBe(300);
    buf.release("full");
    await first.promise;
    (await streamed.promise).abort();
    expect(buf.waitingPutBytes).toBe(0);
  });

  it("gives the budget back when a waiting put times out or is cancelled", async () => {
    const { buf } = makeBuffer({ capacity: 1000, maxWaitingPutBytes: 500, putDeadlineMs: 200 });
    await put(buf, "full", "p", 1000);
    const timedOut = track(() => buf.put({ transferId: "w1", part: "p" }, pattern(400, 1)));
    await flushMicrotasks();
    expect(buf.waitingPutBytes).toBe(400);
    await vi.advanceTimersByTimeAsync(200);
    expect(timedOut.error).toBeInstanceOf(ResourceExhaustedError);
    expect(buf.waitingPutBytes).toBe(0);
    const controller = new AbortController();
    const cancelled = track(() => buf.put({ transferId: "w2", part: "p", signal: controller.signal }, pattern(400, 2)));
    await flushMicrotasks();
    expect(buf.waitingPutBytes).toBe(400);
    controller.abort();
    await flushMicrotasks();
    expect(cancelled.settled).toBe(true);
    expect(buf.waitingPutBytes).toBe(0);
  });

  it("with a budget of 0 a put never waits, but one that finds room now succeeds", async () => {
    const { buf } = makeBuffer({ capacity: 1000, maxWaitingPutBytes: 0 });
    await put(buf, "fits", "p", 600);
    const err = await failsAtOnce(() => buf.put({ transferId: "waits", part: "p" }, pattern(600, 1)));
    expect((err as Error).message).toContain("max_waiting_put_bytes is 0");
  });
});

describe("the cost of a put does not grow with the parts an entry holds", () => {
  it("a put's entry info lists only its own part and counts them all; stat lists every part", async () => {
    const n = 4096;
    const { buf } = makeBuffer({ capacity: n, maxPartsPerEntry: n });
    for (let i = 0; i < n; i++) {
      const info = await buf.put({ transferId: "many", part: `layer.${i}`, seal: i === n - 1 }, pattern(1, i));
      // Listing every part here made filling an entry quadratic in its parts.
      if (info.parts.length !== 1 || info.partCount !== i + 1) {
        expect({ listed: info.parts.length, partCount: info.partCount }).toEqual({ listed: 1, partCount: i + 1 });
      }
      expect(info.parts[0]!.name).toBe(`layer.${i}`);
    }
    const all = buf.stat("many");
    expect(all.state).toBe("sealed");
    expect(all.parts).toHaveLength(n);
    expect(all.partCount).toBe(n);
  });
});
