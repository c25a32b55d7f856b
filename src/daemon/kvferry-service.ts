// The client API: grpc-js handlers of kvferry.v1.KvFerry mapped onto the lookup buffer.
import { status, type ServerReadableStream, type ServerUnaryCall, type ServerWritableStream } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { AbortedError, DeadlineExceededError, InvalidArgumentError, OutOfRangeError, UnavailableError } from "../errors.js";
import type {
  AnnounceEngineRequest,
  AnnounceEngineResponse,
  GetRequest,
  GetResponse,
  GetServerInfoResponse,
  GetStreamRequest,
  GetStreamResponse,
  KvFerryServer,
  ListNodesResponse,
  PutStreamRequest,
} from "../gen/kvferry/v1/kvferry.js";
import { TransferMode } from "../gen/kvferry/v1/kvferry.js";
import { grpcStatusOf } from "../grpc-errors.js";
import type { LookupBuffer, PartWriter, ReadLease } from "../store/lookup-buffer.js";
import { fromWireState, toWireEntry } from "./convert.js";
import { failure, unary, type OnFailure } from "./grpc-server.js";
import { validateEngine, type EngineDirectory } from "./engines.js";
import { toGrpcError } from "../grpc-errors.js";
import type { Transfers } from "./transfers.js";
import type { LocalPath } from "./local-path.js";

export const DEFAULT_CHUNK_SIZE = 1 << 20;
export const MAX_CHUNK_SIZE = 4 << 20;

export interface ServiceContext {
  store: LookupBuffer;
  log: Logger;
  nodeId(): string;
  version: string;
  startedAt: number;
  /** Largest unary message; bigger reads must use GetStream. */
  maxMessageBytes: number;
  /** A PutStream that sends nothing for this long is aborted. */
  streamIdleMs: number;
  /** Absent while the daemon runs without a data plane. */
  transfers?: Transfers;
  /** Bytes the data plane moved. */
  dataPlane(): { bytesSent: number; bytesReceived: number };
  /** The nodes the metadata backend knows. */
  listNodes(): Promise<ListNodesResponse>;
  /** The engines announced to this daemon (AnnounceEngine). */
  engines: EngineDirectory;
  /** The local path; absent while the daemon runs without a data plane. */
  local?: LocalPath;
  /** Where clients on this node map the pool ("" socket: the local path is off). */
  localInfo(): { socket: string; poolId: string; poolBytes: number };
}

function localPath(ctx: ServiceContext): LocalPath {
  if (ctx.local === undefined || ctx.localInfo().socket === "") throw new UnavailableError("this daemon serves no local path (local_socket is \"none\", or it runs without a data plane)");
  return ctx.local;
}

/** For a Get that names a source: pulls the entry here first unless it already is. */
async function pullIfAbsent(ctx: ServiceContext, transferId: string, source: string): Promise<void> {
  if (source === "" || ctx.store.has(transferId)) return;
  await dataPlane(ctx).pullOnce(transferId, source);
}

function dataPlane(ctx: ServiceContext): Transfers {
  if (ctx.transfers === undefined) throw new UnavailableError("this daemon runs without a data plane");
  return ctx.transfers;
}

/** An AbortSignal that fires when the client cancels the call or its deadline passes. */
function cancelSignal(call: { on(event: "cancelled", fn: () => void): unknown }): AbortSignal {
  const controller = new AbortController();
  call.on("cancelled", () => controller.abort());
  return controller.signal;
}

/** A failed call is logged: INTERNAL as an error, the caller's own failures at debug. */
function logFailure(log: Logger): OnFailure {
  return (call, e, err) => {
    const path = call.getPath();
    if (e.code === status.INTERNAL) log.error({ err, path }, "internal error");
    else log.debug({ path, code: e.code, details: e.details }, "call failed");
  };
}

export function kvferryService(ctx: ServiceContext): KvFerryServer {
  const { store, log } = ctx;
  const report = logFailure(log);

  return {
    put: unary(report, async (call) => {
      const r = call.request;
      const info = await store.put(
        { transferId: r.transferId, part: r.part, seal: r.seal, leaseTtlMs: r.leaseTtlMs, signal: cancelSignal(call) },
        r.data,
      );
      return { entry: toWireEntry(info) };
    }),

    putStream: (call, callback) => {
      putStream(ctx, call).then(
        (info) => callback(null, { entry: toWireEntry(info) }),
        (err) => callback(failure(report, call, err)),
      );
    },

    seal: unary(report, (call) => ({ entry: toWireEntry(store.seal(call.request.transferId)) })),

    release: unary(report, (call) => {
      const bytesFreed = store.release(call.request.transferId);
      log.info({ transferId: call.request.transferId, bytes: bytesFreed }, "released by client");
      return { bytesFreed };
    }),

    stat: unary(report, (call) => ({ entry: toWireEntry(store.stat(call.request.transferId)) })),

    list: unary(report, (call) => {
      const r = call.request;
      const page = store.list({ pageSize: r.pageSize, pageToken: r.pageToken, state: fromWireState(r.state) });
      return { entries: page.entries.map(toWireEntry), nextPageToken: page.nextPageToken };
    }),

    get: unary(report, async (call: ServerUnaryCall<GetRequest, GetResponse>) => {
      const r = call.request;
      await pullIfAbsent(ctx, r.transferId, r.source);
      const lease = await store.get({
        transferId: r.transferId, parts: r.parts, consume: r.consume, consumeLeaseMs: r.consumeLeaseMs, waitMs: r.waitMs,
        signal: cancelSignal(call),
      });
      // A consuming Get's entry is dropped only on ConfirmConsume: a reply lost to the
      // deadline or a dead client leaves it held until the hold lapses, then readable.
      let delivered = false;
      try {
        const total = lease.parts.reduce((sum, p) => sum + p.size, 0);
        if (total > ctx.maxMessageBytes) {
          throw new OutOfRangeError(
            `entry ${r.transferId}: ${total} bytes do not fit in one message of at most ${ctx.maxMessageBytes}; use GetStream`,
          );
        }
        // Copies: the bytes are serialized after this handler returns, when the lease is gone.
        // One copy, whether the part lies in one extent of the pool or several.
        const parts = lease.parts.map((p) => ({ name: p.name, data: Buffer.concat(p.segments(), p.size) }));
        delivered = true;
        return { entry: toWireEntry(lease.entry), parts, consumeToken: lease.consumeToken ?? "" };
      } finally {
        lease.release(delivered);
      }
    }),

    confirmConsume: unary(report, (call) => {
      const r = call.request;
      return { bytesFreed: store.confirmConsume(r.transferId, r.consumeToken) };
    }),

    getStream: (call) => {
      // grpc-js turns an 'error' event on a server stream into the call's status.
      getStream(ctx, call).catch((err) => call.emit("error", failure(report, call, err)));
    },

    batchTransfer: unary(report, async (call) => {
      const r = call.request;
      const mode = r.mode === TransferMode.TRANSFER_MODE_PUSH ? "push" : r.mode === TransferMode.TRANSFER_MODE_PULL ? "pull" : undefined;
      if (mode === undefined) throw new InvalidArgumentError("mode", "must be TRANSFER_MODE_PUSH or TRANSFER_MODE_PULL");
      const outcomes = await dataPlane(ctx).batch(r.transferIds, r.target, mode, {
        deadlineMs: r.deadlineMs,
        keepSource: r.keepSource,
        leaseTtlMs: r.leaseTtlMs,
      });
      return {
        results: outcomes.map((o) => ({
          transferId: o.transferId,
          code: o.error ? grpcStatusOf(o.error) : 0,
          message: o.error?.message ?? "",
          bytes: o.bytes,
          micros: o.micros,
        })),
      };
    }),

    getServerInfo: unary(report, (): GetServerInfoResponse => ({
      version: ctx.version,
      uptimeMs: Date.now() - ctx.startedAt,
      poolCapacity: store.capacity,
      bytesUsed: store.bytesUsed,
      entries: store.entryCount,
      counters: { ...store.counters, ...ctx.dataPlane() },
      nodeId: ctx.nodeId(),
      local: ctx.localInfo(),
    })),

    reserve: unary(report, async (call) => {
      const r = call.request;
      const local = localPath(ctx);
      const reserved = await local.reserve({
        transferId: r.transferId,
        parts: r.parts.map((p) => ({ name: p.name, size: p.size })),
        leaseTtlMs: r.leaseTtlMs,
        reservationTtlMs: r.reservationTtlMs,
        signal: cancelSignal(call),
      });
      return { reservationId: reserved.reservationId, poolId: local.poolId, parts: reserved.parts };
    }),

    commit: unary(report, (call) => {
      const r = call.request;
      return { entry: toWireEntry(localPath(ctx).commit({ reservationId: r.reservationId, parts: r.parts, seal: r.seal })) };
    }),

    abort: unary(report, (call) => {
      localPath(ctx).abort(call.request.reservationId);
      return {};
    }),

    lend: unary(report, async (call) => {
      const r = call.request;
      const local = localPath(ctx);
      await pullIfAbsent(ctx, r.transferId, r.source);
      const loan = await local.lend({
        transferId: r.transferId, parts: r.parts, waitMs: r.waitMs, consume: r.consume, loanTtlMs: r.loanTtlMs, signal: cancelSignal(call),
      });
      return { loanId: loan.loanId, poolId: local.poolId, entry: toWireEntry(loan.lease.entry), parts: loan.parts };
    }),

    returnLoan: unary(report, (call) => {
      localPath(ctx).returnLoan(call.request.loanId, call.request.consumed);
      return {};
    }),

    listNodes: unary(report, () => ctx.listNodes()),

    announceEngine: (call) => {
      try {
        announceEngine(ctx, call);
      } catch (err) {
        call.emit("error", failure(report, call, err));
      }
    },
  };
}

/**
 * Publishes the engine while the call is open: one answer at once, then nothing until the
 * engine goes (cancel, or its connection closes) or the daemon ends it (a newer
 * announcement of its URL: ABORTED; a drain: OK).
 */
function announceEngine(ctx: ServiceContext, call: ServerWritableStream<AnnounceEngineRequest, AnnounceEngineResponse>): void {
  const engine = validateEngine(call.request.engine);
  let release: (() => void) | undefined;
  release = ctx.engines.add({
    engine,
    end: (reason) => {
      release?.();
      if (reason === "replaced") call.emit("error", toGrpcError(new AbortedError(`engine.url: ${engine.url} was announced again on another call`)));
      else call.end();
    },
  });
  call.on("cancelled", () => release?.());
  call.on("close", () => release?.());
  if (call.cancelled) release(); // gone before it was held: no 'cancelled' will come
  else call.write({ nodeId: ctx.nodeId() });
}

/** Header first, then chunks into the reserved part; the stream's end commits it. */
async function putStream(ctx: ServiceContext, call: ServerReadableStream<PutStreamRequest, unknown>) {
  const signal = cancelSignal(call);
  let writer: PartWriter | undefined;
  let idle: NodeJS.Timeout | undefined;
  const armIdle = () => {
    clearTimeout(idle);
    idle = setTimeout(() => {
      call.destroy(new DeadlineExceededError(`PutStream sent nothing for ${ctx.streamIdleMs} ms`));
    }, ctx.streamIdleMs);
  };
  try {
    armIdle();
    for await (const msg of call as AsyncIterable<PutStreamRequest>) {
      armIdle();
      if (writer === undefined) {
        const h = msg.header;
        if (h === undefined) throw new InvalidArgumentError("header", "the first message of a PutStream must be a header");
        clearTimeout(idle); // waiting for room is bounded by the put deadline, not the idle timer
        writer = await ctx.store.openPart(
          { transferId: h.transferId, part: h.part, seal: h.seal, leaseTtlMs: h.leaseTtlMs, signal },
          h.size,
        );
        armIdle();
      } else {
        if (msg.header !== undefined) throw new InvalidArgumentError("header", "only the first message may be a header");
        writer.write(msg.chunk ?? Buffer.alloc(0));
      }
    }
    if (signal.aborted) throw new DeadlineExceededError("PutStream cancelled by the client");
    if (writer === undefined) throw new InvalidArgumentError("header", "the stream ended before its header");
    return writer.commit();
  } catch (err) {
    writer?.abort();
    throw err;
  } finally {
    clearTimeout(idle);
  }
}

/** Streams the parts in chunks, honouring the HTTP/2 flow control through 'drain'. */
async function getStream(ctx: ServiceContext, call: ServerWritableStream<GetStreamRequest, GetStreamResponse>) {
  const r = call.request;
  const asked = r.chunkSize === 0 ? DEFAULT_CHUNK_SIZE : r.chunkSize;
  if (!Number.isInteger(asked) || asked < 1 || asked > MAX_CHUNK_SIZE) {
    throw new InvalidArgumentError("chunk_size", `${r.chunkSize} must be from 1 to ${MAX_CHUNK_SIZE}`);
  }
  // The largest chunk to send: never more than one message may carry.
  const chunkSize = Math.min(asked, ctx.maxMessageBytes);
  const signal = cancelSignal(call);
  await pullIfAbsent(ctx, r.transferId, r.source);
  const lease: ReadLease = await ctx.store.get({
    transferId: r.transferId, parts: r.parts, consume: r.consume, consumeLeaseMs: r.consumeLeaseMs, waitMs: r.waitMs, signal,
  });
  // Sending stops when the client goes away, or when a consume hold lapsed under a slow
  // reader (the entry was given back: these bytes could never be confirmed).
  const stop = lease.lapsed === undefined ? signal : AbortSignal.any([signal, lease.lapsed]);
  const lapsedError = () =>
    new AbortedError(`the consume hold of ${r.transferId} lapsed before every byte was sent; the entry was given back`);
  let delivered = false;
  try {
    let first = true;
    for (const part of lease.parts) {
      let offset = 0;
      do {
        // A chunk also ends where a segment of the part's memory ends (a part the pool
        // scattered over several extents), so that it stays a view.
        const view = part.segments(offset, Math.min(chunkSize, part.size - offset))[0]!;
        const msg: GetStreamResponse = {
          entry: first ? toWireEntry(lease.entry) : undefined,
          part: part.name,
          partSize: part.size,
          offset,
          // A view, not a copy: the lease is held until every message is serialized ('finish').
          chunk: asBuffer(view),
          consumeToken: first ? (lease.consumeToken ?? "") : "",
        };
        first = false;
        offset += view.length;
        if (lease.lapsed?.aborted) throw lapsedError();
        if (signal.aborted) return;
        if (!call.write(msg)) await drained(call, stop);
      } while (offset < part.size);
    }
    if (first) {
      call.write({
        entry: toWireEntry(lease.entry), part: "", partSize: 0, offset: 0, chunk: Buffer.alloc(0),
        consumeToken: lease.consumeToken ?? "",
      });
    }
    if (lease.lapsed?.aborted) throw lapsedError();
    call.end();
    // Whether 'finish' came before any cancellation, decided when it happens: grpc-js
    // emits 'cancelled' right after 'finish' even for a call that completed normally.
    delivered = await flushed(call, signal);
  } finally {
    lease.release(delivered);
  }
}

function asBuffer(view: Uint8Array): Buffer {
  return Buffer.from(view.buffer, view.byteOffset, view.byteLength);
}

/**
 * Resolves true once every written message went through grpc-js's serializer ('finish'),
 * false if the call was cancelled first.
 */
function flushed(stream: NodeJS.EventEmitter, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(false);
    const finish = () => done(true);
    const abort = () => done(false);
    const done = (finished: boolean) => {
      stream.off("finish", finish);
      signal.removeEventListener("abort", abort);
      resolve(finished);
    };
    stream.once("finish", finish);
    signal.addEventListener("abort", abort, { once: true });
  });
}

function drained(stream: NodeJS.EventEmitter, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    stream.once("drain", done);
    signal.addEventListener("abort", done, { once: true });
  });
}
