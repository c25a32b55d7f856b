// What a successful Get holds: the entry's parts, which cannot be evicted or freed
// until the lease is released. A consuming Get's lease also carries its exclusive hold
// (src/store/exclusive-hold.ts): releasing the lease ends the read, not the hold.
import type { Entry, EntryInfo, Part } from "./entry.js";
import type { ExclusiveHold } from "./exclusive-hold.js";
import type { Block } from "./memory.js";

export interface ReadPart {
  readonly name: string;
  readonly size: number;
  /** The part's memory, for the engine to send from. Valid until the lease is released. */
  readonly block: Block;
  /**
   * The part's bytes, valid until the lease is released: a view when they lie in one
   * segment of the block (the common case), else a copy. See `segments`.
   */
  view(offset?: number, length?: number): Uint8Array;
  /** Views of the part's bytes, one per segment of its block; valid until the lease is released. */
  segments(offset?: number, length?: number): Uint8Array[];
}

export interface ReadLease {
  readonly entry: EntryInfo;
  readonly parts: readonly ReadPart[];
  /**
   * A consuming read's token: the entry is dropped when its reader confirms with it
   * (`LookupBuffer.confirmConsume`), and given back if that does not happen in time.
   */
  readonly consumeToken: string | undefined;
  /** A consuming read's: aborts when its hold lapsed unconfirmed (stop sending). */
  readonly lapsed: AbortSignal | undefined;
  /**
   * Ends the read. `delivered` (the default): every byte went out to the reader; a
   * consuming read's hold then waits for the confirmation. `false`: the read failed
   * (e.g. the client went away); a consuming read gives the entry back at once.
   */
  release(delivered?: boolean): void;
  /**
   * Ends the read and removes the very entry it held, if that entry is still the
   * one indexed under its id (never a newer entry that reuses the id). The bytes went
   * elsewhere (`transferred`).
   */
  releaseAndDrop(reason: "transferred"): void;
}

/** How a lease hands its end back to the lookup buffer. */
export interface LeaseHooks {
  readerLeft(entry: Entry, hold: ExclusiveHold | undefined, delivered: boolean): void;
  readerMoved(entry: Entry, hold: ExclusiveHold | undefined, reason: "transferred"): void;
}

export function createReadLease(
  entry: Entry,
  parts: readonly Part[],
  hold: ExclusiveHold | undefined,
  hooks: LeaseHooks,
): ReadLease {
  const readParts = parts.map(
    (p): ReadPart => ({
      name: p.name,
      size: p.size,
      block: p.block,
      view: (offset = 0, length = p.size - offset) => p.block.view(offset, length),
      segments: (offset = 0, length = p.size - offset) => p.block.segments(offset, length),
    }),
  );
  let info: EntryInfo | undefined; // built on first use: transfers never look
  let released = false;
  return {
    get entry() {
      return (info ??= entry.info(Date.now()));
    },
    parts: readParts,
    consumeToken: hold?.purpose === "consume" ? hold.token : undefined,
    lapsed: hold?.purpose === "consume" ? hold.lapsed : undefined,
    release(delivered = true) {
      if (released) return;
      released = true;
      hooks.readerLeft(entry, hold, delivered);
    },
    releaseAndDrop(reason) {
      if (released) return;
      released = true;
      hooks.readerMoved(entry, hold, reason);
    },
  };
}
