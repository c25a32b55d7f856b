// `kvferry simulate`: an OpenAI-compatible engine SIMULATOR that plays a prefill, a decode
// or a whole (non-disaggregated) LLM instance, so that the proxy and the demo run without
// a GPU. It logs "kvferry simulator serving" with its `listen` address once bound (as
// `kvferry daemon` logs "kvferry daemon serving"), serves until SIGTERM or SIGINT, drains,
// and exits 0. A bad flag exits 2 with the flag, the value and what was expected; a daemon
// it cannot reach or a port it cannot bind exits 1.
import { hostname } from "node:os";
import { ShutdownSignals } from "./lifecycle.js";
import type { EngineAnnouncement } from "../client/client.js";
import { engineUrlProblem } from "../metadata/node.js";
import type { Logger } from "pino";
import type { LogLevel } from "../config/config.js";
import { DEFAULT_LISTEN_HOST } from "../config/keys.js";
import { formatHostPort, hostPort, integer, INT32_MAX, listenAddress, oneOf, stringMatching, type HostPort, type Parser } from "../config/parse.js";
import { DaemonLink } from "../simulator/daemon-link.js";
import { OWNED_BY, SimulatorServer } from "../simulator/http-server.js";
import { DEFAULT_LAYOUT, tokenBytes, type KvLayout } from "../simulator/kv.js";
import { SimulatorMetrics } from "../simulator/metrics.js";
import { createRole, ROLE_NAMES, type RoleName } from "../simulator/roles.js";
import { SIMULATOR_SERVING } from "../simulator/spawn.js";
import { EXIT_USAGE } from "./exit-codes.js";
import { createLogger } from "./logger.js";
import { flagHelp, HELP_FLAG, LOG_LEVEL_FLAG, type Command, type Flags } from "./command.js";

export const DEFAULT_SIMULATOR_LISTEN: HostPort = { host: "127.0.0.1", port: 8100 };
export const DEFAULT_SIMULATOR_MODEL = "kvferry-sim-7b";
const DEFAULT_KV_WAIT_MS = 30_000;
const DEFAULT_TOKEN_MS = 2;
/** How long a drain waits for requests in flight. */
const SHUTDOWN_GRACE_MS = 10_000;
/** How long start-up waits for the daemon. */
const DAEMON_CONNECT_MS = 10_000;

export interface SimulateSettings {
  role: RoleName;
  listen: HostPort;
  daemon?: string;
  /** The URL announced to the daemon (AnnounceEngine); undefined: the listen address; "none": not announced. */
  announce?: string;
  model: string;
  layout: KvLayout;
  kvWaitMs: number;
  tokenMs: number;
  logLevel: LogLevel;
}

/** A flag's value was refused: exit 2 with this message. */
export class SimulateFlagError extends Error {
  constructor(flag: string, value: unknown, expected: string) {
    super(`--${flag}: got ${value === undefined ? "nothing" : JSON.stringify(value)}, expected ${expected}`);
    this.name = "SimulateFlagError";
  }
}

const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;

/** Validates the flags (strings, as parsed by main.ts) into settings; throws SimulateFlagError. */
export function simulateSettings(values: Record<string, unknown>): SimulateSettings {
  const flag = <T>(name: string, parser: Parser<T>, fallback: T): T => {
    const raw = values[name];
    if (raw === undefined) return fallback;
    const parsed = parser(raw, true);
    if (!parsed.ok) throw new SimulateFlagError(name, raw, parsed.expected);
    return parsed.value;
  };
  const role = flag<RoleName | undefined>(
    "role",
    oneOf<RoleName | undefined>(Object.fromEntries(ROLE_NAMES.map((r) => [r, r])), `one of ${ROLE_NAMES.map((r) => `"${r}"`).join(", ")}`),
    undefined,
  );
  if (role === undefined) throw new SimulateFlagError("role", undefined, `one of ${ROLE_NAMES.map((r) => `"${r}"`).join(", ")} (required)`);
  const listen = flag("listen", listenAddress(DEFAULT_LISTEN_HOST), DEFAULT_SIMULATOR_LISTEN);
  const daemon = flag<HostPort | undefined>("daemon", hostPort as Parser<HostPort | undefined>, undefined);
  if (daemon === undefined && role !== "both") {
    throw new SimulateFlagError("daemon", undefined, `the local kvferry daemon's client API as HOST:PORT (required with --role ${role})`);
  }
  const layout: KvLayout = {
    layers: flag("layers", integer(1, 1024), DEFAULT_LAYOUT.layers),
    kvHeads: flag("kv-heads", integer(1, 1024), DEFAULT_LAYOUT.kvHeads),
    headDim: flag("head-dim", integer(1, 16384), DEFAULT_LAYOUT.headDim),
    dtypeBytes: flag("dtype-bytes", integer(1, 8), DEFAULT_LAYOUT.dtypeBytes),
  };
  // One token of one layer must fit a daemon part comfortably; 2 MiB per token is far above any real model.
  if (tokenBytes(layout) / layout.layers > 2 << 20) {
    throw new SimulateFlagError(
      "head-dim",
      values["head-dim"] ?? layout.headDim,
      `a layout of at most 2 MiB per token and layer (2 × kv-heads × head-dim × dtype-bytes); ${layout.kvHeads} × ${layout.headDim} × ${layout.dtypeBytes} is too large`,
    );
  }
  return {
    role,
    listen,
    daemon: daemon === undefined ? undefined : formatHostPort(daemon),
    announce: flag<string | undefined>("announce", announceUrl, undefined),
    model: flag("model", stringMatching(/^[\x21-\x7e]{1,256}$/, "a model name of 1-256 printable characters without spaces"), DEFAULT_SIMULATOR_MODEL),
    layout,
    kvWaitMs: flag("kv-wait-ms", integer(0, INT32_MAX, "milliseconds"), DEFAULT_KV_WAIT_MS),
    tokenMs: flag("token-ms", integer(0, 60_000, "milliseconds"), DEFAULT_TOKEN_MS),
    logLevel: flag(
      "log-level",
      oneOf<LogLevel>(Object.fromEntries(LOG_LEVELS.map((l) => [l, l])), `one of ${LOG_LEVELS.map((l) => `"${l}"`).join(", ")}`),
      "info",
    ),
  };
}

const announceUrl: Parser<string | undefined> = (raw) => {
  if (raw === "none") return { ok: true, value: "none" };
  const problem = typeof raw === "string" ? engineUrlProblem(raw) : "expected a URL";
  return problem === undefined ? { ok: true, value: raw as string } : { ok: false, expected: `"none" or ${problem.replace(/^expected /, "")}` };
};

/** The URL others reach the simulator at: its listen address, a wildcard host replaced by this host's name. */
function ownUrl(listen: HostPort, port: number): string {
  const wildcard = listen.host === "0.0.0.0" || listen.host === "::";
  return `http://${formatHostPort({ host: wildcard ? hostname() : listen.host, port })}`;
}

/** Runs `kvferry simulate` with main.ts's parsed flags; resolves to the exit code. */
export async function runSimulate(values: Record<string, unknown>): Promise<number> {
  let s: SimulateSettings;
  try {
    s = simulateSettings(values);
  } catch (err) {
    if (!(err instanceof SimulateFlagError)) throw err;
    process.stderr.write(`kvferry simulate: ${err.message}\nRun \`kvferry simulate --help\` for the flags.\n`);
    return EXIT_USAGE;
  }
  const log = createLogger(s.logLevel, "kvferry-simulator");
  // Caught from now on: a signal during start-up is acted on once it serves.
  const signals = new ShutdownSignals(log);
  if (s.role === "both" && s.daemon !== undefined) log.warn({ daemon: s.daemon }, "--daemon is not used with --role both");

  let link: DaemonLink | undefined;
  let nodeId: string | undefined;
  if (s.role !== "both") {
    link = new DaemonLink(s.daemon!);
    try {
      nodeId = (await link.connect(DAEMON_CONNECT_MS)).nodeId;
    } catch (err) {
      log.fatal({ err, daemon: s.daemon }, `cannot reach the kvferry daemon at ${s.daemon} within ${DAEMON_CONNECT_MS} ms`);
      link.close();
      signals.dispose();
      return 1;
    }
  }
  const metrics = new SimulatorMetrics(s.role);
  const role = createRole(s.role, { layout: s.layout, daemon: link, kvWaitMs: s.kvWaitMs, metrics });
  const server = new SimulatorServer({ role, listen: s.listen, model: s.model, layout: s.layout, tokenMs: s.tokenMs, metrics, log });
  try {
    await server.start();
  } catch (err) {
    log.fatal({ err, listen: formatHostPort(s.listen) }, "cannot start the simulator");
    link?.close();
    signals.dispose();
    return 1;
  }
  // Published through the daemon's node record, where `kvferry proxy --metadata-server` finds it.
  let announcement: EngineAnnouncement | undefined;
  if (link !== undefined && s.announce !== "none") {
    const url = s.announce ?? ownUrl(s.listen, server.port);
    announcement = link.client.announceEngine(
      { url, role: s.role, models: [s.model] },
      {
        onAnnounced: (node) => log.info({ url, node }, "announced to the daemon"),
        onError: (err, final) => log[final ? "error" : "warn"]({ url, err: err.message }, final ? "the daemon refused the announcement" : "announcement ended: announcing again"),
      },
    );
    await Promise.race([announcement.announced.catch(() => undefined), new Promise((r) => setTimeout(r, DAEMON_CONNECT_MS).unref())]);
  }
  log.info(
    {
      listen: server.address,
      role: s.role,
      model: s.model,
      ownedBy: OWNED_BY,
      daemon: s.daemon,
      nodeId,
      layout: s.layout,
      kvBytesPerToken: tokenBytes(s.layout),
      kvWaitMs: s.kvWaitMs,
      tokenMs: s.tokenMs,
    },
    SIMULATOR_SERVING,
  );
  return signals.until(async () => {
    announcement?.close();
    await server.shutdown(SHUTDOWN_GRACE_MS);
    link?.close();
  });
}

const FLAGS = {
  role: { type: "string", help: "ROLE", doc: "prefill | decode | both (required): which instance this simulator plays" },
  listen: { type: "string", help: "HOST:PORT", doc: "HTTP address (default 127.0.0.1:8100; PORT alone means 127.0.0.1:PORT; port 0 picks one)" },
  daemon: { type: "string", help: "HOST:PORT", doc: "the local kvferry daemon's client API (required for prefill and decode; unused for both)" },
  announce: { type: "string", help: "URL|none", doc: "the URL announced to the daemon, which publishes it for proxies that discover engines (default http://LISTEN; none: not announced)" },
  model: { type: "string", help: "NAME", doc: "the model it serves, as vLLM's --model (default kvferry-sim-7b): listed in /v1/models; a request naming another gets a 404 as vLLM answers" },
  layers: { type: "string", help: "N", doc: "layers of the simulated model: one KV part per layer (default 32)" },
  "kv-heads": { type: "string", help: "N", doc: "KV heads (default 8)" },
  "head-dim": { type: "string", help: "N", doc: "head dimension (default 128)" },
  "dtype-bytes": { type: "string", help: "N", doc: "bytes per KV element (default 2): KV per token = layers × 2 × kv-heads × head-dim × dtype-bytes" },
  "kv-wait-ms": { type: "string", help: "MS", doc: "how long a decode waits for its KV before answering 504 (default 30000)" },
  "token-ms": { type: "string", help: "MS", doc: "delay per generated token (default 2)" },
  "log-level": LOG_LEVEL_FLAG,
  help: HELP_FLAG,
} satisfies Flags;

const USAGE = `Usage: kvferry simulate --role prefill|decode|both [flags]

Runs an LLM engine SIMULATOR: no model, no GPU. It serves OpenAI's API
(POST /v1/completions, POST /v1/chat/completions, streaming or not; GET /v1/models,
whose model is owned_by "kvferry-simulator"; GET /health; GET /metrics) with a
deterministic toy tokenizer and a KV cache of realistic size whose bytes are a
function of the prompt, so that the proxy, the demo and tests exercise real KV
transfers through kvferry daemons:

  prefill  needs kv_transfer_params {do_remote_decode: true, transfer_id}; puts the
           prompt's KV into the local daemon (one entry, a part layer.N per layer,
           sealed) and answers one token with kv_transfer_params {transfer_id,
           do_remote_prefill: true, remote_node, remote_peer_address} for the decode side.
  decode   needs kv_transfer_params {do_remote_prefill: true, transfer_id, source_node?};
           gets (consumes) the entry from the local daemon, pulling it from source_node
           (or remote_node) when given, checks every byte against the prompt, and
           generates from it. A missing, late or wrong KV is a 500 (504 when the wait ran
           out) that names the transfer id: never a silent recompute.
  both     computes the KV itself and generates: the non-disaggregated reference. Its
           output equals a decode's after a prefill of the same prompt.

With --daemon it announces itself to that daemon (AnnounceEngine: its URL, role and
model), which publishes it in its node record for \`kvferry proxy --metadata-server\`;
the announcement ends when the simulator stops or dies, and is made again when the
daemon restarts.

Logs "kvferry simulator serving" with its listen address once ready.

Flags:
${flagHelp(FLAGS)}

Exit codes: 0 after SIGTERM/SIGINT (requests in flight finish first, up to 10 s),
1 when it cannot listen or reach the daemon, 2 on a bad flag (the message names the
flag, the value and what was expected).
`;

export const simulateCommand: Command = {
  name: "simulate",
  summary: "an OpenAI-compatible LLM engine SIMULATOR (prefill | decode | both), no GPU",
  flags: FLAGS,
  usage: USAGE,
  run: (values) => runSimulate(values),
};
