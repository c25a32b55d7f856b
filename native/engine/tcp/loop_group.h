// LoopGroup: the TCP transport's I/O threads — a fixed set of EventLoops (event_loop.h),
// each run by one thread, shared by both halves of the transport. TcpTransport owns the
// group and hands it to TcpServer (accepted connections) and TcpClient (outgoing
// connections); neither half starts a thread of its own, so the whole transport runs
// size() threads however many peers and connections it has.
//
// Lifecycle: Start() creates the loops and their threads; Stop() (idempotent; also the
// destructor) quits them, joins the threads and runs the tasks still posted on the
// caller's thread (their owners see that they are stopping and dispose of them). The
// halves finish with their connections (TcpServer::Stop, TcpClient::Shutdown) before
// the group stops, so no handler or timer of theirs is left registered.
//
// RunOn(i, fn) runs fn on loop i's thread and waits for it: the halves use it to act on
// a loop's state from another thread (register a listener, close their connections at
// shutdown). Because posted tasks run in order, it is also a barrier: every task posted
// to that loop before it has run when it returns. Never call it from a loop thread.
// When the loops are not running (before Start, after Stop), it runs the tasks already
// posted to loop i and then fn, on the caller's thread.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "engine/status.h"
#include "engine/tcp/event_loop.h"

namespace kvferry {
namespace tcp {

class LoopGroup {
 public:
  /** `threads`: how many loops; 0 means twice hardware_concurrency, clamped to [2, 8]. */
  explicit LoopGroup(int threads);
  ~LoopGroup();

  LoopGroup(const LoopGroup&) = delete;
  LoopGroup& operator=(const LoopGroup&) = delete;

  [[nodiscard]] Status Start();
  void Stop();

  size_t size() const { return loops_.size(); }
  EventLoop& loop(size_t i) { return *loops_[i]; }
  bool running() const { return running_; }
  void RunOn(size_t i, std::function<void()> fn);

 private:
  std::vector<std::unique_ptr<EventLoop>> loops_;
  std::vector<std::thread> threads_;
  bool initialized_ = false;
  bool running_ = false;
};

}  // namespace tcp
}  // namespace kvferry
