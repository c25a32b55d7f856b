// The store's Memory, backed by the native engine's pool: blocks are extents of one
// memfd-backed region, and JavaScript sees them through zero-copy views.
import type { Block, Memory } from "../store/memory.js";
import type { NativeEngine } from "./native.js";

export class PoolBlock implements Block {
  constructor(
    readonly offset: number,
    readonly size: number,
    private readonly pool: Buffer,
  ) {}

  write(offset: number, src: Uint8Array): void {
    if (offset < 0 || offset + src.length > this.size) {
      throw new RangeError(`write of ${src.length} bytes at ${offset} past a block of ${this.size}`);
    }
    this.pool.set(src, this.offset + offset);
  }

  view(offset: number, length: number): Uint8Array {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`view of ${length} bytes at ${offset} past a block of ${this.size}`);
    }
    return this.pool.subarray(this.offset + offset, this.offset + offset + length);
  }
}

export class PoolMemory implements Memory {
  readonly #native: NativeEngine;
  readonly #pool: Buffer;
  #used = 0;
  readonly #live = new Set<PoolBlock>();

  constructor(native: NativeEngine) {
    this.#native = native;
    this.#pool = Buffer.from(native.poolBuffer());
  }

  get capacity(): number {
    return this.#pool.length;
  }

  /** Bytes handed out (block sizes, not the allocator's aligned extents). */
  get used(): number {
    return this.#used;
  }

  allocate(size: number): PoolBlock | undefined {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad block size ${size}`);
    if (this.#used + size > this.capacity) return undefined;
    const offset = this.#native.allocate(size);
    if (offset < 0) return undefined;
    const block = new PoolBlock(offset, size, this.#pool);
    this.#used += size;
    this.#live.add(block);
    return block;
  }

  free(block: Block): void {
    if (!(block instanceof PoolBlock) || !this.#live.delete(block)) {
      throw new Error("free of a block this memory did not allocate or already freed");
    }
    this.#native.free(block.offset);
    this.#used -= block.size;
  }
}
