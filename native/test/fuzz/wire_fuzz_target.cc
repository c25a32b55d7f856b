// Fuzz target for the data plane's parsers: the frame header decoder and its checks
// (wire.h) and both handshake state machines (handshake.h), driven from raw bytes with
// no sockets. The libFuzzer entry point; built either with clang -fsanitize=fuzzer or
// with g++ and fuzz_driver.cc (what scripts/test-native.sh runs).
//
// Input: byte 0 picks the mode and how the stream is cut into reads; the rest is what
// a peer sends. Every invariant below traps on failure (a crash to the fuzzer).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "engine/tcp/handshake.h"
#include "engine/tcp/wire.h"

namespace {

using kvferry::tcp::ClientHandshake;
using kvferry::tcp::FrameHeader;
using kvferry::tcp::kHeaderSize;
using kvferry::tcp::kNonceBytes;
using kvferry::tcp::kProofBytes;
using kvferry::tcp::Nonce;
using kvferry::tcp::ServerHandshake;

constexpr uint64_t kSlice = 1 << 20;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

// The fixed nonces the corpus was made for (corpus/README.md says how the seeds were made).
Nonce FixedNonce(uint8_t start) {
  Nonce n;
  for (size_t i = 0; i < n.size(); ++i) n[i] = static_cast<uint8_t>(start + 3 * i);
  return n;
}

const kvferry::tcp::HandshakeKey& Key() {
  static const kvferry::tcp::HandshakeKey key = kvferry::tcp::DeriveDataPlaneKey("fuzz-token");
  return key;
}

void FuzzHeaders(const uint8_t* p, size_t n) {
  for (size_t at = 0; at + kHeaderSize <= n && at < 64 * 8; at += 8) {
    const FrameHeader h = kvferry::tcp::DecodeHeader(p + at);
    uint8_t again[kHeaderSize];
    kvferry::tcp::EncodeHeader(h, again);
    Check(std::memcmp(again, p + at, kHeaderSize) == 0);  // every field is kept verbatim
    const bool request = h.type == kvferry::tcp::FrameType::kWrite || h.type == kvferry::tcp::FrameType::kRead;
    if (kvferry::tcp::IsAcceptableRequest(h, kSlice)) {
      Check(kvferry::tcp::IsWellFormed(h) && request && h.length <= kSlice && h.status == 0);
    }
    if (kvferry::tcp::IsWellFormed(h)) Check(h.magic == kvferry::tcp::kMagic && h.version == kvferry::tcp::kVersion);
  }
}

/** Feeds `stream` to a server handshake in reads cut by `cuts`; returns the machine. */
ServerHandshake RunServer(const uint8_t* stream, size_t n, uint8_t cuts, std::vector<uint8_t>* sent) {
  ServerHandshake server(Key(), kSlice, FixedNonce(101));
  size_t at = 0;
  uint32_t x = cuts * 2654435761u + 1;
  while (at < n && server.state() == ServerHandshake::State::kRunning) {
    const size_t want = server.want();
    Check(want > 0 && want <= kHeaderSize + kNonceBytes);
    x = x * 1103515245u + 12345u;
    size_t take = 1 + (x >> 16) % want;
    if (take > n - at) take = n - at;
    server.Feed(stream + at, take);
    at += take;
    std::vector<uint8_t>& out = server.outbox();
    sent->insert(sent->end(), out.begin(), out.end());
    out.clear();
  }
  if (server.state() != ServerHandshake::State::kRunning) Check(server.want() == 0);
  return server;
}

void FuzzServer(const uint8_t* p, size_t n, uint8_t cuts) {
  std::vector<uint8_t> sent;
  ServerHandshake server = RunServer(p, n, cuts, &sent);
  const size_t hello = kHeaderSize + kNonceBytes;
  const size_t proof_at = hello + kHeaderSize;
  if (server.state() == ServerHandshake::State::kAccepted) {
    // Accepted only for the proof of this very exchange.
    Check(n >= proof_at + kProofBytes);
    Nonce nonce_c;
    std::memcpy(nonce_c.data(), p + kHeaderSize, kNonceBytes);
    const auto expected = kvferry::tcp::ClientProof(Key(), FixedNonce(101), nonce_c);
    Check(std::memcmp(expected.data(), p + proof_at, kProofBytes) == 0);
    Check(sent.size() == kHeaderSize + 64 + kHeaderSize);  // CHALLENGE, HELLO_OK
  }
  if (server.state() == ServerHandshake::State::kRefused) {
    Check(server.refusal() != ServerHandshake::Refusal::kNone);
  }
  // The server never sends more than a CHALLENGE and a verdict.
  Check(sent.size() <= kHeaderSize + 64 + kHeaderSize);
}

void FuzzClient(const uint8_t* p, size_t n) {
  ClientHandshake client(Key(), kSlice, FixedNonce(7));
  const size_t need = kHeaderSize + ClientHandshake::kChallengeBytes + kHeaderSize;
  uint8_t buf[need] = {0};
  std::memcpy(buf, p, n < need ? n : need);
  std::vector<uint8_t> proof;
  if (client.OnChallengeHeader(buf).ok()) {
    const bool ok = client.OnChallenge(buf + kHeaderSize, &proof).ok();
    Check(ok == !proof.empty());  // a proof leaves only after the server proved the token
    if (ok) {
      Nonce nonce_s;
      std::memcpy(nonce_s.data(), buf + kHeaderSize, kNonceBytes);
      const auto expected = kvferry::tcp::ServerProof(Key(), FixedNonce(7), nonce_s);
      Check(std::memcmp(expected.data(), buf + kHeaderSize + kNonceBytes, kProofBytes) == 0);
    }
  }
  uint64_t slice = 0;
  if (client.OnVerdict(buf + kHeaderSize + ClientHandshake::kChallengeBytes, &slice).ok()) Check(slice > 0);
}

/** An honest client and the server, with at most one byte of the client's stream flipped. */
void FuzzExchange(const uint8_t* p, size_t n) {
  ClientHandshake client(Key(), kSlice, FixedNonce(7));
  std::vector<uint8_t> stream = client.Hello();
  std::vector<uint8_t> sent;
  ServerHandshake server(Key(), kSlice, FixedNonce(101));
  size_t flip_at = n >= 2 ? (p[0] | (p[1] << 8)) % 160 : 1000;
  const uint8_t flip = n >= 3 ? p[2] : 0;
  auto feed = [&](std::vector<uint8_t> bytes, size_t offset) {
    if (flip_at >= offset && flip_at < offset + bytes.size()) bytes[flip_at - offset] ^= flip;
    server.Feed(bytes.data(), bytes.size());
    sent.insert(sent.end(), server.outbox().begin(), server.outbox().end());
    server.outbox().clear();
  };
  feed(stream, 0);
  bool client_ok = false;
  if (sent.size() == kHeaderSize + 64 && client.OnChallengeHeader(sent.data()).ok()) {
    std::vector<uint8_t> proof;
    if (client.OnChallenge(sent.data() + kHeaderSize, &proof).ok()) {
      feed(proof, stream.size());
      uint64_t slice = 0;
      client_ok = sent.size() == kHeaderSize * 2 + 64 && client.OnVerdict(sent.data() + kHeaderSize + 64, &slice).ok();
      if (client_ok) Check(slice == kSlice);
    }
  }
  const bool untouched = flip == 0 || flip_at >= stream.size() + kHeaderSize + kProofBytes;
  if (untouched) Check(client_ok && server.state() == ServerHandshake::State::kAccepted);
  // A flipped nonce or proof byte never gets through. (A flip in the HELLO's slice-size
  // field, offset 32..39, is not covered by the proofs and may.)
  const bool in_nonce = flip_at >= kHeaderSize && flip_at < kHeaderSize + kNonceBytes;
  const bool in_proof = flip_at >= 2 * kHeaderSize + kNonceBytes && flip_at < 2 * kHeaderSize + kNonceBytes + kProofBytes;
  if (flip != 0 && in_proof) Check(server.state() != ServerHandshake::State::kAccepted);
  if (flip != 0 && in_nonce) Check(!client_ok);  // the server's proof covers the nonce it saw
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  const uint8_t* p = data + 1;
  const size_t n = size - 1;
  FuzzHeaders(p, n);
  switch (mode & 3) {
    case 0:
      FuzzServer(p, n, mode);
      break;
    case 1:
      FuzzClient(p, n);
      break;
    case 2:
      FuzzExchange(p, n);
      break;
    default:
      FuzzServer(p, n, mode);
      FuzzClient(p, n);
      break;
  }
  return 0;
}
