// The simulator's counters, served as Prometheus text on GET /metrics.
//
// Requests are counted by role, endpoint and outcome (ok, aborted by the client,
// rejected with a 4xx, kv_timeout, failed with another 5xx); tokens generated and prompt
// tokens by role; KV bytes put into and got from the local daemon.
import { Counter, type Labels } from "../metrics/prometheus.js";
import type { RoleName } from "./roles.js";

export type Outcome = "ok" | "aborted" | "rejected" | "kv_timeout" | "failed";

/** The outcome a finished request counts as, from its status and whether the client left. */
export function outcomeOf(status: number, aborted: boolean): Outcome {
  if (aborted) return "aborted";
  if (status < 400) return "ok";
  if (status < 500) return "rejected";
  return status === 504 ? "kv_timeout" : "failed";
}

export class SimulatorMetrics {
  readonly #requests = new Counter("kvferry_simulator_requests_total", "Completion requests by endpoint and outcome.", ["role", "endpoint", "outcome"]);
  readonly #tokensGenerated = new Counter("kvferry_simulator_tokens_generated_total", "Completion tokens generated.");
  readonly #promptTokens = new Counter("kvferry_simulator_prompt_tokens_total", "Prompt tokens processed.");
  readonly #kvBytesPut = new Counter("kvferry_simulator_kv_bytes_put_total", "KV bytes put into the local daemon (prefill).");
  readonly #kvBytesGot = new Counter("kvferry_simulator_kv_bytes_got_total", "KV bytes got from the local daemon (decode).");
  readonly #kvEntriesPut = new Counter("kvferry_simulator_kv_entries_put_total", "KV entries put and sealed (prefill).");
  readonly #kvEntriesGot = new Counter("kvferry_simulator_kv_entries_got_total", "KV entries got and verified (decode).");
  readonly #role: Labels;

  constructor(readonly role: RoleName) {
    this.#role = { role };
    // Present from the start at 0, as before any request.
    for (const c of [this.#tokensGenerated, this.#promptTokens, this.#kvBytesPut, this.#kvBytesGot, this.#kvEntriesPut, this.#kvEntriesGot]) {
      c.inc(this.#role, 0);
    }
  }

  request(endpoint: string, outcome: Outcome): void {
    this.#requests.inc({ ...this.#role, endpoint, outcome });
  }

  prompt(tokens: number): void {
    this.#promptTokens.inc(this.#role, tokens);
  }

  generated(tokens: number): void {
    this.#tokensGenerated.inc(this.#role, tokens);
  }

  kvPut(bytes: number): void {
    this.#kvBytesPut.inc(this.#role, bytes);
  }

  kvGot(bytes: number): void {
    this.#kvBytesGot.inc(this.#role, bytes);
  }

  entryPut(): void {
    this.#kvEntriesPut.inc(this.#role);
  }

  entryGot(): void {
    this.#kvEntriesGot.inc(this.#role);
  }

  /** Prometheus text exposition format, version 0.0.4. */
  render(): string {
    const all = [this.#requests, this.#tokensGenerated, this.#promptTokens, this.#kvBytesPut, this.#kvBytesGot, this.#kvEntriesPut, this.#kvEntriesGot];
    return `${all.map((m) => m.render()).join("\n")}\n`;
  }
}
