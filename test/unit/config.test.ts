import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig, type Config, type ConfigInputs } from "../../src/config/config.js";
import { ConfigError } from "../../src/errors.js";

const SEED = fileURLToPath(new URL("../fixtures/config/mooncake.json", import.meta.url));
const SAME_NODE = fileURLToPath(new URL("../fixtures/config/mooncake-same-node.json", import.meta.url));

const VLLM_KV_TRANSFER_CONFIG =
  '{"kv_connector":"MooncakeConnector","kv_role":"kv_producer","kv_rank":0,"kv_parallel_size":2,"kv_buffer_size":"2e9"}';

const MiB = 2 ** 20;

let dir = "";
let files = 0;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kvferry-config-"));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Writes a config file (an object as JSON, or raw text) and returns its path. */
function configFile(content: object | string): string {
  const path = join(dir, `config-${++files}.json`);
  writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content));
  return path;
}

function load(inputs: ConfigInputs = {}, env: NodeJS.ProcessEnv = {}): Config {
  return loadConfig(inputs, env);
}

function loadFile(content: object | string, inputs: ConfigInputs = {}, env: NodeJS.ProcessEnv = {}): Config {
  return loadConfig({ ...inputs, config: configFile(content) }, env);
}

function configErrorOf(run: () => unknown): ConfigError {
  let thrown: unknown;
  try {
    run();
  } catch (err) {
    thrown = err;
  }
  expect(thrown).toBeInstanceOf(ConfigError);
  return thrown as ConfigError;
}

/** Asserts a ConfigError whose message names the source, the key, the value and the expected text. */
function expectRefused(
  run: () => unknown,
  want: { source: string; key: string; value: unknown; expected: string },
): ConfigError {
  const err = configErrorOf(run);
  expect(err.source).toBe(want.source);
  expect(err.key).toBe(want.key);
  expect(err.value).toEqual(want.value);
  expect(err.message).toContain(`${want.source}: ${want.key}: got ${JSON.stringify(want.value)}, expected `);
  expect(err.message).toContain(want.expected);
  return err;
}

/** Writes `{ [key]: value }` to a file and asserts loading it is refused. */
function expectFileValueRefused(key: string, value: unknown, expected: string, extra: object = {}): ConfigError {
  const path = configFile({ ...extra, [key]: value });
  return expectRefused(() => load({ config: path }), { source: path, key, value, expected });
}

describe("defaults", () => {
  it("uses the documented defaults when no file, flag or variable is given", () => {
    expect(load()).toEqual({
      source: "defaults",
      nodeId: `${hostname()}:50051`,
      nodeIdSource: "defaults (HOSTNAME:PORT of --listen)",
      protocolSource: "defaults",
      deviceNameSource: "defaults",
      role: "both",
      kvRank: 0,
      kvParallelSize: 1,
      listen: { host: "127.0.0.1", port: 50051 },
      kvBufferSize: 1073741824,
      leaseTtlMs: 120000,
      putDeadlineMs: 10000,
      getWaitMs: 30000,
      consumeLeaseMs: 30000,
      maxMessageBytes: 64 * MiB,
      recentlyRemoved: 10000,
      maxWaiters: 10000,
      maxEntries: 65536,
      maxPartsPerEntry: 4096,
      maxWaitingPutBytes: 256 * MiB,
      shutdownGraceMs: 10000,
      logLevel: "info",
      protocol: "tcp",
      metadata: { backend: "embedded", prefix: "kvferry/v1/", ttlMs: 10000, retryMs: 0 },
      peers: [],
      dataListen: { host: "127.0.0.1", port: 0 },
      peerListen: { host: "127.0.0.1", port: 0 },
      clusterToken: "",
      connectionsPerPeer: 4,
      ioThreads: 0,
      transferDeadlineMs: 30000,
      dataHandshakeTimeoutMs: 1000,
      localAllowedUids: [],
      localAllowedGids: [],
      warnings: [],
    });
  });

  it("listens for data on the role's URL and for peers one port above it", () => {
    const file = configFile({ prefill_url: "127.0.0.1:13003", decode_url: "127.0.0.1:13003" });
    const prefill = load({ config: file, kvRole: "kv_producer" });
    expect(prefill.dataListen).toEqual({ host: "127.0.0.1", port: 13003 });
    expect(prefill.peerListen).toEqual({ host: "127.0.0.1", port: 13004 });
    const decode = load({ config: file, kvRole: "kv_consumer" });
    expect(decode.dataListen).toEqual({ host: "127.0.0.1", port: 13103 });
    expect(decode.peerListen).toEqual({ host: "127.0.0.1", port: 13104 });
    expect(load({ config: file, dataListen: "127.0.0.1:0", peerListen: "127.0.0.1:7001" }).peerListen.port).toBe(7001);
  });

  it("serves metrics nowhere by default, and where metrics_listen says from a flag, the environment or the file", () => {
    expect(load().metricsListen).toBeUndefined();
    expect(load({ metricsListen: "0.0.0.0:9400" }).metricsListen).toEqual({ host: "0.0.0.0", port: 9400 });
    expect(load({ metricsListen: "9400" }).metricsListen).toEqual({ host: "127.0.0.1", port: 9400 });
    expect(load({}, { KVFERRY_METRICS_LISTEN: "127.0.0.1:0" }).metricsListen).toEqual({ host: "127.0.0.1", port: 0 });
    expect(loadFile({ metrics_listen: 9401 }).metricsListen).toEqual({ host: "127.0.0.1", port: 9401 });
    expect(() => load({ metricsListen: "127.0.0.1:70000" })).toThrow(/--metrics-listen: metrics_listen: got "127.0.0.1:70000", expected HOST:PORT/);
    expect(() => load({}, { KVFERRY_METRICS_LISTEN: "nowhere" })).toThrow(/KVFERRY_METRICS_LISTEN: metrics_listen: got "nowhere"/);
  });

  it("reads the local path's socket and allowed ids from flags, the environment or the file, refusing bad ones by name", () => {
    expect(load().localSocket).toBeUndefined();
    expect(load({ localSocket: "none" }).localSocket).toBe("none");
    expect(load({}, { KVFERRY_LOCAL_SOCKET: "/run/kvferry.sock" }).localSocket).toBe("/run/kvferry.sock");
    expect(load({ localAllowedUids: "1000, 1001" }).localAllowedUids).toEqual([1000, 1001]);
    expect(loadFile({ local_allowed_gids: [4242] }).localAllowedGids).toEqual([4242]);
    expect(() => load({ localSocket: "relative.sock" })).toThrow(/--local-socket: local_socket: got "relative.sock", expected an absolute path/);
    expect(() => load({ localAllowedUids: "root" })).toThrow(/--local-allowed-uids: local_allowed_uids: got "root", expected a list of numeric ids.*"root" is not one/);
    expect(() => loadFile({ local_allowed_gids: [-1] })).toThrow(/local_allowed_gids: got \[-1\], expected a list of numeric ids/);
  });

  it("derives the default node id from the host name and the listen port", () => {
    expect(load({ listen: "0.0.0.0:6123" }).nodeId).toBe(`${hostname()}:6123`);
  });

  it("hands out a fresh listen address each time, so one caller's edit does not leak", () => {
    load().listen.port = 1;
    expect(load().listen.port).toBe(50051);
  });
});

describe("the seed's mooncake.json", () => {
  it("loads unchanged, with etcd metadata, rdma and its devices", () => {
    const config = load({ config: SEED });
    expect(config.source).toBe(SEED);
    expect(config.prefillUrl).toEqual({ host: "192.168.0.137", port: 13003 });
    expect(config.decodeUrl).toEqual({ host: "192.168.0.139", port: 13003 });
    expect(config.metadata).toEqual({ backend: "etcd", server: "192.168.0.139:2379", prefix: "kvferry/v1/", ttlMs: 10000, retryMs: 0 });
    expect(config.protocol).toBe("rdma");
    expect(config.deviceName).toBe("erdma_0,erdma_1");
    expect(config.warnings).toEqual([]);
  });

  it("keeps ports of prefill and decode on different hosts as given", () => {
    const config = load({ config: SEED, kvRole: "kv_consumer" });
    expect(config.decodeUrl).toEqual({ host: "192.168.0.139", port: 13003 });
    expect(config.dataAddress).toEqual({ host: "192.168.0.139", port: 13003 });
  });

  it("moves the decode side to port+100 when prefill_url and decode_url are identical, without a warning", () => {
    const config = load({ config: SAME_NODE });
    expect(config.prefillUrl).toEqual({ host: "127.0.0.1", port: 13003 });
    expect(config.decodeUrl).toEqual({ host: "127.0.0.1", port: 13103 });
    expect(config.warnings).toEqual([]);
  });

  it("takes an empty device_name, as Mooncake's TCP examples write it, as no device", () => {
    expect(load({ config: SAME_NODE }).deviceName).toBeUndefined();
  });

  it("takes device_name and protocol from flags and the environment too", () => {
    expect(load({ protocol: "rdma", deviceName: "mlx5_0, mlx5_1:1" })).toMatchObject({ protocol: "rdma", deviceName: "mlx5_0, mlx5_1:1" });
    expect(load({}, { KVFERRY_PROTOCOL: "rdma", KVFERRY_DEVICE_NAME: "erdma_0" })).toMatchObject({ protocol: "rdma", deviceName: "erdma_0" });
  });

  it("takes the data address from the role: prefill_url for prefill and both, decode_url for decode", () => {
    expect(load({ config: SAME_NODE, kvRole: "kv_producer" }).dataAddress).toEqual({ host: "127.0.0.1", port: 13003 });
    expect(load({ config: SAME_NODE, kvRole: "kv_both" }).dataAddress).toEqual({ host: "127.0.0.1", port: 13003 });
    expect(load({ config: SAME_NODE, kvRole: "kv_consumer" }).dataAddress).toEqual({ host: "127.0.0.1", port: 13103 });
  });

  it("has no data address when the file gives no URLs", () => {
    expect(load().dataAddress).toBeUndefined();
  });

  it("refuses prefill and decode ports 30 apart on one host, saying they must be at least 50 apart", () => {
    const path = configFile({ prefill_url: "10.0.0.5:13003", decode_url: "10.0.0.5:13033" });
    const err = expectRefused(() => load({ config: path }), {
      source: path,
      key: "decode_url",
      value: "10.0.0.5:13033",
      expected: "ports on the same host must be at least 50 apart",
    });
    expect(err.message).toContain("port+100");
  });

  it("refuses a decode port just below the prefill port on one host", () => {
    const path = configFile({ prefill_url: "10.0.0.5:13003", decode_url: "10.0.0.5:13000" });
    expectRefused(() => load({ config: path }), {
      source: path, key: "decode_url", value: "10.0.0.5:13000", expected: "at least 50 apart",
    });
  });

  it("accepts prefill and decode ports exactly 50 apart on one host", () => {
    const config = loadFile({ prefill_url: "10.0.0.5:13003", decode_url: "10.0.0.5:13053" });
    expect(config.decodeUrl).toEqual({ host: "10.0.0.5", port: 13053 });
  });

  it("accepts close ports on different hosts", () => {
    const config = loadFile({ prefill_url: "10.0.0.5:13003", decode_url: "10.0.0.6:13004" });
    expect(config.decodeUrl).toEqual({ host: "10.0.0.6", port: 13004 });
  });

  it("refuses identical URLs whose decode port+100 would pass 65535", () => {
    const path = configFile({ prefill_url: "127.0.0.1:65500", decode_url: "127.0.0.1:65500" });
    expectRefused(() => load({ config: path }), {
      source: path, key: "decode_url", value: "127.0.0.1:65500", expected: "at most 65435",
    });
  });

  it("accepts the protocol in any case", () => {
    expect(loadFile({ protocol: "RDMA" }).protocol).toBe("rdma");
    expect(loadFile({ protocol: "Tcp" }).protocol).toBe("tcp");
  });

  it("refuses a protocol other than tcp and rdma", () => {
    expectFileValueRefused("protocol", "udp", `one of "tcp", "rdma"`);
  });
});

describe("finding the config file", () => {
  const viaFlag = () => configFile({ listen: 1001 });
  const viaKvferryConfig = () => configFile({ listen: 1002 });
  const viaMooncakeConfigPath = () => configFile({ listen: 1003 });

  it("reads the file named by --config", () => {
    const path = viaFlag();
    const config = load({ config: path });
    expect(config.source).toBe(path);
    expect(config.listen.port).toBe(1001);
  });

  it("reads the file named by KVFERRY_CONFIG when --config is absent", () => {
    const path = viaKvferryConfig();
    const config = load({}, { KVFERRY_CONFIG: path });
    expect(config.source).toBe(path);
    expect(config.listen.port).toBe(1002);
  });

  it("reads the file named by MOONCAKE_CONFIG_PATH when neither --config nor KVFERRY_CONFIG is set", () => {
    const path = viaMooncakeConfigPath();
    const config = load({}, { MOONCAKE_CONFIG_PATH: path });
    expect(config.source).toBe(path);
    expect(config.listen.port).toBe(1003);
  });

  it("prefers --config over both variables", () => {
    const env = { KVFERRY_CONFIG: viaKvferryConfig(), MOONCAKE_CONFIG_PATH: viaMooncakeConfigPath() };
    expect(load({ config: viaFlag() }, env).listen.port).toBe(1001);
  });

  it("prefers KVFERRY_CONFIG over MOONCAKE_CONFIG_PATH", () => {
    const env = { KVFERRY_CONFIG: viaKvferryConfig(), MOONCAKE_CONFIG_PATH: viaMooncakeConfigPath() };
    expect(load({}, env).listen.port).toBe(1002);
  });

  it("treats an empty KVFERRY_CONFIG as unset", () => {
    const path = viaMooncakeConfigPath();
    expect(load({}, { KVFERRY_CONFIG: "", MOONCAKE_CONFIG_PATH: path }).source).toBe(path);
  });

  it("reads no file when no source names one", () => {
    expect(load({}, {}).source).toBe("defaults");
  });

  it("refuses an empty --config", () => {
    expectRefused(() => load({ config: "" }), { source: "--config", key: "config", value: "", expected: "a path" });
  });

  it("refuses a missing file, naming its path", () => {
    const path = join(dir, "no-such-file.json");
    const err = configErrorOf(() => load({ config: path }));
    expect(err.source).toBe(path);
    expect(err.key).toBe("(file)");
    expect(err.message).toContain(path);
    expect(err.message).toContain("ENOENT");
    expect(err.message).toContain("expected a readable JSON file");
  });

  it("refuses a missing file named by MOONCAKE_CONFIG_PATH, naming its path", () => {
    const path = join(dir, "also-missing.json");
    expect(configErrorOf(() => load({}, { MOONCAKE_CONFIG_PATH: path })).source).toBe(path);
  });

  it("refuses a directory as the config file", () => {
    expectRefused(() => load({ config: dir }), { source: dir, key: "(file)", value: dir, expected: "a regular file" });
  });

  it("refuses a file that is not JSON", () => {
    const path = configFile('{ "protocol": "tcp", }');
    const err = configErrorOf(() => load({ config: path }));
    expect(err.source).toBe(path);
    expect(err.key).toBe("(file)");
    expect(err.message).toContain("expected valid JSON");
  });

  it("refuses JSON that is not an object", () => {
    const arrayFile = configFile("[1, 2]");
    expectRefused(() => load({ config: arrayFile }), {
      source: arrayFile, key: "(file)", value: "an array", expected: "a JSON object",
    });
    const numberFile = configFile("42");
    expectRefused(() => load({ config: numberFile }), {
      source: numberFile, key: "(file)", value: 42, expected: "a JSON object",
    });
    const nullFile = configFile("null");
    expectRefused(() => load({ config: nullFile }), {
      source: nullFile, key: "(file)", value: null, expected: "a JSON object",
    });
  });

  it("reads a file that starts with a byte-order mark", () => {
    expect(loadFile('\uFEFF{"protocol":"rdma"}').protocol).toBe("rdma");
  });
});

describe("precedence: flags > --kv-transfer-config > environment > file > defaults", () => {
  const file = () => configFile({ kv_buffer_size: "4MiB", listen: 2001, log_level: "warn", node_id: "from-file" });
  const env = { KVFERRY_KV_BUFFER_SIZE: "8MiB", KVFERRY_LISTEN: "2002", KVFERRY_LOG_LEVEL: "error", KVFERRY_NODE_ID: "from-env" };
  const kvTransferConfig = JSON.stringify({ kv_buffer_size: "16MiB" });

  it("takes a flag over --kv-transfer-config, the environment and the file", () => {
    const config = load({ config: file(), kvTransferConfig, kvBufferSize: "32MiB" }, env);
    expect(config.kvBufferSize).toBe(32 * MiB);
  });

  it("takes --kv-transfer-config over the environment and the file", () => {
    expect(load({ config: file(), kvTransferConfig }, env).kvBufferSize).toBe(16 * MiB);
  });

  it("takes the environment over the file", () => {
    const config = load({ config: file() }, env);
    expect(config.kvBufferSize).toBe(8 * MiB);
    expect(config.listen).toEqual({ host: "127.0.0.1", port: 2002 });
    expect(config.logLevel).toBe("error");
    expect(config.nodeId).toBe("from-env");
    expect(config.nodeIdSource).toBe("KVFERRY_NODE_ID");
  });

  it("takes the file over the defaults", () => {
    const config = load({ config: file() });
    expect(config.kvBufferSize).toBe(4 * MiB);
    expect(config.listen.port).toBe(2001);
    expect(config.logLevel).toBe("warn");
    expect(config.nodeId).toBe("from-file");
    expect(config.nodeIdSource).toContain(".json");
  });

  it("takes every flag over the file", () => {
    const path = configFile({
      listen: 2001, kv_buffer_size: "4MiB", kv_role: "kv_consumer", kv_rank: 1, kv_parallel_size: 2,
      log_level: "warn", node_id: "from-file", lease_ttl_ms: 1, put_deadline_ms: 1, get_wait_ms: 1,
    });
    const config = load({
      config: path, listen: "0.0.0.0:3000", kvBufferSize: "2MiB", kvRole: "kv_producer", kvRank: "2",
      kvParallelSize: "4", logLevel: "debug", nodeId: "from-flag", leaseTtlMs: "5000", putDeadlineMs: "6000",
      getWaitMs: "7000",
    });
    expect(config).toMatchObject({
      listen: { host: "0.0.0.0", port: 3000 }, kvBufferSize: 2 * MiB, role: "prefill", kvRank: 2,
      kvParallelSize: 4, logLevel: "debug", nodeId: "from-flag", leaseTtlMs: 5000, putDeadlineMs: 6000,
      getWaitMs: 7000,
    });
  });

  it("takes --kv-role over kv_role in --kv-transfer-config", () => {
    expect(load({ kvTransferConfig: VLLM_KV_TRANSFER_CONFIG, kvRole: "kv_consumer" }).role).toBe("decode");
  });

  it("refuses an invalid value in the file even when a flag overrides it", () => {
    const path = configFile({ kv_buffer_size: "lots" });
    expectRefused(() => load({ config: path, kvBufferSize: "2GiB" }), {
      source: path, key: "kv_buffer_size", value: "lots", expected: "1 MiB",
    });
  });

  it("treats an empty environment variable as unset", () => {
    expect(load({}, { KVFERRY_LISTEN: "", KVFERRY_LOG_LEVEL: "" }).listen.port).toBe(50051);
  });

  it("names the environment variable that holds a bad value", () => {
    expectRefused(() => load({}, { KVFERRY_LISTEN: "nowhere" }), {
      source: "KVFERRY_LISTEN", key: "listen", value: "nowhere", expected: "HOST:PORT with port 0-65535",
    });
    expectRefused(() => load({}, { KVFERRY_KV_BUFFER_SIZE: "big" }), {
      source: "KVFERRY_KV_BUFFER_SIZE", key: "kv_buffer_size", value: "big", expected: "1 MiB",
    });
    expectRefused(() => load({}, { KVFERRY_LOG_LEVEL: "loud" }), {
      source: "KVFERRY_LOG_LEVEL", key: "log_level", value: "loud", expected: `"info"`,
    });
    expectRefused(() => load({}, { KVFERRY_NODE_ID: "has space" }), {
      source: "KVFERRY_NODE_ID", key: "node_id", value: "has space", expected: "without spaces",
    });
  });
});

describe("--kv-transfer-config", () => {
  it("reads vLLM's fields, with kv_buffer_size as the string \"2e9\"", () => {
    const config = load({ kvTransferConfig: VLLM_KV_TRANSFER_CONFIG });
    expect(config).toMatchObject({
      kvConnector: "MooncakeConnector", role: "prefill", kvRank: 0, kvParallelSize: 2, kvBufferSize: 2e9,
    });
    expect(config.warnings).toEqual([]);
  });

  it("reads kv_buffer_size given as the number 2e9", () => {
    const config = load({ kvTransferConfig: '{"kv_role":"kv_consumer","kv_buffer_size":2e9}' });
    expect(config.kvBufferSize).toBe(2_000_000_000);
    expect(config.role).toBe("decode");
  });

  it("warns about vLLM's other fields and ignores them", () => {
    const config = load({
      kvTransferConfig: JSON.stringify({
        kv_connector: "MooncakeConnector", kv_role: "kv_both", kv_ip: "127.0.0.1", kv_port: 14579,
        kv_connector_extra_config: { a: 1 },
      }),
    });
    expect(config.warnings).toEqual([
      `--kv-transfer-config: ignoring unknown key "kv_ip"`,
      `--kv-transfer-config: ignoring unknown key "kv_port"`,
      `--kv-transfer-config: ignoring unknown key "kv_connector_extra_config"`,
    ]);
  });

  it("takes null, as vLLM writes unset fields, as absent", () => {
    const config = load({ kvTransferConfig: '{"kv_rank":null,"kv_parallel_size":null,"kv_buffer_size":null}' });
    expect(config).toMatchObject({ kvRank: 0, kvParallelSize: 1, kvBufferSize: 2 ** 30 });
  });

  it("warns about and ignores kvferry keys that belong in the file or flags", () => {
    const config = load({ kvTransferConfig: '{"listen":"0.0.0.0:9"}' });
    expect(config.listen.port).toBe(50051);
    expect(config.warnings).toHaveLength(1);
    expect(config.warnings[0]).toContain(`"listen"`);
  });

  it("refuses text that is not JSON, naming --kv-transfer-config", () => {
    const err = configErrorOf(() => load({ kvTransferConfig: "{kv_role: kv_producer}" }));
    expect(err.source).toBe("--kv-transfer-config");
    expect(err.message).toMatch(/^--kv-transfer-config: /);
    expect(err.message).toContain("expected valid JSON");
  });

  it("refuses JSON that is not an object", () => {
    expectRefused(() => load({ kvTransferConfig: '"kv_producer"' }), {
      source: "--kv-transfer-config", key: "(json)", value: "kv_producer", expected: "a JSON object",
    });
  });

  it("refuses a bad field, naming --kv-transfer-config and the field", () => {
    expectRefused(() => load({ kvTransferConfig: '{"kv_role":"kv_sender"}' }), {
      source: "--kv-transfer-config", key: "kv_role", value: "kv_sender", expected: `"kv_producer"`,
    });
    expectRefused(() => load({ kvTransferConfig: '{"kv_buffer_size":"2e9 bytes"}' }), {
      source: "--kv-transfer-config", key: "kv_buffer_size", value: "2e9 bytes", expected: "1 MiB",
    });
  });
});

describe("sizes", () => {
  it.each<[string | number, number]>([
    [2e9, 2_000_000_000],
    ["2e9", 2_000_000_000],
    ["2000000000", 2_000_000_000],
    ["1.5e9", 1_500_000_000],
    ["2E+9", 2_000_000_000],
    ["512MiB", 512 * MiB],
    ["512 MiB", 512 * MiB],
    ["2GiB", 2 * 2 ** 30],
    ["1.5GiB", 1.5 * 2 ** 30],
    ["1TiB", 2 ** 40],
    ["4GB", 4e9],
    ["1.1MB", 1_100_000],
    ["8.2MB", 8_200_000], // 8.2 * 1e6 in floating point is 8199999.999999999
    ["8.2GB", 8_200_000_000],
    ["2000KB", 2_000_000],
    ["1024KiB", MiB],
    ["4gb", 4e9],
    [MiB, MiB],
  ])("reads kv_buffer_size %j as %d bytes", (value, bytes) => {
    expect(loadFile({ kv_buffer_size: value }).kvBufferSize).toBe(bytes);
  });

  it("reads KiB as binary and KB as decimal", () => {
    expect(loadFile({ max_message_bytes: "64KiB" }).maxMessageBytes).toBe(65536);
    expect(loadFile({ max_message_bytes: "64KB" }).maxMessageBytes).toBe(64000);
  });

  it.each<[string, unknown]>([
    ["a word", "abc"],
    ["a negative number", -1],
    ["zero", 0],
    ["a fraction of a byte", 1.5],
    ["a string that is a fraction of a byte", "1048576.5"],
    ["a size that comes out a fraction of a byte", "1.1KiB"],
    ["a boolean", true],
    ["an object", {}],
    ["null", null],
    ["a negative string", "-2GiB"],
    ["an unknown unit", "2GiGa"],
    ["a unit alone", "MiB"],
    ["less than 1 MiB", "512KiB"],
    ["one byte less than 1 MiB", MiB - 1],
    ["more than Number.MAX_SAFE_INTEGER", 2 ** 53],
    ["a number past the float range", "1e400"],
    ["a string past Number.MAX_SAFE_INTEGER", "9007199254740993"],
  ])("refuses kv_buffer_size as %s, saying at least 1 MiB", (_what, value) => {
    expectFileValueRefused("kv_buffer_size", value, "a whole number of bytes from 1 MiB (1048576)");
  });

  it("names --kv-buffer-size when the flag is bad", () => {
    expectRefused(() => load({ kvBufferSize: "abc" }), {
      source: "--kv-buffer-size", key: "kv_buffer_size", value: "abc", expected: "1 MiB",
    });
  });

  it("refuses max_message_bytes above what gRPC takes (2^31-1)", () => {
    expectFileValueRefused("max_message_bytes", "2GiB", "to 2147483647");
  });

  it("reads any whole number of bytes written as digits or as MiB (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: MiB, max: Number.MAX_SAFE_INTEGER }), (n) => {
        expect(load({ kvBufferSize: String(n) }).kvBufferSize).toBe(n);
      }),
      { numRuns: 200 },
    );
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 30 }), (n) => {
        expect(load({ kvBufferSize: `${n}MiB` }).kvBufferSize).toBe(n * MiB);
      }),
      { numRuns: 200 },
    );
  });
});

describe("store bounds: max_entries, max_parts_per_entry, max_waiting_put_bytes", () => {
  it("reads each bound from its flag, its environment variable and the file", () => {
    expect(load({ maxEntries: "10", maxPartsPerEntry: "20", maxWaitingPutBytes: "1MiB" })).toMatchObject({
      maxEntries: 10, maxPartsPerEntry: 20, maxWaitingPutBytes: MiB,
    });
    const env = { KVFERRY_MAX_ENTRIES: "11", KVFERRY_MAX_PARTS_PER_ENTRY: "21", KVFERRY_MAX_WAITING_PUT_BYTES: "0" };
    expect(load({}, env)).toMatchObject({ maxEntries: 11, maxPartsPerEntry: 21, maxWaitingPutBytes: 0 });
    expect(loadFile({ max_entries: 12, max_parts_per_entry: 22, max_waiting_put_bytes: "2MiB" })).toMatchObject({
      maxEntries: 12, maxPartsPerEntry: 22, maxWaitingPutBytes: 2 * MiB,
    });
  });

  it("accepts the largest bounds: 2^20 entries, 2^16 parts per entry", () => {
    expect(load({ maxEntries: String(2 ** 20), maxPartsPerEntry: String(2 ** 16) })).toMatchObject({
      maxEntries: 2 ** 20, maxPartsPerEntry: 2 ** 16,
    });
  });

  it.each<[string, unknown, string]>([
    ["max_entries", 0, "an integer from 1 to 1048576"],
    ["max_entries", 2 ** 20 + 1, "an integer from 1 to 1048576"],
    ["max_entries", "100", "an integer from 1 to 1048576"],
    ["max_parts_per_entry", 0, "an integer from 1 to 65536"],
    ["max_parts_per_entry", 65537, "an integer from 1 to 65536"],
    ["max_parts_per_entry", 1.5, "an integer from 1 to 65536"],
    ["max_waiting_put_bytes", -1, "a whole number of bytes from 0"],
    ["max_waiting_put_bytes", "lots", "a whole number of bytes from 0"],
  ])("refuses %s %j, saying what it expects", (key, value, expected) => {
    expectFileValueRefused(key, value, expected);
  });

  it("names the flag that holds a bad bound", () => {
    expectRefused(() => load({ maxEntries: "-3" }), {
      source: "--max-entries", key: "max_entries", value: "-3", expected: "an integer from 1 to 1048576",
    });
    expectRefused(() => load({}, { KVFERRY_MAX_WAITING_PUT_BYTES: "1.5" }), {
      source: "KVFERRY_MAX_WAITING_PUT_BYTES", key: "max_waiting_put_bytes", value: "1.5", expected: "bytes from 0",
    });
  });
});

describe("io_threads", () => {
  it("reads it from the file and from --io-threads; 0 (the default) leaves the choice to the engine", () => {
    expect(load().ioThreads).toBe(0);
    expect(loadFile({ io_threads: 3 }).ioThreads).toBe(3);
    expect(load({ ioThreads: "2" }).ioThreads).toBe(2);
  });

  it.each<[string, unknown]>([["more than 64", 65], ["a negative count", -1], ["a fraction", 1.5]])(
    "refuses %s, naming the key and the range",
    (_what, value) => {
      expectFileValueRefused("io_threads", value, "an integer from 0 to 64");
    },
  );

  it("refuses a flag that is not a count, naming --io-threads", () => {
    expectRefused(() => load({ ioThreads: "many" }), {
      source: "--io-threads", key: "io_threads", value: "many", expected: "an integer from 0 to 64",
    });
  });
});

describe("data_handshake_timeout_ms", () => {
  it("reads it from the file and from KVFERRY_DATA_HANDSHAKE_TIMEOUT_MS", () => {
    expect(loadFile({ data_handshake_timeout_ms: 250 }).dataHandshakeTimeoutMs).toBe(250);
    expect(load({}, { KVFERRY_DATA_HANDSHAKE_TIMEOUT_MS: "2000" }).dataHandshakeTimeoutMs).toBe(2000);
  });

  it.each<[string, unknown]>([["zero", 0], ["more than a minute", 60_001], ["a fraction", 0.5]])(
    "refuses %s, naming the key and the range",
    (_what, value) => {
      expectFileValueRefused("data_handshake_timeout_ms", value, "a whole number of milliseconds from 1 to 60000");
    },
  );
});

describe("millisecond durations", () => {
  const keys = ["lease_ttl_ms", "put_deadline_ms", "get_wait_ms", "shutdown_grace_ms"] as const;

  it("reads durations from the file as integers", () => {
    const config = loadFile({ lease_ttl_ms: 1000, put_deadline_ms: 2000, get_wait_ms: 3000, shutdown_grace_ms: 4000 });
    expect(config).toMatchObject({ leaseTtlMs: 1000, putDeadlineMs: 2000, getWaitMs: 3000, shutdownGraceMs: 4000 });
  });

  it("reads the largest timer value, 2^31-1", () => {
    expect(load({ getWaitMs: "2147483647" }).getWaitMs).toBe(2147483647);
  });

  for (const key of keys) {
    it.each<[string, unknown]>([
      ["zero", 0],
      ["a negative number", -5],
      ["a fraction", 1.5],
      ["a string, though it holds digits", "5000"],
      ["a string with a unit", "5s"],
      ["more than 2^31-1", 2 ** 31],
      ["a boolean", false],
    ])(`refuses ${key} as %s`, (_what, value) => {
      expectFileValueRefused(key, value, "a whole number of milliseconds from 1 to 2147483647");
    });
  }

  it.each([
    ["leaseTtlMs", "--lease-ttl-ms", "lease_ttl_ms"],
    ["putDeadlineMs", "--put-deadline-ms", "put_deadline_ms"],
    ["getWaitMs", "--get-wait-ms", "get_wait_ms"],
  ] as const)("refuses --%s text that is not a positive integer", (field, flag, key) => {
    for (const value of ["abc", "1.5", "-5", "0", "5s", "", " 5"]) {
      expectRefused(() => load({ [field]: value }), {
        source: flag, key, value, expected: "a whole number of milliseconds from 1 to 2147483647",
      });
    }
  });
});

describe("host:port", () => {
  it.each<[string | number, { host: string; port: number }]>([
    ["0.0.0.0:6000", { host: "0.0.0.0", port: 6000 }],
    ["localhost:6000", { host: "localhost", port: 6000 }],
    ["node-7.cluster.local:6000", { host: "node-7.cluster.local", port: 6000 }],
    ["[::1]:6000", { host: "::1", port: 6000 }],
    ["[fe80::1%eth0]:6000", { host: "fe80::1%eth0", port: 6000 }],
    ["6000", { host: "127.0.0.1", port: 6000 }],
    [6000, { host: "127.0.0.1", port: 6000 }],
    ["65535", { host: "127.0.0.1", port: 65535 }],
  ])("reads listen %j", (value, want) => {
    expect(loadFile({ listen: value }).listen).toEqual(want);
  });

  it("reads a bare port from --listen as a port on 127.0.0.1", () => {
    expect(load({ listen: "7000" }).listen).toEqual({ host: "127.0.0.1", port: 7000 });
  });

  it.each<[string, unknown]>([
    ["no port", "localhost"],
    ["port 65536", "host:65536"],
    ["a port that is not a number", "host:http"],
    ["an unbracketed IPv6 address", "::1:80"],
    ["an empty host", ":80"],
    ["a space in the host", "my host:80"],
    ["port 65536 alone", 65536],
    ["a boolean", true],
  ])("refuses listen with %s", (_what, value) => {
    expectFileValueRefused("listen", value, "HOST:PORT with port 0-65535");
  });

  it.each<[string, unknown]>([
    ["a port alone", "13003"],
    ["a number", 13003],
    ["port 70000", "10.0.0.1:70000"],
    ["a URL", "http://10.0.0.1:13003"],
  ])("refuses prefill_url and decode_url with %s", (_what, value) => {
    expectFileValueRefused("prefill_url", value, "HOST:PORT with port 1-65535");
    expectFileValueRefused("decode_url", value, "HOST:PORT with port 1-65535");
  });

  it("names --listen when the flag is bad", () => {
    expectRefused(() => load({ listen: "127.0.0.1:99999" }), {
      source: "--listen", key: "listen", value: "127.0.0.1:99999", expected: "HOST:PORT with port 0-65535",
    });
  });

  it("accepts listen port 0, which asks the system for a free port", () => {
    expect(load({ listen: "127.0.0.1:0" }).listen).toEqual({ host: "127.0.0.1", port: 0 });
  });
});

describe("peers", () => {
  it("reads a JSON array from the file and comma-separated text from a flag or variable, without duplicates", () => {
    expect(loadFile({ peers: ["127.0.0.1:7001", "node-b:7001", "127.0.0.1:7001"] }).peers).toEqual([
      { host: "127.0.0.1", port: 7001 }, { host: "node-b", port: 7001 },
    ]);
    expect(load({ peers: "127.0.0.1:7001, [::1]:7002" }).peers).toEqual([{ host: "127.0.0.1", port: 7001 }, { host: "::1", port: 7002 }]);
    expect(load({}, { KVFERRY_PEERS: "h:1" }).peers).toEqual([{ host: "h", port: 1 }]);
  });

  it.each<[unknown]>([["127.0.0.1:7001"], [["127.0.0.1"]], [["h:70000"]], [[7001]]])("refuses peers %j, naming the bad member", (value) => {
    const path = configFile({ peers: value });
    expectRefused(() => load({ config: path }), { source: path, key: "peers", value, expected: "peer API addresses" });
  });

  it("names the flag when --peer holds a bad address", () => {
    expectRefused(() => load({ peers: "127.0.0.1:7001,nope" }), { source: "--peer", key: "peers", value: "127.0.0.1:7001,nope", expected: `"nope" is not one` });
  });
});

describe("metadata server", () => {
  it("uses the embedded peer-to-peer metadata when metadata_server is absent", () => {
    expect(loadFile({}).metadata).toEqual({ backend: "embedded", prefix: "kvferry/v1/", ttlMs: 10000, retryMs: 0 });
  });

  it.each<[string, string]>([
    ["P2PHANDSHAKE", "embedded"],
    ["192.168.0.139:2379", "etcd"],
    ["etcd://192.168.0.139:2379", "etcd"],
    ["etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379", "etcd"],
    ["10.0.0.1:2379,10.0.0.2:2379", "etcd"],
    ["redis://10.0.0.1:6379", "redis"],
    ["http://10.0.0.1:8080/metadata", "http"],
    ["https://meta.example:8443/metadata", "http"],
  ])("reads metadata_server %s as %s and keeps it as given", (server, backend) => {
    expect(loadFile({ metadata_server: server }).metadata).toMatchObject({ backend, server });
  });

  it.each<[string, string]>([
    ["etcd", "etcd://10.0.0.1:2379"],
    ["ETCD", "10.0.0.1:2379"],
    ["redis", "redis://10.0.0.1:6379"],
    ["http", "http://10.0.0.1:8080/metadata"],
    ["p2p", "P2PHANDSHAKE"],
  ])("accepts metadata_backend %s with metadata_server %s", (backend, server) => {
    expect(() => loadFile({ metadata_backend: backend, metadata_server: server })).not.toThrow();
  });

  it("takes the server, prefix, TTL and start-up retry from flags over variables over the file", () => {
    const path = configFile({ metadata_server: "redis://127.0.0.1:6379", metadata_prefix: "a/", metadata_ttl_ms: 3000 });
    expect(load({ config: path }).metadata).toEqual({
      backend: "redis", server: "redis://127.0.0.1:6379", prefix: "a/", ttlMs: 3000, retryMs: 0,
    });
    const env = { KVFERRY_METADATA_SERVER: "etcd://127.0.0.1:2379" };
    expect(load({ config: path }, env).metadata.server).toBe("etcd://127.0.0.1:2379");
    expect(load({ config: path, metadataServer: "http://127.0.0.1:8080/metadata", metadataPrefix: "b/", metadataTtlMs: "2000", metadataRetryMs: "30000" }, env).metadata).toEqual({
      backend: "http", server: "http://127.0.0.1:8080/metadata", prefix: "b/", ttlMs: 2000, retryMs: 30000,
    });
  });

  it.each<[string, unknown, string]>([
    ["metadata_prefix", "kvferry", `ending in "/"`],
    ["metadata_prefix", "has space/", "without spaces"],
    ["metadata_prefix", 7, `ending in "/"`],
    ["metadata_ttl_ms", 999, "from 1000"],
    ["metadata_ttl_ms", "10000", "whole number of milliseconds"],
    ["metadata_retry_ms", -1, "from 0"],
  ])("refuses %s %j, saying what it expected", (key, value, expected) => {
    const path = configFile({ [key]: value });
    expectRefused(() => load({ config: path }), { source: path, key, value, expected });
  });

  it("refuses a redis database number that is not a small whole number", () => {
    const path = configFile({ metadata_server: "redis://127.0.0.1:6379/99999999999999999999" });
    expectRefused(() => load({ config: path }), {
      source: path, key: "metadata_server", value: "redis://127.0.0.1:6379/99999999999999999999", expected: "redis://HOST:PORT",
    });
  });

  it("refuses a metadata_backend that disagrees with the metadata_server, naming both", () => {
    const path = configFile({ metadata_backend: "redis", metadata_server: "192.168.0.139:2379" });
    expectRefused(() => load({ config: path }), {
      source: path, key: "metadata_backend", value: "redis", expected: `metadata_server "192.168.0.139:2379", which names an etcd server ("etcd")`,
    });
  });

  it("refuses an http metadata_server declared as etcd", () => {
    const path = configFile({ metadata_backend: "etcd", metadata_server: "http://10.0.0.1:8080/metadata" });
    expectRefused(() => load({ config: path }), {
      source: path, key: "metadata_backend", value: "etcd", expected: `an http server ("http")`,
    });
  });

  it("refuses metadata_backend etcd with no metadata_server", () => {
    const path = configFile({ metadata_backend: "etcd" });
    expectRefused(() => load({ config: path }), {
      source: path, key: "metadata_backend", value: "etcd", expected: "metadata_server is absent",
    });
  });

  it("refuses an unknown metadata_backend", () => {
    expectFileValueRefused("metadata_backend", "zookeeper", `one of "etcd", "redis", "http", "p2p"`);
  });

  it.each<[string, unknown]>([
    ["an empty etcd list", "etcd://"],
    ["an unknown scheme", "zk://10.0.0.1:2181"],
    ["no port", "metadata-host"],
    ["a redis URL without port", "redis://10.0.0.1"],
    ["a number", 2379],
  ])("refuses metadata_server with %s", (_what, value) => {
    expectFileValueRefused("metadata_server", value, "P2PHANDSHAKE");
  });
});

describe("kv role, rank and parallel size", () => {
  it.each([
    ["kv_producer", "prefill"],
    ["kv_consumer", "decode"],
    ["kv_both", "both"],
    ["prefill", "prefill"],
    ["decode", "decode"],
    ["both", "both"],
    ["KV_Producer", "prefill"],
  ])("reads kv_role %s as %s", (kvRole, role) => {
    expect(load({ kvRole }).role).toBe(role);
    expect(loadFile({ kv_role: kvRole }).role).toBe(role);
  });

  it("refuses an unknown kv_role", () => {
    expectFileValueRefused("kv_role", "producer", `one of "kv_producer", "kv_consumer", "kv_both"`);
    expectFileValueRefused("kv_role", 1, `one of "kv_producer", "kv_consumer", "kv_both"`);
    expectRefused(() => load({ kvRole: "leader" }), {
      source: "--kv-role", key: "kv_role", value: "leader", expected: `"kv_producer"`,
    });
  });

  it("reads rank and parallel size from flags", () => {
    expect(load({ kvRank: "3", kvParallelSize: "4" })).toMatchObject({ kvRank: 3, kvParallelSize: 4 });
  });

  it("refuses a rank equal to the parallel size, naming kv_parallel_size", () => {
    expectRefused(() => load({ kvRank: "2", kvParallelSize: "2" }), {
      source: "--kv-rank", key: "kv_rank", value: "2", expected: "below kv_parallel_size 2 (from --kv-parallel-size)",
    });
  });

  it("refuses a rank of 1 when the parallel size is left at its default of 1", () => {
    const path = configFile({ kv_rank: 1 });
    expectRefused(() => load({ config: path }), {
      source: path, key: "kv_rank", value: 1, expected: "below kv_parallel_size 1 (the default)",
    });
  });

  it("checks the rank against a parallel size from another source", () => {
    const path = configFile({ kv_rank: 1 });
    expect(load({ config: path, kvTransferConfig: '{"kv_parallel_size":2}' }).kvRank).toBe(1);
  });

  it.each<[string, unknown]>([
    ["negative", -1],
    ["a fraction", 0.5],
    ["a string", "1"],
  ])("refuses kv_rank that is %s", (_what, value) => {
    expectFileValueRefused("kv_rank", value, "an integer from 0");
  });

  it.each<[string, unknown]>([
    ["zero", 0],
    ["negative", -2],
    ["a fraction", 1.5],
    ["a string", "2"],
  ])("refuses kv_parallel_size that is %s", (_what, value) => {
    expectFileValueRefused("kv_parallel_size", value, "an integer from 1");
  });

  it("refuses --kv-parallel-size text that is not an integer", () => {
    expectRefused(() => load({ kvParallelSize: "two" }), {
      source: "--kv-parallel-size", key: "kv_parallel_size", value: "two", expected: "an integer from 1",
    });
  });
});

describe("other keys", () => {
  it("reads every kvferry key from the file", () => {
    const config = loadFile({
      kv_connector: "MooncakeConnector", recently_removed: 5, max_waiters: 6, max_message_bytes: "16MiB",
      log_level: "DEBUG", node_id: "node-a",
    });
    expect(config).toMatchObject({
      kvConnector: "MooncakeConnector", recentlyRemoved: 5, maxWaiters: 6, maxMessageBytes: 16 * MiB,
      logLevel: "debug", nodeId: "node-a",
    });
  });

  it.each(["trace", "debug", "info", "warn", "error", "fatal", "silent"])("accepts log level %s", (level) => {
    expect(load({ logLevel: level }).logLevel).toBe(level);
  });

  it("refuses an unknown log level", () => {
    expectRefused(() => load({ logLevel: "verbose" }), {
      source: "--log-level", key: "log_level", value: "verbose", expected: `one of "trace", "debug", "info"`,
    });
  });

  it.each<[string, unknown, string]>([
    ["protocol", 5, `one of "tcp", "rdma"`],
    ["device_name", 5, "device names separated by commas"],
    ["device_name", "mlx5_0,,mlx5_1", "device names separated by commas"],
    ["device_name", "mlx5_0 mlx5_1", "device names separated by commas"],
    ["kv_connector", [], "a non-empty string"],
    ["kv_connector", "", "a non-empty string"],
    ["node_id", "", "a non-empty string"],
    ["log_level", 3, `one of "trace"`],
    ["recently_removed", "10", "an integer from 0"],
    ["recently_removed", -1, "an integer from 0"],
    ["max_waiters", 0, "an integer from 1"],
    ["metadata_backend", true, `one of "etcd"`],
  ])("refuses %s of the wrong type or range (%j)", (key, value, expected) => {
    expectFileValueRefused(key, value, expected);
  });
});

describe("unknown keys", () => {
  it("warns about each unknown key in the file instead of failing", () => {
    const path = configFile({
      prefill_url: "10.0.0.1:13003", global_segment_size: 3355443200, master_server_address: "10.0.0.1:50051",
    });
    const config = load({ config: path });
    expect(config.warnings).toEqual([
      `${path}: ignoring unknown key "global_segment_size"`,
      `${path}: ignoring unknown key "master_server_address"`,
    ]);
    expect(config.prefillUrl).toEqual({ host: "10.0.0.1", port: 13003 });
  });

  it("suggests the snake_case key for a camelCase or kebab-case spelling", () => {
    const path = configFile({ kvBufferSize: "2GiB", "lease-ttl-ms": 5 });
    const config = load({ config: path });
    expect(config.kvBufferSize).toBe(2 ** 30);
    expect(config.warnings).toEqual([
      `${path}: ignoring unknown key "kvBufferSize" (did you mean "kv_buffer_size"?)`,
      `${path}: ignoring unknown key "lease-ttl-ms" (did you mean "lease_ttl_ms"?)`,
    ]);
  });

  it("does not let a __proto__ key in the file change anything", () => {
    const config = loadFile('{"__proto__": {"protocol": "rdma"}}');
    expect(config.protocol).toBe("tcp");
    expect(config.warnings).toEqual([expect.stringContaining(`"__proto__"`)]);
  });
});
