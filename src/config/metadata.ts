// Where daemons publish and find each other: mooncake.json's `metadata_server`, and the
// `metadata_backend` that, when present, must name the same kind of server.
import { accept, hostPortFromText, oneOf, refuse, type Parsed, type Parser } from "./parse.js";

export type MetadataBackend = "embedded" | "etcd" | "redis" | "http";

export interface MetadataConfig {
  backend: MetadataBackend;
  /** As given in the file; absent for the embedded default. */
  server?: string;
}

const SERVER_EXPECTED =
  `"P2PHANDSHAKE", HOST:PORT or etcd://HOST:PORT[,HOST:PORT...] (etcd), ` +
  `redis://HOST:PORT (redis), or http://HOST[:PORT]/PATH (http)`;

function isHostPortList(text: string): boolean {
  return text.split(",").every((member) => hostPortFromText(member) !== undefined);
}

function classify(server: string): MetadataBackend | undefined {
  if (server.toUpperCase() === "P2PHANDSHAKE") return "embedded";
  const scheme = /^([a-z][a-z0-9+.-]*):\/\/(.*)$/i.exec(server);
  if (!scheme) return isHostPortList(server) ? "etcd" : undefined;
  const [, name = "", rest = ""] = scheme;
  switch (name.toLowerCase()) {
    case "etcd":
      return isHostPortList(rest) ? "etcd" : undefined;
    case "redis": {
      // An optional /DB after the address, as redis URLs allow.
      const [address = "", db] = rest.split("/", 2);
      return hostPortFromText(address) && (db === undefined || /^\d{0,9}$/.test(db)) ? "redis" : undefined;
    }
    case "http":
    case "https":
      return URL.canParse(server) && new URL(server).hostname !== "" ? "http" : undefined;
    default:
      return undefined;
  }
}

/** `metadata_server`: the kind of server is read off its form. */
export const metadataServer: Parser<MetadataConfig> = (raw): Parsed<MetadataConfig> => {
  if (typeof raw !== "string") return refuse(SERVER_EXPECTED);
  const backend = classify(raw);
  if (!backend) return refuse(SERVER_EXPECTED);
  return accept({ backend, server: raw });
};

/** `metadata_backend`: mooncake spellings of the four kinds. */
export const metadataBackend: Parser<MetadataBackend> = oneOf<MetadataBackend>(
  {
    etcd: "etcd",
    redis: "redis",
    http: "http",
    https: "http",
    p2p: "embedded",
    p2phandshake: "embedded",
    embedded: "embedded",
  },
  `one of "etcd", "redis", "http", "p2p" (or "P2PHANDSHAKE", "embedded")`,
);
