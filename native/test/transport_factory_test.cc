// The transport seam: the engine makes its transport through transport_factory.h from
// EngineOptions::protocol, and asks it (not TCP's own helpers) whether a peer is valid.
#include <gtest/gtest.h>

#include <memory>

#include "engine/engine.h"
#include "engine/transport_factory.h"
#include "test_util.h"

namespace kvferry {
namespace {

Status Create(void (*edit)(EngineOptions&)) {
  EngineOptions o;
  o.pool_size = 1 << 20;
  edit(o);
  std::unique_ptr<Engine> engine;
  return Engine::Create(o, &engine);
}

TEST(TransportFactory, AnUnknownProtocolIsRefusedByName) {
  Status s = Create([](EngineOptions& o) { o.protocol = "carrier-pigeon"; });
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("\"carrier-pigeon\""), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("\"tcp\""), std::string::npos) << s.message();
}

#ifndef KVFERRY_HAVE_UCX
TEST(TransportFactory, RdmaIsKnownButNotInThisBuild) {
  EXPECT_FALSE(TransportBuilt("rdma"));
  Status s = Create([](EngineOptions& o) { o.protocol = "rdma"; });
  EXPECT_EQ(s.code(), Code::kNotSupported);
  EXPECT_NE(s.message().find("UCX"), std::string::npos) << s.message();
}
#else
TEST(TransportFactory, RdmaOptionsAreCheckedByTheUcxEntry) {
  EXPECT_TRUE(TransportBuilt("rdma"));
  Status s = Create([](EngineOptions& o) {
    o.protocol = "rdma";
    o.devices = "mlx5_0,";
  });
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("device_name"), std::string::npos) << s.message();
}
#endif

TEST(TransportFactory, TcpOptionsAreCheckedByTheTcpEntryBeforeThePoolIsMade) {
  Status s = Create([](EngineOptions& o) { o.connections_per_peer = 0; });
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("connections_per_peer"), std::string::npos) << s.message();
  s = Create([](EngineOptions& o) { o.token.assign(5000, 'x'); });
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("token"), std::string::npos) << s.message();
  EXPECT_EQ(CheckTransportOptions(EngineOptions{}).code(), Code::kOk);
}

TEST(TransportFactory, TheTcpTransportListensAndJudgesPeers) {
  auto engine = test::MakeEngine(1 << 20);
  ASSERT_TRUE(engine);
  EXPECT_NE(engine->data_port(), 0);
  TransferOp op;
  op.id = 1;
  op.peer = "no-port-here";
  op.length = 16;
  Status s = engine->Submit({op});
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("'no-port-here' is not host:port"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace kvferry
