// The local path, client side: a client on the daemon's node maps the daemon's pool (the
// memfd its local socket hands out) and writes and reads entries in place; Reserve, Commit,
// Lend and ReturnLoan only say where. Buffers handed out here are views of the shared
// mapping: valid until the writer commits or aborts, or the loan is returned.
//
// Same-uid clients are trusted like the engine itself: a client can write anywhere in the
// pool. The daemon's own bookkeeping is never in the mapping.
import { Metadata } from "@grpc/grpc-js";
import { loadAddon } from "../engine/native.js";
import { FailedPreconditionError, UnavailableError } from "../errors.js";
import type { EntryInfo, PartExtents } from "../gen/kvferry/v1/kvferry.js";
import { call } from "./call.js";
import type { KvferryClient } from "./client.js";

/** How long the local socket may take to answer. */
const SOCKET_TIMEOUT_MS = 5_000;

/** The daemon's pool, mapped into this process. */
export class LocalPool {
  private constructor(
    readonly poolId: string,
    readonly socket: string,
    /** The whole pool (shared with the daemon and its other local clients). */
    readonly memory: Buffer,
  ) {}

  /**
   * Maps the pool of the daemon `client` talks to.
   * @throws UnavailableError saying why when there is no local path to it: the daemon
   *   serves none, runs on another host, or refuses this process's user.
   */
  static async open(client: KvferryClient): Promise<LocalPool> {
    const info = await client.serverInfo();
    const local = info.local;
    if (local === undefined || local.socket === "") throw new UnavailableError(`the daemon at ${client.address} serves no local path`);
    let mapped: { header: string; buffer?: ArrayBuffer };
    try {
      mapped = loadAddon().mapLocalPool(local.socket, SOCKET_TIMEOUT_MS);
    } catch (err) {
      throw new UnavailableError(`cannot reach the local socket ${local.socket} of the daemon at ${client.address}: ${(err as Error).message}`);
    }
    const header = JSON.parse(mapped.header) as { ok: boolean; reason?: string; poolId?: string };
    if (!header.ok || mapped.buffer === undefined) {
      throw new UnavailableError(`the daemon at ${client.address} refused its local path: ${header.reason ?? "no reason given"}`);
    }
    // Another daemon's socket at that path (the daemon runs on another host): not this pool.
    if (header.poolId !== local.poolId) {
      throw new UnavailableError(`${local.socket} serves another daemon's pool than the one at ${client.address} (on another host?)`);
    }
    return new LocalPool(local.poolId, local.socket, Buffer.from(mapped.buffer));
  }

  /** Views of a part's extents, in order (one for a part in one extent). */
  views(part: PartExtents): Buffer[] {
    return part.extents.map((e) => this.memory.subarray(e.offset, e.offset + e.length));
  }

  checkPool(poolId: string): void {
    if (poolId !== this.poolId) {
      throw new FailedPreconditionError(`the daemon's pool changed (it restarted): extents of pool ${poolId}, mapped ${this.poolId}`);
    }
  }
}

/** Copies `data` into consecutive views. */
export function scatter(views: readonly Buffer[], data: Uint8Array): void {
  let at = 0;
  for (const v of views) {
    const n = Math.min(v.length, data.length - at);
    v.set(data.subarray(at, at + n));
    at += n;
  }
}

/** One reservation: the client writes its parts' views, then commits (part by part if it likes) or aborts. */
export class LocalWriter {
  readonly #parts: Map<string, PartExtents>;

  constructor(
    private readonly client: KvferryClient,
    private readonly pool: LocalPool,
    readonly transferId: string,
    readonly reservationId: string,
    parts: readonly PartExtents[],
  ) {
    this.#parts = new Map(parts.map((p) => [p.name, p]));
  }

  /** The part's memory in the pool: write it here, then commit. */
  views(name: string): Buffer[] {
    const part = this.#parts.get(name);
    if (part === undefined) throw new FailedPreconditionError(`${name} is not a part of reservation ${this.reservationId}`);
    return this.pool.views(part);
  }

  /** Copies `data` (the part's whole size) into the part's views. */
  write(name: string, data: Uint8Array): void {
    const size = this.#parts.get(name)?.size;
    if (size !== undefined && data.length !== size) throw new FailedPreconditionError(`part ${name}: ${data.length} bytes for a part of ${size}`);
    scatter(this.views(name), data);
  }

  /** Makes the written parts readable (all that are left when `names` is absent); `seal` seals the entry. */
  async commit(names?: readonly string[], o: { seal?: boolean } = {}): Promise<EntryInfo> {
    const chosen = names ?? [...this.#parts.keys()];
    const parts = chosen.map((name) => ({ name, bytes: this.#parts.get(name)?.size ?? 0 }));
    const r = await call<{ entry?: EntryInfo }>((cb) =>
      this.client.raw.commit({ reservationId: this.reservationId, parts, seal: o.seal ?? false }, new Metadata(), cb),
    );
    for (const name of chosen) this.#parts.delete(name);
    return r.entry!;
  }

  /** Gives back what is not committed; the entry goes unless it is sealed. */
  async abort(): Promise<void> {
    this.#parts.clear();
    await call((cb) => this.client.raw.abort({ reservationId: this.reservationId }, new Metadata(), cb));
  }
}

/** One loan: the entry's parts, read in place until it is returned. */
export class LocalLoan {
  #returned = false;

  constructor(
    readonly entry: EntryInfo,
    /** Each part's bytes: views of the pool (or, read inline, one copy each). */
    readonly parts: ReadonlyMap<string, Buffer[]>,
    private readonly end: (consumed: boolean) => Promise<void>,
  ) {}

  /** A part's bytes: the view itself when it lies in one extent, else a copy. */
  bytes(name: string): Buffer {
    const views = this.parts.get(name);
    if (views === undefined) throw new FailedPreconditionError(`${name} is not a part of this loan`);
    return views.length === 1 ? views[0]! : Buffer.concat(views);
  }

  /**
   * Ends the loan; its views must not be used after. A consuming loan drops the entry
   * when `consumed` (the default: every byte is the reader's now), else gives it back.
   */
  async return(consumed = true): Promise<void> {
    if (this.#returned) return;
    this.#returned = true;
    await this.end(consumed);
  }
}
