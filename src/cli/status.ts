// `kvferry status`: the nodes the metadata backend knows, as a table or as JSON.
//
// With etcd, redis or http metadata it reads the backend directly (no daemon needed);
// with the embedded default, or when --address names a daemon, it asks that daemon
// (ListNodes), which knows the nodes it has greeted or been greeted by.
import pino from "pino";
import { loadConfig, type Config } from "../config/config.js";
import { KvferryClient } from "../client/client.js";
import type { ListNodesResponse } from "../gen/kvferry/v1/kvferry.js";
import type { NodeInfo } from "../gen/kvferry/v1/node.js";
import { toWireNode } from "../metadata/wire-node.js";
import { openRegistry } from "../metadata/open.js";
import { EXIT_METADATA } from "./exit-codes.js";
import { flagHelp, HELP_FLAG, text, type Command, type Flags } from "./command.js";

export interface StatusOptions {
  config: Config;
  /** Ask the daemon at this client API address instead of the backend. */
  address?: string;
  json: boolean;
  timeoutMs?: number;
}

export async function runStatus(o: StatusOptions): Promise<number> {
  const { config } = o;
  const askDaemon = o.address !== undefined || config.metadata.backend === "embedded";
  let listing: ListNodesResponse;
  try {
    listing = askDaemon ? await fromDaemon(o.address ?? daemonAddress(config), o.timeoutMs ?? 5_000) : await fromBackend(config);
  } catch (err) {
    process.stderr.write(`kvferry status: ${(err as Error).message}\n`);
    return askDaemon ? 1 : EXIT_METADATA;
  }
  process.stdout.write(o.json ? `${JSON.stringify(listing, null, 2)}\n` : table(listing, Date.now()));
  return 0;
}

function daemonAddress(config: Config): string {
  const host = config.listen.host === "0.0.0.0" ? "127.0.0.1" : config.listen.host === "::" ? "[::1]" : config.listen.host;
  return `${host.includes(":") && !host.startsWith("[") ? `[${host}]` : host}:${config.listen.port}`;
}

async function fromDaemon(address: string, timeoutMs: number): Promise<ListNodesResponse> {
  const client = new KvferryClient(address);
  try {
    await client.waitForReady(timeoutMs).catch(() => {
      throw new Error(`no kvferry daemon answers at ${address} (is it running? --address names another one)`);
    });
    return await client.listNodes({ timeoutMs });
  } finally {
    client.close();
  }
}

async function fromBackend(config: Config): Promise<ListNodesResponse> {
  const registry = await openRegistry(config.metadata, pino({ level: "silent" }));
  try {
    const nodes = await registry.list();
    return { backend: registry.backend, where: registry.where, nodes: nodes.map(toWireNode) };
  } finally {
    await registry.close();
  }
}

const GiB = 2 ** 30;
const MiB = 2 ** 20;

function bytes(n: number): string {
  return n >= GiB ? `${(n / GiB).toFixed(1)} GiB` : `${(n / MiB).toFixed(0)} MiB`;
}

function age(ms: number): string {
  if (ms < 0) return "0s";
  const s = Math.floor(ms / 1000);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172_800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86_400)}d`;
}

function transports(n: NodeInfo): string {
  return n.transports.map((t) => t.name).join(",") || "-";
}

/** A fixed-width table, one node a line, then a line naming the backend. */
export function table(listing: ListNodesResponse, now: number): string {
  const header = ["NODE", "CLIENT", "PEER", "DATA", "TRANSPORTS", "POOL USED / CAPACITY", "VERSION", "AGE", "SEEN"];
  const rows = listing.nodes.map((n) => [
    n.nodeId,
    n.clientAddress || "-",
    n.peerAddress,
    n.dataAddress,
    transports(n),
    `${bytes(n.poolUsedBytes)} / ${bytes(n.poolBytes)} (${n.poolBytes ? Math.round((100 * n.poolUsedBytes) / n.poolBytes) : 0}%)`,
    n.version || "-",
    n.startedAtMs ? age(now - n.startedAtMs) : "-",
    n.updatedAtMs ? `${age(now - n.updatedAtMs)} ago` : "-",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  const count = `${listing.nodes.length} node${listing.nodes.length === 1 ? "" : "s"}`;
  return [line(header), ...rows.map(line), "", `${count} known to ${listing.where || listing.backend}`, ""].join("\n");
}

const FLAGS = {
  config: { type: "string", help: "FILE", doc: "the daemons' config: its metadata_server is read (else $KVFERRY_CONFIG, $MOONCAKE_CONFIG_PATH)" },
  "metadata-server": { type: "string", help: "URL", doc: "read this backend instead (etcd, redis or http)" },
  "metadata-prefix": { type: "string", help: "PREFIX", doc: "key prefix in the backend (default kvferry/v1/)" },
  address: { type: "string", help: "HOST:PORT", doc: "ask the daemon at this client API address (the way with embedded metadata; default: the config's listen)" },
  json: { type: "boolean", help: "", doc: "print JSON instead of a table" },
  help: HELP_FLAG,
} satisfies Flags;

const USAGE = `Usage: kvferry status [flags]

Lists the nodes the metadata backend knows: id, addresses, transports, pool used and
capacity, version, age, and how long ago the node's record was refreshed. With etcd,
redis or http metadata the backend is read directly; with the embedded default the
local daemon is asked (it knows the nodes it greeted and was greeted by).

Flags:
${flagHelp(FLAGS)}

Exit codes: 0 listed, 1 no daemon answered, 2 bad flag or configuration, 3 the
metadata backend cannot be reached.
`;

export const statusCommand: Command = {
  name: "status",
  summary: "the nodes the metadata backend knows (a table, or --json)",
  flags: FLAGS,
  usage: USAGE,
  run: (values) => {
    const config = loadConfig({
      config: text(values, "config"), metadataServer: text(values, "metadata-server"), metadataPrefix: text(values, "metadata-prefix"),
    });
    return runStatus({ config, address: text(values, "address"), json: values.json === true });
  },
};
