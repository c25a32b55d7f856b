#!/usr/bin/env node
// Brings a checkout to a runnable state, doing only what is missing or stale:
//   1. npm packages (npm ci when node_modules is missing or older than the lockfile);
//   2. system packages (apt, when run as root and missing): a C++ toolchain for the native
//      engine; with --test also etcd and redis, whose servers the tests start,
//      libibverbs1, which Mooncake's own transfer engine loads (test/integration/mooncake-*),
//      python3-venv for the Python client's tests (python/), and grpcurl (go install, when
//      Go is present);
//   3. the build: the native engine → build/Release/, TypeScript → dist/, descriptor sets.
// `npm test` and `npm run demo` run it first, so a fresh clone needs nothing else.
// Uses only Node's built-ins: it runs before any package is installed.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
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

// 2. System packages: the C++ toolchain always; with --test, the servers the tests start
//    (etcd and redis on loopback ports of their own; apt starts nothing by itself here) and
//    the library Mooncake's transfer engine needs. Each is [shell check, Debian package].
const command = (tool) => `command -v ${tool}`;
const library = (soname) => `ldconfig -p | grep -qF ${soname}`;
const needed = [
  [command("g++"), "g++"], [command("make"), "make"], [command("python3"), "python3"],
  ...(process.argv.includes("--test")
    ? [[command("etcd"), "etcd-server"], [command("etcdctl"), "etcd-client"], [command("redis-server"), "redis-server"], [library("libibverbs.so.1"), "libibverbs1"],
       // The Python client's test environment (scripts/python-venv.sh) is a venv.
       ["python3 -c 'import ensurepip, venv'", "python3-venv"],
       // The UCX transport (protocol "rdma"): built when UCX is here, tested over its tcp and shm transports.
       [command("pkg-config"), "pkg-config"], ["pkg-config --exists ucx", "libucx-dev"]]
    : []),
];
const missing = needed.filter(([check]) => spawnSync("sh", ["-c", check]).status !== 0).map(([, pkg]) => pkg);
if (missing.length > 0) {
  if (process.getuid?.() !== 0) {
    console.error(`setup: missing packages ${missing.join(", ")}: install them (apt-get install ${missing.join(" ")}) and run again`);
    process.exit(1);
  }
  say(`installing ${missing.join(", ")} (apt)`);
  run("apt-get", ["update", "-qq"]);
  run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...missing]);
}

// 2b. With --test, grpcurl for the README's grpcurl examples (test/integration/ops.test.ts runs
//     them): not packaged by Debian or npm, so from the Go module proxy when Go is here (a few
//     minutes, once). Without Go those tests are skipped, saying so. Keep the version in step
//     with test/helpers/grpcurl.ts.
if (process.argv.includes("--test") && spawnSync("sh", ["-c", "command -v go"]).status === 0) {
  const gopath = execFileSync("go", ["env", "GOPATH"], { encoding: "utf8" }).trim().split(":")[0];
  const onPath = spawnSync("sh", ["-c", "command -v grpcurl"]).status === 0;
  if (!onPath && gopath && !existsSync(join(gopath, "bin", "grpcurl"))) {
    say("installing grpcurl (go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4)");
    const r = spawnSync("go", ["install", "github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4"], { cwd: root, stdio: ["ignore", "inherit", "inherit"] });
    if (r.status !== 0) say("grpcurl could not be installed: its tests will be skipped");
  }
}

// 3. Build what is stale.
const addon = at("build/Release/kvferry_native.node");
const nativeInputs = Math.max(newest(at("native/engine")), newest(at("native/binding")), statSync(at("binding.gyp")).mtimeMs);
// A build configured without UCX is stale once UCX is installed (and the other way round).
const configured = at("build/kvferry-sources.txt");
const nativeConfig = execFileSync(process.execPath, [at("scripts/native-config.cjs"), "configuration"], { encoding: "utf8" });
const reconfigure = !existsSync(configured) || readFileSync(configured, "utf8") !== nativeConfig;
if (!existsSync(addon) || statSync(addon).mtimeMs < nativeInputs || reconfigure) {
  say("building the native engine");
  run(process.execPath, [at("scripts/build.mjs"), "--native"]);
}
const stamp = at("dist/.built");
const inputs = Math.max(newest(at("src")), newest(at("proto")), statSync(at("tsconfig.json")).mtimeMs, statSync(at("package-lock.json")).mtimeMs);
if (!existsSync(stamp) || statSync(stamp).mtimeMs < inputs) {
  say("building");
  run(process.execPath, [at("scripts/build.mjs"), "--ts"]);
}
