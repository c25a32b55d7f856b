// Binding and draining one grpc-js server, and the one adapter from a handler that
// returns or throws to a grpc-js unary handler: shared by the client API and the peer API.
import { Server, ServerCredentials, type handleUnaryCall, type ServerUnaryCall } from "@grpc/grpc-js";
import type { HostPort } from "../config/config.js";
import { formatHostPort } from "../config/config.js";
import { UnavailableError } from "../errors.js";
import { toGrpcError, type GrpcError } from "../grpc-errors.js";

/** What a failed call's report sees of it (unary and streaming calls alike). */
export type FailedCall = Pick<ServerUnaryCall<unknown, unknown>, "getPath" | "getPeer">;

/** How a service reports a failed call (it is answered with `status` whatever the report does). */
export type OnFailure = (call: FailedCall, status: GrpcError, err: unknown) => void;

/** The status that answers a call that threw `err`, reported first. */
export function failure(onFailure: OnFailure, call: FailedCall, err: unknown): GrpcError {
  const status = toGrpcError(err);
  onFailure(call, status, err);
  return status;
}

/** A grpc-js unary handler that answers with what `handler` returns, or with the status of what it throws. */
export function unary<Req, Res>(
  onFailure: OnFailure,
  handler: (call: ServerUnaryCall<Req, Res>) => Promise<Res> | Res,
): handleUnaryCall<Req, Res> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => handler(call))
      .then(
        (res) => callback(null, res),
        (err) => callback(failure(onFailure, call, err)),
      );
  };
}

/** Binds `address`; a failure names `what` (the API and the setting that chose the address) and the OS's reason. */
export function bind(server: Server, address: HostPort, what: string): Promise<number> {
  const text = formatHostPort(address);
  return new Promise<number>((resolve, reject) => {
    server.bindAsync(text, ServerCredentials.createInsecure(), (err, port) => {
      if (err) reject(new UnavailableError(`cannot listen for the ${what} on ${text}: ${bindReason(err)}`));
      else resolve(port);
    });
  });
}

/** grpc-js wraps the OS error in "No address added out of total 1 resolved errors: [listen EADDRINUSE: address already in use …]". */
function bindReason(err: Error): string {
  const os = /\[listen (E[A-Z]+): ([a-z ]+)/.exec(err.message);
  return os === null ? err.message : `${os[2].trim()} (${os[1]})`;
}

/** Stops accepting; resolves when in-flight calls end, or cancels them after graceMs. */
export function drain(server: Server, graceMs: number, onForce: () => void): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      onForce();
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
