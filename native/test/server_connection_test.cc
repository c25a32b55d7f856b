// ServerConnection, the serving state machine, driven by hand over a socketpair: the test
// plays the client on one end and calls Advance (with the clock it chooses) on the other.
#include "engine/tcp/server_connection.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/handle_table.h"
#include "engine/tcp/wire.h"

namespace kvferry {
namespace {

using std::chrono::milliseconds;
using tcp::FrameHeader;
using tcp::FrameType;
using tcp::kHeaderSize;
using tcp::ServerConnection;
using Outcome = ServerConnection::Outcome;
using Clock = ServerConnection::Clock;

constexpr uint64_t kPool = 4 << 20;
constexpr uint64_t kSlice = 1 << 20;
constexpr milliseconds kIoTimeout{1000};

/** The deadline of a frame of `length` payload bytes, from its first byte (server_connection.h). */
std::chrono::microseconds FrameBudget(uint64_t length) {
  return kIoTimeout + std::chrono::microseconds(length * 1000000 / ServerConnection::kMinFrameBytesPerSecond);
}

class ServerConnectionTest : public ::testing::Test {
 protected:
  ServerConnectionTest()
      : pool_(kPool, 0), handles_([this](uint64_t h) {
          std::lock_guard<std::mutex> lock(mu_);
          released_.push_back(h);
        }) {}

  void SetUp() override {
    int pair[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
    fcntl(pair[0], F_SETFL, fcntl(pair[0], F_GETFL) | O_NONBLOCK);
    peer_ = pair[1];
    struct timeval tv = {5, 0};
    setsockopt(peer_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    TransportContext context;
    context.pool_base = pool_.data();
    context.pool_size = pool_.size();
    context.handles = &handles_;
    context.counters = &counters_;
    tcp::ServingLimits limits;
    limits.slice_bytes = kSlice;
    limits.io_timeout = kIoTimeout;
    conn_ = std::make_unique<ServerConnection>(pair[0], context, limits, &scratch_);
    ASSERT_TRUE(handles_.Expose(0, kPool / 2, Access::kWrite, &write_handle_).ok());
    ASSERT_TRUE(handles_.Expose(kPool / 2, kPool / 2, Access::kRead, &read_handle_).ok());
    for (uint64_t i = 0; i < kPool / 2; ++i) pool_[kPool / 2 + i] = static_cast<uint8_t>(i * 7 + 3);
  }
  void TearDown() override {
    conn_.reset();
    if (peer_ >= 0) close(peer_);
  }

  static std::vector<uint8_t> Frame(FrameType type, uint64_t id, uint64_t handle, uint64_t offset, uint64_t length,
                                    uint8_t fill = 0) {
    FrameHeader h;
    h.type = type;
    h.request_id = id;
    h.handle = handle;
    h.offset = offset;
    h.length = length;
    std::vector<uint8_t> out(kHeaderSize);
    tcp::EncodeHeader(h, out.data());
    if (type == FrameType::kWrite) out.resize(kHeaderSize + length, fill);
    return out;
  }
  void Send(const std::vector<uint8_t>& bytes, size_t from = 0, size_t n = SIZE_MAX) {
    n = std::min(n, bytes.size() - from);
    ASSERT_EQ(send(peer_, bytes.data() + from, n, MSG_NOSIGNAL), static_cast<ssize_t>(n));
  }
  /** What the server has sent so far, without waiting. */
  size_t Available() {
    int n = 0;
    struct pollfd p = {peer_, POLLIN, 0};
    if (poll(&p, 1, 0) <= 0) return 0;
    std::vector<uint8_t> buf(1 << 20);
    n = static_cast<int>(recv(peer_, buf.data(), buf.size(), MSG_PEEK | MSG_DONTWAIT));
    return n > 0 ? static_cast<size_t>(n) : 0;
  }
  FrameHeader Reply() {
    uint8_t buf[kHeaderSize];
    size_t got = 0;
    while (got < kHeaderSize) {
      ssize_t n = recv(peer_, buf + got, kHeaderSize - got, 0);
      if (n <= 0) {
        ADD_FAILURE() << "no reply";
        return FrameHeader();
      }
      got += static_cast<size_t>(n);
    }
    return tcp::DecodeHeader(buf);
  }
  std::vector<uint8_t> Payload(size_t n) {
    std::vector<uint8_t> out(n);
    size_t got = 0;
    while (got < n) {
      ssize_t r = recv(peer_, out.data() + got, n - got, 0);
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    out.resize(got);
    return out;
  }
  bool PeerSeesEof() {
    char c;
    return recv(peer_, &c, 1, 0) == 0;
  }
  bool Released(uint64_t handle) {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t h : released_) {
      if (h == handle) return true;
    }
    return false;
  }
  bool ReadPoolMatches(uint64_t offset, const std::vector<uint8_t>& got) {
    return got.size() > 0 && std::memcmp(got.data(), pool_.data() + kPool / 2 + offset, got.size()) == 0;
  }

  std::vector<uint8_t> pool_;
  std::mutex mu_;
  std::vector<uint64_t> released_;
  HandleTable handles_;
  TransportCounters counters_;
  std::vector<uint8_t> scratch_;
  std::unique_ptr<ServerConnection> conn_;
  int peer_ = -1;
  uint64_t write_handle_ = 0;
  uint64_t read_handle_ = 0;
  const Clock::time_point t0_ = Clock::now();
};

TEST_F(ServerConnectionTest, AWriteTrickledByteByByteLandsInThePoolAndIsAckedOnceComplete) {
  const auto frame = Frame(FrameType::kWrite, 7, write_handle_, 100, 300, 0x5A);
  for (size_t i = 0; i < frame.size(); ++i) {
    Send(frame, i, 1);
    ASSERT_EQ(conn_->Advance(t0_ + milliseconds(i)), Outcome::kWaiting) << "byte " << i;
    if (i + 1 < frame.size()) {
      EXPECT_EQ(Available(), 0u) << "a reply before the payload was complete, byte " << i;
      // From the first header byte; once the header is in, the payload's share is added.
      const auto budget = i + 1 < kHeaderSize ? FrameBudget(0) : FrameBudget(300);
      EXPECT_EQ(conn_->deadline(), t0_ + budget) << "the deadline runs from the first header byte";
    }
  }
  const FrameHeader ack = Reply();
  EXPECT_EQ(ack.type, FrameType::kWriteAck);
  EXPECT_EQ(ack.request_id, 7u);
  EXPECT_EQ(ack.status, 0u);
  for (uint64_t i = 0; i < 300; ++i) ASSERT_EQ(pool_[100 + i], 0x5A) << i;
  EXPECT_EQ(pool_[99], 0);
  EXPECT_EQ(pool_[400], 0);
  EXPECT_EQ(counters_.bytes_received.load(), 300u);
  EXPECT_EQ(conn_->deadline(), Clock::time_point::max()) << "idle after the frame";
}

TEST_F(ServerConnectionTest, FramesSplitAcrossReadsAndANextHeaderArrivingWithAPayloadAreServed) {
  auto first = Frame(FrameType::kWrite, 1, write_handle_, 0, 1000, 0x11);
  auto second = Frame(FrameType::kRead, 2, read_handle_, 10, 500);
  // Split: 20 header bytes | the rest of the header and 400 payload bytes | the rest of
  // the payload together with 30 bytes of the next header | the rest of that header.
  std::vector<uint8_t> stream = first;
  stream.insert(stream.end(), second.begin(), second.end());
  const size_t cuts[] = {20, kHeaderSize + 400, first.size() + 30, stream.size()};
  size_t at = 0;
  for (size_t cut : cuts) {
    Send(stream, at, cut - at);
    at = cut;
    ASSERT_EQ(conn_->Advance(t0_), Outcome::kWaiting);
  }
  FrameHeader r = Reply();
  EXPECT_EQ(r.type, FrameType::kWriteAck);
  EXPECT_EQ(r.request_id, 1u);
  r = Reply();
  EXPECT_EQ(r.type, FrameType::kReadData);
  EXPECT_EQ(r.request_id, 2u);
  ASSERT_EQ(r.length, 500u);
  EXPECT_TRUE(ReadPoolMatches(10, Payload(500)));
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(pool_[i], 0x11);
  EXPECT_EQ(counters_.bytes_sent.load(), 500u);
}

TEST_F(ServerConnectionTest, ADeadlinePassedMidFrameClosesTheConnectionAndEndsTheAccess) {
  const auto frame = Frame(FrameType::kWrite, 1, write_handle_, 0, 4096);
  Send(frame, 0, kHeaderSize + 100);  // the header and part of the payload, then nothing
  ASSERT_EQ(conn_->Advance(t0_), Outcome::kWaiting);
  const auto deadline = t0_ + FrameBudget(4096);  // io_timeout, plus 4096 bytes at 1 MiB/s
  ASSERT_EQ(conn_->deadline(), deadline);
  // The access pins the handle: a revoke waits for it.
  ASSERT_TRUE(handles_.Revoke(write_handle_).ok());
  EXPECT_FALSE(Released(write_handle_));
  // More bytes trickling in do not move the deadline.
  Send(frame, kHeaderSize + 100, 100);
  ASSERT_EQ(conn_->Advance(deadline - milliseconds(1)), Outcome::kWaiting);
  EXPECT_EQ(conn_->deadline(), deadline);
  EXPECT_EQ(conn_->Advance(deadline), Outcome::kClosed);
  EXPECT_TRUE(Released(write_handle_)) << "the access outlived the connection";
  EXPECT_TRUE(PeerSeesEof());
  EXPECT_EQ(counters_.frames_refused.load(), 0u);
}

TEST_F(ServerConnectionTest, DestroyingAConnectionMidFrameEndsItsAccess) {
  Send(Frame(FrameType::kWrite, 1, write_handle_, 0, 4096), 0, kHeaderSize + 10);
  ASSERT_EQ(conn_->Advance(t0_), Outcome::kWaiting);
  ASSERT_TRUE(handles_.Revoke(write_handle_).ok());
  EXPECT_FALSE(Released(write_handle_));
  conn_.reset();
  EXPECT_TRUE(Released(write_handle_));
}

TEST_F(ServerConnectionTest, AnIdleConnectionHasNoDeadlineAndIsKept) {
  Send(Frame(FrameType::kWrite, 1, write_handle_, 0, 10));
  ASSERT_EQ(conn_->Advance(t0_), Outcome::kWaiting);
  Reply();
  EXPECT_EQ(conn_->deadline(), Clock::time_point::max());
  EXPECT_EQ(conn_->Advance(t0_ + std::chrono::hours(24)), Outcome::kWaiting);
  Send(Frame(FrameType::kRead, 2, read_handle_, 0, 8));
  EXPECT_EQ(conn_->Advance(t0_ + std::chrono::hours(24)), Outcome::kWaiting);
  EXPECT_EQ(Reply().request_id, 2u);
}

TEST_F(ServerConnectionTest, ARefusedWriteIsDrainedAnsweredWithItsStatusAndTheConnectionStaysUsable) {
  // Longer than the 64 KiB scratch, so the drain takes several reads.
  const auto refused = Frame(FrameType::kWrite, 1, write_handle_ ^ 1, 0, 200000, 0xEE);
  const auto wrong_way = Frame(FrameType::kWrite, 2, read_handle_, 0, 1000, 0xEE);
  const auto read = Frame(FrameType::kRead, 3, read_handle_, 0, 64);
  std::thread sender([&] {
    Send(refused);
    Send(wrong_way);
    Send(read);
  });
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  size_t replies = 0;
  FrameHeader r[3];
  while (replies < 3 && Clock::now() < deadline) {
    ASSERT_NE(conn_->Advance(Clock::now()), Outcome::kClosed);
    while (replies < 3 && Available() >= kHeaderSize) {
      r[replies] = Reply();
      if (r[replies].type == FrameType::kReadData) {
        EXPECT_TRUE(ReadPoolMatches(0, Payload(r[replies].length)));
      }
      ++replies;
    }
  }
  sender.join();
  ASSERT_EQ(replies, 3u);
  EXPECT_EQ(r[0].request_id, 1u);
  EXPECT_EQ(r[0].status, static_cast<uint32_t>(Code::kNotFound));
  EXPECT_EQ(r[1].request_id, 2u);
  EXPECT_EQ(r[1].status, static_cast<uint32_t>(Code::kPermissionDenied));
  EXPECT_EQ(r[2].request_id, 3u);
  EXPECT_EQ(r[2].status, 0u);
  for (uint64_t i = 0; i < kPool / 2; ++i) ASSERT_EQ(pool_[i], 0) << "a refused payload reached the pool at " << i;
  EXPECT_EQ(counters_.bytes_received.load(), 0u);
}

TEST_F(ServerConnectionTest, PipelinedRequestsAreAnsweredInRequestOrder) {
  std::vector<uint8_t> stream;
  for (uint64_t id = 1; id <= 8; ++id) {
    const auto f = id % 2 ? Frame(FrameType::kWrite, id, write_handle_, id * 100, 50, static_cast<uint8_t>(id))
                          : Frame(FrameType::kRead, id, read_handle_, id * 100, 40);
    stream.insert(stream.end(), f.begin(), f.end());
  }
  Send(stream);
  ASSERT_EQ(conn_->Advance(t0_), Outcome::kWaiting);
  for (uint64_t id = 1; id <= 8; ++id) {
    const FrameHeader r = Reply();
    EXPECT_EQ(r.request_id, id);
    EXPECT_EQ(r.type, id % 2 ? FrameType::kWriteAck : FrameType::kReadData);
    if (r.type == FrameType::kReadData) {
      EXPECT_TRUE(ReadPoolMatches(id * 100, Payload(r.length)));
    }
  }
  EXPECT_EQ(pool_[500], 5);
}

TEST_F(ServerConnectionTest, AcksAreHeldWhileRequestsKeepComingAndSentAtTheCapOrWhenTheSocketRunsDry) {
  // More small WRITEs than one turn serves: the first turn sends the ACKs held at the
  // cap and holds the rest (requests are still readable); the second serves the rest and
  // sends every ACK held once the socket runs dry.
  static_assert(ServerConnection::kFramesPerTurn % ServerConnection::kMaxHeldAcks != 0,
                "a turn must end with ACKs held for this test to see them held");
  const size_t n = ServerConnection::kFramesPerTurn + 6;
  std::vector<uint8_t> stream;
  for (uint64_t id = 0; id < n; ++id) {
    const auto f = Frame(FrameType::kWrite, id, write_handle_, id, 1, 1);
    stream.insert(stream.end(), f.begin(), f.end());
  }
  Send(stream);
  ASSERT_EQ(conn_->Advance(t0_), Outcome::kYield);
  const size_t held_cap = ServerConnection::kMaxHeldAcks;
  EXPECT_EQ(Available(), (ServerConnection::kFramesPerTurn / held_cap) * held_cap * kHeaderSize);
  ASSERT_EQ(conn_->Advance(t0_), Outcome::kWaiting);
  EXPECT_EQ(Available(), n * kHeaderSize);
  for (uint64_t id = 0; id < n; ++id) EXPECT_EQ(Reply().request_id, id);
}

TEST_F(ServerConnectionTest, AReadReplyLargerThanTheSocketBufferHoldsItsAccessUntilItsLastByteLeaves) {
  const uint64_t len = kSlice;  // far more than a socketpair buffers
  Send(Frame(FrameType::kRead, 9, read_handle_, 0, len));
  ASSERT_EQ(conn_->Advance(t0_), Outcome::kWaiting);
  ASSERT_TRUE(handles_.Revoke(read_handle_).ok());
  EXPECT_FALSE(Released(read_handle_));
  // Nothing more is read while the reply waits: a request sent now is not served yet.
  Send(Frame(FrameType::kWrite, 10, write_handle_, 0, 4, 0x22));
  std::vector<uint8_t> got;
  FrameHeader r = Reply();
  EXPECT_EQ(r.request_id, 9u);
  ASSERT_EQ(r.length, len);
  while (got.size() < len) {
    // Over half the reply still to come cannot all sit in the socket's buffers: part of
    // it is still in the pool, waiting to be sent.
    if (got.size() < len / 2) {
      EXPECT_FALSE(Released(read_handle_)) << "released at " << got.size();
    }
    auto part = Payload(std::min<size_t>(len - got.size(), 64 << 10));
    ASSERT_FALSE(part.empty());
    got.insert(got.end(), part.begin(), part.end());
    ASSERT_NE(conn_->Advance(t0_ + milliseconds(1)), Outcome::kClosed);
  }
  EXPECT_TRUE(ReadPoolMatches(0, got));
  EXPECT_TRUE(Released(read_handle_));
  EXPECT_EQ(Reply().request_id, 10u);
  EXPECT_EQ(pool_[0], 0x22);
}

TEST_F(ServerConnectionTest, AFrameAcrossTheExtentsOfAScatterHandleMovesStraightBetweenTheSocketAndEachPiece) {
  // Three extents, out of pool order, one of them a single byte.
  const std::vector<PoolExtent> extents = {{300000, 1000}, {100000, 1}, {200000, 5000}};
  uint64_t wh = 0, rh = 0;
  ASSERT_TRUE(handles_.Expose(extents, Access::kWrite, &wh).ok());
  ASSERT_TRUE(handles_.Expose(extents, Access::kRead, &rh).ok());
  // Handle bytes [500, 1501 + 100): the last 500 of the first extent, the byte, 100 of the third.
  auto write = Frame(FrameType::kWrite, 1, wh, 500, 601);
  for (size_t i = 0; i < 601; ++i) write[kHeaderSize + i] = static_cast<uint8_t>(i % 251 + 1);
  Send(write);
  Send(Frame(FrameType::kRead, 2, rh, 500, 601));
  ASSERT_EQ(conn_->Advance(t0_), Outcome::kWaiting);
  EXPECT_EQ(Reply().request_id, 1u);
  EXPECT_EQ(pool_[300000 + 499], 0);
  for (size_t i = 0; i < 500; ++i) ASSERT_EQ(pool_[300500 + i], i % 251 + 1) << i;
  EXPECT_EQ(pool_[100000], 500 % 251 + 1);
  for (size_t i = 0; i < 100; ++i) ASSERT_EQ(pool_[200000 + i], (501 + i) % 251 + 1) << i;
  EXPECT_EQ(pool_[200100], 0);
  const FrameHeader r = Reply();
  EXPECT_EQ(r.request_id, 2u);
  ASSERT_EQ(r.length, 601u);
  const auto back = Payload(601);
  EXPECT_TRUE(std::equal(back.begin(), back.end(), write.begin() + kHeaderSize));
}

TEST_F(ServerConnectionTest, AMalformedRequestClosesTheConnectionAndIsCounted) {
  auto bad = Frame(FrameType::kWriteAck, 1, 0, 0, 0);  // a reply sent as a request
  Send(bad);
  EXPECT_EQ(conn_->Advance(t0_), Outcome::kClosed);
  EXPECT_EQ(counters_.frames_refused.load(), 1u);
  EXPECT_TRUE(PeerSeesEof());
  EXPECT_EQ(conn_->Advance(t0_), Outcome::kClosed) << "closed stays closed";
}

TEST_F(ServerConnectionTest, APeerLeavingMidFrameClosesUncountedAndEndsTheAccess) {
  Send(Frame(FrameType::kWrite, 1, write_handle_, 0, 4096), 0, kHeaderSize + 10);
  ASSERT_EQ(conn_->Advance(t0_), Outcome::kWaiting);
  close(peer_);
  peer_ = -1;
  ASSERT_TRUE(handles_.Revoke(write_handle_).ok());
  EXPECT_EQ(conn_->Advance(t0_), Outcome::kClosed);
  EXPECT_TRUE(Released(write_handle_));
  EXPECT_EQ(counters_.frames_refused.load(), 0u);
}

}  // namespace
}  // namespace kvferry
