// Every setting kvferry reads: its key (as spelled in mooncake.json), its parser, its default,
// and which other sources may set it — a flag, an environment variable, vLLM's
// --kv-transfer-config. A key not in this table is unknown (a warning, never an error).
import { metadataBackend, metadataServer, type MetadataBackend, type MetadataConfig } from "./metadata.js";
import {
  durationMs,
  hostPort,
  listenAddress,
  integer,
  INT32_MAX,
  MiB,
  oneOf,
  peerList,
  size,
  stringMatching,
  type HostPort,
  type Parser,
} from "./parse.js";

export type Role = "prefill" | "decode" | "both";
export type Protocol = "tcp" | "rdma";
export type LogLevel = "trace" | "debug" | "info" | "warn" | "error" | "fatal" | "silent";

/** What the CLI parsed from flags; every field is the flag's text as given. */
export interface ConfigInputs {
  config?: string;            // --config FILE
  listen?: string;            // --listen HOST:PORT (client API)
  kvBufferSize?: string;      // --kv-buffer-size BYTES
  kvTransferConfig?: string;  // --kv-transfer-config JSON (vLLM's)
  kvRole?: string;            // --kv-role
  kvRank?: string;            // --kv-rank
  kvParallelSize?: string;    // --kv-parallel-size
  logLevel?: string;          // --log-level
  nodeId?: string;            // --node-id
  leaseTtlMs?: string;        // --lease-ttl-ms
  putDeadlineMs?: string;     // --put-deadline-ms
  getWaitMs?: string;         // --get-wait-ms
  maxEntries?: string;        // --max-entries
  maxPartsPerEntry?: string;  // --max-parts-per-entry
  maxWaitingPutBytes?: string; // --max-waiting-put-bytes
  consumeLeaseMs?: string;    // --consume-lease-ms
  dataListen?: string;        // --data-listen HOST:PORT (native data plane)
  peerListen?: string;        // --peer-listen HOST:PORT (peer API)
  clusterToken?: string;      // --cluster-token
  connectionsPerPeer?: string; // --connections-per-peer
  transferDeadlineMs?: string; // --transfer-deadline-ms
  metadataServer?: string;    // --metadata-server
  metadataBackend?: string;   // --metadata-backend
  metadataPrefix?: string;    // --metadata-prefix
  metadataTtlMs?: string;     // --metadata-ttl-ms
  metadataRetryMs?: string;   // --metadata-retry-ms
  peers?: string;             // --peer HOST:PORT (repeatable; joined with commas)
  metricsListen?: string;     // --metrics-listen HOST:PORT (Prometheus /metrics and /health)
}

/** The flags that set a key: every ConfigInputs field but the two that name whole sources. */
export type SettingFlag = Exclude<keyof ConfigInputs, "config" | "kvTransferConfig">;

export interface KeySpec<T> {
  readonly parse: Parser<T>;
  readonly default?: T;
  readonly flag?: SettingFlag;
  readonly env?: string;
  /** vLLM's --kv-transfer-config may set it. */
  readonly kvTransfer?: true;
}

function spec<T>(s: KeySpec<T>): KeySpec<T> {
  return s;
}

export const DEFAULT_LISTEN_HOST = "127.0.0.1";
/** Largest max_entries accepted. */
export const MAX_ENTRIES_LIMIT = 1 << 20;
/** Largest max_parts_per_entry accepted. */
export const MAX_PARTS_LIMIT = 1 << 16;

const role = oneOf<Role>(
  {
    kv_producer: "prefill",
    kv_consumer: "decode",
    kv_both: "both",
    prefill: "prefill",
    decode: "decode",
    both: "both",
  },
  `one of "kv_producer", "kv_consumer", "kv_both" (or "prefill", "decode", "both")`,
);

const protocol = oneOf<Protocol>({ tcp: "tcp", rdma: "rdma" }, `one of "tcp", "rdma"`);

const LOG_LEVELS: readonly LogLevel[] = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];
const logLevel = oneOf<LogLevel>(
  Object.fromEntries(LOG_LEVELS.map((level) => [level, level])),
  `one of ${LOG_LEVELS.map((level) => `"${level}"`).join(", ")}`,
);

const name = stringMatching(
  /^[\x21-\x7e]{1,256}$/,
  "a non-empty string of at most 256 printable characters without spaces",
);
const keyPrefix = stringMatching(
  /^[\x21-\x7e]{0,255}\/$/,
  'a key prefix of at most 256 printable characters without spaces, ending in "/" (e.g. "kvferry/v1/")',
);
const text = stringMatching(/^[^\x00-\x1f]{1,1024}$/, "a non-empty string of at most 1024 characters");
// Mooncake's TCP examples carry `"device_name": ""`: empty means none.
const deviceNames = stringMatching(
  /^[^\x00-\x1f]{0,1024}$/,
  "a string of at most 1024 characters (device names, comma-separated)",
);

export const KEYS = {
  // mooncake.json
  prefill_url: spec<HostPort>({ parse: hostPort }),
  decode_url: spec<HostPort>({ parse: hostPort }),
  metadata_server: spec<MetadataConfig>({ parse: metadataServer, flag: "metadataServer", env: "KVFERRY_METADATA_SERVER" }),
  metadata_backend: spec<MetadataBackend>({ parse: metadataBackend, flag: "metadataBackend", env: "KVFERRY_METADATA_BACKEND" }),
  protocol: spec<Protocol>({ parse: protocol, default: "tcp" }),
  device_name: spec<string>({ parse: deviceNames }),

  // vLLM's KV-transfer fields
  kv_connector: spec<string>({ parse: text, kvTransfer: true }),
  kv_role: spec<Role>({ parse: role, default: "both", flag: "kvRole", kvTransfer: true }),
  kv_rank: spec<number>({ parse: integer(0, INT32_MAX - 1), default: 0, flag: "kvRank", kvTransfer: true }),
  kv_parallel_size: spec<number>({
    parse: integer(1, INT32_MAX), default: 1, flag: "kvParallelSize", kvTransfer: true,
  }),
  kv_buffer_size: spec<number>({
    parse: size(MiB), default: 2 ** 30, flag: "kvBufferSize", env: "KVFERRY_KV_BUFFER_SIZE", kvTransfer: true,
  }),

  // kvferry
  listen: spec<HostPort>({
    parse: listenAddress(DEFAULT_LISTEN_HOST),
    default: { host: DEFAULT_LISTEN_HOST, port: 50051 },
    flag: "listen",
    env: "KVFERRY_LISTEN",
  }),
  node_id: spec<string>({ parse: name, flag: "nodeId", env: "KVFERRY_NODE_ID" }),
  log_level: spec<LogLevel>({ parse: logLevel, default: "info", flag: "logLevel", env: "KVFERRY_LOG_LEVEL" }),
  lease_ttl_ms: spec<number>({ parse: durationMs, default: 120_000, flag: "leaseTtlMs" }),
  put_deadline_ms: spec<number>({ parse: durationMs, default: 10_000, flag: "putDeadlineMs" }),
  get_wait_ms: spec<number>({ parse: durationMs, default: 30_000, flag: "getWaitMs" }),
  // How long a consuming Get holds its entry without a ConfirmConsume (and the most a Get may ask for).
  consume_lease_ms: spec<number>({ parse: durationMs, default: 30_000, flag: "consumeLeaseMs" }),
  shutdown_grace_ms: spec<number>({ parse: durationMs, default: 10_000 }),
  // grpc-js takes message limits as int32.
  max_message_bytes: spec<number>({ parse: size(1024, INT32_MAX), default: 64 * MiB }),
  recently_removed: spec<number>({ parse: integer(0, INT32_MAX), default: 10_000 }),
  max_waiters: spec<number>({ parse: integer(1, INT32_MAX), default: 10_000 }),
  // Bounds on what the store indexes (README "Limits"). An entry costs about 1 KiB of JS heap,
  // so the cap keeps a million entries well inside Node's default heap; a part per layer (K
  // and V, a few ranks) stays far below 4096, and Stat lists every part in one message.
  max_entries: spec<number>({
    parse: integer(1, MAX_ENTRIES_LIMIT), default: 65_536, flag: "maxEntries", env: "KVFERRY_MAX_ENTRIES",
  }),
  max_parts_per_entry: spec<number>({
    parse: integer(1, MAX_PARTS_LIMIT), default: 4096, flag: "maxPartsPerEntry", env: "KVFERRY_MAX_PARTS_PER_ENTRY",
  }),
  // Bytes of unary Puts whose message arrived but that wait for room: they sit in process
  // memory, outside the pool. 256 MiB lets four largest (64 MiB) messages wait; 0: never wait.
  max_waiting_put_bytes: spec<number>({
    parse: size(0), default: 256 * MiB, flag: "maxWaitingPutBytes", env: "KVFERRY_MAX_WAITING_PUT_BYTES",
  }),

  // the data plane and the peer API
  data_listen: spec<HostPort>({ parse: listenAddress(DEFAULT_LISTEN_HOST), flag: "dataListen", env: "KVFERRY_DATA_LISTEN" }),
  peer_listen: spec<HostPort>({ parse: listenAddress(DEFAULT_LISTEN_HOST), flag: "peerListen", env: "KVFERRY_PEER_LISTEN" }),
  cluster_token: spec<string>({ parse: text, flag: "clusterToken", env: "KVFERRY_CLUSTER_TOKEN" }),
  connections_per_peer: spec<number>({ parse: integer(1, 64), default: 4, flag: "connectionsPerPeer" }),
  transfer_deadline_ms: spec<number>({ parse: durationMs, default: 30_000, flag: "transferDeadlineMs" }),
  // An incoming data-plane connection must finish its handshake within this long (the
  // native engine refuses more than 60 s: unauthenticated connections stay short-lived).
  data_handshake_timeout_ms: spec<number>({
    parse: integer(1, 60_000, "milliseconds"), default: 1_000, env: "KVFERRY_DATA_HANDSHAKE_TIMEOUT_MS",
  }),

  // Prometheus /metrics and /health over HTTP; absent: not served.
  metrics_listen: spec<HostPort>({ parse: listenAddress(DEFAULT_LISTEN_HOST), flag: "metricsListen", env: "KVFERRY_METRICS_LISTEN" }),

  // the node registry (src/metadata/)
  metadata_prefix: spec<string>({ parse: keyPrefix, default: "kvferry/v1/", flag: "metadataPrefix" }),
  metadata_ttl_ms: spec<number>({ parse: integer(1_000, INT32_MAX, "milliseconds"), default: 10_000, flag: "metadataTtlMs" }),
  metadata_retry_ms: spec<number>({ parse: integer(0, INT32_MAX, "milliseconds"), default: 0, flag: "metadataRetryMs" }),
  peers: spec<HostPort[]>({ parse: peerList, default: [], flag: "peers", env: "KVFERRY_PEERS" }),
} as const;

export type Key = keyof typeof KEYS;
export type ValueOf<K extends Key> = (typeof KEYS)[K] extends KeySpec<infer T> ? T : never;

export function isKey(key: string): key is Key {
  return Object.hasOwn(KEYS, key);
}

/** `--kv-buffer-size` for `kvBufferSize`. */
export function flagName(field: keyof ConfigInputs): string {
  // --peer is given once per peer; its values arrive joined under `peers`.
  if (field === "peers") return "--peer";
  return `--${field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}
