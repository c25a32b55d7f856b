import { execFileSync } from "node:child_process";
import { defineConfig } from "vitest/config";

/** The transfer suites run again over the UCX transport (protocol "rdma") when the build has it. */
const RDMA_SUITES = ["test/integration/transfer.test.ts", "test/integration/transfer-faults.test.ts"];
const builtWithUcx = execFileSync(process.execPath, ["scripts/native-config.cjs", "ucx"], { encoding: "utf8" }).trim() === "1";

export default defineConfig({
  test: {
    // Bounds on a hang, not on speed: on a busy 2-core machine a daemon alone takes 15 s and
    // more to fault in a 2 GiB pool, and a test that starts several waits for all of them.
    testTimeout: 180_000,
    hookTimeout: 180_000,
    // Integration tests start daemons as real processes; two cores do not like many at once.
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: { name: "tcp", include: ["test/unit/**/*.test.ts", "test/integration/**/*.test.ts", "test/e2e/**/*.test.ts"] },
      },
      ...(builtWithUcx
        ? [{ extends: true, test: { name: "rdma", include: RDMA_SUITES, env: { KVFERRY_TEST_PROTOCOL: "rdma" } } }]
        : []),
    ],
  },
});
