// CompletionQueue: where engine threads leave terminal events for the owner.
//
// Contract
// - Push never blocks on the owner: it appends under a short lock.
// - When the queue goes from empty to non-empty the notifier is called once, from the
//   queue's own notifier thread (never from the pushing thread, so a notifier may take
//   the owner's locks or call back into the engine without deadlocking it). The owner
//   drains everything with Drain: one wake-up per batch, not per completion.
// - After SetNotifier returns, the previous notifier is not running and will not be
//   called again (unless SetNotifier is called from inside the notifier itself).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/engine.h"

namespace kvferry {

class CompletionQueue {
 public:
  CompletionQueue();
  ~CompletionQueue();

  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;

  void Push(Completion completion);
  /** Moves every completion of `*batch` to the queue (one wake-up at most); clears it. */
  void PushAll(std::vector<Completion>* batch);
  /** Moves every queued completion to the end of `out`; returns how many. */
  size_t Drain(std::vector<Completion>* out);
  void SetNotifier(std::function<void()> notify);
  size_t size() const;

 private:
  void NotifierLoop();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Completion> queue_;
  std::function<void()> notify_;
  bool notify_pending_ = false;
  bool notifying_ = false;
  bool stop_ = false;
  std::thread::id notifier_thread_id_;
  std::thread notifier_thread_;  // last: starts after everything above is constructed
};

}  // namespace kvferry
