// `kvferry daemon`: load the config, serve until SIGTERM or SIGINT, drain, exit 0.
import { loadConfig, type ConfigInputs } from "../config/config.js";
import { Daemon } from "../daemon/server.js";
import { ConfigError, MetadataUnavailableError } from "../errors.js";
import { EXIT_METADATA } from "./exit-codes.js";
import { ShutdownSignals } from "./lifecycle.js";
import { createLogger } from "./logger.js";
import { flagHelp, HELP_FLAG, LOG_LEVEL_FLAG, type Command, type FlagValues, type Flags } from "./command.js";

export async function runDaemon(inputs: ConfigInputs): Promise<number> {
  const config = loadConfig(inputs); // ConfigError → exit 2, in main.ts
  const log = createLogger(config.logLevel);
  // Caught from now on: a signal during start-up is acted on once it serves.
  const signals = new ShutdownSignals(log);
  for (const warning of config.warnings) log.warn({ source: config.source }, warning);
  log.info(
    { source: config.source, role: config.role, protocol: config.protocol, metadata: config.metadata.backend },
    "configuration loaded",
  );
  let daemon: Daemon;
  try {
    daemon = new Daemon(config, log); // the data port is bound here, by the engine
    await daemon.start(signals.startup);
  } catch (err) {
    if (err instanceof ConfigError) {
      signals.dispose();
      throw err; // main.ts: "invalid configuration", exit 2
    }
    log.fatal({ err }, "cannot start");
    signals.dispose();
    return err instanceof MetadataUnavailableError ? EXIT_METADATA : 1;
  }
  return signals.until(() => daemon.shutdown());
}

const FLAGS = {
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
  "max-entries": { type: "string", help: "N", doc: "most entries held at once; LRU sealed entries are evicted for a new one (default 65536)" },
  "max-parts-per-entry": { type: "string", help: "N", doc: "most parts in one entry (default 4096)" },
  "max-waiting-put-bytes": { type: "string", help: "BYTES", doc: "bytes of unary puts that may wait for room; past it a put that must wait fails at once (default 256MiB)" },
  "consume-lease-ms": {
    type: "string", help: "MS", doc: "how long a consuming get holds its entry unconfirmed, and the most a get may ask for (default 30000)",
  },
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
  "metrics-listen": { type: "string", help: "HOST:PORT", doc: "serve Prometheus /metrics and /health over HTTP here (default: off; PORT alone means 127.0.0.1:PORT)" },
  peer: { type: "string", multiple: true, help: "HOST:PORT", doc: "a peer API to greet at start-up (embedded metadata; repeatable)" },
  "log-level": LOG_LEVEL_FLAG,
  help: HELP_FLAG,
} satisfies Flags;

const USAGE = `Usage: kvferry daemon [flags]

Runs the kvferry daemon of this node. Flags override \$KVFERRY_* variables, which
override the config file, which overrides the defaults.

Flags:
${flagHelp(FLAGS)}

Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 1 when it cannot start,
2 on a bad flag or configuration (the message names the source, key, value and
what was expected), 3 when the metadata backend cannot be reached (after
--metadata-retry-ms, if set).
`;

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
    maxEntries: s("max-entries"),
    maxPartsPerEntry: s("max-parts-per-entry"),
    maxWaitingPutBytes: s("max-waiting-put-bytes"),
    consumeLeaseMs: s("consume-lease-ms"),
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
    metricsListen: s("metrics-listen"),
    peers: Array.isArray(v.peer) ? v.peer.join(",") : undefined,
  };
}


export const daemonCommand: Command = {
  name: "daemon",
  summary: "run the node daemon (client API on 127.0.0.1 by default)",
  flags: FLAGS,
  usage: USAGE,
  run: (values) => runDaemon(daemonInputs(values)),
};
