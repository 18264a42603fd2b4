// Tests of ring/persistent_grants.cc over the simulated hypervisor's real shared mappings: reuse without
// hypercalls, the bound, eviction of the least recently used, in-use grants refused twice, idle unmapping,
// and a random run against a model.
#include "ring/persistent_grants.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "ring/sim/sim_hypervisor.h"

namespace blk {
namespace {

constexpr DomId kGuest = 3;

class PersistentGrantsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto domain = sim_.CreateDomain(kGuest, 256);
    ASSERT_TRUE(domain.ok());
    guest_ = *domain;
  }
  // A page granted writable to the backend, its first bytes saying which grant it is.
  GrantRef Grant(bool readonly = false) {
    auto frame = guest_->AllocPage();
    EXPECT_TRUE(frame.ok());
    auto ref = guest_->GrantAccess(0, *frame, readonly);
    EXPECT_TRUE(ref.ok());
    std::memcpy(guest_->PageAddress(*frame), &*ref, sizeof(GrantRef));
    frames_[*ref] = *frame;
    return *ref;
  }
  GrantRef Named(const uint8_t* page) {
    GrantRef ref;
    std::memcpy(&ref, page, sizeof(ref));
    return ref;
  }

  SimHypervisor sim_;
  SimDomain* guest_ = nullptr;
  std::map<GrantRef, uint32_t> frames_;
};

TEST_F(PersistentGrantsTest, AReusedGrantIsMappedOnceAndSharesTheGuestsPage) {
  PersistentGrantCache cache(sim_.grants(), kGuest);
  GrantRef ref = Grant();
  auto first = cache.Acquire(ref);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  cache.Release(ref);
  const uint64_t maps = sim_.counters().map_calls.load();
  for (int i = 0; i < 100; ++i) {
    auto again = cache.Acquire(ref);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *first);
    cache.Release(ref);
  }
  EXPECT_EQ(sim_.counters().map_calls.load(), maps);
  EXPECT_EQ(cache.stats().maps, 1u);
  EXPECT_EQ(cache.stats().hits, 100u);
  // A real shared mapping: the backend's writes are the guest's data.
  (*first)[100] = 0x5A;
  EXPECT_EQ(guest_->PageAddress(frames_[ref])[100], 0x5A);
  EXPECT_EQ(guest_->MapCount(ref), 1u);
}

TEST_F(PersistentGrantsTest, AGrantInUseIsRefusedASecondTime) {
  PersistentGrantCache cache(sim_.grants(), kGuest);
  GrantRef ref = Grant();
  ASSERT_TRUE(cache.Acquire(ref).ok());
  auto twice = cache.Acquire(ref);
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(twice.status().message().find("already in use"), std::string::npos);
  cache.Release(ref);
  EXPECT_TRUE(cache.Acquire(ref).ok());
}

TEST_F(PersistentGrantsTest, BeyondTheBoundTheLeastRecentlyUsedIsUnmapped) {
  PersistentGrantCache cache(sim_.grants(), kGuest, 4);
  std::vector<GrantRef> refs;
  for (int i = 0; i < 10; ++i) refs.push_back(Grant());
  for (GrantRef ref : refs) {
    auto page = cache.Acquire(ref);
    ASSERT_TRUE(page.ok());
    EXPECT_EQ(Named(*page), ref);
    cache.Release(ref);
    EXPECT_LE(cache.size(), 4u);
  }
  EXPECT_EQ(cache.stats().evictions, 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(guest_->MapCount(refs[i]), 0u) << i;
  for (int i = 6; i < 10; ++i) EXPECT_EQ(guest_->MapCount(refs[i]), 1u) << i;
  // Using refs[6] makes refs[7] the oldest: the next new grant evicts it.
  ASSERT_TRUE(cache.Acquire(refs[6]).ok());
  cache.Release(refs[6]);
  GrantRef extra = Grant();
  ASSERT_TRUE(cache.Acquire(extra).ok());
  EXPECT_EQ(guest_->MapCount(refs[7]), 0u);
  EXPECT_EQ(guest_->MapCount(refs[6]), 1u);
}

TEST_F(PersistentGrantsTest, WhenEveryCachedGrantIsInUseTheCallerIsToldToCopy) {
  PersistentGrantCache cache(sim_.grants(), kGuest, 2);
  GrantRef a = Grant(), b = Grant(), c = Grant();
  ASSERT_TRUE(cache.Acquire(a).ok());
  ASSERT_TRUE(cache.Acquire(b).ok());
  auto full = cache.Acquire(c);
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.status().code(), Status::Code::kBusy);
  EXPECT_EQ(cache.stats().full, 1u);
  EXPECT_EQ(guest_->MapCount(c), 0u);
  cache.Release(a);
  auto now = cache.Acquire(c);
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(Named(*now), c);
  EXPECT_EQ(guest_->MapCount(a), 0u);
}

TEST_F(PersistentGrantsTest, GrantsThatCannotBeMappedWritableAreErrorsAndTakeNoRoom) {
  PersistentGrantCache cache(sim_.grants(), kGuest, 2);
  GrantRef read_only = Grant(/*readonly=*/true);
  EXPECT_FALSE(cache.Acquire(read_only).ok());
  EXPECT_FALSE(cache.Acquire(99999).ok());  // never granted
  EXPECT_EQ(cache.size(), 0u);
  cache.Release(99999);  // releasing what was never acquired changes nothing
  GrantRef good = Grant();
  EXPECT_TRUE(cache.Acquire(good).ok());
}

TEST_F(PersistentGrantsTest, SweepUnmapsOnlyGrantsLeftIdle) {
  PersistentGrantCache cache(sim_.grants(), kGuest, 8);
  GrantRef idle = Grant(), busy = Grant(), in_flight = Grant();
  for (GrantRef ref : {idle, busy}) {
    ASSERT_TRUE(cache.Acquire(ref).ok());
    cache.Release(ref);
  }
  ASSERT_TRUE(cache.Acquire(in_flight).ok());
  for (int sweep = 0; sweep < 5; ++sweep) {
    ASSERT_TRUE(cache.Acquire(busy).ok());
    cache.Release(busy);
    cache.Sweep(2);
  }
  EXPECT_EQ(guest_->MapCount(idle), 0u);
  EXPECT_EQ(guest_->MapCount(busy), 1u);
  EXPECT_EQ(guest_->MapCount(in_flight), 1u);  // in use: never swept
  EXPECT_EQ(cache.stats().idle_unmaps, 1u);
  cache.Release(in_flight);
  for (int sweep = 0; sweep < 4; ++sweep) cache.Sweep(2);
  EXPECT_EQ(cache.size(), 0u);
}

TEST_F(PersistentGrantsTest, RandomUseStaysBoundedAndAlwaysGivesTheRightPage) {
  constexpr size_t kCapacity = 16;
  std::vector<GrantRef> refs;
  for (int i = 0; i < 64; ++i) refs.push_back(Grant());
  {
    PersistentGrantCache cache(sim_.grants(), kGuest, kCapacity);
    std::mt19937 random(7);
    std::map<GrantRef, bool> held;
    for (int step = 0; step < 20000; ++step) {
      GrantRef ref = refs[random() % refs.size()];
      if (held[ref]) {
        cache.Release(ref);
        held[ref] = false;
      } else {
        auto page = cache.Acquire(ref);
        size_t holding = 0;
        for (const auto& [r, h] : held) holding += h;
        if (!page.ok()) {
          ASSERT_EQ(page.status().code(), Status::Code::kBusy);
          ASSERT_EQ(holding, kCapacity);
          continue;
        }
        ASSERT_EQ(Named(*page), ref) << "step " << step;
        held[ref] = true;
      }
      ASSERT_LE(cache.size(), kCapacity);
      if (step % 1000 == 0) cache.Sweep(3);
    }
    size_t mapped = 0;
    for (GrantRef ref : refs) mapped += guest_->MapCount(ref);
    EXPECT_EQ(mapped, cache.size());
  }
  // Destroying the cache unmaps everything.
  for (GrantRef ref : refs) EXPECT_EQ(guest_->MapCount(ref), 0u);
}

}  // namespace
}  // namespace blk
