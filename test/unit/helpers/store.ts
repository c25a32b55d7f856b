// Shared helpers for the lookup-buffer tests: a buffer with recorded removals, byte
// patterns that tell one write from another, and ways to look at a promise without
// waiting for it (the tests run on fake timers, so an unexpected wait would hang).
import { expect } from "vitest";
import { LookupBuffer, type LookupBufferOptions, type RemovalEvent } from "../../../src/store/lookup-buffer.js";
import { HeapMemory } from "../../../src/store/memory.js";

export interface TestBuffer {
  buf: LookupBuffer;
  memory: HeapMemory;
  events: RemovalEvent[];
}

export type TestBufferOptions = Partial<Omit<LookupBufferOptions, "memory">> & { capacity?: number };

/** A 1000-byte buffer with the brief's defaults; every removal is recorded in `events`. */
export function makeBuffer(options: TestBufferOptions = {}): TestBuffer {
  const { capacity = 1000, ...rest } = options;
  const events: RemovalEvent[] = [];
  const memory = new HeapMemory(capacity);
  const buf = new LookupBuffer({
    memory,
    leaseTtlMs: 60_000,
    putDeadlineMs: 200,
    getWaitMs: 1000,
    recentlyRemoved: 100,
    maxWaiters: 100,
    onRemoved: (e) => events.push(e),
    ...rest,
  });
  return { buf, memory, events };
}

/** `size` bytes whose content depends on `seed` and on the position (no two seeds alike). */
export function pattern(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** Lets every queued promise callback run (no timer fires). */
export async function flushMicrotasks(rounds = 50): Promise<void> {
  for (let i = 0; i < rounds; i++) await Promise.resolve();
}

export interface Tracked<T> {
  readonly promise: Promise<T>;
  readonly settled: boolean;
  readonly fulfilled: boolean;
  readonly value: T | undefined;
  readonly error: unknown;
}

/**
 * Starts `start` and records how its promise settles, without waiting. A synchronous
 * throw counts as a rejection, so a test about *what* fails is not also a test about *how*.
 */
export function track<T>(start: () => Promise<T>): Tracked<T> {
  const state = { settled: false, fulfilled: false, value: undefined as T | undefined, error: undefined as unknown };
  let promise: Promise<T>;
  try {
    promise = start();
  } catch (err) {
    promise = Promise.reject(err);
  }
  const tracked = {
    promise,
    get settled() {
      return state.settled;
    },
    get fulfilled() {
      return state.fulfilled;
    },
    get value() {
      return state.value;
    },
    get error() {
      return state.error;
    },
  };
  promise.then(
    (v) => {
      state.settled = true;
      state.fulfilled = true;
      state.value = v;
    },
    (e: unknown) => {
      state.settled = true;
      state.error = e;
    },
  );
  return tracked;
}

/** The error `start` fails with, checked to happen without any timer having to fire. */
export async function failsAtOnce(start: () => Promise<unknown>): Promise<unknown> {
  const t = track(start);
  await flushMicrotasks();
  expect(t.settled, "the call should have settled without waiting").toBe(true);
  expect(t.fulfilled, "the call should have failed").toBe(false);
  return t.error;
}

/** The value `start` resolves with, checked to happen without any timer having to fire. */
export async function succeedsAtOnce<T>(start: () => Promise<T>): Promise<T> {
  const t = track(start);
  await flushMicrotasks();
  expect(t.settled, "the call should have settled without waiting").toBe(true);
  if (!t.fulfilled) throw t.error;
  return t.value as T;
}

/** The error a synchronous call throws. */
export function thrownBy(call: () => unknown): unknown {
  try {
    call();
  } catch (err) {
    return err;
  }
  throw new Error("expected the call to throw");
}

/** The concatenated bytes of a read part. */
export function bytesOf(part: { view(offset?: number, length?: number): Uint8Array }): Uint8Array {
  return Uint8Array.from(part.view());
}
