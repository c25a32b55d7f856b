// `kvferry proxy`'s configuration: flags → one validated, typed ProxyConfig.
//
// Every refusal is a ConfigError whose source is the flag (`--prefill`, `--listen`, ...),
// so the CLI prints the flag, the value and what was expected, and exits 2. Nothing is
// hard-coded: instances and their daemons come only from the command line.
import { ConfigError } from "../errors.js";
import { durationMs, formatHostPort, hostPortFromText, listenAddress, size, type HostPort } from "../config/parse.js";
import type { LogLevel } from "../config/config.js";

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

export interface ProxyConfig {
  listen: HostPort;
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
  /** Deadline of one BatchTransfer (push) and the KV wait the decode side is given. */
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

function instances(role: Role, list: string[] | undefined, transfer: TransferMode): InstanceSpec[] {
  const flag = `--${role}`;
  if (list === undefined || list.length === 0) {
    throw new ConfigError(flag, role, undefined, `at least one ${role} instance: ${flag} ${INSTANCE_EXPECTED}`);
  }
  const out: InstanceSpec[] = [];
  const seen = new Set<string>();
  for (const text of list) {
    const spec = parseInstance(role, text);
    if (spec === undefined) throw new ConfigError(flag, role, text, INSTANCE_EXPECTED);
    if (seen.has(spec.url)) throw new ConfigError(flag, role, text, `each ${role} URL once (${spec.url} is repeated)`);
    seen.add(spec.url);
    if (transfer !== "none" && spec.daemon === undefined) {
      throw new ConfigError(
        flag, role, text,
        `URL=DAEMON: --transfer ${transfer} needs the kvferry daemon (client API HOST:PORT) of every instance's node, ` +
          `e.g. ${spec.url}=127.0.0.1:50051 (or --transfer none when the engines move the KV themselves)`,
      );
    }
    out.push(spec);
  }
  return out;
}

function choice<T extends string>(flag: string, raw: string | undefined, choices: readonly T[], fallback: T): T {
  if (raw === undefined) return fallback;
  if ((choices as readonly string[]).includes(raw)) return raw as T;
  throw new ConfigError(flag, flag.slice(2), raw, `one of ${choices.join(" | ")}`);
}

function ms(flag: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  const parsed = durationMs(raw, true);
  if (!parsed.ok) throw new ConfigError(flag, flag.slice(2), raw, parsed.expected);
  return parsed.value;
}

/** Validates the flags. @throws ConfigError naming the flag (the CLI exits 2). */
export function loadProxyConfig(inputs: ProxyInputs): ProxyConfig {
  const listenText = inputs.listen ?? PROXY_DEFAULTS.listen;
  const listen = listenAddress("127.0.0.1")(listenText, true);
  if (!listen.ok) throw new ConfigError("--listen", "listen", listenText, listen.expected);
  const transfer = choice("--transfer", inputs.transfer, TRANSFERS, PROXY_DEFAULTS.transfer);
  const policy = choice("--policy", inputs.policy, POLICIES, PROXY_DEFAULTS.policy);
  const logLevel = choice("--log-level", inputs.logLevel, LOG_LEVELS, PROXY_DEFAULTS.logLevel);
  let maxBodyBytes = PROXY_DEFAULTS.maxBodyBytes;
  if (inputs.maxBodyBytes !== undefined) {
    const parsed = size(1, 1 << 30)(inputs.maxBodyBytes, true);
    if (!parsed.ok) throw new ConfigError("--max-body-bytes", "max-body-bytes", inputs.maxBodyBytes, parsed.expected);
    maxBodyBytes = parsed.value;
  }
  const healthIntervalMs = ms("--health-interval-ms", inputs.healthIntervalMs, PROXY_DEFAULTS.healthIntervalMs);
  return {
    listen: listen.value,
    prefill: instances("prefill", inputs.prefill, transfer),
    decode: instances("decode", inputs.decode, transfer),
    policy,
    transfer,
    healthIntervalMs,
    healthTimeoutMs: Math.min(Math.max(healthIntervalMs, 500), 5000),
    prefillTimeoutMs: ms("--prefill-timeout-ms", inputs.prefillTimeoutMs, PROXY_DEFAULTS.prefillTimeoutMs),
    decodeTimeoutMs: ms("--decode-timeout-ms", inputs.decodeTimeoutMs, PROXY_DEFAULTS.decodeTimeoutMs),
    transferDeadlineMs: ms("--transfer-deadline-ms", inputs.transferDeadlineMs, PROXY_DEFAULTS.transferDeadlineMs),
    forwardAuthorization: inputs.forwardAuthorization === true,
    maxBodyBytes,
    drainMs: ms("--drain-ms", inputs.drainMs, PROXY_DEFAULTS.drainMs),
    logLevel,
  };
}
