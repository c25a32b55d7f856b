#!/usr/bin/env node
// Brings a checkout to a runnable state, doing only what is missing or stale:
//   1. npm packages (npm ci when node_modules is missing or older than the lockfile);
//   2. the build: TypeScript → dist/, descriptor sets for reflection → dist/descriptors/.
// `npm test` and `npm run demo` run it first, so a fresh clone needs nothing else.
// Uses only Node's built-ins: it runs before any package is installed.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const quiet = process.argv.includes("--quiet");
const say = (msg) => quiet || console.error(`setup: ${msg}`);
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: ["ignore", "inherit", "inherit"] });

function newest(path) {
  if (!existsSync(path)) return 0;
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  let t = st.mtimeMs;
  for (const name of readdirSync(path)) t = Math.max(t, newest(join(path, name)));
  return t;
}

const at = (p) => join(root, p);

// 1. Packages.
const installed = at("node_modules/.package-lock.json");
if (!existsSync(installed) || statSync(installed).mtimeMs < statSync(at("package-lock.json")).mtimeMs) {
  say("installing npm packages (npm ci)");
  run("npm", ["ci", "--no-audit", "--no-fund", "--ignore-scripts"]);
}

// 2. Build.
const stamp = at("dist/.built");
const inputs = Math.max(newest(at("src")), newest(at("proto")), statSync(at("tsconfig.json")).mtimeMs, statSync(at("package-lock.json")).mtimeMs);
if (!existsSync(stamp) || statSync(stamp).mtimeMs < inputs) {
  say("building");
  run(process.execPath, [at("scripts/build.mjs")]);
}
