#include "engine/extent_allocator.h"

#include <iterator>
#include <string>

namespace kvferry {

namespace {

// Rounds `size` up to whole units; false if that overflows.
bool RoundUp(uint64_t size, uint64_t* rounded) {
  if (size == 0) {
    *rounded = ExtentAllocator::kAlignment;
    return true;
  }
  if (size > UINT64_MAX - (ExtentAllocator::kAlignment - 1)) return false;
  *rounded = (size + ExtentAllocator::kAlignment - 1) & ~(ExtentAllocator::kAlignment - 1);
  return true;
}

}  // namespace

ExtentAllocator::ExtentAllocator(uint64_t capacity) : capacity_(capacity & ~(kAlignment - 1)) {
  if (capacity_ > 0) InsertFree(0, capacity_);
}

void ExtentAllocator::InsertFree(uint64_t offset, uint64_t size) {
  free_by_offset_.emplace(offset, size);
  free_by_size_.emplace(size, offset);
}

void ExtentAllocator::EraseFree(std::map<uint64_t, uint64_t>::iterator it) {
  free_by_size_.erase({it->second, it->first});
  free_by_offset_.erase(it);
}

Status ExtentAllocator::Allocate(uint64_t size, uint64_t* offset) {
  uint64_t rounded = 0;
  if (!RoundUp(size, &rounded) || rounded > capacity_ - used_) {
    return Status(Code::kResourceExhausted,
                  "no free extent of " + std::to_string(size) + " bytes (" +
                      std::to_string(capacity_ - used_) + " bytes free in total)");
  }
  // Best fit: first (size, offset) pair not smaller than (rounded, 0).
  auto fit = free_by_size_.lower_bound({rounded, 0});
  if (fit == free_by_size_.end()) {
    return Status(Code::kResourceExhausted,
                  "no free extent of " + std::to_string(size) + " bytes (largest is " +
                      std::to_string(free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first) +
                      ")");
  }
  *offset = TakeFree(fit, rounded);
  return Status::Ok();
}

uint64_t ExtentAllocator::TakeFree(std::set<std::pair<uint64_t, uint64_t>>::iterator fit, uint64_t size) {
  const uint64_t extent_size = fit->first;
  const uint64_t extent_offset = fit->second;
  EraseFree(free_by_offset_.find(extent_offset));
  if (extent_size > size) InsertFree(extent_offset + size, extent_size - size);
  live_.emplace(extent_offset, size);
  used_ += size;
  return extent_offset;
}

Status ExtentAllocator::AllocateScattered(uint64_t size, size_t max_extents, std::vector<Extent>* out) {
  uint64_t rounded = 0;
  if (!RoundUp(size, &rounded) || rounded > capacity_ - used_) {
    return Status(Code::kResourceExhausted,
                  "no room for " + std::to_string(size) + " bytes (" + std::to_string(capacity_ - used_) +
                      " bytes free in total)");
  }
  // Count the extents first, so that a refusal changes nothing. Taking the largest free
  // extents whole until the rest fits in one gives the fewest; the free extents add up
  // to capacity_ - used_ >= rounded, so the walk ends inside the set.
  size_t needed = 0;
  uint64_t left = rounded;
  for (auto it = free_by_size_.rbegin(); it != free_by_size_.rend() && left > 0; ++it) {
    ++needed;
    left = it->first >= left ? 0 : left - it->first;
  }
  if (left > 0) return Status(Code::kInternal, "free extents add up to less than the free byte count");
  if (needed > max_extents) {
    return Status(Code::kResourceExhausted,
                  "no room for " + std::to_string(size) + " bytes in at most " + std::to_string(max_extents) +
                      " extents (" + std::to_string(needed) + " would be needed; " +
                      std::to_string(free_by_offset_.size()) + " free extents)");
  }
  left = rounded;
  while (left > 0) {
    auto fit = free_by_size_.lower_bound({left, 0});
    // The last piece best fit; before it, the largest free extent whole.
    const uint64_t take = fit != free_by_size_.end() ? left : free_by_size_.rbegin()->first;
    if (fit == free_by_size_.end()) fit = std::prev(free_by_size_.end());
    out->push_back({TakeFree(fit, take), take});
    left -= take;
  }
  return Status::Ok();
}

Status ExtentAllocator::Free(uint64_t offset) {
  auto it = live_.find(offset);
  if (it == live_.end()) {
    return Status(Code::kInvalidArgument,
                  "offset " + std::to_string(offset) + " is not the start of a live allocation");
  }
  uint64_t start = it->first;
  uint64_t size = it->second;
  live_.erase(it);
  used_ -= size;

  // Merge with the free extent that begins right after this one and with the one that
  // ends right at its start; no other free extent can touch it.
  auto next = free_by_offset_.lower_bound(start);
  if (next != free_by_offset_.end() && next->first == start + size) {
    size += next->second;
    auto after = std::next(next);
    EraseFree(next);
    next = after;
  }
  if (next != free_by_offset_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      size += prev->second;
      EraseFree(prev);
    }
  }
  InsertFree(start, size);
  return Status::Ok();
}

uint64_t ExtentAllocator::AllocationSize(uint64_t offset) const {
  auto it = live_.find(offset);
  return it == live_.end() ? 0 : it->second;
}

ExtentAllocator::Stats ExtentAllocator::stats() const {
  Stats s;
  s.capacity = capacity_;
  s.used = used_;
  s.free_extents = free_by_offset_.size();
  s.largest_free = free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
  s.allocations = live_.size();
  return s;
}

Status ExtentAllocator::CheckInvariants() const {
  auto fail = [](const std::string& what) { return Status(Code::kInternal, what); };
  if (free_by_offset_.size() != free_by_size_.size()) return fail("free indexes differ in size");

  // Walk both maps in offset order; together they must tile [0, capacity) exactly.
  uint64_t cursor = 0;
  uint64_t live_bytes = 0;
  bool previous_was_free = false;
  auto f = free_by_offset_.begin();
  auto l = live_.begin();
  while (f != free_by_offset_.end() || l != live_.end()) {
    const bool take_free = l == live_.end() || (f != free_by_offset_.end() && f->first < l->first);
    const uint64_t off = take_free ? f->first : l->first;
    const uint64_t size = take_free ? f->second : l->second;
    const std::string where = (take_free ? "free extent at " : "allocation at ") + std::to_string(off);
    if (off != cursor) {
      return fail(where + (off < cursor ? " overlaps its predecessor" : " leaves a gap before it"));
    }
    if (off % kAlignment != 0 || size % kAlignment != 0 || size == 0) return fail(where + " is misaligned or empty");
    if (size > capacity_ - off) return fail(where + " runs past the capacity");
    if (take_free) {
      if (previous_was_free) return fail(where + " was not coalesced with its predecessor");
      if (free_by_size_.count({size, off}) != 1) return fail(where + " is missing from the size index");
      ++f;
    } else {
      live_bytes += size;
      ++l;
    }
    previous_was_free = take_free;
    cursor = off + size;
  }
  if (cursor != capacity_) return fail("extents end at " + std::to_string(cursor) + ", not at the capacity");
  if (live_bytes != used_) return fail("used counter disagrees with the live allocations");
  return Status::Ok();
}

}  // namespace kvferry
