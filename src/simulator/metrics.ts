// The simulator's counters, served as Prometheus text on GET /metrics.
//
// Requests are counted by role, endpoint and outcome (ok, aborted by the client,
// rejected with a 4xx, kv_timeout, failed with another 5xx); tokens generated and prompt
// tokens by role; KV bytes put into and got from the local daemon.
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
  readonly #requests = new Map<string, number>();
  tokensGenerated = 0;
  promptTokens = 0;
  kvBytesPut = 0;
  kvBytesGot = 0;
  kvEntriesPut = 0;
  kvEntriesGot = 0;

  constructor(readonly role: RoleName) {}

  request(endpoint: string, outcome: Outcome): void {
    const key = `${endpoint}\0${outcome}`;
    this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1);
  }

  /** Prometheus text exposition format, version 0.0.4. */
  render(): string {
    const role = `role="${this.role}"`;
    const lines: string[] = [
      "# HELP kvferry_simulator_requests_total Completion requests by endpoint and outcome.",
      "# TYPE kvferry_simulator_requests_total counter",
    ];
    for (const [key, n] of [...this.#requests].sort(([a], [b]) => a.localeCompare(b))) {
      const [endpoint, outcome] = key.split("\0");
      lines.push(`kvferry_simulator_requests_total{${role},endpoint="${endpoint}",outcome="${outcome}"} ${n}`);
    }
    const counter = (name: string, help: string, value: number) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`, `${name}{${role}} ${value}`);
    };
    counter("kvferry_simulator_tokens_generated_total", "Completion tokens generated.", this.tokensGenerated);
    counter("kvferry_simulator_prompt_tokens_total", "Prompt tokens processed.", this.promptTokens);
    counter("kvferry_simulator_kv_bytes_put_total", "KV bytes put into the local daemon (prefill).", this.kvBytesPut);
    counter("kvferry_simulator_kv_bytes_got_total", "KV bytes got from the local daemon (decode).", this.kvBytesGot);
    counter("kvferry_simulator_kv_entries_put_total", "KV entries put and sealed (prefill).", this.kvEntriesPut);
    counter("kvferry_simulator_kv_entries_got_total", "KV entries got and verified (decode).", this.kvEntriesGot);
    return lines.join("\n") + "\n";
  }
}
