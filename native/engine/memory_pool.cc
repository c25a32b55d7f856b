#include "engine/memory_pool.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace kvferry {

namespace {

std::string ErrnoText(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

#ifdef MADV_POPULATE_WRITE
constexpr int kMadvPopulateWrite = MADV_POPULATE_WRITE;
#else
constexpr int kMadvPopulateWrite = 23;  // Linux 5.14's value; older kernels answer EINVAL
#endif

}  // namespace

Status MemoryPool::Create(uint64_t size, std::unique_ptr<MemoryPool>* out) {
  if (size == 0) return Status(Code::kInvalidArgument, "pool size must be positive");
  if (size > static_cast<uint64_t>(SIZE_MAX) / 2) {
    return Status(Code::kInvalidArgument, "pool size " + std::to_string(size) + " is too large");
  }
  int fd = memfd_create("kvferry-pool", MFD_CLOEXEC);
  if (fd >= 0 && ftruncate(fd, static_cast<off_t>(size)) != 0) {
    Status failed(Code::kResourceExhausted, ErrnoText("ftruncate of the pool memfd"));
    close(fd);
    return failed;
  }
  // Reserve the pages now: a pool the machine cannot back fails here, with a message,
  // instead of a SIGBUS on first touch in the middle of a transfer.
  if (fd >= 0 && size > 0 && fallocate(fd, 0, 0, static_cast<off_t>(size)) != 0) {
    Status failed(Code::kResourceExhausted, ErrnoText(("reserving " + std::to_string(size) + " bytes for the pool").c_str()));
    close(fd);
    return failed;
  }
  // Mapped without MAP_POPULATE: mapping 1 GiB page by page costs about a second of CPU
  // (several on a busy machine), which held every daemon's start-up. The pages are
  // reserved above; the prefault thread maps them in the background (see Prefault).
  void* base = MAP_FAILED;
  if (fd >= 0) {
    base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
      Status failed(Code::kResourceExhausted, ErrnoText("mmap of the pool memfd"));
      close(fd);
      return failed;
    }
  } else {
    // No memfd (old kernel, seccomp): same semantics minus the shareable fd.
    // No reservation without an fd: populate here, so an unbackable pool fails now.
    base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (base == MAP_FAILED) return Status(Code::kResourceExhausted, ErrnoText("mmap of the pool"));
  }
  out->reset(new MemoryPool(static_cast<uint8_t*>(base), size, fd));
  return Status::Ok();
}

MemoryPool::MemoryPool(uint8_t* base, uint64_t size, int fd)
    : base_(base), size_(size), fd_(fd), allocator_(size) {
  if (fd_ >= 0) prefault_ = std::thread([this] { Prefault(); });
}

MemoryPool::~MemoryPool() {
  stop_prefault_.store(true, std::memory_order_relaxed);
  if (prefault_.joinable()) prefault_.join();
  munmap(base_, size_);
  if (fd_ >= 0) close(fd_);
}

void MemoryPool::Prefault() {
  // Maps the reserved pages a slice at a time, so that the first transfers through an
  // extent do not pay its first-touch faults. MADV_POPULATE_WRITE (Linux 5.14) leaves the
  // contents alone; on older kernels a read of one byte per page maps the (already
  // allocated) page. Neither writes, so a transfer using the pool meanwhile is unaffected.
  // At the lowest priority: on a busy machine it must not slow the start-up it left.
  (void)setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 19);
  constexpr uint64_t kSlice = 16ull << 20;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  bool madvise_works = true;
  for (uint64_t offset = 0; offset < size_ && !stop_prefault_.load(std::memory_order_relaxed); offset += kSlice) {
    const uint64_t length = std::min(kSlice, size_ - offset);
    if (madvise_works && madvise(base_ + offset, length, kMadvPopulateWrite) == 0) continue;
    madvise_works = false;
    for (uint64_t at = offset; at < offset + length; at += page) {
      (void)*static_cast<volatile uint8_t*>(base_ + at);
    }
  }
}

Status MemoryPool::Allocate(uint64_t size, uint64_t* offset) {
  std::lock_guard<std::mutex> lock(mu_);
  return allocator_.Allocate(size, offset);
}

Status MemoryPool::AllocateScattered(uint64_t size, size_t max_extents,
                                     std::vector<ExtentAllocator::Extent>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  return allocator_.AllocateScattered(size, max_extents, out);
}

Status MemoryPool::Free(uint64_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  return allocator_.Free(offset);
}

ExtentAllocator::Stats MemoryPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocator_.stats();
}

}  // namespace kvferry
