// EventLoop: one epoll instance, run by one thread, with an eventfd wake-up and timers.
//
// Threads: Run()/RunOnce() belong to one thread at a time, the loop thread. Add, Remove,
// Kick, AddTimer and CancelTimer are for the loop thread (or for any thread before the
// loop runs); Post and Quit may be called from any thread.
//
// Registrations: Add(fd, events, handler) registers `fd` with the given epoll events
// (EPOLLET allowed) under a fresh key; epoll reports the key, never a pointer, so a
// handler removed while a batch of events is being dispatched (say, connection A's
// handler closes connection B, whose event is further down the same batch) is simply
// not called any more: after Remove(key) returns, the handler is never called again and
// its owner may free it. Remove does not close the fd (its owner does).
// Kick(key) makes the loop call the handler again (with events 0) after the current
// batch, without a system call: a handler that stopped early to let others run
// (edge-triggered fds report no new edge for bytes already waiting) asks for its turn.
//
// Timers: AddTimer(at, fn) runs fn on the loop thread once `at` has passed (never
// early); timers due together run in deadline order, ties in the order they were added.
// CancelTimer(id) before it fires means it never runs; cancelling a timer that already
// ran (or an unknown id) is a no-op.
//
// Post(fn) runs fn on the loop thread at its next turn (FIFO), waking it through the
// eventfd. Quit() makes Run() return after the current turn; tasks posted and not yet run
// after its last turn stay queued until RunPosted() (the owner's chance to dispose of them).
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/status.h"

namespace kvferry {
namespace tcp {

class EventLoop {
 public:
  using Clock = std::chrono::steady_clock;
  using Key = uint64_t;
  using TimerId = uint64_t;

  class Handler {
   public:
    /** `events`: the epoll events (EPOLLIN, EPOLLOUT, EPOLLERR, ...), or 0 for a Kick. */
    virtual void OnEvents(uint32_t events) = 0;

   protected:
    ~Handler() = default;
  };

  EventLoop() = default;
  ~EventLoop();

  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  /** Creates the epoll instance and the eventfd; call once, before anything else. */
  [[nodiscard]] Status Init();

  [[nodiscard]] Status Add(int fd, uint32_t events, Handler* handler, Key* key);
  void Remove(Key key);
  void Kick(Key key);

  TimerId AddTimer(Clock::time_point at, std::function<void()> fn);
  void CancelTimer(TimerId id);
  size_t timers() const { return timers_.size(); }

  void Post(std::function<void()> fn);
  /** Runs the tasks posted so far (loop thread, or after the loop thread has ended). */
  void RunPosted();

  /** Turns until Quit(). */
  void Run();
  /**
   * One turn: waits up to `max_wait_ms` (-1: no limit; shortened to the next timer, 0
   * when handlers are kicked) for events, dispatches them, then kicked handlers, due
   * timers and posted tasks.
   */
  void RunOnce(int max_wait_ms);
  void Quit();
  bool quitting() const { return quit_.load(std::memory_order_acquire); }

 private:
  struct Registration {
    int fd;
    Handler* handler;
  };

  int WaitMs(int max_wait_ms) const;
  void Dispatch(Key key, uint32_t events);
  void RunDueTimers();

  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<bool> quit_{false};

  // Loop thread only.
  Key next_key_ = 1;  // 0 is the eventfd
  std::unordered_map<Key, Registration> registrations_;
  std::vector<Key> kicked_;
  std::vector<Key> kicked_running_;
  TimerId next_timer_ = 1;
  std::map<std::pair<Clock::time_point, TimerId>, std::function<void()>> timers_;
  std::unordered_map<TimerId, Clock::time_point> timer_at_;
  std::vector<struct epoll_event> events_ = std::vector<struct epoll_event>(256);

  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;  // guarded by post_mu_
  std::vector<std::function<void()>> running_;  // loop thread only
};

}  // namespace tcp
}  // namespace kvferry
