// The peer API: kvferry.v1.KvFerryPeer handlers, each behind the cluster-token check.
import { createHash, timingSafeEqual } from "node:crypto";
import type { Metadata, sendUnaryData, ServerUnaryCall } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { PermissionDeniedError } from "../errors.js";
import type { NodeInfo } from "../gen/kvferry/v1/node.js";
import type { KvFerryPeerServer } from "../gen/kvferry/v1/peer.js";
import { LogLimiter } from "./log-limiter.js";
import { TOKEN_METADATA } from "./peers.js";
import { toGrpcError } from "./status.js";
import type { Transfers } from "./transfers.js";

export interface PeerContext {
  token: string;
  transfers: Transfers;
  log: Logger;
  nodeId(): string;
  version: string;
  dataAddress(): string;
  /** This daemon's registry record, once registered. */
  self(): NodeInfo | undefined;
  /**
   * A peer greeted us with its record (the embedded registry learns it).
   * @throws AlreadyExistsError when it claims a node id a running daemon holds (this one, say).
   */
  learn(node: NodeInfo, from: string): Promise<void>;
}

const digest = (s: string) => createHash("sha256").update(s).digest();

/** Throws unless the call presents the cluster token (compared in constant time). */
export function checkToken(metadata: Metadata, expected: Buffer): void {
  const given = metadata.get(TOKEN_METADATA)[0];
  if (typeof given !== "string" || !timingSafeEqual(digest(given), expected)) {
    throw new PermissionDeniedError("this peer API needs the cluster token in the kvferry-token metadata");
  }
}

export function peerService(ctx: PeerContext): KvFerryPeerServer {
  const expected = digest(ctx.token);
  const refused = new LogLimiter();
  const warnRefused = (peer: string, path: string) =>
    refused.report(peer, () => ctx.log.warn({ peer, path }, "peer refused: bad token (logged once a minute per peer)"));
  const authed = <Req, Res>(handler: (req: Req, call: ServerUnaryCall<Req, Res>) => Promise<Res> | Res) =>
    (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => {
      Promise.resolve()
        .then(() => {
          checkToken(call.metadata, expected);
          return handler(call.request, call);
        })
        .then(
          (res) => callback(null, res),
          (err) => {
            const e = toGrpcError(err);
            if (e.code === 7 /* PERMISSION_DENIED */) warnRefused(call.getPeer().replace(/:\d+$/, ""), call.getPath());
            else if (e.code === 13) ctx.log.error({ err, path: call.getPath() }, "internal error");
            callback(e);
          },
        );
    };

  return {
    hello: authed(async (req, call) => {
      if (req.node !== undefined) await ctx.learn(req.node, call.getPeer());
      return {
        nodeId: ctx.nodeId(),
        version: ctx.version,
        dataAddress: ctx.dataAddress(),
        protocol: "tcp",
        node: ctx.self(),
      };
    }),
    prepareReceive: authed((req) => ctx.transfers.prepareReceive(req)),
    commitReceive: authed((req) => ctx.transfers.commitReceive(req.ids)),
    abortReceive: authed(async (req) => {
      await ctx.transfers.abortReceive(req.ids);
      return {};
    }),
    prepareSend: authed((req) => ctx.transfers.prepareSend(req)),
    finishSend: authed(async (req) => {
      await ctx.transfers.finishSend(req.completed, req.failed, req.releaseSource);
      return {};
    }),
  };
}
