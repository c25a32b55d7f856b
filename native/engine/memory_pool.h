// MemoryPool: the engine's one block of transferable memory, carved into extents.
//
// The mapping is a memfd (so a local connector can map the same pages) mapped
// MAP_SHARED; if memfd_create is unavailable it falls back to anonymous shared memory
// and fd() is -1. The mapping and the fd live exactly as long as the pool object.
// The memfd's pages are reserved (fallocate) in Create and mapped into the page tables by a
// background thread (Prefault), so that creating a large pool returns in a fraction of a
// second; the destructor stops and joins that thread before unmapping.
// Allocate/Free/stats are thread-safe (one mutex around an ExtentAllocator); base() and
// size() never change after Create.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/extent_allocator.h"
#include "engine/status.h"

namespace kvferry {

class MemoryPool {
 public:
  [[nodiscard]] static Status Create(uint64_t size, std::unique_ptr<MemoryPool>* out);
  ~MemoryPool();

  MemoryPool(const MemoryPool&) = delete;
  MemoryPool& operator=(const MemoryPool&) = delete;

  uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }
  /** The memfd, or -1 when the pool fell back to anonymous memory. */
  int fd() const { return fd_; }

  /** True when [offset, offset+length) lies inside the mapping (overflow-safe). */
  bool Contains(uint64_t offset, uint64_t length) const {
    return offset <= size_ && length <= size_ - offset;
  }

  [[nodiscard]] Status Allocate(uint64_t size, uint64_t* offset);
  /** ExtentAllocator::AllocateScattered under the pool's lock. */
  [[nodiscard]] Status AllocateScattered(uint64_t size, size_t max_extents, std::vector<ExtentAllocator::Extent>* out);
  [[nodiscard]] Status Free(uint64_t offset);
  ExtentAllocator::Stats stats() const;

 private:
  MemoryPool(uint8_t* base, uint64_t size, int fd);
  void Prefault();

  uint8_t* const base_;
  const uint64_t size_;
  const int fd_;
  mutable std::mutex mu_;
  ExtentAllocator allocator_;  // guarded by mu_
  std::atomic<bool> stop_prefault_{false};
  std::thread prefault_;  // last: started once every other member is constructed
};

}  // namespace kvferry
