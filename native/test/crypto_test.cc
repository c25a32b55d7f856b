// SHA-256 and HMAC-SHA256 against the published vectors (FIPS 180-2 appendix B,
// RFC 4231 section 4), and the data plane's key derivation and proofs against values
// computed independently (Python's hashlib/hmac), so other implementations can match.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/crypto/hmac_sha256.h"
#include "engine/crypto/random.h"
#include "engine/tcp/handshake.h"

namespace kvferry {
namespace {

std::string Hex(const crypto::Digest& d, size_t n = crypto::kSha256Bytes) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += digits[d[i] >> 4];
    s += digits[d[i] & 15];
  }
  return s;
}

std::string Sha(const std::string& m) { return Hex(crypto::Sha256Of(m.data(), m.size())); }
std::string Hmac(const std::string& k, const std::string& m, size_t n = 32) {
  return Hex(crypto::HmacSha256Of(k.data(), k.size(), m.data(), m.size()), n);
}

TEST(Sha256, MatchesTheFips180Vectors) {
  EXPECT_EQ(Sha(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrs"
                "tnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(Sha(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, GivesTheSameDigestHoweverTheInputIsSplit) {
  std::string m(1000, '\0');
  for (size_t i = 0; i < m.size(); ++i) m[i] = static_cast<char>(i * 7);
  const std::string whole = Sha(m);
  for (size_t step : {1u, 3u, 55u, 56u, 63u, 64u, 65u, 999u}) {
    crypto::Sha256 s;
    for (size_t at = 0; at < m.size(); at += step) s.Update(m.data() + at, std::min(step, m.size() - at));
    EXPECT_EQ(Hex(s.Final()), whole) << "step " << step;
  }
}

TEST(HmacSha256, MatchesTheRfc4231Vectors) {
  std::string key4;
  for (int i = 1; i <= 25; ++i) key4 += static_cast<char>(i);
  EXPECT_EQ(Hmac(std::string(20, '\x0b'), "Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(Hmac("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(Hmac(std::string(20, '\xaa'), std::string(50, '\xdd')),
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
  EXPECT_EQ(Hmac(key4, std::string(50, '\xcd')), "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
  EXPECT_EQ(Hmac(std::string(20, '\x0c'), "Test With Truncation", 16), "a3b6167473100ee06e0c796c2955552b");
  EXPECT_EQ(Hmac(std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  EXPECT_EQ(Hmac(std::string(131, '\xaa'),
                 "This is a test using a larger than block-size key and a larger than block-size data. The key needs "
                 "to be hashed before being used by the HMAC algorithm."),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

TEST(DataPlaneKey, DerivationAndProofsMatchAnIndependentImplementation) {
  const tcp::HandshakeKey key = tcp::DeriveDataPlaneKey("cluster-secret");
  EXPECT_EQ(Hex(key), "160634679f7b8393aa2ada616576cdd6ae97b5c238770c1fb65bf3b1d45542c4");
  tcp::Nonce nc, ns;
  for (int i = 0; i < 32; ++i) {
    nc[i] = static_cast<uint8_t>(i);
    ns[i] = static_cast<uint8_t>(32 + i);
  }
  EXPECT_EQ(Hex(tcp::ServerProof(key, nc, ns)), "1b433d786a49dd17f30cf86463ae6c72457697c2a21aef6d34fd4e90b4b1e1db");
  EXPECT_EQ(Hex(tcp::ClientProof(key, ns, nc)), "296773df2b7fd889e760dc78461e3d85bff0d53eb1097e21a3e4f1ee23037226");
}

TEST(DigestEquals, TellsEqualFromDifferentAtAnyPosition) {
  crypto::Digest a = crypto::Sha256Of("x", 1);
  crypto::Digest b = a;
  EXPECT_TRUE(crypto::DigestEquals(a.data(), b.data(), a.size()));
  for (size_t i = 0; i < b.size(); ++i) {
    b = a;
    b[i] ^= 1;
    EXPECT_FALSE(crypto::DigestEquals(a.data(), b.data(), a.size())) << i;
  }
}

TEST(RandomBytes, FillsFreshBytesEachCall) {
  tcp::Nonce a{}, b{};
  ASSERT_TRUE(crypto::RandomBytes(a.data(), a.size()).ok());
  ASSERT_TRUE(crypto::RandomBytes(b.data(), b.size()).ok());
  EXPECT_NE(a, b);
  EXPECT_NE(a, tcp::Nonce{});
}

}  // namespace
}  // namespace kvferry
