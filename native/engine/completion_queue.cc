#include "engine/completion_queue.h"

#include <utility>

namespace kvferry {

CompletionQueue::CompletionQueue() : notifier_thread_([this] { NotifierLoop(); }) {}

CompletionQueue::~CompletionQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  notifier_thread_.join();
}

void CompletionQueue::Push(Completion completion) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake = queue_.empty();
    queue_.push_back(std::move(completion));
    if (wake) notify_pending_ = true;
  }
  if (wake) cv_.notify_all();
}

void CompletionQueue::PushAll(std::vector<Completion>* batch) {
  if (batch->empty()) return;
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake = queue_.empty();
    if (wake) {
      queue_.swap(*batch);
    } else {
      for (Completion& c : *batch) queue_.push_back(std::move(c));
    }
    if (wake) notify_pending_ = true;
  }
  batch->clear();
  if (wake) cv_.notify_all();
}

size_t CompletionQueue::Drain(std::vector<Completion>* out) {
  std::vector<Completion> batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch.swap(queue_);
    // A notification not yet delivered for this batch would find the queue empty.
    notify_pending_ = false;
  }
  const size_t n = batch.size();
  if (out->empty()) {
    out->swap(batch);
  } else {
    out->reserve(out->size() + n);
    for (Completion& c : batch) out->push_back(std::move(c));
  }
  return n;
}

void CompletionQueue::SetNotifier(std::function<void()> notify) {
  std::unique_lock<std::mutex> lock(mu_);
  notify_ = std::move(notify);
  if (std::this_thread::get_id() != notifier_thread_id_) {
    cv_.wait(lock, [this] { return !notifying_; });
  }
  // A batch that arrived while there was no notifier is announced to the new one.
  if (notify_ && !queue_.empty()) {
    notify_pending_ = true;
    cv_.notify_all();
  }
}

size_t CompletionQueue::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

void CompletionQueue::NotifierLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  notifier_thread_id_ = std::this_thread::get_id();
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || (notify_pending_ && notify_); });
    if (stop_) return;
    notify_pending_ = false;
    std::function<void()> notify = notify_;
    notifying_ = true;
    lock.unlock();
    notify();
    lock.lock();
    notifying_ = false;
    cv_.notify_all();
  }
}

}  // namespace kvferry
