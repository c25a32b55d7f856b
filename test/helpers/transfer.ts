// Helpers of the transfer tests: daemons with a data plane and a peer API, entries of
// named parts with fast deterministic contents, and the accounting check both sides must pass.
import { execFileSync } from "node:child_process";
import { createCipheriv, createHash } from "node:crypto";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { expect } from "vitest";
import type { KvferryClient } from "../../src/client/client.js";
import { EntryState, type TransferResult } from "../../src/gen/kvferry/v1/kvferry.js";
import { poolFootprint } from "../../src/engine/pool-memory.js";
import { REPO, listAll, startDaemon, type StartOptions, type TestDaemon } from "./daemon.js";

export const TOKEN = "kvferry-it-token";

export interface PeerDaemon extends TestDaemon {
  /** What another daemon's BatchTransfer names as `target` (and a Get as `source`). */
  readonly peerAddress: string;
  /** The native data plane, "host:port". */
  readonly dataAddress: string;
}

export interface PeerDaemonOptions extends StartOptions {
  token?: string;
  /** --kv-buffer-size (default 1GiB). */
  bufferSize?: string;
  /** --transfer-deadline-ms (default: the daemon's). */
  transferDeadlineMs?: number;
  args?: string[];
}

/**
 * The data plane the transfer suites run over: "tcp", or "rdma" (KVFERRY_TEST_PROTOCOL,
 * set by vitest.config.ts's rdma project when the build has UCX): the UCX transport over
 * UCX's own tcp transport on the loopback device, standing in for RDMA NICs.
 */
export const RDMA = process.env.KVFERRY_TEST_PROTOCOL === "rdma";
/** Whether this build has the UCX transport (scripts/native-config.cjs decides it for the build). */
export const UCX_BUILT = execFileSync(process.execPath, [join(REPO, "scripts/native-config.cjs"), "ucx"], { encoding: "utf8" }).trim() === "1";
/** What UCX may use in the tests: loopback only (never another address), tcp for control and payloads. */
export const UCX_TEST_ENV = { UCX_TLS: "tcp", UCX_NET_DEVICES: "lo", UCX_WARN_UNUSED_ENV_VARS: "n" };

/** A daemon whose data plane and peer API listen on loopback, with a cluster token. */
export async function startPeerDaemon(o: PeerDaemonOptions = {}): Promise<PeerDaemon> {
  const args = [
    ...(RDMA ? ["--protocol", "rdma"] : []),
    "--data-listen", "127.0.0.1:0",
    "--peer-listen", "127.0.0.1:0",
    "--cluster-token", o.token ?? TOKEN,
    "--kv-buffer-size", o.bufferSize ?? "1GiB",
    ...(o.transferDeadlineMs === undefined ? [] : ["--transfer-deadline-ms", String(o.transferDeadlineMs)]),
    ...(o.args ?? []),
  ];
  const d = await startDaemon(args, { env: RDMA ? { ...UCX_TEST_ENV, ...o.env } : o.env, config: o.config });
  return Object.assign(d, { peerAddress: d.proc.peerAddress, dataAddress: d.proc.dataAddress });
}

/**
 * `size` deterministic pseudo-random bytes for `seed` (AES-128-CTR over zeros: GB/s, and
 * different seeds never share a prefix, so a mix-up between parts or entries shows).
 */
export function seededBytes(size: number, seed: string | number): Buffer {
  const key = createHash("sha256").update(`kvferry-it:${seed}`).digest();
  const cipher = createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16, 32));
  const out = Buffer.allocUnsafe(size);
  const CHUNK = 16 << 20;
  const zeros = Buffer.alloc(Math.min(CHUNK, Math.max(size, 1)));
  for (let offset = 0; offset < size; offset += CHUNK) {
    const n = Math.min(CHUNK, size - offset);
    cipher.update(zeros.subarray(0, n)).copy(out, offset);
  }
  return out;
}

export function digest(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** An entry to store: its parts in order, each with the seed of its contents. */
export interface EntrySpec {
  id: string;
  parts: { name: string; size: number; seed: string }[];
}

export function entrySpec(id: string, sizes: number[]): EntrySpec {
  return { id, parts: sizes.map((size, i) => ({ name: `layer.${i}`, size, seed: `${id}/layer.${i}` })) };
}

export function entryBytes(spec: EntrySpec): number {
  return spec.parts.reduce((sum, p) => sum + p.size, 0);
}

/** Pool bytes the entry takes: its parts' sizes rounded up to the pool's allocation unit (bytesUsed counts these). */
export function entryFootprint(spec: { parts: readonly { size: number }[] }): number {
  return spec.parts.reduce((sum, p) => sum + poolFootprint(p.size), 0);
}

/** Stores the entry's parts one by one (streamed above 4 MiB) and seals it with the last one. */
export async function putEntry(client: KvferryClient, spec: EntrySpec): Promise<Map<string, string>> {
  const hashes = new Map<string, string>();
  for (const [i, p] of spec.parts.entries()) {
    const data = seededBytes(p.size, p.seed);
    hashes.set(p.name, digest(data));
    await client.put(spec.id, p.name, data, { seal: i === spec.parts.length - 1 });
  }
  return hashes;
}

/** The sha256 of every part the daemon serves for the entry (through GetStream). */
export async function fetchHashes(client: KvferryClient, id: string): Promise<Map<string, string>> {
  const got = await client.getStream(id, { waitMs: 0 });
  return new Map([...got.parts].map(([name, data]) => [name, digest(data)]));
}

/** Asserts the daemon holds the entry sealed, with exactly the spec's parts and sizes. */
export async function expectSealedLike(client: KvferryClient, spec: EntrySpec): Promise<void> {
  const info = await client.stat(spec.id);
  expect(info.state, `${spec.id}: state`).toBe(EntryState.ENTRY_STATE_SEALED);
  expect(info.bytes, `${spec.id}: bytes`).toBe(entryBytes(spec));
  expect(
    [...info.parts].sort((a, b) => a.name.localeCompare(b.name)),
    `${spec.id}: parts`,
  ).toEqual(
    spec.parts.map((p) => ({ name: p.name, size: p.size, complete: true })).sort((a, b) => a.name.localeCompare(b.name)),
  );
}

/**
 * bytesUsed equals the listed entries' parts rounded to the pool's unit (call it when
 * nothing is in flight). Returns the entries' bytes (unrounded).
 */
export async function expectExactAccounting(d: TestDaemon, label = d.address): Promise<number> {
  const entries = await listAll(d.client);
  const sum = entries.reduce((s, e) => s + e.bytes, 0);
  const info = await d.client.serverInfo();
  expect(info.bytesUsed, `${label}: bytesUsed vs the rounded parts of ${entries.length} listed entries`).toBe(
    entries.reduce((s, e) => s + entryFootprint(e), 0),
  );
  expect(info.entries, `${label}: entries`).toBe(entries.length);
  return sum;
}

/** The results by status name (e.g. { OK: 99, NOT_FOUND: 1 }), for messages that read well. */
export function codeCounts(results: TransferResult[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of results) {
    const name = status[r.code] ?? String(r.code);
    counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
}

/** Asserts every result is OK, showing the first failures' messages otherwise. */
export function expectAllOk(results: TransferResult[]): void {
  const failed = results.filter((r) => r.code !== 0);
  expect(
    failed.slice(0, 5).map((r) => `${r.transferId}: ${r.code} ${r.message}`),
    `${failed.length} of ${results.length} failed: ${JSON.stringify(codeCounts(results))}`,
  ).toEqual([]);
}
