// The submitting half's connection state machine against scripted peers: replies that
// trickle in byte by byte, requests the socket takes in pieces, a peer that stalls or
// merely crawls, a cancel in the middle of a READ_DATA payload, and the thread count of
// many outgoing connections.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
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
using tcp::kHeaderSize;
using test::Collector;
using test::MakeEngine;
using test::MakeOp;
using test::RawRecv;
using test::RawRecvHeader;
using test::RawSend;
using test::ScriptedPeer;

constexpr uint64_t kPeerSlice = 1 << 20;

/** Sends `n` bytes in pieces of `piece`, pausing `gap` after each. */
bool SendTrickled(int fd, const uint8_t* data, size_t n, size_t piece, milliseconds gap) {
  for (size_t at = 0; at < n; at += piece) {
    if (!RawSend(fd, data + at, std::min(piece, n - at))) return false;
    std::this_thread::sleep_for(gap);
  }
  return true;
}

std::vector<uint8_t> Encoded(const FrameHeader& h) {
  std::vector<uint8_t> out(kHeaderSize);
  tcp::EncodeHeader(h, out.data());
  return out;
}

/** The server's side of the handshake with every byte it sends in a segment of its own. */
bool ServeHandshakeTrickled(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  tcp::Nonce nonce;
  if (!crypto::RandomBytes(nonce.data(), nonce.size()).ok()) return false;
  tcp::ServerHandshake server(tcp::DeriveDataPlaneKey(test::kToken), kPeerSlice, nonce);
  uint8_t buf[128];
  while (server.state() == tcp::ServerHandshake::State::kRunning) {
    const size_t want = server.want();
    if (!RawRecv(fd, buf, want)) return false;
    server.Feed(buf, want);
    std::vector<uint8_t>& out = server.outbox();
    if (!SendTrickled(fd, out.data(), out.size(), 1, milliseconds(1))) return false;
    out.clear();
  }
  return server.state() == tcp::ServerHandshake::State::kAccepted;
}

/**
 * Serves requests like a real server over a `remote` buffer (handle ignored), sending each
 * reply (header and payload) in pieces of `piece` bytes `gap` apart; until the client
 * leaves.
 */
void ServeRequests(int fd, std::vector<uint8_t>* remote, size_t piece, milliseconds gap) {
  FrameHeader h;
  while (RawRecvHeader(fd, &h)) {
    FrameHeader reply;
    reply.request_id = h.request_id;
    std::vector<uint8_t> out;
    if (h.type == FrameType::kWrite) {
      if (!RawRecv(fd, remote->data() + h.offset, h.length)) return;
      reply.type = FrameType::kWriteAck;
      out = Encoded(reply);
    } else {
      reply.type = FrameType::kReadData;
      reply.length = h.length;
      out = Encoded(reply);
      out.insert(out.end(), remote->begin() + h.offset, remote->begin() + h.offset + h.length);
    }
    if (!SendTrickled(fd, out.data(), out.size(), piece, gap)) return;
  }
}

TEST(TcpClientConnection, RepliesAndAHandshakeArrivingByteByByteStillServeEveryWriteAndRead) {
  std::vector<uint8_t> remote(4096);
  test::FillPattern(remote.data(), remote.size(), 5);
  ScriptedPeer peer([&remote](int fd, int) {
    if (ServeHandshakeTrickled(fd)) ServeRequests(fd, &remote, 1, milliseconds(1));
  });
  auto a = MakeEngine(1 << 20, [](EngineOptions& o) { o.connections_per_peer = 1; });
  ASSERT_NE(a, nullptr);
  Collector ca(a.get());
  uint8_t* base = a->pool_base();
  test::FillPattern(base, 100, 9);
  // A WRITE of 100 bytes into remote[1000, 1100), then a READ of remote[2000, 2150).
  ASSERT_TRUE(a->Submit({MakeOp(1, OpKind::kWrite, peer.address(), 0, 1, 1000, 100),
                         MakeOp(2, OpKind::kRead, peer.address(), 4096, 1, 2000, 150)})
                  .ok());
  ASSERT_TRUE(ca.WaitOps(2, seconds(20)));
  EXPECT_EQ(ca.ops().at(1).code, Code::kOk) << ca.ops().at(1).message;
  EXPECT_EQ(ca.ops().at(2).code, Code::kOk) << ca.ops().at(2).message;
  EXPECT_EQ(std::memcmp(remote.data() + 1000, base, 100), 0);
  EXPECT_EQ(std::memcmp(base + 4096, remote.data() + 2000, 150), 0);
  EXPECT_EQ(peer.accepted(), 1);
}

TEST(TcpClientConnection, AGatherWriteLargerThanTheSocketsCanHoldIsSentInPiecesAndLandsByteExact) {
  // The peer reads nothing for a while and then slowly through a small receive buffer,
  // so the client's sendmsg stops part-way through slices (EAGAIN) and resumes on
  // EPOLLOUT, in the middle of a header or a gathered piece alike.
  constexpr uint64_t kTotal = 24 << 20;
  std::vector<uint8_t> remote(kTotal);
  ScriptedPeer peer(
      [&remote](int fd, int) {
        if (!test::RawServeHandshake(fd, test::kToken, kPeerSlice)) return;
        std::this_thread::sleep_for(milliseconds(300));
        ServeRequests(fd, &remote, 1 << 20, milliseconds(0));
      },
      16 << 10);
  auto a = MakeEngine(64 << 20, [](EngineOptions& o) { o.connections_per_peer = 1; });
  ASSERT_NE(a, nullptr);
  Collector ca(a.get());
  uint8_t* base = a->pool_base();
  test::FillPattern(base, 64 << 20, 21);
  TransferOp op = MakeOp(1, OpKind::kWrite, peer.address(), 0, 1, 0, kTotal);
  // Odd sizes and places, so slice and piece boundaries never line up.
  op.gather = {{3, (5 << 20) + 3}, {(20 << 20) + 1, (7 << 20) + 11}, {(40 << 20) + 7, (12 << 20) - 14}};
  ASSERT_TRUE(a->Submit({op}).ok());
  ASSERT_TRUE(ca.WaitOps(1, seconds(30)));
  ASSERT_EQ(ca.ops().at(1).code, Code::kOk) << ca.ops().at(1).message;
  uint64_t at = 0;
  for (const PoolExtent& e : op.gather) {
    EXPECT_EQ(std::memcmp(remote.data() + at, base + e.offset, e.size), 0) << "the piece at remote " << at;
    at += e.size;
  }
  EXPECT_EQ(a->stats().bytes_sent, kTotal);
}

TEST(TcpClientConnection, APeerThatStallsMidReplyFailsTheWindowAfterIoTimeoutAndKeepsWhatWasAnswered) {
  std::atomic<bool> stalled{false};
  ScriptedPeer peer([&stalled](int fd, int) {
    if (!test::RawServeHandshake(fd, test::kToken, kPeerSlice)) return;
    FrameHeader first, second;
    if (!RawRecvHeader(fd, &first) || !RawRecvHeader(fd, &second)) return;
    std::vector<uint8_t> out;
    FrameHeader reply;
    reply.type = FrameType::kReadData;
    reply.request_id = first.request_id;
    reply.length = first.length;
    out = Encoded(reply);
    out.resize(out.size() + first.length, 7);
    reply.request_id = second.request_id;
    reply.length = second.length;
    std::vector<uint8_t> half = Encoded(reply);
    out.insert(out.end(), half.begin(), half.end());
    out.resize(out.size() + second.length / 2, 8);  // half of the second payload
    if (!RawSend(fd, out.data(), out.size())) return;
    stalled = true;
    uint8_t sink[64];
    while (recv(fd, sink, sizeof(sink), 0) > 0) {
    }
  });
  auto a = MakeEngine(1 << 20, [](EngineOptions& o) {
    o.connections_per_peer = 1;
    o.io_timeout_ms = 400;
  });
  ASSERT_NE(a, nullptr);
  Collector ca(a.get());
  ASSERT_TRUE(a->Submit({MakeOp(1, OpKind::kRead, peer.address(), 0, 1, 0, 4096),
                         MakeOp(2, OpKind::kRead, peer.address(), 8192, 1, 0, 4096)})
                  .ok());
  ASSERT_TRUE(ca.WaitOps(1, seconds(5)));
  EXPECT_EQ(ca.ops().at(1).code, Code::kOk) << ca.ops().at(1).message;
  for (int i = 0; i < 100 && !stalled; ++i) std::this_thread::sleep_for(milliseconds(10));
  const auto stall = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_EQ(ca.op_count(), 1u) << "the stalled op failed before io_timeout_ms";
  ASSERT_TRUE(ca.WaitOps(2, seconds(5)));
  const auto waited = std::chrono::steady_clock::now() - stall;
  EXPECT_EQ(ca.ops().at(2).code, Code::kUnavailable) << ca.ops().at(2).message;
  EXPECT_GE(waited, milliseconds(300));
  EXPECT_LT(waited, seconds(3));
}

TEST(TcpClientConnection, APeerThatCrawlsButNeverPausesForIoTimeoutIsNotTimedOut) {
  // 16 pieces 50 ms apart: the reply takes about 800 ms, twice io_timeout_ms, but the
  // connection never goes io_timeout_ms without a byte.
  std::vector<uint8_t> remote(4096);
  test::FillPattern(remote.data(), remote.size(), 3);
  ScriptedPeer peer([&remote](int fd, int) {
    if (test::RawServeHandshake(fd, test::kToken, kPeerSlice)) ServeRequests(fd, &remote, 10, milliseconds(50));
  });
  auto a = MakeEngine(1 << 20, [](EngineOptions& o) {
    o.connections_per_peer = 1;
    o.io_timeout_ms = 400;
  });
  ASSERT_NE(a, nullptr);
  Collector ca(a.get());
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(a->Submit({MakeOp(1, OpKind::kRead, peer.address(), 0, 1, 0, 112)}).ok());
  ASSERT_TRUE(ca.WaitOps(1, seconds(10)));
  EXPECT_EQ(ca.ops().at(1).code, Code::kOk) << ca.ops().at(1).message;
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(600));
  EXPECT_EQ(std::memcmp(a->pool_base(), remote.data(), 112), 0);
}

TEST(TcpClientConnection, CancellingAReadMidPayloadRequeuesTheOtherOpsSlicesOnAFreshConnection) {
  constexpr uint64_t kLen = 64 << 10;
  std::vector<uint8_t> remote(4 * kLen);
  std::atomic<bool> mid_payload{false};
  ScriptedPeer peer([&](int fd, int index) {
    if (!test::RawServeHandshake(fd, test::kToken, kPeerSlice)) return;
    if (index > 0) {
      ServeRequests(fd, &remote, 1 << 20, milliseconds(0));
      return;
    }
    // The first connection: the READ's reply stops half-way; the WRITE behind it is
    // read and never answered.
    FrameHeader read, write;
    if (!RawRecvHeader(fd, &read) || !RawRecvHeader(fd, &write)) return;
    std::vector<uint8_t> sink(write.length);
    if (!RawRecv(fd, sink.data(), sink.size())) return;
    FrameHeader reply;
    reply.type = FrameType::kReadData;
    reply.request_id = read.request_id;
    reply.length = read.length;
    std::vector<uint8_t> out = Encoded(reply);
    out.resize(out.size() + read.length / 2, 1);
    if (!RawSend(fd, out.data(), out.size())) return;
    mid_payload = true;
    while (recv(fd, sink.data(), sink.size(), 0) > 0) {
    }
  });
  auto a = MakeEngine(1 << 20, [](EngineOptions& o) { o.connections_per_peer = 1; });
  ASSERT_NE(a, nullptr);
  Collector ca(a.get());
  uint8_t* base = a->pool_base();
  test::FillPattern(base + kLen, kLen, 17);
  ASSERT_TRUE(a->Submit({MakeOp(1, OpKind::kRead, peer.address(), 0, 1, 0, kLen),
                         MakeOp(2, OpKind::kWrite, peer.address(), kLen, 1, 2 * kLen, kLen)})
                  .ok());
  for (int i = 0; i < 200 && !mid_payload; ++i) std::this_thread::sleep_for(milliseconds(10));
  ASSERT_TRUE(mid_payload);
  std::this_thread::sleep_for(milliseconds(50));  // the half payload has landed
  EXPECT_EQ(ca.op_count(), 0u);
  a->Cancel(1);
  ASSERT_TRUE(ca.WaitOps(2, seconds(5)));
  EXPECT_EQ(ca.ops().at(1).code, Code::kCancelled) << ca.ops().at(1).message;
  EXPECT_EQ(ca.ops().at(2).code, Code::kOk) << ca.ops().at(2).message;
  EXPECT_EQ(peer.accepted(), 2);
  EXPECT_EQ(std::memcmp(remote.data() + 2 * kLen, base + kLen, kLen), 0);
}

TEST(TcpClientConnection, FiveHundredTwelveOutgoingConnectionsToEightPeersStartNoThread) {
  constexpr int kPeers = 8;
  constexpr int kPerPeer = 64;
  constexpr size_t kConnections = kPeers * kPerPeer;
  constexpr rlim_t kFilesNeeded = 2 * kConnections + 256;  // both ends live in this process
  struct rlimit files;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &files), 0);
  if (files.rlim_cur < kFilesNeeded) {
    if (files.rlim_max < kFilesNeeded) GTEST_SKIP() << "RLIMIT_NOFILE's hard limit is below " << kFilesNeeded;
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, 4096);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &files), 0);
  }
  std::vector<std::unique_ptr<Engine>> servers;
  std::vector<uint64_t> handles;
  for (int i = 0; i < kPeers; ++i) {
    servers.push_back(MakeEngine(1 << 20, [](EngineOptions& o) { o.io_threads = 1; }));
    ASSERT_NE(servers.back(), nullptr);
    uint64_t dst = 0, wh = 0;
    ASSERT_TRUE(servers.back()->Allocate(4096, &dst).ok());
    ASSERT_TRUE(servers.back()->Expose(dst, 4096, Access::kWrite, &wh).ok());
    handles.push_back(wh);
  }
  auto client = MakeEngine(1 << 20, [](EngineOptions& o) {
    o.connections_per_peer = kPerPeer;
    o.io_threads = 2;
  });
  ASSERT_NE(client, nullptr);
  Collector cc(client.get());
  const size_t threads_before = test::ThreadCount();
  const size_t files_before = test::OpenFiles();

  // One small op per peer opens all its connections at once.
  std::vector<TransferOp> ops;
  for (int i = 0; i < kPeers; ++i) {
    ops.push_back(MakeOp(i + 1, OpKind::kWrite, test::PeerOf(*servers[i]), 0, handles[i], 0, 4096));
  }
  ASSERT_TRUE(client->Submit(ops).ok());
  size_t most_threads = threads_before;
  const auto deadline = std::chrono::steady_clock::now() + seconds(10);
  while (test::OpenFiles() < files_before + 2 * kConnections && std::chrono::steady_clock::now() < deadline) {
    most_threads = std::max(most_threads, test::ThreadCount());
    std::this_thread::sleep_for(milliseconds(5));
  }
  ASSERT_TRUE(cc.WaitOps(kPeers, seconds(10)));
  for (auto& entry : cc.ops()) EXPECT_EQ(entry.second.code, Code::kOk) << entry.second.message;
  EXPECT_GE(test::OpenFiles(), files_before + 2 * kConnections) << "not every connection was opened";
  most_threads = std::max(most_threads, test::ThreadCount());
  EXPECT_EQ(client->stats().peers_connected, static_cast<uint64_t>(kPeers));
  EXPECT_LE(most_threads, threads_before + 2) << "outgoing connections started threads";
  for (auto& s : servers) EXPECT_EQ(s->stats().connections_shed, 0u);
}

}  // namespace
}  // namespace kvferry
