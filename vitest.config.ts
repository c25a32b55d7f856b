import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/unit/**/*.test.ts", "test/integration/**/*.test.ts", "test/e2e/**/*.test.ts"],
    // Bounds on a hang, not on speed: on a busy 2-core machine a daemon alone takes 15 s and
    // more to fault in a 2 GiB pool, and a test that starts several waits for all of them.
    testTimeout: 180_000,
    hookTimeout: 180_000,
    // Integration tests start daemons as real processes; two cores do not like many at once.
    maxWorkers: 2,
  },
});
