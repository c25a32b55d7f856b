// A server facing peers that do not follow the protocol: it must drop them, count them,
// keep serving everyone else, and never let them reach memory outside their handles.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <random>
#include <chrono>
#include <thread>

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
using test::RawHello;
using test::RawRecvHeader;
using test::RawSend;
using test::RawSendHeader;
using test::WaitClosed;

constexpr uint64_t kSlice = 1 << 20;
constexpr int kIoTimeoutMs = 1000;
constexpr int kHandshakeTimeoutMs = 500;

class HostilePeer : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = MakeEngine(64 << 20, [](EngineOptions& o) {
      o.slice_bytes = kSlice;
      o.io_timeout_ms = kIoTimeoutMs;
      o.handshake_timeout_ms = kHandshakeTimeoutMs;
    });
    client_ = MakeEngine(64 << 20);
    ASSERT_TRUE(server_ && client_);
    cs_ = std::make_unique<Collector>(server_.get());
    cc_ = std::make_unique<Collector>(client_.get());
    ASSERT_TRUE(server_->Allocate(1 << 20, &small_).ok());
    ASSERT_TRUE(server_->Expose(small_, 1 << 20, Access::kWrite, &small_handle_).ok());
    ASSERT_TRUE(server_->Expose(small_, 1 << 20, Access::kRead, &small_read_handle_).ok());
    std::memset(server_->pool_base() + small_, 0, 1 << 20);
  }
  void TearDown() override {
    cs_.reset();
    cc_.reset();
    client_.reset();
    server_.reset();
  }

  int Authenticated() {
    int fd = RawConnect(server_->data_port());
    EXPECT_GE(fd, 0);
    EXPECT_EQ(RawHello(fd, test::kToken), static_cast<int>(FrameType::kHelloOk));
    return fd;
  }

  std::unique_ptr<Engine> server_, client_;
  std::unique_ptr<Collector> cs_, cc_;
  uint64_t small_ = 0;
  uint64_t small_handle_ = 0;       // writable
  uint64_t small_read_handle_ = 0;  // readable, same bytes
};

TEST_F(HostilePeer, RandomBytesInsteadOfAHelloAreRefusedAndClosed) {
  int fd = RawConnect(server_->data_port());
  ASSERT_GE(fd, 0);
  std::vector<uint8_t> junk(4096);
  FillPattern(junk.data(), junk.size(), 42);
  RawSend(fd, junk.data(), junk.size());
  EXPECT_TRUE(WaitClosed(fd, 5000));
  close(fd);
  EXPECT_EQ(server_->stats().handshakes_refused, 1u);
}

TEST_F(HostilePeer, AConnectionThatNeverFinishesItsHelloIsClosedAtTheHandshakeDeadline) {
  int fd = RawConnect(server_->data_port());
  ASSERT_GE(fd, 0);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(RawSend(fd, "KV", 2));  // a trickle, never a whole HELLO
  EXPECT_TRUE(WaitClosed(fd, 3 * kHandshakeTimeoutMs + 2000));
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(kHandshakeTimeoutMs - 100));
  close(fd);
  EXPECT_EQ(server_->stats().handshakes_refused, 1u);
}

TEST_F(HostilePeer, AHelloWithAPayloadOtherThanANonceIsRefused) {
  int fd = RawConnect(server_->data_port());
  FrameHeader h;
  h.type = FrameType::kHello;
  h.length = 1ull << 40;
  ASSERT_TRUE(RawSendHeader(fd, h));
  EXPECT_TRUE(WaitClosed(fd, 5000));
  close(fd);
  EXPECT_EQ(server_->stats().handshakes_refused, 1u);
}

TEST_F(HostilePeer, AWriteLongerThanTheSliceSizeIsAViolationThatClosesTheConnection) {
  int fd = Authenticated();
  FrameHeader h;
  h.type = FrameType::kWrite;
  h.handle = small_handle_;
  h.length = kSlice + 1;
  ASSERT_TRUE(RawSendHeader(fd, h));
  EXPECT_TRUE(WaitClosed(fd, 5000));
  close(fd);
  EXPECT_EQ(server_->stats().frames_refused, 1u);
}

TEST_F(HostilePeer, BadMagicUnknownTypesAndRepliesFromTheClientAreViolations) {
  const uint64_t before = server_->stats().frames_refused;
  std::vector<FrameHeader> bad(5);
  bad[0].magic = 0xdeadbeef;
  bad[0].type = FrameType::kRead;
  bad[1].type = static_cast<FrameType>(42);
  bad[2].type = FrameType::kWriteAck;  // a reply is not a request
  bad[3].type = FrameType::kHello;     // a second HELLO
  bad[4].type = FrameType::kRead;
  bad[4].reserved = 1;
  for (const FrameHeader& h : bad) {
    int fd = Authenticated();
    ASSERT_TRUE(RawSendHeader(fd, h));
    EXPECT_TRUE(WaitClosed(fd, 5000));
    close(fd);
  }
  EXPECT_EQ(server_->stats().frames_refused, before + bad.size());
}

TEST_F(HostilePeer, ATruncatedFrameIsDroppedAfterTheIoTimeout) {
  int fd = Authenticated();
  FrameHeader h;
  h.type = FrameType::kWrite;
  h.handle = small_handle_;
  h.length = 1000;
  uint8_t buf[tcp::kHeaderSize];
  tcp::EncodeHeader(h, buf);
  ASSERT_TRUE(RawSend(fd, buf, 20));  // part of a header, then silence
  EXPECT_TRUE(WaitClosed(fd, 3 * kIoTimeoutMs + 2000));
  close(fd);

  // A complete header whose payload stops short: the access ends with the connection.
  fd = Authenticated();
  ASSERT_TRUE(RawSendHeader(fd, h));
  ASSERT_TRUE(RawSend(fd, buf, 10));
  EXPECT_TRUE(WaitClosed(fd, 3 * kIoTimeoutMs + 2000));
  close(fd);
  // The handle is not pinned by the dead access: revoking it releases it at once.
  ASSERT_TRUE(server_->Revoke(small_handle_).ok());
  EXPECT_TRUE(cs_->WaitReleased(small_handle_, seconds(5)));
}

// Sends `h`, then trickles payload bytes (one each `gap`, never stalling as long as the
// I/O timeout) until the server closes the connection or `give_up` passes; returns how
// long after the header the server closed it, or give_up when it never did.
std::chrono::milliseconds TrickleUntilClosed(int fd, const FrameHeader& h, milliseconds gap, milliseconds give_up,
                                             const std::function<void()>& after_header = {}) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(RawSendHeader(fd, h));
  if (after_header) after_header();
  for (;;) {
    const auto elapsed = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
    if (elapsed >= give_up) return give_up;
    const uint8_t b = 0xAB;
    if (send(fd, &b, 1, MSG_NOSIGNAL) != 1) return elapsed;
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(gap.count())) > 0) {
      // The server never answers a WRITE before its payload is complete: readable means
      // EOF or a reset.
      return std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
    }
  }
}

TEST_F(HostilePeer, AWritePayloadThatTricklesInIsCutOffAtTheFrameDeadline) {
  // One byte every 200 ms never trips a per-call timeout of 1 s; the frame deadline
  // (io_timeout_ms from the header) must. A Revoke issued meanwhile completes then.
  int fd = Authenticated();
  FrameHeader h;
  h.type = FrameType::kWrite;
  h.request_id = 1;
  h.handle = small_handle_;
  h.length = 64 << 10;
  bool revoked = false;
  const auto closed_after = TrickleUntilClosed(fd, h, milliseconds(200), milliseconds(5 * kIoTimeoutMs), [&] {
    std::this_thread::sleep_for(milliseconds(300));  // the server holds the access by now
    revoked = server_->Revoke(small_handle_).ok();
    std::this_thread::sleep_for(milliseconds(100));
    EXPECT_EQ(cs_->released_count(small_handle_), 0u) << "released while a write was landing in it";
  });
  close(fd);
  EXPECT_TRUE(revoked);
  EXPECT_LT(closed_after.count(), kIoTimeoutMs + 600) << "a trickling WRITE held the connection";
  EXPECT_GE(closed_after.count(), kIoTimeoutMs - 100);
  EXPECT_TRUE(cs_->WaitReleased(small_handle_, seconds(2)));

  // A refused WRITE (unknown handle) whose payload trickles is cut off the same way.
  fd = Authenticated();
  h.handle = small_handle_ ^ 1;
  EXPECT_LT(TrickleUntilClosed(fd, h, milliseconds(200), milliseconds(5 * kIoTimeoutMs)).count(),
            kIoTimeoutMs + 600);
  close(fd);

  // A header that trickles in is cut off too, and an idle connection is not.
  fd = Authenticated();
  std::this_thread::sleep_for(milliseconds(kIoTimeoutMs + 300));  // idle between frames: fine
  uint8_t raw[tcp::kHeaderSize];
  h.handle = small_read_handle_;
  h.type = FrameType::kRead;
  h.length = 16;
  tcp::EncodeHeader(h, raw);
  const auto start = std::chrono::steady_clock::now();
  bool closed = false;
  for (size_t i = 0; i < tcp::kHeaderSize && !closed; ++i) {
    closed = send(fd, raw + i, 1, MSG_NOSIGNAL) != 1;
    struct pollfd p = {fd, POLLIN, 0};
    closed = closed || poll(&p, 1, 200) > 0;
  }
  EXPECT_TRUE(closed);
  EXPECT_LT(std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start).count(),
            kIoTimeoutMs + 600);
  close(fd);
}

TEST_F(HostilePeer, RefusedAccessesAreAnsweredAndTheConnectionStaysUsable) {
  int fd = Authenticated();
  std::vector<uint8_t> payload(1000, 0xAB);

  FrameHeader unknown;
  unknown.type = FrameType::kWrite;
  unknown.request_id = 7;
  unknown.handle = small_handle_ + 1;
  unknown.length = payload.size();
  ASSERT_TRUE(RawSendHeader(fd, unknown));
  ASSERT_TRUE(RawSend(fd, payload.data(), payload.size()));
  FrameHeader reply;
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.type, FrameType::kWriteAck);
  EXPECT_EQ(reply.request_id, 7u);
  EXPECT_EQ(reply.status, static_cast<uint32_t>(Code::kNotFound));

  FrameHeader past_end;
  past_end.type = FrameType::kRead;
  past_end.request_id = 8;
  past_end.handle = small_read_handle_;
  past_end.offset = (1 << 20) - 10;
  past_end.length = 11;
  ASSERT_TRUE(RawSendHeader(fd, past_end));
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.type, FrameType::kReadData);
  EXPECT_EQ(reply.status, static_cast<uint32_t>(Code::kOutOfRange));
  EXPECT_EQ(reply.length, 0u);

  FrameHeader good = unknown;
  good.request_id = 9;
  good.handle = small_handle_;
  good.offset = 5;
  ASSERT_TRUE(RawSendHeader(fd, good));
  ASSERT_TRUE(RawSend(fd, payload.data(), payload.size()));
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.request_id, 9u);
  EXPECT_EQ(reply.status, 0u);
  EXPECT_EQ(server_->pool_base()[small_ + 4], 0);
  EXPECT_EQ(server_->pool_base()[small_ + 5], 0xAB);
  EXPECT_EQ(server_->pool_base()[small_ + 1004], 0xAB);
  EXPECT_EQ(server_->pool_base()[small_ + 1005], 0);
  close(fd);
  EXPECT_EQ(server_->stats().frames_refused, 0u);
}

TEST_F(HostilePeer, AHandleLentForReadingRefusesWritesAndTheConnectionStaysUsable) {
  // The daemon lends a sealed entry for peers to READ; a peer must not overwrite it.
  uint8_t* sealed = server_->pool_base() + small_;
  FillPattern(sealed, 4096, 21);
  std::vector<uint8_t> before(sealed, sealed + 4096);
  int fd = Authenticated();
  std::vector<uint8_t> payload(4096, 0xAB);

  FrameHeader w;
  w.type = FrameType::kWrite;
  w.request_id = 1;
  w.handle = small_read_handle_;
  w.length = payload.size();
  ASSERT_TRUE(RawSendHeader(fd, w));
  ASSERT_TRUE(RawSend(fd, payload.data(), payload.size()));
  FrameHeader reply;
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.type, FrameType::kWriteAck);
  EXPECT_EQ(reply.request_id, 1u);
  EXPECT_EQ(reply.status, static_cast<uint32_t>(Code::kPermissionDenied));
  EXPECT_EQ(std::memcmp(sealed, before.data(), before.size()), 0) << "a peer overwrote a handle lent for reading";

  // The refused payload was swallowed: the next frame (a READ of the same handle) works.
  FrameHeader r;
  r.type = FrameType::kRead;
  r.request_id = 2;
  r.handle = small_read_handle_;
  r.length = 4096;
  ASSERT_TRUE(RawSendHeader(fd, r));
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.type, FrameType::kReadData);
  EXPECT_EQ(reply.request_id, 2u);
  ASSERT_EQ(reply.status, 0u);
  ASSERT_EQ(reply.length, 4096u);
  std::vector<uint8_t> got(4096);
  ASSERT_TRUE(test::RawRecv(fd, got.data(), got.size()));
  EXPECT_EQ(got, before);

  // And the reverse: a handle exposed for writing is not readable.
  r.request_id = 3;
  r.handle = small_handle_;
  ASSERT_TRUE(RawSendHeader(fd, r));
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.request_id, 3u);
  EXPECT_EQ(reply.status, static_cast<uint32_t>(Code::kPermissionDenied));
  EXPECT_EQ(reply.length, 0u);
  close(fd);
  EXPECT_EQ(server_->stats().frames_refused, 0u);

  // Through the engine: the op fails kPermissionDenied.
  ASSERT_TRUE(client_->Submit({MakeOp(1, OpKind::kWrite, PeerOf(*server_), 0, small_read_handle_, 0, 4096)}).ok());
  ASSERT_TRUE(cc_->WaitOps(1, seconds(10)));
  EXPECT_EQ(cc_->ops().at(1).code, Code::kPermissionDenied) << cc_->ops().at(1).message;
  EXPECT_EQ(std::memcmp(sealed, before.data(), before.size()), 0);
}

TEST_F(HostilePeer, RevokeWaitsForAnIncomingWriteThatIsStillArriving) {
  int fd = Authenticated();
  FrameHeader h;
  h.type = FrameType::kWrite;
  h.request_id = 1;
  h.handle = small_handle_;
  h.length = 4096;
  std::vector<uint8_t> payload(4096, 0x77);
  ASSERT_TRUE(RawSendHeader(fd, h));
  ASSERT_TRUE(RawSend(fd, payload.data(), 2048));
  std::this_thread::sleep_for(milliseconds(100));  // the server is now inside the access
  ASSERT_TRUE(server_->Revoke(small_handle_).ok());
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_EQ(cs_->released_count(small_handle_), 0u) << "released while a write was landing in it";
  ASSERT_TRUE(RawSend(fd, payload.data() + 2048, 2048));
  FrameHeader reply;
  ASSERT_TRUE(RawRecvHeader(fd, &reply));
  EXPECT_EQ(reply.status, 0u);
  EXPECT_TRUE(cs_->WaitReleased(small_handle_, seconds(5)));
  EXPECT_EQ(cs_->released_count(small_handle_), 1u);
  close(fd);
}

TEST_F(HostilePeer, ALegitimateTransferCompletesIntactWhileHostilePeersHammerTheServer) {
  const uint64_t size = 16ull << 20;
  uint64_t dst = 0, h = 0, hr = 0, src = 0, back = 0;
  ASSERT_TRUE(server_->Allocate(size, &dst).ok());
  ASSERT_TRUE(server_->Expose(dst, size, Access::kWrite, &h).ok());
  ASSERT_TRUE(server_->Expose(dst, size, Access::kRead, &hr).ok());
  ASSERT_TRUE(client_->Allocate(size, &src).ok());
  ASSERT_TRUE(client_->Allocate(size, &back).ok());
  FillPattern(client_->pool_base() + src, size, 11);

  std::atomic<bool> stop{false};
  std::thread hammer([&] {
    std::mt19937_64 rng(5);
    std::vector<uint8_t> junk(8192);
    while (!stop.load()) {
      int fd = RawConnect(server_->data_port(), 2000);
      if (fd < 0) continue;
      switch (rng() % 4) {
        case 0:  // garbage
          FillPattern(junk.data(), junk.size(), rng());
          RawSend(fd, junk.data(), junk.size());
          break;
        case 1: {  // oversize write after a good hello
          if (RawHello(fd, test::kToken) != static_cast<int>(FrameType::kHelloOk)) break;
          FrameHeader w;
          w.type = FrameType::kWrite;
          w.handle = h;
          w.length = kSlice * 2;
          RawSendHeader(fd, w);
          break;
        }
        case 2: {  // write to a wrong handle, then hang up mid-payload
          if (RawHello(fd, test::kToken) != static_cast<int>(FrameType::kHelloOk)) break;
          FrameHeader w;
          w.type = FrameType::kWrite;
          w.handle = rng();
          w.length = 4096;
          RawSendHeader(fd, w);
          RawSend(fd, junk.data(), 100);
          break;
        }
        default: {  // write outside the handle
          if (RawHello(fd, test::kToken) != static_cast<int>(FrameType::kHelloOk)) break;
          FrameHeader w;
          w.type = FrameType::kWrite;
          w.handle = h;
          w.offset = size - 10;
          w.length = 4096;
          RawSendHeader(fd, w);
          RawSend(fd, junk.data(), 4096);
          FrameHeader reply;
          if (RawRecvHeader(fd, &reply)) {
            EXPECT_EQ(reply.status, static_cast<uint32_t>(Code::kOutOfRange));
          }
          break;
        }
      }
      close(fd);
    }
  });

  for (uint64_t round = 0; round < 3; ++round) {
    std::memset(client_->pool_base() + back, 0, size);
    ASSERT_TRUE(client_->Submit({MakeOp(round * 2 + 1, OpKind::kWrite, PeerOf(*server_), src, h, 0, size)}).ok());
    ASSERT_TRUE(cc_->WaitOps(round * 2 + 1, seconds(30)));
    ASSERT_TRUE(client_->Submit({MakeOp(round * 2 + 2, OpKind::kRead, PeerOf(*server_), back, hr, 0, size)}).ok());
    ASSERT_TRUE(cc_->WaitOps(round * 2 + 2, seconds(30)));
    ASSERT_EQ(std::memcmp(client_->pool_base() + src, client_->pool_base() + back, size), 0);
  }
  // The transfers may finish before the hammer's first refusal was counted (a fast run):
  // keep hammering until the server has refused something, for at most 30 s.
  const auto refused = [&] { return server_->stats().frames_refused + server_->stats().handshakes_refused; };
  const auto give_up = std::chrono::steady_clock::now() + seconds(30);
  while (refused() == 0 && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(milliseconds(10));
  stop.store(true);
  hammer.join();
  for (auto& entry : cc_->ops()) EXPECT_EQ(entry.second.code, Code::kOk) << entry.second.message;
  EXPECT_EQ(std::memcmp(client_->pool_base() + src, server_->pool_base() + dst, size), 0);
  EXPECT_GT(server_->stats().frames_refused + server_->stats().handshakes_refused, 0u);
}

}  // namespace
}  // namespace kvferry
