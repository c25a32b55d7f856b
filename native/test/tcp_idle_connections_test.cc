// A thousand authenticated connections idling on one server cost it no thread, stay
// open and usable, and a real transfer beside them still completes byte-exact.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "engine/crypto/random.h"
#include "engine/tcp/handshake.h"
#include "engine/tcp/wire.h"
#include "test_util.h"

namespace kvferry {
namespace {

using tcp::FrameHeader;
using tcp::FrameType;
using test::Collector;
using test::MakeEngine;
using test::RawConnect;
using test::RawRecv;
using test::RawRecvHeader;
using test::RawSend;
using test::RawSendHeader;

/**
 * Completes the client's side of the handshake on each of `fds` (blocking sockets), all
 * HELLOs first, then every CHALLENGE, then every verdict, checking the server's proof.
 * Returns how many were accepted.
 */
size_t Authenticate(const std::vector<int>& fds) {
  const tcp::HandshakeKey key = tcp::DeriveDataPlaneKey(test::kToken);
  std::vector<tcp::ClientHandshake> clients;
  for (size_t i = 0; i < fds.size(); ++i) {
    tcp::Nonce nonce;
    if (!crypto::RandomBytes(nonce.data(), nonce.size()).ok()) return 0;
    clients.emplace_back(key, 1 << 20, nonce);
    const std::vector<uint8_t> hello = clients.back().Hello();
    if (!RawSend(fds[i], hello.data(), hello.size())) return 0;
  }
  for (size_t i = 0; i < fds.size(); ++i) {
    uint8_t header[tcp::kHeaderSize];
    uint8_t challenge[tcp::ClientHandshake::kChallengeBytes];
    std::vector<uint8_t> proof;
    if (!RawRecv(fds[i], header, sizeof(header)) || !clients[i].OnChallengeHeader(header).ok()) return 0;
    if (!RawRecv(fds[i], challenge, sizeof(challenge)) || !clients[i].OnChallenge(challenge, &proof).ok()) return 0;
    if (!RawSend(fds[i], proof.data(), proof.size())) return 0;
  }
  size_t accepted = 0;
  for (size_t i = 0; i < fds.size(); ++i) {
    uint8_t header[tcp::kHeaderSize];
    uint64_t slice = 0;
    if (RawRecv(fds[i], header, sizeof(header)) && clients[i].OnVerdict(header, &slice).ok()) ++accepted;
  }
  return accepted;
}

TEST(TcpIdleConnections, AThousandAuthenticatedIdleConnectionsCostNoThreadAndATransferStillRunsByteExact) {
  constexpr size_t kIdle = 1000;
  constexpr size_t kBatch = 25;  // well under max_pending_per_address: none is shed
  constexpr rlim_t kFilesNeeded = 2 * kIdle + 256;  // both ends live in this process
  struct rlimit files;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &files), 0);
  if (files.rlim_cur < kFilesNeeded) {
    if (files.rlim_max < kFilesNeeded) {
      GTEST_SKIP() << "RLIMIT_NOFILE's hard limit is " << files.rlim_max << "; this test needs " << kFilesNeeded
                   << " open files (raise it with ulimit -Hn)";
    }
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, 4096);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &files), 0);
  }
  auto server = MakeEngine(64 << 20);
  auto client = MakeEngine(64 << 20);
  ASSERT_TRUE(server && client);
  Collector cc(client.get());
  const size_t threads_before = test::ThreadCount();
  ASSERT_GT(threads_before, 0u);

  std::vector<int> idle;
  size_t accepted = 0;
  size_t most_threads = threads_before;
  while (idle.size() < kIdle) {
    std::vector<int> batch;
    for (size_t i = 0; i < kBatch && idle.size() + batch.size() < kIdle; ++i) {
      const int fd = RawConnect(server->data_port(), 5000);
      ASSERT_GE(fd, 0) << "connect #" << idle.size() + batch.size();
      batch.push_back(fd);
    }
    accepted += Authenticate(batch);
    idle.insert(idle.end(), batch.begin(), batch.end());
    most_threads = std::max(most_threads, test::ThreadCount());
  }
  ASSERT_EQ(accepted, kIdle);
  EXPECT_EQ(server->stats().connections_shed, 0u);
  EXPECT_EQ(server->stats().handshakes_refused, 0u);
  EXPECT_LE(most_threads, threads_before + 2) << "the server started threads for its connections";

  // A real transfer through the client engine beside them, both ways.
  const uint64_t size = 16 << 20;
  uint64_t dst = 0, rh = 0;
  ASSERT_NO_FATAL_FAILURE(test::RoundTrip(server.get(), client.get(), &cc, size, 11, &dst, &rh));
  EXPECT_EQ(std::memcmp(client->pool_base(), server->pool_base() + dst, size), 0);

  // Every idle connection is still open (nothing to read, no EOF) and a late one serves.
  std::vector<struct pollfd> polls;
  for (int fd : idle) polls.push_back({fd, POLLIN, 0});
  EXPECT_EQ(poll(polls.data(), polls.size(), 0), 0) << "idle authenticated connections were closed";
  FrameHeader read;
  read.type = FrameType::kRead;
  read.request_id = 77;
  read.handle = rh;
  read.length = 4096;
  const int late = idle[kIdle / 2];
  ASSERT_TRUE(RawSendHeader(late, read));
  FrameHeader reply;
  ASSERT_TRUE(RawRecvHeader(late, &reply));
  EXPECT_EQ(reply.type, FrameType::kReadData);
  EXPECT_EQ(reply.request_id, 77u);
  ASSERT_EQ(reply.length, 4096u);
  std::vector<uint8_t> got(4096);
  ASSERT_TRUE(RawRecv(late, got.data(), got.size()));
  EXPECT_EQ(std::memcmp(got.data(), server->pool_base() + dst, got.size()), 0);
  for (int fd : idle) close(fd);
}

}  // namespace
}  // namespace kvferry
