#include "engine/handle_table.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <string>
#include <utility>

namespace kvferry {

HandleTable::HandleTable(ReleasedFn on_released) : on_released_(std::move(on_released)) {}

uint64_t HandleTable::NextIdLocked() {
  // Handles are capabilities handed to peers, so they come straight from the kernel's
  // CSPRNG (getrandom) rather than from a seeded PRNG, whose later outputs a peer could
  // predict from the handles it has seen. Fetched in pages: one syscall per 512 ids.
  for (;;) {
    if (entropy_left_ == 0) {
      uint8_t* out = reinterpret_cast<uint8_t*>(entropy_.data());
      size_t want = sizeof(entropy_), got = 0;
      while (got < want) {
        ssize_t n = getrandom(out + got, want - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) std::abort();  // no entropy source: handing out guessable handles is worse
        got += static_cast<size_t>(n);
      }
      entropy_left_ = entropy_.size();
    }
    uint64_t id = entropy_[--entropy_left_];
    if (id != 0 && entries_.count(id) == 0) return id;
  }
}

Status HandleTable::Expose(uint64_t offset, uint64_t length, Access access, uint64_t* handle) {
  return Expose(std::vector<PoolExtent>{{offset, length}}, access, handle);
}

Status HandleTable::Expose(std::vector<PoolExtent> extents, Access access, uint64_t* handle) {
  if (access != Access::kRead && access != Access::kWrite) {
    return Status(Code::kInvalidArgument, "access must be read or write, got " +
                                              std::to_string(static_cast<int>(access)));
  }
  if (extents.empty() || extents.size() > kMaxExtents) {
    return Status(Code::kInvalidArgument, "a handle spans 1 to " + std::to_string(kMaxExtents) + " extents, got " +
                                              std::to_string(extents.size()));
  }
  Entry e;
  e.ends.reserve(extents.size());
  for (const PoolExtent& x : extents) {
    if (x.size > UINT64_MAX - e.length) return Status(Code::kOutOfRange, "the extents' sizes overflow");
    e.length += x.size;
    e.ends.push_back(e.length);
  }
  e.extents = std::move(extents);
  e.access = access;
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t id = NextIdLocked();
  entries_.emplace(id, std::move(e));
  *handle = id;
  return Status::Ok();
}

Status HandleTable::Acquire(uint64_t handle, Access access, uint64_t offset, uint64_t length,
                            std::vector<PoolExtent>* pieces) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end() || it->second.revoked) {
    // Unknown and revoked look the same to a peer.
    return Status(Code::kNotFound, "no such handle");
  }
  Entry& e = it->second;
  if (e.access != access) {
    return Status(Code::kPermissionDenied,
                  access == Access::kWrite ? "handle is not writable" : "handle is not readable");
  }
  if (offset > e.length || length > e.length - offset) {
    return Status(Code::kOutOfRange, "range [" + std::to_string(offset) + ", +" + std::to_string(length) +
                                         ") exceeds the handle's " + std::to_string(e.length) + " bytes");
  }
  ++e.in_flight;
  pieces->clear();
  if (e.extents.size() == 1) {
    pieces->push_back({e.extents[0].offset + offset, length});
    return Status::Ok();
  }
  // The extent holding `offset` (the first whose end lies past it; the last one for an
  // empty range at the very end), then as many as the range crosses.
  size_t i = static_cast<size_t>(std::upper_bound(e.ends.begin(), e.ends.end(), offset) - e.ends.begin());
  if (i == e.extents.size()) i = e.extents.size() - 1;
  uint64_t within = offset - (e.ends[i] - e.extents[i].size);
  uint64_t left = length;
  do {
    const uint64_t n = std::min(left, e.extents[i].size - within);
    pieces->push_back({e.extents[i].offset + within, n});
    left -= n;
    within = 0;
    ++i;
  } while (left > 0);
  return Status::Ok();
}

void HandleTable::ReleaseAccess(uint64_t handle) {
  bool released = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(handle);
    if (it == entries_.end() || it->second.in_flight == 0) return;  // caller bug; stay safe
    if (--it->second.in_flight == 0 && it->second.revoked) {
      entries_.erase(it);
      released = true;
    }
  }
  if (released && on_released_) on_released_(handle);
}

Status HandleTable::Revoke(uint64_t handle) {
  bool released = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(handle);
    if (it == entries_.end() || it->second.revoked) return Status(Code::kNotFound, "no such handle");
    it->second.revoked = true;
    if (it->second.in_flight == 0) {
      entries_.erase(it);
      released = true;
    }
  }
  if (released && on_released_) on_released_(handle);
  return Status::Ok();
}

size_t HandleTable::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace kvferry
