// The store's Memory, backed by the native engine's pool: blocks are extents of one
// memfd-backed region, and JavaScript sees them through zero-copy views.
//
// A block is one extent when a free extent holds it (best fit: the common case, and the
// fast path everywhere). When the free bytes are scattered over smaller holes, a block
// spans several extents (its segments, at most MAX_SEGMENTS): free room is usable room.
// Sizes are rounded up to the allocator's unit; `used` and each block's `footprint`
// count the rounded bytes, so the pool's figures match the allocator's.
import { InternalError } from "../errors.js";
import type { Block, Memory } from "../store/memory.js";
import type { NativeEngine } from "./native.js";

/** The native allocator's unit (ExtentAllocator::kAlignment): every extent is a multiple of it. */
export const ALLOCATION_UNIT = 64;
/** Most extents one block may span; past that the pool is too fragmented for it (room must be evicted). */
export const MAX_SEGMENTS = 1024;

/** Bytes an allocation of `size` takes in the pool (a zero-byte one takes one unit). */
export function poolFootprint(size: number): number {
  return size === 0 ? ALLOCATION_UNIT : Math.ceil(size / ALLOCATION_UNIT) * ALLOCATION_UNIT;
}

/** One segment of a block: `length` bytes of the block's data at `offset` in the pool. */
export interface PoolExtent {
  readonly offset: number;
  readonly length: number;
}

export class PoolBlock implements Block {
  /** Pool offset of the extents the allocator handed out (what `free` gives back). */
  readonly #starts: readonly number[];
  /** Block offset where each segment starts (ascending; starts at 0). */
  readonly #at: readonly number[];

  /**
   * @param extents the block's segments in order; their lengths add up to `size` (the
   *   last one may be shorter than its extent, never longer)
   */
  constructor(
    readonly extents: readonly PoolExtent[],
    readonly size: number,
    readonly footprint: number,
    private readonly pool: Buffer,
  ) {
    this.#starts = extents.map((e) => e.offset);
    let at = 0;
    this.#at = extents.map((e) => ((at += e.length), at - e.length));
  }

  /** Pool offsets of the allocator's extents, to free. */
  get allocations(): readonly number[] {
    return this.#starts;
  }

  write(offset: number, src: Uint8Array): void {
    if (offset < 0 || offset + src.length > this.size) {
      throw new RangeError(`write of ${src.length} bytes at ${offset} past a block of ${this.size}`);
    }
    if (this.extents.length === 1) {
      this.pool.set(src, this.extents[0]!.offset + offset);
      return;
    }
    let done = 0;
    for (const view of this.segments(offset, src.length)) {
      view.set(src.subarray(done, done + view.length));
      done += view.length;
    }
  }

  segments(offset = 0, length = this.size - offset): Uint8Array[] {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`view of ${length} bytes at ${offset} past a block of ${this.size}`);
    }
    if (this.extents.length === 1) {
      const start = this.extents[0]!.offset + offset;
      return [this.pool.subarray(start, start + length)];
    }
    const out: Uint8Array[] = [];
    let i = this.#segmentAt(offset);
    let left = length;
    let within = offset - this.#at[i]!;
    while (left > 0) {
      const e = this.extents[i]!;
      const n = Math.min(left, e.length - within);
      out.push(this.pool.subarray(e.offset + within, e.offset + within + n));
      left -= n;
      within = 0;
      i++;
    }
    if (out.length === 0) out.push(this.pool.subarray(0, 0));
    return out;
  }

  view(offset: number, length: number): Uint8Array {
    const views = this.segments(offset, length);
    return views.length === 1 ? views[0]! : Buffer.concat(views, length);
  }

  /** The segment holding block offset `offset` (the last one for offset === size). */
  #segmentAt(offset: number): number {
    let lo = 0;
    let hi = this.#at.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.#at[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
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

  /** Bytes the live blocks take in the pool (their sizes rounded up to whole units). */
  get used(): number {
    return this.#used;
  }

  footprintOf(size: number): number {
    return poolFootprint(size);
  }

  allocate(size: number): PoolBlock | undefined {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad block size ${size}`);
    const footprint = poolFootprint(size);
    if (this.#used + footprint > this.capacity) return undefined;
    let extents: PoolExtent[];
    const offset = this.#native.allocate(size);
    if (offset >= 0) {
      extents = [{ offset, length: size }];
    } else {
      // No single hole holds it: gather several (all or nothing, natively).
      const pieces = this.#native.allocateScattered(size, MAX_SEGMENTS);
      if (pieces === null) return undefined;
      extents = [];
      let left = size;
      for (let i = 0; i < pieces.length; i += 2) {
        const length = Math.min(left, pieces[i + 1]!);
        extents.push({ offset: pieces[i]!, length });
        left -= length;
      }
    }
    const block = new PoolBlock(extents, size, footprint, this.#pool);
    this.#used += footprint;
    this.#live.add(block);
    return block;
  }

  /** Where a block of this pool lies in it: its segments in order (what the data plane addresses). */
  extentsOf(block: Block): readonly PoolExtent[] {
    if (!(block instanceof PoolBlock)) throw new InternalError("a block that is not in the engine's pool reached the data plane");
    return block.extents;
  }

  free(block: Block): void {
    if (!(block instanceof PoolBlock) || !this.#live.delete(block)) {
      throw new Error("free of a block this memory did not allocate or already freed");
    }
    for (const offset of block.allocations) this.#native.free(offset);
    this.#used -= block.footprint;
  }
}
