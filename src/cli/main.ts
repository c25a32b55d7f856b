// kvferry's command line: `kvferry <command> [flags]`.
import { parseArgs, type ParseArgsConfig } from "node:util";
import { ConfigError } from "../errors.js";
import { loadConfig, type ConfigInputs } from "../config/config.js";
import { runDaemon } from "./daemon.js";
import { DEMO_DEFAULTS, runDemo, type DemoOptions } from "./demo.js";
import { runStatus } from "./status.js";
import { runProxy } from "./proxy.js";
import { runSimulate } from "./simulate.js";
import { runMetadataServer } from "./metadata-server.js";

import { EXIT_USAGE } from "./exit-codes.js";

/** Exit codes: 0 fine, 1 failure at run time, 2 bad usage or bad configuration, 3 metadata backend unreachable. */
export { EXIT_METADATA, EXIT_USAGE } from "./exit-codes.js";

const USAGE = `kvferry — KV-cache transfer service for disaggregated LLM serving

Usage: kvferry <command> [flags]

Commands:
  demo             disaggregated serving on this machine: daemons, engine simulators, proxy
  daemon           run the node daemon (client API on 127.0.0.1 by default)
  proxy            the disaggregating OpenAI-compatible proxy: prefill, KV transfer, decode
  simulate         an OpenAI-compatible LLM engine SIMULATOR (prefill | decode | both), no GPU
  status           the nodes the metadata backend knows (a table, or --json)
  metadata-server  an in-memory http metadata store (metadata_server: http://HOST:PORT/metadata)
  help             show this help, or \`kvferry help <command>\`

Run \`kvferry <command> --help\` for a command's flags.
`;

const DAEMON_FLAGS = {
  config: { type: "string", help: "FILE", doc: "mooncake.json-style config (else $KVFERRY_CONFIG, else $MOONCAKE_CONFIG_PATH)" },
  listen: { type: "string", help: "HOST:PORT", doc: "client API address (default 127.0.0.1:50051; PORT alone means 127.0.0.1:PORT; port 0 picks one)" },
  "kv-buffer-size": { type: "string", help: "BYTES", doc: "lookup buffer capacity: 2e9, 2000000000, 512MiB, 4GB (default 1GiB)" },
  "kv-transfer-config": { type: "string", help: "JSON", doc: "vLLM's --kv-transfer-config (kv_connector, kv_role, kv_rank, kv_parallel_size, kv_buffer_size)" },
  "kv-role": { type: "string", help: "ROLE", doc: "kv_producer | kv_consumer | kv_both (default kv_both)" },
  "kv-rank": { type: "string", help: "N", doc: "rank of this instance (default 0)" },
  "kv-parallel-size": { type: "string", help: "N", doc: "number of instances (default 1)" },
  "node-id": { type: "string", help: "ID", doc: "this node's identity (default HOSTNAME:PORT)" },
  "lease-ttl-ms": { type: "string", help: "MS", doc: "lease of an entry whose put names none (default 120000)" },
  "put-deadline-ms": { type: "string", help: "MS", doc: "how long a put waits for room (default 10000)" },
  "get-wait-ms": { type: "string", help: "MS", doc: "how long a get waits when it names no wait (default 30000)" },
  "data-listen": { type: "string", help: "HOST:PORT", doc: "native data plane (default: prefill_url/decode_url by role, else 127.0.0.1:0)" },
  "peer-listen": { type: "string", help: "HOST:PORT", doc: "peer API (default: the data host, data port + 1)" },
  "cluster-token": { type: "string", help: "TOKEN", doc: "secret shared by the cluster's daemons (prefer $KVFERRY_CLUSTER_TOKEN: flags show in ps)" },
  "connections-per-peer": { type: "string", help: "N", doc: "TCP connections to each peer's data plane (default 4)" },
  "transfer-deadline-ms": { type: "string", help: "MS", doc: "default deadline of a BatchTransfer or pulling Get (default 30000)" },
  "metadata-server": { type: "string", help: "URL", doc: "P2PHANDSHAKE (embedded, the default), HOST:PORT or etcd://H:P[,H:P], redis://H:P, http://H:P/metadata" },
  "metadata-backend": { type: "string", help: "KIND", doc: "p2p | etcd | redis | http: must agree with --metadata-server" },
  "metadata-prefix": { type: "string", help: "PREFIX", doc: "key prefix in the backend (default kvferry/v1/)" },
  "metadata-ttl-ms": { type: "string", help: "MS", doc: "a node's record lapses this long after its last refresh (default 10000)" },
  "metadata-retry-ms": { type: "string", help: "MS", doc: "keep retrying an unreachable backend at start-up this long (default 0: exit 3 at once)" },
  peer: { type: "string", multiple: true, help: "HOST:PORT", doc: "a peer API to greet at start-up (embedded metadata; repeatable)" },
  "log-level": { type: "string", help: "LEVEL", doc: "trace | debug | info | warn | error | fatal | silent (default info)" },
  help: { type: "boolean", short: "h", help: "", doc: "show this help" },
} as const;

const STATUS_FLAGS = {
  config: { type: "string", help: "FILE", doc: "the daemons' config: its metadata_server is read (else $KVFERRY_CONFIG, $MOONCAKE_CONFIG_PATH)" },
  "metadata-server": { type: "string", help: "URL", doc: "read this backend instead (etcd, redis or http)" },
  "metadata-prefix": { type: "string", help: "PREFIX", doc: "key prefix in the backend (default kvferry/v1/)" },
  address: { type: "string", help: "HOST:PORT", doc: "ask the daemon at this client API address (the way with embedded metadata; default: the config's listen)" },
  json: { type: "boolean", help: "", doc: "print JSON instead of a table" },
  help: { type: "boolean", short: "h", help: "", doc: "show this help" },
} as const;

function flagHelp(flags: Record<string, { help: string; doc: string }>): string {
  return Object.entries(flags)
    .map(([name, f]) => `  --${`${name} ${f.help}`.padEnd(26)} ${f.doc}`)
    .join("\n");
}

const DAEMON_USAGE = `Usage: kvferry daemon [flags]

Runs the kvferry daemon of this node. Flags override \$KVFERRY_* variables, which
override the config file, which overrides the defaults.

Flags:
${flagHelp(DAEMON_FLAGS)}

Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 1 when it cannot start,
2 on a bad flag or configuration (the message names the source, key, value and
what was expected), 3 when the metadata backend cannot be reached (after
--metadata-retry-ms, if set).
`;

export const DEMO_FLAGS = {
  requests: { type: "string", help: "N", doc: `requests to send (default ${DEMO_DEFAULTS.requests})` },
  concurrency: { type: "string", help: "N", doc: `requests in flight at once (default ${DEMO_DEFAULTS.concurrency})` },
  "max-prompt-words": { type: "string", help: "N", doc: `longest prompt, in words ≈ tokens (default ${DEMO_DEFAULTS.maxPromptWords}; 128 KiB of KV each)` },
  transfer: { type: "string", help: "MODE", doc: "push (the prefill daemon pushes the KV) | pull (the decode daemon pulls it) (default push)" },
  "kv-buffer-size": { type: "string", help: "BYTES", doc: `lookup buffer of each daemon (default ${DEMO_DEFAULTS.kvBufferSize})` },
  help: { type: "boolean", short: "h", help: "", doc: "show this help" },
} as const;

const DEMO_USAGE = `Usage: kvferry demo [flags]

Disaggregated serving on this machine, with nothing else running: two kvferry daemons
on loopback, a prefill and a decode engine simulator (OpenAI-compatible; no GPU), the
proxy in front of them, and a non-disaggregated simulator as the reference. Sends the
same requests (mixed prompt lengths, completions and chat, some streamed) through the
proxy and to the reference, prints requests ok, outputs identical to the reference, KV
bytes moved, transfer GB/s and time to first byte p50/p99 side by side, then stops
every process. Exit code 0 when every request matched the reference and every process
stopped cleanly.

Flags:
${flagHelp(DEMO_FLAGS)}
`;

/** The demo's flags, checked: a bad one is a ConfigError naming it (exit 2). */
function demoOptions(v: FlagValues): DemoOptions {
  const count = (flag: string, fallback: number, max: number) => {
    const raw = v[flag];
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (typeof raw !== "string" || !/^\d+$/.test(raw) || n < 1 || n > max) {
      throw new ConfigError(`--${flag}`, flag, raw, `an integer from 1 to ${max}`);
    }
    return n;
  };
  const transfer = v.transfer ?? DEMO_DEFAULTS.transfer;
  if (transfer !== "push" && transfer !== "pull") throw new ConfigError("--transfer", "transfer", transfer, "push or pull");
  return {
    requests: count("requests", DEMO_DEFAULTS.requests, 10_000),
    concurrency: count("concurrency", DEMO_DEFAULTS.concurrency, 256),
    maxPromptWords: count("max-prompt-words", DEMO_DEFAULTS.maxPromptWords, 8_192),
    transfer,
    kvBufferSize: typeof v["kv-buffer-size"] === "string" ? v["kv-buffer-size"] : DEMO_DEFAULTS.kvBufferSize,
  };
}

const METADATA_SERVER_FLAGS = {
  listen: { type: "string", help: "HOST:PORT", doc: "where to listen (default 127.0.0.1:8080; PORT alone means 127.0.0.1:PORT; port 0 picks one)" },
  path: { type: "string", help: "PATH", doc: "the URL path served (default /metadata)" },
  "log-level": { type: "string", help: "LEVEL", doc: "trace | debug | info | warn | error | fatal | silent (default info)" },
  help: { type: "boolean", short: "h", help: "", doc: "show this help" },
} as const;

const METADATA_SERVER_USAGE = `Usage: kvferry metadata-server [flags]

Serves an in-memory key-value store over Mooncake's http metadata protocol
(GET / PUT / DELETE PATH?key=KEY) for daemons whose metadata_server is its URL.
Nothing is persisted: after a restart the daemons write their records again.
Logs "kvferry metadata-server serving" with the URL once listening.

Flags:
${flagHelp(METADATA_SERVER_FLAGS)}

Exit codes: 0 after SIGTERM/SIGINT, 1 when it cannot listen, 2 on a bad flag.
`;

export const SIMULATE_FLAGS = {
  role: { type: "string", help: "ROLE", doc: "prefill | decode | both (required): which instance this simulator plays" },
  listen: { type: "string", help: "HOST:PORT", doc: "HTTP address (default 127.0.0.1:8100; PORT alone means 127.0.0.1:PORT; port 0 picks one)" },
  daemon: { type: "string", help: "HOST:PORT", doc: "the local kvferry daemon's client API (required for prefill and decode; unused for both)" },
  model: { type: "string", help: "NAME", doc: "the model name served and required in requests (default kvferry-sim-7b)" },
  layers: { type: "string", help: "N", doc: "layers of the simulated model: one KV part per layer (default 32)" },
  "kv-heads": { type: "string", help: "N", doc: "KV heads (default 8)" },
  "head-dim": { type: "string", help: "N", doc: "head dimension (default 128)" },
  "dtype-bytes": { type: "string", help: "N", doc: "bytes per KV element (default 2): KV per token = layers × 2 × kv-heads × head-dim × dtype-bytes" },
  "kv-wait-ms": { type: "string", help: "MS", doc: "how long a decode waits for its KV before answering 504 (default 30000)" },
  "token-ms": { type: "string", help: "MS", doc: "delay per generated token (default 2)" },
  "log-level": { type: "string", help: "LEVEL", doc: "trace | debug | info | warn | error | fatal | silent (default info)" },
  help: { type: "boolean", short: "h", help: "", doc: "show this help" },
} as const;

const SIMULATE_USAGE = `Usage: kvferry simulate --role prefill|decode|both [flags]

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

Logs "kvferry simulator serving" with its listen address once ready.

Flags:
${flagHelp(SIMULATE_FLAGS)}

Exit codes: 0 after SIGTERM/SIGINT (requests in flight finish first, up to 10 s),
1 when it cannot listen or reach the daemon, 2 on a bad flag (the message names the
flag, the value and what was expected).
`;

export const PROXY_FLAGS = {
  config: { type: "string", help: "FILE", doc: "JSON with any of these settings under their names in snake_case (prefill/decode as arrays); flags override it" },
  listen: { type: "string", help: "HOST:PORT", doc: "where to listen (default 127.0.0.1:8000; PORT alone means 127.0.0.1:PORT; port 0 picks one)" },
  prefill: { type: "string", multiple: true, help: "URL[=DAEMON]", doc: "a prefill instance's base URL, = the client API HOST:PORT of its node's kvferry daemon (repeatable, at least one)" },
  decode: { type: "string", multiple: true, help: "URL[=DAEMON]", doc: "a decode instance, the same way (repeatable, at least one)" },
  policy: { type: "string", help: "NAME", doc: "round-robin | least-outstanding (default least-outstanding)" },
  transfer: { type: "string", help: "MODE", doc: "push (the prefill daemon pushes the KV) | pull (the decode side pulls it) | none (the engines move it) (default push)" },
  "health-interval-ms": { type: "string", help: "MS", doc: "how often every instance and daemon is checked (default 2000)" },
  "prefill-timeout-ms": { type: "string", help: "MS", doc: "the whole prefill call (default 120000)" },
  "decode-timeout-ms": { type: "string", help: "MS", doc: "decode: time to its first byte, and the longest silence mid-stream (default 120000)" },
  "transfer-deadline-ms": { type: "string", help: "MS", doc: "deadline of one KV push (default 30000)" },
  "forward-authorization": { type: "boolean", help: "", doc: "send the client's Authorization header upstream (default: none is sent)" },
  "max-body-bytes": { type: "string", help: "BYTES", doc: "largest request body, 413 above (default 16MiB)" },
  "drain-ms": { type: "string", help: "MS", doc: "how long SIGTERM waits for requests in flight (default 30000)" },
  "log-level": { type: "string", help: "LEVEL", doc: "trace | debug | info | warn | error | fatal | silent (default info)" },
  help: { type: "boolean", short: "h", help: "", doc: "show this help" },
} as const;

const PROXY_USAGE = `Usage: kvferry proxy --prefill URL[=DAEMON]... --decode URL[=DAEMON]... [flags]

Serves OpenAI's API (POST /v1/completions and /v1/chat/completions, streaming or
not; GET /v1/models, /health, /metrics) in front of prefill and decode instances.
Each request goes to a healthy prefill instance with max_tokens 1 and
kv_transfer_params {transfer_id, do_remote_decode: true}; its KV then moves to the
chosen decode instance's node (--transfer), and the original request goes to the
decode instance with kv_transfer_params {transfer_id, do_remote_prefill: true, ...};
its answer streams back unchanged. Upstream errors pass through with their status
and body; the proxy's own are OpenAI-style JSON (502 unreachable, 503 no healthy
instance, 504 timeout). Logs "kvferry proxy serving" with its listen address once
ready.

Flags:
${flagHelp(PROXY_FLAGS)}

Exit codes: 0 after SIGTERM/SIGINT (requests in flight finish first, up to
--drain-ms), 1 when it cannot listen, 2 on a bad flag (the message names the flag,
the value and what was expected).
`;

const FULL_USAGE = `${USAGE}
Flags of \`kvferry daemon\`:
${flagHelp(DAEMON_FLAGS)}
`;

type FlagValues = Record<string, string | boolean | string[] | undefined>;

function parse(args: string[], flags: Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }>) {
  const options: ParseArgsConfig["options"] = {};
  for (const [name, f] of Object.entries(flags)) {
    options[name] = { type: f.type, ...(f.short ? { short: f.short } : {}), ...(f.multiple ? { multiple: true } : {}) };
  }
  return parseArgs({ args, options, strict: true, allowPositionals: false }).values as FlagValues;
}

function daemonInputs(v: FlagValues): ConfigInputs {
  const s = (k: string) => (typeof v[k] === "string" ? (v[k] as string) : undefined);
  return {
    config: s("config"),
    listen: s("listen"),
    kvBufferSize: s("kv-buffer-size"),
    kvTransferConfig: s("kv-transfer-config"),
    kvRole: s("kv-role"),
    kvRank: s("kv-rank"),
    kvParallelSize: s("kv-parallel-size"),
    nodeId: s("node-id"),
    leaseTtlMs: s("lease-ttl-ms"),
    putDeadlineMs: s("put-deadline-ms"),
    getWaitMs: s("get-wait-ms"),
    logLevel: s("log-level"),
    dataListen: s("data-listen"),
    peerListen: s("peer-listen"),
    clusterToken: s("cluster-token"),
    connectionsPerPeer: s("connections-per-peer"),
    transferDeadlineMs: s("transfer-deadline-ms"),
    metadataServer: s("metadata-server"),
    metadataBackend: s("metadata-backend"),
    metadataPrefix: s("metadata-prefix"),
    metadataTtlMs: s("metadata-ttl-ms"),
    metadataRetryMs: s("metadata-retry-ms"),
    peers: Array.isArray(v.peer) ? v.peer.join(",") : undefined,
  };
}

const STATUS_USAGE = `Usage: kvferry status [flags]

Lists the nodes the metadata backend knows: id, addresses, transports, pool used and
capacity, version, age, and how long ago the node's record was refreshed. With etcd,
redis or http metadata the backend is read directly; with the embedded default the
local daemon is asked (it knows the nodes it greeted and was greeted by).

Flags:
${flagHelp(STATUS_FLAGS)}

Exit codes: 0 listed, 1 no daemon answered, 2 bad flag or configuration, 3 the
metadata backend cannot be reached.
`;

export async function run(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case undefined:
      case "help":
      case "--help":
      case "-h": {
        const topic = rest[0];
        const topics: Record<string, string> = { daemon: DAEMON_USAGE, demo: DEMO_USAGE, status: STATUS_USAGE, proxy: PROXY_USAGE, simulate: SIMULATE_USAGE, "metadata-server": METADATA_SERVER_USAGE };
        process.stdout.write((topic !== undefined && topics[topic]) || FULL_USAGE);
        return 0;
      }
      case "daemon": {
        const values = parse(rest, DAEMON_FLAGS);
        if (values.help) {
          process.stdout.write(DAEMON_USAGE);
          return 0;
        }
        return await runDaemon(daemonInputs(values));
      }
      case "status": {
        const values = parse(rest, STATUS_FLAGS);
        if (values.help) {
          process.stdout.write(STATUS_USAGE);
          return 0;
        }
        const str = (k: string) => (typeof values[k] === "string" ? (values[k] as string) : undefined);
        const config = loadConfig({ config: str("config"), metadataServer: str("metadata-server"), metadataPrefix: str("metadata-prefix") });
        return await runStatus({ config, address: str("address"), json: values.json === true });
      }
      case "demo": {
        const values = parse(rest, DEMO_FLAGS);
        if (values.help) {
          process.stdout.write(DEMO_USAGE);
          return 0;
        }
        return await runDemo(demoOptions(values));
      }
      case "metadata-server": {
        const values = parse(rest, METADATA_SERVER_FLAGS);
        if (values.help) {
          process.stdout.write(METADATA_SERVER_USAGE);
          return 0;
        }
        const str = (k: string) => (typeof values[k] === "string" ? (values[k] as string) : undefined);
        return await runMetadataServer({ listen: str("listen"), path: str("path"), logLevel: str("log-level") });
      }
      case "simulate": {
        const values = parse(rest, SIMULATE_FLAGS);
        if (values.help) {
          process.stdout.write(SIMULATE_USAGE);
          return 0;
        }
        return await runSimulate(values);
      }
      case "proxy": {
        const values = parse(rest, PROXY_FLAGS);
        if (values.help) {
          process.stdout.write(PROXY_USAGE);
          return 0;
        }
        const str = (k: string) => (typeof values[k] === "string" ? (values[k] as string) : undefined);
        const list = (k: string) => (Array.isArray(values[k]) ? (values[k] as string[]) : undefined);
        return await runProxy({
          listen: str("listen"), prefill: list("prefill"), decode: list("decode"), policy: str("policy"),
          transfer: str("transfer"), healthIntervalMs: str("health-interval-ms"), prefillTimeoutMs: str("prefill-timeout-ms"),
          decodeTimeoutMs: str("decode-timeout-ms"), transferDeadlineMs: str("transfer-deadline-ms"),
          forwardAuthorization: values["forward-authorization"] === true, maxBodyBytes: str("max-body-bytes"),
          drainMs: str("drain-ms"), logLevel: str("log-level"),
        }, str("config"));
      }
      default:
        process.stderr.write(`kvferry: unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
        return EXIT_USAGE;
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`kvferry: invalid configuration: ${err.message}\n`);
      return EXIT_USAGE;
    }
    if (err instanceof TypeError && "code" in err && String(err.code).startsWith("ERR_PARSE_ARGS")) {
      process.stderr.write(`kvferry ${command}: ${err.message}\nRun \`kvferry ${command} --help\` for the flags.\n`);
      return EXIT_USAGE;
    }
    throw err;
  }
}
