// The store's memory: fixed capacity, blocks handed out and taken back.
//
// The lookup buffer owns byte accounting and eviction policy; a Memory only says
// yes or no to an allocation. Today blocks are Node Buffers; the native engine's
// pool implements the same interface with extents of one memfd-backed region.

/** One allocation. Its bytes stay valid until it is given back with `free`. */
export interface Block {
  readonly size: number;
  /** Copies `src` into the block at `offset`. Throws RangeError past the end. */
  write(offset: number, src: Uint8Array): void;
  /** A view (not a copy) of `length` bytes at `offset`; valid until the block is freed. */
  view(offset: number, length: number): Uint8Array;
}

export interface Memory {
  readonly capacity: number;
  readonly used: number;
  /** A block of `size` bytes, or undefined when there is no room for it now. */
  allocate(size: number): Block | undefined;
  free(block: Block): void;
}

class HeapBlock implements Block {
  constructor(readonly bytes: Buffer) {}
  get size(): number {
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
}

/** Blocks on the JavaScript heap, bounded by `capacity` bytes in total. */
export class HeapMemory implements Memory {
  #used = 0;
  readonly #live = new WeakSet<Block>();

  constructor(readonly capacity: number) {}

  get used(): number {
    return this.#used;
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
