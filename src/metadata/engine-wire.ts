// An engine's role as the wire spells it (kvferry.v1.EngineRole) and as records do.
import { EngineRole as WireEngineRole } from "../gen/kvferry/v1/node.js";
import type { EngineRole } from "./node.js";

const WIRE_ROLES: Record<EngineRole, WireEngineRole> = {
  prefill: WireEngineRole.ENGINE_ROLE_PREFILL,
  decode: WireEngineRole.ENGINE_ROLE_DECODE,
  both: WireEngineRole.ENGINE_ROLE_BOTH,
};

export function toWireEngineRole(role: EngineRole): WireEngineRole {
  return WIRE_ROLES[role];
}

/** An engine role off the wire; undefined for UNSPECIFIED or a value this version does not know. */
export function fromWireEngineRole(role: WireEngineRole): EngineRole | undefined {
  return (Object.keys(WIRE_ROLES) as EngineRole[]).find((r) => WIRE_ROLES[r] === role);
}
