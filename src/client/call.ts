// One grpc-js callback call as a promise, failing with the kvferry error of its status.
import type { ServiceError } from "@grpc/grpc-js";
import { errorFromServiceError } from "../grpc-errors.js";

export function call<T>(start: (cb: (err: ServiceError | null, res?: T) => void) => unknown): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    start((err, res) => (err ? reject(errorFromServiceError(err)) : resolve(res as T)));
  });
}
