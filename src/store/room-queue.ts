// Puts waiting for room, served first come, first served, each with a deadline.
//
// The queue is woken whenever room may have appeared (memory freed, an entry became
// evictable). A waiter that cannot be served blocks the ones behind it, so a large
// part is not starved by a stream of small ones; its deadline bounds the delay.
import { CancelledError, DeadlineExceededError } from "../errors.js";
import type { Block } from "./memory.js";

interface RoomWaiter {
  size: number;
  resolve(block: Block): void;
  fail(err: Error): void;
}

export class RoomQueue {
  readonly #waiters: RoomWaiter[] = [];
  #waking = false;
  #wakeAgain = false;

  /** `allocate` makes room if it can (evicting) and returns a block, or undefined. */
  constructor(private readonly allocate: (size: number) => Block | undefined) {}

  get length(): number {
    return this.#waiters.length;
  }

  /** Waits for a block; rejects with DeadlineExceededError or CancelledError (on abort). */
  wait(size: number, deadlineMs: number, signal?: AbortSignal): Promise<Block> {
    if (signal?.aborted) return Promise.reject(new CancelledError("put cancelled while waiting for room"));
    return new Promise<Block>((resolve, reject) => {
      const leave = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        const i = this.#waiters.indexOf(waiter);
        if (i >= 0) this.#waiters.splice(i, 1);
      };
      const waiter: RoomWaiter = {
        size,
        resolve: (block) => {
          leave();
          resolve(block);
        },
        fail: (err) => {
          leave();
          reject(err);
          // The head left: the next waiter may fit.
          this.wake();
        },
      };
      const timer = setTimeout(() => waiter.fail(new DeadlineExceededError(`no room within ${deadlineMs} ms`)), deadlineMs);
      timer.unref();
      const onAbort = () => waiter.fail(new CancelledError("put cancelled while waiting for room"));
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  /** Serves waiters in order until one cannot be served. Safe to call re-entrantly. */
  wake(): void {
    if (this.#waking) {
      this.#wakeAgain = true;
      return;
    }
    this.#waking = true;
    try {
      do {
        this.#wakeAgain = false;
        while (this.#waiters.length > 0) {
          const head = this.#waiters[0]!;
          const block = this.allocate(head.size);
          if (block === undefined) break;
          head.resolve(block);
        }
      } while (this.#wakeAgain);
    } finally {
      this.#waking = false;
    }
  }

  rejectAll(err: Error): void {
    const waiters = this.#waiters.splice(0);
    for (const w of waiters) w.fail(err);
  }
}
