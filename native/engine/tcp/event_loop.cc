#include "engine/tcp/event_loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace kvferry {
namespace tcp {

namespace {

constexpr EventLoop::Key kWakeKey = 0;

Status Errno(const char* what) { return Status(Code::kInternal, std::string(what) + ": " + std::strerror(errno)); }

}  // namespace

EventLoop::~EventLoop() {
  if (wake_fd_ >= 0) close(wake_fd_);
  if (epoll_fd_ >= 0) close(epoll_fd_);
}

Status EventLoop::Init() {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return Errno("epoll_create1");
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return Errno("eventfd");
  struct epoll_event ev;
  std::memset(&ev, 0, sizeof(ev));
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeKey;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) return Errno("epoll_ctl(eventfd)");
  return Status::Ok();
}

Status EventLoop::Add(int fd, uint32_t events, Handler* handler, Key* key) {
  const Key k = next_key_++;
  struct epoll_event ev;
  std::memset(&ev, 0, sizeof(ev));
  ev.events = events;
  ev.data.u64 = k;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) return Errno("epoll_ctl(add)");
  registrations_.emplace(k, Registration{fd, handler});
  *key = k;
  return Status::Ok();
}

void EventLoop::Remove(Key key) {
  auto it = registrations_.find(key);
  if (it == registrations_.end()) return;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, it->second.fd, nullptr);
  registrations_.erase(it);
}

void EventLoop::Kick(Key key) { kicked_.push_back(key); }

EventLoop::TimerId EventLoop::AddTimer(Clock::time_point at, std::function<void()> fn) {
  const TimerId id = next_timer_++;
  timers_.emplace(std::make_pair(at, id), std::move(fn));
  timer_at_.emplace(id, at);
  return id;
}

void EventLoop::CancelTimer(TimerId id) {
  auto it = timer_at_.find(id);
  if (it == timer_at_.end()) return;
  timers_.erase(std::make_pair(it->second, id));
  timer_at_.erase(it);
}

void EventLoop::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    posted_.push_back(std::move(fn));
  }
  const uint64_t one = 1;
  ssize_t ignored = write(wake_fd_, &one, sizeof(one));
  (void)ignored;
}

void EventLoop::RunPosted() {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    running_.swap(posted_);
  }
  for (auto& fn : running_) fn();
  running_.clear();
}

void EventLoop::Quit() {
  quit_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  ssize_t ignored = write(wake_fd_, &one, sizeof(one));
  (void)ignored;
}

void EventLoop::Run() {
  while (!quitting()) RunOnce(-1);
}

int EventLoop::WaitMs(int max_wait_ms) const {
  if (!kicked_.empty()) return 0;
  if (timers_.empty()) return max_wait_ms;
  // Rounded up, so the wake-up is never early.
  const auto left = timers_.begin()->first.first - Clock::now();
  const int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(left + std::chrono::microseconds(999)).count();
  const int until_timer = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(ms, 1 << 30)));
  return max_wait_ms < 0 ? until_timer : std::min(max_wait_ms, until_timer);
}

void EventLoop::Dispatch(Key key, uint32_t events) {
  auto it = registrations_.find(key);
  if (it != registrations_.end()) it->second.handler->OnEvents(events);
}

void EventLoop::RunDueTimers() {
  const auto now = Clock::now();
  // One timer at a time: a timer's function may add or cancel others.
  while (!timers_.empty() && timers_.begin()->first.first <= now) {
    auto first = timers_.begin();
    std::function<void()> fn = std::move(first->second);
    timer_at_.erase(first->first.second);
    timers_.erase(first);
    fn();
  }
}

void EventLoop::RunOnce(int max_wait_ms) {
  const int n = epoll_wait(epoll_fd_, events_.data(), static_cast<int>(events_.size()), WaitMs(max_wait_ms));
  bool woken = false;
  for (int i = 0; i < n; ++i) {
    if (events_[i].data.u64 == kWakeKey) {
      woken = true;
      continue;
    }
    Dispatch(events_[i].data.u64, events_[i].events);
  }
  // Handlers kicked during this pass run in the next one.
  kicked_running_.swap(kicked_);
  for (Key key : kicked_running_) Dispatch(key, 0);
  kicked_running_.clear();
  RunDueTimers();
  if (woken) {
    uint64_t count = 0;
    ssize_t ignored = read(wake_fd_, &count, sizeof(count));
    (void)ignored;
    RunPosted();
  }
}

}  // namespace tcp
}  // namespace kvferry
