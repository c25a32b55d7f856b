// Shared helpers of the integration tests: real daemons as child processes, the typed
// client, and small wrappers that turn raw grpc-js calls into a status to assert on.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { expect } from "vitest";
import { spawnDaemon, type SpawnedDaemon } from "../../src/launch/spawn-daemon.js";
import { KvferryClient } from "../../src/client/client.js";
import { PutStreamRequest, type EntryInfo, type KvFerryClient, type PutStreamHeader } from "../../src/gen/kvferry/v1/kvferry.js";

export const MiB = 1 << 20;
export const REPO = fileURLToPath(new URL("../..", import.meta.url));
export const BIN = join(REPO, "bin/kvferry.js");

export interface TestDaemon {
  readonly proc: SpawnedDaemon;
  readonly address: string;
  readonly port: number;
  /** A typed client on its own connection. */
  readonly client: KvferryClient;
  /** Another client, for calls that must come from a second connection. */
  newClient(): KvferryClient;
  /** Closes every client, SIGTERMs the daemon, returns its exit code. */
  stop(): Promise<number | null>;
}

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  /** Written to a temporary JSON file passed with --config. */
  config?: Record<string, unknown>;
}

/** Starts `kvferry daemon --listen 127.0.0.1:0 ...args` and connects a client. */
export async function startDaemon(args: string[], options: StartOptions = {}): Promise<TestDaemon> {
  let dir: string | undefined;
  const extra: string[] = [];
  if (options.config !== undefined) {
    dir = mkdtempSync(join(tmpdir(), "kvferry-it-"));
    const file = join(dir, "config.json");
    writeFileSync(file, JSON.stringify(options.config));
    extra.push("--config", file);
  }
  const proc = await spawnDaemon(["--listen", "127.0.0.1:0", ...extra, ...args], { env: options.env });
  const clients: KvferryClient[] = [];
  const newClient = () => {
    const c = new KvferryClient(proc.address);
    clients.push(c);
    return c;
  };
  const client = newClient();
  await client.waitForReady(30_000);
  return {
    proc,
    address: proc.address,
    port: proc.port,
    client,
    newClient,
    async stop() {
      for (const c of clients) c.close();
      const code = await proc.stop(5000);
      if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
}

export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Bytes that differ from part to part, so a mix-up between parts shows. */
export function pattern(size: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** Whether a process with this pid exists (signal 0). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The error a promise rejects with; fails the test if it resolves. */
export async function rejection(p: Promise<unknown>): Promise<Error & Record<string, unknown>> {
  let value: unknown;
  try {
    value = await p;
  } catch (err) {
    return err as Error & Record<string, unknown>;
  }
  throw new Error(`expected a failure, got ${JSON.stringify(value)?.slice(0, 300)}`);
}

export type Outcome<T> = { ok: true; value: T } | { ok: false; error: ServiceError };

/** Runs one raw grpc-js callback call (with a deadline) to its outcome. */
export function rawUnary<T>(
  start: (metadata: Metadata, options: { deadline: number }, cb: (err: ServiceError | null, res: T) => void) => unknown,
  timeoutMs = 10_000,
): Promise<Outcome<T>> {
  return new Promise((resolve) => {
    start(new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
      resolve(err ? { ok: false, error: err } : { ok: true, value: res }),
    );
  });
}

/** One PutStream message; fields a header leaves out take their proto defaults. */
export type PutStreamMessage = { header?: Partial<PutStreamHeader>; chunk?: Buffer };

/** Sends the messages of one PutStream, in order, then ends the stream. */
export function rawPutStream(
  raw: KvFerryClient,
  messages: PutStreamMessage[],
  timeoutMs = 10_000,
): Promise<Outcome<{ entry?: EntryInfo }>> {
  return new Promise((resolve) => {
    const stream = raw.putStream(new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
      resolve(err ? { ok: false, error: err } : { ok: true, value: res }),
    );
    for (const m of messages) stream.write(PutStreamRequest.create(m));
    stream.end();
  });
}

/** Asserts a failed call with the given status (compared by name, so failures read well). */
export function expectStatus<T>(outcome: Outcome<T>, code: status, details?: RegExp): ServiceError {
  if (outcome.ok) {
    throw new Error(`expected ${status[code]}, the call succeeded: ${JSON.stringify(outcome.value)?.slice(0, 300)}`);
  }
  expect(status[outcome.error.code], outcome.error.details).toBe(status[code]);
  if (details !== undefined) expect(outcome.error.details).toMatch(details);
  return outcome.error;
}

/** Every entry, through List's pages. */
export async function listAll(client: KvferryClient, pageSize = 1000): Promise<EntryInfo[]> {
  const all: EntryInfo[] = [];
  let pageToken = "";
  do {
    const page = await client.list({ pageSize, pageToken });
    all.push(...page.entries);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return all;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node bin/kvferry.js ...args` to its end (killed after timeoutMs). */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 60_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, NO_PRETTY: "1", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Byte-for-byte equality without vitest's slow element-wise diff of large buffers. */
export function expectSameBytes(actual: Uint8Array | undefined, expected: Uint8Array, label = "bytes"): void {
  expect(actual, `${label}: missing`).toBeDefined();
  expect(actual!.length, `${label}: length`).toBe(expected.length);
  expect(Buffer.from(actual!.buffer, actual!.byteOffset, actual!.byteLength).equals(expected), `${label}: content`).toBe(true);
}
