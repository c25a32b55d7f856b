// A typed, promise-based client of one daemon's client API, used by the demo, the
// proxy and the tests. Errors come back as the classes of src/errors.ts.
import { credentials, Metadata, type ClientOptions, type ServiceError } from "@grpc/grpc-js";
import { DeadlineExceededError, UnavailableError } from "../errors.js";
import { errorFromServiceError } from "../grpc-errors.js";
import {
  KvFerryClient,
  TransferMode,
  type BatchTransferResponse,
  type EntryInfo,
  type GetServerInfoResponse,
  type LendResponse,
  type ListNodesResponse,
  type ListRequest,
  type ListResponse,
  type ReserveResponse,
} from "../gen/kvferry/v1/kvferry.js";
import { call } from "./call.js";
import { LocalLoan, LocalPool, LocalWriter } from "./local-path.js";
import { EngineAnnouncement, type AnnouncementEvents, type EngineToAnnounce } from "./engine-announcement.js";

export type { AnnouncementEvents, AnnouncementState, EngineToAnnounce } from "./engine-announcement.js";
export { EngineAnnouncement } from "./engine-announcement.js";

/** Parts at or below this size go in one unary Put; larger ones are streamed. */
export const STREAM_THRESHOLD = 4 << 20;
export const PUT_CHUNK = 1 << 20;

export interface CallOptions {
  /** Deadline of the call, ms from now. */
  timeoutMs?: number;
}

export interface PutOptions extends CallOptions {
  seal?: boolean;
  leaseTtlMs?: number;
}

export interface GetOptions extends CallOptions {
  parts?: string[];
  /**
   * Take the entry: once every byte has arrived the client confirms (ConfirmConsume) and
   * resolves only when the daemon dropped the entry for it. A failed confirmation rejects
   * (the bytes are not this reader's: the entry was given back to others).
   */
  consume?: boolean;
  /** With consume: how long the daemon holds the entry for this reader's confirmation. */
  consumeLeaseMs?: number;
  waitMs?: number;
  /** A peer's address to pull the entry from when it is not here. */
  source?: string;
}

export interface GotEntry {
  entry: EntryInfo;
  parts: Map<string, Buffer>;
}

/** Attempts of a confirmation whose reply was lost (it is idempotent on the daemon). */
const CONFIRM_ATTEMPTS = 3;
const CONFIRM_TIMEOUT_MS = 10_000;

export class KvferryClient {
  readonly raw: KvFerryClient;
  #local: Promise<LocalPool> | undefined;

  constructor(readonly address: string, options: Partial<ClientOptions> = {}) {
    this.raw = new KvFerryClient(address, credentials.createInsecure(), {
      "grpc.max_receive_message_length": 80 << 20,
      "grpc.max_send_message_length": 80 << 20,
      // Streamed gets arrive in MiB-sized messages: do not stall every 64 KiB.
      "grpc-node.flow_control_window": 16 << 20,
      // A daemon back after an outage is dialled again within seconds: gRPC's own backoff
      // grows to 2 minutes, which kept an engine's announcement (and a proxy's health
      // checks) away from a restarted daemon that long. Loopback or LAN: retries are cheap.
      "grpc.max_reconnect_backoff_ms": 2_000,
      ...options,
    });
  }

  close(): void {
    this.raw.close();
  }

  #opts(o: CallOptions = {}) {
    return o.timeoutMs === undefined ? {} : { deadline: Date.now() + o.timeoutMs };
  }

  /** Stores one part: unary up to STREAM_THRESHOLD bytes, streamed above. */
  put(transferId: string, part: string, data: Uint8Array, o: PutOptions = {}): Promise<EntryInfo> {
    if (data.length > STREAM_THRESHOLD) return this.putStream(transferId, part, data, o);
    return call<{ entry?: EntryInfo }>((cb) =>
      this.raw.put(
        { transferId, part, data: Buffer.from(data.buffer, data.byteOffset, data.byteLength), seal: o.seal ?? false, leaseTtlMs: o.leaseTtlMs },
        new Metadata(),
        this.#opts(o),
        cb,
      ),
    ).then((r) => r.entry!);
  }

  /** Streams one part in chunks, waiting for HTTP/2 flow control between them. */
  async putStream(transferId: string, part: string, data: Uint8Array, o: PutOptions = {}): Promise<EntryInfo> {
    let stream!: ReturnType<KvFerryClient["putStream"]>;
    const done = call<{ entry?: EntryInfo }>((cb) => {
      stream = this.raw.putStream(new Metadata(), this.#opts(o), cb);
    });
    stream.write({ header: { transferId, part, size: data.length, seal: o.seal ?? false, leaseTtlMs: o.leaseTtlMs } });
    for (let offset = 0; offset < data.length; offset += PUT_CHUNK) {
      const end = Math.min(offset + PUT_CHUNK, data.length);
      const chunk = Buffer.from(data.buffer, data.byteOffset + offset, end - offset);
      if (!stream.write({ chunk })) {
        const failed = await Promise.race([
          new Promise<boolean>((r) => stream.once("drain", () => r(false))),
          done.then(() => true, () => true),
        ]);
        if (failed) break;
      }
    }
    stream.end();
    return (await done).entry!;
  }

  seal(transferId: string, o: CallOptions = {}): Promise<EntryInfo> {
    return call<{ entry?: EntryInfo }>((cb) => this.raw.seal({ transferId }, new Metadata(), this.#opts(o), cb)).then(
      (r) => r.entry!,
    );
  }

  release(transferId: string, o: CallOptions = {}): Promise<number> {
    return call<{ bytesFreed: number }>((cb) => this.raw.release({ transferId }, new Metadata(), this.#opts(o), cb)).then(
      (r) => r.bytesFreed,
    );
  }

  stat(transferId: string, o: CallOptions = {}): Promise<EntryInfo> {
    return call<{ entry?: EntryInfo }>((cb) => this.raw.stat({ transferId }, new Metadata(), this.#opts(o), cb)).then(
      (r) => r.entry!,
    );
  }

  list(req: Partial<ListRequest> = {}, o: CallOptions = {}): Promise<ListResponse> {
    return call<ListResponse>((cb) =>
      this.raw.list({ pageSize: 0, pageToken: "", state: 0, ...req }, new Metadata(), this.#opts(o), cb),
    );
  }

  /** One unary Get: everything in one message (at most the daemon's max message size). */
  async get(transferId: string, o: GetOptions = {}): Promise<GotEntry> {
    const r = await call<{ entry?: EntryInfo; parts: { name: string; data: Buffer }[]; consumeToken: string }>((cb) =>
      this.raw.get(
        {
          transferId, parts: o.parts ?? [], consume: o.consume ?? false, waitMs: o.waitMs, source: o.source ?? "",
          consumeLeaseMs: o.consumeLeaseMs,
        },
        new Metadata(),
        this.#opts(o),
        cb,
      ),
    );
    if (o.consume) await this.#confirm(transferId, r.consumeToken);
    return { entry: r.entry!, parts: new Map(r.parts.map((p) => [p.name, p.data])) };
  }

  /**
   * Confirms a consuming read: the daemon drops the entry. Only after this resolves are
   * the bytes the reader's own.
   */
  confirmConsume(transferId: string, consumeToken: string, o: CallOptions = {}): Promise<number> {
    return call<{ bytesFreed: number }>((cb) =>
      this.raw.confirmConsume({ transferId, consumeToken }, new Metadata(), this.#opts(o), cb),
    ).then((r) => r.bytesFreed);
  }

  /** Confirms, retrying a confirmation whose reply was lost (the daemon takes a repeat as done). */
  async #confirm(transferId: string, token: string): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.confirmConsume(transferId, token, { timeoutMs: CONFIRM_TIMEOUT_MS });
        return;
      } catch (err) {
        const lost = err instanceof DeadlineExceededError || err instanceof UnavailableError;
        if (!lost || attempt === CONFIRM_ATTEMPTS) throw err;
      }
    }
  }

  /** A streamed Get, reassembling each part into one Buffer. */
  async getStream(transferId: string, o: GetOptions & { chunkSize?: number } = {}): Promise<GotEntry> {
    let token = "";
    const got = await new Promise<GotEntry>((resolve, reject) => {
      const stream = this.raw.getStream(
        {
          transferId, parts: o.parts ?? [], consume: o.consume ?? false, waitMs: o.waitMs,
          chunkSize: o.chunkSize ?? 0, source: o.source ?? "", consumeLeaseMs: o.consumeLeaseMs,
        },
        new Metadata(),
        this.#opts(o),
      );
      let entry: EntryInfo | undefined;
      const parts = new Map<string, Buffer>();
      stream.on("data", (msg) => {
        if (msg.consumeToken) token = msg.consumeToken;
        if (msg.entry) entry = msg.entry;
        if (msg.part === "") return;
        let buf = parts.get(msg.part);
        if (buf === undefined) parts.set(msg.part, (buf = Buffer.allocUnsafe(msg.partSize)));
        msg.chunk.copy(buf, msg.offset);
      });
      stream.on("error", (err: ServiceError) => reject(errorFromServiceError(err)));
      stream.on("end", () => (entry ? resolve({ entry, parts }) : reject(new Error("GetStream ended without an entry"))));
    });
    // 'end' comes after the status OK: every byte is here.
    if (o.consume) await this.#confirm(transferId, token);
    return got;
  }

  /** Moves sealed entries to (push) or from (pull) the daemon whose peer API is at `target`. */
  batchTransfer(
    transferIds: string[],
    target: string,
    mode: "push" | "pull",
    o: CallOptions & { deadlineMs?: number; keepSource?: boolean; leaseTtlMs?: number } = {},
  ): Promise<BatchTransferResponse> {
    return call<BatchTransferResponse>((cb) =>
      this.raw.batchTransfer(
        {
          transferIds,
          target,
          mode: mode === "push" ? TransferMode.TRANSFER_MODE_PUSH : TransferMode.TRANSFER_MODE_PULL,
          deadlineMs: o.deadlineMs ?? 0,
          keepSource: o.keepSource ?? false,
          leaseTtlMs: o.leaseTtlMs,
        },
        new Metadata(),
        this.#opts(o),
        cb,
      ),
    );
  }

  /**
   * The daemon's pool mapped into this process (once; later calls reuse it).
   * @throws UnavailableError saying why there is no local path (another host, refused, off).
   */
  localPool(): Promise<LocalPool> {
    this.#local ??= LocalPool.open(this).catch((err) => {
      this.#local = undefined; // tried again next time (the daemon may have restarted)
      throw err;
    });
    return this.#local;
  }

  /** The local pool, or undefined when there is no local path (then callers go inline). */
  async localPoolIfAny(): Promise<LocalPool | undefined> {
    return this.localPool().catch((err) => {
      if (err instanceof UnavailableError) return undefined;
      throw err;
    });
  }

  /** Reserves an entry's parts in the local pool: write their views, then commit. Needs the local path. */
  async reserveLocal(
    transferId: string,
    parts: readonly { name: string; size: number }[],
    o: CallOptions & { leaseTtlMs?: number; reservationTtlMs?: number } = {},
  ): Promise<LocalWriter> {
    for (let attempt = 0; ; attempt++) {
      const pool = await this.localPool();
      const r = await call<ReserveResponse>((cb) =>
        this.raw.reserve({ transferId, parts: [...parts], leaseTtlMs: o.leaseTtlMs, reservationTtlMs: o.reservationTtlMs }, new Metadata(), this.#opts(o), cb),
      );
      if (r.poolId === pool.poolId) return new LocalWriter(this, pool, transferId, r.reservationId, r.parts);
      // The daemon restarted: its room goes back, and the new pool is mapped (once).
      await call((cb) => this.raw.abort({ reservationId: r.reservationId }, new Metadata(), cb)).catch(() => {});
      this.#local = undefined;
      if (attempt > 0) pool.checkPool(r.poolId);
    }
  }

  /**
   * Puts an entry's parts: written straight into the daemon's pool on its node, else
   * inline (Put per part). Seals it with `seal`.
   */
  async putLocal(transferId: string, parts: ReadonlyMap<string, Uint8Array>, o: CallOptions & { seal?: boolean; leaseTtlMs?: number } = {}): Promise<EntryInfo> {
    if ((await this.localPoolIfAny()) === undefined) {
      let info: EntryInfo | undefined;
      const list = [...parts];
      for (const [i, [name, data]] of list.entries()) {
        info = await this.put(transferId, name, data, { ...o, seal: o.seal === true && i === list.length - 1 });
      }
      return info ?? this.stat(transferId, o);
    }
    const writer = await this.reserveLocal(transferId, [...parts].map(([name, data]) => ({ name, size: data.length })), o);
    try {
      for (const [name, data] of parts) writer.write(name, data);
    } catch (err) {
      await writer.abort().catch(() => {});
      throw err;
    }
    return writer.commit(undefined, { seal: o.seal });
  }

  /**
   * Reads an entry in place from the daemon's pool on its node (a loan: return it when
   * done), else inline (a streamed Get, any size; a consuming one is confirmed at once).
   */
  async getLocal(
    transferId: string,
    o: CallOptions & { parts?: string[]; consume?: boolean; waitMs?: number; loanTtlMs?: number; source?: string } = {},
  ): Promise<LocalLoan> {
    const pool = await this.localPoolIfAny();
    if (pool === undefined) {
      const got = await this.getStream(transferId, o);
      return new LocalLoan(got.entry, new Map([...got.parts].map(([name, data]) => [name, [data]])), async () => {});
    }
    const consume = o.consume ?? false;
    let mapped = pool;
    for (let attempt = 0; ; attempt++) {
      const r = await call<LendResponse>((cb) =>
        this.raw.lend(
          { transferId, parts: o.parts ?? [], waitMs: o.waitMs, consume, loanTtlMs: o.loanTtlMs, source: o.source ?? "" },
          new Metadata(),
          this.#opts(o),
          cb,
        ),
      );
      const end = (consumed: boolean) =>
        call<unknown>((cb) => this.raw.returnLoan({ loanId: r.loanId, consumed: consumed && consume }, new Metadata(), cb)).then(() => {});
      if (r.poolId === mapped.poolId) return new LocalLoan(r.entry!, new Map(r.parts.map((p) => [p.name, mapped.views(p)])), end);
      // The daemon restarted: the loan goes back, and the new pool is mapped (once).
      await end(false).catch(() => {});
      this.#local = undefined;
      if (attempt > 0) mapped.checkPool(r.poolId);
      mapped = await this.localPool();
    }
  }

  serverInfo(o: CallOptions = {}): Promise<GetServerInfoResponse> {
    return call<GetServerInfoResponse>((cb) => this.raw.getServerInfo({}, new Metadata(), this.#opts(o), cb));
  }

  /**
   * Who the daemon is: its node id (GetServerInfo) and its peer API address — what another
   * daemon's BatchTransfer names as target — from its own record in ListNodes (undefined
   * when ListNodes fails or does not list it).
   */
  async identity(o: CallOptions = {}): Promise<{ nodeId: string; peerAddress?: string }> {
    const info = await this.serverInfo(o);
    const nodes = await this.listNodes(o).catch(() => undefined);
    const peerAddress = nodes?.nodes.find((n) => n.nodeId === info.nodeId)?.peerAddress;
    return { nodeId: info.nodeId, peerAddress: peerAddress || undefined };
  }

  /** The nodes the daemon's metadata backend knows, this one included. */
  listNodes(o: CallOptions = {}): Promise<ListNodesResponse> {
    return call<ListNodesResponse>((cb) => this.raw.listNodes({}, new Metadata(), this.#opts(o), cb));
  }

  /**
   * Announces an inference engine on this daemon's node (AnnounceEngine): the daemon
   * publishes it in its node record while the returned announcement is open, and it is made
   * again whenever the daemon restarts or drains. `close()` it when the engine stops.
   */
  announceEngine(engine: EngineToAnnounce, events: AnnouncementEvents = {}): EngineAnnouncement {
    return new EngineAnnouncement(this.raw, engine, events);
  }

  /** Resolves when the channel is connected, or rejects after timeoutMs. */
  waitForReady(timeoutMs = 5000): Promise<void> {
    return new Promise((resolve, reject) =>
      this.raw.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve())),
    );
  }
}
