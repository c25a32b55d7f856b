// The TypeScript face of the native engine: the pool as the store's Memory, handles
// that expose extents to peers, and batches of ops whose completions arrive in batches.
//
// Contract kept here (see native/engine/engine.h): an op's local extent stays valid
// until its terminal completion; a revoked handle's extent stays valid until it is
// reported released. `run` and `revokeAll` resolve only at those points, so a caller
// that awaits them may free the memory afterwards.
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
import { loadAddon, NATIVE_CODES, type LocalSocketOptions, type NativeCode, type NativeCompletions, type NativeEngine } from "./native.js";
import type { Block } from "../store/memory.js";
import { PoolMemory, type PoolExtent } from "./pool-memory.js";

export interface TransferEngineOptions {
  poolSize: number;
  /** The transport that moves bytes between engines (default "tcp"). */
  protocol?: string;
  /** "rdma": the devices used as rails, comma-separated; "" (default): UCX's choice. */
  devices?: string;
  token: string;
  listenHost: string;
  listenPort: number;
  connectionsPerPeer: number;
  /** Largest slice of an op on the wire. */
  sliceBytes?: number;
  ioTimeoutMs?: number;
  /** An incoming data-plane connection must finish its handshake within this long. */
  handshakeTimeoutMs?: number;
  /** Data-plane I/O threads (epoll loops), shared by incoming and outgoing connections; 0 or absent: 2 per core, 2 to 8. */
  ioThreads?: number;
}

export interface OpSpec {
  kind: "write" | "read";
  /** The local side: pool extents in order, their lengths adding up to `length` (many entries, one op). */
  gather: readonly PoolExtent[];
  remoteHandle: bigint;
  remoteOffset: number;
  length: number;
}

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

/** What the addon threw: a kvferry error when it carries an engine status, else itself. */
function fromNative(err: unknown): unknown {
  const e = err as Error & { code?: NativeCode };
  return e.code ? engineError(e.code, e.message) : err;
}

/** The ops of one `run`: results fill in as completions arrive. */
interface Run {
  readonly first: number;
  readonly results: OpResult[];
  left: number;
  done(): void;
}

/** Several handles' releases awaited together. */
interface Revocation {
  left: number;
  done(): void;
}

export class TransferEngine {
  readonly memory: PoolMemory;
  readonly #native: NativeEngine;
  /** Op id → its run. Ids are consecutive within a run. */
  readonly #runs = new Map<number, Run>();
  readonly #revocations = new Map<bigint, Revocation>();
  #nextOp = 1;
  /** Runs and revocations awaited: while any is, the event loop must not end. */
  #outstanding = 0;
  #closed = false;

  constructor(options: TransferEngineOptions, private readonly log: Logger) {
    const { Engine } = loadAddon();
    this.#native = TransferEngine.#create(Engine, options, (batch) => this.#complete(batch));
    this.memory = new PoolMemory(this.#native);
  }

  /** The native engine; a pool that cannot be mapped or a data port that cannot be bound becomes a kvferry error naming its setting. */
  static #create(Engine: ReturnType<typeof loadAddon>["Engine"], options: TransferEngineOptions, onBatch: (batch: NativeCompletions) => void): NativeEngine {
    const settings = {
      poolSize: options.poolSize,
      protocol: options.protocol ?? "tcp",
      devices: options.devices ?? "",
      token: options.token,
      listenHost: options.listenHost,
      listenPort: options.listenPort,
      connectionsPerPeer: options.connectionsPerPeer,
      sliceBytes: options.sliceBytes ?? 4 << 20,
      ioTimeoutMs: options.ioTimeoutMs ?? 10_000,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 1_000,
      ioThreads: options.ioThreads ?? 0,
    };
    if (settings.protocol === "rdma") quietUcx();
    try {
      return new Engine(settings, onBatch);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (typeof code !== "string" || !(NATIVE_CODES as readonly string[]).includes(code)) throw err;
      const what = code === "RESOURCE_EXHAUSTED"
        ? `the ${options.poolSize}-byte pool (kv_buffer_size)`
        : options.protocol === "rdma"
          ? `the rdma data plane through UCX (device_name ${JSON.stringify(options.devices ?? "")}, UCX_* environment)`
          : "the data plane (data_listen, or prefill_url / decode_url by role)";
      throw engineError(code as NativeCode, `cannot start ${what}: ${(err as Error).message}`);
    }
  }

  get dataPort(): number {
    return this.#native.dataPort();
  }

  /** What a peer's ops name to reach this engine over rdma ("ucx:" and its rails' worker addresses); "" over tcp. */
  get connectionInfo(): string {
    return this.#native.connectionInfo();
  }

  /** Whether this build has the transport `protocol` names. */
  static builds(protocol: string): boolean {
    return loadAddon().protocols.includes(protocol);
  }

  /**
   * Serves the local path's socket (native/engine/local/): clients of this node that the
   * kernel says run as this user (or an allowed uid/gid) receive the pool's memfd.
   * @throws UnavailableError naming the path when it cannot be served.
   */
  serveLocal(options: LocalSocketOptions): void {
    try {
      this.#native.serveLocal(options);
    } catch (err) {
      throw new UnavailableError(`cannot serve the local socket (local_socket) ${options.path}: ${(err as Error).message}`);
    }
  }

  localStats(): { admitted: number; refused: number } {
    return this.#native.localStats();
  }

  stats() {
    return this.#native.stats();
  }

  /** The pool extents of a block of the store (a block of this engine's pool), in order. */
  extentsOf(block: Block): readonly PoolExtent[] {
    return this.memory.extentsOf(block);
  }

  /**
   * Lets peers reach exactly these extents, to read them or to write them, as one range
   * (their concatenation in order) under one fresh handle.
   */
  exposeExtents(extents: readonly PoolExtent[], access: "read" | "write"): bigint {
    const pairs = new Float64Array(extents.length * 2);
    extents.forEach((e, i) => {
      pairs[2 * i] = e.offset;
      pairs[2 * i + 1] = e.length;
    });
    try {
      return this.#native.exposeExtents(pairs, access);
    } catch (err) {
      throw fromNative(err);
    }
  }

  /** Resolves once no peer access to any of the handles is in flight; then their blocks may be freed. */
  revokeAll(handles: readonly bigint[]): Promise<void> {
    if (handles.length === 0 || this.#closed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.#hold();
      const revocation: Revocation = {
        left: handles.length,
        done: () => {
          this.#letGo();
          resolve();
        },
      };
      for (const h of handles) this.#revocations.set(h, revocation);
      const revoked = this.#native.revokeAll(BigUint64Array.from(handles));
      // Unknown handles (never exposed, or released already) have nothing in flight.
      revoked.forEach((ok, i) => {
        if (ok) return;
        this.log.warn({ handle: handles[i]!.toString() }, "revoke of an unknown handle");
        this.#released(handles[i]!);
      });
    });
  }

  /**
   * Runs ops against one peer to their terminal completions. At the deadline (or on
   * abort) the ops still running are cancelled, and `run` still waits for their
   * completions: the caller may free every local extent once it resolves.
   */
  async run(peer: string, ops: readonly OpSpec[], deadlineMs: number, signal?: AbortSignal): Promise<OpResult[]> {
    if (this.#closed) throw new CancelledError("the engine is shut down");
    if (ops.length === 0) return [];
    const n = ops.length;
    const first = this.#nextOp;
    this.#nextOp += n;
    const columns = {
      ids: new Float64Array(n),
      kinds: new Uint8Array(n),
      localOffsets: new Float64Array(n), // unused: every op gathers
      remoteHandles: new BigUint64Array(n),
      remoteOffsets: new Float64Array(n),
      lengths: new Float64Array(n),
      ...gatherColumns(ops),
    };
    ops.forEach((op, i) => {
      columns.ids[i] = first + i;
      columns.kinds[i] = op.kind === "write" ? 1 : 2;
      columns.remoteHandles[i] = op.remoteHandle;
      columns.remoteOffsets[i] = op.remoteOffset;
      columns.lengths[i] = op.length;
    });
    const finished = new Promise<OpResult[]>((resolve) => {
      const run: Run = {
        first,
        results: new Array(n),
        left: n,
        done: () => {
          this.#letGo();
          resolve(run.results);
        },
      };
      for (let i = 0; i < n; i++) this.#runs.set(first + i, run);
    });
    this.#hold();
    try {
      this.#native.submit(peer, columns);
    } catch (err) {
      for (let i = 0; i < n; i++) this.#runs.delete(first + i);
      this.#letGo();
      throw fromNative(err);
    }
    /** Ops still running when the deadline fired: their failures are the deadline's. */
    const late = new Set<number>();
    const cancelAll = () => {
      for (let id = first; id < first + n; id++) if (this.#runs.has(id)) this.#native.cancel(id);
    };
    const timer = setTimeout(() => {
      for (let id = first; id < first + n; id++) if (this.#runs.has(id)) late.add(id - first);
      cancelAll();
    }, deadlineMs);
    signal?.addEventListener("abort", cancelAll, { once: true });
    try {
      const settled = await finished;
      if (late.size === 0) return settled;
      const expired = new DeadlineExceededError(`transfer did not finish within ${deadlineMs} ms`);
      return settled.map((r, i) => (r.error && late.has(i) ? { ...r, error: expired } : r));
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
    const cancelled = new CancelledError("the engine is shut down");
    for (const [id, run] of [...this.#runs]) this.#settle(id, run, { error: cancelled, bytes: 0, micros: 0 });
    for (const h of [...this.#revocations.keys()]) this.#released(h);
  }

  #hold(): void {
    if (this.#outstanding++ === 0) this.#native.ref();
  }

  #letGo(): void {
    if (--this.#outstanding === 0 && !this.#closed) this.#native.unref();
  }

  #settle(id: number, run: Run, result: OpResult): void {
    if (!this.#runs.delete(id)) return;
    run.results[id - run.first] = result;
    if (--run.left === 0) run.done();
  }

  #released(handle: bigint): void {
    const revocation = this.#revocations.get(handle);
    if (revocation === undefined) return;
    this.#revocations.delete(handle);
    if (--revocation.left === 0) revocation.done();
  }

  #complete(batch: NativeCompletions): void {
    for (let i = 0; i < batch.ids.length; i++) {
      const id = batch.ids[i]!;
      const run = this.#runs.get(id);
      if (run === undefined) continue;
      const code = NATIVE_CODES[batch.codes[i]!] ?? "INTERNAL";
      this.#settle(id, run, {
        error: code === "OK" ? undefined : engineError(code, batch.messages[i] ?? code),
        bytes: batch.bytes[i]!,
        micros: batch.micros[i]!,
      });
    }
    for (const handle of batch.released) this.#released(handle);
  }
}

/**
 * UCX's defaults that do not belong in a Node.js process, unless the operator set them:
 * its memory hooks (UCX_MEM_EVENTS, UCX_MEM_MALLOC_HOOKS) patch mmap/munmap and replace
 * malloc while V8's threads use them (a daemon died of it, SIGSEGV in
 * napi_create_external_arraybuffer), and UCX_HANDLE_ERRORS installs its own SIGSEGV handler
 * over V8's. Read when the UCX transport (its own library) is loaded, on first use of rdma.
 */
function quietUcx(): void {
  process.env.UCX_MEM_EVENTS ??= "n";
  process.env.UCX_MEM_MALLOC_HOOKS ??= "n";
  process.env.UCX_HANDLE_ERRORS ??= "none";
}

/** The gather columns of `submit`: each op's extent count, and their [offset, size] pairs in op order. */
function gatherColumns(ops: readonly OpSpec[]): { gatherCounts: Uint32Array; gather: Float64Array } {
  let pairs = 0;
  for (const op of ops) pairs += op.gather.length;
  const gatherCounts = new Uint32Array(ops.length);
  const gather = new Float64Array(pairs * 2);
  let at = 0;
  ops.forEach((op, i) => {
    gatherCounts[i] = op.gather.length;
    for (const e of op.gather) {
      gather[at++] = e.offset;
      gather[at++] = e.length;
    }
  });
  return { gatherCounts, gather };
}
