// The peer API: kvferry.v1.KvFerryPeer handlers. OpenSession and ConfirmSession are the
// handshake (peer-auth.ts, peer-sessions.ts); every other call is acted on only once its
// session, counter and MAC check out. A refused caller learns nothing of this daemon.
import { status, type ServerUnaryCall } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { NodeInfo } from "../gen/kvferry/v1/node.js";
import { KvFerryPeerService, type KvFerryPeerServer } from "../gen/kvferry/v1/peer.js";
import { unary, type OnFailure } from "./grpc-server.js";
import { LogLimiter } from "./log-limiter.js";
import { COUNTER_METADATA, MAC_METADATA, PEER_API_PURPOSE, SESSION_METADATA, bodyDigest, purposeKey } from "./peer-auth.js";
import { PeerSessions } from "./peer-sessions.js";
import type { Transfers } from "./transfers.js";

export interface PeerContext {
  token: string;
  transfers: Transfers;
  log: Logger;
  nodeId(): string;
  version: string;
  dataAddress(): string;
  /** The transport its data plane speaks (config `protocol`): a peer must speak the same. */
  protocol: string;
  /** This daemon's registry record, once registered. */
  self(): NodeInfo | undefined;
  /**
   * A peer greeted us with its record (the embedded registry learns it).
   * @throws AlreadyExistsError when it claims a node id a running daemon holds (this one, say).
   */
  learn(node: NodeInfo, from: string): Promise<void>;
}

/** sha256 of each request's bytes as they arrived, for the call MAC (keyed by the decoded request). */
const received = new WeakMap<object, Buffer>();

type Definition = typeof KvFerryPeerService;

/** The peer service's definition, whose decoders keep the digest of what they decoded. */
export const PeerServiceDefinition: Definition = Object.fromEntries(
  Object.entries(KvFerryPeerService).map(([name, method]) => [
    name,
    {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        const request = (method.requestDeserialize as (b: Buffer) => object)(bytes);
        received.set(request, bodyDigest(bytes));
        return request;
      },
    },
  ]),
) as unknown as Definition;

const first = (call: ServerUnaryCall<unknown, unknown>, key: string): string | undefined => {
  const v = call.metadata.get(key)[0];
  return typeof v === "string" ? v : undefined;
};

export function peerService(ctx: PeerContext, sessions = new PeerSessions(purposeKey(ctx.token, PEER_API_PURPOSE))): KvFerryPeerServer {
  const refused = new LogLimiter();
  const warnRefused = (peer: string, path: string, code: status, why: string) =>
    refused.report(`${peer} ${code}`, () =>
      ctx.log.warn({ peer, path, code: status[code], why }, "peer refused: it did not prove the cluster token (logged once a minute per peer)"),
    );
  const report: OnFailure = (call, e, err) => {
    if (e.code === status.PERMISSION_DENIED || e.code === status.UNAUTHENTICATED) {
      warnRefused(call.getPeer().replace(/:\d+$/, ""), call.getPath(), e.code, e.details);
    } else if (e.code === status.INTERNAL) ctx.log.error({ err, path: call.getPath() }, "internal error");
  };
  /** A handler run only for a call of an authenticated session. */
  const authed = <Req, Res>(path: string, handler: (req: Req, call: ServerUnaryCall<Req, Res>) => Promise<Res> | Res) =>
    unary<Req, Res>(report, (call) => {
      const body = received.get(call.request as object);
      if (body === undefined) throw new Error(`${path}: no digest of the request (decoded outside PeerServiceDefinition)`);
      sessions.verify(first(call, SESSION_METADATA), first(call, COUNTER_METADATA), first(call, MAC_METADATA), path, body);
      return handler(call.request, call);
    });
  const s = KvFerryPeerService;

  return {
    openSession: unary(report, (call) => {
      const c = sessions.open(call.request.clientNonce);
      return { sessionId: c.sessionId, serverNonce: c.serverNonce, serverProof: c.serverProof };
    }),
    confirmSession: unary(report, (call) => {
      sessions.confirm(call.request.sessionId, call.request.clientProof);
      return { lifetimeMs: sessions.limits.lifetimeMs };
    }),
    hello: authed(s.hello.path, async (req, call) => {
      if (req.node !== undefined) await ctx.learn(req.node, call.getPeer());
      return {
        nodeId: ctx.nodeId(),
        version: ctx.version,
        dataAddress: ctx.dataAddress(),
        protocol: ctx.protocol,
        node: ctx.self(),
      };
    }),
    prepareReceive: authed(s.prepareReceive.path, (req) => ctx.transfers.prepareReceive(req)),
    commitReceive: authed(s.commitReceive.path, (req) => ctx.transfers.commitReceive(req.ids)),
    abortReceive: authed(s.abortReceive.path, async (req) => {
      await ctx.transfers.abortReceive(req.ids);
      return {};
    }),
    prepareSend: authed(s.prepareSend.path, (req) => ctx.transfers.prepareSend(req)),
    finishSend: authed(s.finishSend.path, async (req) => {
      await ctx.transfers.finishSend(req.completed, req.failed, req.releaseSource);
      return {};
    }),
  };
}
