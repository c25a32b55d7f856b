// Prometheus metrics through prom-client. Every process (daemon, proxy, simulator) builds
// its metrics on a Registry of its own, never prom-client's global one, so that several
// of them in one Node process (tests, the demo) keep their series apart.
import type { ServerResponse } from "node:http";
import { Counter, Registry } from "prom-client";

export { Counter, Gauge, Histogram, Registry } from "prom-client";

/**
 * A counter that mirrors monotonic totals kept elsewhere (the store's counters, the native
 * engine's byte counts): read at every scrape rather than incremented twice.
 * `read` returns [labels, total] pairs; a label set it stops returning keeps no series.
 */
export function mirroredCounter<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[],
  read: () => Iterable<readonly [Partial<Record<L, string>>, number]>,
): Counter<L> {
  return new Counter<L>({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset();
      for (const [labels, total] of read()) this.inc(labels, total);
    },
  });
}

/** Answers a scrape: the registry's exposition text (format 0.0.4). */
export async function sendMetrics(res: ServerResponse, registry: Registry): Promise<void> {
  const text = await registry.metrics();
  res.writeHead(200, { "content-type": registry.contentType, "content-length": Buffer.byteLength(text) });
  res.end(text);
}
