// The data plane's handshake (wire.h, version 2) as two byte-driven state machines with
// no sockets: the server's acceptor and the client's connection feed them the bytes they
// receive and send the bytes they produce, and the fuzz target drives them from raw input.
//
// Neither machine reads past its handshake: want() says exactly how many bytes the next
// step needs, so bytes a peer sends after the handshake stay in the socket for the
// serving code. Nonces come from the caller (crypto::RandomBytes in production, fixed in
// tests and fuzzing).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/crypto/hmac_sha256.h"
#include "engine/status.h"
#include "engine/tcp/wire.h"

namespace kvferry {
namespace tcp {

using Nonce = std::array<uint8_t, kNonceBytes>;
using HandshakeKey = crypto::Digest;

/** K = HMAC-SHA256(key = token, msg = "kvferry/v1 data-plane"). */
HandshakeKey DeriveDataPlaneKey(const std::string& token);
/** HMAC(K, "server" || nonce_c || nonce_s). */
crypto::Digest ServerProof(const HandshakeKey& key, const Nonce& nonce_c, const Nonce& nonce_s);
/** HMAC(K, "client" || nonce_s || nonce_c). */
crypto::Digest ClientProof(const HandshakeKey& key, const Nonce& nonce_s, const Nonce& nonce_c);

/**
 * The server's side: HELLO in → CHALLENGE out → PROOF in → HELLO_OK or HELLO_REFUSED out.
 * Feed it at most want() bytes at a time; send (and clear) outbox() whenever it is not
 * empty. Terminal states: kAccepted (send the outbox, then serve requests) and kRefused
 * (send what the outbox holds, if anything, then close).
 */
class ServerHandshake {
 public:
  enum class State { kRunning, kAccepted, kRefused };
  enum class Refusal { kNone, kMalformed, kVersion, kWrongProof };

  ServerHandshake(const HandshakeKey& key, uint64_t slice_bytes, const Nonce& nonce_s);

  size_t want() const;
  void Feed(const uint8_t* data, size_t n);
  State state() const { return state_; }
  Refusal refusal() const { return refusal_; }
  std::vector<uint8_t>& outbox() { return outbox_; }
  bool has_output() const { return !outbox_.empty(); }
  /** Whether any byte has been fed (a connection that sent none was not refused anything). */
  bool received_any() const { return received_ > 0; }

 private:
  enum class Phase { kHelloHeader, kHelloNonce, kProofHeader, kProof, kDone };

  void Step();
  void Refuse(Refusal why, Code reply);
  void Queue(const FrameHeader& h, const uint8_t* payload, size_t n);

  const HandshakeKey key_;
  const uint64_t slice_bytes_;
  const Nonce nonce_s_;
  Nonce nonce_c_{};
  Phase phase_ = Phase::kHelloHeader;
  State state_ = State::kRunning;
  Refusal refusal_ = Refusal::kNone;
  uint8_t buf_[kHeaderSize + kNonceBytes];  // the frame part being collected
  size_t have_ = 0;
  uint64_t received_ = 0;
  std::vector<uint8_t> outbox_;
};

/**
 * The client's side, one call per frame received. Statuses name what went wrong without
 * the peer (the caller adds it): kPermissionDenied when the server cannot prove the
 * token or refuses ours, kNotSupported for another wire version, kUnavailable for a
 * malformed frame.
 */
class ClientHandshake {
 public:
  /** Payload bytes of a CHALLENGE. */
  static constexpr size_t kChallengeBytes = kNonceBytes + kProofBytes;

  ClientHandshake(const HandshakeKey& key, uint64_t slice_bytes, const Nonce& nonce_c);

  /** HELLO: header and nonce_c. */
  std::vector<uint8_t> Hello() const;
  /** The first reply's header: OK when it announces a CHALLENGE (kChallengeBytes follow). */
  Status OnChallengeHeader(const uint8_t header[kHeaderSize]) const;
  /**
   * The CHALLENGE payload: checks server_proof; only then fills `*proof_frame` with the
   * PROOF to send. On failure nothing is to be sent.
   */
  Status OnChallenge(const uint8_t payload[kChallengeBytes], std::vector<uint8_t>* proof_frame);
  /** The verdict's header: OK (HELLO_OK) with the server's slice size in `*server_slice`. */
  Status OnVerdict(const uint8_t header[kHeaderSize], uint64_t* server_slice) const;

 private:
  /** A HELLO_REFUSED, or a frame of another version, as a status; OK when neither. */
  static Status Refused(const FrameHeader& h);

  const HandshakeKey key_;
  const uint64_t slice_bytes_;
  const Nonce nonce_c_;
};

}  // namespace tcp
}  // namespace kvferry
