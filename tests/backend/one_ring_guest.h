// For the control tests: a Device opened on `config` and connected, through a new worker, to a new
// userspace blkfront of domain 1 — what a guest with one disk and one ring looks like to the daemon.
#pragma once

#include <gtest/gtest.h>

#include <memory>

#include "backend/device.h"
#include "backend/worker.h"
#include "frontend/blkfront.h"
#include "ring/sim/sim_hypervisor.h"
#include "tests/backend/connection_to.h"

namespace blk {

struct OneRingGuest {
  std::unique_ptr<Device> device;
  std::unique_ptr<Blkfront> front;
  std::unique_ptr<Worker> worker;
};

// `threaded`: the worker runs on its own thread; otherwise the test steps it with RunOnce.
inline void ConnectOneRingGuest(SimHypervisor& sim, const DeviceConfig& config, unsigned max_outstanding,
                                bool threaded, OneRingGuest* guest) {
  auto device = Device::Open(config);
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  guest->device = std::move(*device);
  BlkfrontConfig front_config;
  front_config.domid = 1;
  front_config.max_outstanding = max_outstanding;
  auto front = Blkfront::Create(sim, front_config);
  ASSERT_TRUE(front.ok()) << front.status().ToString();
  guest->front = std::move(*front);
  auto worker = Worker::Create("worker0", 256);
  ASSERT_TRUE(worker.ok()) << worker.status().ToString();
  guest->worker = std::move(*worker);
  if (threaded) guest->worker->Start();
  Hypervisor hypervisor = sim.hypervisor();
  ASSERT_TRUE(guest->device->Connect(hypervisor, ConnectionTo(*guest->front), *guest->worker).ok());
}

}  // namespace blk
