// The data plane's handshake (wire.h, version 2): the token never crosses the wire, a
// side that cannot prove it learns nothing usable, and connections that never
// authenticate cost no thread and cannot keep real peers out.
#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "engine/crypto/random.h"
#include "engine/tcp/handshake.h"
#include "engine/tcp/wire.h"
#include "test_util.h"

namespace kvferry {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using tcp::FrameHeader;
using tcp::FrameType;
using test::Collector;
using test::FillPattern;
using test::MakeEngine;
using test::MakeOp;
using test::PeerOf;
using test::RawConnect;
using test::RawRecv;
using test::RawRecvHeader;
using test::RawSend;
using test::RawSendHeader;
using test::WaitClosed;

/** A listening socket on 127.0.0.1 (any port); -1 on failure. */
int RawListen(uint16_t* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (fd < 0 || bind(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 16) != 0 ||
      getsockname(fd, reinterpret_cast<struct sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  *port = ntohs(addr.sin_port);
  return fd;
}

/** Accepts one connection within `timeout_ms` (receive timeout 5 s); -1 when none came. */
int RawAccept(int listen_fd, int timeout_ms) {
  struct pollfd p = {listen_fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return -1;
  int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return -1;
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

/** Everything the peer sends until it closes (or `timeout_ms` passes). */
std::vector<uint8_t> RecvUntilClosed(int fd, int timeout_ms) {
  std::vector<uint8_t> got;
  const auto deadline = std::chrono::steady_clock::now() + milliseconds(timeout_ms);
  uint8_t buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n <= 0) break;
    got.insert(got.end(), buf, buf + n);
  }
  return got;
}

bool Contains(const std::vector<uint8_t>& haystack, const std::string& needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) != haystack.end();
}

size_t ThreadCount() {
  size_t n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (struct dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    closedir(d);
  }
  return n;
}

/**
 * A client engine (token kToken, one connection per peer) pushes to a fake server that
 * answers its HELLO with a CHALLENGE built by `challenge_for` (given the client's HELLO);
 * returns every byte the client sent and the op's completion.
 */
struct FakeServerRun {
  std::vector<uint8_t> hello;  // the HELLO frame as received
  std::vector<uint8_t> after;  // whatever came after the CHALLENGE
  Completion op;
};
FakeServerRun RunAgainstFakeServer(const std::function<std::vector<uint8_t>(const tcp::Nonce&)>& challenge_for) {
  FakeServerRun run;
  uint16_t port = 0;
  int listen_fd = RawListen(&port);
  EXPECT_GE(listen_fd, 0);
  auto client = MakeEngine(1 << 20, [](EngineOptions& o) { o.connections_per_peer = 1; });
  Collector cc(client.get());
  std::thread fake([&] {
    int fd = RawAccept(listen_fd, 10000);
    if (fd < 0) return ADD_FAILURE() << "the client never connected";
    run.hello.resize(tcp::kHeaderSize + tcp::kNonceBytes);
    if (RawRecv(fd, run.hello.data(), run.hello.size())) {
      tcp::Nonce nonce_c;
      std::memcpy(nonce_c.data(), run.hello.data() + tcp::kHeaderSize, nonce_c.size());
      const std::vector<uint8_t> challenge = challenge_for(nonce_c);
      RawSend(fd, challenge.data(), challenge.size());
      run.after = RecvUntilClosed(fd, 5000);
    }
    close(fd);
  });
  EXPECT_TRUE(client->Submit({MakeOp(1, OpKind::kWrite, "127.0.0.1:" + std::to_string(port), 0, 77, 0, 64)}).ok());
  EXPECT_TRUE(cc.WaitOps(1, seconds(15)));
  fake.join();
  close(listen_fd);
  run.op = cc.ops().at(1);
  return run;
}

std::vector<uint8_t> Challenge(const tcp::Nonce& nonce_s, const crypto::Digest& proof) {
  FrameHeader h;
  h.type = FrameType::kChallenge;
  h.length = 64;
  std::vector<uint8_t> out(tcp::kHeaderSize);
  tcp::EncodeHeader(h, out.data());
  out.insert(out.end(), nonce_s.begin(), nonce_s.end());
  out.insert(out.end(), proof.begin(), proof.end());
  return out;
}

TEST(TcpHandshake, AFakeServerGetsNeitherTheTokenNorAProofAndCannotReplayWhatItGot) {
  // The fake cannot prove the token: it answers with a made-up proof.
  FakeServerRun run = RunAgainstFakeServer([](const tcp::Nonce&) {
    tcp::Nonce nonce_s;
    crypto::Digest proof;
    EXPECT_TRUE(crypto::RandomBytes(nonce_s.data(), nonce_s.size()).ok());
    EXPECT_TRUE(crypto::RandomBytes(proof.data(), proof.size()).ok());
    return Challenge(nonce_s, proof);
  });
  EXPECT_EQ(run.op.code, Code::kPermissionDenied) << run.op.message;
  EXPECT_NE(run.op.message.find("could not prove the cluster token"), std::string::npos) << run.op.message;
  EXPECT_FALSE(Contains(run.hello, test::kToken)) << "the token crossed the wire";
  EXPECT_TRUE(run.after.empty()) << "the client sent " << run.after.size() << " bytes to a server that proved nothing";

  // What the fake holds (the client's HELLO) does not get it into a real server.
  auto server = MakeEngine(1 << 20);
  int fd = RawConnect(server->data_port());
  ASSERT_TRUE(RawSend(fd, run.hello.data(), run.hello.size()));
  FrameHeader reply;
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  ASSERT_EQ(reply.type, FrameType::kChallenge);
  uint8_t challenge[64];
  ASSERT_TRUE(RawRecv(fd, challenge, sizeof(challenge)));
  FrameHeader proof;
  proof.type = FrameType::kProof;
  proof.length = 32;
  ASSERT_TRUE(RawSendHeader(fd, proof));
  ASSERT_TRUE(RawSend(fd, run.hello.data() + tcp::kHeaderSize, 32));  // its best guess: the nonce it saw
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.type, FrameType::kHelloRefused);
  EXPECT_EQ(reply.status, static_cast<uint32_t>(Code::kPermissionDenied));
  EXPECT_TRUE(WaitClosed(fd, 5000));
  close(fd);
  EXPECT_EQ(server->stats().handshakes_refused, 1u);
}

TEST(TcpHandshake, AClientDetectsAServerWithAnotherTokenAndSendsItNoProof) {
  // A real kvferry server of another cluster: its proof is well made, for the wrong key.
  const tcp::HandshakeKey other = tcp::DeriveDataPlaneKey("another-cluster");
  FakeServerRun run = RunAgainstFakeServer([&](const tcp::Nonce& nonce_c) {
    tcp::Nonce nonce_s;
    EXPECT_TRUE(crypto::RandomBytes(nonce_s.data(), nonce_s.size()).ok());
    return Challenge(nonce_s, tcp::ServerProof(other, nonce_c, nonce_s));
  });
  EXPECT_EQ(run.op.code, Code::kPermissionDenied) << run.op.message;
  EXPECT_TRUE(run.after.empty()) << "the client sent its proof to a server with another token";
}

TEST(TcpHandshake, AClientWithAWrongTokenIsRefusedAndClosed) {
  auto server = MakeEngine(1 << 20);
  int fd = RawConnect(server->data_port());
  EXPECT_EQ(test::RawHello(fd, "not-the-token"), static_cast<int>(FrameType::kHelloRefused));
  EXPECT_TRUE(WaitClosed(fd, 5000));
  close(fd);
  EXPECT_EQ(server->stats().handshakes_refused, 1u);
  // The right token still gets in.
  fd = RawConnect(server->data_port());
  EXPECT_EQ(test::RawHello(fd, test::kToken), static_cast<int>(FrameType::kHelloOk));
  close(fd);
}

TEST(TcpHandshake, ARecordedHandshakeReplayedToTheServerIsRefused) {
  auto server = MakeEngine(1 << 20);
  // A legitimate client's bytes, as a passive observer records them.
  const tcp::HandshakeKey key = tcp::DeriveDataPlaneKey(test::kToken);
  tcp::Nonce nonce_c;
  ASSERT_TRUE(crypto::RandomBytes(nonce_c.data(), nonce_c.size()).ok());
  tcp::ClientHandshake client(key, 1 << 20, nonce_c);
  std::vector<uint8_t> recorded = client.Hello();
  int fd = RawConnect(server->data_port());
  ASSERT_TRUE(RawSend(fd, recorded.data(), recorded.size()));
  uint8_t in[tcp::kHeaderSize + 64];
  ASSERT_TRUE(RawRecv(fd, in, sizeof(in)));
  ASSERT_TRUE(client.OnChallengeHeader(in).ok());
  std::vector<uint8_t> proof;
  ASSERT_TRUE(client.OnChallenge(in + tcp::kHeaderSize, &proof).ok());
  ASSERT_TRUE(RawSend(fd, proof.data(), proof.size()));
  FrameHeader reply;
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  ASSERT_EQ(reply.type, FrameType::kHelloOk);
  close(fd);
  recorded.insert(recorded.end(), proof.begin(), proof.end());
  EXPECT_FALSE(Contains(recorded, test::kToken));

  // Replayed byte for byte on a fresh connection: the server drew a fresh nonce.
  fd = RawConnect(server->data_port());
  ASSERT_TRUE(RawSend(fd, recorded.data(), recorded.size()));
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  ASSERT_EQ(reply.type, FrameType::kChallenge);
  ASSERT_TRUE(RawRecv(fd, in, 64));
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.type, FrameType::kHelloRefused);
  EXPECT_TRUE(WaitClosed(fd, 5000));
  close(fd);
  EXPECT_EQ(server->stats().handshakes_refused, 1u);
}

TEST(TcpHandshake, AHelloOfAnotherWireVersionIsRefusedWithNotSupported) {
  auto server = MakeEngine(1 << 20);
  int fd = RawConnect(server->data_port());
  FrameHeader h;
  h.type = FrameType::kHello;
  h.version = 1;
  h.length = 14;  // a version-1 HELLO carried the token itself
  ASSERT_TRUE(RawSendHeader(fd, h));
  FrameHeader reply;
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.type, FrameType::kHelloRefused);
  EXPECT_EQ(reply.status, static_cast<uint32_t>(Code::kNotSupported));
  EXPECT_EQ(reply.version, tcp::kVersion);
  EXPECT_TRUE(WaitClosed(fd, 5000));
  close(fd);
}

TEST(TcpHandshake, ARequestSentRightAfterTheProofIsServed) {
  // The acceptor reads exactly the handshake: bytes behind it belong to the serving thread.
  auto server = MakeEngine(1 << 20);
  uint64_t off = 0, handle = 0;
  ASSERT_TRUE(server->Allocate(4096, &off).ok());
  FillPattern(server->pool_base() + off, 4096, 9);
  ASSERT_TRUE(server->Expose(off, 4096, Access::kRead, &handle).ok());
  tcp::Nonce nonce_c;
  ASSERT_TRUE(crypto::RandomBytes(nonce_c.data(), nonce_c.size()).ok());
  tcp::ClientHandshake client(tcp::DeriveDataPlaneKey(test::kToken), 1 << 20, nonce_c);
  int fd = RawConnect(server->data_port());
  std::vector<uint8_t> hello = client.Hello();
  ASSERT_TRUE(RawSend(fd, hello.data(), hello.size()));
  uint8_t in[tcp::kHeaderSize + 64];
  ASSERT_TRUE(RawRecv(fd, in, sizeof(in)));
  std::vector<uint8_t> out;
  ASSERT_TRUE(client.OnChallenge(in + tcp::kHeaderSize, &out).ok());
  FrameHeader read;
  read.type = FrameType::kRead;
  read.request_id = 5;
  read.handle = handle;
  read.length = 4096;
  out.resize(out.size() + tcp::kHeaderSize);
  tcp::EncodeHeader(read, out.data() + out.size() - tcp::kHeaderSize);
  ASSERT_TRUE(RawSend(fd, out.data(), out.size()));  // PROOF and READ in one send
  FrameHeader reply;
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.type, FrameType::kHelloOk);
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.type, FrameType::kReadData);
  EXPECT_EQ(reply.request_id, 5u);
  ASSERT_EQ(reply.length, 4096u);
  std::vector<uint8_t> got(4096);
  ASSERT_TRUE(RawRecv(fd, got.data(), got.size()));
  EXPECT_EQ(std::memcmp(got.data(), server->pool_base() + off, 4096), 0);
  close(fd);
}

TEST(TcpHandshake, SixHundredIdleConnectionsCostNoThreadAndDoNotKeepARealPeerOut) {
  struct rlimit files;
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < 4096 && files.rlim_max > files.rlim_cur) {
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, 4096);
    setrlimit(RLIMIT_NOFILE, &files);
  }
  constexpr int kIdle = 600;
  constexpr int kDeadlineMs = 1000;
  auto server = MakeEngine(32 << 20, [](EngineOptions& o) { o.handshake_timeout_ms = kDeadlineMs; });
  auto client = MakeEngine(32 << 20);
  ASSERT_TRUE(server && client);
  Collector cc(client.get());
  const size_t threads_before = ThreadCount();

  std::vector<int> idle;
  for (int i = 0; i < kIdle; ++i) {
    int fd = RawConnect(server->data_port(), 5000);
    if (fd >= 0) idle.push_back(fd);
  }
  ASSERT_GE(idle.size(), static_cast<size_t>(kIdle - 10));
  // Every connection has been accepted once the shed ones are counted; meanwhile no
  // thread was started for any of them.
  size_t most_threads = ThreadCount();
  constexpr size_t kPerAddress = 64;  // TcpServerOptions::max_pending_per_address
  for (int i = 0; i < 100 && server->stats().connections_shed < idle.size() - kPerAddress; ++i) {
    std::this_thread::sleep_for(milliseconds(20));
    most_threads = std::max(most_threads, ThreadCount());
  }
  EXPECT_GE(server->stats().connections_shed, idle.size() - kPerAddress) << "too many pending from one address";
  EXPECT_LE(most_threads, threads_before + 2) << "threads committed to unauthenticated connections";

  // A real transfer while the last idle ones still wait out their deadline.
  ASSERT_NO_FATAL_FAILURE(test::RoundTrip(server.get(), client.get(), &cc, 8 << 20, 4));

  // And every idle connection is closed: shed at once, or at its handshake deadline.
  size_t open = 0;
  for (int fd : idle) {
    if (!WaitClosed(fd, 3 * kDeadlineMs + 2000)) ++open;
    close(fd);
  }
  EXPECT_EQ(open, 0u);
  EXPECT_EQ(server->stats().frames_refused, 0u);
}

}  // namespace
}  // namespace kvferry
