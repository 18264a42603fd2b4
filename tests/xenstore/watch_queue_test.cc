// Tests of xenstore/watch_queue.cc: coalescing, the bound under a flood, and rescan events on overflow.
#include "xenstore/watch_queue.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace blk {
namespace {

std::vector<WatchEvent> PopAll(WatchEventQueue& queue) {
  std::vector<WatchEvent> events;
  queue.Pop(&events, SIZE_MAX);
  return events;
}

TEST(PathCoversTest, ComponentsNotPrefixes) {
  EXPECT_TRUE(PathCovers("/a", "/a"));
  EXPECT_TRUE(PathCovers("/a", "/a/b/c"));
  EXPECT_FALSE(PathCovers("/a", "/ab"));
  EXPECT_FALSE(PathCovers("/a/b", "/a"));
  EXPECT_TRUE(PathCovers("/", "/x"));
  EXPECT_TRUE(PathCovers("@releaseDomain", "@releaseDomain"));
}

TEST(WatchEventQueueTest, KeepsOrderAndDropsPendingDuplicates) {
  WatchEventQueue queue(8);
  queue.AddWatch("/be", "t");
  queue.Push("/be/1", "t");
  queue.Push("/be/2", "t");
  queue.Push("/be/1", "t");  // still pending: coalesced
  queue.Push("/be/1", "u");  // another token is another event
  EXPECT_EQ(queue.size(), 3u);
  std::vector<WatchEvent> expected = {{"/be/1", "t", false}, {"/be/2", "t", false}, {"/be/1", "u", false}};
  EXPECT_EQ(PopAll(queue), expected);
  EXPECT_EQ(queue.stats().coalesced, 1u);
  // Once delivered, the same path queues again.
  queue.Push("/be/1", "t");
  EXPECT_EQ(queue.size(), 1u);
}

TEST(WatchEventQueueTest, PopHonoursMax) {
  WatchEventQueue queue(8);
  for (int i = 0; i < 5; ++i) queue.Push("/p/" + std::to_string(i), "t");
  std::vector<WatchEvent> out;
  EXPECT_EQ(queue.Pop(&out, 2), 2u);
  EXPECT_EQ(out[1].path, "/p/1");
  EXPECT_EQ(queue.Pop(&out, 10), 3u);
  EXPECT_EQ(out.size(), 5u);
  EXPECT_EQ(queue.Pop(&out, 10), 0u);
}

TEST(WatchEventQueueTest, FloodOfOnePathNeverGrows) {
  WatchEventQueue queue(4);
  queue.AddWatch("/local/domain/5/device", "dev");
  for (int i = 0; i < 100000; ++i) queue.Push("/local/domain/5/device/vbd/768/state", "dev");
  EXPECT_EQ(queue.size(), 1u);
  EXPECT_EQ(queue.stats().high_water, 1u);
  EXPECT_EQ(queue.stats().overflows, 0u);
}

TEST(WatchEventQueueTest, OverflowCollapsesIntoRescanOfEachWatchedRoot) {
  WatchEventQueue queue(4);
  queue.AddWatch("/be", "backend");
  queue.AddWatch("/fe", "frontend");
  queue.AddWatch("/fe2", "frontend");
  queue.Push("/fe/0", "frontend");
  for (int i = 0; i < 1000; ++i) queue.Push("/be/" + std::to_string(i), "backend");
  EXPECT_LE(queue.stats().high_water, 4u);
  EXPECT_GE(queue.stats().overflows, 1u);
  std::vector<WatchEvent> expected = {
      {"/fe", "frontend", true}, {"/fe2", "frontend", true}, {"/be", "backend", true}};
  EXPECT_EQ(PopAll(queue), expected);
  // With the rescans delivered, single events flow again.
  queue.Push("/be/7", "backend");
  EXPECT_EQ(PopAll(queue), (std::vector<WatchEvent>{{"/be/7", "backend", false}}));
}

TEST(WatchEventQueueTest, PendingRescanAbsorbsEventsBelowItOnly) {
  WatchEventQueue queue(2);
  queue.AddWatch("/be", "t");
  queue.Push("/be/1", "t");
  queue.Push("/be/2", "t");
  queue.Push("/be/3", "t");  // overflow: one rescan of /be
  EXPECT_EQ(queue.size(), 1u);
  queue.Push("/be/4/state", "t");
  queue.Push("/be", "t");
  EXPECT_EQ(queue.size(), 1u);
  queue.Push("/other", "t");  // not under the rescan root: kept
  EXPECT_EQ(queue.size(), 2u);
}

TEST(WatchEventQueueTest, AddWatchReportsDuplicates) {
  WatchEventQueue queue(1);
  EXPECT_TRUE(queue.AddWatch("/a", "a"));
  EXPECT_FALSE(queue.AddWatch("/a", "a"));
  EXPECT_TRUE(queue.AddWatch("/b", "a"));
}

TEST(WatchEventQueueTest, OverflowDropsEventsOfUnwatchedTokens) {
  WatchEventQueue queue(2);
  queue.AddWatch("/a", "a");
  queue.Push("/gone/1", "stale");  // e.g. delivered after Unwatch
  queue.Push("/a/1", "a");
  queue.Push("/a/2", "a");
  EXPECT_EQ(PopAll(queue), (std::vector<WatchEvent>{{"/a", "a", true}}));
  EXPECT_EQ(queue.stats().dropped_unwatched, 1u);
  queue.RemoveWatch("/a", "a");
  queue.Push("/x/1", "x");
  queue.Push("/x/2", "x");
  queue.Push("/x/3", "x");
  EXPECT_TRUE(queue.empty());
  EXPECT_EQ(queue.stats().dropped_unwatched, 4u);
}

}  // namespace
}  // namespace blk
