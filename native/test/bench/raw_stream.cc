// The data plane's floor on this machine: raw loopback TCP moving bytes from one
// memfd-backed region to another of a transfer's size, the way a transfer moves an entry
// from one daemon's pool to the other's. iperf3 sends one small buffer over and over, so
// its bytes never leave the CPU's caches; a transfer of hundreds of MiB reads and writes
// memory that is not cached. This measures what the kernel alone does with those bytes.
//
//   raw_stream FOOTPRINT_MIB STREAMS [PASSES]
//
// STREAMS connections (a sending and a receiving thread each) split the two regions
// (FOOTPRINT_MIB each, prefaulted) between them and move them PASSES times (default 3) in
// 1 MiB send/recv calls. Prints one JSON line: {"gbs": ..., "cpuPerGB": ...} (CPU: this
// process's utime + stime, both ends, per 1e9 bytes moved).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr size_t kCall = 1 << 20;

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "raw_stream: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

double CpuSeconds() {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

/** A memfd-backed shared mapping of `size` bytes, every page touched (as the pool is). */
uint8_t* Region(size_t size) {
  int fd = memfd_create("raw-stream", MFD_CLOEXEC);
  if (fd < 0) Fail("memfd_create");
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) Fail("ftruncate");
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) Fail("mmap");
  close(fd);
  std::memset(p, 0x5a, size);
  return static_cast<uint8_t*>(p);
}

/** A connected pair of loopback TCP sockets: {sending end, receiving end}. */
std::pair<int, int> Connected() {
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (listener < 0 || bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    Fail("listen on 127.0.0.1");
  }
  int tx = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (tx < 0 || connect(tx, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) Fail("connect");
  int rx = accept(listener, nullptr, nullptr);
  if (rx < 0) Fail("accept");
  close(listener);
  return {tx, rx};
}

/** Moves `total` bytes through `fd`, walking `region` (of `size` bytes) round and round. */
void Pump(int fd, uint8_t* region, size_t size, size_t total, bool sending) {
  size_t done = 0;
  while (done < total) {
    const size_t at = done % size;
    const size_t n = std::min(kCall, size - at);
    const ssize_t r = sending ? send(fd, region + at, n, MSG_NOSIGNAL) : recv(fd, region + at, n, 0);
    if (r <= 0) Fail(sending ? "send" : "recv");
    done += static_cast<size_t>(r);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const long mib = argc > 1 ? std::atol(argv[1]) : 0;
  const int streams = argc > 2 ? std::atoi(argv[2]) : 0;
  const int passes = argc > 3 ? std::atoi(argv[3]) : 3;
  if (mib <= 0 || streams <= 0 || streams > 64 || passes <= 0) {
    std::fprintf(stderr, "usage: raw_stream FOOTPRINT_MIB STREAMS [PASSES]\n");
    return 2;
  }
  const size_t footprint = static_cast<size_t>(mib) << 20;
  const size_t share = footprint / static_cast<size_t>(streams);
  const size_t each = share * static_cast<size_t>(passes);
  uint8_t* from = Region(footprint);
  uint8_t* to = Region(footprint);
  std::vector<std::pair<int, int>> pairs;
  for (int i = 0; i < streams; ++i) pairs.push_back(Connected());

  const double cpu = CpuSeconds();
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < streams; ++i) {
    const size_t at = share * static_cast<size_t>(i);
    threads.emplace_back(Pump, pairs[i].second, to + at, share, each, false);
    threads.emplace_back(Pump, pairs[i].first, from + at, share, each, true);
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double moved = static_cast<double>(each) * streams;
  std::printf("{\"gbs\": %.4f, \"cpuPerGB\": %.4f}\n", moved / seconds / 1e9, (CpuSeconds() - cpu) / (moved / 1e9));
  return 0;
}
