// The writer of one reserved part: bytes in (written here, or landed by the engine from a
// peer), then exactly one of commit (the part becomes readable) or abort (its room goes back).
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../errors.js";
import type { Entry, EntryInfo, Part } from "./entry.js";
import type { Block } from "./memory.js";

/** The buffer that reserved a writer's part, told how the writer ended. */
export interface PartOwner {
  /** A part is fully written: it becomes readable (and a seal asked for with it applies). */
  partLanded(entry: Entry, part: Part, seal: boolean): EntryInfo;
  /** A part will never be complete: its bytes go back. */
  partAbandoned(entry: Entry, part: Part): void;
}

/** Writes one reserved part. Exactly one of commit or abort must end it. */
export class PartWriter {
  #done = false;

  constructor(
    private readonly owner: PartOwner,
    private readonly entry: Entry,
    private readonly part: Part,
    private readonly seal: boolean,
  ) {}

  get size(): number {
    return this.part.size;
  }

  get written(): number {
    return this.part.written;
  }

  write(chunk: Uint8Array): void {
    if (this.#done) throw new FailedPreconditionError(`part ${this.part.name} is already finished`);
    if (this.entry.removed !== undefined) {
      throw new NotFoundError(`entry ${this.entry.transferId} was ${this.entry.removed}`, this.entry.removed);
    }
    if (this.part.written + chunk.length > this.part.size) {
      throw new InvalidArgumentError(
        "chunk",
        `${this.part.written + chunk.length} bytes is more than the declared size of ${this.part.size}`,
      );
    }
    this.part.block.write(this.part.written, chunk);
    this.part.written += chunk.length;
  }

  /** Every byte was written into the block by someone else (the engine, from a peer). */
  landed(): void {
    if (this.#done) throw new FailedPreconditionError(`part ${this.part.name} is already finished`);
    this.part.written = this.part.size;
  }

  /** The block the part's bytes go to. */
  get block(): Block {
    return this.part.block;
  }

  /** The part is complete: it becomes readable. Throws (and aborts) if bytes are missing. */
  commit(): EntryInfo {
    if (this.#done) throw new FailedPreconditionError(`part ${this.part.name} is already finished`);
    if (this.part.written !== this.part.size) {
      const written = this.part.written;
      this.abort();
      throw new InvalidArgumentError("size", `declared ${this.part.size} bytes but ${written} arrived`);
    }
    this.#done = true;
    return this.owner.partLanded(this.entry, this.part, this.seal);
  }

  /** Gives the part's bytes back. Safe to call more than once, and after commit (no-op). */
  abort(): void {
    if (this.#done) return;
    this.#done = true;
    this.owner.partAbandoned(this.entry, this.part);
  }
}
