// ExtentAllocator: a pure bookkeeping allocator over the byte range [0, capacity).
//
// Contract
// - Every extent starts at a multiple of kAlignment and spans a whole number of
//   kAlignment-byte units; `size` is rounded up to that.
// - Allocate(0) is allowed and consumes one unit, so every live allocation has a unique
//   offset and Free works the same for it.
// - Best fit: the smallest free extent that holds the request, lowest offset on ties.
//   Free coalesces with both neighbours at once, so free extents never touch.
// - Not thread-safe; MemoryPool serialises access with its mutex.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <utility>

#include "engine/status.h"

namespace kvferry {

class ExtentAllocator {
 public:
  static constexpr uint64_t kAlignment = 64;

  struct Stats {
    uint64_t capacity = 0;
    uint64_t used = 0;
    uint64_t free_extents = 0;
    uint64_t largest_free = 0;
    uint64_t allocations = 0;
  };

  /** Manages [0, capacity rounded down to kAlignment). */
  explicit ExtentAllocator(uint64_t capacity);

  ExtentAllocator(const ExtentAllocator&) = delete;
  ExtentAllocator& operator=(const ExtentAllocator&) = delete;

  /** kResourceExhausted when no free extent holds the rounded size. */
  [[nodiscard]] Status Allocate(uint64_t size, uint64_t* offset);
  /** kInvalidArgument unless `offset` is the start of a live allocation. */
  [[nodiscard]] Status Free(uint64_t offset);

  /** Size (rounded) of the live allocation starting at `offset`, or 0 if there is none. */
  uint64_t AllocationSize(uint64_t offset) const;

  Stats stats() const;
  uint64_t capacity() const { return capacity_; }

  /**
   * For tests: free and live extents are aligned, do not overlap, tile [0, capacity)
   * exactly, free neighbours are coalesced, and the indexes and counters agree.
   */
  [[nodiscard]] Status CheckInvariants() const;

 private:
  void InsertFree(uint64_t offset, uint64_t size);
  void EraseFree(std::map<uint64_t, uint64_t>::iterator it);

  uint64_t capacity_;
  uint64_t used_ = 0;
  // Free extents by offset (for coalescing) and by (size, offset) (for best fit).
  std::map<uint64_t, uint64_t> free_by_offset_;
  std::set<std::pair<uint64_t, uint64_t>> free_by_size_;
  // Live allocations: offset → rounded size.
  std::map<uint64_t, uint64_t> live_;
};

}  // namespace kvferry
