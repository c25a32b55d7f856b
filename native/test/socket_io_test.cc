#include "engine/tcp/socket_io.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

namespace kvferry {
namespace tcp {
namespace {

class SocketPair {
 public:
  SocketPair() {
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds_), 0);
    SetIoTimeouts(fds_[0], 2000);
    SetIoTimeouts(fds_[1], 2000);
  }
  ~SocketPair() {
    if (fds_[0] >= 0) close(fds_[0]);
    if (fds_[1] >= 0) close(fds_[1]);
  }
  int reader() const { return fds_[0]; }
  int writer() const { return fds_[1]; }
  void CloseWriter() {
    close(fds_[1]);
    fds_[1] = -1;
  }
  void Send(const std::vector<uint8_t>& bytes) {
    struct iovec iov = {const_cast<uint8_t*>(bytes.data()), bytes.size()};
    ASSERT_EQ(SendFull(fds_[1], &iov, 1), IoResult::kOk);
  }

 private:
  int fds_[2] = {-1, -1};
};

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

TEST(RecvFullAndPeek, TakesThePayloadAndWhatOfTheNextFrameHasArrived) {
  SocketPair p;
  const auto payload = Pattern(1000, 1);
  const auto next = Pattern(20, 99);
  std::vector<uint8_t> both(payload);
  both.insert(both.end(), next.begin(), next.end());
  p.Send(both);
  std::vector<uint8_t> got(payload.size());
  uint8_t spill[48];
  size_t spilled = 0;
  ASSERT_EQ(RecvFullAndPeek(p.reader(), got.data(), got.size(), spill, sizeof(spill), &spilled), IoResult::kOk);
  EXPECT_EQ(got, payload);
  ASSERT_EQ(spilled, next.size());
  EXPECT_EQ(std::vector<uint8_t>(spill, spill + spilled), next);
}

TEST(RecvFullAndPeek, NeverTakesMoreThanTheSpillAndNeverWaitsForIt) {
  SocketPair p;
  const auto payload = Pattern(512, 3);
  const auto after = Pattern(100, 5);
  std::vector<uint8_t> both(payload);
  both.insert(both.end(), after.begin(), after.end());
  p.Send(both);
  std::vector<uint8_t> got(payload.size());
  uint8_t spill[48];
  size_t spilled = 0;
  ASSERT_EQ(RecvFullAndPeek(p.reader(), got.data(), got.size(), spill, sizeof(spill), &spilled), IoResult::kOk);
  EXPECT_EQ(got, payload);
  ASSERT_EQ(spilled, sizeof(spill));
  std::vector<uint8_t> rest(after.size() - sizeof(spill));
  size_t n = 0;
  ASSERT_EQ(RecvFull(p.reader(), rest.data(), rest.size(), &n), IoResult::kOk);
  std::vector<uint8_t> all(spill, spill + spilled);
  all.insert(all.end(), rest.begin(), rest.end());
  EXPECT_EQ(all, after);

  // Nothing follows the payload: it returns at once with an empty spill.
  p.Send(payload);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(RecvFullAndPeek(p.reader(), got.data(), got.size(), spill, sizeof(spill), &spilled), IoResult::kOk);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1000));
  EXPECT_EQ(spilled, 0u);
  EXPECT_EQ(got, payload);
}

TEST(RecvFullAndPeek, ALargePayloadArrivingInPiecesLandsIntactAndTheNextBytesStayInOrder) {
  SocketPair p;
  const auto payload = Pattern(700 * 1024 + 13, 11);
  const auto next = Pattern(48, 77);
  std::thread writer([&] {
    size_t at = 0;
    while (at < payload.size()) {
      const size_t n = std::min<size_t>(payload.size() - at, 50 * 1024 + 1);
      struct iovec iov = {const_cast<uint8_t*>(payload.data() + at), n};
      ASSERT_EQ(SendFull(p.writer(), &iov, 1), IoResult::kOk);
      at += n;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    struct iovec iov = {const_cast<uint8_t*>(next.data()), next.size()};
    ASSERT_EQ(SendFull(p.writer(), &iov, 1), IoResult::kOk);
  });
  std::vector<uint8_t> got(payload.size());
  uint8_t spill[48];
  size_t spilled = 0;
  ASSERT_EQ(RecvFullAndPeek(p.reader(), got.data(), got.size(), spill, sizeof(spill), &spilled), IoResult::kOk);
  writer.join();
  EXPECT_TRUE(got == payload);
  std::vector<uint8_t> rest(next.size() - spilled);
  size_t n = 0;
  if (!rest.empty()) {
    ASSERT_EQ(RecvFull(p.reader(), rest.data(), rest.size(), &n), IoResult::kOk);
  }
  std::vector<uint8_t> all(spill, spill + spilled);
  all.insert(all.end(), rest.begin(), rest.end());
  EXPECT_EQ(all, next);
}

TEST(RecvFullAndPeek, APeerThatClosesMidPayloadIsReported) {
  SocketPair p;
  p.Send(Pattern(100, 1));
  p.CloseWriter();
  std::vector<uint8_t> got(200);
  uint8_t spill[48];
  size_t spilled = 0;
  EXPECT_EQ(RecvFullAndPeek(p.reader(), got.data(), got.size(), spill, sizeof(spill), &spilled), IoResult::kClosed);
  EXPECT_EQ(spilled, 0u);
}

}  // namespace
}  // namespace tcp
}  // namespace kvferry
