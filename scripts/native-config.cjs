#!/usr/bin/env node
// What the native build compiles and links, for binding.gyp, scripts/build.mjs and
// scripts/setup.mjs: the UCX transport (native/engine/ucx/, protocol "rdma") is in the
// build when pkg-config finds UCX (Debian: libucx-dev) and KVFERRY_UCX is not "0";
// without it the engine is built with TCP only and says so when "rdma" is asked for.
//
//   node scripts/native-config.cjs sources|defines|libraries|ucx|configuration
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
const answers = {
  sources: () =>
    readdirSync(engine, { recursive: true })
      .filter((f) => f.endsWith(".cc") && (ucx !== undefined || !f.startsWith("ucx/")))
      .sort()
      .map((f) => `native/engine/${f}`)
      .join(" "),
  defines: () => (ucx !== undefined ? "KVFERRY_HAVE_UCX=1" : ""),
  libraries: () => ucx ?? "",
  ucx: () => (ucx !== undefined ? "1" : "0"),
  /** All of it, one item a line: what a configured build was made from (build/kvferry-sources.txt). */
  configuration: () => [answers.sources().split(" ").join("\n"), answers.defines(), answers.libraries()].join("\n"),
};
const what = answers[process.argv[2]];
if (what === undefined) {
  console.error(`usage: native-config.cjs ${Object.keys(answers).join("|")}`);
  process.exit(2);
}
process.stdout.write(`${what()}\n`);
