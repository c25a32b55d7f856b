// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), self-contained: the engine links
// into Node.js, which carries its own OpenSSL, so the engine must not bring another.
// Used by the data plane's handshake (engine/tcp/handshake.h); not a general library.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace kvferry {
namespace crypto {

constexpr size_t kSha256Bytes = 32;
using Digest = std::array<uint8_t, kSha256Bytes>;

/** Incremental SHA-256: Update any number of times, then Final once. */
class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t n);
  Digest Final();

 private:
  void Block(const uint8_t* p);

  uint32_t h_[8];
  uint8_t buf_[64];
  size_t have_ = 0;       // bytes in buf_
  uint64_t total_ = 0;    // bytes hashed so far
};

Digest Sha256Of(const void* data, size_t n);

/** Incremental HMAC-SHA256 with a key of any length. */
class HmacSha256 {
 public:
  HmacSha256(const void* key, size_t key_len);
  void Update(const void* data, size_t n) { inner_.Update(data, n); }
  Digest Final();

 private:
  Sha256 inner_;
  uint8_t outer_key_[64];
};

Digest HmacSha256Of(const void* key, size_t key_len, const void* data, size_t n);

/** Equality of two digests in time independent of where they differ. */
bool DigestEquals(const uint8_t* a, const uint8_t* b, size_t n);

}  // namespace crypto
}  // namespace kvferry
