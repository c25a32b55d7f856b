// A raw client of the native data plane (native/engine/tcp/wire.h, version 2), for tests
// that send it what no real engine would: 48-byte little-endian headers built field by
// field, the challenge-response handshake written independently of the engine's (with
// node:crypto), a connection that reports exactly what came back and when it closed, and a
// relay that swallows chosen READs (a source that never answers for some handles).
import { createHmac, randomBytes } from "node:crypto";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";

export const HEADER = 48;
export const MAGIC = 0x5246564b;
export const VERSION = 2;
export const NONCE_BYTES = 32;

export const FrameType = {
  HELLO: 1,
  HELLO_OK: 2,
  HELLO_REFUSED: 3,
  WRITE: 4,
  WRITE_ACK: 5,
  READ: 6,
  READ_DATA: 7,
  CHALLENGE: 8,
  PROOF: 9,
} as const;

/** kvferry::Code of native/engine/status.h (the status of a reply frame). */
export const WireCode = {
  OK: 0,
  INVALID_ARGUMENT: 1,
  NOT_FOUND: 2,
  OUT_OF_RANGE: 3,
  RESOURCE_EXHAUSTED: 4,
  UNAVAILABLE: 5,
  CANCELLED: 6,
  DEADLINE_EXCEEDED: 7,
  PERMISSION_DENIED: 8,
  NOT_SUPPORTED: 9,
} as const;

export interface Frame {
  magic: number;
  version: number;
  type: number;
  flags: number;
  status: number;
  reserved: number;
  requestId: bigint;
  handle: bigint;
  offset: bigint;
  length: bigint;
}

/** A header whose fields default to a well-formed frame of `type`. */
export function header(fields: Partial<Frame> & { type: number }): Buffer {
  const f: Frame = {
    magic: MAGIC, version: VERSION, flags: 0, status: 0, reserved: 0,
    requestId: 0n, handle: 0n, offset: 0n, length: 0n, ...fields,
  };
  const b = Buffer.alloc(HEADER);
  b.writeUInt32LE(f.magic >>> 0, 0);
  b.writeUInt8(f.version & 0xff, 4);
  b.writeUInt8(f.type & 0xff, 5);
  b.writeUInt16LE(f.flags & 0xffff, 6);
  b.writeUInt32LE(f.status >>> 0, 8);
  b.writeUInt32LE(f.reserved >>> 0, 12);
  b.writeBigUInt64LE(BigInt.asUintN(64, f.requestId), 16);
  b.writeBigUInt64LE(BigInt.asUintN(64, f.handle), 24);
  b.writeBigUInt64LE(BigInt.asUintN(64, f.offset), 32);
  b.writeBigUInt64LE(BigInt.asUintN(64, f.length), 40);
  return b;
}

export function decodeHeader(b: Buffer): Frame {
  return {
    magic: b.readUInt32LE(0),
    version: b.readUInt8(4),
    type: b.readUInt8(5),
    flags: b.readUInt16LE(6),
    status: b.readUInt32LE(8),
    reserved: b.readUInt32LE(12),
    requestId: b.readBigUInt64LE(16),
    handle: b.readBigUInt64LE(24),
    offset: b.readBigUInt64LE(32),
    length: b.readBigUInt64LE(40),
  };
}

/** HELLO carrying the client's nonce; `offset` is the client's slice size. */
export function hello(nonce: Buffer = randomBytes(NONCE_BYTES), sliceBytes = 4n << 20n): Buffer {
  return Buffer.concat([header({ type: FrameType.HELLO, offset: sliceBytes, length: BigInt(nonce.length) }), nonce]);
}

/** K = HMAC-SHA256(key = token, "kvferry/v1 data-plane"). */
export function dataPlaneKey(token: string): Buffer {
  return createHmac("sha256", Buffer.from(token, "utf8")).update("kvferry/v1 data-plane").digest();
}

/** HMAC(K, label || first || second): "server" proves with (nonce_c, nonce_s), "client" with (nonce_s, nonce_c). */
export function proof(key: Buffer, label: "server" | "client", first: Buffer, second: Buffer): Buffer {
  return createHmac("sha256", key).update(label).update(first).update(second).digest();
}

/**
 * The client's side of the handshake, proving `token`: HELLO, the server's CHALLENGE,
 * PROOF (sent whether or not the server's own proof holds, to test the server), and the
 * verdict's header. `serverProved` says whether the server proved `token`.
 */
export async function authenticate(
  c: RawDataConnection,
  token: string,
): Promise<{ verdict: Frame | "closed"; serverProved: boolean }> {
  const nonceC = randomBytes(NONCE_BYTES);
  c.send(hello(nonceC));
  const challenge = await c.frame();
  if (challenge === "closed" || challenge.type !== FrameType.CHALLENGE) return { verdict: challenge, serverProved: false };
  const payload = await c.read(2 * NONCE_BYTES);
  if (payload === "closed") return { verdict: "closed", serverProved: false };
  const key = dataPlaneKey(token);
  const nonceS = payload.subarray(0, NONCE_BYTES);
  const serverProved = proof(key, "server", nonceC, nonceS).equals(payload.subarray(NONCE_BYTES));
  c.send(header({ type: FrameType.PROOF, length: 32n }), proof(key, "client", nonceS, nonceC));
  return { verdict: await c.frame(), serverProved };
}

/** One TCP connection to a data port. Never throws on the server's resets or closes. */
export class RawDataConnection {
  #buffered: Buffer = Buffer.alloc(0);
  #closed = false;
  #wake: (() => void) | undefined;

  private constructor(private readonly socket: Socket) {
    socket.on("data", (d: Buffer) => {
      this.#buffered = Buffer.concat([this.#buffered, d]);
      this.#wake?.();
    });
    const closed = () => {
      this.#closed = true;
      this.#wake?.();
    };
    socket.on("end", closed);
    socket.on("close", closed);
    socket.on("error", closed); // ECONNRESET, EPIPE: the server dropped us
  }

  static open(address: string): Promise<RawDataConnection> {
    const i = address.lastIndexOf(":");
    const host = address.slice(0, i).replace(/^\[|\]$/g, "");
    const port = Number(address.slice(i + 1));
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port });
      socket.setNoDelay(true);
      socket.once("connect", () => {
        socket.off("error", reject);
        resolve(new RawDataConnection(socket));
      });
      socket.once("error", reject);
    });
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  /** Sends bytes; a write after the server closed is silently lost (as on a real wire). */
  send(...chunks: Buffer[]): void {
    if (this.#closed || this.socket.destroyed) return;
    for (const c of chunks) this.socket.write(c);
  }

  /** Half-closes our side: the server reads EOF. */
  end(): void {
    if (!this.socket.destroyed) this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** The next `n` bytes, or "closed" when the server closed before sending them all. */
  async read(n: number, timeoutMs = 5_000): Promise<Buffer | "closed"> {
    const until = Date.now() + timeoutMs;
    while (this.#buffered.length < n) {
      if (this.#closed) return "closed";
      const left = until - Date.now();
      if (left <= 0) throw new Error(`no ${n} bytes from the data port within ${timeoutMs} ms (got ${this.#buffered.length})`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
    }
    const out = this.#buffered.subarray(0, n);
    this.#buffered = this.#buffered.subarray(n);
    return out;
  }

  /** The next frame header, or "closed". */
  async frame(timeoutMs = 5_000): Promise<Frame | "closed"> {
    const b = await this.read(HEADER, timeoutMs);
    return b === "closed" ? b : decodeHeader(b);
  }

  /**
   * Resolves with what the server did within timeoutMs: "closed" once it closed the
   * connection (after any bytes it sent, returned in `received`), else "open".
   */
  async outcome(timeoutMs: number): Promise<{ state: "closed" | "open"; received: number }> {
    const until = Date.now() + timeoutMs;
    while (!this.#closed && Date.now() < until) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, until - Date.now()));
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
    }
    return { state: this.#closed ? "closed" : "open", received: this.#buffered.length };
  }
}

/**
 * A relay on a loopback port to the data port at `to`: it forwards both directions byte for byte,
 * except the client's READ frames that `passes` refuses, which it swallows, so that their replies
 * never come (a source that stalls on chosen handles, however fast the machine is).
 */
export async function stallingRelay(to: string, passes: (read: Frame) => boolean): Promise<{ address: string; close(): void }> {
  const i = to.lastIndexOf(":");
  const target = { host: to.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(to.slice(i + 1)) };
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(target);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.setNoDelay(true);
      s.on("error", () => {});
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    upstream.on("data", (d: Buffer) => client.write(d));
    let pending = Buffer.alloc(0);
    client.on("data", (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      for (;;) {
        if (pending.length < HEADER) return;
        const f = decodeHeader(pending);
        const size = HEADER + (f.type === FrameType.READ ? 0 : Number(f.length)); // READ alone has no payload
        if (pending.length < size) return;
        if (f.type !== FrameType.READ || passes(f)) upstream.write(pending.subarray(0, size));
        pending = pending.subarray(size);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}
