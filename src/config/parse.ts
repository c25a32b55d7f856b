// Value parsers for configuration settings.
//
// Each parser takes a raw value and returns the typed value or a description of what was
// expected instead. A raw value is JSON (from a config file or --kv-transfer-config) or text
// (from a flag or an environment variable, where everything is a string): `text` says which,
// so that JSON keeps its types (`"kv_rank": "1"` is refused) while `--kv-rank 1` works.
// Parsers know nothing of where a value came from; config.ts names the source in the error.

export type Parsed<T> = { ok: true; value: T } | { ok: false; expected: string };
export type Parser<T> = (raw: unknown, text: boolean) => Parsed<T>;

export interface HostPort {
  host: string;
  port: number;
}

export const INT32_MAX = 2 ** 31 - 1;
export const MiB = 2 ** 20;

export function accept<T>(value: T): Parsed<T> {
  return { ok: true, value };
}

export function refuse(expected: string): Parsed<never> {
  return { ok: false, expected };
}

const DIGITS = /^\d+$/;

/** An integer in [min, max]: a JSON number, or digits in text. */
export function integer(min: number, max: number, unit = ""): Parser<number> {
  const expected = `${unit ? `a whole number of ${unit}` : "an integer"} from ${min} to ${max}`;
  return (raw, text) => {
    let n: number;
    if (text && typeof raw === "string" && DIGITS.test(raw)) n = Number(raw);
    else if (!text && typeof raw === "number") n = raw;
    else return refuse(expected);
    return Number.isInteger(n) && n >= min && n <= max ? accept(n) : refuse(expected);
  };
}

/** Milliseconds: a positive integer that fits a timer (setTimeout caps at 2^31-1). */
export const durationMs: Parser<number> = integer(1, INT32_MAX, "milliseconds");

const UNITS: Record<string, { base: 10 | 1024; power: number }> = {
  b: { base: 10, power: 0 },
  kb: { base: 10, power: 1 }, mb: { base: 10, power: 2 },
  gb: { base: 10, power: 3 }, tb: { base: 10, power: 4 },
  kib: { base: 1024, power: 1 }, mib: { base: 1024, power: 2 },
  gib: { base: 1024, power: 3 }, tib: { base: 1024, power: 4 },
};

// "2e9", "1.5e9", "2000000000", "512MiB", "4 GB": a decimal mantissa, an optional exponent,
// an optional unit. Decimal units fold into the exponent so that "1.1MB" is exactly 1100000.
const SIZE_TEXT = /^(\d+(?:\.\d+)?)(?:e([+-]?\d{1,4}))?\s*([kmgt]i?b|b)?$/i;

function bytesFromText(text: string): number | undefined {
  const match = SIZE_TEXT.exec(text);
  if (!match) return undefined;
  const [, mantissa, exponent = "0", unitName = "b"] = match;
  const unit = UNITS[unitName.toLowerCase()];
  if (!unit || !mantissa) return undefined;
  if (unit.base === 10) return Number(`${mantissa}e${Number(exponent) + 3 * unit.power}`);
  return Number(`${mantissa}e${exponent}`) * 1024 ** unit.power;
}

function describeBytes(n: number): string {
  for (const [name, size] of [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", MiB], ["KiB", 1024]] as const) {
    if (n >= size && n % size === 0) return `${n / size} ${name} (${n})`;
  }
  return String(n);
}

/** A byte count as `size` reads it back: "1GiB" when a binary unit divides it, else digits. */
export function formatBytes(n: number): string {
  for (const [name, size] of [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", MiB], ["KiB", 1024]] as const) {
    if (n >= size && n % size === 0) return `${n / size}${name}`;
  }
  return String(n);
}

/**
 * A byte count in [min, max]: a JSON integer, or a string such as "2e9", "512MiB", "4GB".
 * KiB/MiB/GiB/TiB are binary, KB/MB/GB/TB decimal. The result must be a whole number.
 */
export function size(min: number, max: number = Number.MAX_SAFE_INTEGER): Parser<number> {
  const expected =
    `a whole number of bytes from ${describeBytes(min)} to ${describeBytes(max)}: ` +
    `an integer, or a string such as "2e9", "512MiB" or "4GB"`;
  return (raw) => {
    const n = typeof raw === "number" ? raw : typeof raw === "string" ? bytesFromText(raw) : undefined;
    if (n === undefined || !Number.isInteger(n) || n < min || n > max) return refuse(expected);
    return accept(n);
  };
}

/** A string from a fixed set, case-insensitive; `choices` maps each accepted spelling to its value. */
export function oneOf<T>(choices: Readonly<Record<string, T>>, expected: string): Parser<T> {
  return (raw) => {
    if (typeof raw !== "string") return refuse(expected);
    const spelling = raw.toLowerCase();
    return Object.hasOwn(choices, spelling) ? accept(choices[spelling] as T) : refuse(expected);
  };
}

/** A string matching `pattern`. */
export function stringMatching(pattern: RegExp, expected: string): Parser<string> {
  return (raw) => (typeof raw === "string" && pattern.test(raw) ? accept(raw) : refuse(expected));
}

const HOSTNAME = /^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$/;
const IPV6 = /^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9_.-]+)?$/;

function port(text: string, min = 1): number | undefined {
  if (!/^\d{1,5}$/.test(text)) return undefined;
  const n = Number(text);
  return n >= min && n <= 65535 ? n : undefined;
}

/** `host:port` or `[v6]:port` in text; the host comes back without brackets. */
export function hostPortFromText(text: string, minPort = 1): HostPort | undefined {
  const bracketed = /^\[([^\]]+)\]:([^:]+)$/.exec(text);
  if (bracketed) {
    const [, host = "", portText = ""] = bracketed;
    const p = port(portText, minPort);
    return IPV6.test(host) && p !== undefined ? { host, port: p } : undefined;
  }
  const colon = text.lastIndexOf(":");
  if (colon < 0) return undefined;
  const host = text.slice(0, colon);
  const p = port(text.slice(colon + 1), minPort);
  return HOSTNAME.test(host) && p !== undefined ? { host, port: p } : undefined;
}

export const HOST_PORT_EXPECTED = "HOST:PORT with port 1-65535";

/** `host:port` or `[v6]:port`. */
export const hostPort: Parser<HostPort> = (raw) => {
  const parsed = typeof raw === "string" ? hostPortFromText(raw) : undefined;
  return parsed ? accept(parsed) : refuse(`${HOST_PORT_EXPECTED} (IPv6 as [ADDR]:PORT)`);
};

const PEER_LIST_MAX = 1024;

/**
 * Peer API addresses: a JSON array of "HOST:PORT" strings, or text with commas between
 * them (a flag given several times is joined with commas). Duplicates are dropped.
 */
export const peerList: Parser<HostPort[]> = (raw, text) => {
  const expected =
    `a list of at most ${PEER_LIST_MAX} peer API addresses ${HOST_PORT_EXPECTED}: ` +
    `["h1:p1", "h2:p2"] in JSON, h1:p1,h2:p2 in a flag or variable`;
  let members: unknown[];
  if (text && typeof raw === "string") members = raw.split(",").map((m) => m.trim()).filter((m) => m !== "");
  else if (!text && Array.isArray(raw)) members = raw;
  else return refuse(expected);
  if (members.length > PEER_LIST_MAX) return refuse(expected);
  const out = new Map<string, HostPort>();
  for (const member of members) {
    const parsed = typeof member === "string" ? hostPortFromText(member.trim()) : undefined;
    if (!parsed) return refuse(`${expected}; ${JSON.stringify(member)} is not one`);
    out.set(formatHostPort(parsed), parsed);
  }
  return accept([...out.values()]);
};

/**
 * A listening address: like `hostPort`, but a port alone (a JSON number or digits) means
 * that port on `defaultHost`, and port 0 asks the system for a free one.
 */
/** Numeric user or group ids: [1000, 1001] in JSON, 1000,1001 in a flag or variable. */
export const idList: Parser<number[]> = (raw, text) => {
  const expected = `a list of numeric ids 0-${2 ** 32 - 2}: [1000, 1001] in JSON, 1000,1001 in a flag or variable`;
  let members: unknown[];
  if (text && typeof raw === "string") members = raw.split(",").map((m) => m.trim()).filter((m) => m !== "");
  else if (!text && Array.isArray(raw)) members = raw;
  else return refuse(expected);
  const ids = members.map((m) => (typeof m === "string" && /^\d{1,10}$/.test(m) ? Number(m) : m));
  const bad = ids.find((id) => !Number.isInteger(id) || (id as number) < 0 || (id as number) > 2 ** 32 - 2);
  if (bad !== undefined || ids.length > 64) return refuse(`${expected}, at most 64${bad === undefined ? "" : `; ${JSON.stringify(bad)} is not one`}`);
  return accept(ids as number[]);
};

export function listenAddress(defaultHost: string): Parser<HostPort> {
  const expected = `HOST:PORT with port 0-65535 (0 picks a free port), or PORT alone for ${defaultHost}:PORT (IPv6 as [ADDR]:PORT)`;
  return (raw) => {
    let parsed: HostPort | undefined;
    if (typeof raw === "number" && Number.isInteger(raw) && raw >= 0 && raw <= 65535) {
      parsed = { host: defaultHost, port: raw };
    } else if (typeof raw === "string") {
      const p = port(raw, 0);
      parsed = p !== undefined ? { host: defaultHost, port: p } : hostPortFromText(raw, 0);
    }
    return parsed ? accept(parsed) : refuse(expected);
  };
}

export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
