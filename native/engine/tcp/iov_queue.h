// IovQueue: the iovecs of a transfer still to fill (readv) or send (sendmsg), consumed
// from the front as the socket takes or gives bytes, so a non-blocking connection can
// resume a partial transfer where it stopped. The buffers are the caller's; the queue
// holds only their addresses. Not thread-safe.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvferry {
namespace tcp {

class IovQueue {
 public:
  void Clear() { v_.clear(), first_ = 0; }
  /** Appends a buffer (zero-length ones are skipped). */
  void Push(void* base, size_t len) {
    if (len > 0) v_.push_back({base, len});
  }
  bool empty() const { return first_ == v_.size(); }
  /** Up to `max` iovecs from the front, for one readv/sendmsg. */
  struct iovec* front(size_t max, int* count) {
    *count = static_cast<int>(std::min(max, v_.size() - first_));
    return v_.data() + first_;
  }
  /** Drops the first `n` bytes (what one call moved). */
  void Consume(size_t n) {
    while (n > 0 && first_ < v_.size()) {
      struct iovec& f = v_[first_];
      if (n >= f.iov_len) {
        n -= f.iov_len;
        ++first_;
      } else {
        f.iov_base = static_cast<uint8_t*>(f.iov_base) + n;
        f.iov_len -= n;
        n = 0;
      }
    }
    if (first_ == v_.size()) Clear();
  }

 private:
  std::vector<struct iovec> v_;
  size_t first_ = 0;
};

}  // namespace tcp
}  // namespace kvferry
