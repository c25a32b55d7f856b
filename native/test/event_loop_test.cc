// EventLoop: registrations, kicks, the cross-thread wake-up and timers.
#include "engine/tcp/event_loop.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <vector>

namespace kvferry {
namespace {

using std::chrono::milliseconds;
using tcp::EventLoop;

/** Calls `fn` with the events of each dispatch, and counts them. */
class Recorder final : public EventLoop::Handler {
 public:
  explicit Recorder(std::function<void(uint32_t)> fn = {}) : fn_(std::move(fn)) {}
  void OnEvents(uint32_t events) override {
    ++calls;
    last = events;
    if (fn_) fn_(events);
  }
  int calls = 0;
  uint32_t last = 0;

 private:
  std::function<void(uint32_t)> fn_;
};

class EventLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(loop_.Init().ok());
    for (int* pair : {a_, b_}) ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair), 0);
  }
  void TearDown() override {
    for (int fd : {a_[0], a_[1], b_[0], b_[1]}) close(fd);
  }
  static void Poke(int fd) { ASSERT_EQ(write(fd, "x", 1), 1); }

  EventLoop loop_;
  int a_[2] = {-1, -1};
  int b_[2] = {-1, -1};
};

TEST_F(EventLoopTest, AReadableFdCallsItsHandlerAndARemovedOneNeverAgain) {
  Recorder r;
  EventLoop::Key key = 0;
  ASSERT_TRUE(loop_.Add(a_[0], EPOLLIN, &r, &key).ok());
  loop_.RunOnce(0);
  EXPECT_EQ(r.calls, 0) << "nothing to read yet";
  Poke(a_[1]);
  loop_.RunOnce(1000);
  EXPECT_EQ(r.calls, 1);
  EXPECT_TRUE(r.last & EPOLLIN);
  loop_.Remove(key);
  loop_.RunOnce(0);  // level-triggered and still readable, but removed
  EXPECT_EQ(r.calls, 1);
}

TEST_F(EventLoopTest, AHandlerRemovedByAnotherInTheSameBatchIsNotCalled) {
  // Each handler removes the other: both fds are ready in one batch, so exactly one runs.
  EventLoop::Key ka = 0, kb = 0;
  Recorder ra([&](uint32_t) { loop_.Remove(kb); });
  Recorder rb([&](uint32_t) { loop_.Remove(ka); });
  ASSERT_TRUE(loop_.Add(a_[0], EPOLLIN | EPOLLET, &ra, &ka).ok());
  ASSERT_TRUE(loop_.Add(b_[0], EPOLLIN | EPOLLET, &rb, &kb).ok());
  Poke(a_[1]);
  Poke(b_[1]);
  loop_.RunOnce(1000);
  EXPECT_EQ(ra.calls + rb.calls, 1);
  Poke(a_[1]);
  Poke(b_[1]);
  loop_.RunOnce(100);
  EXPECT_EQ(ra.calls + rb.calls, 2) << "the survivor runs again, the removed one never";
  EXPECT_TRUE(ra.calls == 0 || rb.calls == 0);
}

TEST_F(EventLoopTest, EdgeTriggeredFdsReportNewBytesOnlyAndAKickBringsAHandlerBack) {
  Recorder r;
  EventLoop::Key key = 0;
  ASSERT_TRUE(loop_.Add(a_[0], EPOLLIN | EPOLLET, &r, &key).ok());
  Poke(a_[1]);
  loop_.RunOnce(1000);
  EXPECT_EQ(r.calls, 1);
  loop_.RunOnce(0);
  EXPECT_EQ(r.calls, 1) << "no new edge while the byte stays unread";
  loop_.Kick(key);
  loop_.RunOnce(1000);  // a kick makes the wait 0 and calls the handler with events 0
  EXPECT_EQ(r.calls, 2);
  EXPECT_EQ(r.last, 0u);
  Poke(a_[1]);
  loop_.RunOnce(1000);
  EXPECT_EQ(r.calls, 3);
}

TEST_F(EventLoopTest, PostFromAnotherThreadWakesABlockedLoop) {
  std::atomic<int> ran{0};
  std::thread poster([&] {
    std::this_thread::sleep_for(milliseconds(50));
    loop_.Post([&] { ran.fetch_add(1); });
  });
  const auto start = std::chrono::steady_clock::now();
  while (ran.load() == 0 && std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) loop_.RunOnce(-1);
  poster.join();
  EXPECT_EQ(ran.load(), 1);
}

TEST_F(EventLoopTest, QuitFromAnotherThreadEndsRunAndLaterPostsWaitForRunPosted) {
  std::thread runner([&] { loop_.Run(); });
  std::this_thread::sleep_for(milliseconds(20));
  loop_.Quit();
  runner.join();
  EXPECT_TRUE(loop_.quitting());
  int ran = 0;
  loop_.Post([&] { ++ran; });
  EXPECT_EQ(ran, 0);
  loop_.RunPosted();
  EXPECT_EQ(ran, 1);
}

TEST_F(EventLoopTest, TimersFireInDeadlineOrderTiesInTheOrderAddedAndNeverEarly) {
  using Clock = EventLoop::Clock;
  std::vector<int> fired;
  std::vector<Clock::time_point> fired_at;
  const auto t0 = Clock::now();
  auto add = [&](int ms, int tag) {
    const auto at = t0 + milliseconds(ms);
    loop_.AddTimer(at, [&, tag, at] {
      fired.push_back(tag);
      fired_at.push_back(Clock::now());
      EXPECT_GE(Clock::now(), at) << "timer " << tag << " fired early";
    });
  };
  add(60, 3);
  add(20, 1);
  add(40, 2);
  add(40, 22);  // same deadline as 2, added later
  add(0, 0);
  while (fired.size() < 5 && Clock::now() - t0 < std::chrono::seconds(5)) loop_.RunOnce(-1);
  EXPECT_EQ(fired, (std::vector<int>{0, 1, 2, 22, 3}));
  EXPECT_EQ(loop_.timers(), 0u);
}

TEST_F(EventLoopTest, ACancelledTimerNeverRunsAndCancellingTwiceOrAfterItRanIsHarmless) {
  using Clock = EventLoop::Clock;
  int a = 0, b = 0;
  const auto ta = loop_.AddTimer(Clock::now() + milliseconds(10), [&] { ++a; });
  const auto tb = loop_.AddTimer(Clock::now() + milliseconds(30), [&] { ++b; });
  loop_.CancelTimer(ta);
  loop_.CancelTimer(ta);
  const auto start = Clock::now();
  while (b == 0 && Clock::now() - start < std::chrono::seconds(5)) loop_.RunOnce(-1);
  EXPECT_EQ(a, 0);
  EXPECT_EQ(b, 1);
  loop_.CancelTimer(tb);  // already ran
  EXPECT_EQ(loop_.timers(), 0u);
}

TEST_F(EventLoopTest, ATimerMayAddAndCancelOthersFromItsFunction) {
  using Clock = EventLoop::Clock;
  int later = 0, cancelled = 0;
  EventLoop::TimerId victim = loop_.AddTimer(Clock::now() + milliseconds(20), [&] { ++cancelled; });
  loop_.AddTimer(Clock::now(), [&] {
    loop_.CancelTimer(victim);
    loop_.AddTimer(Clock::now() + milliseconds(5), [&] { ++later; });
  });
  const auto start = Clock::now();
  while (later == 0 && Clock::now() - start < std::chrono::seconds(5)) loop_.RunOnce(-1);
  loop_.RunOnce(30);
  EXPECT_EQ(later, 1);
  EXPECT_EQ(cancelled, 0);
}

TEST_F(EventLoopTest, RunOnceWaitsNoLongerThanTheNextTimer) {
  using Clock = EventLoop::Clock;
  bool fired = false;
  const auto start = Clock::now();
  loop_.AddTimer(start + milliseconds(30), [&] { fired = true; });
  loop_.RunOnce(10000);  // nothing readable: returns at the timer, not after 10 s
  EXPECT_TRUE(fired);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
}

}  // namespace
}  // namespace kvferry
