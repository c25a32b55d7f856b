#!/usr/bin/env node
// The test stage of `npm test`: vitest (its arguments are this script's, so that
// `npm test -- --reporter=json ...` still reaches it), then the Python client's pytest suite
// and vLLM connector's pytest suites (scripts/test-python.sh), which run even when vitest
// failed so that all are reported. With KVFERRY_PYTEST_JUNIT set, pytest writes its JUnit XML
// reports there (FILE.xml, FILE-vllm.xml; .ci/run counts them).
// Fails when either failed.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const run = (cmd, args) => spawnSync(cmd, args, { cwd: root, stdio: "inherit" }).status ?? 1;

const vitest = run(process.execPath, [`${root}node_modules/vitest/vitest.mjs`, "run", ...process.argv.slice(2)]);
const pytest = run("bash", ["scripts/test-python.sh"]);
if (vitest !== 0) console.error(`run-tests: vitest failed (exit ${vitest})`);
if (pytest !== 0) console.error(`run-tests: pytest failed (exit ${pytest})`);
process.exit(vitest !== 0 || pytest !== 0 ? 1 : 0);
