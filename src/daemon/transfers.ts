// Moving entries between daemons: the initiator's side (push, pull) and the other
// side's bookkeeping (receives and sends in progress), over the native engine.
//
// PUSH  initiator: lease the sealed entry → peer PrepareReceive (room + handles) →
//       engine writes → peer CommitReceive (the peer seals) → drop the local copy.
// PULL  initiator: peer PrepareSend (lease + handles) → reserve room here → engine
//       reads → commit + seal here → peer FinishSend (the peer drops its copy).
// Every reservation on either side carries a timer: if the other daemon dies, its
// half of the work is undone at the deadline and no pool byte leaks.
import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import {
  InvalidArgumentError,
  type KvferryError,
  NotFoundError,
  UnavailableError,
  DeadlineExceededError,
} from "../errors.js";
import type {
  PrepareReceiveRequest,
  PrepareReceiveResponse,
  PrepareSendRequest,
  PrepareSendResponse,
  ExposedPart,
} from "../gen/kvferry/v1/peer.js";
import type { PoolBlock } from "../engine/pool-memory.js";
import type { OpSpec, TransferEngine } from "../engine/transfer-engine.js";
import type { LookupBuffer, PartWriter, ReadLease } from "../store/lookup-buffer.js";
import { checkLeaseTtl, checkPartName, checkTransferId } from "../store/validate.js";
import { checkPeerAddress, type Peer, type PeerDirectory } from "./peers.js";

export const MAX_BATCH = 4096;
/** How long a reservation outlives the deadline its initiator announced. */
const RESERVATION_GRACE_MS = 5_000;
const MAX_RESERVATION_MS = 10 * 60_000;

export type Mode = "push" | "pull";

export interface TransferOutcome {
  transferId: string;
  error?: KvferryError;
  bytes: number;
  micros: number;
}

interface Receive {
  transferId: string;
  writers: PartWriter[];
  handles: bigint[];
  timer: NodeJS.Timeout;
}

interface Send {
  transferId: string;
  lease: ReadLease;
  handles: bigint[];
  timer: NodeJS.Timeout;
}

export interface TransfersOptions {
  store: LookupBuffer;
  engine: TransferEngine;
  peers: PeerDirectory;
  log: Logger;
  nodeId: () => string;
  transferDeadlineMs: number;
}

export class Transfers {
  readonly #receives = new Map<string, Receive>();
  readonly #sends = new Map<string, Send>();

  constructor(private readonly o: TransfersOptions) {}

  /** In flight now, for GetServerInfo and tests. */
  get reservations(): { receives: number; sends: number } {
    return { receives: this.#receives.size, sends: this.#sends.size };
  }

  // ---- the initiator ---------------------------------------------------------------

  /** Runs a batch; each id succeeds or fails on its own. Throws only for a bad request. */
  async batch(
    ids: readonly string[],
    target: string,
    mode: Mode,
    options: { deadlineMs?: number; keepSource?: boolean; leaseTtlMs?: number } = {},
  ): Promise<TransferOutcome[]> {
    if (ids.length === 0 || ids.length > MAX_BATCH) {
      throw new InvalidArgumentError("transfer_ids", `${ids.length} ids; a batch holds 1 to ${MAX_BATCH}`);
    }
    const seen = new Set<string>();
    ids.forEach((id, i) => {
      checkTransferId(id, `transfer_ids[${i}]`);
      if (seen.has(id)) throw new InvalidArgumentError(`transfer_ids[${i}]`, `${JSON.stringify(id)} is named twice`);
      seen.add(id);
    });
    checkPeerAddress(target, "target");
    const leaseTtlMs = checkLeaseTtl(options.leaseTtlMs);
    const deadlineMs = options.deadlineMs || this.o.transferDeadlineMs;
    if (!Number.isInteger(deadlineMs) || deadlineMs < 0) {
      throw new InvalidArgumentError("deadline_ms", `${options.deadlineMs} must be a positive number of milliseconds`);
    }
    const deadlineAt = Date.now() + deadlineMs;

    let peer: Peer;
    try {
      peer = await this.o.peers.get(target, deadlineMs);
    } catch (err) {
      const error = err as KvferryError;
      return ids.map((transferId) => ({ transferId, error, bytes: 0, micros: 0 }));
    }
    return Promise.all(
      ids.map(async (transferId): Promise<TransferOutcome> => {
        const t0 = performance.now();
        try {
          const bytes =
            mode === "push"
              ? await this.#push(transferId, peer, deadlineAt, options.keepSource === true, leaseTtlMs)
              : await this.#pull(transferId, peer, deadlineAt, options.keepSource === true, leaseTtlMs);
          return { transferId, bytes, micros: Math.round((performance.now() - t0) * 1000) };
        } catch (err) {
          this.o.log.warn({ transferId, target, mode, err: (err as Error).message }, "transfer failed");
          return { transferId, error: err as KvferryError, bytes: 0, micros: Math.round((performance.now() - t0) * 1000) };
        }
      }),
    );
  }

  /** Pulls one entry (for a Get that names a source). Throws on failure. */
  async pullOne(transferId: string, source: string, deadlineMs = this.o.transferDeadlineMs): Promise<void> {
    const [outcome] = await this.batch([transferId], source, "pull", { deadlineMs });
    if (outcome!.error) throw outcome!.error;
  }

  async #push(transferId: string, peer: Peer, deadlineAt: number, keep: boolean, leaseTtlMs?: number): Promise<number> {
    const lease = await this.o.store.get({ transferId, waitMs: remaining(deadlineAt) });
    let receiveId: string | undefined;
    try {
      const prep = await peer.call<PrepareReceiveRequest, PrepareReceiveResponse>(
        "prepareReceive",
        {
          transferId,
          parts: lease.parts.map((p) => ({ name: p.name, size: p.size })),
          deadlineMs: remaining(deadlineAt),
          leaseTtlMs,
          sourceNode: this.o.nodeId(),
        },
        remaining(deadlineAt),
      );
      receiveId = prep.receiveId;
      const byName = exposedByName(prep.parts, lease.parts.length);
      const ops: OpSpec[] = lease.parts
        .filter((p) => p.size > 0)
        .map((p) => ({
          kind: "write",
          peer: peer.hello!.dataAddress,
          localOffset: (p.block as PoolBlock).offset,
          remoteHandle: handleOf(byName, p.name, p.size),
          remoteOffset: 0,
          length: p.size,
        }));
      await this.#runAll(ops, deadlineAt);
      await peer.call("commitReceive", { receiveId }, remaining(deadlineAt));
      receiveId = undefined;
      const bytes = lease.parts.reduce((sum, p) => sum + p.size, 0);
      lease.release(false);
      if (!keep) this.#dropSource(transferId);
      return bytes;
    } catch (err) {
      if (receiveId !== undefined) {
        peer.call("abortReceive", { receiveId, reason: (err as Error).message }, 5_000).catch(() => {});
      }
      throw err;
    } finally {
      lease.release(false); // a no-op after the first release
    }
  }

  async #pull(transferId: string, peer: Peer, deadlineAt: number, keep: boolean, leaseTtlMs?: number): Promise<number> {
    const prep = await peer.call<PrepareSendRequest, PrepareSendResponse>(
      "prepareSend",
      { transferId, deadlineMs: remaining(deadlineAt), destinationNode: this.o.nodeId() },
      remaining(deadlineAt),
    );
    const writers: PartWriter[] = [];
    let completed = false;
    try {
      for (const part of prep.parts) {
        writers.push(await this.o.store.openPart({ transferId, part: part.name, leaseTtlMs }, part.size));
      }
      const ops: OpSpec[] = prep.parts
        .map((part, i) => ({ part, writer: writers[i]! }))
        .filter(({ part }) => part.size > 0)
        .map(({ part, writer }) => ({
          kind: "read",
          peer: peer.hello!.dataAddress,
          localOffset: (writer.block as PoolBlock).offset,
          remoteHandle: parseHandle(part.handle),
          remoteOffset: 0,
          length: part.size,
        }));
      await this.#runAll(ops, deadlineAt);
      for (const w of writers) {
        w.landed();
        w.commit();
      }
      this.o.store.seal(transferId);
      completed = true;
      return prep.parts.reduce((sum, p) => sum + p.size, 0);
    } finally {
      if (!completed) for (const w of writers) w.abort();
      peer
        .call("finishSend", { sendId: prep.sendId, completed, releaseSource: completed && !keep }, 5_000)
        .catch((err) => this.o.log.warn({ transferId, err: (err as Error).message }, "finishSend failed"));
    }
  }

  /** Runs the ops to their terminal completions; throws the first failure. */
  async #runAll(ops: OpSpec[], deadlineAt: number): Promise<void> {
    const results = await this.o.engine.run(ops, remaining(deadlineAt));
    const failed = results.find((r) => r.error !== undefined);
    if (failed) throw failed.error;
  }

  #dropSource(transferId: string): void {
    try {
      this.o.store.release(transferId, "transferred");
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
    }
  }

  // ---- the other side --------------------------------------------------------------

  async prepareReceive(req: PrepareReceiveRequest): Promise<PrepareReceiveResponse> {
    const transferId = checkTransferId(req.transferId);
    if (req.parts.length === 0) throw new InvalidArgumentError("parts", "an entry has at least one part");
    const names = new Set<string>();
    req.parts.forEach((p, i) => {
      checkPartName(p.name, `parts[${i}].name`);
      if (names.has(p.name)) throw new InvalidArgumentError(`parts[${i}].name`, `${p.name} is named twice`);
      names.add(p.name);
    });
    const leaseTtlMs = checkLeaseTtl(req.leaseTtlMs);
    const holdMs = reservationMs(req.deadlineMs);
    const writers: PartWriter[] = [];
    try {
      for (const p of req.parts) {
        writers.push(await this.o.store.openPart({ transferId, part: p.name, leaseTtlMs }, p.size));
      }
    } catch (err) {
      for (const w of writers) w.abort();
      throw err;
    }
    const handles = writers.map((w) => (w.size > 0 ? this.o.engine.expose(w.block as PoolBlock) : 0n));
    const receiveId = randomUUID();
    const timer = setTimeout(() => {
      this.o.log.warn({ transferId, receiveId, source: req.sourceNode }, "receive not committed in time: undone");
      void this.abortReceive(receiveId).catch(() => {});
    }, holdMs);
    timer.unref();
    this.#receives.set(receiveId, { transferId, writers, handles, timer });
    return {
      receiveId,
      parts: writers.map((w, i) => ({ name: req.parts[i]!.name, size: w.size, handle: handles[i]!.toString() })),
    };
  }

  async commitReceive(receiveId: string): Promise<number> {
    const r = this.#takeReceive(receiveId);
    await this.#revokeAll(r.handles);
    try {
      for (const w of r.writers) {
        w.landed();
        w.commit();
      }
      this.o.store.seal(r.transferId);
    } catch (err) {
      for (const w of r.writers) w.abort();
      throw err;
    }
    const bytes = r.writers.reduce((sum, w) => sum + w.size, 0);
    this.o.log.info({ transferId: r.transferId, bytes }, "entry received");
    return bytes;
  }

  async abortReceive(receiveId: string): Promise<void> {
    const r = this.#takeReceive(receiveId);
    await this.#revokeAll(r.handles);
    for (const w of r.writers) w.abort();
  }

  async prepareSend(req: PrepareSendRequest): Promise<PrepareSendResponse> {
    const transferId = checkTransferId(req.transferId);
    const holdMs = reservationMs(req.deadlineMs);
    const lease = await this.o.store.get({ transferId, waitMs: Math.min(holdMs, req.deadlineMs || holdMs) });
    const handles = lease.parts.map((p) => (p.size > 0 ? this.o.engine.expose(p.block as PoolBlock) : 0n));
    const sendId = randomUUID();
    const timer = setTimeout(() => {
      this.o.log.warn({ transferId, sendId, destination: req.destinationNode }, "send not finished in time: released");
      void this.finishSend(sendId, false, false).catch(() => {});
    }, holdMs);
    timer.unref();
    this.#sends.set(sendId, { transferId, lease, handles, timer });
    return {
      sendId,
      parts: lease.parts.map((p, i) => ({ name: p.name, size: p.size, handle: handles[i]!.toString() })),
    };
  }

  async finishSend(sendId: string, completed: boolean, releaseSource: boolean): Promise<void> {
    const s = this.#sends.get(sendId);
    if (s === undefined) throw new NotFoundError(`no send ${sendId} (finished, or undone at its deadline)`);
    this.#sends.delete(sendId);
    clearTimeout(s.timer);
    await this.#revokeAll(s.handles);
    s.lease.release(false);
    if (completed && releaseSource) this.#dropSource(s.transferId);
  }

  /** Undoes every reservation (shutdown). */
  async close(): Promise<void> {
    await Promise.all([
      ...[...this.#receives.keys()].map((id) => this.abortReceive(id).catch(() => {})),
      ...[...this.#sends.keys()].map((id) => this.finishSend(id, false, false).catch(() => {})),
    ]);
  }

  #takeReceive(receiveId: string): Receive {
    const r = this.#receives.get(receiveId);
    if (r === undefined) throw new NotFoundError(`no receive ${receiveId} (committed, aborted, or undone at its deadline)`);
    this.#receives.delete(receiveId);
    clearTimeout(r.timer);
    return r;
  }

  async #revokeAll(handles: bigint[]): Promise<void> {
    await Promise.all(handles.filter((h) => h !== 0n).map((h) => this.o.engine.revoke(h)));
  }
}

function remaining(deadlineAt: number): number {
  const left = deadlineAt - Date.now();
  if (left <= 0) throw new DeadlineExceededError("the transfer's deadline passed");
  return left;
}

function reservationMs(deadlineMs: number): number {
  if (!Number.isInteger(deadlineMs) || deadlineMs <= 0) {
    throw new InvalidArgumentError("deadline_ms", `${deadlineMs} must be a positive number of milliseconds`);
  }
  return Math.min(deadlineMs, MAX_RESERVATION_MS) + RESERVATION_GRACE_MS;
}

function exposedByName(parts: ExposedPart[], expected: number): Map<string, ExposedPart> {
  const map = new Map(parts.map((p) => [p.name, p]));
  if (map.size !== expected) throw new UnavailableError(`peer exposed ${map.size} parts, ${expected} were asked for`);
  return map;
}

function handleOf(byName: Map<string, ExposedPart>, name: string, size: number): bigint {
  const part = byName.get(name);
  if (part === undefined || part.size !== size) throw new UnavailableError(`peer exposed no part ${name} of ${size} bytes`);
  return parseHandle(part.handle);
}

function parseHandle(text: string): bigint {
  if (!/^\d{1,20}$/.test(text)) throw new UnavailableError(`peer sent a malformed handle ${JSON.stringify(text)}`);
  return BigInt(text);
}
