// One entry of the lookup buffer: the named parts of one transfer id.
//
// Lifecycle (one way only):
//   open ──seal (when no part is still arriving)──▶ sealed
//   open | sealed ──release | consume | evict | expire | move──▶ removed
//   open (seal asked for) ──a part abandoned──▶ removed ("incomplete")
// A removed entry leaves the index at once; its memory is returned when the last
// reader or writer that holds it lets go (`holds` reaches 0).
import type { RemovalReason } from "../errors.js";
import type { ExclusiveHold } from "./exclusive-hold.js";
import type { Block } from "./memory.js";

export type EntryState = "open" | "sealed";

export interface Part {
  readonly name: string;
  readonly size: number;
  readonly block: Block;
  /** Bytes written so far. */
  written: number;
  /** Committed by its writer: readable, and no writer can free it any more. */
  committed: boolean;
}

export function isComplete(part: Part): boolean {
  return part.committed;
}

/**
 * What Stat, List and every successful call report about an entry. `parts` lists every
 * part, except after a put: then only the part that put stored (so that filling an entry
 * with n parts costs O(n), not O(n²)); `partCount` always counts them all.
 */
export interface EntryInfo {
  transferId: string;
  state: EntryState;
  parts: { name: string; size: number; complete: boolean }[];
  partCount: number;
  bytes: number;
  leaseRemainingMs: number;
  createdAtMs: number;
  lastAccessMs: number;
  readers: number;
  writers: number;
}

export class Entry {
  state: EntryState = "open";
  /** Seal was asked for while parts were still arriving; it happens when the last one lands. */
  sealRequested = false;
  readonly parts = new Map<string, Part>();
  /** Part names reserved by puts that are still waiting for room. */
  readonly pending = new Set<string>();
  readers = 0;
  writers = 0;
  /** A consuming Get or a move holds the entry; nobody else gets a lease until it ends. */
  hold: ExclusiveHold | undefined;
  removed: RemovalReason | undefined;
  bytes = 0;
  /** Memory its parts take (their blocks' footprints: sizes rounded to the allocation unit). */
  footprint = 0;
  readonly createdAtMs: number;
  lastAccessMs: number;
  leaseEndsAtMs = 0;
  leaseTimer: NodeJS.Timeout | undefined;

  constructor(readonly transferId: string, now: number) {
    this.createdAtMs = now;
    this.lastAccessMs = now;
  }

  get holds(): number {
    return this.readers + this.writers;
  }

  /** Sealed, nobody reading, writing, consuming or moving it, still indexed. */
  get evictable(): boolean {
    return this.state === "sealed" && this.holds === 0 && this.hold === undefined && this.removed === undefined;
  }

  hasPart(name: string): boolean {
    return this.parts.has(name) || this.pending.has(name);
  }

  /** Describes the entry with every part, or with `only` that one (O(1) in the parts). */
  info(now: number, only?: Part): EntryInfo {
    const listed = only === undefined ? [...this.parts.values()] : [only];
    return {
      transferId: this.transferId,
      state: this.state,
      parts: listed.map((p) => ({ name: p.name, size: p.size, complete: isComplete(p) })),
      partCount: this.parts.size,
      bytes: this.bytes,
      leaseRemainingMs: Math.max(0, this.leaseEndsAtMs - now),
      createdAtMs: this.createdAtMs,
      lastAccessMs: this.lastAccessMs,
      readers: this.readers,
      writers: this.writers,
    };
  }
}
