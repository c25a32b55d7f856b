// Moving entries between daemons: the initiator's side (push, pull) and the other
// side's bookkeeping (reservations), over the native engine. The control plane is
// batched: one round trip per step for a whole BatchTransfer, so thousands of small
// entries cost a few RPCs, not thousands.
//
// PUSH  initiator: lease the sealed entries → peer PrepareReceive (room + handles) →
//       engine writes → peer CommitReceive (the peer seals) → drop the local copies.
// PULL  initiator: peer PrepareSend (leases + handles) → reserve room here → engine
//       reads → commit + seal here → peer FinishSend (the peer drops its copies).
// Every batch of reservations carries a timer: if the other daemon dies, its half of the work
// is undone at the deadline (plus a grace period) and no pool byte leaks.
// Each entry succeeds or fails on its own; one failure never fails the batch.
//
// The roles live apart: transfer-initiator.ts runs a batch, transfer-reservations.ts holds
// room or copies for a peer's batch behind one handle, batch-plan.ts lays the batch's
// entries along that handle as engine ops and maps them back to entries. This is the
// daemon's one handle on both sides.
import type {
  CommitReceiveResponse,
  PrepareReceiveRequest,
  PrepareReceiveResponse,
  PrepareSendRequest,
  PrepareSendResponse,
} from "../gen/kvferry/v1/peer.js";
import { TransferInitiator, type InitiatorOptions, type TransferOutcome } from "./transfer-initiator.js";
import { Reservations } from "./transfer-reservations.js";

export type { Mode, TransferOutcome } from "./transfer-initiator.js";
export { MAX_BATCH } from "./transfer-reservations.js";

/** What the initiator needs is what both halves need (the reservations use a part of it). */
export type TransfersOptions = InitiatorOptions;

export class Transfers {
  readonly #initiator: TransferInitiator;
  readonly #reservations: Reservations;

  constructor(o: TransfersOptions) {
    this.#initiator = new TransferInitiator(o);
    this.#reservations = new Reservations(o);
  }

  /** Reservations held for peers now, for tests and status. */
  get reservations(): { receives: number; sends: number } {
    return this.#reservations.held;
  }

  // ---- the initiator (transfer-initiator.ts) --------------------------------------

  batch(...args: Parameters<TransferInitiator["batch"]>): Promise<TransferOutcome[]> {
    return this.#initiator.batch(...args);
  }

  pullOnce(transferId: string, source: string): Promise<void> {
    return this.#initiator.pullOnce(transferId, source);
  }

  // ---- the other side (transfer-reservations.ts) ----------------------------------

  prepareReceive(req: PrepareReceiveRequest): Promise<PrepareReceiveResponse> {
    return this.#reservations.prepareReceive(req);
  }

  commitReceive(ids: readonly string[]): Promise<CommitReceiveResponse> {
    return this.#reservations.commitReceive(ids);
  }

  abortReceive(ids: readonly string[]): Promise<void> {
    return this.#reservations.abortReceive(ids);
  }

  prepareSend(req: PrepareSendRequest): Promise<PrepareSendResponse> {
    return this.#reservations.prepareSend(req);
  }

  finishSend(completed: readonly string[], failed: readonly string[], releaseSource: boolean): Promise<void> {
    return this.#reservations.finishSend(completed, failed, releaseSource);
  }

  /** Undoes every reservation (shutdown). */
  close(): Promise<void> {
    return this.#reservations.close();
  }
}
