// The simulator's counters, served as Prometheus text on GET /metrics from a registry of
// its own (src/metrics/registry.ts).
//
// Requests are counted by role, endpoint and outcome (ok, aborted by the client,
// rejected with a 4xx, kv_timeout, failed with another 5xx); tokens generated and prompt
// tokens by role; KV bytes put into and got from the local daemon.
import { Counter, Registry } from "../metrics/registry.js";
import type { KvCounters, RoleName } from "./roles.js";

export type Outcome = "ok" | "aborted" | "rejected" | "kv_timeout" | "failed";

/** The outcome a finished request counts as, from its status and whether the client left. */
export function outcomeOf(status: number, aborted: boolean): Outcome {
  if (aborted) return "aborted";
  if (status < 400) return "ok";
  if (status < 500) return "rejected";
  return status === 504 ? "kv_timeout" : "failed";
}

export class SimulatorMetrics implements KvCounters {
  readonly registry = new Registry();
  readonly #requests = new Counter({
    name: "kvferry_simulator_requests_total",
    help: "Completion requests by endpoint and outcome.",
    labelNames: ["role", "endpoint", "outcome"] as const,
    registers: [this.registry],
  });
  readonly #tokensGenerated = this.#byRole("kvferry_simulator_tokens_generated_total", "Completion tokens generated.");
  readonly #promptTokens = this.#byRole("kvferry_simulator_prompt_tokens_total", "Prompt tokens processed.");
  readonly #kvBytesPut = this.#byRole("kvferry_simulator_kv_bytes_put_total", "KV bytes put into the local daemon (prefill).");
  readonly #kvBytesGot = this.#byRole("kvferry_simulator_kv_bytes_got_total", "KV bytes got from the local daemon (decode).");
  readonly #kvEntriesPut = this.#byRole("kvferry_simulator_kv_entries_put_total", "KV entries put and sealed (prefill).");
  readonly #kvEntriesGot = this.#byRole("kvferry_simulator_kv_entries_got_total", "KV entries got and verified (decode).");

  constructor(readonly role: RoleName) {
    // Present from the start at 0, as before any request.
    for (const c of [this.#tokensGenerated, this.#promptTokens, this.#kvBytesPut, this.#kvBytesGot, this.#kvEntriesPut, this.#kvEntriesGot]) {
      c.inc({ role }, 0);
    }
  }

  #byRole(name: string, help: string): Counter<"role"> {
    return new Counter({ name, help, labelNames: ["role"] as const, registers: [this.registry] });
  }

  request(endpoint: string, outcome: Outcome): void {
    this.#requests.inc({ role: this.role, endpoint, outcome });
  }

  prompt(tokens: number): void {
    this.#promptTokens.inc({ role: this.role }, tokens);
  }

  generated(tokens: number): void {
    this.#tokensGenerated.inc({ role: this.role }, tokens);
  }

  kvPut(bytes: number): void {
    this.#kvBytesPut.inc({ role: this.role }, bytes);
  }

  kvGot(bytes: number): void {
    this.#kvBytesGot.inc({ role: this.role }, bytes);
  }

  entryPut(): void {
    this.#kvEntriesPut.inc({ role: this.role });
  }

  entryGot(): void {
    this.#kvEntriesGot.inc({ role: this.role });
  }
}
