#!/usr/bin/env node
// The build: the native engine (node-gyp → build/Release/), TypeScript → dist/, and
// the descriptor sets that reflection serves. `--native` / `--ts` build one half.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const bin = (name) => join(root, "node_modules/.bin", name);
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: ["ignore", "inherit", "inherit"] });
const only = process.argv.find((a) => a === "--native" || a === "--ts");

if (only !== "--ts") {
  // Offline: the local Node headers, never a download (TOOLCHAIN.md).
  const gyp = [bin("node-gyp"), "--nodedir=/usr", "--loglevel=warn"];
  // binding.gyp lists native/engine's sources (and UCX, when it is here) when configured:
  // reconfigure when they change.
  const sources = execFileSync(process.execPath, [join(root, "scripts/native-config.cjs"), "configuration"], { encoding: "utf8" });
  const listed = join(root, "build/kvferry-sources.txt");
  if (!existsSync(join(root, "build/Makefile")) || !existsSync(listed) || readFileSync(listed, "utf8") !== sources) {
    run(process.execPath, [...gyp, "configure"]);
    writeFileSync(listed, sources);
  }
  run(process.execPath, [...gyp, "build", "--jobs=2"]);
}

if (only !== "--native") {
  // Built aside and swapped in, so a daemon starting meanwhile never sees half a dist/.
  const next = `dist.next-${process.pid}`;
  rmSync(join(root, next), { recursive: true, force: true });
  // The stamp gets the time the build *started*: a source saved while tsc runs is newer
  // than the stamp, so the next setup builds again instead of trusting a stale dist/.
  const started = new Date();
  try {
    run(bin("tsc"), ["-p", "tsconfig.json", "--outDir", next]);
    mkdirSync(join(root, next, "descriptors"), { recursive: true });
    run(bin("buf"), ["build", "-o", `${next}/descriptors/kvferry.binpb`]);
    run(bin("buf"), ["build", "node_modules/grpc-health-check/proto", "-o", `${next}/descriptors/health.binpb`]);
    writeFileSync(join(root, next, ".built"), `${started.toISOString()}\n`);
    utimesSync(join(root, next, ".built"), started, started);
  } catch (err) {
    // A failed build leaves the working dist/ as it was, and nothing beside it.
    rmSync(join(root, next), { recursive: true, force: true });
    throw err;
  }
  const old = `dist.old-${process.pid}`;
  if (existsSync(join(root, "dist"))) renameSync(join(root, "dist"), join(root, old));
  renameSync(join(root, next), join(root, "dist"));
  rmSync(join(root, old), { recursive: true, force: true });
}
