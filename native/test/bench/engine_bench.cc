// engine_bench: throughput of the TCP transport between two engines in one process,
// printed next to a raw-socket reference (one stream, 1 MiB send/recv calls — what
// iperf3 does) measured in the same run. Not a test: it asserts nothing.
//
// Next to throughput it prints the process CPU time (getrusage RUSAGE_SELF, user+sys,
// both engines' threads, taken before and after each round) per op.
//
//   engine_bench [--connections N] [--io-threads N] [--rounds R] [--reference 0|1] [--only SUBSTRING]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"

namespace {

using Clock = std::chrono::steady_clock;
using kvferry::Completion;
using kvferry::Engine;
using kvferry::EngineOptions;
using kvferry::OpKind;
using kvferry::TransferOp;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// User + system CPU time of the whole process so far, in microseconds.
double CpuMicros() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  auto us = [](const struct timeval& tv) { return static_cast<double>(tv.tv_sec) * 1e6 + static_cast<double>(tv.tv_usec); };
  return us(ru.ru_utime) + us(ru.ru_stime);
}

// One TCP stream over loopback, 1 MiB calls on both sides.
double RawStreamGBps(uint64_t total) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(lfd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr));
  listen(lfd, 1);
  socklen_t len = sizeof(addr);
  getsockname(lfd, reinterpret_cast<struct sockaddr*>(&addr), &len);
  std::thread receiver([lfd, total] {
    int fd = accept(lfd, nullptr, nullptr);
    std::vector<uint8_t> buf(1 << 20);
    uint64_t got = 0;
    while (got < total) {
      ssize_t r = recv(fd, buf.data(), buf.size(), 0);
      if (r <= 0) break;
      got += static_cast<uint64_t>(r);
    }
    close(fd);
  });
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  connect(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr));
  std::vector<uint8_t> buf(1 << 20, 0x42);
  const auto start = Clock::now();
  uint64_t sent = 0;
  while (sent < total) {
    ssize_t r = send(fd, buf.data(), std::min<uint64_t>(buf.size(), total - sent), 0);
    if (r <= 0) break;
    sent += static_cast<uint64_t>(r);
  }
  close(fd);
  receiver.join();
  const double s = Seconds(Clock::now() - start);
  close(lfd);
  return static_cast<double>(total) / s / 1e9;
}

class Waiter {
 public:
  explicit Waiter(Engine* e) : e_(e) {
    e_->SetNotifier([this] {
      std::vector<Completion> batch;
      e_->DrainCompletions(&batch);
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& c : batch) {
        ++done_;
        if (c.code != kvferry::Code::kOk) {
          ++failed_;
          if (first_error_.empty()) first_error_ = c.message;
        }
      }
      // Wake the waiting thread once per round, not per batch: its wake-ups would count
      // as CPU time per op.
      if (done_ >= target_ || failed_ > 0) cv_.notify_all();
    });
  }
  ~Waiter() { e_->SetNotifier(nullptr); }
  bool Wait(uint64_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    target_ = n;
    bool ok = cv_.wait_for(lock, std::chrono::seconds(120), [&] { return done_ >= n; });
    if (failed_ > 0) std::fprintf(stderr, "%llu ops failed: %s\n", (unsigned long long)failed_, first_error_.c_str());
    return ok && failed_ == 0;
  }
  void Reset() {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = 0;
  }

 private:
  Engine* e_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t done_ = 0;
  uint64_t target_ = 0;
  uint64_t failed_ = 0;
  std::string first_error_;
};

struct Result {
  double gbps = 0;
};

// Submits `count` entries of `size` bytes as one batch and waits for all of them: one op
// per entry, or (gather > 1) one op per `gather` entries that gathers their extents, which
// lie apart in the local pool (as a store's entries do) and back to back remotely.
double RunOnce(Engine* a, Engine* b, Waiter* w, OpKind kind, uint64_t count, uint64_t size, uint64_t handle,
               uint64_t remote_span, uint64_t local_span, uint64_t* next_id, uint64_t gather = 1) {
  std::vector<TransferOp> ops;
  const std::string peer = "127.0.0.1:" + std::to_string(b->data_port());
  const uint64_t per_op = std::max<uint64_t>(gather, 1);
  const uint64_t stride = per_op > 1 ? size + 4096 : size;
  for (uint64_t i = 0; i < count; i += per_op) {
    TransferOp op;
    op.id = (*next_id)++;
    op.kind = kind;
    op.peer = peer;
    op.local_offset = (i * stride) % local_span;
    op.remote_handle = handle;
    op.remote_offset = (i * size) % remote_span;
    op.length = size;
    if (per_op > 1) {
      for (uint64_t j = i; j < std::min(count, i + per_op); ++j) op.gather.push_back({(j * stride) % local_span, size});
      op.length = size * op.gather.size();
    }
    ops.push_back(std::move(op));
  }
  const size_t n = ops.size();
  w->Reset();
  const auto start = Clock::now();
  kvferry::Status s = a->Submit(std::move(ops));
  if (!s.ok()) {
    std::fprintf(stderr, "submit: %s\n", s.ToString().c_str());
    std::exit(1);
  }
  if (!w->Wait(n)) std::exit(1);
  return static_cast<double>(count * size) / Seconds(Clock::now() - start) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int connections = 4;
  int io_threads = 0;  // the engine's default
  int rounds = 3;
  bool with_reference = true;
  std::string only;  // run only the cases whose name contains this
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--connections") == 0) connections = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--io-threads") == 0) io_threads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--rounds") == 0) rounds = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--reference") == 0) with_reference = std::atoi(argv[i + 1]) != 0;
    if (std::strcmp(argv[i], "--only") == 0) only = argv[i + 1];
  }

  double reference = 0;
  if (with_reference) {
    const uint64_t total = 4ull << 30;
    const double cpu_before = CpuMicros();
    for (int r = 0; r < rounds; ++r) reference = std::max(reference, RawStreamGBps(total));
    // The floor for CPU per op: what the kernel spends moving the same bytes.
    const double cpu_per_64k = (CpuMicros() - cpu_before) / rounds / static_cast<double>(total >> 16);
    std::printf("reference: raw loopback TCP, one stream, 1 MiB calls: %.2f GB/s (best of %d), cpu %.2f us per 64 KiB\n",
                reference, rounds, cpu_per_64k);
  }

  EngineOptions o;
  o.token = "bench";
  o.connections_per_peer = connections;
  o.io_threads = io_threads;
  o.pool_size = 512ull << 20;
  std::unique_ptr<Engine> a, b;
  if (!Engine::Create(o, &a).ok() || !Engine::Create(o, &b).ok()) {
    std::fprintf(stderr, "cannot create engines\n");
    return 1;
  }
  const uint64_t span = 256ull << 20;
  const uint64_t local_span = 480ull << 20;  // room for gathered entries laid apart
  uint64_t handle = 0, read_handle = 0;
  if (!b->Expose(0, span, kvferry::Access::kWrite, &handle).ok()) return 1;
  if (!b->Expose(0, span, kvferry::Access::kRead, &read_handle).ok()) return 1;
  std::memset(a->pool_base(), 0x5c, local_span);
  std::memset(b->pool_base(), 0xc5, span);
  Waiter w(a.get());
  uint64_t next_id = 1;

  struct Case {
    const char* name;
    OpKind kind;
    uint64_t count;
    uint64_t size;
    uint64_t gather;  // entries per op
  };
  const Case cases[] = {
      {"write 64 x 16 MiB", OpKind::kWrite, 64, 16ull << 20, 1},
      {"write 4096 x 64 KiB", OpKind::kWrite, 4096, 64ull << 10, 1},
      {"write 4096 x 64 KiB/256", OpKind::kWrite, 4096, 64ull << 10, 256},
      {"read  64 x 16 MiB", OpKind::kRead, 64, 16ull << 20, 1},
      {"read  4096 x 64 KiB", OpKind::kRead, 4096, 64ull << 10, 1},
      {"read  4096 x 64 KiB/256", OpKind::kRead, 4096, 64ull << 10, 256},
  };
  std::printf("engine: %d connection(s) per peer, slice %llu KiB\n", connections,
              (unsigned long long)(o.slice_bytes >> 10));
  // Warm up connections.
  RunOnce(a.get(), b.get(), &w, OpKind::kWrite, 16, 1 << 20, handle, span, span, &next_id);
  for (const Case& c : cases) {
    if (!only.empty() && std::string(c.name).find(only) == std::string::npos) continue;
    double best = 0;
    double sum = 0;
    std::vector<double> cpu;  // per round, microseconds
    for (int r = 0; r < rounds; ++r) {
      const double cpu_before = CpuMicros();
      double g = RunOnce(a.get(), b.get(), &w, c.kind, c.count, c.size,
                         c.kind == OpKind::kRead ? read_handle : handle, span, local_span, &next_id, c.gather);
      cpu.push_back(CpuMicros() - cpu_before);
      best = std::max(best, g);
      sum += g;
    }
    // CPU per op: the median round (robust against other load on the machine), the
    // mean, and the quietest round.
    std::sort(cpu.begin(), cpu.end());
    double cpu_sum = 0;
    for (double x : cpu) cpu_sum += x;
    const double n = static_cast<double>(c.count);
    std::printf("  %-22s best %5.2f GB/s  mean %5.2f GB/s", c.name, best, sum / rounds);
    if (reference > 0) std::printf("  = %.2fx reference", best / reference);
    std::printf("  cpu/op median %7.2f us  mean %7.2f us  min %7.2f us\n", cpu[cpu.size() / 2] / n,
                cpu_sum / rounds / n, cpu.front() / n);
  }
  return 0;
}
