// A small coverage-guided mutation fuzzer for LLVMFuzzerTestOneInput targets, for
// machines without clang/libFuzzer: g++ instruments the target with
// -fsanitize-coverage=trace-pc (and ASan + UBSan); this driver keeps every input that
// reaches code no earlier input reached and mutates those.
//
//   wire_fuzz CORPUS_DIR [SECONDS]   every corpus file once, then mutate for SECONDS
//                                    (default: $KVFERRY_FUZZ_SECONDS, else 25)
//   wire_fuzz FILE...                run just these inputs (to reproduce a crash)
//
// $KVFERRY_FUZZ_SEED fixes the random seed (printed at start). On a crash the sanitizer
// report is followed by the input, in hex and saved under $KVFERRY_FUZZ_ARTIFACTS
// (default: the working directory) as crash-<hash>.
#include <dirent.h>
#include <sanitizer/common_interface_defs.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

constexpr size_t kMapBits = 1 << 13;
constexpr size_t kMaxInput = 4096;

uint8_t g_map[kMapBits];   // edges hit by the current input
uint8_t g_seen[kMapBits];  // edges hit by any input so far
const std::vector<uint8_t>* g_current = nullptr;

}  // namespace

// A failed invariant in the target traps (SIGILL): let ASan report it like any crash,
// with the death callback (OnDeath) that prints and saves the input.
extern "C" const char* __asan_default_options() { return "handle_sigill=1:handle_abort=1:detect_leaks=0"; }

// Called by g++'s -fsanitize-coverage=trace-pc at every basic block of the target.
extern "C" void __sanitizer_cov_trace_pc() {
  static thread_local uintptr_t prev = 0;
  const uintptr_t pc = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
  g_map[((pc >> 1) ^ prev) & (kMapBits - 1)] = 1;
  prev = (pc >> 2) & (kMapBits - 1);  // (previous block, block) pairs approximate edges
}

namespace {

uint64_t Hash(const std::vector<uint8_t>& v) {
  uint64_t h = 1469598103934665603ull;
  for (uint8_t b : v) h = (h ^ b) * 1099511628211ull;
  return h;
}

void OnDeath() {
  if (g_current == nullptr) return;
  std::fprintf(stderr, "\nwire_fuzz: crashing input (%zu bytes):", g_current->size());
  for (size_t i = 0; i < g_current->size(); ++i) std::fprintf(stderr, "%s%02x", i % 32 ? "" : "\n  ", (*g_current)[i]);
  const char* dir = std::getenv("KVFERRY_FUZZ_ARTIFACTS");
  char name[64];
  std::snprintf(name, sizeof(name), "crash-%016llx", static_cast<unsigned long long>(Hash(*g_current)));
  const std::string path = std::string(dir != nullptr ? dir : ".") + "/" + name;
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(g_current->data()), g_current->size());
  std::fprintf(stderr, "\nwire_fuzz: saved as %s\n", path.c_str());
}

/** Runs one input; true when it reached an edge no earlier input did. */
bool RunOne(const std::vector<uint8_t>& input) {
  std::memset(g_map, 0, sizeof(g_map));
  g_current = &input;
  LLVMFuzzerTestOneInput(input.data(), input.size());
  g_current = nullptr;
  bool fresh = false;
  for (size_t i = 0; i < kMapBits; ++i) {
    if (g_map[i] && !g_seen[i]) {
      g_seen[i] = 1;
      fresh = true;
    }
  }
  return fresh;
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void Mutate(std::vector<uint8_t>* v, const std::vector<std::vector<uint8_t>>& corpus, std::mt19937_64& rng) {
  static const uint64_t kInteresting[] = {0, 1, 2, 7, 8, 9, 32, 48, 64, 80, 0x7f, 0x80, 0xff, 0x100, 4096,
                                          1 << 20, 0x7fffffff, 0xffffffffull, 1ull << 63, ~0ull};
  const int rounds = 1 + static_cast<int>(rng() % 4);
  for (int r = 0; r < rounds; ++r) {
    const size_t n = v->size();
    switch (rng() % 8) {
      case 0:  // flip a bit
        if (n > 0) (*v)[rng() % n] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:  // a random byte
        if (n > 0) (*v)[rng() % n] = static_cast<uint8_t>(rng());
        break;
      case 2: {  // an interesting little-endian value of 1, 2, 4 or 8 bytes (header fields)
        const size_t width = size_t{1} << (rng() % 4);
        if (n < width) break;
        const size_t at = rng() % (n - width + 1);
        const uint64_t value = kInteresting[rng() % (sizeof(kInteresting) / sizeof(kInteresting[0]))];
        for (size_t i = 0; i < width; ++i) (*v)[at + i] = static_cast<uint8_t>(value >> (8 * i));
        break;
      }
      case 3: {  // insert random bytes
        const size_t k = 1 + rng() % 16;
        if (n + k > kMaxInput) break;
        std::vector<uint8_t> bytes(k);
        for (auto& b : bytes) b = static_cast<uint8_t>(rng());
        v->insert(v->begin() + static_cast<long>(rng() % (n + 1)), bytes.begin(), bytes.end());
        break;
      }
      case 4: {  // erase a range
        if (n < 2) break;
        const size_t at = rng() % n;
        const size_t k = 1 + rng() % std::min<size_t>(n - at, 48);
        v->erase(v->begin() + static_cast<long>(at), v->begin() + static_cast<long>(at + k));
        break;
      }
      case 5: {  // duplicate a range
        if (n == 0) break;
        const size_t at = rng() % n;
        const size_t k = 1 + rng() % std::min<size_t>(n - at, 64);
        if (n + k > kMaxInput) break;
        std::vector<uint8_t> copy(v->begin() + static_cast<long>(at), v->begin() + static_cast<long>(at + k));
        v->insert(v->begin() + static_cast<long>(rng() % (n + 1)), copy.begin(), copy.end());
        break;
      }
      case 6: {  // splice: the head of this input, the tail of another
        const auto& other = corpus[rng() % corpus.size()];
        if (n == 0 || other.empty()) break;
        const size_t cut = rng() % n;
        const size_t from = rng() % other.size();
        v->resize(cut);
        v->insert(v->end(), other.begin() + static_cast<long>(from), other.end());
        if (v->size() > kMaxInput) v->resize(kMaxInput);
        break;
      }
      default:  // another mode byte
        if (n > 0) (*v)[0] = static_cast<uint8_t>(rng());
        break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  __sanitizer_set_death_callback(OnDeath);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [SECONDS] | %s FILE...\n", argv[0], argv[0]);
    return 2;
  }
  struct stat st;
  if (stat(argv[1], &st) != 0) {
    std::fprintf(stderr, "wire_fuzz: %s: %s\n", argv[1], std::strerror(errno));
    return 2;
  }
  if (!S_ISDIR(st.st_mode)) {
    for (int i = 1; i < argc; ++i) RunOne(ReadFile(argv[i]));
    std::printf("wire_fuzz: %d input(s) ran without a crash\n", argc - 1);
    return 0;
  }
  std::vector<std::vector<uint8_t>> corpus;
  if (DIR* d = opendir(argv[1])) {
    std::vector<std::string> names;
    while (struct dirent* e = readdir(d)) {
      if (e->d_name[0] != '.' && std::strcmp(e->d_name, "README.md") != 0) names.push_back(e->d_name);
    }
    closedir(d);
    for (const std::string& name : names) {
      std::vector<uint8_t> input = ReadFile(std::string(argv[1]) + "/" + name);
      RunOne(input);
      corpus.push_back(std::move(input));
    }
  }
  if (corpus.empty()) corpus.push_back({0});
  const char* env_seconds = std::getenv("KVFERRY_FUZZ_SECONDS");
  const double seconds = argc > 2 ? std::atof(argv[2]) : env_seconds != nullptr ? std::atof(env_seconds) : 25.0;
  const char* env_seed = std::getenv("KVFERRY_FUZZ_SEED");
  const uint64_t seed = env_seed != nullptr ? std::strtoull(env_seed, nullptr, 10)
                                            : static_cast<uint64_t>(std::random_device{}()) << 32 ^ std::random_device{}();
  std::mt19937_64 rng(seed);
  const size_t seeds = corpus.size();
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t execs = 0;
  while (std::chrono::steady_clock::now() < end) {
    for (int batch = 0; batch < 256; ++batch, ++execs) {
      std::vector<uint8_t> input = corpus[rng() % corpus.size()];
      Mutate(&input, corpus, rng);
      if (RunOne(input)) corpus.push_back(std::move(input));
    }
  }
  size_t edges = 0;
  for (uint8_t b : g_seen) edges += b;
  std::printf("wire_fuzz: %llu inputs in %.0f s (seed %llu), no crash; corpus %zu seeds + %zu found, %zu edges\n",
              static_cast<unsigned long long>(execs), seconds, static_cast<unsigned long long>(seed), seeds,
              corpus.size() - seeds, edges);
  return 0;
}
