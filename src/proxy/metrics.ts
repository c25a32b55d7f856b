// The proxy's metrics, served on GET /metrics (src/metrics/prometheus.ts). Label sets are
// bounded: routes, outcomes, statuses and configured instances.
import { Counter, Gauge, Histogram, type Metric } from "../metrics/prometheus.js";

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
  readonly releases = new Counter("kvferry_proxy_kv_releases_total", "Release calls for transfer ids requests or abandoned prefill attempts may have left behind (each try counted), by how what left it ended (ok, failed) and the result (released, absent, failed).");

  readonly #all: Metric[] = [
    this.requests, this.inFlight, this.ttft, this.latency, this.prefillLatency, this.transferBytes,
    this.transferSeconds, this.transfers, this.healthy, this.outstanding, this.releases,
  ];

  /** The exposition text of every metric. */
  render(): string {
    return `${this.#all.map((m) => m.render()).join("\n")}\n`;
  }
}
