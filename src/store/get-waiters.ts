// Gets parked until their entry is readable, by transfer id. Each has a deadline and may
// be cancelled by its caller's signal; the buffer re-checks the waiters of an entry
// whenever something about it changes (notify), and rejects them all on shutdown.
import { CancelledError } from "../errors.js";

interface Waiter {
  /** Re-checks the entry; settles the waiter when it is readable or never will be. */
  attempt(): void;
  cancel(err: Error): void;
}

export class GetWaiters {
  readonly #byId = new Map<string, Set<Waiter>>();
  #count = 0;

  /** Gets parked now (they count against the buffer's maxWaiters). */
  get count(): number {
    return this.#count;
  }

  /**
   * Parks a get of `transferId` until `ready` finds the entry readable (resolves with
   * `take` of it) or throws (rejects with that); `ready` runs at each notify. Rejects with
   * `timeout()` after `waitMs`, and with CancelledError when `signal` aborts.
   */
  wait<E, T>(
    transferId: string,
    waitMs: number,
    signal: AbortSignal | undefined,
    ready: () => E | undefined,
    take: (entry: E) => T,
    timeout: () => Error,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let set = this.#byId.get(transferId);
      if (set === undefined) this.#byId.set(transferId, (set = new Set()));
      const waiters = set;
      const settle = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        waiters.delete(waiter);
        this.#count--;
        if (waiters.size === 0 && this.#byId.get(transferId) === waiters) this.#byId.delete(transferId);
      };
      const waiter: Waiter = {
        attempt: () => {
          try {
            const entry = ready();
            if (entry === undefined) return;
            settle();
            resolve(take(entry));
          } catch (err) {
            settle();
            reject(err);
          }
        },
        cancel: (err) => {
          settle();
          reject(err);
        },
      };
      const timer = setTimeout(() => {
        settle();
        reject(timeout());
      }, waitMs);
      timer.unref();
      const onAbort = () => {
        settle();
        reject(new CancelledError(`get of ${transferId} cancelled`));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      waiters.add(waiter);
      this.#count++;
    });
  }

  /** Re-checks every get parked on `transferId`. */
  notify(transferId: string): void {
    const waiters = this.#byId.get(transferId);
    if (waiters === undefined) return;
    for (const w of [...waiters]) w.attempt();
  }

  /** Rejects every parked get with `err`. */
  cancelAll(err: Error): void {
    for (const waiters of [...this.#byId.values()]) {
      for (const w of [...waiters]) w.cancel(err);
    }
  }
}
