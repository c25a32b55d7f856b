// The one place that knows every transport: makes the one EngineOptions::protocol names.
// Adding a transport is a folder (tcp/, rdma/, ...) and an entry in transport_factory.cc.
#pragma once

#include <memory>
#include <string>

#include "engine/engine.h"
#include "engine/status.h"
#include "engine/transport.h"

namespace kvferry {

/** Whether this build has the transport `protocol` names ("rdma" needs UCX at build time). */
bool TransportBuilt(const std::string& protocol);

/**
 * Checks the options of the transport `options.protocol` names: kInvalidArgument naming a
 * bad option or an unknown protocol, kNotSupported for a known protocol this build lacks.
 * Engine::Create calls it before it reserves the pool.
 */
Status CheckTransportOptions(const EngineOptions& options);

/** Makes the transport `options.protocol` names (not started), after the same checks. */
Status CreateTransport(const EngineOptions& options, const TransportContext& context,
                       std::unique_ptr<Transport>* out);

}  // namespace kvferry
