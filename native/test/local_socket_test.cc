// The local socket: an admitted client receives the very memfd (writes through its mapping
// are the server's bytes), a refused one gets the reason and no fd, and the socket file
// has the mode asked for and goes with the server.
#include "engine/local/local_socket.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

namespace kvferry {
namespace {

std::string SocketPath(const char* name) {
  return "/tmp/kvferry-gtest-" + std::to_string(getpid()) + "-" + name + ".sock";
}

class MemfdFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = memfd_create("kvferry-gtest", MFD_CLOEXEC);
    ASSERT_GE(fd_, 0);
    ASSERT_EQ(ftruncate(fd_, kSize), 0);
  }
  void TearDown() override { close(fd_); }
  static constexpr size_t kSize = 1 << 20;
  int fd_ = -1;
};

TEST_F(MemfdFixture, AnAdmittedClientMapsTheSamePages) {
  LocalSocketOptions o;
  o.path = SocketPath("same");
  o.fd = fd_;
  o.header = "\"poolBytes\":1048576";
  std::unique_ptr<LocalSocketServer> server;
  ASSERT_TRUE(LocalSocketServer::Start(o, &server).ok());
  struct stat st;
  ASSERT_EQ(stat(o.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  std::string header;
  int got = -1;
  Status received = ReceiveLocalPool(o.path, 5000, &header, &got);
  ASSERT_TRUE(received.ok()) << received.message();
  EXPECT_EQ(header, "{\"ok\":true,\"poolBytes\":1048576}");
  ASSERT_GE(got, 0);
  auto* theirs = static_cast<uint8_t*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, got, 0));
  auto* ours = static_cast<uint8_t*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
  ASSERT_NE(theirs, MAP_FAILED);
  ASSERT_NE(ours, MAP_FAILED);
  std::memcpy(theirs + 4096, "kvferry", 7);
  EXPECT_EQ(std::memcmp(ours + 4096, "kvferry", 7), 0);
  munmap(theirs, kSize);
  munmap(ours, kSize);
  close(got);
  // Counted by the server's thread once its send returned: it may come a moment after ours.
  for (int i = 0; i < 500 && server->stats().admitted == 0; i++) usleep(10'000);
  EXPECT_EQ(server->stats().admitted, 1u);
  server.reset();
  EXPECT_NE(access(o.path.c_str(), F_OK), 0) << "the socket file goes with the server";
}

// A process out of fds cannot accept: the accept thread must back off, not spin on a
// listening socket that stays readable (a core burnt for as long as the fds are short).
TEST_F(MemfdFixture, OutOfFdsTheAcceptThreadDoesNotSpin) {
  LocalSocketOptions o;
  o.path = SocketPath("emfile");
  o.fd = fd_;
  std::unique_ptr<LocalSocketServer> server;
  ASSERT_TRUE(LocalSocketServer::Start(o, &server).ok());
  int client = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(client, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, o.path.data(), o.path.size());
  // Every fd taken (under a low limit), then the connection the server cannot accept.
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  rlimit low = old;
  low.rlim_cur = 256;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<int> taken;
  for (int f; (f = dup(0)) >= 0;) taken.push_back(f);
  ASSERT_EQ(connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  sleep(2);
  getrusage(RUSAGE_SELF, &after);
  auto cpu_us = [](const rusage& r) {
    return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1'000'000LL + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
  };
  long long burnt_us = cpu_us(after) - cpu_us(before);
  // Fds back: the waiting client is served.
  for (int f : taken) close(f);
  setrlimit(RLIMIT_NOFILE, &old);
  char buf[256];
  timeval tv{10, 0};
  setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  EXPECT_GT(recv(client, buf, sizeof(buf), 0), 0) << "the client is served once fds are free";
  close(client);
  // A spinning thread burns ~2 s of CPU in those 2 s; a waiting one next to nothing.
  EXPECT_LT(burnt_us, 500'000) << "the accept thread spun while out of fds";
  server.reset();
}

TEST(LocalSocketAdmits, SameUidOrAllowedIdsOnly) {
  LocalSocketOptions o;
  std::string reason;
  EXPECT_TRUE(LocalSocketServer::Admits(o, geteuid(), 12345, &reason));
  const uid_t other = geteuid() == 65534 ? 65533 : 65534;
  EXPECT_FALSE(LocalSocketServer::Admits(o, other, 65534, &reason));
  EXPECT_NE(reason.find("uid " + std::to_string(other)), std::string::npos) << reason;
  o.allowed_uids = {other};
  EXPECT_TRUE(LocalSocketServer::Admits(o, other, 65534, &reason));
  o.allowed_uids = {};
  o.allowed_gids = {4242};
  EXPECT_TRUE(LocalSocketServer::Admits(o, other, 4242, &reason));
}

TEST_F(MemfdFixture, ALiveSocketIsNotTakenOverAndAStaleOneIs) {
  LocalSocketOptions o;
  o.path = SocketPath("live");
  o.fd = fd_;
  std::unique_ptr<LocalSocketServer> first, second;
  ASSERT_TRUE(LocalSocketServer::Start(o, &first).ok());
  Status taken = LocalSocketServer::Start(o, &second);
  EXPECT_FALSE(taken.ok());
  EXPECT_NE(taken.message().find("another process"), std::string::npos) << taken.message();
  first.reset();
  ASSERT_TRUE(LocalSocketServer::Start(o, &second).ok());
}

TEST(LocalSocketClient, NoServerIsUnavailable) {
  std::string header;
  int fd = -1;
  Status st = ReceiveLocalPool(SocketPath("nobody"), 1000, &header, &fd);
  EXPECT_EQ(st.code(), Code::kUnavailable);
  EXPECT_EQ(fd, -1);
}

}  // namespace
}  // namespace kvferry
