// Eviction: room for a part or for a new entry is made by evicting least-recently-used
// evictable entries (sealed and held by nobody; Entry.evictable), and no more of them
// than the room needs.
import type { Entry } from "./entry.js";
import { tooManyEntries } from "./limits.js";
import type { Block, Memory } from "./memory.js";

export class Eviction {
  /**
   * @param entries the indexed entries in least-recently-used order (first is the candidate)
   * @param evict removes an entry as "evicted" (it leaves `entries`; its memory is freed
   *   once nobody holds it)
   */
  constructor(
    private readonly entries: ReadonlyMap<string, Entry>,
    private readonly memory: Memory,
    private readonly evict: (entry: Entry) => void,
  ) {}

  /**
   * A block of `size` bytes, evicting least-recently-used evictable entries only while
   * the free bytes fall short of its footprint: the memory gathers free room from
   * several holes, so the last eviction is the one that makes the bytes suffice. Only a
   * memory too fragmented for one block (more holes than a block may span) makes it
   * evict further. Evicts nothing when even evicting everything evictable would not do.
   */
  allocate(size: number): Block | undefined {
    const block = this.memory.allocate(size);
    if (block !== undefined) return block;
    const need = this.memory.footprintOf(size);
    const free = () => this.memory.capacity - this.memory.used;
    if (free() + this.#evictableFootprint() < need) return undefined;
    for (const entry of this.entries.values()) {
      if (!entry.evictable) continue;
      this.evict(entry);
      if (free() < need) continue;
      const block = this.memory.allocate(size);
      if (block !== undefined) return block;
    }
    return undefined;
  }

  /** Evicts least-recently-used evictable entries until a new one fits under `max` entries. */
  makeRoomForEntry(transferId: string, max: number | undefined): void {
    if (max === undefined || this.entries.size < max) return;
    for (const entry of this.entries.values()) {
      if (!entry.evictable) continue;
      this.evict(entry);
      if (this.entries.size < max) return;
    }
    throw tooManyEntries(transferId, max);
  }

  #evictableFootprint(): number {
    let sum = 0;
    for (const entry of this.entries.values()) if (entry.evictable) sum += entry.footprint;
    return sum;
  }
}
