// Binding and draining one grpc-js server: shared by the client API and the peer API.
import { Server, ServerCredentials } from "@grpc/grpc-js";
import type { HostPort } from "../config/config.js";
import { formatHostPort } from "../config/config.js";
import { UnavailableError } from "../errors.js";

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
