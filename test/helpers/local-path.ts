// Helpers of the local path's tests: the typed error of a raw client call, and one series
// of a daemon's /metrics (a daemon started with --metrics-listen).
import { errorFromServiceError } from "../../src/grpc-errors.js";
import { parseExposition, sampleOf } from "./metrics.js";
import type { PeerDaemon } from "./transfer.js";

/** Calls a raw client method with `request` and returns the typed error it failed with. */
export function rejectionOf(method: (req: unknown, cb: (err: unknown) => void) => unknown, request: unknown): Promise<Error> {
  return new Promise<Error>((resolve, reject) => {
    method(request, (err) => (err ? resolve(errorFromServiceError(err as never)) : reject(new Error("it succeeded"))));
  });
}

/** The value of a series without labels on the daemon's /metrics (NaN when absent). */
export async function metricValue(d: PeerDaemon, name: string): Promise<number> {
  const text = await (await fetch(`http://${String(d.proc.ready.metrics)}/metrics`)).text();
  return sampleOf(parseExposition(text), name) ?? Number.NaN;
}
