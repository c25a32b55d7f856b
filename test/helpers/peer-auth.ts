// Listeners that sit where a daemon's peer API should be: one that records every HTTP/2
// stream it receives and answers as well as a process without the token can, and one that
// relays every stream to a real daemon and records the paths. Plus the handshake of a
// token holder, for fakes that must pass as a peer.
import { randomBytes } from "node:crypto";
import { connect, createServer, type Http2Server, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import type { sendUnaryData, ServerUnaryCall } from "@grpc/grpc-js";
import { PEER_API_PURPOSE, purposeKey } from "../../src/daemon/peer-auth.js";
import { PeerSessions } from "../../src/daemon/peer-sessions.js";
import { toGrpcError } from "../../src/grpc-errors.js";
import {
  OpenSessionResponse,
  type ConfirmSessionRequest,
  type ConfirmSessionResponse,
  type OpenSessionRequest,
} from "../../src/gen/kvferry/v1/peer.js";

/** One gRPC message in its 5-byte frame. */
export function grpcFrame(message: Uint8Array): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(message.length, 1);
  return Buffer.concat([head, message]);
}

/** The messages of a gRPC body (uncompressed frames). */
export function grpcMessages(body: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at + 5 <= body.length; ) {
    const n = body.readUInt32BE(at + 1);
    out.push(body.subarray(at + 5, at + 5 + n));
    at += 5 + n;
  }
  return out;
}

export interface ReceivedStream {
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/**
 * An HTTP/2 listener that records every stream and answers it: OpenSession with a random
 * nonce and a random "proof" (all that a process without the token can send), anything
 * else with an empty OK message (so that a call the caller should never make would show).
 */
export async function recordingListener(): Promise<{ address: string; received: ReceivedStream[]; close(): Promise<void> }> {
  const received: ReceivedStream[] = [];
  const server: Http2Server = createServer();
  server.on("stream", (stream, headers) => {
    const chunks: Buffer[] = [];
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("end", () => {
      received.push({ headers, body: Buffer.concat(chunks) });
      const reply = headers[":path"] === "/kvferry.v1.KvFerryPeer/OpenSession"
        ? OpenSessionResponse.encode({ sessionId: randomBytes(16).toString("hex"), serverNonce: randomBytes(32), serverProof: randomBytes(32) }).finish()
        : new Uint8Array();
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(grpcFrame(reply));
    });
    stream.on("error", () => {});
  });
  const address = await listen(server);
  return { address, received, close: () => closeServer(server) };
}

/** An HTTP/2 relay to `to` that records the path of every stream it forwards. */
export async function recordingRelay(to: string): Promise<{ address: string; paths: string[]; close(): Promise<void> }> {
  const paths: string[] = [];
  const upstream = connect(`http://${to}`);
  upstream.on("error", () => {});
  const server = createServer();
  server.on("stream", (down, headers) => {
    paths.push(String(headers[":path"]));
    const forwarded: OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(headers)) if (k !== ":authority" && k !== ":scheme") forwarded[k] = v;
    const up = upstream.request(forwarded, { waitForTrailers: false });
    down.pipe(up);
    let trailers: OutgoingHttpHeaders = {};
    up.on("response", (h) => {
      const out: OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(h)) {
        // A trailers-only answer (an error) carries its status in the headers: sent on as trailers.
        if (k === "grpc-status" || k === "grpc-message") trailers[k] = v;
        else if (k === ":status" || !k.startsWith(":")) out[k] = v;
      }
      down.respond(out, { waitForTrailers: true });
      up.pipe(down);
    });
    up.on("trailers", (t) => (trailers = { ...trailers, ...t }));
    down.on("wantTrailers", () => down.sendTrailers(trailers));
    up.on("error", () => down.close());
    down.on("error", () => up.close());
  });
  const address = await listen(server);
  return {
    address,
    paths,
    close: async () => {
      upstream.close();
      await closeServer(server);
    },
  };
}

/** Sends `body` to `address` under `path` with `headers` as recorded; resolves to the grpc-status and messages. */
export async function replay(address: string, path: string, headers: IncomingHttpHeaders, body: Buffer): Promise<{ grpcStatus: number; details: string; messages: Buffer[] }> {
  const session = connect(`http://${address}`);
  session.on("error", () => {});
  try {
    const out: OutgoingHttpHeaders = { ":method": "POST", ":path": path };
    for (const [k, v] of Object.entries(headers)) if (!k.startsWith(":") && v !== undefined) out[k] = v;
    const req = session.request(out);
    const chunks: Buffer[] = [];
    let meta: Record<string, unknown> = {};
    req.on("response", (h) => (meta = { ...meta, ...h }));
    req.on("trailers", (t) => (meta = { ...meta, ...t }));
    req.on("data", (c: Buffer) => chunks.push(c));
    await new Promise<void>((resolve, reject) => {
      req.on("end", resolve);
      req.on("error", reject);
      req.end(body);
    });
    return {
      grpcStatus: Number(meta["grpc-status"]),
      details: decodeURIComponent(String(meta["grpc-message"] ?? "")),
      messages: grpcMessages(Buffer.concat(chunks)),
    };
  } finally {
    session.close();
  }
}

/** OpenSession and ConfirmSession handlers of a token holder (for fakes that pass as a peer). */
export function handshakeHandlers(token: string) {
  const sessions = new PeerSessions(purposeKey(token, PEER_API_PURPOSE));
  return {
    openSession: (call: ServerUnaryCall<OpenSessionRequest, OpenSessionResponse>, cb: sendUnaryData<OpenSessionResponse>) => {
      try {
        cb(null, sessions.open(call.request.clientNonce));
      } catch (e) {
        cb(toGrpcError(e));
      }
    },
    confirmSession: (call: ServerUnaryCall<ConfirmSessionRequest, ConfirmSessionResponse>, cb: sendUnaryData<ConfirmSessionResponse>) => {
      try {
        sessions.confirm(call.request.sessionId, call.request.clientProof);
        cb(null, { lifetimeMs: sessions.limits.lifetimeMs });
      } catch (e) {
        cb(toGrpcError(e));
      }
    },
  };
}

const sessions = new WeakMap<Http2Server, Set<ServerHttp2Session>>();

async function listen(server: Http2Server): Promise<string> {
  const open = new Set<ServerHttp2Session>();
  sessions.set(server, open);
  server.on("session", (session: ServerHttp2Session) => {
    open.add(session);
    session.on("close", () => open.delete(session));
    session.on("error", () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** Closes the listener and every connection to it (a daemon's channel would hold it open). */
function closeServer(server: Http2Server): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  for (const session of sessions.get(server) ?? []) session.destroy();
  return closed;
}
