// Binding and draining one grpc-js server: shared by the client API and the peer API.
import { Server, ServerCredentials } from "@grpc/grpc-js";
import type { HostPort } from "../config/config.js";
import { formatHostPort } from "../config/config.js";
import { UnavailableError } from "../errors.js";

export function bind(server: Server, address: HostPort, what: string): Promise<number> {
  const text = formatHostPort(address);
  return new Promise<number>((resolve, reject) => {
    server.bindAsync(text, ServerCredentials.createInsecure(), (err, port) => {
      if (err) reject(new UnavailableError(`cannot listen for the ${what} on ${text}: ${err.message}`, { cause: err }));
      else resolve(port);
    });
  });
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
