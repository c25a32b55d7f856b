#include "engine/memory_pool.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include "engine/engine.h"

namespace kvferry {
namespace {

TEST(MemoryPool, IsBackedByAMemfdThatMapsTheSameBytes) {
  std::unique_ptr<MemoryPool> pool;
  ASSERT_TRUE(MemoryPool::Create(1 << 20, &pool).ok());
  ASSERT_GE(pool->fd(), 0);
  EXPECT_EQ(lseek(pool->fd(), 0, SEEK_END), 1 << 20);

  uint64_t off = 0;
  ASSERT_TRUE(pool->Allocate(4096, &off).ok());
  std::memcpy(pool->base() + off, "kv-cache bytes", 15);

  // A second mapping of the fd (what a local connector would do) sees the same bytes.
  void* view = mmap(nullptr, 1 << 20, PROT_READ, MAP_SHARED, pool->fd(), 0);
  ASSERT_NE(view, MAP_FAILED);
  EXPECT_STREQ(static_cast<const char*>(view) + off, "kv-cache bytes");
  munmap(view, 1 << 20);
}

// This process's mapped shared-memory pages, in KiB (RssShmem in /proc/self/status).
long ShmemResidentKib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("RssShmem:", 0) == 0) return std::stol(line.substr(9));
  }
  return -1;
}

TEST(MemoryPool, MapsItsPagesInTheBackgroundAfterCreateReturns) {
  const long before = ShmemResidentKib();
  ASSERT_GE(before, 0);
  std::unique_ptr<MemoryPool> pool;
  ASSERT_TRUE(MemoryPool::Create(64 << 20, &pool).ok());
  const long want = (64 << 10) - 1024;  // nearly all of it (other mappings may come and go)
  // The thread runs at the lowest priority: a bounded wait, generous for a busy machine.
  for (int i = 0; i < 1200 && ShmemResidentKib() - before < want; i++) usleep(50 * 1000);
  EXPECT_GE(ShmemResidentKib() - before, want);
}

TEST(MemoryPool, GoesWhileStillMappingItsPagesAndANewPoolWorks) {
  for (int i = 0; i < 3; i++) {
    std::unique_ptr<MemoryPool> pool;
    ASSERT_TRUE(MemoryPool::Create(256 << 20, &pool).ok());
    uint64_t off = 0;
    ASSERT_TRUE(pool->Allocate(4096, &off).ok());
    std::memcpy(pool->base() + off, "written while mapping", 22);
    EXPECT_STREQ(reinterpret_cast<const char*>(pool->base() + off), "written while mapping");
  }  // each destroyed at once: the mapping thread stops and is joined before the unmap
}

TEST(MemoryPool, RefusesAZeroSize) {
  std::unique_ptr<MemoryPool> pool;
  EXPECT_EQ(MemoryPool::Create(0, &pool).code(), Code::kInvalidArgument);
}

TEST(MemoryPool, ContainsIsOverflowSafe) {
  std::unique_ptr<MemoryPool> pool;
  ASSERT_TRUE(MemoryPool::Create(4096, &pool).ok());
  EXPECT_TRUE(pool->Contains(0, 4096));
  EXPECT_TRUE(pool->Contains(4096, 0));
  EXPECT_FALSE(pool->Contains(1, 4096));
  EXPECT_FALSE(pool->Contains(4097, 0));
  EXPECT_FALSE(pool->Contains(UINT64_MAX, 2));
  EXPECT_FALSE(pool->Contains(2, UINT64_MAX));
}

TEST(EnginePool, WritesThroughPoolBaseReadBackAndStatsFollowAllocations) {
  EngineOptions o;
  o.pool_size = 8 << 20;
  std::unique_ptr<Engine> e;
  ASSERT_TRUE(Engine::Create(o, &e).ok());
  EXPECT_GE(e->pool_fd(), 0);
  EXPECT_EQ(e->pool_size(), 8u << 20);

  uint64_t a = 0, b = 0;
  ASSERT_TRUE(e->Allocate(1000, &a).ok());
  ASSERT_TRUE(e->Allocate(3 << 20, &b).ok());
  for (uint64_t i = 0; i < 1000; ++i) e->pool_base()[a + i] = static_cast<uint8_t>(i * 7);
  for (uint64_t i = 0; i < 1000; ++i) ASSERT_EQ(e->pool_base()[a + i], static_cast<uint8_t>(i * 7));

  PoolStats s = e->pool_stats();
  EXPECT_EQ(s.capacity, 8u << 20);
  EXPECT_EQ(s.used, 1024u + (3u << 20));
  EXPECT_EQ(s.allocations, 2u);
  EXPECT_EQ(s.free_extents, 1u);
  EXPECT_EQ(s.largest_free, (8u << 20) - 1024u - (3u << 20));
  EXPECT_EQ(e->stats().pool.used, s.used);

  ASSERT_TRUE(e->Free(a).ok());
  EXPECT_EQ(e->Free(a).code(), Code::kInvalidArgument);
  ASSERT_TRUE(e->Free(b).ok());
  s = e->pool_stats();
  EXPECT_EQ(s.used, 0u);
  EXPECT_EQ(s.free_extents, 1u);
  EXPECT_EQ(s.largest_free, 8u << 20);

  uint64_t too_big = 0;
  EXPECT_EQ(e->Allocate(9 << 20, &too_big).code(), Code::kResourceExhausted);
}

TEST(EngineOptionsValidation, RefusesNonsenseWithInvalidArgument) {
  std::unique_ptr<Engine> e;
  EngineOptions o;
  o.pool_size = 0;
  EXPECT_EQ(Engine::Create(o, &e).code(), Code::kInvalidArgument);
  o.pool_size = 1 << 20;
  o.connections_per_peer = 0;
  EXPECT_EQ(Engine::Create(o, &e).code(), Code::kInvalidArgument);
  o.connections_per_peer = 1;
  o.slice_bytes = 0;
  EXPECT_EQ(Engine::Create(o, &e).code(), Code::kInvalidArgument);
  o.slice_bytes = 1 << 20;
  o.io_timeout_ms = 0;
  EXPECT_EQ(Engine::Create(o, &e).code(), Code::kInvalidArgument);
  o.io_timeout_ms = 1000;
  o.token = std::string(5000, 't');
  EXPECT_EQ(Engine::Create(o, &e).code(), Code::kInvalidArgument);
  EXPECT_EQ(e, nullptr);
}

TEST(EngineCreate, ListeningOnAPortAlreadyInUseFailsUnavailable) {
  EngineOptions o;
  o.pool_size = 1 << 20;
  o.listen_host = "127.0.0.1";
  std::unique_ptr<Engine> first, second;
  ASSERT_TRUE(Engine::Create(o, &first).ok());
  o.listen_port = first->data_port();
  Status s = Engine::Create(o, &second);
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.ToString();
  EXPECT_EQ(second, nullptr);
  o.listen_host = "not a host name";
  EXPECT_FALSE(Engine::Create(o, &second).ok());
}

}  // namespace
}  // namespace kvferry
