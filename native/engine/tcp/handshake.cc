#include "engine/tcp/handshake.h"

#include <cstring>

namespace kvferry {
namespace tcp {

namespace {

constexpr char kPurpose[] = "kvferry/v1 data-plane";
constexpr char kServerLabel[] = "server";
constexpr char kClientLabel[] = "client";

crypto::Digest Proof(const HandshakeKey& key, const char* label, const Nonce& first, const Nonce& second) {
  crypto::HmacSha256 mac(key.data(), key.size());
  mac.Update(label, std::strlen(label));
  mac.Update(first.data(), first.size());
  mac.Update(second.data(), second.size());
  return mac.Final();
}

void AppendFrame(std::vector<uint8_t>* out, const FrameHeader& h, const uint8_t* payload, size_t n) {
  const size_t at = out->size();
  out->resize(at + kHeaderSize + n);
  EncodeHeader(h, out->data() + at);
  if (n > 0) std::memcpy(out->data() + at + kHeaderSize, payload, n);
}

/** The fields a handshake frame must leave zero, and a well-formed header of `type`. */
bool IsHandshakeFrame(const FrameHeader& h, FrameType type) {
  return IsWellFormed(h) && h.type == type && h.status == 0 && h.request_id == 0 && h.handle == 0;
}

}  // namespace

HandshakeKey DeriveDataPlaneKey(const std::string& token) {
  return crypto::HmacSha256Of(token.data(), token.size(), kPurpose, sizeof(kPurpose) - 1);
}

crypto::Digest ServerProof(const HandshakeKey& key, const Nonce& nonce_c, const Nonce& nonce_s) {
  return Proof(key, kServerLabel, nonce_c, nonce_s);
}

crypto::Digest ClientProof(const HandshakeKey& key, const Nonce& nonce_s, const Nonce& nonce_c) {
  return Proof(key, kClientLabel, nonce_s, nonce_c);
}

// ---- server ----------------------------------------------------------------------------

ServerHandshake::ServerHandshake(const HandshakeKey& key, uint64_t slice_bytes, const Nonce& nonce_s)
    : key_(key), slice_bytes_(slice_bytes), nonce_s_(nonce_s) {}

size_t ServerHandshake::want() const {
  switch (phase_) {
    case Phase::kHelloHeader:
    case Phase::kProofHeader:
      return kHeaderSize - have_;
    case Phase::kHelloNonce:
      return kNonceBytes - have_;
    case Phase::kProof:
      return kProofBytes - have_;
    case Phase::kDone:
      return 0;
  }
  return 0;
}

void ServerHandshake::Feed(const uint8_t* data, size_t n) {
  while (n > 0 && phase_ != Phase::kDone) {
    const size_t take = n < want() ? n : want();
    std::memcpy(buf_ + have_, data, take);
    have_ += take;
    received_ += take;
    data += take;
    n -= take;
    if (want() == 0) {
      Step();
      have_ = 0;
    }
  }
}

void ServerHandshake::Step() {
  switch (phase_) {
    case Phase::kHelloHeader: {
      const FrameHeader h = DecodeHeader(buf_);
      if (h.magic == kMagic && h.version != kVersion) return Refuse(Refusal::kVersion, Code::kNotSupported);
      if (!IsHandshakeFrame(h, FrameType::kHello) || h.length != kNonceBytes) {
        return Refuse(Refusal::kMalformed, Code::kOk);
      }
      phase_ = Phase::kHelloNonce;
      return;
    }
    case Phase::kHelloNonce: {
      std::memcpy(nonce_c_.data(), buf_, kNonceBytes);
      const crypto::Digest proof = ServerProof(key_, nonce_c_, nonce_s_);
      uint8_t payload[kNonceBytes + kProofBytes];
      std::memcpy(payload, nonce_s_.data(), kNonceBytes);
      std::memcpy(payload + kNonceBytes, proof.data(), kProofBytes);
      FrameHeader challenge;
      challenge.type = FrameType::kChallenge;
      challenge.length = sizeof(payload);
      Queue(challenge, payload, sizeof(payload));
      phase_ = Phase::kProofHeader;
      return;
    }
    case Phase::kProofHeader: {
      const FrameHeader h = DecodeHeader(buf_);
      if (!IsHandshakeFrame(h, FrameType::kProof) || h.length != kProofBytes || h.offset != 0) {
        return Refuse(Refusal::kMalformed, Code::kOk);
      }
      phase_ = Phase::kProof;
      return;
    }
    case Phase::kProof: {
      const crypto::Digest expected = ClientProof(key_, nonce_s_, nonce_c_);
      if (!crypto::DigestEquals(expected.data(), buf_, kProofBytes)) {
        return Refuse(Refusal::kWrongProof, Code::kPermissionDenied);
      }
      FrameHeader ok;
      ok.type = FrameType::kHelloOk;
      ok.offset = slice_bytes_;
      Queue(ok, nullptr, 0);
      phase_ = Phase::kDone;
      state_ = State::kAccepted;
      return;
    }
    case Phase::kDone:
      return;
  }
}

void ServerHandshake::Refuse(Refusal why, Code reply) {
  phase_ = Phase::kDone;
  state_ = State::kRefused;
  refusal_ = why;
  outbox_.clear();  // a refused peer gets the verdict and nothing else
  if (reply == Code::kOk) return;  // malformed: no reply, just close
  FrameHeader h;
  h.type = FrameType::kHelloRefused;
  h.status = static_cast<uint32_t>(reply);
  Queue(h, nullptr, 0);
}

void ServerHandshake::Queue(const FrameHeader& h, const uint8_t* payload, size_t n) {
  AppendFrame(&outbox_, h, payload, n);
}

// ---- client ----------------------------------------------------------------------------

ClientHandshake::ClientHandshake(const HandshakeKey& key, uint64_t slice_bytes, const Nonce& nonce_c)
    : key_(key), slice_bytes_(slice_bytes), nonce_c_(nonce_c) {}

std::vector<uint8_t> ClientHandshake::Hello() const {
  FrameHeader h;
  h.type = FrameType::kHello;
  h.offset = slice_bytes_;
  h.length = kNonceBytes;
  std::vector<uint8_t> out;
  AppendFrame(&out, h, nonce_c_.data(), nonce_c_.size());
  return out;
}

Status ClientHandshake::Refused(const FrameHeader& h) {
  if (h.magic != kMagic) return Status::Ok();
  if (h.version != kVersion) {
    return Status(Code::kNotSupported, "speaks data-plane wire version " + std::to_string(h.version) +
                                           ", this engine speaks version " + std::to_string(kVersion));
  }
  if (IsWellFormed(h) && h.type == FrameType::kHelloRefused) {
    if (h.status == static_cast<uint32_t>(Code::kNotSupported)) {
      return Status(Code::kNotSupported, "refused the handshake: it does not speak data-plane wire version " +
                                             std::to_string(kVersion));
    }
    return Status(Code::kPermissionDenied, "refused the handshake (our proof of the cluster token did not match)");
  }
  return Status::Ok();
}

Status ClientHandshake::OnChallengeHeader(const uint8_t header[kHeaderSize]) const {
  const FrameHeader h = DecodeHeader(header);
  Status refused = Refused(h);
  if (!refused.ok()) return refused;
  if (!IsHandshakeFrame(h, FrameType::kChallenge) || h.length != kChallengeBytes || h.offset != 0) {
    return Status(Code::kUnavailable, "answered the HELLO with a malformed frame");
  }
  return Status::Ok();
}

Status ClientHandshake::OnChallenge(const uint8_t payload[kChallengeBytes], std::vector<uint8_t>* proof_frame) {
  proof_frame->clear();
  Nonce nonce_s;
  std::memcpy(nonce_s.data(), payload, kNonceBytes);
  const crypto::Digest expected = ServerProof(key_, nonce_c_, nonce_s);
  if (!crypto::DigestEquals(expected.data(), payload + kNonceBytes, kProofBytes)) {
    return Status(Code::kPermissionDenied,
                  "could not prove the cluster token (a different token, or not a kvferry peer); nothing was sent");
  }
  const crypto::Digest proof = ClientProof(key_, nonce_s, nonce_c_);
  FrameHeader h;
  h.type = FrameType::kProof;
  h.length = kProofBytes;
  AppendFrame(proof_frame, h, proof.data(), proof.size());
  return Status::Ok();
}

Status ClientHandshake::OnVerdict(const uint8_t header[kHeaderSize], uint64_t* server_slice) const {
  const FrameHeader h = DecodeHeader(header);
  Status refused = Refused(h);
  if (!refused.ok()) return refused;
  if (!IsHandshakeFrame(h, FrameType::kHelloOk) || h.length != 0 || h.offset == 0) {
    return Status(Code::kUnavailable, "answered the handshake with a malformed frame");
  }
  *server_slice = h.offset;
  return Status::Ok();
}

}  // namespace tcp
}  // namespace kvferry
