#!/usr/bin/env node
// What the native build compiles and links, for binding.gyp, scripts/build.mjs and
// scripts/setup.mjs: the UCX transport (native/engine/ucx/, protocol "rdma") is built when
// pkg-config finds UCX (Debian: libucx-dev) and KVFERRY_UCX is not "0", as a plugin of its
// own (kvferry_ucx.node, the only binary linked with UCX) that the addon loads when "rdma"
// is asked for; without UCX the engine is TCP only and says so when "rdma" is asked for.
//
//   node scripts/native-config.cjs sources|defines|ucx|ucx_sources|ucx_libraries|configuration
const { execFileSync } = require("node:child_process");
const { readdirSync } = require("node:fs");
const { join } = require("node:path");

/** UCX's linker flags, or undefined when it is not to be built. */
function ucxLibraries() {
  if (process.env.KVFERRY_UCX === "0") return undefined;
  try {
    return execFileSync("pkg-config", ["--libs", "ucx"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return undefined;
  }
}

const ucx = ucxLibraries();
const engine = join(__dirname, "..", "native", "engine");
/** The plugin: the transport and the engine code it calls (handles, statuses, proofs). */
const UCX_PLUGIN = ["status.cc", "handle_table.cc", "crypto/hmac_sha256.cc", "crypto/random.cc"];

const answers = {
  /** The addon's sources: the engine without ucx/. */
  sources: () =>
    readdirSync(engine, { recursive: true })
      .filter((f) => f.endsWith(".cc") && !f.startsWith("ucx/"))
      .sort()
      .map((f) => `native/engine/${f}`)
      .join(" "),
  defines: () => (ucx !== undefined ? "KVFERRY_HAVE_UCX=1" : ""),
  ucx: () => (ucx !== undefined ? "1" : "0"),
  ucx_sources: () =>
    [...readdirSync(join(engine, "ucx")).filter((f) => f.endsWith(".cc")).map((f) => `ucx/${f}`), ...UCX_PLUGIN]
      .sort()
      .map((f) => `native/engine/${f}`)
      .join(" "),
  ucx_libraries: () => ucx ?? "",
  /** All of it, one item a line: what a configured build was made from (build/kvferry-sources.txt). */
  configuration: () =>
    [answers.sources(), answers.defines(), ...(ucx !== undefined ? [answers.ucx_sources(), answers.ucx_libraries()] : [])]
      .join(" ")
      .split(" ")
      .join("\n"),
};
const what = answers[process.argv[2]];
if (what === undefined) {
  console.error(`usage: native-config.cjs ${Object.keys(answers).join("|")}`);
  process.exit(2);
}
process.stdout.write(`${what()}\n`);
