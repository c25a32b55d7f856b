// Failure paths of the submitting side: peers that die, stall or get cancelled. Every
// op must get exactly one terminal completion in bounded time, and nothing may touch an
// op's local extent after that completion.
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <thread>

#include "engine/tcp/tcp_client.h"
#include "test_util.h"

namespace kvferry {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using test::Collector;
using test::FillPattern;
using test::MakeEngine;
using test::MakeOp;
using test::PeerOf;
using test::SilentPeer;

constexpr uint8_t kPoison = 0x5A;

bool AllEqual(const uint8_t* p, uint64_t n, uint8_t value) {
  for (uint64_t i = 0; i < n; ++i) {
    if (p[i] != value) return false;
  }
  return true;
}

TEST(PeerFailure, DestroyingThePeerMidTransferEndsEveryOpUnavailableAndLeavesCompletedExtentsAlone) {
  auto a = MakeEngine(256 << 20, [](EngineOptions& o) { o.io_timeout_ms = 2000; });
  auto b = MakeEngine(256 << 20, [](EngineOptions& o) { o.slice_bytes = 256 << 10; });
  ASSERT_TRUE(a && b);
  constexpr int kOps = 48;
  constexpr uint64_t kSize = 4 << 20;
  uint64_t hw = 0, hr = 0;
  ASSERT_TRUE(b->Expose(0, kOps * kSize, Access::kWrite, &hw).ok());
  ASSERT_TRUE(b->Expose(0, kOps * kSize, Access::kRead, &hr).ok());
  FillPattern(b->pool_base(), kOps * kSize, 1);

  // As each READ completes, poison its extent; a late write by the engine would show.
  Collector ca(a.get());
  uint8_t* base = a->pool_base();
  ca.OnOp([base](const Completion& c) {
    if (c.id % 2 == 0) std::memset(base + (c.id - 1) * kSize, kPoison, kSize);
  });
  std::vector<TransferOp> ops;
  for (uint64_t i = 1; i <= kOps; ++i) {
    ops.push_back(MakeOp(i, i % 2 ? OpKind::kWrite : OpKind::kRead, PeerOf(*b), (i - 1) * kSize, i % 2 ? hw : hr,
                         (i - 1) * kSize, kSize));
  }
  ASSERT_TRUE(a->Submit(ops).ok());
  ASSERT_TRUE(ca.WaitOps(1, seconds(30)));
  const auto killed_at = std::chrono::steady_clock::now();
  b.reset();
  ASSERT_TRUE(ca.WaitOps(kOps, seconds(15))) << "only " << ca.op_count() << " of " << kOps << " ops ended";
  EXPECT_LT(std::chrono::steady_clock::now() - killed_at, seconds(10));

  size_t unavailable = 0;
  for (auto& entry : ca.ops()) {
    const Completion& c = entry.second;
    EXPECT_TRUE(c.code == Code::kOk || c.code == Code::kUnavailable) << c.id << ": " << c.message;
    unavailable += c.code == Code::kUnavailable;
  }
  EXPECT_GT(unavailable, 0u);
  EXPECT_EQ(ca.duplicates(), 0u);
  std::this_thread::sleep_for(milliseconds(200));
  a->Shutdown();
  for (uint64_t i = 2; i <= kOps; i += 2) {
    EXPECT_TRUE(AllEqual(base + (i - 1) * kSize, kSize, kPoison)) << "read op " << i << "'s extent changed after its completion";
  }
}

TEST(PeerFailure, OpsToAPortNobodyListensOnFailUnavailable) {
  uint16_t dead_port;
  {
    auto gone = MakeEngine(1 << 20);
    ASSERT_NE(gone, nullptr);
    dead_port = gone->data_port();
  }
  auto a = MakeEngine(1 << 20);
  ASSERT_NE(a, nullptr);
  Collector ca(a.get());
  const std::string peer = "127.0.0.1:" + std::to_string(dead_port);
  ASSERT_TRUE(a->Submit({MakeOp(1, OpKind::kWrite, peer, 0, 1, 0, 10), MakeOp(2, OpKind::kRead, peer, 0, 1, 0, 10)}).ok());
  ASSERT_TRUE(ca.WaitOps(2, seconds(10)));
  for (auto& entry : ca.ops()) EXPECT_EQ(entry.second.code, Code::kUnavailable) << entry.second.message;
  EXPECT_EQ(a->stats().ops_failed, 2u);
}

TEST(PeerFailure, APeerThatNeverAnswersTimesOutAfterIoTimeout) {
  SilentPeer silent;
  auto a = MakeEngine(1 << 20, [](EngineOptions& o) { o.io_timeout_ms = 300; });
  ASSERT_NE(a, nullptr);
  Collector ca(a.get());
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(a->Submit({MakeOp(1, OpKind::kRead, silent.address(), 0, 1, 0, 4096)}).ok());
  ASSERT_TRUE(ca.WaitOps(1, seconds(10)));
  EXPECT_EQ(ca.ops().at(1).code, Code::kUnavailable) << ca.ops().at(1).message;
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(5));
}

TEST(Cancel, CancellingAnOpStuckOnTheWireEndsItAndCarriesItsConnectionMatesOnAnotherConnection) {
  SilentPeer silent;
  auto a = MakeEngine(4 << 20, [](EngineOptions& o) { o.connections_per_peer = 1; });
  ASSERT_NE(a, nullptr);
  Collector ca(a.get());
  uint8_t* base = a->pool_base();
  ca.OnOp([base](const Completion& c) {
    if (c.id == 2) std::memset(base + (1 << 20), kPoison, 1 << 20);
  });
  ASSERT_TRUE(a->Submit({MakeOp(1, OpKind::kWrite, silent.address(), 0, 1, 0, 1 << 20),
                         MakeOp(2, OpKind::kRead, silent.address(), 1 << 20, 1, 0, 1 << 20)})
                  .ok());
  // Let both reach the wire (the silent peer swallows them and never answers).
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_EQ(ca.op_count(), 0u);
  EXPECT_EQ(silent.accepted(), 1);
  a->Cancel(1);
  ASSERT_TRUE(ca.WaitOps(1, seconds(5)));
  EXPECT_EQ(ca.ops().at(1).code, Code::kCancelled) << ca.ops().at(1).message;
  // Op 2 shared the connection closed to cancel op 1, but it was not cancelled: it is
  // not failed, its slice goes out again on a fresh connection.
  for (int i = 0; i < 50 && silent.accepted() < 2; ++i) std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(silent.accepted(), 2) << "op 2 was not carried on a new connection";
  std::this_thread::sleep_for(milliseconds(200));
  ASSERT_EQ(ca.op_count(), 1u) << "op 2 failed along with the cancelled op: " << ca.ops().rbegin()->second.message;
  a->Cancel(1);  // already complete: nothing happens
  a->Cancel(999);
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_EQ(ca.op_count(), 1u);

  // Disconnect is a real failure for it.
  a->Disconnect(silent.address());
  ASSERT_TRUE(ca.WaitOps(2, seconds(5)));
  EXPECT_EQ(ca.ops().at(2).code, Code::kUnavailable) << ca.ops().at(2).message;
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_EQ(ca.op_count(), 2u);
  EXPECT_TRUE(AllEqual(base + (1 << 20), 1 << 20, kPoison));
}

TEST(Cancel, OpsSharingAConnectionWithACancelledOpStillCompleteIntact) {
  // One connection per peer, so a batch's ops share the connection the cancel closes.
  auto a = MakeEngine(64 << 20, [](EngineOptions& o) { o.connections_per_peer = 1; });
  auto b = MakeEngine(64 << 20, [](EngineOptions& o) { o.slice_bytes = 1 << 20; });
  ASSERT_TRUE(a && b);
  Collector ca(a.get());
  uint64_t hw = 0, hr = 0;
  ASSERT_TRUE(b->Expose(0, 32 << 20, Access::kWrite, &hw).ok());
  ASSERT_TRUE(b->Expose(32 << 20, 32 << 20, Access::kRead, &hr).ok());
  FillPattern(b->pool_base() + (32 << 20), 32 << 20, 3);
  // Connect first, so that every round's batch goes straight onto the wire.
  ASSERT_TRUE(a->Submit({MakeOp(1000, OpKind::kWrite, PeerOf(*b), 0, hw, 0, 64)}).ok());
  ASSERT_TRUE(ca.WaitOps(1, seconds(10)));
  ASSERT_EQ(ca.ops().at(1000).code, Code::kOk);
  constexpr uint64_t kRounds = 10;
  constexpr uint64_t kMates = 6;
  constexpr uint64_t kPart = 1 << 20;
  uint64_t id = 1, expected = 1, killed_mates = 0;
  for (uint64_t round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    FillPattern(a->pool_base(), 32 << 20, 100 + round);
    std::memset(b->pool_base(), 0, 32 << 20);
    std::memset(a->pool_base() + (32 << 20), 0, 32 << 20);
    // The victim (8 MiB) first, its mates behind it on the same connection's window:
    // writes to and reads from regions of their own.
    const uint64_t victim = id++;
    std::vector<TransferOp> batch = {MakeOp(victim, OpKind::kWrite, PeerOf(*b), 0, hw, 0, 8 << 20)};
    for (uint64_t m = 0; m < kMates; ++m) {
      const uint64_t at = (16 << 20) + m * kPart;
      batch.push_back(m % 2 == 0 ? MakeOp(id++, OpKind::kWrite, PeerOf(*b), at, hw, at, kPart)
                                 : MakeOp(id++, OpKind::kRead, PeerOf(*b), (32 << 20) + at, hr, at, kPart));
    }
    ASSERT_TRUE(a->Submit(batch).ok());
    std::this_thread::sleep_for(std::chrono::microseconds(300 * round));
    a->Cancel(victim);
    expected += batch.size();
    ASSERT_TRUE(ca.WaitOps(expected, seconds(20)));
    auto done = ca.ops();
    EXPECT_TRUE(done.at(victim).code == Code::kCancelled || done.at(victim).code == Code::kOk)
        << done.at(victim).message;
    for (uint64_t m = 0; m < kMates; ++m) {
      const TransferOp& op = batch[1 + m];
      const Completion& c = done.at(op.id);
      killed_mates += c.code == Code::kOk ? 0 : 1;
      EXPECT_EQ(c.code, Code::kOk) << "op " << op.id << ": " << c.message;
      if (c.code != Code::kOk) continue;
      EXPECT_EQ(c.bytes, kPart);
      const uint8_t* local = a->pool_base() + op.local_offset;
      const uint8_t* remote = op.kind == OpKind::kWrite ? b->pool_base() + op.remote_offset
                                                        : b->pool_base() + (32 << 20) + op.remote_offset;
      ASSERT_EQ(std::memcmp(local, remote, kPart), 0) << "op " << op.id << " moved the wrong bytes";
    }
  }
  EXPECT_EQ(killed_mates, 0u);
  EXPECT_EQ(ca.duplicates(), 0u);
}

TEST(Cancel, CancellingAnOpThatHasNotReachedTheWireLeavesTheOthersAlone) {
  SilentPeer silent;
  auto a = MakeEngine(4 << 20, [](EngineOptions& o) { o.connections_per_peer = 1; });
  ASSERT_NE(a, nullptr);
  Collector ca(a.get());
  // One connection carries at most kWindow small slices; the last op waits behind them.
  const uint64_t n = kvferry::tcp::TcpClient::kWindow + 4;
  std::vector<TransferOp> ops;
  for (uint64_t i = 1; i <= n; ++i) ops.push_back(MakeOp(i, OpKind::kWrite, silent.address(), i * 1024, 1, 0, 1024));
  ASSERT_TRUE(a->Submit(ops).ok());
  std::this_thread::sleep_for(milliseconds(200));
  a->Cancel(n);
  ASSERT_TRUE(ca.WaitOps(1, seconds(5)));
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_EQ(ca.op_count(), 1u) << "cancelling a queued op disturbed the ops on the wire";
  EXPECT_EQ(ca.ops().at(n).code, Code::kCancelled);

  // Disconnect ends the rest: in flight and queued alike.
  a->Disconnect(silent.address());
  ASSERT_TRUE(ca.WaitOps(n, seconds(5)));
  for (auto& entry : ca.ops()) {
    if (entry.first != n) {
      EXPECT_EQ(entry.second.code, Code::kUnavailable) << entry.second.message;
    }
  }
}

TEST(Cancel, CancellingALiveTransferYieldsOneTerminalCompletionAndThePeerStaysUsable) {
  auto a = MakeEngine(64 << 20);
  auto b = MakeEngine(64 << 20, [](EngineOptions& o) { o.slice_bytes = 256 << 10; });
  ASSERT_TRUE(a && b);
  Collector ca(a.get());
  uint64_t h = 0;
  ASSERT_TRUE(b->Expose(0, 64 << 20, Access::kWrite, &h).ok());
  FillPattern(a->pool_base(), 16 << 20, 8);
  // Every op targets remote bytes of its own: after a cancel the peer may still be
  // finishing the cancelled op's last slice.
  for (uint64_t round = 0; round < 5; ++round) {
    const uint64_t id = round * 2 + 1;
    ASSERT_TRUE(a->Submit({MakeOp(id, OpKind::kWrite, PeerOf(*b), 0, h, round * (8 << 20), 8 << 20)}).ok());
    std::this_thread::sleep_for(milliseconds(round));
    a->Cancel(id);
    ASSERT_TRUE(ca.WaitOps(round * 2 + 1, seconds(10)));
    const Completion c = ca.ops().at(id);
    EXPECT_TRUE(c.code == Code::kCancelled || c.code == Code::kOk) << c.message;
    // A follow-up op to the same peer reconnects and succeeds.
    ASSERT_TRUE(
        a->Submit({MakeOp(id + 1, OpKind::kWrite, PeerOf(*b), 8 << 20, h, (48 + round) << 20, 1 << 20)}).ok());
    ASSERT_TRUE(ca.WaitOps(round * 2 + 2, seconds(10)));
    EXPECT_EQ(ca.ops().at(id + 1).code, Code::kOk) << ca.ops().at(id + 1).message;
    EXPECT_EQ(std::memcmp(a->pool_base() + (8 << 20), b->pool_base() + ((48 + round) << 20), 1 << 20), 0);
  }
  EXPECT_EQ(ca.duplicates(), 0u);
}

TEST(Shutdown, EndsEveryOpInFlightCancelledAndRefusesNewOnes) {
  SilentPeer silent;
  auto a = MakeEngine(4 << 20);
  ASSERT_NE(a, nullptr);
  Collector ca(a.get());
  std::vector<TransferOp> ops;
  for (uint64_t i = 1; i <= 100; ++i) ops.push_back(MakeOp(i, OpKind::kWrite, silent.address(), 0, 1, 0, 4096));
  ASSERT_TRUE(a->Submit(ops).ok());
  std::this_thread::sleep_for(milliseconds(100));
  a->Shutdown();
  ASSERT_TRUE(ca.WaitOps(100, seconds(5)));
  for (auto& entry : ca.ops()) EXPECT_EQ(entry.second.code, Code::kCancelled) << entry.second.message;
  EXPECT_EQ(a->Submit({MakeOp(200, OpKind::kWrite, silent.address(), 0, 1, 0, 1)}).code(), Code::kUnavailable);
  a->Shutdown();  // idempotent
}

TEST(Shutdown, DestroyingAnEngineWithOpsInFlightIsClean) {
  SilentPeer silent;
  auto a = MakeEngine(4 << 20);
  ASSERT_NE(a, nullptr);
  for (uint64_t i = 1; i <= 50; ++i) {
    ASSERT_TRUE(a->Submit({MakeOp(i, i % 2 ? OpKind::kWrite : OpKind::kRead, silent.address(), 0, 1, 0, 8192)}).ok());
  }
  a.reset();  // must not hang, leak or crash (ASan checks the last two)
}

}  // namespace
}  // namespace kvferry
