// Transfers between two engines in one process over 127.0.0.1: bytes arrive intact,
// concurrency is safe, and remote refusals come back as op statuses.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>

#include "test_util.h"

namespace kvferry {
namespace {

using std::chrono::seconds;
using test::Collector;
using test::FillPattern;
using test::MakeEngine;
using test::MakeOp;
using test::PeerOf;

class TcpTransfer : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = MakeEngine(128 << 20);
    b_ = MakeEngine(128 << 20);
    ASSERT_NE(a_, nullptr);
    ASSERT_NE(b_, nullptr);
    ca_ = std::make_unique<Collector>(a_.get());
    cb_ = std::make_unique<Collector>(b_.get());
  }
  void TearDown() override {
    ca_.reset();
    cb_.reset();
    a_.reset();
    b_.reset();
  }

  uint64_t Alloc(Engine* e, uint64_t n) { return test::Alloc(e, n); }
  uint64_t ExposeOnB(uint64_t offset, uint64_t length, Access access = Access::kWrite) {
    return test::Expose(b_.get(), offset, length, access);
  }
  /** Submits one op on A and waits for its completion. */
  Completion RunOnA(const TransferOp& op) { return test::RunOne(a_.get(), ca_.get(), op); }

  std::unique_ptr<Engine> a_, b_;
  std::unique_ptr<Collector> ca_, cb_;
};

TEST_F(TcpTransfer, WritesThenReadsBackEveryByteForSmallOddAndMultiSliceSizes) {
  const uint64_t sizes[] = {1, 4096 + 1, (16ull << 20) + 7};
  uint64_t id = 1;
  for (uint64_t size : sizes) {
    SCOPED_TRACE("size " + std::to_string(size));
    const uint64_t src = Alloc(a_.get(), size);
    const uint64_t back = Alloc(a_.get(), size);
    const uint64_t dst = Alloc(b_.get(), size + 128);
    FillPattern(a_->pool_base() + src, size, size);
    std::memset(b_->pool_base() + dst, 0, size + 128);
    std::memset(a_->pool_base() + back, 0, size);
    // Expose a larger range and target an unaligned offset inside it.
    const uint64_t h = ExposeOnB(dst, size + 128);
    const uint64_t hr = ExposeOnB(dst, size + 128, Access::kRead);

    Completion w = RunOnA(MakeOp(id++, OpKind::kWrite, PeerOf(*b_), src, h, 3, size));
    ASSERT_EQ(w.code, Code::kOk) << w.message;
    EXPECT_EQ(w.bytes, size);
    ASSERT_EQ(std::memcmp(a_->pool_base() + src, b_->pool_base() + dst + 3, size), 0);
    EXPECT_EQ(b_->pool_base()[dst + 2], 0);  // nothing written before the offset
    EXPECT_EQ(b_->pool_base()[dst + 3 + size], 0);  // nor after the length

    Completion r = RunOnA(MakeOp(id++, OpKind::kRead, PeerOf(*b_), back, hr, 3, size));
    ASSERT_EQ(r.code, Code::kOk) << r.message;
    EXPECT_EQ(r.bytes, size);
    ASSERT_EQ(std::memcmp(a_->pool_base() + back, a_->pool_base() + src, size), 0);
  }
  EXPECT_EQ(ca_->duplicates(), 0u);
  EngineStats sa = a_->stats();
  EngineStats sb = b_->stats();
  const uint64_t total = 1 + 4097 + (16ull << 20) + 7;
  EXPECT_EQ(sa.bytes_sent, total);
  EXPECT_EQ(sa.bytes_received, total);
  EXPECT_EQ(sb.bytes_received, total);
  EXPECT_EQ(sb.bytes_sent, total);
  EXPECT_EQ(sa.ops_completed, 6u);
  EXPECT_EQ(sa.ops_failed, 0u);
  EXPECT_EQ(sa.peers_connected, 1u);
}

TEST_F(TcpTransfer, OneGatherOpMovesEntriesOfMixedSizesIntoAScatterHandleAndBack) {
  // A batch as the daemon sends it: entries of 1 B, 64 KiB and 9 MiB + 3 (several slices)
  // in their own extents on both sides, one op each way, one handle on B.
  const uint64_t sizes[] = {1, 64 << 10, 1, (9ull << 20) + 3, 64 << 10, 7};
  std::vector<PoolExtent> src, dst, back;
  uint64_t total = 0;
  for (uint64_t size : sizes) {
    src.push_back({Alloc(a_.get(), size), size});
    back.push_back({Alloc(a_.get(), size), size});
    dst.push_back({Alloc(b_.get(), size), size});
    FillPattern(a_->pool_base() + src.back().offset, size, total + 1);
    std::memset(b_->pool_base() + dst.back().offset, 0, size);
    std::memset(a_->pool_base() + back.back().offset, 0, size);
    total += size;
  }
  uint64_t hw = 0, hr = 0;
  ASSERT_TRUE(b_->ExposeExtents(dst, Access::kWrite, &hw).ok());
  ASSERT_TRUE(b_->ExposeExtents(dst, Access::kRead, &hr).ok());

  TransferOp w = MakeOp(1, OpKind::kWrite, PeerOf(*b_), 0, hw, 0, total);
  w.gather = src;
  Completion cw = RunOnA(w);
  ASSERT_EQ(cw.code, Code::kOk) << cw.message;
  EXPECT_EQ(cw.bytes, total);
  for (size_t i = 0; i < src.size(); ++i) {
    ASSERT_EQ(std::memcmp(a_->pool_base() + src[i].offset, b_->pool_base() + dst[i].offset, src[i].size), 0)
        << "entry " << i;
  }
  TransferOp r = MakeOp(2, OpKind::kRead, PeerOf(*b_), 0, hr, 0, total);
  r.gather = back;
  Completion cr = RunOnA(r);
  ASSERT_EQ(cr.code, Code::kOk) << cr.message;
  for (size_t i = 0; i < src.size(); ++i) {
    ASSERT_EQ(std::memcmp(a_->pool_base() + src[i].offset, a_->pool_base() + back[i].offset, src[i].size), 0)
        << "entry " << i;
  }
  // Part of the range, from the middle of one entry into the next: offsets are the
  // handle's, across its extents.
  std::memset(b_->pool_base() + dst[3].offset, 0, sizes[3]);
  TransferOp part = MakeOp(3, OpKind::kWrite, PeerOf(*b_), 0, hw, sizes[0] + sizes[1] + sizes[2] + 100, sizes[3] - 100 + 10);
  part.gather = {{src[3].offset + 100, sizes[3] - 100}, {src[4].offset, 10}};
  Completion cp = RunOnA(part);
  ASSERT_EQ(cp.code, Code::kOk) << cp.message;
  EXPECT_EQ(std::memcmp(a_->pool_base() + src[3].offset + 100, b_->pool_base() + dst[3].offset + 100, sizes[3] - 100), 0);
  EXPECT_EQ(b_->pool_base()[dst[3].offset + 99], 0);

  // A gather whose sizes do not add up to the length, or that leaves the pool, is refused.
  TransferOp bad = MakeOp(4, OpKind::kWrite, PeerOf(*b_), 0, hw, 0, total);
  bad.gather = src;
  bad.gather.pop_back();
  EXPECT_EQ(a_->Submit({bad}).code(), Code::kInvalidArgument);
  bad.gather = {{a_->pool_size() - 1, 2}};
  bad.length = 2;
  EXPECT_EQ(a_->Submit({bad}).code(), Code::kOutOfRange);
  uint64_t h = 0;
  EXPECT_EQ(b_->ExposeExtents({{0, 1}, {b_->pool_size(), 1}}, Access::kRead, &h).code(), Code::kOutOfRange);
}

TEST_F(TcpTransfer, FiveHundredConcurrentMixedOpsFromFourThreadsAllLandIntact) {
  constexpr int kOps = 500;
  std::mt19937_64 rng(7);
  struct Planned {
    TransferOp op;
    uint64_t remote_pool_offset;
  };
  std::vector<Planned> plan;
  // One handle over a region of B; every op gets its own slice of it.
  const uint64_t region_bytes = 100ull << 20;
  const uint64_t region = Alloc(b_.get(), region_bytes);
  const uint64_t h = ExposeOnB(region, region_bytes);
  const uint64_t hr = ExposeOnB(region, region_bytes, Access::kRead);
  FillPattern(b_->pool_base() + region, region_bytes, 99);
  uint64_t cursor = 0;
  uint64_t write_bytes = 0, read_bytes = 0;
  for (int i = 0; i < kOps; ++i) {
    uint64_t size;
    switch (rng() % 4) {
      case 0: size = 1 + rng() % 100; break;
      case 1: size = 4000 + rng() % 200; break;
      case 2: size = (64 << 10) + rng() % (64 << 10); break;
      default: size = (256 << 10) + rng() % (256 << 10); break;
    }
    const OpKind kind = i % 2 == 0 ? OpKind::kWrite : OpKind::kRead;
    const uint64_t local = Alloc(a_.get(), size);
    if (kind == OpKind::kWrite) {
      FillPattern(a_->pool_base() + local, size, 1000 + i);
      write_bytes += size;
    } else {
      std::memset(a_->pool_base() + local, 0, size);
      read_bytes += size;
    }
    ASSERT_LE(cursor + size, region_bytes);
    plan.push_back({MakeOp(10000 + i, kind, PeerOf(*b_), local, kind == OpKind::kWrite ? h : hr, cursor, size), region + cursor});
    cursor += (size + 63) / 64 * 64;
  }

  std::vector<std::thread> submitters;
  for (int t = 0; t < 4; ++t) {
    submitters.emplace_back([&, t] {
      for (int i = t; i < kOps; i += 4) {
        Status s = a_->Submit({plan[i].op});
        EXPECT_TRUE(s.ok()) << s.ToString();
      }
    });
  }
  for (auto& t : submitters) t.join();
  ASSERT_TRUE(ca_->WaitOps(kOps, seconds(60)));

  auto done = ca_->ops();
  ASSERT_EQ(done.size(), static_cast<size_t>(kOps));
  EXPECT_EQ(ca_->duplicates(), 0u);
  for (const Planned& p : plan) {
    const Completion& c = done.at(p.op.id);
    ASSERT_EQ(c.code, Code::kOk) << "op " << p.op.id << ": " << c.message;
    ASSERT_EQ(c.bytes, p.op.length);
    ASSERT_EQ(std::memcmp(a_->pool_base() + p.op.local_offset, b_->pool_base() + p.remote_pool_offset, p.op.length),
              0)
        << "op " << p.op.id << " (" << (p.op.kind == OpKind::kWrite ? "write" : "read") << ", " << p.op.length
        << " bytes) moved the wrong bytes";
  }
  EngineStats sa = a_->stats();
  EXPECT_EQ(sa.bytes_sent, write_bytes);
  EXPECT_EQ(sa.bytes_received, read_bytes);
  EXPECT_EQ(sa.ops_completed, static_cast<uint64_t>(kOps));
  EXPECT_EQ(b_->stats().bytes_received, write_bytes);
  EXPECT_EQ(b_->stats().bytes_sent, read_bytes);
}

TEST_F(TcpTransfer, RemoteRefusalsFailTheOpButKeepTheConnectionUsable) {
  const uint64_t local = Alloc(a_.get(), 8192);
  const uint64_t dst = Alloc(b_.get(), 4096);
  const uint64_t h = ExposeOnB(dst, 4096);
  const uint64_t hr = ExposeOnB(dst, 4096, Access::kRead);
  const std::string peer = PeerOf(*b_);

  Completion unknown = RunOnA(MakeOp(1, OpKind::kWrite, peer, local, h ^ 0x5555, 0, 100));
  EXPECT_EQ(unknown.code, Code::kNotFound) << unknown.message;
  Completion too_long = RunOnA(MakeOp(2, OpKind::kWrite, peer, local, h, 0, 8192));
  EXPECT_EQ(too_long.code, Code::kOutOfRange) << too_long.message;
  Completion past_end = RunOnA(MakeOp(3, OpKind::kRead, peer, local, hr, 4000, 97));
  EXPECT_EQ(past_end.code, Code::kOutOfRange) << past_end.message;
  Completion huge_offset = RunOnA(MakeOp(4, OpKind::kRead, peer, local, hr, UINT64_MAX - 10, 5));
  EXPECT_EQ(huge_offset.code, Code::kOutOfRange) << huge_offset.message;
  Completion empty_unknown = RunOnA(MakeOp(5, OpKind::kRead, peer, local, 12345, 0, 0));
  EXPECT_EQ(empty_unknown.code, Code::kNotFound) << empty_unknown.message;

  FillPattern(a_->pool_base() + local, 4096, 5);
  Completion fine = RunOnA(MakeOp(6, OpKind::kWrite, peer, local, h, 0, 4096));
  EXPECT_EQ(fine.code, Code::kOk) << fine.message;
  EXPECT_EQ(std::memcmp(a_->pool_base() + local, b_->pool_base() + dst, 4096), 0);
  Completion empty = RunOnA(MakeOp(7, OpKind::kWrite, peer, local, h, 4096, 0));
  EXPECT_EQ(empty.code, Code::kOk) << empty.message;
  EXPECT_EQ(empty.bytes, 0u);

  EXPECT_EQ(b_->stats().frames_refused, 0u);
  EXPECT_EQ(a_->stats().ops_failed, 5u);
}

TEST_F(TcpTransfer, RevokedHandlesRefuseNewAccessesAndReportReleasedOnce) {
  const uint64_t local = Alloc(a_.get(), 4096);
  const uint64_t dst = Alloc(b_.get(), 4096);
  const uint64_t h = ExposeOnB(dst, 4096);
  ASSERT_EQ(RunOnA(MakeOp(1, OpKind::kWrite, PeerOf(*b_), local, h, 0, 4096)).code, Code::kOk);
  ASSERT_TRUE(b_->Revoke(h).ok());
  ASSERT_TRUE(cb_->WaitReleased(h, seconds(5)));
  EXPECT_EQ(RunOnA(MakeOp(2, OpKind::kWrite, PeerOf(*b_), local, h, 0, 4096)).code, Code::kNotFound);
  EXPECT_EQ(b_->Revoke(h).code(), Code::kNotFound);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(cb_->released_count(h), 1u);
}

TEST_F(TcpTransfer, DisconnectForgetsThePeerAndTheNextOpReconnects) {
  const uint64_t local = Alloc(a_.get(), 4096);
  const uint64_t dst = Alloc(b_.get(), 4096);
  const uint64_t h = ExposeOnB(dst, 4096);
  ASSERT_EQ(RunOnA(MakeOp(1, OpKind::kWrite, PeerOf(*b_), local, h, 0, 4096)).code, Code::kOk);
  EXPECT_EQ(a_->stats().peers_connected, 1u);
  a_->Disconnect(PeerOf(*b_));
  EXPECT_EQ(a_->stats().peers_connected, 0u);
  a_->Disconnect(PeerOf(*b_));  // unknown now: nothing happens
  a_->Disconnect("10.0.0.1:1");
  FillPattern(a_->pool_base() + local, 4096, 77);
  ASSERT_EQ(RunOnA(MakeOp(2, OpKind::kWrite, PeerOf(*b_), local, h, 0, 4096)).code, Code::kOk);
  EXPECT_EQ(std::memcmp(a_->pool_base() + local, b_->pool_base() + dst, 4096), 0);
  EXPECT_EQ(a_->stats().peers_connected, 1u);
}

TEST_F(TcpTransfer, SubmitValidatesTheWholeBatchBeforeAcceptingAny) {
  const std::string peer = PeerOf(*b_);
  const uint64_t local = Alloc(a_.get(), 64);
  auto good = MakeOp(1, OpKind::kWrite, peer, local, 1, 0, 64);

  auto outside = MakeOp(2, OpKind::kWrite, peer, (128 << 20) - 10, 1, 0, 64);
  EXPECT_EQ(a_->Submit({good, outside}).code(), Code::kOutOfRange);
  auto overflow = MakeOp(2, OpKind::kRead, peer, UINT64_MAX - 1, 1, 0, 4);
  EXPECT_EQ(a_->Submit({overflow}).code(), Code::kOutOfRange);
  auto remote_overflow = MakeOp(2, OpKind::kRead, peer, 0, 1, UINT64_MAX - 1, 4);
  EXPECT_EQ(a_->Submit({remote_overflow}).code(), Code::kOutOfRange);
  for (const char* bad : {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000", ":80", "host:8x", "::1:80"}) {
    EXPECT_EQ(a_->Submit({MakeOp(3, OpKind::kWrite, bad, local, 1, 0, 64)}).code(), Code::kInvalidArgument) << bad;
    // A bad peer after ops to a good one (a peer is judged once per run of ops to it).
    auto later = MakeOp(4, OpKind::kWrite, bad, local, 1, 0, 64);
    EXPECT_EQ(a_->Submit({good, MakeOp(5, OpKind::kWrite, peer, local, 1, 0, 64), later}).code(), Code::kInvalidArgument) << bad;
  }
  auto bad_kind = good;
  bad_kind.kind = static_cast<OpKind>(9);
  EXPECT_EQ(a_->Submit({bad_kind}).code(), Code::kInvalidArgument);
  EXPECT_EQ(a_->Submit({good, good}).code(), Code::kInvalidArgument);  // duplicate id
  EXPECT_TRUE(a_->Submit({}).ok());

  // None of the refused batches produced a completion.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(ca_->op_count(), 0u);
}

TEST(TcpQueueBound, SubmitBeyondMaxQueuedOpsIsResourceExhaustedAndFreesUpOnCompletion) {
  test::SilentPeer silent;
  auto a = MakeEngine(1 << 20, [](EngineOptions& o) {
    o.max_queued_ops = 4;
    o.connections_per_peer = 1;
  });
  ASSERT_NE(a, nullptr);
  Collector ca(a.get());
  std::vector<TransferOp> ops;
  for (uint64_t i = 0; i < 4; ++i) ops.push_back(MakeOp(i + 1, OpKind::kWrite, silent.address(), 0, 1, 0, 16));
  ASSERT_TRUE(a->Submit(ops).ok());
  EXPECT_EQ(a->Submit({MakeOp(5, OpKind::kWrite, silent.address(), 0, 1, 0, 16)}).code(), Code::kResourceExhausted);
  a->Cancel(1);
  ASSERT_TRUE(ca.WaitOps(1, seconds(10)));
  EXPECT_EQ(ca.ops().at(1).code, Code::kCancelled);
  // The cancelled op's slot is free again.
  EXPECT_TRUE(a->Submit({MakeOp(5, OpKind::kWrite, silent.address(), 0, 1, 0, 16)}).ok());
}

TEST(TcpHandshake, AWrongTokenFailsOpsWithPermissionDeniedAndIsCountedByTheServer) {
  auto server = MakeEngine(1 << 20);
  auto intruder = MakeEngine(1 << 20, [](EngineOptions& o) { o.token = "not-the-token"; });
  auto friendly = MakeEngine(1 << 20);
  ASSERT_TRUE(server && intruder && friendly);
  Collector ci(intruder.get());
  Collector cf(friendly.get());
  uint64_t dst = 0, h = 0;
  ASSERT_TRUE(server->Allocate(1024, &dst).ok());
  ASSERT_TRUE(server->Expose(dst, 1024, Access::kWrite, &h).ok());
  std::memset(server->pool_base() + dst, 0, 1024);
  std::memset(intruder->pool_base(), 0xEE, 1024);

  ASSERT_TRUE(intruder->Submit({MakeOp(1, OpKind::kWrite, PeerOf(*server), 0, h, 0, 1024),
                                MakeOp(2, OpKind::kRead, PeerOf(*server), 0, h, 0, 1024)})
                  .ok());
  ASSERT_TRUE(ci.WaitOps(2, seconds(10)));
  for (auto& entry : ci.ops()) EXPECT_EQ(entry.second.code, Code::kPermissionDenied) << entry.second.message;
  EXPECT_GE(server->stats().handshakes_refused, 1u);
  EXPECT_EQ(server->pool_base()[dst], 0) << "an unauthenticated peer wrote into the pool";
  EXPECT_EQ(intruder->stats().peers_connected, 0u);

  // The server is unharmed: a peer with the right token gets through.
  std::memset(friendly->pool_base(), 0x11, 1024);
  ASSERT_TRUE(friendly->Submit({MakeOp(1, OpKind::kWrite, PeerOf(*server), 0, h, 0, 1024)}).ok());
  ASSERT_TRUE(cf.WaitOps(1, seconds(10)));
  EXPECT_EQ(cf.ops().at(1).code, Code::kOk);
  EXPECT_EQ(server->pool_base()[dst + 1023], 0x11);
}

TEST(TcpSlicing, SlicesFollowTheSmallerOfBothSidesLimits) {
  // The server accepts 64 KiB payloads, the client would send 4 MiB: the handshake
  // makes the client cut to the server's limit instead of being cut off.
  auto server = MakeEngine(8 << 20, [](EngineOptions& o) { o.slice_bytes = 64 << 10; });
  auto client = MakeEngine(8 << 20, [](EngineOptions& o) { o.connections_per_peer = 2; });
  ASSERT_TRUE(server && client);
  Collector cc(client.get());
  uint64_t h = 0;
  ASSERT_TRUE(server->Expose(0, 4 << 20, Access::kWrite, &h).ok());
  FillPattern(client->pool_base(), 4 << 20, 3);
  ASSERT_TRUE(client->Submit({MakeOp(1, OpKind::kWrite, PeerOf(*server), 0, h, 0, 4 << 20)}).ok());
  ASSERT_TRUE(cc.WaitOps(1, seconds(20)));
  EXPECT_EQ(cc.ops().at(1).code, Code::kOk) << cc.ops().at(1).message;
  EXPECT_EQ(std::memcmp(client->pool_base(), server->pool_base(), 4 << 20), 0);
  EXPECT_EQ(server->stats().frames_refused, 0u);
}

}  // namespace
}  // namespace kvferry
