// Runs the data plane's fuzz target (test/fuzz/) from its corpus for a bounded time, so
// the fuzz run is one counted test of the suite: $KVFERRY_FUZZ_SECONDS (default 25; 0
// replays the corpus only). A crash fails this test with the sanitizer's report and the
// input (saved under native/build/fuzz-artifacts).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace kvferry {
namespace {

TEST(WireFuzz, TheFrameAndHandshakeParsersSurviveTheFuzzerRunFromTheCorpus) {
  const char* env = std::getenv("KVFERRY_FUZZ_SECONDS");
  const std::string seconds = env != nullptr && *env != '\0' ? env : "25";
  const std::string artifacts = std::string(KVFERRY_WIRE_FUZZ) + "-artifacts";
  mkdir(artifacts.c_str(), 0755);
  const std::string command = "KVFERRY_FUZZ_ARTIFACTS='" + artifacts + "' '" + KVFERRY_WIRE_FUZZ + "' '" +
                              KVFERRY_FUZZ_CORPUS + "' '" + seconds + "' 2>&1";
  FILE* out = popen(command.c_str(), "r");
  ASSERT_NE(out, nullptr);
  std::string log;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), out)) > 0) log.append(buf, n);
  const int status = pclose(out);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << command << "\n" << log;
  std::printf("%s", log.c_str());
}

}  // namespace
}  // namespace kvferry
