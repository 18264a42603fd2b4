// The request pipeline of one ring: from a kick to answered requests, with no allocation on the way.
//
// A kick takes every published request out of the ring into private slots, validates it, copies the data of
// all writes in with one batched grant copy, and submits every I/O of the round with one io_submit.
// Completions copy the data of all reads out with one batched grant copy, write the responses, and notify the
// frontend only if it asked (rsp_event). Slots, bounce buffers, iocbs and copy descriptors are allocated
// once, sized to the ring.
//
// Adjacent READs (or WRITEs) of one round that are contiguous on disk go to the kernel as one vectored iocb,
// up to 1 MiB: a frontend without indirect descriptors splits a large I/O into 44 KiB requests, and the disk
// should not see it that way. If a merged I/O fails, its requests are retried one by one, so that only the
// one that really fails is answered with an error.
//
// INDIRECT (feature-max-indirect-segments, when the device offers it): the request's indirect pages are
// grant-copied into private memory in the round's batch, decoded and checked (DecodeIndirectSegments), and
// the request then runs as a READ or WRITE of up to max_indirect_segments segments; a write's data joins the
// next batch of the same round. Its response carries indirect_op, as Linux blkfront expects.
//
// Bounce memory for indirect requests: every ring slot keeps its own 44 KiB buffer (11 pages) for direct
// requests, and the ring has a fixed number (kIndirectBuffers) of large buffers, each sized for the offered
// segment count (1 MiB at 256), with its private indirect-page copy and decoded segment array. A large
// buffer is taken when an indirect request starts and given back when it is answered. When none is free,
// the queue stops at that request until one is (FIFO order is kept, so a barrier behind it still waits).
// Why this and not a 1 MiB buffer per slot: 512 slots of a 16-page ring would reserve 512 MiB per ring; a
// page pool with an iovec per page would cost an iovec array per request and defeat the one-iocb-per-request
// shape. A handful of large buffers keeps large I/O at one contiguous iocb, bounds the memory
// (16 MiB per ring at 256 segments, touched lazily) and 16 MiB in flight per ring already saturates a disk.
//
// Persistent grants (feature-persistent negotiated, raw images): a data segment's grant is looked up in a
// bounded PersistentGrantCache (mapped on first use, kept) and the I/O goes straight to and from the mapped
// pages, an iovec per segment: no grant copy and, once the frontend's pages are cached, no hypercall at all.
// A segment the cache cannot take (every cached grant in use) goes through the bounce buffer by grant copy.
// Such requests are not merged (their iovecs are their own). VHD images keep the copy path: VhdIo works on
// one contiguous buffer. Grants idle for a while are unmapped by a sweep every second of activity; all are
// unmapped when the pipeline goes (disconnect).
//
// DISCARD punches a hole (files) or discards (block devices) when the device offered it.
//
// Ordering: WRITE_BARRIER waits until everything taken before it has been answered, syncs, writes, syncs
// again, and nothing taken after it starts before it is answered. FLUSH_DISKCACHE writes its data (if any)
// and then syncs the file: everything answered before the flush was taken is durable when the flush is
// answered.
//
// Pause: the ring stops being read, what was taken completes, the file is synced (one AIO fdsync), and only
// then is the pause reported. While paused the frontend may keep queueing; Resume takes everything queued,
// in ring order. Between the two the pipeline holds no request, so a later image swap can happen there.
//
// Threading: owned by one worker thread; every method runs there, except the accessors marked otherwise.
#pragma once

#include <libaio.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/aio_engine.h"
#include "backend/completion_handler.h"
#include "backend/device_stats.h"
#include "backend/vhd_io.h"
#include "base/status.h"
#include "base/unique_fd.h"
#include "formats/disk_image.h"
#include "ring/back_ring.h"
#include "ring/hypervisor.h"
#include "ring/persistent_grants.h"
#include "ring/request.h"

namespace blk {

// What a frontend published for one ring (its xenstore keys).
struct RingConnection {
  DomId frontend_domid = 0;
  std::vector<GrantRef> ring_refs;  // 2^ring-page-order refs
  EvtchnPort event_channel = 0;
  Abi abi = kNativeAbi;
  // feature-persistent negotiated (both sides wrote 1): the frontend reuses its grants, and the ring keeps up
  // to `persistent_capacity` of them mapped.
  bool persistent = false;
  size_t persistent_capacity = PersistentGrantCache::kDefaultCapacity;
};

// A request taken from the ring and not yet answered, as a pause report names it.
struct OutstandingRequest {
  uint64_t id;
  uint8_t operation;  // BLKIF_OP_*
  uint64_t sector;
  const char* stage;  // "queued", "syncing", "in I/O"
};

const char* BlkifOperationName(uint8_t operation);

class RequestPipeline final : public CompletionHandler, private VhdIo::Owner {
 public:
  // Maps the ring, binds the event channel and preallocates everything for the ring's size.
  // The pipeline shares the image and the statistics with its device, so that it can outlive the device
  // while the last of its I/O completes (see Worker::Retire).
  static Result<std::unique_ptr<RequestPipeline>> Create(std::string name, Hypervisor& hypervisor,
                                                         const RingConnection& connection,
                                                         std::shared_ptr<DiskImage> image,
                                                         const DiskLimits& limits, AioEngine& aio,
                                                         std::shared_ptr<DeviceStats> stats);
  ~RequestPipeline();

  const std::string& name() const { return name_; }
  int event_fd() const { return channel_->fd(); }
  // The event channel fired.
  void OnKick();
  void OnCompletion(const io_event& event) override;
  void FinishCompletions() override;
  // Submissions the kernel refused for lack of resources are waiting to be retried.
  bool has_deferred_submissions() const { return !deferred_.empty(); }
  void RetryDeferred();
  // I/Os that failed with a transient error wait for a back-off: the worker runs RunDueRetries() by
  // `next_retry_ns()` (CLOCK_MONOTONIC; 0: none waiting).
  uint64_t next_retry_ns() const { return next_retry_ns_; }
  void RunDueRetries();
  // The frontend broke the ring protocol; the ring is no longer read.
  // Any thread may ask.
  bool broken() const { return broken_.load(std::memory_order_relaxed); }
  // Requests taken from the ring and not yet answered, plus a pause's sync in flight: the ring must stay
  // mapped and the pipeline alive until this is 0.
  uint32_t outstanding() const { return ring_.outstanding() + (pause_sync_in_flight_ ? 1u : 0u); }
  // Takes and starts requests if the frontend published any; for a worker that polls instead of sleeping.
  // Returns whether there were any.
  bool PollRing();
  // While the worker polls, an emptied ring is not re-armed: req_event stays behind, so the frontend
  // publishes without notifying (the suppression ring.h intends) and the worker takes the requests by
  // looking.
  void set_polling(bool polling) { polling_ = polling; }
  // Before the worker sleeps: asks the frontend to notify again (req_event). Returns whether requests arrived
  // meanwhile, which no notification will announce.
  bool ArmForSleep();
  // The last round took its budget (one ring's worth of requests) and left the rest: the worker calls
  // TakeAnotherRound() on its next iteration, after the other rings had their turn.
  bool wants_another_round() const { return another_round_; }
  void TakeAnotherRound();
  // Stops taking requests (requests already taken still complete).
  void StopTaking() { stopped_ = true; }

  // Stops taking requests; once every taken request is answered and the file synced, `done` runs (on this
  // thread) with the sync's outcome. A Resume before that calls `done` with a kBusy status.
  void Pause(std::function<void(Status)> done);
  // Takes and serves everything the frontend queued meanwhile. Does nothing if not paused.
  void Resume();
  bool paused() const { return pause_state_ == PauseState::kPaused; }
  // Paused only (no request taken, no sync in flight): serves `image` from now on (resume --image, a
  // snapshot's new leaf). Its VHD engine is rebuilt; the old image is released here.
  Status SwapImage(std::shared_ptr<DiskImage> image);
  // Up to `max` requests taken and not yet answered, in slot order.
  std::vector<OutstandingRequest> Outstanding(size_t max) const;
  // The disk grew (online resize): requests up to `sectors` become valid.
  void SetSectors(uint64_t sectors) { limits_.sectors = sectors; }
  // Any thread: requests taken and not yet answered, and the latency of those answered.
  uint32_t in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  const LatencyBuckets& latency() const { return latency_; }
  // Null unless feature-persistent was negotiated. Worker thread only.
  const PersistentGrantCache* persistent_grants() const { return persistent_.get(); }

 private:
  enum class Stage : uint8_t { kFree, kQueued, kPreSync, kData, kPostSync };
  enum class PauseState : uint8_t { kRunning, kDraining, kSyncing, kPaused };
  // The completion of the fdsync a pause issues once the ring is drained.
  class PauseSync final : public CompletionHandler {
   public:
    explicit PauseSync(RequestPipeline& owner) : owner_(owner) { tag.handler = this; }
    void OnCompletion(const io_event& event) override { result = static_cast<long>(event.res); }
    void FinishCompletions() override { owner_.OnPauseSynced(result); }
    AioTag tag;
    iocb cb{};
    long result = 0;

   private:
    RequestPipeline& owner_;
  };
  struct Slot {
    AioTag tag;  // first, so an io_event's data finds the pipeline
    Request request;
    iocb cb;
    uint8_t* buffer;
    uint64_t offset;  // bytes into the disk
    uint32_t length;  // data bytes
    Stage stage;
    bool writes;  // moves data from the guest to the disk
    bool pre_sync;
    bool post_sync;
    uint32_t first_copy;             // index of its first segment in a copy batch
    uint32_t copy_count;             // how many copies of that batch are its own
    const RequestSegment* segments;  // the data segments: the request's own, or decoded indirect ones
    uint16_t segment_count;
    uint32_t large;           // the large buffer an INDIRECT request holds, or kNoSlot
    bool fetching_indirect;   // its indirect pages are in the current copy batch
    bool zero_copy;           // its segments went through the persistent-grant cache
    iovec* segment_iovecs;    // one per segment, when zero_copy
    uint8_t* segment_mapped;  // per segment: 1 if a cached mapping, 0 if through the bounce buffer
    bool may_merge;           // cleared when a merged I/O failed and this request is retried on its own
    uint16_t chain_count;     // at the head of a merged I/O: how many requests it carries
    uint32_t chain_bytes;     // at the head: bytes of the whole merged I/O
    uint32_t chain_next;      // the next request of the merged I/O, or kNoSlot
    iovec* iovecs;            // at the head: one per merged request
    uint64_t taken_ns;        // CLOCK_MONOTONIC when taken from the ring, for the latency histogram
    uint64_t submitted_ns;    // when its iocb last went to the kernel, for the device's latency
    uint32_t done;            // data bytes already transferred (a short transfer continues from there)
    uint32_t retry_delay_ms;
    uint64_t retry_deadline_ns;  // transient failures: when retrying stops (0: none failed yet)
    uint64_t retry_at_ns;
  };
  static constexpr uint32_t kNoSlot = ~0u;
  // Large buffers for INDIRECT requests, per ring (see the header comment).
  static constexpr uint32_t kIndirectBuffers = 16;
  struct LargeBuffer {
    uint8_t* data;             // max_indirect_segments pages
    uint8_t* indirect_pages;   // the private copy of the request's indirect pages
    RequestSegment* segments;  // decoded from them
    iovec* iovecs;             // and, with persistent grants, one iovec and one flag per segment
    uint8_t* mapped;
  };

  RequestPipeline(std::string name, Hypervisor& hypervisor, GrantMapping ring_mapping, size_t ring_pages,
                  Abi abi, std::unique_ptr<EventChannel> channel, DomId frontend,
                  std::shared_ptr<DiskImage> image, const DiskLimits& limits, AioEngine& aio,
                  std::shared_ptr<DeviceStats> stats, Mapping buffers, uint32_t large_buffers,
                  bool persistent, size_t persistent_capacity);

  // Takes requests and starts what may start, until the ring is empty, no slot is free or a ring's worth of
  // requests was taken.
  void Pump();
  // Validates a taken request; queues it in a slot or answers it at once.
  void Admit(const Request& request);
  // Starts queued slots in ring order, honouring barriers, with one grant copy and one io_submit.
  void StartQueued();
  // One pass of StartQueued: starts slots until the queue must wait (for a large buffer, for what a barrier
  // follows, for the device to take a piece), leaving the io_submit and the reads done without the disk.
  void StartQueuedRound();
  // Marks the slot ready for its data I/O; Submit() turns ready slots into (merged) iocbs.
  void PrepareData(Slot& slot);
  void BuildDataIocbs();
  void SubmitChain(Slot& head);
  void CompleteData(Slot& slot);
  // A transient failure: the slot's stage runs again after a back-off, or fails once the retry time is up.
  void RetryLater(Slot& slot, const char* why);
  void FailIo(Slot& slot, const char* why);
  // Retries each request of a merged I/O on its own.
  void SplitChain(Slot& head);
  void PrepareSync(Slot& slot);
  // DISCARD runs synchronously on the worker: libaio has no discard, hole punching is a metadata operation
  // that rarely waits for the disk, and frontends send discards seldom and in large ranges.
  void DiscardNow(Slot& slot);
  void Submit();
  // How many iocbs go to the kernel per io_submit. On storage that answers in microseconds (tmpfs, a cache),
  // one io_submit for the whole round saves system calls. A device that takes hundreds of microseconds is
  // better off getting each I/O at once (fio's default): the block layer holds an io_submit's requests until
  // the call ends and hands them over as one burst, which on the virtio disk measured here cost about a
  // tenth of the IOPS at iodepth 32. The device's recent latency decides.
  size_t IocbsPerSubmit() const { return device_slow() ? 1 : submit_.size(); }
  bool device_slow() const { return device_latency_ns_ >= kSlowDeviceNs; }
  // The most data one merged I/O carries. A slow device gets a round in pieces, so that it starts on the
  // first while the next is copied in and submitted (a whole MiB in one go kept it idle for the ~75 us its
  // copy and io_submit took, a quarter of its own time for that MiB on the virtio disk here).
  uint32_t MaxMergedBytes() const;
  void NoteDeviceLatency(const Slot& slot);
  // The bytes an iocb of ours moves (0 for a sync, or for an iocb of the VHD layer).
  uint64_t DataBytes(const iocb& cb) const;
  void Respond(Slot& slot, int16_t status);
  void RespondNow(const Request& request, int16_t status);
  void PushResponses();
  // Copies the first `count` finished reads (all by default) to the guest and answers them.
  void CopyReadsOut(size_t count = SIZE_MAX);
  // Appends the grant copies that move `slot`'s data between the guest's pages and its bounce buffer.
  void AddCopies(Slot& slot, GrantCopySegment::Direction direction);
  // Appends the grant copies that bring an INDIRECT request's indirect pages into its large buffer.
  void AddIndirectPageCopies(Slot& slot);
  // The indirect pages arrived (or did not): decode them and move the request on, or answer it.
  void FinishIndirectFetch(Slot& slot, int16_t copy_failure);
  void ReleaseLargeBuffer(Slot& slot);
  // The slot's data segments are known: map them (persistent grants), then copy a write's data in or start
  // a read.
  void BeginData(Slot& slot);
  // A write's data is in place (copied or mapped): its pre-sync or its data I/O next.
  void WriteDataArrived(Slot& slot);
  // Acquires every segment's grant from the cache (kBusy ones go by copy); GNTST_okay or why not.
  int16_t MapSegments(Slot& slot);
  void ReleaseSegments(Slot& slot);
  void SweepPersistentGrants();
  // The first failed GNTST_* status among `slot`'s copies in `copies_` (all fail if the batch did), or okay.
  int16_t CopyFailure(const Slot& slot, const Status& batch) const;
  void NoteBadRequest(const Request& request, const char* reason);
  // VhdIo::Owner: a VHD image's data stage, done by vhd_.
  void VhdDataDone(uint32_t slot, int error) override;
  void VhdSubmitNow() override { FinishCompletions(); }
  // Pausing and nothing outstanding: sync the file, then report.
  void MaybeFinishDrain();
  void OnPauseSynced(long result);
  void FinishPause(Status status);
  uint32_t SlotIndex(const Slot& slot) const { return static_cast<uint32_t>(&slot - slots_.data()); }

  std::string name_;
  Hypervisor hypervisor_;  // a bundle of references: held by value, as callers build it on the fly
  GrantMapping ring_mapping_;
  BackRing ring_;
  std::unique_ptr<EventChannel> channel_;
  DomId frontend_;
  std::shared_ptr<DiskImage> image_;
  int fd_;                      // raw: the image; VHD: the leaf's data descriptor (syncs go there)
  std::unique_ptr<VhdIo> vhd_;  // VHD images only: their data stage
  DiskLimits limits_;
  AioEngine& aio_;
  std::shared_ptr<DeviceStats> stats_owner_;
  DeviceStats& stats_;
  Mapping buffers_;

  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;  // a stack
  std::vector<uint32_t> queue_;       // a FIFO in ring order (circular)
  uint32_t queue_head_ = 0;
  uint32_t queue_size_ = 0;
  uint32_t started_ = 0;  // slots past the queue and not yet answered
  bool barrier_running_ = false;
  bool secure_erase_refusal_logged_ = false;  // one line per ring, however often a guest asks
  std::vector<Request> taken_;
  std::vector<GrantCopySegment> copies_;
  std::vector<Slot*> copy_slots_;
  std::vector<uint32_t> ready_;  // slots whose data I/O is ready, in ring order
  std::vector<iovec> iovecs_;
  std::vector<iocb*> submit_;
  std::vector<iocb*> deferred_;
  std::vector<Slot*> reads_done_;
  std::vector<uint32_t> retrying_;  // slots waiting for a back-off
  uint64_t next_retry_ns_ = 0;
  std::vector<LargeBuffer> large_;
  std::vector<uint32_t> free_large_;  // a stack
  std::vector<RequestSegment> indirect_segments_;
  std::vector<Slot*> indirect_writes_;  // decoded this round, their data still to copy in
  std::unique_ptr<PersistentGrantCache> persistent_;
  std::vector<iovec> direct_iovecs_;  // kMaxDirectSegments per slot, then max_indirect per large buffer
  std::vector<uint8_t> direct_mapped_;
  uint64_t last_sweep_ns_ = 0;
  bool responses_pending_ = false;
  std::atomic<bool> broken_{false};
  bool stopped_ = false;
  bool another_round_ = false;
  bool polling_ = false;
  static constexpr uint64_t kSlowDeviceNs = 50000;
  // On a slow device the first this many reads of a batch are answered, and the requests the guest sends
  // back taken and submitted, before the rest are copied out (FinishCompletions).
  static constexpr size_t kFirstAnswers = 8;
  // At most this much data per io_submit, so that storage that works within the call can be answered in
  // pieces; and per copied-in piece of a round on a slow device (MaxMergedBytes).
  static constexpr uint64_t kSubmitChunkBytes = 256 * 1024;
  uint64_t device_latency_ns_ = 0;  // moving average of data iocbs' submit-to-reap time
  uint64_t reaped_at_ns_ = 0;       // the clock, read once per batch of completions (0: not yet)
  uint64_t bad_requests_logged_ = 0;
  PauseState pause_state_ = PauseState::kRunning;
  std::function<void(Status)> pause_done_;
  PauseSync pause_sync_{*this};
  bool pause_sync_in_flight_ = false;
  std::atomic<uint32_t> in_flight_{0};
  LatencyBuckets latency_;
};

}  // namespace blk
