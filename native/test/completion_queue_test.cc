#include "engine/completion_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace kvferry {
namespace {

Completion Op(uint64_t id) {
  Completion c;
  c.id = id;
  return c;
}

TEST(CompletionQueue, NotifiesOncePerEmptyToNonEmptyTransitionFromItsOwnThread) {
  CompletionQueue q;
  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  std::thread::id caller;
  q.SetNotifier([&] {
    std::lock_guard<std::mutex> lock(mu);
    ++calls;
    caller = std::this_thread::get_id();
    cv.notify_all();
  });
  auto wait_calls = [&](int n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(5), [&] { return calls >= n; });
  };
  auto current_calls = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return calls;
  };

  q.Push(Op(1));
  ASSERT_TRUE(wait_calls(1));
  // The owner has not drained yet: more completions join the batch silently.
  q.Push(Op(2));
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  q.Push(Op(3));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(current_calls(), 1);

  std::vector<Completion> out;
  EXPECT_EQ(q.Drain(&out), 3u);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].id, 1u);
  EXPECT_EQ(out[2].id, 3u);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_NE(caller, std::this_thread::get_id());
  }
  // Empty again: the next completion wakes the owner again.
  q.Push(Op(4));
  ASSERT_TRUE(wait_calls(2));
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_EQ(current_calls(), 2);
}

TEST(CompletionQueue, AfterSetNotifierReturnsTheOldNotifierIsNeverCalled) {
  CompletionQueue q;
  std::atomic<bool> retired{false};
  std::atomic<int> late_calls{0};
  q.SetNotifier([&] {
    if (retired.load()) late_calls.fetch_add(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  });
  q.Push(Op(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // likely inside the notifier
  q.SetNotifier(nullptr);
  retired.store(true);
  std::vector<Completion> out;
  q.Drain(&out);
  q.Push(Op(2));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(late_calls.load(), 0);
  EXPECT_EQ(q.size(), 1u);
}

TEST(CompletionQueue, ANotifierSetLaterHearsAboutCompletionsAlreadyQueued) {
  CompletionQueue q;
  q.Push(Op(1));
  std::atomic<int> calls{0};
  q.SetNotifier([&] { calls.fetch_add(1); });
  for (int i = 0; i < 500 && calls.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(calls.load(), 1);
}

TEST(CompletionQueue, PushAllMovesABatchInOrderWithOneNotification) {
  CompletionQueue q;
  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  q.SetNotifier([&] {
    std::lock_guard<std::mutex> lock(mu);
    ++calls;
    cv.notify_all();
  });
  std::vector<Completion> batch;
  q.PushAll(&batch);  // empty: nothing to announce
  for (uint64_t id = 1; id <= 3; ++id) batch.push_back(Op(id));
  q.PushAll(&batch);
  EXPECT_TRUE(batch.empty());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(5), [&] { return calls >= 1; }));
  }
  // Not drained yet: a second batch joins the first without another notification.
  batch.push_back(Op(4));
  batch.push_back(Op(5));
  q.PushAll(&batch);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(calls, 1);
  }
  std::vector<Completion> out;
  ASSERT_EQ(q.Drain(&out), 5u);
  for (uint64_t i = 0; i < 5; ++i) EXPECT_EQ(out[i].id, i + 1);
  q.SetNotifier(nullptr);
}

}  // namespace
}  // namespace kvferry
