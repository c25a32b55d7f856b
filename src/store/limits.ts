// The store's bounds on things other than pool bytes: how many entries it indexes, how
// many parts one entry has, and how many bytes of whole-part puts may sit in process
// memory while they wait for room. Each refusal is RESOURCE_EXHAUSTED naming the
// setting (its config key) and its value, so an operator knows which knob to turn.
import { ResourceExhaustedError } from "../errors.js";

export interface StoreLimits {
  /** max_entries: entries indexed at once. Absent: no bound. */
  maxEntries?: number;
  /** max_parts_per_entry: parts (stored or being stored) of one entry. Absent: no bound. */
  maxPartsPerEntry?: number;
  /**
   * max_waiting_put_bytes: bytes of whole-part puts (`LookupBuffer.put`, whose caller holds
   * the data) waiting for room at once. Absent: no bound; 0: such a put never waits.
   */
  maxWaitingPutBytes?: number;
}

export function tooManyEntries(transferId: string, maxEntries: number): ResourceExhaustedError {
  return new ResourceExhaustedError(
    `no room for entry ${transferId}: max_entries ${maxEntries} entries are held and none can be evicted ` +
      `(only sealed entries nobody reads or writes are)`,
  );
}

export function tooManyParts(transferId: string, parts: number, maxParts: number): ResourceExhaustedError {
  return new ResourceExhaustedError(
    `entry ${transferId} already has ${parts} parts: max_parts_per_entry is ${maxParts}`,
  );
}

/** Bytes of puts that hold their data while they wait for room. */
export class WaitingPutBudget {
  #bytes = 0;

  constructor(private readonly limit: number | undefined) {}

  get bytes(): number {
    return this.#bytes;
  }

  /** Counts `size` bytes as waiting, or throws when the budget has no room for them. */
  admit(size: number, what: string): void {
    if (this.limit !== undefined && this.#bytes + size > this.limit) {
      throw new ResourceExhaustedError(
        `no room for ${what} (${size} bytes) now, and it may not wait: ${this.#bytes} bytes of puts already wait ` +
          `for room, max_waiting_put_bytes is ${this.limit}`,
      );
    }
    this.#bytes += size;
  }

  leave(size: number): void {
    this.#bytes -= size;
  }
}
