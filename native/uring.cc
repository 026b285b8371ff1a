// io_uring for file I/O, through the raw syscalls (no liburing): one ring per JS IoUring object, so per
// storage and per thread.
//
// The JS side owns numbered slots. readv/writev/fsync/fallocate fill the SQE of a free slot and leave it
// queued; submit() hands everything queued to the kernel in one io_uring_enter (the JS side calls it once
// per tick, so a processing pass costs one syscall). A completion is the pair (slot, res) written into a
// SharedArrayBuffer of 2 * slots int32s that the JS side reads: submit() may reap at once what the
// kernel finished inline (page-cache hits), the rest arrives through the ring's eventfd
// (IORING_REGISTER_EVENTFD) watched by uv_poll, and is passed on in one callback per wake-up.
//
// Memory safety: iovecs point straight into the caller's views (guest memory, no copy). The JS side
// keeps those views referenced until their completion is delivered; while anything is queued or in
// flight the ring holds its own JS object strongly (and with it the callback and all it reaches) and
// keeps the loop alive. close() refuses while operations are in flight; env teardown (worker exit)
// waits for them, so the kernel never writes into memory that has been freed or unmapped.

#include "common.h"

#include <linux/io_uring.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <memory>
#include <utility>
#include <vector>

namespace vhost {
namespace {

// Older headers (Debian 12 ships 6.1's): the values are ABI.
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_SQ_TASKRUN
#define IORING_SQ_TASKRUN (1U << 2)
#endif
#ifndef IORING_ASYNC_CANCEL_ANY
#define IORING_ASYNC_CANCEL_ANY (1U << 2)
#endif

// user_data of our own cancel request: no slot has it, so Deliver ignores its completion.
constexpr uint64_t kCancelTag = ~0ULL;

// IOV_MAX: the kernel refuses longer vectors. Longer lists are cut here; the JS side sees a short
// transfer and continues with the rest.
constexpr uint32_t kMaxIov = 1024;
constexpr uint32_t kMaxEntries = 32768;

// JS-visible operation kinds are separate methods; these are the results' syscall names.
int SysSetup(uint32_t entries, io_uring_params* p) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, p));
}
int SysEnter(int fd, uint32_t to_submit, uint32_t min_complete, uint32_t flags) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, nullptr, 0));
}
int SysRegister(int fd, uint32_t op, void* arg, uint32_t nr) {
  return static_cast<int>(syscall(__NR_io_uring_register, fd, op, arg, nr));
}

template <typename T>
T LoadAcquire(const T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <typename T>
void StoreRelease(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

}  // namespace

struct Ring {
  uv_poll_t poll;                        // on efd
  napi_env env = nullptr;
  EnvData* data = nullptr;               // valid until the close callback
  napi_ref self = nullptr;               // the JS object; strong while inflight > 0
  napi_async_context async = nullptr;
  int fd = -1;
  int efd = -1;
  uint32_t flags = 0;                    // IORING_SETUP_* the kernel accepted
  bool defer_taskrun = false;            // async completions wait for io_uring_enter(GETEVENTS)

  uint8_t* ring_mem = nullptr;           // SQ and CQ rings (IORING_FEAT_SINGLE_MMAP)
  size_t ring_len = 0;
  io_uring_sqe* sqes = nullptr;
  size_t sqes_len = 0;
  uint32_t* sq_head = nullptr;
  uint32_t* sq_tail = nullptr;
  uint32_t* sq_flags = nullptr;
  uint32_t sq_mask = 0;
  uint32_t sq_entries = 0;
  uint32_t* cq_head = nullptr;
  uint32_t* cq_tail = nullptr;
  uint32_t cq_mask = 0;
  io_uring_cqe* cqes = nullptr;

  uint32_t tail = 0;                     // our SQ tail; published to the kernel by Submit
  uint32_t unsubmitted = 0;
  uint32_t slots = 0;                    // = sq_entries <= cq_entries / 2: neither ring can overflow
  uint32_t inflight = 0;                 // queued or submitted
  std::vector<uint8_t> busy;             // per slot
  std::vector<std::vector<iovec>> iovs;  // per slot, reused
  std::vector<std::pair<uint32_t, int32_t>> failed;  // made-up completions for SQEs the kernel never took
  int32_t* completions = nullptr;        // 2 * slots: (slot, res) pairs, inside `store`
  std::shared_ptr<v8::BackingStore> store;

  bool closing = false;
  bool handle_closed = false;
  bool js_alive = true;

  ~Ring() {
    if (sqes != nullptr) munmap(sqes, sqes_len);
    if (ring_mem != nullptr) munmap(ring_mem, ring_len);
    if (fd >= 0) close(fd);
    if (efd >= 0) close(efd);
  }
};

namespace {

// ---------------------------------------------------------------------------------------------
// Set-up

// The flag sets tried in order (EINVAL: the kernel lacks one of them). DEFER_TASKRUN keeps the kernel
// from interrupting the thread to post completions: they wait until we ask (GETEVENTS), and the
// eventfd says when to ask. SUBMIT_ALL keeps one bad SQE (a bad fd) from stopping the rest of a batch.
constexpr uint32_t kFlagSets[] = {
    IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
        IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_CLAMP,
};

constexpr uint8_t kNeededOps[] = {IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_FSYNC, IORING_OP_FALLOCATE};

// Fills `r`'s ring. On failure returns the errno and names the syscall that failed.
int SetupRing(Ring* r, uint32_t entries, const char** syscall_name) {
  io_uring_params p;
  int fd = -1;
  for (uint32_t flags : kFlagSets) {
    memset(&p, 0, sizeof p);
    p.flags = flags;
    fd = SysSetup(entries, &p);
    if (fd >= 0 || errno != EINVAL) break;
  }
  *syscall_name = "io_uring_setup";
  if (fd < 0) return errno;
  r->fd = fd;
  r->flags = p.flags;
  r->defer_taskrun = (p.flags & IORING_SETUP_DEFER_TASKRUN) != 0;

  // Kernels before 5.5 (no NODROP / SUBMIT_STABLE) are not worth a second code path: use threads there.
  constexpr uint32_t kNeeded = IORING_FEAT_SINGLE_MMAP | IORING_FEAT_NODROP | IORING_FEAT_SUBMIT_STABLE;
  if ((p.features & kNeeded) != kNeeded) return ENOSYS;

  size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
  size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
  r->ring_len = sq_len > cq_len ? sq_len : cq_len;
  *syscall_name = "mmap";
  void* m = mmap(nullptr, r->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
  if (m == MAP_FAILED) return errno;
  r->ring_mem = static_cast<uint8_t*>(m);
  r->sqes_len = p.sq_entries * sizeof(io_uring_sqe);
  m = mmap(nullptr, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
  if (m == MAP_FAILED) return errno;
  r->sqes = static_cast<io_uring_sqe*>(m);

  uint8_t* b = r->ring_mem;
  r->sq_head = reinterpret_cast<uint32_t*>(b + p.sq_off.head);
  r->sq_tail = reinterpret_cast<uint32_t*>(b + p.sq_off.tail);
  r->sq_flags = reinterpret_cast<uint32_t*>(b + p.sq_off.flags);
  r->sq_mask = *reinterpret_cast<uint32_t*>(b + p.sq_off.ring_mask);
  r->sq_entries = p.sq_entries;
  r->cq_head = reinterpret_cast<uint32_t*>(b + p.cq_off.head);
  r->cq_tail = reinterpret_cast<uint32_t*>(b + p.cq_off.tail);
  r->cq_mask = *reinterpret_cast<uint32_t*>(b + p.cq_off.ring_mask);
  r->cqes = reinterpret_cast<io_uring_cqe*>(b + p.cq_off.cqes);
  // SQE i always sits in array slot i: the indirection array is filled once.
  uint32_t* array = reinterpret_cast<uint32_t*>(b + p.sq_off.array);
  for (uint32_t i = 0; i < p.sq_entries; i++) array[i] = i;
  r->tail = *r->sq_tail;

  // Every opcode we use must exist (IORING_REGISTER_PROBE itself is 5.6).
  *syscall_name = "io_uring_register";
  constexpr uint32_t kProbeOps = 256;
  std::vector<uint8_t> probe_mem(sizeof(io_uring_probe) + kProbeOps * sizeof(io_uring_probe_op), 0);
  io_uring_probe* probe = reinterpret_cast<io_uring_probe*>(probe_mem.data());
  if (SysRegister(fd, IORING_REGISTER_PROBE, probe, kProbeOps) < 0) return errno == EINVAL ? ENOSYS : errno;
  for (uint8_t op : kNeededOps) {
    if (op > probe->last_op || !(probe->ops[op].flags & IO_URING_OP_SUPPORTED)) return ENOSYS;
  }

  *syscall_name = "eventfd";
  r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (r->efd < 0) return errno;
  *syscall_name = "io_uring_register";
  if (SysRegister(fd, IORING_REGISTER_EVENTFD, &r->efd, 1) < 0) return errno;

  // Slots never outnumber SQ entries, and the CQ (twice as large) always has room for all of them.
  r->slots = p.sq_entries;
  r->busy.assign(r->slots, 0);
  r->iovs.resize(r->slots);
  r->failed.reserve(r->slots);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Submission and completion

// While anything is in flight the JS object (with the callback and the views it keeps) must not be
// collected, and the loop must stay alive for the completion.
void Hold(Ring* r, bool on) {
  if (on) {
    if (r->self != nullptr) napi_reference_ref(r->env, r->self, nullptr);
    uv_ref(reinterpret_cast<uv_handle_t*>(&r->poll));
  } else {
    if (r->self != nullptr) napi_reference_unref(r->env, r->self, nullptr);
    uv_unref(reinterpret_cast<uv_handle_t*>(&r->poll));
  }
}

// Takes back every SQE the kernel has not consumed, marking it failed with `err` (0: silently).
void Retract(Ring* r, int err) {
  uint32_t head = LoadAcquire(r->sq_head);
  for (uint32_t i = head; i != r->tail; i++) {
    uint32_t slot = static_cast<uint32_t>(r->sqes[i & r->sq_mask].user_data);
    if (err != 0) {
      r->failed.emplace_back(slot, -err);
    } else if (slot < r->slots && r->busy[slot]) {
      r->busy[slot] = 0;
      if (--r->inflight == 0) Hold(r, false);
    }
  }
  r->tail = head;
  StoreRelease(r->sq_tail, head);
  r->unsubmitted = 0;
}

// Hands the queued SQEs to the kernel. If it will not take them (EAGAIN: out of memory), they complete
// with that error rather than vanish.
void Submit(Ring* r) {
  if (r->unsubmitted == 0) return;
  StoreRelease(r->sq_tail, r->tail);
  while (r->unsubmitted > 0) {
    int n = SysEnter(r->fd, r->unsubmitted, 0, 0);
    if (n > 0) {
      r->unsubmitted -= static_cast<uint32_t>(n) < r->unsubmitted ? static_cast<uint32_t>(n) : r->unsubmitted;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    Retract(r, n < 0 ? errno : EAGAIN);
  }
}

bool CqReady(const Ring* r) { return LoadAcquire(r->cq_tail) != *r->cq_head; }

bool TaskWorkPending(const Ring* r) {
  if (!r->defer_taskrun) return false;  // the kernel runs it on its own
  return (r->flags & IORING_SETUP_TASKRUN_FLAG) == 0 || (LoadAcquire(r->sq_flags) & IORING_SQ_TASKRUN) != 0;
}

// Clears the eventfd, then posts completions waiting as task work. In this order, anything that
// completes afterwards signals the eventfd again: no wake-up is lost.
//
// One GETEVENTS runs a bounded batch of task work (20 items on 6.13+) and leaves the rest with
// IORING_SQ_TASKRUN set, without signalling the eventfd for it (the CQEs a round posts usually do, but
// a round may post none). So keep going while the flag says so, which also saves a loop turn per 20
// completions, and after a bounded number of rounds signal our own eventfd to come back on the next
// turn rather than hold the thread here.
void PrepareReap(Ring* r) {
  uint64_t value;
  ssize_t n;
  do {
    n = read(r->efd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  // Enough rounds for every slot's completion at 20 per round; more means new work keeps arriving.
  uint32_t rounds = r->slots / 16 + 4;
  while (TaskWorkPending(r)) {
    if (rounds-- == 0) {
      value = 1;
      while (write(r->efd, &value, sizeof value) < 0 && errno == EINTR) {
      }
      return;
    }
    if (SysEnter(r->fd, 0, 0, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR) return;
    // Without TASKRUN_FLAG there is no telling whether work is left: one round it is.
    if ((r->flags & IORING_SETUP_TASKRUN_FLAG) == 0) return;
  }
}

void Deliver(Ring* r, uint32_t slot, int32_t res, uint32_t* n) {
  if (slot >= r->slots || !r->busy[slot]) return;  // not one of ours: cannot happen, never trust it
  r->busy[slot] = 0;
  r->completions[2 * *n] = static_cast<int32_t>(slot);
  r->completions[2 * *n + 1] = res;
  ++*n;
  if (--r->inflight == 0) Hold(r, false);
}

// Moves every available completion into the completions buffer; returns how many. At most `slots`
// (one per busy slot), which is the buffer's size.
uint32_t Reap(Ring* r) {
  uint32_t n = 0;
  for (const auto& f : r->failed) Deliver(r, f.first, f.second, &n);
  r->failed.clear();
  uint32_t head = *r->cq_head;
  uint32_t tail = LoadAcquire(r->cq_tail);
  for (; head != tail; head++) {
    const io_uring_cqe& c = r->cqes[head & r->cq_mask];
    Deliver(r, static_cast<uint32_t>(c.user_data), c.res, &n);
  }
  StoreRelease(r->cq_head, head);
  return n;
}

// Blocks until nothing is in flight; completions are dropped (env teardown: there is no JS to call).
void WaitIdle(Ring* r) {
  Retract(r, 0);
  r->failed.clear();
  if (r->inflight == 0) return;
  // Cancel what can be (a read of a pipe might never end on its own; file I/O under way runs to its end).
  // The SQ is empty after Retract, so there is room.
  io_uring_sqe* sqe = &r->sqes[r->tail & r->sq_mask];
  memset(sqe, 0, sizeof *sqe);
  sqe->opcode = IORING_OP_ASYNC_CANCEL;
  sqe->fd = -1;
  sqe->cancel_flags = IORING_ASYNC_CANCEL_ANY;  // 5.19; older kernels answer EINVAL and we just wait
  sqe->user_data = kCancelTag;
  r->tail++;
  r->unsubmitted++;
  Submit(r);
  r->failed.clear();
  while (r->inflight > 0) {
    Reap(r);
    if (r->inflight == 0) break;
    if (SysEnter(r->fd, 0, 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR && errno != EAGAIN &&
        errno != EBUSY)
      break;  // the ring is broken; closing it makes the kernel cancel and reap what is left
  }
  Reap(r);
}

// ---------------------------------------------------------------------------------------------
// Life cycle (mirrors the fd watchers': the Ring goes when both the JS object and the uv handle are gone)

void OnRingClosed(uv_handle_t* h) {
  Ring* r = static_cast<Ring*>(h->data);
  EnvData* d = r->data;
  r->data = nullptr;
  r->handle_closed = true;
  if (r->efd >= 0) close(r->efd);  // only now: libuv may not see a closed fd under a live handle
  r->efd = -1;
  EnvHandleClosed(d);
  if (!r->js_alive) delete r;
}

void CloseRing(Ring* r) {
  if (r->closing) return;
  r->closing = true;
  if (r->async != nullptr) napi_async_destroy(r->env, r->async);
  r->async = nullptr;
  if (r->self != nullptr) napi_delete_reference(r->env, r->self);
  r->self = nullptr;
  // Closing the ring fd with nothing in flight releases the kernel side at once.
  if (r->sqes != nullptr) munmap(r->sqes, r->sqes_len);
  if (r->ring_mem != nullptr) munmap(r->ring_mem, r->ring_len);
  r->sqes = nullptr;
  r->ring_mem = nullptr;
  if (r->fd >= 0) close(r->fd);
  r->fd = -1;
  r->data->rings.erase(r);
  r->data->closing++;
  uv_close(reinterpret_cast<uv_handle_t*>(&r->poll), OnRingClosed);
}

void FinalizeRing(napi_env, void* data, void*) {
  Ring* r = static_cast<Ring*>(data);
  r->js_alive = false;
  // Collected means nothing was in flight (the object is held strongly meanwhile).
  CloseRing(r);
  if (r->handle_closed) delete r;
}

void OnRingReadable(uv_poll_t* h, int, int) {
  Ring* r = static_cast<Ring*>(h->data);
  if (r->closing || r->self == nullptr) return;
  napi_env env = r->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  // Take the object before reaping: the last completion drops the strong reference.
  napi_value self = nullptr, key, cb;
  napi_get_reference_value(env, r->self, &self);
  PrepareReap(r);
  uint32_t n = Reap(r);
  if (n > 0 && self != nullptr && napi_get_reference_value(env, r->data->cb_key, &key) == napi_ok &&
      napi_get_property(env, self, key, &cb) == napi_ok) {
    napi_value argv[1], result;
    napi_create_uint32(env, n, &argv[0]);
    // As for any Node I/O callback: microtasks run afterwards, a throw is an uncaught exception.
    napi_status st = napi_make_callback(env, r->async, self, cb, 1, argv, &result);
    bool pending = false;
    if (st != napi_ok && napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value exc;
      if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) napi_fatal_exception(env, exc);
    }
  }
  napi_close_handle_scope(env, scope);
}

// ---------------------------------------------------------------------------------------------
// JS methods

Ring* UnwrapRing(napi_env env, napi_callback_info info, napi_value* argv, size_t want) {
  size_t argc = want;
  napi_value self;
  if (napi_get_cb_info(env, info, &argc, argv, &self, nullptr) != napi_ok) return nullptr;
  void* ptr = nullptr;
  if (napi_unwrap(env, self, &ptr) != napi_ok || ptr == nullptr) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) ThrowType(env, "Illegal invocation: not an IoUring");
    return nullptr;
  }
  return static_cast<Ring*>(ptr);
}

// Checks that `slot_v` names a free slot of an open ring; false after throwing.
bool FreeSlot(napi_env env, Ring* r, napi_value slot_v, const char* syscall_name, uint32_t* slot_out) {
  uint64_t slot;
  if (!ArgUint(env, slot_v, "slot", 4294967295.0, &slot)) return false;
  if (r->closing) {
    ThrowErrno(env, syscall_name, EBADF, nullptr, "the ring is closed");
    return false;
  }
  if (slot >= r->slots) {
    ThrowRange(env, "The \"slot\" argument must be below " + std::to_string(r->slots));
    return false;
  }
  if (r->busy[slot]) {
    ThrowErrno(env, syscall_name, EBUSY, nullptr, "slot in use");
    return false;
  }
  *slot_out = static_cast<uint32_t>(slot);
  return true;
}

// The next SQE, zeroed, for a free slot.
io_uring_sqe* NextSqe(Ring* r, uint32_t slot) {
  // Cannot happen (one SQE per busy slot, slots == SQ entries); submitting makes room if it ever did.
  if (r->tail - LoadAcquire(r->sq_head) >= r->sq_entries) Submit(r);
  io_uring_sqe* sqe = &r->sqes[r->tail & r->sq_mask];
  memset(sqe, 0, sizeof *sqe);
  sqe->user_data = slot;
  return sqe;
}

void Commit(Ring* r, uint32_t slot) {
  r->busy[slot] = 1;
  r->tail++;
  r->unsubmitted++;
  if (r->inflight++ == 0) Hold(r, true);
}

// readv/writev(slot, fd, buffers, position, async?): buffers is one view or an array of views; with
// `async` the SQE is IOSQE_ASYNC (straight to io-wq, where it may get a worker of its own).
napi_value QueueRw(napi_env env, napi_callback_info info, uint8_t opcode, const char* syscall_name) {
  napi_value argv[5];
  Ring* r = UnwrapRing(env, info, argv, 5);
  if (r == nullptr) return nullptr;
  int32_t fd;
  uint64_t position;
  bool async = false;
  napi_valuetype async_type;
  if (!ArgInt32(env, argv[1], "fd", &fd) || !ArgUint(env, argv[3], "position", kMaxSafeInteger, &position) ||
      napi_typeof(env, argv[4], &async_type) != napi_ok ||
      (async_type != napi_undefined && !ArgBool(env, argv[4], "async", &async)))
    return nullptr;
  uint32_t slot;
  if (!FreeSlot(env, r, argv[0], syscall_name, &slot)) return nullptr;
  // The slot's iovecs, reused: they stay untouched until its completion.
  std::vector<iovec>& iov = r->iovs[slot];
  iov.clear();
  uint8_t* data;
  size_t len;
  if (ViewBytes(env, argv[2], &data, &len)) {
    if (len > 0) iov.push_back({data, len});
  } else {
    bool is_array = false;
    napi_is_array(env, argv[2], &is_array);
    if (!is_array) return ThrowType(env, "The \"buffers\" argument must be a Uint8Array or an array of them");
    uint32_t count = 0;
    NAPI_OK(napi_get_array_length(env, argv[2], &count));
    // Empty views are left out, so a transfer of 0 bytes really means end of file.
    for (uint32_t i = 0; i < count && iov.size() < kMaxIov; i++) {
      napi_value el;
      NAPI_OK(napi_get_element(env, argv[2], i, &el));
      if (!ViewBytes(env, el, &data, &len))
        return ThrowType(env, "The \"buffers\" argument must be a Uint8Array or an array of them");
      if (len > 0) iov.push_back({data, len});
    }
  }
  io_uring_sqe* sqe = NextSqe(r, slot);
  sqe->opcode = opcode;
  sqe->fd = fd;
  sqe->off = position;
  sqe->addr = reinterpret_cast<uint64_t>(iov.data());
  sqe->len = static_cast<uint32_t>(iov.size());
  if (async) sqe->flags |= IOSQE_ASYNC;
  Commit(r, slot);
  return Undefined(env);
}

napi_value RingReadv(napi_env env, napi_callback_info info) { return QueueRw(env, info, IORING_OP_READV, "preadv"); }
napi_value RingWritev(napi_env env, napi_callback_info info) { return QueueRw(env, info, IORING_OP_WRITEV, "pwritev"); }

// fsync(slot, fd, dataOnly)
napi_value RingFsync(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  Ring* r = UnwrapRing(env, info, argv, 3);
  int32_t fd;
  bool data_only;
  if (r == nullptr || !ArgInt32(env, argv[1], "fd", &fd) || !ArgBool(env, argv[2], "dataOnly", &data_only))
    return nullptr;
  uint32_t slot;
  if (!FreeSlot(env, r, argv[0], data_only ? "fdatasync" : "fsync", &slot)) return nullptr;
  io_uring_sqe* sqe = NextSqe(r, slot);
  sqe->opcode = IORING_OP_FSYNC;
  sqe->fd = fd;
  sqe->fsync_flags = data_only ? IORING_FSYNC_DATASYNC : 0;
  Commit(r, slot);
  return Undefined(env);
}

// fallocate(slot, fd, mode, offset, length)
napi_value RingFallocate(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  Ring* r = UnwrapRing(env, info, argv, 5);
  int32_t fd, mode;
  uint64_t offset, length;
  if (r == nullptr || !ArgInt32(env, argv[1], "fd", &fd) || !ArgInt32(env, argv[2], "mode", &mode) ||
      !ArgUint(env, argv[3], "offset", kMaxSafeInteger, &offset) ||
      !ArgUint(env, argv[4], "length", kMaxSafeInteger, &length))
    return nullptr;
  uint32_t slot;
  if (!FreeSlot(env, r, argv[0], "fallocate", &slot)) return nullptr;
  io_uring_sqe* sqe = NextSqe(r, slot);
  // IORING_OP_FALLOCATE's layout: length in addr, mode in len.
  sqe->opcode = IORING_OP_FALLOCATE;
  sqe->fd = fd;
  sqe->off = offset;
  sqe->addr = length;
  sqe->len = static_cast<uint32_t>(mode);
  Commit(r, slot);
  return Undefined(env);
}

// submit(reap): submits what is queued; with reap, also collects what has completed already. Returns
// the number of (slot, res) pairs now in the completions buffer (they must be read before the next
// submit or callback).
napi_value RingSubmit(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  Ring* r = UnwrapRing(env, info, argv, 1);
  bool reap;
  if (r == nullptr || !ArgBool(env, argv[0], "reap", &reap)) return nullptr;
  if (r->closing) return ThrowErrno(env, "io_uring_enter", EBADF, nullptr, "the ring is closed");
  Submit(r);
  bool ready = reap && (CqReady(r) || TaskWorkPending(r));
  if (ready) PrepareReap(r);
  if (!ready && r->failed.empty()) return Int(env, 0);
  return Int(env, Reap(r));
}

napi_value RingClose(napi_env env, napi_callback_info info) {
  Ring* r = UnwrapRing(env, info, nullptr, 0);
  if (r == nullptr) return nullptr;
  if (r->closing) return Undefined(env);
  if (r->inflight > 0)
    return ThrowErrno(env, "close", EBUSY, nullptr, "operations are still in flight");
  CloseRing(r);
  return Undefined(env);
}

napi_value RingConstructor(napi_env env, napi_callback_info info) {
  napi_value self;
  NAPI_OK(napi_get_cb_info(env, info, nullptr, nullptr, &self, nullptr));
  return self;  // unusable until ioUring() wraps it
}

// ioUring(entries, callback): a ring with `entries` slots (rounded up to a power of two, at most 32768).
napi_value CreateRing(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  void* raw;
  uint64_t entries;
  if (!Args(env, info, argv, nullptr, &raw) || !ArgUint(env, argv[0], "entries", kMaxEntries, &entries) ||
      !ArgFunction(env, argv[1], "callback"))
    return nullptr;
  EnvData* d = static_cast<EnvData*>(raw);

  std::unique_ptr<Ring> ring(new Ring());
  Ring* r = ring.get();
  const char* failed_call = "io_uring_setup";
  int err = SetupRing(r, static_cast<uint32_t>(entries), &failed_call);
  if (err != 0) return ThrowErrno(env, failed_call, err);

  // The completions buffer: a SharedArrayBuffer cannot be detached, so its memory stays where the ring
  // writes it, and the ring shares ownership, so it outlives whichever side lets go first. V8 allocates
  // it: a deleter of ours could outlive this addon (a worker's isolate is torn down after Node unloads
  // the addons only it had loaded).
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  size_t ints = 2 * static_cast<size_t>(r->slots);
  r->store = v8::SharedArrayBuffer::NewBackingStore(isolate, ints * sizeof(int32_t));
  r->completions = static_cast<int32_t*>(r->store->Data());
  v8::Local<v8::SharedArrayBuffer> sab = v8::SharedArrayBuffer::New(isolate, r->store);
  v8::Local<v8::Int32Array> view = v8::Int32Array::New(sab, 0, ints);

  napi_value ctor, self, key, name, slots_v, flags_v;
  auto fail = [&]() -> napi_value {
    EnsureThrown(env);
    return nullptr;
  };
  if (napi_get_reference_value(env, d->ring_ctor, &ctor) != napi_ok ||
      napi_new_instance(env, ctor, 0, nullptr, &self) != napi_ok ||
      napi_get_reference_value(env, d->cb_key, &key) != napi_ok ||
      napi_create_uint32(env, r->slots, &slots_v) != napi_ok ||
      napi_create_uint32(env, r->flags, &flags_v) != napi_ok ||
      napi_create_string_utf8(env, "vhost:IoUring", NAPI_AUTO_LENGTH, &name) != napi_ok)
    return fail();
  napi_property_descriptor props[] = {
      {nullptr, key, nullptr, nullptr, nullptr, argv[1], napi_default, nullptr},
      {"completions", nullptr, nullptr, nullptr, nullptr, FromV8(view), napi_enumerable, nullptr},
      {"slots", nullptr, nullptr, nullptr, nullptr, slots_v, napi_enumerable, nullptr},
      {"setupFlags", nullptr, nullptr, nullptr, nullptr, flags_v, napi_enumerable, nullptr},
  };
  if (napi_define_properties(env, self, 4, props) != napi_ok) return fail();

  uv_loop_t* loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return fail();
  r->env = env;
  r->data = d;
  r->poll.data = r;
  int rc = uv_poll_init(loop, &r->poll, r->efd);
  if (rc < 0) return ThrowErrno(env, "uv_poll_init", -rc);
  // From here the handle belongs to the loop: only uv_close may end it.
  d->rings.insert(r);
  ring.release();
  rc = uv_poll_start(&r->poll, UV_READABLE, OnRingReadable);
  if (rc < 0) {
    r->js_alive = false;
    CloseRing(r);
    return ThrowErrno(env, "uv_poll_start", -rc);
  }
  // An idle ring does not keep the process alive; Hold() refs the handle while anything is in flight.
  uv_unref(reinterpret_cast<uv_handle_t*>(&r->poll));
  if (napi_wrap(env, self, r, FinalizeRing, nullptr, nullptr) != napi_ok) {
    r->js_alive = false;
    CloseRing(r);
    EnsureThrown(env);
    return nullptr;
  }
  // From here the finalizer owns the cleanup if anything below fails.
  NAPI_OK(napi_create_reference(env, self, 0, &r->self));
  NAPI_OK(napi_async_init(env, self, name, &r->async));
  return self;
}

}  // namespace

bool UringInit(napi_env env, EnvData* d, napi_value exports) {
  napi_property_descriptor methods[] = {
      {"readv", nullptr, RingReadv, nullptr, nullptr, nullptr, napi_default_method, d},
      {"writev", nullptr, RingWritev, nullptr, nullptr, nullptr, napi_default_method, d},
      {"fsync", nullptr, RingFsync, nullptr, nullptr, nullptr, napi_default_method, d},
      {"fallocate", nullptr, RingFallocate, nullptr, nullptr, nullptr, napi_default_method, d},
      {"submit", nullptr, RingSubmit, nullptr, nullptr, nullptr, napi_default_method, d},
      {"close", nullptr, RingClose, nullptr, nullptr, nullptr, napi_default_method, d},
  };
  napi_value ctor;
  napi_property_descriptor fn = {"ioUring", nullptr, CreateRing, nullptr, nullptr, nullptr, napi_enumerable, d};
  return napi_define_class(env, "IoUring", NAPI_AUTO_LENGTH, RingConstructor, d, sizeof methods / sizeof methods[0],
                           methods, &ctor) == napi_ok &&
         napi_create_reference(env, ctor, 1, &d->ring_ctor) == napi_ok &&
         napi_define_properties(env, exports, 1, &fn) == napi_ok;
}

// Env teardown (worker exit): wait for what is in flight, so no completion writes into memory that is
// about to be freed, then close.
void UringTeardown(EnvData* d) {
  std::vector<Ring*> open(d->rings.begin(), d->rings.end());
  for (Ring* r : open) {
    if (r->inflight > 0) WaitIdle(r);
    CloseRing(r);
  }
}

}  // namespace vhost
