// The TypeScript face of the native engine: the pool as the store's Memory, handles
// that expose extents to peers, and batches of ops whose completions arrive in batches.
//
// Contract kept here (see native/engine/engine.h): an op's local extent stays valid
// until its terminal completion; a revoked handle's extent stays valid until its
// "handle-released" completion. `run` and `revoke` resolve only at those points, so
// a caller that awaits them may free the memory afterwards.
import type { Logger } from "pino";
import {
  CancelledError,
  DeadlineExceededError,
  InternalError,
  InvalidArgumentError,
  type KvferryError,
  NotFoundError,
  OutOfRangeError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnavailableError,
} from "../errors.js";
import { loadAddon, type NativeCode, type NativeCompletion, type NativeEngine, type NativeOp } from "./native.js";
import { PoolMemory, type PoolBlock } from "./pool-memory.js";

export interface TransferEngineOptions {
  poolSize: number;
  token: string;
  listenHost: string;
  listenPort: number;
  connectionsPerPeer: number;
  /** Largest slice of an op on the wire. */
  sliceBytes?: number;
  ioTimeoutMs?: number;
}

export type OpSpec = Omit<NativeOp, "id">;

export interface OpResult {
  /** undefined when the op succeeded. */
  error?: KvferryError;
  bytes: number;
  micros: number;
}

/** An engine status as a kvferry error. */
export function engineError(code: NativeCode, message: string): KvferryError {
  switch (code) {
    case "INVALID_ARGUMENT": return new InvalidArgumentError("op", message);
    case "NOT_FOUND": return new NotFoundError(message);
    case "OUT_OF_RANGE": return new OutOfRangeError(message);
    case "RESOURCE_EXHAUSTED": return new ResourceExhaustedError(message);
    case "UNAVAILABLE": return new UnavailableError(message);
    case "CANCELLED": return new CancelledError(message);
    case "DEADLINE_EXCEEDED": return new DeadlineExceededError(message);
    case "PERMISSION_DENIED": return new PermissionDeniedError(message);
    default: return new InternalError(`${code}: ${message}`);
  }
}

export class TransferEngine {
  readonly memory: PoolMemory;
  readonly #native: NativeEngine;
  readonly #ops = new Map<number, (result: OpResult) => void>();
  readonly #revoked = new Map<bigint, () => void>();
  #nextOp = 1;
  #closed = false;

  constructor(options: TransferEngineOptions, private readonly log: Logger) {
    const { Engine } = loadAddon();
    this.#native = new Engine(
      {
        poolSize: options.poolSize,
        token: options.token,
        listenHost: options.listenHost,
        listenPort: options.listenPort,
        connectionsPerPeer: options.connectionsPerPeer,
        sliceBytes: options.sliceBytes ?? 4 << 20,
        ioTimeoutMs: options.ioTimeoutMs ?? 10_000,
      },
      (batch) => this.#complete(batch),
    );
    this.memory = new PoolMemory(this.#native);
  }

  get dataPort(): number {
    return this.#native.dataPort();
  }

  stats() {
    return this.#native.stats();
  }

  /** Lets peers reach exactly this block, through a fresh handle. */
  expose(block: PoolBlock): bigint {
    return this.#native.expose(block.offset, block.size);
  }

  /** Resolves once no peer access to the handle is in flight; then its block may be freed. */
  revoke(handle: bigint): Promise<void> {
    return new Promise<void>((resolve) => {
      this.#revoked.set(handle, resolve);
      try {
        this.#native.revoke(handle);
      } catch (err) {
        // Unknown handle: nothing can be in flight on it.
        this.#revoked.delete(handle);
        this.log.warn({ err, handle: handle.toString() }, "revoke of an unknown handle");
        resolve();
      }
    });
  }

  /**
   * Runs ops to their terminal completions. At the deadline (or on abort) the ops still
   * running are cancelled, and `run` still waits for their completions before resolving:
   * the caller may free every local extent once it resolves.
   */
  async run(ops: OpSpec[], deadlineMs: number, signal?: AbortSignal): Promise<OpResult[]> {
    if (this.#closed) throw new CancelledError("the engine is shut down");
    if (ops.length === 0) return [];
    const ids = ops.map(() => this.#nextOp++);
    const results = ids.map((id) => new Promise<OpResult>((resolve) => this.#ops.set(id, resolve)));
    try {
      this.#native.submit(ops.map((op, i) => ({ ...op, id: ids[i]! })));
    } catch (err) {
      for (const id of ids) this.#ops.delete(id);
      const e = err as Error & { code?: NativeCode };
      throw e.code ? engineError(e.code, e.message) : err;
    }
    let expired = false;
    const cancelAll = () => {
      for (const id of ids) if (this.#ops.has(id)) this.#native.cancel(id);
    };
    const timer = setTimeout(() => {
      expired = true;
      cancelAll();
    }, deadlineMs);
    signal?.addEventListener("abort", cancelAll, { once: true });
    try {
      const settled = await Promise.all(results);
      if (!expired) return settled;
      const late = new DeadlineExceededError(`transfer did not finish within ${deadlineMs} ms`);
      // Every failure after the deadline comes from our own cancel.
      return settled.map((r) => (r.error ? { ...r, error: late } : r));
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", cancelAll);
    }
  }

  /** Stops the data plane: running ops complete as cancelled. The pool stays mapped for live views. */
  shutdown(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#native.shutdown();
    // The native side completes nothing after shutdown; settle whoever still waits.
    for (const [id, resolve] of this.#ops) resolve({ error: new CancelledError("the engine is shut down"), bytes: 0, micros: 0 });
    this.#ops.clear();
    for (const resolve of this.#revoked.values()) resolve();
    this.#revoked.clear();
  }

  #complete(batch: NativeCompletion[]): void {
    for (const c of batch) {
      if (c.kind === "op") {
        const resolve = this.#ops.get(c.id);
        if (resolve === undefined) continue;
        this.#ops.delete(c.id);
        resolve({ error: c.code === "OK" ? undefined : engineError(c.code, c.message), bytes: c.bytes, micros: c.micros });
      } else {
        const resolve = this.#revoked.get(c.id);
        this.#revoked.delete(c.id);
        resolve?.();
      }
    }
  }
}
