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
  // MAP_POPULATE maps every page at start: first-touch faults would otherwise cost the
  // first transfers through each extent several times their wire time.
  void* base = MAP_FAILED;
  if (fd >= 0) {
    base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (base == MAP_FAILED) {
      Status failed(Code::kResourceExhausted, ErrnoText("mmap of the pool memfd"));
      close(fd);
      return failed;
    }
  } else {
    // No memfd (old kernel, seccomp): same semantics minus the shareable fd.
    base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (base == MAP_FAILED) return Status(Code::kResourceExhausted, ErrnoText("mmap of the pool"));
  }
  out->reset(new MemoryPool(static_cast<uint8_t*>(base), size, fd));
  return Status::Ok();
}

MemoryPool::MemoryPool(uint8_t* base, uint64_t size, int fd)
    : base_(base), size_(size), fd_(fd), allocator_(size) {}

MemoryPool::~MemoryPool() {
  munmap(base_, size_);
  if (fd_ >= 0) close(fd_);
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
