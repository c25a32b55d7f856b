// The proxy's metrics in Prometheus' text exposition format (version 0.0.4), served on
// GET /metrics. A few counters, gauges and histograms with labels, kept in maps; no
// dependency. Label sets are bounded: routes, outcomes, statuses and configured instances.

type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  const keys = Object.keys(labels).sort();
  if (keys.length === 0) return "";
  const escape = (v: string) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
  return `{${keys.map((k) => `${k}="${escape(labels[k]!)}"`).join(",")}}`;
}

function withLabel(key: string, name: string, value: string): string {
  const extra = `${name}="${value}"`;
  return key === "" ? `{${extra}}` : `${key.slice(0, -1)},${extra}}`;
}

interface Metric {
  render(): string;
}

export class Counter implements Metric {
  readonly #values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelKey(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + by);
  }

  get(labels: Labels = {}): number {
    return this.#values.get(labelKey(labels)) ?? 0;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const [key, v] of this.#values) lines.push(`${this.name}${key} ${v}`);
    return lines.join("\n");
  }
}

export class Gauge implements Metric {
  readonly #values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}

  set(labels: Labels, value: number): void {
    this.#values.set(labelKey(labels), value);
  }

  add(labels: Labels, by: number): void {
    const key = labelKey(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + by);
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} gauge`];
    for (const [key, v] of this.#values) lines.push(`${this.name}${key} ${v}`);
    return lines.join("\n");
  }
}

export class Histogram implements Metric {
  readonly #series = new Map<string, { counts: number[]; sum: number; count: number }>();
  constructor(readonly name: string, readonly help: string, readonly buckets: readonly number[]) {}

  observe(labels: Labels, value: number): void {
    const key = labelKey(labels);
    let s = this.#series.get(key);
    if (s === undefined) this.#series.set(key, (s = { counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const [key, s] of this.#series) {
      this.buckets.forEach((b, i) => lines.push(`${this.name}_bucket${withLabel(key, "le", String(b))} ${s.counts[i]}`));
      lines.push(`${this.name}_bucket${withLabel(key, "le", "+Inf")} ${s.count}`);
      lines.push(`${this.name}_sum${key} ${s.sum}`);
      lines.push(`${this.name}_count${key} ${s.count}`);
    }
    return lines.join("\n");
  }
}

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const TRANSFER_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Every metric the proxy exports. */
export class ProxyMetrics {
  readonly requests = new Counter("kvferry_proxy_requests_total", "Requests answered, by route, HTTP status and outcome.");
  readonly inFlight = new Gauge("kvferry_proxy_requests_in_flight", "Requests being served now, by route.");
  readonly ttft = new Histogram(
    "kvferry_proxy_time_to_first_byte_seconds",
    "From a request's arrival to the first byte of the decode answer sent to the client, by route.",
    LATENCY_BUCKETS,
  );
  readonly latency = new Histogram("kvferry_proxy_request_duration_seconds", "From a request's arrival to its last byte, by route and outcome.", LATENCY_BUCKETS);
  readonly prefillLatency = new Histogram("kvferry_proxy_prefill_duration_seconds", "Duration of the prefill call, by instance.", LATENCY_BUCKETS);
  readonly transferBytes = new Counter("kvferry_proxy_kv_transfer_bytes_total", "KV bytes the proxy had moved between daemons (push), by mode.");
  readonly transferSeconds = new Histogram("kvferry_proxy_kv_transfer_seconds", "Duration of the KV transfer step of a request (push), by mode.", TRANSFER_BUCKETS);
  readonly transfers = new Counter("kvferry_proxy_kv_transfers_total", "KV transfers the proxy asked for, by mode and result code.");
  readonly healthy = new Gauge("kvferry_proxy_instance_healthy", "1 when the instance passed its last health check, else 0.");
  readonly outstanding = new Gauge("kvferry_proxy_instance_outstanding_requests", "Requests in flight on the instance.");
  readonly releases = new Counter("kvferry_proxy_kv_releases_total", "Releases of transfer ids at the end of requests, by how the request ended (ok, failed) and the result (released, absent, failed).");

  readonly #all: Metric[] = [
    this.requests, this.inFlight, this.ttft, this.latency, this.prefillLatency, this.transferBytes,
    this.transferSeconds, this.transfers, this.healthy, this.outstanding, this.releases,
  ];

  /** The exposition text of every metric. */
  render(): string {
    return `${this.#all.map((m) => m.render()).join("\n")}\n`;
  }
}
