// The UCX transport's messages: UCP active messages (AM) whose headers are these
// fixed-size little structs (both ends run this engine on the same architecture; the
// version byte in HELLO guards the layout).
//
// A connection (one rail of one peer) opens with a challenge-response that proves both
// ends know the cluster token before this engine serves any memory:
//
//   initiator → target   HELLO      {version, cookie, nonce_c}             (sent with REPLY)
//   target → initiator   CHALLENGE  {cookie, pending, nonce_s, proof_s}    (on the reply ep)
//   initiator → target   PROOF      {pending, proof_c}                     (sent with REPLY)
//   target → initiator   WELCOME    {cookie, session}                      (on the reply ep)
//   (or REFUSED {cookie, code} instead of CHALLENGE / WELCOME)
//
// Then every request names the session (16 random bytes the target chose):
//
//   WRITE {session, request, handle, offset, length} + the payload, always rendezvous: the
//     target's handler checks the session and the handle's range before any byte moves and
//     refuses by returning a status, which completes the initiator's send with it.
//   READ  {session, request, handle, offset, length}   (sent with REPLY, as CONFIRM is)
//   DATA  {session, request, code} + the payload (rendezvous), target → initiator: the
//     initiator receives it straight into the op's local extents, or refuses an unknown
//     request (cancelled meanwhile) so that nothing is written.
//   CONFIRM {session, request} once a WRITE's send completed, answered CONFIRMED {session,
//     request, code}: a rendezvous send can complete before the target holds every byte
//     (UCX's put-based protocols), so a WRITE is done only when the target says its bytes
//     landed (kStillLanding: ask again).
//
// The target keeps no endpoint to an initiator: every answer (CHALLENGE, WELCOME, DATA,
// CONFIRMED) goes on the reply endpoint from within the callback of the message it answers
// (requests are sent with UCP_AM_SEND_FLAG_REPLY), so an initiator that dies leaves no
// connection behind on the target.
//
// kvferry hands out no remote key to the pool: a peer reaches it only through handles the
// daemon issued, bounds-checked on every request, as over TCP. (On a NIC, UCX's rendezvous
// itself gives the peer a key to the pages of the transfer it moves; no memory handle of
// ours goes with a request, so that key never covers the pool as a whole.)
#pragma once

#include <array>
#include <cstdint>

namespace kvferry {
namespace ucx {

constexpr uint8_t kWireVersion = 1;
constexpr size_t kNonceBytes = 32;
constexpr size_t kProofBytes = 32;
constexpr size_t kSessionBytes = 16;

using Nonce = std::array<uint8_t, kNonceBytes>;
using Proof = std::array<uint8_t, kProofBytes>;
using SessionId = std::array<uint8_t, kSessionBytes>;

enum AmId : uint16_t {
  kAmHello = 1,
  kAmChallenge = 2,
  kAmProof = 3,
  kAmWelcome = 4,
  kAmRefused = 5,
  kAmWrite = 6,
  kAmRead = 7,
  kAmData = 8,
  kAmConfirm = 9,
  kAmConfirmed = 10,
};

/** CONFIRMED's code while a WRITE's bytes are still landing (ask again). */
constexpr uint32_t kStillLanding = 0xffff;
/**
 * DATA's or CONFIRMED's code for a request naming a session the target does not know (it
 * dropped it, or restarted): the initiator fails that rail and greets again. A WRITE's
 * send completes with UCS_ERR_NOT_CONNECTED for the same reason.
 */
constexpr uint32_t kUnknownSession = 0xfffe;

#pragma pack(push, 1)
struct HelloHeader {
  uint8_t version;
  uint64_t cookie;
  Nonce nonce_c;
};
struct ChallengeHeader {
  uint64_t cookie;
  uint64_t pending;
  Nonce nonce_s;
  Proof proof_s;
};
struct ProofHeader {
  uint64_t pending;
  Proof proof_c;
};
struct WelcomeHeader {
  uint64_t cookie;
  SessionId session;
};
struct RefusedHeader {
  uint64_t cookie;
  uint32_t code;
};
struct RequestHeader {
  SessionId session;
  uint64_t request;
  uint64_t handle;
  uint64_t offset;
  uint64_t length;
};
struct DataHeader {
  SessionId session;
  uint64_t request;
  uint32_t code;
};
#pragma pack(pop)

}  // namespace ucx
}  // namespace kvferry
