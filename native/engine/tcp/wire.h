// The kvferry TCP data-plane wire format (version 2).
//
// A connection carries frames. Every frame starts with a fixed 48-byte header, all
// integers little-endian:
//
//   off size field
//     0    4 magic       0x5246564B ("KVFR" as bytes)
//     4    1 version     2
//     5    1 type        FrameType below
//     6    2 flags       0 (reserved)
//     8    4 status      kvferry::Code of a reply (0 in requests)
//    12    4 reserved    0
//    16    8 request_id  chosen by the client, echoed in the reply
//    24    8 handle      the server's handle id (WRITE, READ)
//    32    8 offset      byte offset inside the handle's range (WRITE, READ); see HELLO*
//    40    8 length      bytes of the transfer, see per type
//
// The handshake (version 2): mutual challenge-response; the cluster token never crosses
// the wire. Both sides derive K = HMAC-SHA256(key = token, "kvferry/v1 data-plane").
//   HELLO          client → server, first frame: `length` = 32, payload nonce_c (32
//                  fresh random bytes); `offset` = the client's slice size.
//   CHALLENGE      server → client: `length` = 64, payload nonce_s (32 fresh random
//                  bytes) then server_proof = HMAC(K, "server" || nonce_c || nonce_s).
//                  The client checks server_proof before it sends anything else: a
//                  server that cannot prove the token gets nothing from it (the client
//                  closes, kPermissionDenied).
//   PROOF          client → server: `length` = 32, payload
//                  client_proof = HMAC(K, "client" || nonce_s || nonce_c).
//   HELLO_OK       server → client, the proof checked (in constant time): `offset` = the
//                  largest payload the server accepts (its slice size); the client cuts
//                  slices to min(its own, this).
//   HELLO_REFUSED  server → client, status kPermissionDenied (wrong proof) or
//                  kNotSupported (a HELLO of another wire version; this reply carries
//                  the server's version); the server then closes.
// Nothing a passive observer or a fake server records can be replayed: every proof
// covers a nonce the verifier has just drawn. A malformed handshake frame closes the
// connection without a reply. The whole handshake must finish within the server's
// handshake deadline (see tcp_server.h).
//
// After HELLO_OK:
//   WRITE          header + `length` payload bytes to store at handle+offset.
//   WRITE_ACK      status of that WRITE; length 0.
//   READ           ask for `length` bytes at handle+offset; no payload.
//   READ_DATA      status, then `length` payload bytes: the requested length when the
//                  status is OK, 0 otherwise.
//
// Rules: the client may pipeline requests; the server answers them one by one in
// request order. A refused access (unknown handle; wrong direction, kPermissionDenied,
// e.g. a WRITE to a handle exposed for reading; out of range) is a reply status and
// the connection stays usable (a refused WRITE's payload is read and discarded). A
// protocol violation — wrong magic/version, unknown or out-of-place type, non-zero
// reserved fields, a length above the receiver's slice size — closes the connection.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvferry {
namespace tcp {

constexpr uint32_t kMagic = 0x5246564Bu;
constexpr uint8_t kVersion = 2;
constexpr size_t kHeaderSize = 48;
/** The longest cluster token an engine accepts (the token itself never travels). */
constexpr uint64_t kMaxTokenBytes = 4096;
/** Handshake nonces and proofs (HMAC-SHA256 outputs) are this long. */
constexpr size_t kNonceBytes = 32;
constexpr size_t kProofBytes = 32;

enum class FrameType : uint8_t {
  kHello = 1,
  kHelloOk = 2,
  kHelloRefused = 3,
  kWrite = 4,
  kWriteAck = 5,
  kRead = 6,
  kReadData = 7,
  kChallenge = 8,
  kProof = 9,
};

struct FrameHeader {
  uint32_t magic = kMagic;
  uint8_t version = kVersion;
  FrameType type = FrameType::kHello;
  uint16_t flags = 0;
  uint32_t status = 0;
  uint32_t reserved = 0;
  uint64_t request_id = 0;
  uint64_t handle = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};

namespace wire_detail {

inline void Put(uint8_t* p, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

inline uint64_t Get(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace wire_detail

inline void EncodeHeader(const FrameHeader& h, uint8_t out[kHeaderSize]) {
  using wire_detail::Put;
  Put(out + 0, h.magic, 4);
  Put(out + 4, h.version, 1);
  Put(out + 5, static_cast<uint8_t>(h.type), 1);
  Put(out + 6, h.flags, 2);
  Put(out + 8, h.status, 4);
  Put(out + 12, h.reserved, 4);
  Put(out + 16, h.request_id, 8);
  Put(out + 24, h.handle, 8);
  Put(out + 32, h.offset, 8);
  Put(out + 40, h.length, 8);
}

/** Decodes without judging; see IsWellFormed. */
inline FrameHeader DecodeHeader(const uint8_t in[kHeaderSize]) {
  using wire_detail::Get;
  FrameHeader h;
  h.magic = static_cast<uint32_t>(Get(in + 0, 4));
  h.version = static_cast<uint8_t>(Get(in + 4, 1));
  h.type = static_cast<FrameType>(Get(in + 5, 1));
  h.flags = static_cast<uint16_t>(Get(in + 6, 2));
  h.status = static_cast<uint32_t>(Get(in + 8, 4));
  h.reserved = static_cast<uint32_t>(Get(in + 12, 4));
  h.request_id = Get(in + 16, 8);
  h.handle = Get(in + 24, 8);
  h.offset = Get(in + 32, 8);
  h.length = Get(in + 40, 8);
  return h;
}

/** Magic, version, reserved fields and a known type; lengths are checked by the reader. */
inline bool IsWellFormed(const FrameHeader& h) {
  const uint8_t t = static_cast<uint8_t>(h.type);
  return h.magic == kMagic && h.version == kVersion && h.flags == 0 && h.reserved == 0 &&
         t >= static_cast<uint8_t>(FrameType::kHello) && t <= static_cast<uint8_t>(FrameType::kProof);
}

/**
 * A request the server serves after the handshake: well-formed, WRITE or READ, status 0,
 * and a payload of at most `max_payload` bytes. Anything else is a protocol violation.
 */
inline bool IsAcceptableRequest(const FrameHeader& h, uint64_t max_payload) {
  const bool request = h.type == FrameType::kWrite || h.type == FrameType::kRead;
  return IsWellFormed(h) && request && h.status == 0 && h.length <= max_payload;
}

}  // namespace tcp
}  // namespace kvferry
