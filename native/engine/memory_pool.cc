#include "engine/memory_pool.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace kvferry {

namespace {

std::string ErrnoText(const char* what) { return std::string(what) + ": " + std::strerror(errno); }


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
  // reserved above; a background thread maps them (Prefault).
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
  // Maps the reserved pages into the page tables, so that the first transfers through an
  // extent take fewer faults. A read of one byte per page does it (the fault maps the
  // page, already allocated by fallocate, and its neighbours) without writing, so a
  // transfer using the pool meanwhile is unaffected; each fault holds the memory map's
  // locks for one fault only, never for a whole range (as MAP_POPULATE or
  // MADV_POPULATE_WRITE would). At the process's own priority: it is a fraction of a
  // CPU-second per GiB, and a thread niced to 19 made a SIGKILLed daemon take 6 to 15 s to
  // exit (and free its ports) beside two CPU-bound processes. Stops early when the pool goes.
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  for (uint64_t at = 0; at < size_; at += page) {
    if ((at & ((1u << 20) - 1)) == 0 && stop_prefault_.load(std::memory_order_relaxed)) return;
    (void)*static_cast<volatile uint8_t*>(base_ + at);
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
