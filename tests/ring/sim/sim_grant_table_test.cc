// Tests of ring/sim/sim_grant_table.cc and the guest side of grants in sim_domain.cc: map and copy, and every
// way Xen would refuse them.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ring/sim/sim_hypervisor.h"

namespace blk {
namespace {

constexpr DomId kGuest = 1;

// The permission string ("r--s") /proc/self/maps shows for the mapping holding `addr`.
std::string ProtectionOf(const void* addr) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const auto target = reinterpret_cast<uintptr_t>(addr);
  while (std::getline(maps, line)) {
    std::istringstream fields(line);
    std::string range, perms;
    fields >> range >> perms;
    size_t dash = range.find('-');
    uintptr_t begin = std::stoull(range.substr(0, dash), nullptr, 16);
    uintptr_t end = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (target >= begin && target < end) return perms;
  }
  return "";
}

class SimGrantTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto domain = sim_.CreateDomain(kGuest, 64);
    ASSERT_TRUE(domain.ok()) << domain.status().ToString();
    guest_ = *domain;
  }

  // Allocates a page, fills it with `fill`, grants it to the backend.
  GrantRef GrantPage(bool readonly, uint8_t fill, uint32_t* frame_out = nullptr) {
    auto frame = guest_->AllocPage();
    EXPECT_TRUE(frame.ok());
    std::memset(guest_->PageAddress(*frame), fill, kPageSize);
    auto ref = guest_->GrantAccess(sim_.backend_domid(), *frame, readonly);
    EXPECT_TRUE(ref.ok());
    if (frame_out != nullptr) *frame_out = *frame;
    return *ref;
  }

  SimHypervisor sim_;
  SimDomain* guest_ = nullptr;
};

TEST_F(SimGrantTableTest, MappingSharesMemoryBothWays) {
  uint32_t frame_a, frame_b;
  GrantRef a = GrantPage(false, 0xAA, &frame_a);
  GrantRef b = GrantPage(false, 0xBB, &frame_b);
  const GrantRef refs[] = {b, a};
  auto mapping = sim_.grants().Map(kGuest, refs, true);
  ASSERT_TRUE(mapping.ok()) << mapping.status().ToString();
  ASSERT_EQ(mapping->pages(), 2u);
  auto* backend = static_cast<uint8_t*>(mapping->addr());
  // Pages appear in the order of the refs, contiguously.
  EXPECT_EQ(backend[0], 0xBB);
  EXPECT_EQ(backend[kPageSize + 17], 0xAA);
  backend[kPageSize + 5] = 0x11;
  EXPECT_EQ(guest_->PageAddress(frame_a)[5], 0x11);
  guest_->PageAddress(frame_b)[4095] = 0x22;
  EXPECT_EQ(backend[4095], 0x22);
  EXPECT_EQ(ProtectionOf(backend), "rw-s");
  EXPECT_EQ(guest_->MapCount(a), 1u);
}

TEST_F(SimGrantTableTest, ReadOnlyMappingIsReadOnly) {
  GrantRef ref = GrantPage(true, 0x5A);
  auto mapping = sim_.grants().Map(kGuest, std::span(&ref, 1), false);
  ASSERT_TRUE(mapping.ok()) << mapping.status().ToString();
  EXPECT_EQ(static_cast<uint8_t*>(mapping->addr())[100], 0x5A);
  EXPECT_EQ(ProtectionOf(mapping->addr()), "r--s");
}

TEST_F(SimGrantTableTest, ReadOnlyMappingOfWritableGrantIsAllowed) {
  GrantRef ref = GrantPage(false, 1);
  auto mapping = sim_.grants().Map(kGuest, std::span(&ref, 1), false);
  ASSERT_TRUE(mapping.ok());
  EXPECT_EQ(ProtectionOf(mapping->addr()), "r--s");
}

TEST_F(SimGrantTableTest, MapRefusesWhatXenRefuses) {
  GrantRef good = GrantPage(false, 0);
  GrantRef readonly = GrantPage(true, 0);
  auto other_frame = guest_->AllocPage();
  ASSERT_TRUE(other_frame.ok());
  auto to_other = guest_->GrantAccess(7, *other_frame, false);
  ASSERT_TRUE(to_other.ok());
  const GrantRef unused = SimDomain::kFirstFreeGrantRef + 40;
  const GrantRef out_of_range = SimDomain::kDefaultGrantEntries;

  struct Case {
    DomId domid;
    GrantRef bad;
    bool writable;
    Status::Code code;
    const char* text;
  } cases[] = {
      {9, good, true, Status::Code::kNotFound, "GNTST_bad_domain"},
      {kGuest, out_of_range, false, Status::Code::kInvalidArgument, "GNTST_bad_gntref"},
      {kGuest, unused, false, Status::Code::kPermissionDenied, "not in use"},
      {kGuest, *to_other, false, Status::Code::kPermissionDenied, "another domain"},
      {kGuest, readonly, true, Status::Code::kPermissionDenied, "read-only"},
  };
  for (const Case& c : cases) {
    // The bad ref comes last: whatever was good before it must not stay mapped.
    const GrantRef refs[] = {good, c.bad};
    auto mapping = sim_.grants().Map(c.domid, refs, c.writable);
    ASSERT_FALSE(mapping.ok()) << c.text;
    EXPECT_EQ(mapping.status().code(), c.code) << mapping.status().ToString();
    EXPECT_NE(mapping.status().message().find(c.text), std::string::npos) << mapping.status().ToString();
    if (c.domid == kGuest) {
      EXPECT_NE(mapping.status().message().find("ref " + std::to_string(c.bad)), std::string::npos)
          << mapping.status().ToString();
    }
    EXPECT_EQ(guest_->MapCount(good), 0u);
  }
  EXPECT_EQ(sim_.counters().map_calls.load(), std::size(cases));
  EXPECT_EQ(sim_.counters().pages_mapped.load(), 0u);
  EXPECT_FALSE(sim_.grants().Map(kGuest, {}, false).ok());
}

TEST_F(SimGrantTableTest, CountersCountMapsAndUnmaps) {
  const GrantRef refs[] = {GrantPage(false, 0), GrantPage(false, 0), GrantPage(true, 0)};
  {
    auto first = sim_.grants().Map(kGuest, refs, false);
    auto second = sim_.grants().Map(kGuest, std::span(refs, 2), true);
    ASSERT_TRUE(first.ok() && second.ok());
    EXPECT_EQ(guest_->MapCount(refs[0]), 2u);
    EXPECT_EQ(sim_.counters().unmap_calls.load(), 0u);
  }
  EXPECT_EQ(sim_.counters().map_calls.load(), 2u);
  EXPECT_EQ(sim_.counters().pages_mapped.load(), 5u);
  EXPECT_EQ(sim_.counters().unmap_calls.load(), 2u);
  EXPECT_EQ(guest_->MapCount(refs[0]), 0u);
}

TEST_F(SimGrantTableTest, EndAccessFailsWhileMapped) {
  uint32_t frame;
  GrantRef ref = GrantPage(false, 0, &frame);
  auto mapping = sim_.grants().Map(kGuest, std::span(&ref, 1), true);
  ASSERT_TRUE(mapping.ok());
  Status busy = guest_->EndAccess(ref);
  EXPECT_EQ(busy.code(), Status::Code::kBusy) << busy.ToString();
  EXPECT_EQ(guest_->grants_in_use(), 1u);
  mapping->Reset();
  EXPECT_TRUE(guest_->EndAccess(ref).ok());
  EXPECT_EQ(guest_->grants_in_use(), 0u);
  EXPECT_FALSE(guest_->EndAccess(ref).ok());  // twice is a guest bug
  EXPECT_FALSE(sim_.grants().Map(kGuest, std::span(&ref, 1), false).ok());
}

TEST_F(SimGrantTableTest, RevokedGrantStaysMappedUntilUnmappedAsOnXen) {
  uint32_t frame;
  GrantRef ref = GrantPage(false, 0x33, &frame);
  auto mapping = sim_.grants().Map(kGuest, std::span(&ref, 1), false);
  ASSERT_TRUE(mapping.ok());
  ASSERT_TRUE(guest_->Revoke(ref).ok());
  // Xen's active entry still vouches for read access while pinned, but not for an upgrade to write.
  EXPECT_EQ(static_cast<uint8_t*>(mapping->addr())[0], 0x33);
  auto again = sim_.grants().Map(kGuest, std::span(&ref, 1), false);
  EXPECT_TRUE(again.ok());
  again->Reset();
  mapping->Reset();
  auto after = sim_.grants().Map(kGuest, std::span(&ref, 1), false);
  EXPECT_FALSE(after.ok());
  uint8_t byte = 0;
  GrantCopySegment copy{GrantCopySegment::Direction::kFromGuest, kGuest, ref, 0, 1, &byte, 0};
  ASSERT_TRUE(sim_.grants().Copy(std::span(&copy, 1)).ok());
  EXPECT_EQ(copy.status, GNTST_general_error);
  EXPECT_EQ(guest_->grants_in_use(), 1u);  // revoked, not freed
  EXPECT_TRUE(guest_->EndAccess(ref).ok());
  EXPECT_EQ(guest_->grants_in_use(), 0u);
}

TEST_F(SimGrantTableTest, SetReadOnlyRefusesLaterWrites) {
  GrantRef ref = GrantPage(false, 0);
  ASSERT_TRUE(guest_->SetReadOnly(ref, true).ok());
  EXPECT_EQ(sim_.grants().Map(kGuest, std::span(&ref, 1), true).status().code(),
            Status::Code::kPermissionDenied);
  uint8_t data[8] = {};
  GrantCopySegment copy{GrantCopySegment::Direction::kToGuest, kGuest, ref, 0, 8, data, 0};
  ASSERT_TRUE(sim_.grants().Copy(std::span(&copy, 1)).ok());
  EXPECT_EQ(copy.status, GNTST_general_error);
  ASSERT_TRUE(guest_->SetReadOnly(ref, false).ok());
  EXPECT_TRUE(sim_.grants().Map(kGuest, std::span(&ref, 1), true).ok());
}

TEST_F(SimGrantTableTest, CopyMovesBytesBothWays) {
  uint32_t frame_in, frame_out;
  GrantRef in = GrantPage(true, 0x7E, &frame_in);
  GrantRef out = GrantPage(false, 0, &frame_out);
  std::vector<uint8_t> from_guest(512, 0), to_guest(100, 0xC3);
  GrantCopySegment segments[] = {
      {GrantCopySegment::Direction::kFromGuest, kGuest, in, 3584, 512, from_guest.data(), 1},
      {GrantCopySegment::Direction::kToGuest, kGuest, out, 4096 - 100, 100, to_guest.data(), 1},
  };
  ASSERT_TRUE(sim_.grants().Copy(segments).ok());
  EXPECT_EQ(segments[0].status, GNTST_okay);
  EXPECT_EQ(segments[1].status, GNTST_okay);
  EXPECT_EQ(from_guest, std::vector<uint8_t>(512, 0x7E));
  EXPECT_EQ(guest_->PageAddress(frame_out)[4095], 0xC3);
  EXPECT_EQ(guest_->PageAddress(frame_out)[3995], 0);
  EXPECT_EQ(sim_.counters().copy_calls.load(), 1u);
  EXPECT_EQ(sim_.counters().copy_segments.load(), 2u);
  EXPECT_EQ(guest_->MapCount(in), 0u);  // a copy pins nothing after it returns
  EXPECT_TRUE(guest_->EndAccess(in).ok());
}

TEST_F(SimGrantTableTest, CopyGivesEachSegmentItsOwnStatus) {
  GrantRef good = GrantPage(false, 0x44);
  GrantRef readonly = GrantPage(true, 0);
  auto frame = guest_->AllocPage();
  ASSERT_TRUE(frame.ok());
  GrantRef to_other = guest_->GrantAccess(3, *frame, false).value();
  uint8_t buffer[4096] = {};
  using D = GrantCopySegment::Direction;
  GrantCopySegment segments[] = {
      {D::kFromGuest, 5, good, 0, 8, buffer, 1},                                      // no such domain
      {D::kFromGuest, kGuest, good, 4000, 97, buffer, 1},                             // crosses the page end
      {D::kFromGuest, kGuest, SimDomain::kDefaultGrantEntries + 1, 0, 8, buffer, 1},  // ref out of range
      {D::kFromGuest, kGuest, SimDomain::kFirstFreeGrantRef + 60, 0, 8, buffer, 1},   // ref not in use
      {D::kFromGuest, kGuest, to_other, 0, 8, buffer, 1},                             // granted to d3
      {D::kToGuest, kGuest, readonly, 0, 8, buffer, 1},                               // write to read-only
      {D::kFromGuest, kGuest, readonly, 0, 8, buffer + 8, 1},   // read of read-only: fine
      {D::kFromGuest, kGuest, good, 4000, 96, buffer + 16, 1},  // exactly to the page end
      {D::kFromGuest, kGuest, SimDomain::kFirstFreeGrantRef + 60, 4000, 200, buffer, 1},  // bad ref wins
  };
  ASSERT_TRUE(sim_.grants().Copy(segments).ok());
  const int16_t expected[] = {GNTST_bad_domain,    GNTST_bad_copy_arg,  GNTST_bad_gntref,
                              GNTST_general_error, GNTST_general_error, GNTST_general_error,
                              GNTST_okay,          GNTST_okay,          GNTST_general_error};
  for (size_t i = 0; i < std::size(segments); ++i) {
    EXPECT_EQ(segments[i].status, expected[i])
        << "segment " << i << ": " << GrantStatusName(segments[i].status);
  }
  EXPECT_EQ(buffer[16 + 95], 0x44);
  EXPECT_EQ(buffer[0], 0);  // failed segments copy nothing
  GrantCopySegment no_buffer{D::kFromGuest, kGuest, good, 0, 8, nullptr, 1};
  EXPECT_FALSE(sim_.grants().Copy(std::span(&no_buffer, 1)).ok());
  EXPECT_EQ(sim_.counters().copy_calls.load(), 1u);
}

TEST_F(SimGrantTableTest, GuestAllocatorAndGrantTableBounds) {
  EXPECT_EQ(guest_->free_pages(), 64u);
  auto first = guest_->AllocPage();
  auto second = guest_->AllocPage();
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(*first, 0u);
  EXPECT_EQ(*second, 1u);
  EXPECT_TRUE(guest_->FreePage(*first).ok());
  EXPECT_FALSE(guest_->FreePage(*first).ok());
  EXPECT_FALSE(guest_->FreePage(64).ok());
  EXPECT_FALSE(guest_->GrantAccess(0, 64, false).ok());
  // Frame 0 is free again but alone: four consecutive frames start after frame 1.
  auto run = guest_->AllocContiguous(4);
  ASSERT_TRUE(run.ok());
  EXPECT_EQ(*run, 2u);
  EXPECT_EQ(guest_->free_pages(), 64u - 5);
  EXPECT_EQ(guest_->AllocPage().value(), 0u);
  EXPECT_EQ(guest_->AllocPage().value(), 6u);
  EXPECT_FALSE(guest_->AllocContiguous(60).ok());
  auto ref = guest_->GrantAccess(0, *second, false);
  ASSERT_TRUE(ref.ok());
  EXPECT_GE(*ref, SimDomain::kFirstFreeGrantRef);

  auto small = sim_.CreateDomain(2, 1, SimDomain::kFirstFreeGrantRef + 1);
  ASSERT_TRUE(small.ok());
  EXPECT_TRUE((*small)->GrantAccess(0, 0, false).ok());
  EXPECT_EQ((*small)->GrantAccess(0, 0, false).status().code(), Status::Code::kBusy);
  EXPECT_FALSE(sim_.CreateDomain(2, 1).ok());  // exists
  EXPECT_FALSE(sim_.CreateDomain(0, 1).ok());  // the backend's own
  EXPECT_FALSE(sim_.CreateDomain(DOMID_SELF, 1).ok());
  EXPECT_FALSE(sim_.CreateDomain(3, 0).ok());
}

// The guest grants and revokes while the backend maps and copies: must be race-free (run under ASan/UBSan).
TEST_F(SimGrantTableTest, GuestAndBackendMayRace) {
  constexpr int kRounds = 2000;
  std::atomic<GrantRef> published{0};
  std::thread guest([&] {
    auto frame = guest_->AllocPage();
    ASSERT_TRUE(frame.ok());
    for (int i = 0; i < kRounds; ++i) {
      auto ref = guest_->GrantAccess(0, *frame, i % 2 == 0);
      ASSERT_TRUE(ref.ok());
      published.store(*ref);
      while (!guest_->EndAccess(*ref).ok()) {
      }
    }
  });
  uint8_t buffer[64];
  for (int i = 0; i < kRounds; ++i) {
    GrantRef ref = published.load();
    GrantCopySegment copy{GrantCopySegment::Direction::kFromGuest, kGuest, ref, 0, sizeof(buffer), buffer, 1};
    ASSERT_TRUE(sim_.grants().Copy(std::span(&copy, 1)).ok());
    auto mapping = sim_.grants().Map(kGuest, std::span(&ref, 1), false);
    if (mapping.ok()) {
      EXPECT_EQ(guest_->MapCount(ref), 1u);
    }
  }
  guest.join();
  EXPECT_EQ(guest_->grants_in_use(), 0u);
}

}  // namespace
}  // namespace blk
