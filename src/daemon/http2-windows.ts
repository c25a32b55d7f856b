// Larger HTTP/2 flow-control windows for the daemon's gRPC server.
//
// grpc-js lets clients set their window ('grpc-node.flow_control_window') but offers
// servers no option, so a streamed put stalls every 64 KiB waiting for a
// WINDOW_UPDATE. Two grpc-js internals are touched here, and only here: the options
// its HTTP/2 servers are created with, and the set of servers (to widen each new
// session's connection window). If a grpc-js upgrade renames them, the daemon still
// works, at the default windows, and says so in its log.
import type { Server } from "@grpc/grpc-js";
import type { Http2Server, ServerHttp2Session } from "node:http2";
import type { Logger } from "pino";

interface GrpcServerInternals {
  commonServerOptions?: { settings?: Record<string, unknown> };
  http2Servers?: Map<Http2Server, unknown>;
}

/** Before bind: the per-stream window every new session advertises. */
export function widenStreamWindows(server: Server, bytes: number, log: Logger): void {
  const internals = server as unknown as GrpcServerInternals;
  if (internals.commonServerOptions === undefined) {
    log.warn("grpc-js internals changed: streamed puts run with 64 KiB HTTP/2 windows");
    return;
  }
  internals.commonServerOptions.settings = { ...internals.commonServerOptions.settings, initialWindowSize: bytes };
}

/** After bind: the connection-level window of every session. */
export function widenSessionWindows(server: Server, bytes: number, log: Logger): void {
  const servers = (server as unknown as GrpcServerInternals).http2Servers;
  if (!(servers instanceof Map)) {
    log.warn("grpc-js internals changed: HTTP/2 sessions keep their default connection window");
    return;
  }
  for (const http2Server of servers.keys()) {
    http2Server.on("session", (session: ServerHttp2Session) => {
      session.once("localSettings", () => session.setLocalWindowSize(bytes));
    });
  }
}
