// `kvferry proxy`'s configuration: flags → one validated, typed ProxyConfig.
//
// Every refusal is a ConfigError whose source is the flag (`--prefill`, `--listen`, ...),
// so the CLI prints the flag, the value and what was expected, and exits 2. Nothing is
// hard-coded: instances and their daemons come from the command line (or its --config
// file), or are discovered (discovery.ts) in the node registry that the metadata settings
// name (--metadata-server, or the file's metadata_server as in mooncake.json) or from a
// daemon's ListNodes (--daemon).
import { readFileSync } from "node:fs";
import { ConfigError } from "../errors.js";
import { durationMs, formatHostPort, hostPortFromText, integer, listenAddress, size, type HostPort } from "../config/parse.js";
import { loadConfig, type LogLevel, type MetadataSettings } from "../config/config.js";
import { isKey } from "../config/keys.js";

export type Role = "prefill" | "decode";
export type PolicyName = "round-robin" | "least-outstanding";
/**
 * How the KV reaches the decode side: `push` (the proxy asks the prefill node's daemon to
 * BatchTransfer it to the decode node's daemon), `pull` (the decode side's Get names the
 * prefill daemon as its source), `none` (the engines' own connector moves it).
 */
export type TransferMode = "push" | "pull" | "none";

/** One inference engine instance: its OpenAI base URL and its node's daemon (client API). */
export interface InstanceSpec {
  role: Role;
  /** Base URL without a trailing slash, e.g. http://10.0.0.5:8100 or http://h:p/prefix. */
  url: string;
  /** "host:port" of the kvferry daemon's client API on the instance's node. */
  daemon?: string;
}

/**
 * Where the proxy discovers instances: the node registry (etcd, redis, http), or a daemon's
 * ListNodes (the way with embedded metadata), polled every health interval.
 */
export type DiscoverySource =
  | { kind: "registry"; metadata: MetadataSettings }
  | { kind: "daemon"; address: string };

export interface ProxyConfig {
  listen: HostPort;
  /** Absent: only the configured instances. A role with configured instances ignores discovered ones. */
  discovery?: DiscoverySource;
  prefill: InstanceSpec[];
  decode: InstanceSpec[];
  policy: PolicyName;
  transfer: TransferMode;
  healthIntervalMs: number;
  /** Timeout of one health check (GET /health and the daemon's GetServerInfo). */
  healthTimeoutMs: number;
  /** Whole prefill call (its answer is one token). */
  prefillTimeoutMs: number;
  /** Decode: time to the response headers, and the longest silence between two body chunks. */
  decodeTimeoutMs: number;
  /**
   * Deadline of one BatchTransfer (push). The decode side's wait for the KV is its
   * engine's own setting (e.g. `kvferry simulate --kv-wait-ms`); the proxy sends none.
   */
  transferDeadlineMs: number;
  forwardAuthorization: boolean;
  /** Largest request body accepted (413 above). */
  maxBodyBytes: number;
  /** How long SIGTERM waits for in-flight requests before closing them. */
  drainMs: number;
  logLevel: LogLevel;
}

/** The flags as parsed text (main.ts), every one optional. */
export interface ProxyInputs {
  listen?: string;
  prefill?: string[];
  decode?: string[];
  policy?: string;
  transfer?: string;
  healthIntervalMs?: string;
  prefillTimeoutMs?: string;
  decodeTimeoutMs?: string;
  transferDeadlineMs?: string;
  forwardAuthorization?: boolean;
  maxBodyBytes?: string;
  drainMs?: string;
  logLevel?: string;
  metadataServer?: string;
  metadataBackend?: string;
  metadataPrefix?: string;
  daemon?: string;
}

export const PROXY_DEFAULTS = {
  listen: "127.0.0.1:8000",
  policy: "least-outstanding" as PolicyName,
  transfer: "push" as TransferMode,
  healthIntervalMs: 2000,
  prefillTimeoutMs: 120_000,
  decodeTimeoutMs: 120_000,
  transferDeadlineMs: 30_000,
  maxBodyBytes: 16 << 20,
  drainMs: 30_000,
  logLevel: "info" as LogLevel,
};

/** Health checks more often than this would load the instances for no gain. */
export const MIN_HEALTH_INTERVAL_MS = 100;
const POLICIES: readonly PolicyName[] = ["round-robin", "least-outstanding"];
const TRANSFERS: readonly TransferMode[] = ["push", "pull", "none"];
const LOG_LEVELS: readonly LogLevel[] = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];
const INSTANCE_EXPECTED =
  "URL[=DAEMON]: an http(s) base URL such as http://127.0.0.1:8100, optionally followed by " +
  "=HOST:PORT, the client API of the kvferry daemon on that instance's node";

/** Parses `URL[=DAEMON]`; undefined when either half is malformed. */
export function parseInstance(role: Role, text: string): InstanceSpec | undefined {
  const eq = text.indexOf("=");
  const urlText = eq < 0 ? text : text.slice(0, eq);
  const daemonText = eq < 0 ? undefined : text.slice(eq + 1);
  let url: URL;
  try {
    url = new URL(urlText);
  } catch {
    return undefined;
  }
  if ((url.protocol !== "http:" && url.protocol !== "https:") || url.hostname === "") return undefined;
  if (url.search !== "" || url.hash !== "" || url.username !== "" || url.password !== "") return undefined;
  let daemon: string | undefined;
  if (daemonText !== undefined) {
    const hp = hostPortFromText(daemonText);
    if (hp === undefined) return undefined;
    daemon = formatHostPort(hp);
  }
  const base = `${url.protocol}//${url.host}${url.pathname.replace(/\/+$/, "")}`;
  return { role, url: base, daemon };
}

/** Where each setting came from, so that a refusal names the flag or the file's key. */
class Origins {
  constructor(private readonly file: string | undefined, private readonly fromFile: ReadonlySet<keyof ProxyInputs>) {}

  refuse(field: keyof ProxyInputs, value: unknown, expected: string): ConfigError {
    if (this.file !== undefined && this.fromFile.has(field)) return new ConfigError(this.file, FILE_KEYS[field], value, expected);
    const flag = FLAGS[field];
    return new ConfigError(flag, flag.slice(2), value, expected);
  }
}

/** The flag of each setting. */
const FLAGS: Record<keyof ProxyInputs, string> = {
  listen: "--listen", prefill: "--prefill", decode: "--decode", policy: "--policy", transfer: "--transfer",
  healthIntervalMs: "--health-interval-ms", prefillTimeoutMs: "--prefill-timeout-ms", decodeTimeoutMs: "--decode-timeout-ms",
  transferDeadlineMs: "--transfer-deadline-ms", forwardAuthorization: "--forward-authorization",
  maxBodyBytes: "--max-body-bytes", drainMs: "--drain-ms", logLevel: "--log-level",
  metadataServer: "--metadata-server", metadataBackend: "--metadata-backend", metadataPrefix: "--metadata-prefix",
  daemon: "--daemon",
};

/** Read from the file by the daemon's configuration (metadata keys), not as proxy settings. */
const METADATA_FIELDS: ReadonlySet<keyof ProxyInputs> = new Set(["metadataServer", "metadataBackend", "metadataPrefix"]);

/** Its key in a --config file: the flag's name in snake_case. */
const FILE_KEYS = Object.fromEntries(
  Object.entries(FLAGS).map(([field, flag]) => [field, flag.slice(2).replace(/-/g, "_")]),
) as Record<keyof ProxyInputs, string>;

function instances(role: Role, list: string[] | undefined, transfer: TransferMode, origins: Origins, discovering: boolean): InstanceSpec[] {
  if (list === undefined || list.length === 0) {
    if (discovering) return [];
    throw origins.refuse(
      role, undefined,
      `at least one ${role} instance: --${role} ${INSTANCE_EXPECTED} (or discover them: --metadata-server URL, or --daemon HOST:PORT)`,
    );
  }
  const out: InstanceSpec[] = [];
  const seen = new Set<string>();
  for (const text of list) {
    const spec = parseInstance(role, text);
    if (spec === undefined) throw origins.refuse(role, text, INSTANCE_EXPECTED);
    if (seen.has(spec.url)) throw origins.refuse(role, text, `each ${role} URL once (${spec.url} is repeated)`);
    seen.add(spec.url);
    if (transfer !== "none" && spec.daemon === undefined) {
      throw origins.refuse(
        role, text,
        `URL=DAEMON: --transfer ${transfer} needs the kvferry daemon (client API HOST:PORT) of every instance's node, ` +
          `e.g. ${spec.url}=127.0.0.1:50051 (or --transfer none when the engines move the KV themselves)`,
      );
    }
    out.push(spec);
  }
  return out;
}

/**
 * A --config file: a JSON object whose keys are the flags' names in snake_case
 * (`prefill`, `decode` as arrays of "URL[=DAEMON]", `health_interval_ms`, ...). Numbers may
 * be JSON numbers. The daemon's keys (mooncake.json's, config/keys.ts) are left to the
 * daemon's configuration, which reads the metadata settings from them, so one mooncake.json
 * serves both; any other key is refused (a typo must not pass unnoticed).
 */
export function proxyInputsFromFile(path: string): { inputs: ProxyInputs; keys: Set<keyof ProxyInputs> } {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new ConfigError(path, "(file)", undefined, `a readable JSON file (${(err as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new ConfigError(path, "(file)", raw, "a JSON object");
  const byKey = new Map(Object.entries(FILE_KEYS).map(([field, key]) => [key, field as keyof ProxyInputs]));
  const inputs: Record<string, unknown> = {};
  const keys = new Set<keyof ProxyInputs>();
  for (const [key, value] of Object.entries(raw)) {
    const field = byKey.get(key);
    if ((field === undefined || METADATA_FIELDS.has(field)) && isKey(key)) continue; // the daemon's key
    if (field === undefined) throw new ConfigError(path, key, value, `one of the keys ${[...byKey.keys()].join(", ")}`);
    if (field === "prefill" || field === "decode") {
      if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) {
        throw new ConfigError(path, key, value, `an array of "${INSTANCE_EXPECTED.split(":")[0]}" strings`);
      }
      inputs[field] = value;
    } else if (field === "forwardAuthorization") {
      if (typeof value !== "boolean") throw new ConfigError(path, key, value, "true or false");
      inputs[field] = value;
    } else if (typeof value === "string" || typeof value === "number") {
      inputs[field] = String(value);
    } else {
      throw new ConfigError(path, key, value, "a string or a number");
    }
    keys.add(field);
  }
  return { inputs: inputs as ProxyInputs, keys };
}

function choice<T extends string>(field: keyof ProxyInputs, raw: string | undefined, choices: readonly T[], fallback: T, origins: Origins): T {
  if (raw === undefined) return fallback;
  if ((choices as readonly string[]).includes(raw)) return raw as T;
  throw origins.refuse(field, raw, `one of ${choices.join(" | ")}`);
}

function ms(field: keyof ProxyInputs, raw: string | undefined, fallback: number, origins: Origins, min = 1): number {
  if (raw === undefined) return fallback;
  const parsed = min === 1 ? durationMs(raw, true) : integer(min, 2 ** 31 - 1, "milliseconds")(raw, true);
  if (!parsed.ok) throw origins.refuse(field, raw, parsed.expected);
  return parsed.value;
}

/**
 * Validates the settings: flags over the --config file (`file`, else $KVFERRY_CONFIG, else
 * $MOONCAKE_CONFIG_PATH) over the defaults.
 * @throws ConfigError naming the flag, or the file and its key (the CLI exits 2).
 */
export function loadProxyConfig(flags: ProxyInputs, configFile?: string, env: NodeJS.ProcessEnv = process.env): ProxyConfig {
  const file = configFile ?? (env.KVFERRY_CONFIG || undefined) ?? (env.MOONCAKE_CONFIG_PATH || undefined);
  const fromFile = file === undefined ? { inputs: {} as ProxyInputs, keys: new Set<keyof ProxyInputs>() } : proxyInputsFromFile(file);
  const given = Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined && v !== false)) as ProxyInputs;
  const inputs: ProxyInputs = { ...fromFile.inputs, ...given };
  const keys = new Set([...fromFile.keys].filter((k) => given[k] === undefined));
  const origins = new Origins(file, keys);
  const listenText = inputs.listen ?? PROXY_DEFAULTS.listen;
  const listen = listenAddress("127.0.0.1")(listenText, true);
  if (!listen.ok) throw origins.refuse("listen", listenText, listen.expected);
  const transfer = choice("transfer", inputs.transfer, TRANSFERS, PROXY_DEFAULTS.transfer, origins);
  const policy = choice("policy", inputs.policy, POLICIES, PROXY_DEFAULTS.policy, origins);
  const logLevel = choice("logLevel", inputs.logLevel, LOG_LEVELS, PROXY_DEFAULTS.logLevel, origins);
  let maxBodyBytes = PROXY_DEFAULTS.maxBodyBytes;
  if (inputs.maxBodyBytes !== undefined) {
    const parsed = size(1, 1 << 30)(inputs.maxBodyBytes, true);
    if (!parsed.ok) throw origins.refuse("maxBodyBytes", inputs.maxBodyBytes, parsed.expected);
    maxBodyBytes = parsed.value;
  }
  const healthIntervalMs = ms("healthIntervalMs", inputs.healthIntervalMs, PROXY_DEFAULTS.healthIntervalMs, origins, MIN_HEALTH_INTERVAL_MS);
  const discovery = discoverySource(inputs, file, env, origins);
  return {
    listen: listen.value,
    discovery,
    prefill: instances("prefill", inputs.prefill, transfer, origins, discovery !== undefined),
    decode: instances("decode", inputs.decode, transfer, origins, discovery !== undefined),
    policy,
    transfer,
    healthIntervalMs,
    healthTimeoutMs: Math.min(Math.max(healthIntervalMs, 500), 5000),
    prefillTimeoutMs: ms("prefillTimeoutMs", inputs.prefillTimeoutMs, PROXY_DEFAULTS.prefillTimeoutMs, origins),
    decodeTimeoutMs: ms("decodeTimeoutMs", inputs.decodeTimeoutMs, PROXY_DEFAULTS.decodeTimeoutMs, origins),
    transferDeadlineMs: ms("transferDeadlineMs", inputs.transferDeadlineMs, PROXY_DEFAULTS.transferDeadlineMs, origins),
    forwardAuthorization: inputs.forwardAuthorization === true,
    maxBodyBytes,
    drainMs: ms("drainMs", inputs.drainMs, PROXY_DEFAULTS.drainMs, origins),
    logLevel,
  };
}

/**
 * --daemon wins (its ListNodes, the way with embedded metadata); else the node registry the
 * metadata settings name (flags over the file's mooncake.json keys over the environment's
 * KVFERRY_METADATA_SERVER, validated as the daemon validates them); embedded: none.
 */
function discoverySource(inputs: ProxyInputs, file: string | undefined, env: NodeJS.ProcessEnv, origins: Origins): DiscoverySource | undefined {
  if (inputs.daemon !== undefined) {
    const hp = hostPortFromText(inputs.daemon);
    if (hp === undefined) throw origins.refuse("daemon", inputs.daemon, "HOST:PORT, the client API of a kvferry daemon whose ListNodes lists the nodes");
    return { kind: "daemon", address: formatHostPort(hp) };
  }
  const { metadata } = loadConfig(
    { config: file, metadataServer: inputs.metadataServer, metadataBackend: inputs.metadataBackend, metadataPrefix: inputs.metadataPrefix },
    env,
  );
  return metadata.backend === "embedded" ? undefined : { kind: "registry", metadata };
}
