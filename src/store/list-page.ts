// One page of a listing of the indexed entries, in id order. A page token is the
// base64url of the last id of the previous page; any other token is refused.
import { InvalidArgumentError } from "../errors.js";
import type { Entry, EntryInfo, EntryState } from "./entry.js";

export interface ListOptions {
  pageSize?: number;
  pageToken?: string;
  state?: EntryState;
}

export const DEFAULT_PAGE_SIZE = 100;
export const MAX_PAGE_SIZE = 1000;

/** The page of `entries` (by transfer id) that `options` asks for. */
export function listPage(entries: ReadonlyMap<string, Entry>, options: ListOptions = {}): { entries: EntryInfo[]; nextPageToken: string } {
  const pageSize = options.pageSize || DEFAULT_PAGE_SIZE;
  if (!Number.isInteger(pageSize) || pageSize < 0 || pageSize > MAX_PAGE_SIZE) {
    throw new InvalidArgumentError("page_size", `${options.pageSize} must be from 0 to ${MAX_PAGE_SIZE}`);
  }
  let after = "";
  if (options.pageToken) {
    after = Buffer.from(options.pageToken, "base64url").toString("utf8");
    const reissued = Buffer.from(after, "utf8").toString("base64url");
    if (after.length === 0 || reissued !== options.pageToken || !/^[\x21-\x7e]+$/.test(after)) {
      throw new InvalidArgumentError("page_token", `${JSON.stringify(options.pageToken)} is not a token this daemon issued`);
    }
  }
  const ids = [...entries.keys()].filter((id) => id > after).sort();
  const now = Date.now();
  const page: EntryInfo[] = [];
  let last = "";
  for (const id of ids) {
    const entry = entries.get(id)!;
    if (options.state !== undefined && entry.state !== options.state) continue;
    if (page.length === pageSize) {
      return { entries: page, nextPageToken: Buffer.from(last, "utf8").toString("base64url") };
    }
    page.push(entry.info(now));
    last = id;
  }
  return { entries: page, nextPageToken: "" };
}
