// `kvferry simulate`: an OpenAI-compatible engine SIMULATOR that plays a prefill, a decode
// or a whole (non-disaggregated) LLM instance, so that the proxy and the demo run without
// a GPU. It logs "kvferry simulator serving" with its `listen` address once bound (as
// `kvferry daemon` logs "kvferry daemon serving"), serves until SIGTERM or SIGINT, drains,
// and exits 0. A bad flag exits 2 with the flag, the value and what was expected; a daemon
// it cannot reach or a port it cannot bind exits 1.
import { hostname } from "node:os";
import { ShutdownSignals } from "./lifecycle.js";
import type { EngineAnnouncement } from "../client/client.js";
import type { Logger } from "pino";
import { formatHostPort, type HostPort } from "../config/parse.js";
import { tableFlags } from "../config/settings.js";
import { DaemonLink } from "../simulator/daemon-link.js";
import { OWNED_BY, SimulatorServer } from "../simulator/http-server.js";
import { tokenBytes } from "../simulator/kv.js";
import { SimulatorMetrics } from "../simulator/metrics.js";
import { createRole } from "../simulator/roles.js";
import { SIMULATE_SETTINGS, SimulateFlagError, simulateSettings, type SimulateSettings } from "../simulator/settings.js";
import { SIMULATOR_SERVING } from "../simulator/spawn.js";
import { EXIT_USAGE } from "./exit-codes.js";
import { createLogger } from "./logger.js";
import { flagHelp, HELP_FLAG, type Command, type Flags } from "./command.js";

/** How long a drain waits for requests in flight. */
const SHUTDOWN_GRACE_MS = 10_000;
/** How long start-up waits for the daemon. */
const DAEMON_CONNECT_MS = 10_000;

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

// One flag per setting (simulator/settings.ts: its placeholder, doc and default come from there).
const FLAGS = {
  ...tableFlags(SIMULATE_SETTINGS),
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
