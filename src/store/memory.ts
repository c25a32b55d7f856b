// The store's memory: fixed capacity, blocks handed out and taken back.
//
// The lookup buffer owns byte accounting and eviction policy; a Memory only says
// yes or no to an allocation. HeapMemory's blocks are Node Buffers; the native engine's
// pool (src/engine/pool-memory.ts) implements the same interface with extents of one
// memfd-backed region, where a block may span several extents (segments).

/** One allocation. Its bytes stay valid until it is given back with `free`. */
export interface Block {
  readonly size: number;
  /** Bytes of the memory it takes: `size` rounded up to the memory's allocation unit. */
  readonly footprint: number;
  /** Copies `src` into the block at `offset`. Throws RangeError past the end. */
  write(offset: number, src: Uint8Array): void;
  /**
   * Views (not copies) of the `length` bytes at `offset`, in order, one per segment of
   * the block the range crosses (one for a block of one segment; at least one, maybe
   * empty). Valid until the block is freed. Throws RangeError past the end.
   */
  segments(offset?: number, length?: number): Uint8Array[];
  /**
   * The `length` bytes at `offset`: a view when they lie in one segment (always, for a
   * block of one segment), else a copy. Prefer `segments` on paths that move many bytes.
   */
  view(offset: number, length: number): Uint8Array;
}

export interface Memory {
  readonly capacity: number;
  /** Bytes the live blocks take: the sum of their footprints. */
  readonly used: number;
  /** The footprint a block of `size` bytes would have. */
  footprintOf(size: number): number;
  /**
   * A block of `size` bytes, or undefined when there is no room for it now. A memory
   * whose free bytes (capacity - used) cover footprintOf(size) grants it unless that
   * room is split into more pieces than one block may span.
   */
  allocate(size: number): Block | undefined;
  free(block: Block): void;
}

class HeapBlock implements Block {
  constructor(readonly bytes: Buffer) {}
  get size(): number {
    return this.bytes.length;
  }
  get footprint(): number {
    return this.bytes.length;
  }
  write(offset: number, src: Uint8Array): void {
    if (offset < 0 || offset + src.length > this.bytes.length) {
      throw new RangeError(`write of ${src.length} bytes at ${offset} past a block of ${this.bytes.length}`);
    }
    this.bytes.set(src, offset);
  }
  view(offset: number, length: number): Uint8Array {
    if (offset < 0 || length < 0 || offset + length > this.bytes.length) {
      throw new RangeError(`view of ${length} bytes at ${offset} past a block of ${this.bytes.length}`);
    }
    return this.bytes.subarray(offset, offset + length);
  }
  segments(offset = 0, length = this.bytes.length - offset): Uint8Array[] {
    return [this.view(offset, length)];
  }
}

/** Blocks on the JavaScript heap, bounded by `capacity` bytes in total. */
export class HeapMemory implements Memory {
  #used = 0;
  readonly #live = new WeakSet<Block>();

  constructor(readonly capacity: number) {}

  get used(): number {
    return this.#used;
  }

  footprintOf(size: number): number {
    return size;
  }

  allocate(size: number): Block | undefined {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad block size ${size}`);
    if (this.#used + size > this.capacity) return undefined;
    const block = new HeapBlock(Buffer.allocUnsafe(size));
    this.#used += size;
    this.#live.add(block);
    return block;
  }

  free(block: Block): void {
    if (!this.#live.delete(block)) throw new Error("free of a block this memory did not allocate or already freed");
    this.#used -= block.size;
  }
}
