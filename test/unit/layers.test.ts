// Imports run downhill: every src file's imports are read and checked against the table
// of which part of src/ may import which (README, "Layout"). Imports inside one folder
// are not checked here.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const SRC = fileURLToPath(new URL("../../src", import.meta.url));

/**
 * What each part of src/ (a folder, or a file at the top of src/ without its extension)
 * may import from the rest of src/. A part missing here is a failure: a new folder takes
 * its place in the table (and in the README's).
 */
const MAY_IMPORT: Record<string, readonly string[]> = {
  cli: ["demo", "launch", "daemon", "proxy", "simulator", "client", "metrics", "store", "engine", "metadata", "config", "grpc-errors", "errors", "version", "gen"],
  demo: ["launch", "proxy", "simulator", "client", "metrics", "metadata", "config", "grpc-errors", "errors", "version", "gen"],
  daemon: ["metrics", "store", "engine", "metadata", "config", "grpc-errors", "errors", "version", "gen"],
  proxy: ["launch", "client", "metrics", "metadata", "config", "grpc-errors", "errors", "version", "gen"],
  simulator: ["launch", "client", "metrics", "metadata", "config", "grpc-errors", "errors", "version", "gen"],
  // engine: its native addon maps the daemon's pool for the local path (client/local-path.ts).
  client: ["engine", "config", "grpc-errors", "errors", "version", "gen"],
  launch: ["errors"],
  metrics: [],
  engine: ["store", "config", "errors"],
  store: ["config", "errors"],
  metadata: ["config", "errors", "gen"],
  config: ["errors"],
  "grpc-errors": ["errors"],
  errors: [],
  version: [],
  gen: [],
};

/** Parts that must not load gRPC, directly or through anything they import. */
const GRPC_FREE = ["store", "engine", "config", "errors"];
/**
 * Metadata must not import gRPC itself, except the etcd backend's client: etcd's own API is
 * gRPC and its client (etcd3) is built on grpc-js, whose interceptors bound each attempt.
 */
const GRPC_FREE_DIRECT = ["metadata"];
const GRPC_ALLOWED_FILES = new Set(["metadata/etcd-client.ts"]);

interface Import {
  /** The importing file, relative to src/. */
  from: string;
  /** A file relative to src/ (with .ts), or a package name. */
  to: string;
  local: boolean;
}

/** The part of src/ a file (relative to src/) belongs to. */
function partOf(file: string): string {
  const [head, ...rest] = file.split("/");
  return rest.length === 0 ? head!.replace(/\.ts$/, "") : head!;
}

const SPECIFIER = /(?:\bfrom\s+|\bimport\s*\(\s*|^\s*import\s+)["']([^"']+)["']/gm;

/** Every import of the files (path relative to src/ → source text); imports leaving src/ (build/, bin/) are dropped. */
function importsOf(files: Map<string, string>): Import[] {
  const out: Import[] = [];
  for (const [from, text] of files) {
    for (const [, spec] of text.matchAll(SPECIFIER)) {
      if (spec!.startsWith(".")) {
        const to = relative("/src", resolve("/src", dirname(from), spec!)).replace(/\.js$/, ".ts");
        if (!to.startsWith("..")) out.push({ from, to, local: true });
      } else if (!spec!.startsWith("node:")) {
        const parts = spec!.split("/");
        out.push({ from, to: parts.slice(0, spec!.startsWith("@") ? 2 : 1).join("/"), local: false });
      }
    }
  }
  return out;
}

/** Each import that breaks the table or the gRPC rules, as "from → to: why". */
function violations(files: Map<string, string>): string[] {
  const imports = importsOf(files);
  const found: string[] = [];
  for (const file of files.keys()) {
    if (!(partOf(file) in MAY_IMPORT)) found.push(`${file}: src/${partOf(file)} has no row in the layer table`);
  }
  for (const { from, to, local } of imports) {
    const part = partOf(from);
    if (local) {
      const target = partOf(to);
      if (target !== part && MAY_IMPORT[part] && !MAY_IMPORT[part]!.includes(target)) {
        found.push(`${from} → ${to}: src/${part} may not import src/${target}`);
      }
    } else if (to.startsWith("@grpc/") && GRPC_FREE_DIRECT.includes(part) && !GRPC_ALLOWED_FILES.has(from)) {
      found.push(`${from} → ${to}: src/${part} does not use gRPC`);
    }
  }
  // What each gRPC-free file loads, followed through every local import.
  const localImports = new Map<string, string[]>();
  for (const i of imports) if (i.local) localImports.set(i.from, [...(localImports.get(i.from) ?? []), i.to]);
  const packages = new Map<string, string[]>();
  for (const i of imports) if (!i.local) packages.set(i.from, [...(packages.get(i.from) ?? []), i.to]);
  for (const start of files.keys()) {
    if (!GRPC_FREE.includes(partOf(start))) continue;
    const seen = new Set([start]);
    const queue = [[start]];
    while (queue.length > 0) {
      const chain = queue.shift()!;
      const file = chain[chain.length - 1]!;
      const grpc = (packages.get(file) ?? []).find((p) => p.startsWith("@grpc/"));
      if (grpc !== undefined) {
        found.push(`${[...chain, grpc].join(" → ")}: src/${partOf(start)} does not load gRPC`);
        break;
      }
      for (const next of localImports.get(file) ?? []) {
        if (!seen.has(next)) {
          seen.add(next);
          queue.push([...chain, next]);
        }
      }
    }
  }
  return found;
}

function readSrc(): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith(".ts")) files.set(relative(SRC, path), readFileSync(path, "utf8"));
    }
  };
  walk(SRC);
  return files;
}

describe("layers", () => {
  it("every import in src/ runs downhill along the layer table, and store, engine, config and errors load no gRPC", () => {
    const files = readSrc();
    expect(files.size).toBeGreaterThan(50);
    expect(importsOf(files).filter((i) => i.local).length).toBeGreaterThan(200);
    expect(violations(files)).toEqual([]);
  });

  it("the layer table itself has no cycle", () => {
    const visiting = new Set<string>();
    const done = new Set<string>();
    const cycle = (part: string, path: string[]): string[] | undefined => {
      if (done.has(part)) return undefined;
      if (visiting.has(part)) return [...path, part];
      visiting.add(part);
      for (const next of MAY_IMPORT[part] ?? []) {
        const c = cycle(next, [...path, part]);
        if (c) return c;
      }
      visiting.delete(part);
      done.add(part);
      return undefined;
    };
    for (const part of Object.keys(MAY_IMPORT)) expect(cycle(part, [])).toBeUndefined();
  });

  it("reports an upward import, a folder missing from the table, and gRPC reached through another file", () => {
    const files = new Map<string, string>([
      ["store/entry.ts", 'import { LookupBuffer } from "./lookup-buffer.js";\nimport { x } from "../daemon/server.js";'],
      ["store/lookup-buffer.ts", 'export type { Y } from "../grpc-errors.js";'],
      ["grpc-errors.ts", 'import { status } from "@grpc/grpc-js";'],
      ["metadata/redis.ts", 'const grpc = await import("@grpc/grpc-js");'],
      ["metadata/etcd-client.ts", 'import { InterceptingCall } from "@grpc/grpc-js";'],
      ["daemon/server.ts", 'import {\n  runStatus,\n} from "../cli/status.js";'],
      ["cli/status.ts", 'import { toWireNode } from "../metadata/wire-node.js";'],
      ["plugins/a.ts", 'import "../errors.js";'],
      ["engine/native.ts", 'const addon = require("../../build/Release/kvferry_native.node");'],
    ]);
    expect(violations(files).sort()).toEqual([
      "daemon/server.ts → cli/status.ts: src/daemon may not import src/cli",
      "metadata/redis.ts → @grpc/grpc-js: src/metadata does not use gRPC",
      "plugins/a.ts: src/plugins has no row in the layer table",
      "store/entry.ts → daemon/server.ts: src/store may not import src/daemon",
      "store/entry.ts → store/lookup-buffer.ts → grpc-errors.ts → @grpc/grpc-js: src/store does not load gRPC",
      "store/lookup-buffer.ts → grpc-errors.ts → @grpc/grpc-js: src/store does not load gRPC",
      "store/lookup-buffer.ts → grpc-errors.ts: src/store may not import src/grpc-errors",
    ]);
  });
});
