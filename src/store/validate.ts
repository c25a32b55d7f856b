// Checks of caller-supplied names and numbers. Field names are the API's (snake_case),
// so an error says exactly which field of the request was wrong.
import { InvalidArgumentError } from "../errors.js";

export const MAX_TRANSFER_ID_LENGTH = 256;
export const MAX_PART_NAME_LENGTH = 128;
export const MAX_LEASE_TTL_MS = 7 * 24 * 3600 * 1000;

const PRINTABLE = /^[\x21-\x7e]+$/;

function checkName(field: string, value: unknown, max: number): string {
  if (typeof value !== "string" || value.length === 0) {
    throw new InvalidArgumentError(field, "must not be empty");
  }
  if (value.length > max) {
    throw new InvalidArgumentError(field, `is ${value.length} characters long, at most ${max} allowed`);
  }
  if (!PRINTABLE.test(value)) {
    throw new InvalidArgumentError(field, `${JSON.stringify(value)} must be printable ASCII without spaces`);
  }
  return value;
}

export function checkTransferId(value: unknown, field = "transfer_id"): string {
  return checkName(field, value, MAX_TRANSFER_ID_LENGTH);
}

export function checkPartName(value: unknown, field = "part"): string {
  return checkName(field, value, MAX_PART_NAME_LENGTH);
}

/** A lease: absent (use the default) or 1 ms .. 7 days. */
export function checkLeaseTtl(value: number | undefined, field = "lease_ttl_ms"): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isInteger(value) || value <= 0 || value > MAX_LEASE_TTL_MS) {
    throw new InvalidArgumentError(field, `${value} must be a whole number of milliseconds from 1 to ${MAX_LEASE_TTL_MS}`);
  }
  return value;
}

/** A wait: absent (use the default) or 0 (do not wait) up to 2^31-1 ms. */
export function checkWait(value: number | undefined, field = "wait_ms"): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isInteger(value) || value < 0 || value > 0x7fffffff) {
    throw new InvalidArgumentError(field, `${value} must be a whole number of milliseconds, 0 or more`);
  }
  return value;
}

export function checkPartList(values: readonly unknown[], field = "parts"): string[] {
  const seen = new Set<string>();
  return values.map((v, i) => {
    const name = checkPartName(v, `${field}[${i}]`);
    if (seen.has(name)) throw new InvalidArgumentError(`${field}[${i}]`, `${JSON.stringify(name)} is named twice`);
    seen.add(name);
    return name;
  });
}

/** A consume hold's lease: absent (the daemon's) or 1 ms up to the daemon's consume_lease_ms. */
export function checkConsumeLease(value: number | undefined, max: number, field = "consume_lease_ms"): number {
  if (value === undefined) return max;
  if (!Number.isInteger(value) || value <= 0 || value > max) {
    throw new InvalidArgumentError(
      field,
      `${value} must be a whole number of milliseconds from 1 to ${max} (this daemon's consume_lease_ms)`,
    );
  }
  return value;
}
