// The lookup buffer (src/store/): the entry model of DESIGN.md, one behaviour per test.
// Every test runs on fake timers: waits are driven by advancing the clock, and a call
// that should not wait is checked to settle before any timer fires.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  AlreadyExistsError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  OutOfRangeError,
  ResourceExhaustedError,
  AbortedError,
} from "../../src/errors.js";
import type { ReadLease } from "../../src/store/lookup-buffer.js";
import {
  bytesOf,
  failsAtOnce,
  flushMicrotasks,
  makeBuffer,
  pattern,
  succeedsAtOnce,
  thrownBy,
  track,
} from "./helpers/store.js";

beforeEach(() => {
  vi.useFakeTimers({ now: 1_000_000 });
});

afterEach(() => {
  vi.clearAllTimers();
  vi.useRealTimers();
});

/** A whole consume: the read, its end, and the reader's confirmation. */
async function consume(buf: ReturnType<typeof makeBuffer>["buf"], id: string) {
  const lease = await buf.get({ transferId: id, consume: true });
  lease.release();
  buf.confirmConsume(id, lease.consumeToken!);
}

/** Puts a sealed single-part entry of `size` bytes. */
async function putSealed(buf: ReturnType<typeof makeBuffer>["buf"], id: string, size: number, seed = 1) {
  return succeedsAtOnce(() => buf.put({ transferId: id, part: "kv", seal: true }, pattern(size, seed)));
}

describe("put and get", () => {
  it("returns every part's bytes as written (round trip)", async () => {
    const { buf } = makeBuffer();
    const k = pattern(300, 1);
    const v = pattern(200, 2);
    await succeedsAtOnce(() => buf.put({ transferId: "req-1", part: "layer.0.k" }, k));
    const info = await succeedsAtOnce(() => buf.put({ transferId: "req-1", part: "layer.0.v", seal: true }, v));
    expect(info.state).toBe("sealed");
    expect(info.bytes).toBe(500);

    const lease = await succeedsAtOnce(() => buf.get({ transferId: "req-1" }));
    expect(lease.entry.state).toBe("sealed");
    expect(lease.parts.map((p) => [p.name, p.size])).toEqual([
      ["layer.0.k", 300],
      ["layer.0.v", 200],
    ]);
    expect(bytesOf(lease.parts[0]!)).toEqual(k);
    expect(bytesOf(lease.parts[1]!)).toEqual(v);
    expect(Uint8Array.from(lease.parts[1]!.view(10, 5))).toEqual(v.subarray(10, 15));
    lease.release();
    expect(buf.bytesUsed).toBe(500);
    expect(buf.counters.puts).toBe(2);
    expect(buf.counters.gets).toBe(1);
    expect(buf.counters.putWaits).toBe(0);
    expect(buf.entriesByState()).toEqual({ open: 0, sealed: 1 });
  });

  it("returns only the named parts, in the order asked for", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "a" }, pattern(10, 1));
    await buf.put({ transferId: "r", part: "b" }, pattern(20, 2));
    await buf.put({ transferId: "r", part: "c" }, pattern(30, 3));
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r", parts: ["c", "a"] }));
    expect(lease.parts.map((p) => p.name)).toEqual(["c", "a"]);
    expect(bytesOf(lease.parts[0]!)).toEqual(pattern(30, 3));
    expect(bytesOf(lease.parts[1]!)).toEqual(pattern(10, 1));
  });

  it("a get of all parts waits for the seal", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "a" }, pattern(10, 1));
    const get = track(() => buf.get({ transferId: "r", waitMs: 5000 }));
    await vi.advanceTimersByTimeAsync(1000);
    expect(get.settled).toBe(false);
    await buf.put({ transferId: "r", part: "b" }, pattern(10, 2));
    await vi.advanceTimersByTimeAsync(1000);
    expect(get.settled).toBe(false);

    buf.seal("r");
    await flushMicrotasks();
    expect(get.fulfilled).toBe(true);
    expect(get.value!.entry.state).toBe("sealed");
    expect(get.value!.parts.map((p) => p.name)).toEqual(["a", "b"]);
  });

  it("a get of named parts waits for those parts, not for the seal", async () => {
    const { buf } = makeBuffer();
    const get = track(() => buf.get({ transferId: "r", parts: ["layer.1", "layer.2"], waitMs: 5000 }));
    await buf.put({ transferId: "r", part: "layer.1" }, pattern(10, 1));
    await vi.advanceTimersByTimeAsync(100);
    expect(get.settled).toBe(false);
    await buf.put({ transferId: "r", part: "layer.2" }, pattern(10, 2));
    await flushMicrotasks();
    expect(get.fulfilled).toBe(true);
    expect(get.value!.entry.state).toBe("open");
    expect(bytesOf(get.value!.parts[1]!)).toEqual(pattern(10, 2));
  });

  it("a get with waitMs 0 of an absent entry fails NOT_FOUND without waiting", async () => {
    const { buf } = makeBuffer();
    const err = await failsAtOnce(() => buf.get({ transferId: "nobody", waitMs: 0 }));
    expect(err).toBeInstanceOf(NotFoundError);
    expect((err as NotFoundError).reason).toBeUndefined();
    expect((err as Error).message).toContain("nobody");
  });

  it("a get with waitMs 0 of a missing part fails NOT_FOUND naming the part", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "a" }, pattern(10, 1));
    const err = await failsAtOnce(() => buf.get({ transferId: "r", parts: ["a", "b"], waitMs: 0 }));
    expect(err).toBeInstanceOf(NotFoundError);
    expect((err as Error).message).toMatch(/\bb\b/);
    expect((err as Error).message).not.toMatch(/part a\b/);
  });

  it("a get with waitMs 0 of all parts of an unsealed entry fails FAILED_PRECONDITION", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "a" }, pattern(10, 1));
    const err = await failsAtOnce(() => buf.get({ transferId: "r", waitMs: 0 }));
    expect(err).toBeInstanceOf(FailedPreconditionError);
    expect((err as Error).message).toContain("not sealed");
  });

  it("a get of a part a sealed entry lacks fails NOT_FOUND at once", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "a", seal: true }, pattern(10, 1));
    const err = await failsAtOnce(() => buf.get({ transferId: "r", parts: ["b"], waitMs: 5000 }));
    expect(err).toBeInstanceOf(NotFoundError);
    expect((err as Error).message).toContain("no part b");
  });

  it("a get whose wait runs out fails DEADLINE_EXCEEDED naming the transfer id", async () => {
    const { buf } = makeBuffer();
    const get = track(() => buf.get({ transferId: "job-7", waitMs: 500 }));
    await vi.advanceTimersByTimeAsync(499);
    expect(get.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(get.error).toBeInstanceOf(DeadlineExceededError);
    expect((get.error as Error).message).toContain("job-7");
  });

  it("a get that names no wait waits getWaitMs", async () => {
    const { buf } = makeBuffer({ getWaitMs: 300 });
    await buf.put({ transferId: "r", part: "a" }, pattern(10, 1));
    const get = track(() => buf.get({ transferId: "r" }));
    await vi.advanceTimersByTimeAsync(299);
    expect(get.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(get.error).toBeInstanceOf(DeadlineExceededError);
    expect((get.error as Error).message).toContain("r");
    expect((get.error as Error).message).toContain("not sealed");
  });

  it("an AbortSignal cancels a waiting get with CANCELLED", async () => {
    const { buf } = makeBuffer();
    const controller = new AbortController();
    const get = track(() => buf.get({ transferId: "r", waitMs: 5000, signal: controller.signal }));
    await vi.advanceTimersByTimeAsync(100);
    expect(get.settled).toBe(false);
    controller.abort();
    await flushMicrotasks();
    expect(get.error).toBeInstanceOf(CancelledError);
  });

  it("a get with an already aborted signal fails CANCELLED without waiting", async () => {
    const { buf } = makeBuffer();
    const controller = new AbortController();
    controller.abort();
    const err = await failsAtOnce(() => buf.get({ transferId: "r", waitMs: 5000, signal: controller.signal }));
    expect(err).toBeInstanceOf(CancelledError);
  });

  it("a cancelled or timed-out get no longer counts against maxWaiters", async () => {
    const { buf } = makeBuffer({ maxWaiters: 1 });
    const controller = new AbortController();
    track(() => buf.get({ transferId: "r", waitMs: 5000, signal: controller.signal }));
    const second = await failsAtOnce(() => buf.get({ transferId: "s", waitMs: 5000 }));
    expect(second).toBeInstanceOf(ResourceExhaustedError);
    controller.abort();
    await flushMicrotasks();
    const third = track(() => buf.get({ transferId: "s", waitMs: 100 }));
    await vi.advanceTimersByTimeAsync(100);
    expect(third.error).toBeInstanceOf(DeadlineExceededError);
    const fourth = track(() => buf.get({ transferId: "s", waitMs: 100 }));
    await vi.advanceTimersByTimeAsync(100);
    expect(fourth.error).toBeInstanceOf(DeadlineExceededError);
  });

  it("refuses to park more than maxWaiters calls with RESOURCE_EXHAUSTED", async () => {
    const { buf } = makeBuffer({ maxWaiters: 2 });
    await buf.put({ transferId: "open", part: "a" }, pattern(900, 1));
    track(() => buf.get({ transferId: "x", waitMs: 5000 }));
    track(() => buf.put({ transferId: "y", part: "a" }, pattern(500, 2)));
    const getErr = await failsAtOnce(() => buf.get({ transferId: "z", waitMs: 5000 }));
    expect(getErr).toBeInstanceOf(ResourceExhaustedError);
    const putErr = await failsAtOnce(() => buf.put({ transferId: "w", part: "a" }, pattern(500, 3)));
    expect(putErr).toBeInstanceOf(ResourceExhaustedError);
    expect(buf.counters.putTimeouts).toBe(0);
  });

  it("reports every failure of get through the returned promise, never by throwing", async () => {
    // Callers write `buf.get(o).then(ok, fail)`; a synchronous throw escapes that.
    const { buf } = makeBuffer();
    await putSealed(buf, "gone", 10);
    buf.release("gone");
    await putSealed(buf, "sealed", 10);
    const calls: (() => Promise<ReadLease>)[] = [
      () => buf.get({ transferId: "" }),
      () => buf.get({ transferId: "gone", waitMs: 100 }),
      () => buf.get({ transferId: "sealed", parts: ["missing"], waitMs: 100 }),
    ];
    for (const call of calls) {
      let promise: Promise<ReadLease> | undefined;
      expect(() => {
        promise = call();
      }).not.toThrow();
      await expect(promise).rejects.toThrow();
    }
  });
});

describe("eviction", () => {
  it("evicts the least recently used sealed entry when a put needs room", async () => {
    const { buf, events } = makeBuffer();
    await putSealed(buf, "a", 300, 1);
    await putSealed(buf, "b", 300, 2);
    await putSealed(buf, "c", 300, 3);
    await succeedsAtOnce(() => buf.put({ transferId: "d", part: "kv" }, pattern(300, 4)));

    expect(events.map((e) => [e.transferId, e.reason])).toEqual([["a", "evicted"]]);
    expect((thrownBy(() => buf.stat("a")) as NotFoundError).reason).toBe("evicted");
    expect(buf.list().entries.map((e) => e.transferId)).toEqual(["b", "c", "d"]);
    expect(buf.counters.evictions).toBe(1);
    expect(buf.counters.bytesEvicted).toBe(300);
    expect(buf.bytesUsed).toBe(900);
  });

  it("counts a get as a use: a recently read entry survives over an older one", async () => {
    const { buf, events } = makeBuffer();
    await putSealed(buf, "a", 300, 1);
    await putSealed(buf, "b", 300, 2);
    await putSealed(buf, "c", 300, 3);
    vi.advanceTimersByTime(10);
    (await succeedsAtOnce(() => buf.get({ transferId: "a" }))).release();
    await succeedsAtOnce(() => buf.put({ transferId: "d", part: "kv" }, pattern(300, 4)));

    expect(events.map((e) => e.transferId)).toEqual(["b"]);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "a" }));
    expect(bytesOf(lease.parts[0]!)).toEqual(pattern(300, 1));
  });

  it("evicts as many least recently used entries as the put needs, and no more", async () => {
    const { buf, events } = makeBuffer();
    await putSealed(buf, "a", 300, 1);
    await putSealed(buf, "b", 300, 2);
    await putSealed(buf, "c", 300, 3);
    await succeedsAtOnce(() => buf.put({ transferId: "d", part: "kv" }, pattern(600, 4)));

    expect(events.map((e) => [e.transferId, e.reason])).toEqual([
      ["a", "evicted"],
      ["b", "evicted"],
    ]);
    expect(buf.counters.evictions).toBe(2);
    expect(buf.counters.bytesEvicted).toBe(600);
    expect(buf.list().entries.map((e) => e.transferId)).toEqual(["c", "d"]);
  });

  it("never evicts an open entry", async () => {
    const { buf, events } = makeBuffer();
    await buf.put({ transferId: "open", part: "a" }, pattern(300, 1));
    await buf.put({ transferId: "open", part: "b" }, pattern(300, 2));
    await putSealed(buf, "sealed", 300, 3);
    await succeedsAtOnce(() => buf.put({ transferId: "x", part: "kv" }, pattern(300, 4)));
    expect(events.map((e) => e.transferId)).toEqual(["sealed"]);

    const put = track(() => buf.put({ transferId: "y", part: "kv" }, pattern(300, 5)));
    await vi.advanceTimersByTimeAsync(200);
    expect(put.error).toBeInstanceOf(ResourceExhaustedError);
    expect(buf.stat("open").parts).toHaveLength(2);
    expect(events).toHaveLength(1);
  });

  it("never evicts an entry a reader holds", async () => {
    const { buf, events } = makeBuffer();
    await putSealed(buf, "held", 600, 1);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "held" }));
    const put = track(() => buf.put({ transferId: "x", part: "kv" }, pattern(600, 2)));
    await vi.advanceTimersByTimeAsync(200);
    expect(put.error).toBeInstanceOf(ResourceExhaustedError);
    expect(events).toEqual([]);
    expect(buf.stat("held").state).toBe("sealed");
    expect(bytesOf(lease.parts[0]!)).toEqual(pattern(600, 1));
  });

  it("never evicts an entry while a part writer is open on it, even with its seal requested", async () => {
    const { buf, events } = makeBuffer();
    await buf.put({ transferId: "w", part: "a" }, pattern(300, 1));
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "w", part: "b" }, 300));
    buf.seal("w");
    expect(buf.stat("w").state).toBe("open");
    const put = track(() => buf.put({ transferId: "x", part: "kv" }, pattern(600, 2)));
    await vi.advanceTimersByTimeAsync(200);
    expect(put.error).toBeInstanceOf(ResourceExhaustedError);
    expect(events).toEqual([]);
    writer.abort();
  });

  it("evicts nothing when evicting every evictable entry would still not make room", async () => {
    const { buf, events } = makeBuffer();
    await buf.put({ transferId: "open", part: "a" }, pattern(500, 1));
    await putSealed(buf, "sealed", 300, 2);
    const put = track(() => buf.put({ transferId: "x", part: "kv" }, pattern(600, 3)));
    await vi.advanceTimersByTimeAsync(200);
    expect(put.error).toBeInstanceOf(ResourceExhaustedError);
    expect(events).toEqual([]);
    expect(buf.counters.evictions).toBe(0);
    expect(buf.stat("sealed").state).toBe("sealed");
  });

  it("reports each eviction through onRemoved with reason evicted", async () => {
    const { buf, events } = makeBuffer();
    await putSealed(buf, "a", 400, 1);
    await succeedsAtOnce(() => buf.put({ transferId: "b", part: "kv" }, pattern(700, 2)));
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ transferId: "a", reason: "evicted" });
  });
});

describe("put deadline", () => {
  it("returns RESOURCE_EXHAUSTED after the put deadline when nothing can be evicted, naming bytes needed and free", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "open", part: "a" }, pattern(600, 1));
    const put = track(() => buf.put({ transferId: "big", part: "kv" }, pattern(500, 2)));
    await vi.advanceTimersByTimeAsync(199);
    expect(put.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);

    expect(put.error).toBeInstanceOf(ResourceExhaustedError);
    const message = (put.error as Error).message;
    expect(message).toContain("needs 500 bytes");
    expect(message).toContain("400 free");
    expect(buf.counters.putTimeouts).toBe(1);
    expect(buf.counters.putWaits).toBe(1);
    expect(buf.entriesByState()).toEqual({ open: 1, sealed: 0 });
    expect(buf.bytesUsed).toBe(600);
    expect((thrownBy(() => buf.stat("big")) as NotFoundError).reason).toBeUndefined();
  });

  it("a parked put succeeds when a release frees room", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "open", part: "a" }, pattern(600, 1));
    const put = track(() => buf.put({ transferId: "next", part: "kv" }, pattern(600, 2)));
    await vi.advanceTimersByTimeAsync(100);
    expect(put.settled).toBe(false);
    expect(buf.release("open")).toBe(600);
    await flushMicrotasks();
    expect(put.fulfilled).toBe(true);
    expect(buf.counters.putTimeouts).toBe(0);
    expect(buf.counters.putWaits).toBe(1);
    expect(buf.bytesUsed).toBe(600);
  });

  it("a parked put succeeds when a reader releases its lease on a sealed entry", async () => {
    const { buf, events } = makeBuffer();
    await putSealed(buf, "held", 600, 1);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "held" }));
    const put = track(() => buf.put({ transferId: "next", part: "kv" }, pattern(600, 2)));
    await vi.advanceTimersByTimeAsync(100);
    expect(put.settled).toBe(false);
    lease.release();
    await flushMicrotasks();
    expect(put.fulfilled).toBe(true);
    expect(events.map((e) => [e.transferId, e.reason])).toEqual([["held", "evicted"]]);
  });

  it("a parked put succeeds when a seal makes an entry evictable", async () => {
    const { buf, events } = makeBuffer();
    await buf.put({ transferId: "open", part: "a" }, pattern(600, 1));
    const put = track(() => buf.put({ transferId: "next", part: "kv" }, pattern(600, 2)));
    await vi.advanceTimersByTimeAsync(100);
    expect(put.settled).toBe(false);
    buf.seal("open");
    await flushMicrotasks();
    expect(put.fulfilled).toBe(true);
    expect(events.map((e) => [e.transferId, e.reason])).toEqual([["open", "evicted"]]);
  });

  it("a sealing commit that makes room for a parked put reports success to its writer", async () => {
    // The commit seals the entry, which lets the parked put evict it: the part did land,
    // so the writer must not hear NOT_FOUND "evicted" for its own successful put.
    const { buf, events } = makeBuffer();
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "w", part: "a", seal: true }, 600));
    writer.write(pattern(600, 1));
    const put = track(() => buf.put({ transferId: "next", part: "kv" }, pattern(600, 2)));
    await vi.advanceTimersByTimeAsync(100);
    expect(put.settled).toBe(false);

    let info: ReturnType<typeof writer.commit> | undefined;
    expect(() => {
      info = writer.commit();
    }).not.toThrow();
    expect(info?.state).toBe("sealed");
    await flushMicrotasks();
    expect(put.fulfilled).toBe(true);
    expect(events.map((e) => [e.transferId, e.reason])).toEqual([["w", "evicted"]]);
  });

  it.each([
    ["aborts", (w: { abort(): void }) => w.abort()],
    ["commits with bytes missing", (w: { commit(): unknown }) => expect(() => w.commit()).toThrow(InvalidArgumentError)],
  ])("a parked put succeeds when a part writer %s and gives its bytes back", async (_name, finish) => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "w", part: "kept" }, pattern(100, 1));
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "w", part: "a" }, 600));
    writer.write(pattern(10, 1));
    const put = track(() => buf.put({ transferId: "next", part: "kv" }, pattern(600, 2)));
    await vi.advanceTimersByTimeAsync(100);
    expect(put.settled).toBe(false);

    finish(writer as never);
    await flushMicrotasks();
    expect(put.settled, "the freed 600 bytes should serve the parked put before its deadline").toBe(true);
    expect(put.fulfilled).toBe(true);
    expect(buf.bytesUsed).toBe(700);
    expect(buf.stat("w").parts.map((p) => p.name)).toEqual(["kept"]);
  });

  it("a part larger than the capacity fails OUT_OF_RANGE at once, without waiting", async () => {
    const { buf, events } = makeBuffer();
    const err = await failsAtOnce(() => buf.put({ transferId: "huge", part: "kv" }, pattern(1001, 1)));
    expect(err).toBeInstanceOf(OutOfRangeError);
    expect((err as Error).message).toContain("1001");
    expect((err as Error).message).toContain("1000");
    const err2 = await failsAtOnce(() => buf.openPart({ transferId: "huge", part: "kv" }, 5000));
    expect(err2).toBeInstanceOf(OutOfRangeError);
    expect(buf.entryCount).toBe(0);
    expect(buf.bytesUsed).toBe(0);
    expect(events).toEqual([]);
  });

  it("a part of exactly the capacity fits", async () => {
    const { buf } = makeBuffer();
    await succeedsAtOnce(() => buf.put({ transferId: "full", part: "kv" }, pattern(1000, 1)));
    expect(buf.bytesUsed).toBe(1000);
  });

  it("a put cancelled by its signal while waiting for room fails CANCELLED and leaves nothing behind", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "open", part: "a" }, pattern(600, 1));
    const controller = new AbortController();
    const put = track(() => buf.put({ transferId: "x", part: "kv", signal: controller.signal }, pattern(600, 2)));
    await vi.advanceTimersByTimeAsync(50);
    controller.abort();
    await flushMicrotasks();
    expect(put.error).toBeInstanceOf(CancelledError);
    expect(() => buf.stat("x")).toThrow(NotFoundError);
    expect(buf.bytesUsed).toBe(600);
    expect(buf.counters.putTimeouts).toBe(0);
  });

  it("serves parked puts first come, first served", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "open", part: "a" }, pattern(900, 1));
    const first = track(() => buf.put({ transferId: "first", part: "kv" }, pattern(500, 2)));
    const second = track(() => buf.put({ transferId: "second", part: "kv" }, pattern(100, 3)));
    await vi.advanceTimersByTimeAsync(10);
    expect(first.settled || second.settled).toBe(false);
    buf.release("open");
    await flushMicrotasks();
    expect(first.fulfilled && second.fulfilled).toBe(true);
    expect(buf.bytesUsed).toBe(600);
  });

  it("keeps bytesUsed equal to accountedBytes while a put is in flight", async () => {
    // accountedBytes() promises equality "at every moment".
    const { buf } = makeBuffer();
    const put = buf.put({ transferId: "r", part: "a" }, pattern(100, 1));
    expect(buf.bytesUsed).toBe(buf.accountedBytes());
    await put;
    expect(buf.bytesUsed).toBe(buf.accountedBytes());
  });

  it("a put whose entry is released before its bytes are copied in gives the bytes back", async () => {
    const { buf } = makeBuffer();
    const put = track(() => buf.put({ transferId: "r", part: "a" }, pattern(100, 1)));
    // Step one microtask at a time and release the entry in the window where the part
    // is reserved but not yet written (another call's continuation can run there).
    for (let i = 0; i < 20 && !put.settled; i++) {
      const parts = buf.entryCount > 0 ? buf.stat("r").parts : [];
      if (parts.length === 1 && !parts[0]!.complete) {
        buf.release("r");
        break;
      }
      await Promise.resolve();
    }
    await flushMicrotasks();
    expect(put.settled).toBe(true);
    if (buf.entryCount > 0) buf.release("r");
    expect(buf.accountedBytes()).toBe(0);
    expect(buf.bytesUsed).toBe(0);
  });
});

describe("leases", () => {
  it("an entry nobody consumes expires after its lease", async () => {
    const { buf, events } = makeBuffer({ leaseTtlMs: 1000 });
    await putSealed(buf, "r", 100);
    await vi.advanceTimersByTimeAsync(999);
    expect(buf.stat("r").leaseRemainingMs).toBe(1);
    await vi.advanceTimersByTimeAsync(1);

    const err = thrownBy(() => buf.stat("r")) as NotFoundError;
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.reason).toBe("expired");
    expect(err.message).toContain("expired");
    expect(buf.counters.expiries).toBe(1);
    expect(events.map((e) => [e.transferId, e.reason])).toEqual([["r", "expired"]]);
    expect(buf.bytesUsed).toBe(0);
  });

  it("an open entry expires too", async () => {
    const { buf } = makeBuffer({ leaseTtlMs: 1000 });
    await buf.put({ transferId: "r", part: "a" }, pattern(100, 1));
    await vi.advanceTimersByTimeAsync(1000);
    expect(() => buf.stat("r")).toThrow(/expired/);
    expect(buf.bytesUsed).toBe(0);
  });

  it("a put's leaseTtlMs replaces the default lease and renews an existing one", async () => {
    const { buf } = makeBuffer({ leaseTtlMs: 1000 });
    await buf.put({ transferId: "short", part: "a", leaseTtlMs: 50 }, pattern(10, 1));
    await buf.put({ transferId: "renewed", part: "a" }, pattern(10, 2));
    await vi.advanceTimersByTimeAsync(900);
    await buf.put({ transferId: "renewed", part: "b", leaseTtlMs: 500 }, pattern(10, 3));
    expect(() => buf.stat("short")).toThrow(/expired/);
    await vi.advanceTimersByTimeAsync(499);
    expect(buf.stat("renewed").leaseRemainingMs).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(() => buf.stat("renewed")).toThrow(/expired/);
    expect(buf.counters.expiries).toBe(2);
  });

  it("an entry a reader holds still expires; its bytes come back when the reader lets go", async () => {
    const { buf } = makeBuffer({ leaseTtlMs: 1000 });
    await putSealed(buf, "r", 100, 7);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r" }));
    await vi.advanceTimersByTimeAsync(1000);
    expect(() => buf.stat("r")).toThrow(/expired/);
    expect(buf.bytesUsed).toBe(100);
    expect(bytesOf(lease.parts[0]!)).toEqual(pattern(100, 7));
    lease.release();
    expect(buf.bytesUsed).toBe(0);
  });

  it.each([0, -1, 1.5, Number.NaN])("refuses lease_ttl_ms %s with INVALID_ARGUMENT", async (ttl) => {
    const { buf } = makeBuffer();
    const err = await failsAtOnce(() => buf.put({ transferId: "r", part: "a", leaseTtlMs: ttl }, pattern(10, 1)));
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as InvalidArgumentError).field).toBe("lease_ttl_ms");
    expect((err as Error).message.startsWith("lease_ttl_ms")).toBe(true);
    expect(buf.entryCount).toBe(0);
    expect(buf.bytesUsed).toBe(0);
  });

  it("accepts a lease_ttl_ms of 1", async () => {
    const { buf } = makeBuffer();
    await succeedsAtOnce(() => buf.put({ transferId: "r", part: "a", leaseTtlMs: 1 }, pattern(10, 1)));
    await vi.advanceTimersByTimeAsync(1);
    expect(() => buf.stat("r")).toThrow(/expired/);
  });
});

describe("removal reasons", () => {
  it("a waiting get fails NOT_FOUND with reason released when the entry is released", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "a" }, pattern(10, 1));
    const get = track(() => buf.get({ transferId: "r", waitMs: 5000 }));
    await vi.advanceTimersByTimeAsync(10);
    buf.release("r");
    await flushMicrotasks();
    expect(get.error).toBeInstanceOf(NotFoundError);
    expect((get.error as NotFoundError).reason).toBe("released");
    expect((get.error as Error).message).toContain("released");
    expect(buf.counters.releases).toBe(1);
  });

  it("a waiting get fails NOT_FOUND with reason expired when the entry expires", async () => {
    const { buf } = makeBuffer({ leaseTtlMs: 1000 });
    await buf.put({ transferId: "r", part: "a" }, pattern(10, 1));
    const get = track(() => buf.get({ transferId: "r", parts: ["b"], waitMs: 5000 }));
    await vi.advanceTimersByTimeAsync(1000);
    expect(get.error).toBeInstanceOf(NotFoundError);
    expect((get.error as NotFoundError).reason).toBe("expired");
    expect((get.error as Error).message).toContain("expired");
  });

  it.each([
    ["evicted", "evicted"],
    ["released", "released"],
    ["expired", "expired"],
    ["consumed", "consumed"],
  ] as const)("a later get and stat of a %s entry say so", async (_name, reason) => {
    const { buf } = makeBuffer({ leaseTtlMs: 1000 });
    await putSealed(buf, "r", 600);
    if (reason === "evicted") await buf.put({ transferId: "other", part: "kv" }, pattern(600, 2));
    if (reason === "released") buf.release("r");
    if (reason === "expired") await vi.advanceTimersByTimeAsync(1000);
    if (reason === "consumed") await consume(buf, "r");

    const statErr = thrownBy(() => buf.stat("r")) as NotFoundError;
    expect(statErr).toBeInstanceOf(NotFoundError);
    expect(statErr.reason).toBe(reason);
    expect(statErr.message).toContain(reason);
    const getErr = (await failsAtOnce(() => buf.get({ transferId: "r", waitMs: 5000 }))) as NotFoundError;
    expect(getErr).toBeInstanceOf(NotFoundError);
    expect(getErr.reason).toBe(reason);
    expect(getErr.message).toContain(reason);
    expect((thrownBy(() => buf.seal("r")) as NotFoundError).reason).toBe(reason);
    expect((thrownBy(() => buf.release("r")) as NotFoundError).reason).toBe(reason);
  });

  it("remembers only the last recentlyRemoved reasons: the oldest is forgotten", async () => {
    const { buf } = makeBuffer({ recentlyRemoved: 2 });
    for (const id of ["a", "b", "c"]) await putSealed(buf, id, 10);
    buf.release("a");
    buf.release("b");
    expect((thrownBy(() => buf.stat("a")) as NotFoundError).reason).toBe("released");
    buf.release("c");

    const forgotten = thrownBy(() => buf.stat("a")) as NotFoundError;
    expect(forgotten).toBeInstanceOf(NotFoundError);
    expect(forgotten.reason).toBeUndefined();
    expect(forgotten.message).not.toContain("released");
    expect((thrownBy(() => buf.stat("b")) as NotFoundError).reason).toBe("released");
    expect((thrownBy(() => buf.stat("c")) as NotFoundError).reason).toBe("released");
  });

  it("a new entry under a removed id is not reported as removed", async () => {
    const { buf } = makeBuffer();
    await putSealed(buf, "r", 10, 1);
    buf.release("r");
    await putSealed(buf, "r", 20, 2);
    expect(buf.stat("r").bytes).toBe(20);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r" }));
    expect(bytesOf(lease.parts[0]!)).toEqual(pattern(20, 2));
  });
});

describe("consume", () => {
  it("a consuming get drops the entry only when its reader confirms with the token", async () => {
    const { buf, events } = makeBuffer();
    await putSealed(buf, "r", 100, 3);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r", consume: true }));
    expect(buf.stat("r").readers).toBe(1);
    expect(bytesOf(lease.parts[0]!)).toEqual(pattern(100, 3));
    lease.release();
    // Every byte went out, but the reader has not said it holds them: still here.
    expect(buf.stat("r").bytes).toBe(100);
    expect(events).toEqual([]);

    expect(buf.confirmConsume("r", lease.consumeToken!)).toBe(100);
    const err = thrownBy(() => buf.stat("r")) as NotFoundError;
    expect(err.reason).toBe("consumed");
    expect(buf.counters.consumed).toBe(1);
    expect(buf.bytesUsed).toBe(0);
    expect(events.map((e) => [e.transferId, e.reason])).toEqual([["r", "consumed"]]);
  });

  it("a consume nobody confirms gives the entry back when its hold lapses", async () => {
    const { buf, events } = makeBuffer({ consumeLeaseMs: 2000 });
    await putSealed(buf, "r", 100, 3);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r", consume: true }));
    lease.release(); // the reply went out, and was lost
    await vi.advanceTimersByTimeAsync(1999);
    const blocked = await failsAtOnce(() => buf.get({ transferId: "r", consume: true, waitMs: 0 }));
    expect(blocked).toBeInstanceOf(AbortedError);
    expect(blocked.message).toMatch(/being consumed/);
    await vi.advanceTimersByTimeAsync(1);

    expect(lease.lapsed!.aborted).toBe(true);
    expect(buf.counters).toMatchObject({ consumed: 0, consumeReturns: 1, consumeLapses: 1 });
    expect(events).toEqual([]);
    const retry = await succeedsAtOnce(() => buf.get({ transferId: "r", consume: true }));
    expect(bytesOf(retry.parts[0]!)).toEqual(pattern(100, 3));
    // The lapsed token is worthless now; the new one works.
    const stale = thrownBy(() => buf.confirmConsume("r", lease.consumeToken!)) as Error;
    expect(stale).toBeInstanceOf(FailedPreconditionError);
    expect(stale.message).toMatch(/^consume_token: /);
    retry.release();
    buf.confirmConsume("r", retry.consumeToken!);
    expect(buf.counters.consumed).toBe(1);
  });

  it("a get may ask for a shorter hold, never a longer one than consumeLeaseMs", async () => {
    const { buf } = makeBuffer({ consumeLeaseMs: 5000 });
    await putSealed(buf, "r", 100);
    const tooLong = await failsAtOnce(() => buf.get({ transferId: "r", consume: true, consumeLeaseMs: 5001 }));
    expect(tooLong).toBeInstanceOf(InvalidArgumentError);
    expect(tooLong.message).toMatch(/^consume_lease_ms: 5001 .* 1 to 5000/);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r", consume: true, consumeLeaseMs: 100 }));
    lease.release();
    await vi.advanceTimersByTimeAsync(100);
    expect(buf.counters.consumeLapses).toBe(1);
    expect(buf.stat("r").bytes).toBe(100);
  });

  it("of two concurrent consuming gets exactly one gets the data; the other waits and then hears consumed", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "a" }, pattern(100, 4));
    const first = track(() => buf.get({ transferId: "r", consume: true, waitMs: 5000 }));
    const second = track(() => buf.get({ transferId: "r", consume: true, waitMs: 5000 }));
    await vi.advanceTimersByTimeAsync(10);
    buf.seal("r");
    await flushMicrotasks();

    const results = [first, second];
    const winners = results.filter((t) => t.fulfilled);
    expect(winners).toHaveLength(1);
    const loser = results.find((t) => t !== winners[0])!;
    expect(loser.settled).toBe(false); // the outcome is not known yet
    expect(bytesOf(winners[0]!.value!.parts[0]!)).toEqual(pattern(100, 4));
    winners[0]!.value!.release();
    buf.confirmConsume("r", winners[0]!.value!.consumeToken!);
    await flushMicrotasks();
    expect(loser.error).toBeInstanceOf(NotFoundError);
    expect((loser.error as NotFoundError).reason).toBe("consumed");
    expect(buf.counters.consumed).toBe(1);
    expect(buf.bytesUsed).toBe(0);
  });

  it("a consumer waiting on a held entry gets it when the holder's read fails", async () => {
    const { buf } = makeBuffer();
    await putSealed(buf, "r", 100, 6);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r", consume: true }));
    const waiting = track(() => buf.get({ transferId: "r", consume: true, waitMs: 1000 }));
    const plain = track(() => buf.get({ transferId: "r", waitMs: 1000 }));
    await flushMicrotasks();
    expect(waiting.settled || plain.settled).toBe(false);
    lease.release(false);
    await flushMicrotasks();
    expect(waiting.fulfilled).toBe(true);
    expect(bytesOf(waiting.value!.parts[0]!)).toEqual(pattern(100, 6));
    expect(buf.counters).toMatchObject({ consumeReturns: 1, consumeLapses: 0 });
    // The plain reader now waits on the new holder's outcome.
    expect(plain.settled).toBe(false);
    waiting.value!.release();
    buf.confirmConsume("r", waiting.value!.consumeToken!);
    await flushMicrotasks();
    expect((plain.error as NotFoundError).reason).toBe("consumed");
  });

  it("a consumer whose wait runs out on a held entry fails DEADLINE_EXCEEDED saying it is being consumed", async () => {
    const { buf } = makeBuffer({ consumeLeaseMs: 10_000 });
    await putSealed(buf, "r", 100);
    (await succeedsAtOnce(() => buf.get({ transferId: "r", consume: true }))).release();
    const waiting = track(() => buf.get({ transferId: "r", consume: true, waitMs: 500 }));
    await vi.advanceTimersByTimeAsync(500);
    expect(waiting.error).toBeInstanceOf(DeadlineExceededError);
    expect((waiting.error as Error).message).toMatch(/being consumed by another reader/);
  });

  it("confirming twice with the token that consumed the entry is a no-op; another token is refused", async () => {
    const { buf } = makeBuffer();
    await putSealed(buf, "r", 100);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r", consume: true }));
    lease.release();
    expect(thrownBy(() => buf.confirmConsume("r", "not-the-token"))).toBeInstanceOf(FailedPreconditionError);
    expect(thrownBy(() => buf.confirmConsume("r", ""))).toBeInstanceOf(InvalidArgumentError);
    expect(buf.confirmConsume("r", lease.consumeToken!)).toBe(100);
    expect(buf.confirmConsume("r", lease.consumeToken!)).toBe(0);
    const other = thrownBy(() => buf.confirmConsume("r", "not-the-token")) as NotFoundError;
    expect(other.reason).toBe("consumed");
    expect(buf.counters.consumed).toBe(1);
  });

  it("an entry whose lease ends while it is held expires only when the hold is given back", async () => {
    const { buf, events } = makeBuffer({ leaseTtlMs: 1000, consumeLeaseMs: 5000 });
    await putSealed(buf, "r", 100);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r", consume: true }));
    await vi.advanceTimersByTimeAsync(2000);
    expect(buf.stat("r").bytes).toBe(100);
    lease.release();
    expect(buf.confirmConsume("r", lease.consumeToken!)).toBe(100);
    expect(events.map((e) => e.reason)).toEqual(["consumed"]);

    await putSealed(buf, "s", 100);
    (await succeedsAtOnce(() => buf.get({ transferId: "s", consume: true }))).release(false);
    expect(buf.stat("s").bytes).toBe(100); // lease not over yet
    const held = await succeedsAtOnce(() => buf.get({ transferId: "s", consume: true }));
    await vi.advanceTimersByTimeAsync(1500);
    held.release(false);
    expect((thrownBy(() => buf.stat("s")) as NotFoundError).reason).toBe("expired");
  });

  it("an exclusive hold (a move) keeps consumers waiting; dropped, they hear transferred", async () => {
    const { buf } = makeBuffer();
    await putSealed(buf, "r", 100);
    const move = await succeedsAtOnce(() => buf.get({ transferId: "r", exclusive: true }));
    const consumer = track(() => buf.get({ transferId: "r", consume: true, waitMs: 1000 }));
    await flushMicrotasks();
    expect(consumer.settled).toBe(false);
    move.releaseAndDrop("transferred");
    await flushMicrotasks();
    expect((consumer.error as NotFoundError).reason).toBe("transferred");
    expect(buf.counters).toMatchObject({ transferred: 1, consumed: 0 });

    await putSealed(buf, "s", 100, 7);
    const failedMove = await succeedsAtOnce(() => buf.get({ transferId: "s", exclusive: true }));
    const second = track(() => buf.get({ transferId: "s", consume: true, waitMs: 1000 }));
    await flushMicrotasks();
    failedMove.release(false);
    await flushMicrotasks();
    expect(bytesOf(second.value!.parts[0]!)).toEqual(pattern(100, 7));
  });

  it("a held entry is never evicted, even after its bytes went out", async () => {
    const { buf } = makeBuffer({ putDeadlineMs: 100 });
    await putSealed(buf, "r", 600);
    (await succeedsAtOnce(() => buf.get({ transferId: "r", consume: true }))).release();
    const put = track(() => buf.put({ transferId: "big", part: "kv" }, pattern(600, 2)));
    await vi.advanceTimersByTimeAsync(100);
    expect(put.error).toBeInstanceOf(ResourceExhaustedError);
    expect(buf.stat("r").bytes).toBe(600);
  });

  it("releasing a lease twice has no further effect", async () => {
    const { buf } = makeBuffer();
    await putSealed(buf, "r", 100);
    const a = await succeedsAtOnce(() => buf.get({ transferId: "r" }));
    const b = await succeedsAtOnce(() => buf.get({ transferId: "r" }));
    a.release();
    a.release();
    expect(buf.stat("r").readers).toBe(1);
    b.release();
    expect(buf.stat("r").readers).toBe(0);
  });
});

describe("writes", () => {
  it("a put into a sealed entry fails FAILED_PRECONDITION", async () => {
    const { buf } = makeBuffer();
    await putSealed(buf, "r", 100);
    const err = await failsAtOnce(() => buf.put({ transferId: "r", part: "more" }, pattern(10, 1)));
    expect(err).toBeInstanceOf(FailedPreconditionError);
    expect(buf.stat("r").parts.map((p) => p.name)).toEqual(["kv"]);
    expect(buf.bytesUsed).toBe(100);
  });

  it("a put into an entry whose seal is pending fails FAILED_PRECONDITION", async () => {
    const { buf } = makeBuffer();
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "r", part: "a" }, 10));
    buf.seal("r");
    const err = await failsAtOnce(() => buf.put({ transferId: "r", part: "b" }, pattern(10, 1)));
    expect(err).toBeInstanceOf(FailedPreconditionError);
    writer.abort();
  });

  it("a second put of the same part fails ALREADY_EXISTS", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "a" }, pattern(100, 1));
    const err = await failsAtOnce(() => buf.put({ transferId: "r", part: "a" }, pattern(100, 2)));
    expect(err).toBeInstanceOf(AlreadyExistsError);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r", parts: ["a"] }));
    expect(bytesOf(lease.parts[0]!)).toEqual(pattern(100, 1));
    expect(buf.bytesUsed).toBe(100);
  });

  it("a put of a part another put is still waiting room for fails ALREADY_EXISTS", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "open", part: "a" }, pattern(900, 1));
    const parked = track(() => buf.put({ transferId: "r", part: "a" }, pattern(500, 2)));
    const err = await failsAtOnce(() => buf.put({ transferId: "r", part: "a" }, pattern(50, 3)));
    expect(err).toBeInstanceOf(AlreadyExistsError);
    await vi.advanceTimersByTimeAsync(200);
    expect(parked.error).toBeInstanceOf(ResourceExhaustedError);
  });

  const badIds: [string, string][] = [
    ["empty", ""],
    ["257 characters", "x".repeat(257)],
    ["with a space", "req 1"],
    ["non-ASCII", "réq-1"],
    ["with a control character", "req\n1"],
  ];

  it.each(badIds)("refuses a transfer id that is %s with INVALID_ARGUMENT naming transfer_id", async (_name, id) => {
    const { buf } = makeBuffer();
    const checks: unknown[] = [
      await failsAtOnce(() => buf.put({ transferId: id, part: "a" }, pattern(10, 1))),
      await failsAtOnce(() => buf.openPart({ transferId: id, part: "a" }, 10)),
      await failsAtOnce(() => buf.get({ transferId: id, waitMs: 0 })),
      thrownBy(() => buf.stat(id)),
      thrownBy(() => buf.seal(id)),
      thrownBy(() => buf.release(id)),
    ];
    for (const err of checks) {
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).field).toBe("transfer_id");
      expect((err as Error).message.startsWith("transfer_id")).toBe(true);
    }
    expect(buf.entryCount).toBe(0);
  });

  it("accepts a transfer id of 256 printable characters", async () => {
    const { buf } = makeBuffer();
    const id = "~".repeat(255) + "!";
    await succeedsAtOnce(() => buf.put({ transferId: id, part: "a", seal: true }, pattern(10, 1)));
    expect(buf.stat(id).state).toBe("sealed");
  });

  it.each([
    ["empty", ""],
    ["129 characters", "p".repeat(129)],
    ["with a space", "layer 1"],
    ["non-ASCII", "läyer"],
  ])("refuses a part name that is %s with INVALID_ARGUMENT naming the field", async (_name, part) => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "ok" }, pattern(10, 1));
    const putErr = await failsAtOnce(() => buf.put({ transferId: "r", part }, pattern(10, 1)));
    expect(putErr).toBeInstanceOf(InvalidArgumentError);
    expect((putErr as InvalidArgumentError).field).toBe("part");
    const getErr = await failsAtOnce(() => buf.get({ transferId: "r", parts: ["ok", part], waitMs: 0 }));
    expect(getErr).toBeInstanceOf(InvalidArgumentError);
    expect((getErr as InvalidArgumentError).field).toBe("parts[1]");
    expect((getErr as Error).message.startsWith("parts[1]")).toBe(true);
    expect(buf.stat("r").parts.map((p) => p.name)).toEqual(["ok"]);
  });

  it("refuses a get that names a part twice, naming the second", async () => {
    const { buf } = makeBuffer();
    const err = await failsAtOnce(() => buf.get({ transferId: "r", parts: ["a", "b", "a"], waitMs: 0 }));
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as InvalidArgumentError).field).toBe("parts[2]");
  });

  it("refuses a negative or fractional size and a non-integer wait", async () => {
    const { buf } = makeBuffer();
    expect(await failsAtOnce(() => buf.openPart({ transferId: "r", part: "a" }, -1))).toBeInstanceOf(InvalidArgumentError);
    expect(await failsAtOnce(() => buf.openPart({ transferId: "r", part: "a" }, 2.5))).toBeInstanceOf(InvalidArgumentError);
    const waitErr = await failsAtOnce(() => buf.get({ transferId: "r", waitMs: -1 }));
    expect((waitErr as InvalidArgumentError).field).toBe("wait_ms");
    expect(buf.entryCount).toBe(0);
  });
});

describe("part writers", () => {
  it("writes a part in chunks; it becomes readable when committed", async () => {
    const { buf } = makeBuffer();
    const data = pattern(250, 9);
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "r", part: "a" }, 250));
    expect(buf.bytesUsed).toBe(250);
    writer.write(data.subarray(0, 100));
    writer.write(data.subarray(100, 101));
    writer.write(data.subarray(101));
    expect(writer.written).toBe(250);

    const info = writer.commit();
    expect(info.writers).toBe(0);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r", parts: ["a"], waitMs: 0 }));
    expect(bytesOf(lease.parts[0]!)).toEqual(data);
  });

  it("a fully written part is not readable until it is committed (an abort could free it under the reader)", async () => {
    const { buf } = makeBuffer();
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "r", part: "a" }, 250));
    writer.write(pattern(250, 1));
    const early = await failsAtOnce(() => buf.get({ transferId: "r", parts: ["a"], waitMs: 0 }));
    expect(early, "a get before commit must fail").toBeInstanceOf(NotFoundError);
    const waiting = track(() => buf.get({ transferId: "r", parts: ["a"], waitMs: 5000 }));
    await vi.advanceTimersByTimeAsync(100);
    expect(waiting.settled).toBe(false);
    writer.abort();
    expect(buf.bytesUsed).toBe(0);
    await vi.advanceTimersByTimeAsync(4900);
    expect(waiting.error).toBeInstanceOf(DeadlineExceededError);
  });

  it("an incomplete part is not readable", async () => {
    const { buf } = makeBuffer();
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "r", part: "a" }, 10));
    writer.write(pattern(5, 1));
    expect(buf.stat("r").parts).toEqual([{ name: "a", size: 10, complete: false }]);
    const err = await failsAtOnce(() => buf.get({ transferId: "r", parts: ["a"], waitMs: 0 }));
    expect(err).toBeInstanceOf(NotFoundError);
    writer.abort();
  });

  it("refuses a write past the declared size with INVALID_ARGUMENT and keeps what was written", async () => {
    const { buf } = makeBuffer();
    const data = pattern(100, 2);
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "r", part: "a" }, 100));
    writer.write(data.subarray(0, 60));
    const err = thrownBy(() => writer.write(pattern(41, 3)));
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toContain("100");
    expect(writer.written).toBe(60);
    writer.write(data.subarray(60));
    writer.commit();
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r", parts: ["a"] }));
    expect(bytesOf(lease.parts[0]!)).toEqual(data);
  });

  it("a commit with bytes missing fails and gives the bytes back", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "kept" }, pattern(100, 1));
    const before = buf.bytesUsed;
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "r", part: "a" }, 300));
    writer.write(pattern(299, 2));
    expect(buf.bytesUsed).toBe(before + 300);

    const err = thrownBy(() => writer.commit());
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toContain("299");
    expect(buf.bytesUsed).toBe(before);
    expect(buf.accountedBytes()).toBe(before);
    expect(buf.stat("r").parts.map((p) => p.name)).toEqual(["kept"]);
    expect(buf.counters.puts).toBe(1);
    expect(() => writer.commit()).toThrow(FailedPreconditionError);
  });

  it("abort gives the bytes back and a later commit or abort has no effect", async () => {
    const { buf } = makeBuffer();
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "r", part: "a" }, 400));
    writer.write(pattern(400, 1));
    writer.abort();
    expect(buf.bytesUsed).toBe(0);
    writer.abort();
    expect(() => writer.commit()).toThrow(FailedPreconditionError);
    expect(() => writer.write(pattern(1, 1))).toThrow(FailedPreconditionError);
    expect(buf.bytesUsed).toBe(0);
    expect(buf.accountedBytes()).toBe(0);
  });

  it("an entry whose only part was aborted disappears without a removal", async () => {
    const { buf, events } = makeBuffer();
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "r", part: "a" }, 10));
    writer.abort();
    expect(buf.entryCount).toBe(0);
    expect(events).toEqual([]);
    await succeedsAtOnce(() => buf.put({ transferId: "r", part: "a" }, pattern(10, 1)));
  });

  it("a seal requested while a part is still being written takes effect when it commits", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "a" }, pattern(10, 1));
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "r", part: "b" }, 20));
    const get = track(() => buf.get({ transferId: "r", waitMs: 5000 }));
    expect(buf.seal("r").state).toBe("open");
    writer.write(pattern(20, 2));
    await vi.advanceTimersByTimeAsync(100);
    expect(buf.stat("r").state).toBe("open");
    expect(get.settled).toBe(false);

    expect(writer.commit().state).toBe("sealed");
    await flushMicrotasks();
    expect(get.fulfilled).toBe(true);
    expect(get.value!.parts.map((p) => p.name)).toEqual(["a", "b"]);
    expect(bytesOf(get.value!.parts[1]!)).toEqual(pattern(20, 2));
  });

  it("a part abandoned after a seal was asked for drops the whole entry: it is never sealed without that part", async () => {
    const { buf, events } = makeBuffer();
    await buf.put({ transferId: "r", part: "a" }, pattern(10, 1));
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "r", part: "layer.3" }, 20));
    const reader = track(() => buf.get({ transferId: "r", waitMs: 5000 }));
    buf.seal("r");
    writer.write(pattern(5, 2));
    writer.abort();
    await flushMicrotasks();

    for (const err of [reader.error, thrownBy(() => buf.stat("r")), await failsAtOnce(() => buf.get({ transferId: "r" }))]) {
      expect(err).toBeInstanceOf(AbortedError);
      expect((err as Error).message).toBe("entry r is incomplete: part layer.3 was abandoned after the seal was asked for");
    }
    expect(events).toEqual([{ transferId: "r", reason: "incomplete", bytes: 10 }]);
    expect(buf.counters.incomplete).toBe(1);
    expect(buf.bytesUsed).toBe(0);
  });

  it("a part still waiting for room when the seal is asked for and then timed out drops the entry as incomplete", async () => {
    const { buf } = makeBuffer({ putDeadlineMs: 200 });
    await putSealed(buf, "full", 900);
    const reader = (await succeedsAtOnce(() => buf.get({ transferId: "full" }))); // not evictable
    await buf.put({ transferId: "r", part: "a" }, pattern(10, 1));
    const waiting = track(() => buf.put({ transferId: "r", part: "b" }, pattern(200, 2)));
    buf.seal("r");
    await vi.advanceTimersByTimeAsync(200);
    expect(waiting.error).toBeInstanceOf(ResourceExhaustedError);
    const err = thrownBy(() => buf.stat("r")) as Error;
    expect(err).toBeInstanceOf(AbortedError);
    expect(err.message).toMatch(/part b was abandoned/);
    reader.release();
  });

  it("a commit to an entry released meanwhile fails NOT_FOUND released and gives the bytes back", async () => {
    const { buf } = makeBuffer();
    const writer = await succeedsAtOnce(() => buf.openPart({ transferId: "r", part: "a" }, 100));
    writer.write(pattern(50, 1));
    buf.release("r");
    expect(buf.bytesUsed).toBe(100);
    const writeErr = thrownBy(() => writer.write(pattern(50, 2))) as NotFoundError;
    expect(writeErr.reason).toBe("released");
    writer.abort();
    expect(buf.bytesUsed).toBe(0);
    expect(buf.accountedBytes()).toBe(0);
  });
});

describe("release", () => {
  it("frees the entry's bytes at once and returns them when nobody holds it", async () => {
    const { buf, events } = makeBuffer();
    await buf.put({ transferId: "r", part: "a" }, pattern(100, 1));
    await buf.put({ transferId: "r", part: "b" }, pattern(50, 2));
    expect(buf.release("r")).toBe(150);
    expect(buf.bytesUsed).toBe(0);
    expect(buf.counters.releases).toBe(1);
    expect(events.map((e) => [e.transferId, e.reason])).toEqual([["r", "released"]]);
  });

  it("while a reader holds a lease: stat says NOT_FOUND at once, the bytes stay until the reader lets go", async () => {
    const { buf, events } = makeBuffer();
    await putSealed(buf, "r", 300, 6);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r" }));
    expect(buf.release("r")).toBe(300);

    expect((thrownBy(() => buf.stat("r")) as NotFoundError).reason).toBe("released");
    expect(buf.list().entries).toEqual([]);
    expect(events.map((e) => [e.transferId, e.reason, e.bytes])).toEqual([["r", "released", 300]]);
    expect(buf.bytesUsed).toBe(300);
    expect(buf.accountedBytes()).toBe(300);
    expect(bytesOf(lease.parts[0]!)).toEqual(pattern(300, 6));

    lease.release();
    expect(buf.bytesUsed).toBe(0);
    expect(buf.accountedBytes()).toBe(0);
  });

  it("the bytes a reader still holds after a release are not free for a put until it lets go", async () => {
    const { buf } = makeBuffer();
    await putSealed(buf, "r", 600);
    const lease = await succeedsAtOnce(() => buf.get({ transferId: "r" }));
    buf.release("r");
    const put = track(() => buf.put({ transferId: "next", part: "kv" }, pattern(600, 2)));
    await vi.advanceTimersByTimeAsync(50);
    expect(put.settled).toBe(false);
    lease.release();
    await flushMicrotasks();
    expect(put.fulfilled).toBe(true);
    expect(buf.bytesUsed).toBe(600);
  });
});

describe("onRemoved", () => {
  it.each(["released", "evicted", "expired", "consumed"] as const)(
    "reports the bytes an entry held when it is %s",
    async (reason) => {
      const { buf, events } = makeBuffer({ leaseTtlMs: 1000 });
      await buf.put({ transferId: "r", part: "a" }, pattern(250, 1));
      await buf.put({ transferId: "r", part: "b", seal: true }, pattern(350, 2));
      if (reason === "released") buf.release("r");
      if (reason === "evicted") await buf.put({ transferId: "big", part: "kv" }, pattern(900, 3));
      if (reason === "expired") await vi.advanceTimersByTimeAsync(1000);
      if (reason === "consumed") await consume(buf, "r");
      const event = events.find((e) => e.transferId === "r");
      expect(event).toEqual({ transferId: "r", reason, bytes: 600 });
    },
  );
});

describe("list", () => {
  async function fill(buf: ReturnType<typeof makeBuffer>["buf"]) {
    const ids = ["m", "c", "x", "a", "q", "b", "z"];
    for (const [i, id] of ids.entries()) {
      await buf.put({ transferId: id, part: "kv", seal: i % 2 === 0 }, pattern(10, i));
    }
    return ids;
  }

  function pages(buf: ReturnType<typeof makeBuffer>["buf"], pageSize: number, state?: "open" | "sealed") {
    const out: string[][] = [];
    let pageToken = "";
    do {
      const page = buf.list({ pageSize, pageToken, state });
      out.push(page.entries.map((e) => e.transferId));
      pageToken = page.nextPageToken;
      expect(out.length).toBeLessThan(20);
    } while (pageToken !== "");
    return out;
  }

  it("pages through every entry exactly once, sorted by transfer id", async () => {
    const { buf } = makeBuffer();
    const ids = await fill(buf);
    const result = pages(buf, 3);
    expect(result.map((p) => p.length)).toEqual([3, 3, 1]);
    expect(result.flat()).toEqual([...ids].sort());
    expect(pages(buf, 7)).toEqual([[...ids].sort()]);
    expect(buf.list().entries.map((e) => e.transferId)).toEqual([...ids].sort());
  });

  it("filters by state, and pages through the filtered entries", async () => {
    const { buf } = makeBuffer();
    await fill(buf);
    expect(pages(buf, 2, "sealed")).toEqual([["m", "q"], ["x", "z"]]);
    expect(pages(buf, 2, "open")).toEqual([["a", "b"], ["c"]]);
    expect(buf.list({ state: "sealed" }).entries.every((e) => e.state === "sealed")).toBe(true);
  });

  it("reports each entry's parts, bytes and readers", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "r", part: "a" }, pattern(10, 1));
    await buf.put({ transferId: "r", part: "b", seal: true }, pattern(20, 2));
    const lease = await buf.get({ transferId: "r" });
    const [info] = buf.list().entries;
    expect(info).toMatchObject({
      transferId: "r",
      state: "sealed",
      bytes: 30,
      readers: 1,
      writers: 0,
      parts: [
        { name: "a", size: 10, complete: true },
        { name: "b", size: 20, complete: true },
      ],
    });
    lease.release();
  });

  it("refuses a page size out of range and a token it did not issue", async () => {
    const { buf } = makeBuffer();
    await fill(buf);
    expect((thrownBy(() => buf.list({ pageSize: 1001 })) as InvalidArgumentError).field).toBe("page_size");
    expect((thrownBy(() => buf.list({ pageSize: -1 })) as InvalidArgumentError).field).toBe("page_size");
    expect((thrownBy(() => buf.list({ pageSize: 1.5 })) as InvalidArgumentError).field).toBe("page_size");
    expect((thrownBy(() => buf.list({ pageToken: "!!!" })) as InvalidArgumentError).field).toBe("page_token");
  });
});

describe("close", () => {
  it("rejects parked gets and puts with CANCELLED", async () => {
    const { buf } = makeBuffer();
    await buf.put({ transferId: "open", part: "a" }, pattern(900, 1));
    const get = track(() => buf.get({ transferId: "r", waitMs: 5000 }));
    const put = track(() => buf.put({ transferId: "p", part: "kv" }, pattern(500, 2)));
    await vi.advanceTimersByTimeAsync(10);
    buf.close();
    await flushMicrotasks();
    expect(get.error).toBeInstanceOf(CancelledError);
    expect(put.error).toBeInstanceOf(CancelledError);
    expect(buf.counters.putTimeouts).toBe(0);
    expect(buf.bytesUsed).toBe(900);
  });

  it("refuses new puts and gets after close, and no lease expires any more", async () => {
    const { buf } = makeBuffer({ leaseTtlMs: 1000 });
    await putSealed(buf, "r", 10);
    buf.close();
    expect(await failsAtOnce(() => buf.put({ transferId: "x", part: "a" }, pattern(10, 1)))).toBeInstanceOf(CancelledError);
    expect(await failsAtOnce(() => buf.get({ transferId: "r" }))).toBeInstanceOf(CancelledError);
    await vi.advanceTimersByTimeAsync(5000);
    expect(buf.counters.expiries).toBe(0);
    expect(buf.stat("r").state).toBe("sealed");
  });
});
