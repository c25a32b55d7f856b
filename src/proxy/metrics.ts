// The proxy's metrics, served on GET /metrics from a registry of its own
// (src/metrics/registry.ts). Label sets are bounded: routes, outcomes, statuses and
// configured instances.
import { Counter, Gauge, Histogram, Registry } from "../metrics/registry.js";

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const TRANSFER_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Every metric the proxy exports. */
export class ProxyMetrics {
  readonly registry = new Registry();
  readonly #registers = [this.registry];

  readonly requests = new Counter({
    name: "kvferry_proxy_requests_total",
    help: "Requests answered, by route, HTTP status and outcome.",
    labelNames: ["route", "status", "outcome"] as const,
    registers: this.#registers,
  });
  readonly inFlight = new Gauge({
    name: "kvferry_proxy_requests_in_flight",
    help: "Requests being served now, by route.",
    labelNames: ["route"] as const,
    registers: this.#registers,
  });
  readonly ttft = new Histogram({
    name: "kvferry_proxy_time_to_first_byte_seconds",
    help: "From a request's arrival to the first byte of the decode answer sent to the client, by route.",
    labelNames: ["route"] as const,
    buckets: LATENCY_BUCKETS,
    registers: this.#registers,
  });
  readonly latency = new Histogram({
    name: "kvferry_proxy_request_duration_seconds",
    help: "From a request's arrival to its last byte, by route and outcome.",
    labelNames: ["route", "outcome"] as const,
    buckets: LATENCY_BUCKETS,
    registers: this.#registers,
  });
  readonly prefillLatency = new Histogram({
    name: "kvferry_proxy_prefill_duration_seconds",
    help: "Duration of the prefill call, by instance.",
    labelNames: ["url"] as const,
    buckets: LATENCY_BUCKETS,
    registers: this.#registers,
  });
  readonly transferBytes = new Counter({
    name: "kvferry_proxy_kv_transfer_bytes_total",
    help: "KV bytes the proxy had moved between daemons (push), by mode.",
    labelNames: ["mode"] as const,
    registers: this.#registers,
  });
  readonly transferSeconds = new Histogram({
    name: "kvferry_proxy_kv_transfer_seconds",
    help: "Duration of the KV transfer step of a request (push), by mode.",
    labelNames: ["mode"] as const,
    buckets: TRANSFER_BUCKETS,
    registers: this.#registers,
  });
  readonly transfers = new Counter({
    name: "kvferry_proxy_kv_transfers_total",
    help: "KV transfers the proxy asked for, by mode and result code.",
    labelNames: ["mode", "code"] as const,
    registers: this.#registers,
  });
  readonly healthy = new Gauge({
    name: "kvferry_proxy_instance_healthy",
    help: "1 when the instance passed its last health check, else 0.",
    labelNames: ["role", "url"] as const,
    registers: this.#registers,
  });
  readonly outstanding = new Gauge({
    name: "kvferry_proxy_instance_outstanding_requests",
    help: "Requests in flight on the instance.",
    labelNames: ["role", "url"] as const,
    registers: this.#registers,
  });
  readonly releases = new Counter({
    name: "kvferry_proxy_kv_releases_total",
    help:
      "Release calls for transfer ids requests or abandoned prefill attempts may have left behind (each try counted), " +
      "by how what left it ended (ok, failed) and the result (released, absent, failed).",
    labelNames: ["after", "result"] as const,
    registers: this.#registers,
  });

  /** The exposition text of every metric. */
  render(): Promise<string> {
    return this.registry.metrics();
  }
}
