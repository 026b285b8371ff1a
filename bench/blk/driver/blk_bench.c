/*
 * blk-bench: a minimal virtio-blk driver over vhost-user that keeps a fixed number of reads in flight per queue
 * and busy-polls the used rings, so that the backend, not the driver, is what gets measured.
 *
 *   blk-bench --socket PATH [options]      drive a vhost-user-blk backend
 *   blk-bench --ceiling [options]          drive an in-process device thread that completes requests at once
 *   blk-bench --make-pattern FILE --size N write an image whose 4 KiB blocks carry the stamp --verify checks
 *
 * Prints one JSON object on stdout. Exit status 0 on a clean run, 1 on bad usage or a failed setup, 2 when reads
 * failed or data did not verify, 3 when the device broke the ring protocol.
 *
 * Written from the vhost-user specification (QEMU docs/interop/vhost-user.rst) and virtio 1.2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"
#include "vhost_user.h"

/* Virtio feature bits we may accept. */
#define F_BLK_SIZE_MAX 1
#define F_BLK_SEG_MAX 2
#define F_BLK_RO 5
#define F_BLK_BLK_SIZE 6
#define F_BLK_MQ 12
#define F_EVENT_IDX 29
#define F_VERSION_1 32

#define BLK_T_IN 0
#define BLK_S_OK 0
#define SECTOR 512u
#define STAMP_BLOCK 4096u
#define STAMP_MAGIC 0x6b6c622d75687621ull /* "!vhu-blk" */
#define FAR_AWAY 0x8000u                  /* an event index the other side can never cross */
#define MAX_QUEUES 64
#define DRAIN_SECONDS 5.0

/* Per-request header and status, preallocated per slot (device-readable header, device-writable status). */
struct slot_meta {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
  uint8_t status;
  uint8_t pad[15];
};

struct queue {
  unsigned index;
  struct split_ring ring;
  uint16_t mask;
  int kickfd, callfd;
  /* driver state */
  uint16_t avail_idx; /* next free avail slot (shadow) */
  uint16_t published; /* avail idx last made visible */
  uint16_t last_used;
  unsigned dps;    /* descriptors per request */
  unsigned nslots; /* = queue depth */
  unsigned inflight;
  struct slot_meta *meta;
  uint8_t *data;
  uint64_t *slot_block; /* block each slot is reading, for --verify */
  uint8_t *busy;
  uint64_t seq_next, rng;
  uint64_t completed, errors, verify_failures, len_mismatches, kicks;
  /* ring offsets within guest RAM */
  size_t desc_off, avail_off, used_off, meta_off, data_off;
  /* in-process device state (--ceiling) */
  uint16_t dev_last_avail, dev_used_idx;
};

struct driver_thread {
  pthread_t tid;
  unsigned nq;
  struct queue *queues[MAX_QUEUES];
  int cpu;
  int drained;
  uint64_t progress __attribute__((aligned(64))); /* completions so far, read by the main thread */
  char pad[56];
};

static struct {
  const char *socket_path;
  int ceiling;
  unsigned queues, threads, qd, queue_size;
  uint64_t bs, seg, span, size;
  int seq;
  double seconds, warmup;
  long backend_pid;
  int event_idx_allowed;
  int verify;
  uint64_t seed;
  int pin_driver, pin_device;
  const char *make_pattern;
} opt = {
    .queues = 1, .qd = 32, .bs = 4096, .seconds = 3.0, .warmup = 0.5, .backend_pid = -1,
    .event_idx_allowed = 1, .seed = 1, .pin_driver = -1, .pin_device = -1,
};

static uint8_t *ram;
static size_t ram_size;
static int ram_fd = -1;
static int event_idx;
static uint64_t nblocks, sectors_per_io;
static int stop_flag, device_stop_flag;
static struct queue queues[MAX_QUEUES];
static struct driver_thread *threads;

static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("blk-bench: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(code);
}

static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double thread_cpu_sec(pthread_t t) {
  clockid_t cid;
  struct timespec ts;
  if (pthread_getcpuclockid(t, &cid) != 0 || clock_gettime(cid, &ts) != 0) return 0;
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_sec(double s) {
  struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
  while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
  }
}

/* utime + stime of a whole process (all threads), in clock ticks, from /proc/<pid>/stat; -1 if unreadable. */
static long long proc_cpu_ticks(long pid) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* comm may contain spaces and parentheses */
  if (!p) return -1;
  /* after ") ": field 3 (state) ... utime is field 14, stime 15 */
  unsigned long long utime = 0, stime = 0;
  int field = 2;
  for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
    field++;
    if (field == 14) utime = strtoull(tok, NULL, 10);
    if (field == 15) {
      stime = strtoull(tok, NULL, 10);
      return (long long)(utime + stime);
    }
  }
  return -1;
}

/* Busy-poll, but give the CPU away after ~20 µs of nothing: on a machine with more runnable threads than
 * cores, a spinning pair that never yields would wait a whole scheduler tick for its partner. */
#define IDLE_SPINS_BEFORE_YIELD 512u
static inline void idle_wait(unsigned *idle) {
  if (++*idle < IDLE_SPINS_BEFORE_YIELD) {
    cpu_relax();
  } else {
    *idle = 0;
    sched_yield();
  }
}

/* Busy ticks (user, nice, system, irq, softirq, steal) of all CPUs from /proc/stat; -1 if unreadable. */
static long long system_busy_ticks(void) {
  char buf[512];
  int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  unsigned long long v[8] = {0};
  if (sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) < 8)
    return -1;
  return (long long)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]); /* not idle (3) nor iowait (4) */
}

static double process_cpu_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void pin_self(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

/* ---- data pattern for --verify / --make-pattern -------------------------------------------------------------- */

static void stamp_block(uint8_t *buf, uint64_t block) {
  memcpy(buf, &block, 8);
  uint64_t magic = STAMP_MAGIC;
  memcpy(buf + 8, &magic, 8);
  for (unsigned i = 16; i < STAMP_BLOCK; i++) buf[i] = (uint8_t)(block * 131u + i);
}

static int stamp_ok(const uint8_t *buf, uint64_t block) {
  uint64_t got, magic;
  memcpy(&got, buf, 8);
  memcpy(&magic, buf + 8, 8);
  if (got != block || magic != STAMP_MAGIC) return 0;
  for (unsigned i = 16; i < STAMP_BLOCK; i++)
    if (buf[i] != (uint8_t)(block * 131u + i)) return 0;
  return 1;
}

static int make_pattern(const char *path, uint64_t size) {
  if (size == 0 || size % STAMP_BLOCK) die(1, "--make-pattern needs --size, a multiple of %u", STAMP_BLOCK);
  FILE *f = fopen(path, "wb");
  if (!f) die(1, "%s: %s", path, strerror(errno));
  uint8_t buf[STAMP_BLOCK];
  for (uint64_t b = 0; b < size / STAMP_BLOCK; b++) {
    stamp_block(buf, b);
    if (fwrite(buf, 1, sizeof buf, f) != sizeof buf) die(1, "%s: %s", path, strerror(errno));
  }
  if (fclose(f) != 0) die(1, "%s: %s", path, strerror(errno));
  printf("{\"pattern\":\"%s\",\"blocks\":%" PRIu64 "}\n", path, size / STAMP_BLOCK);
  return 0;
}

/* ---- driver side of the rings -------------------------------------------------------------------------------- */

static inline uint64_t next_rand(struct queue *q) {
  /* xorshift64* */
  uint64_t x = q->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  q->rng = x;
  return x * 0x2545F4914F6CDD1Dull;
}

static inline uint64_t next_block(struct queue *q) {
  if (opt.seq) {
    uint64_t b = q->seq_next;
    q->seq_next = b + 1 == nblocks ? 0 : b + 1;
    return b;
  }
  return next_rand(q) % nblocks;
}

/* Fill a slot's header and put its chain head in the avail ring (not yet visible: see publish). */
static inline void submit(struct queue *q, unsigned slot) {
  struct slot_meta *m = &q->meta[slot];
  uint64_t block = next_block(q);
  m->type = BLK_T_IN;
  m->reserved = 0;
  m->sector = block * sectors_per_io;
  m->status = 0xff;
  if (opt.verify) {
    q->slot_block[slot] = block;
    memset(q->data + (size_t)slot * opt.bs, 0xee, opt.bs); /* stale data must not pass the check */
  }
  q->ring.avail->ring[q->avail_idx & q->mask] = (uint16_t)(slot * q->dps);
  q->avail_idx++;
  q->busy[slot] = 1;
  q->inflight++;
}

/* Make new avail entries visible, then kick only if the device asked for it. */
static inline void publish(struct queue *q) {
  uint16_t new_idx = q->avail_idx, old = q->published;
  if (new_idx == old) return;
  store_release16(&q->ring.avail->idx, new_idx);
  q->published = new_idx;
  full_fence(); /* our idx store before the device's event/flags load */
  int kick;
  if (event_idx)
    kick = ring_need_event(load_relaxed16(ring_avail_event(&q->ring)), new_idx, old);
  else
    kick = !(load_relaxed16(&q->ring.used->flags) & VRING_USED_F_NO_NOTIFY);
  if (kick) {
    uint64_t one = 1;
    if (write(q->kickfd, &one, sizeof one) == sizeof one) q->kicks++;
  }
}

static void check_data(struct queue *q, unsigned slot) {
  const uint8_t *buf = q->data + (size_t)slot * opt.bs;
  uint64_t first = q->slot_block[slot] * (opt.bs / STAMP_BLOCK);
  for (uint64_t k = 0; k < opt.bs / STAMP_BLOCK; k++) {
    if (!stamp_ok(buf + k * STAMP_BLOCK, first + k)) {
      if (q->verify_failures < 5) {
        uint64_t got;
        memcpy(&got, buf + k * STAMP_BLOCK, 8);
        fprintf(stderr, "blk-bench: queue %u: 4 KiB block %" PRIu64 " does not verify (stamp reads %" PRIu64 ")\n",
                q->index, first + k, got);
      }
      q->verify_failures++;
      return;
    }
  }
}

/* Consume used entries; resubmit each freed slot unless draining. Returns how many completed. */
static inline unsigned reap(struct queue *q, int resubmit) {
  uint16_t used_idx = load_acquire16(&q->ring.used->idx);
  uint16_t pending = (uint16_t)(used_idx - q->last_used);
  if (!pending) return 0;
  if (pending > q->inflight)
    die(3, "queue %u: device published %u used entries with %u requests in flight", q->index, pending, q->inflight);
  for (; q->last_used != used_idx; q->last_used++) {
    struct vring_used_elem e = q->ring.used->ring[q->last_used & q->mask];
    unsigned slot = e.id / q->dps;
    if (e.id % q->dps || slot >= q->nslots || !q->busy[slot])
      die(3, "queue %u: device returned descriptor %u, which is not a request head in flight", q->index, e.id);
    q->busy[slot] = 0;
    q->inflight--;
    if (q->meta[slot].status != BLK_S_OK) q->errors++;
    else if (opt.verify) check_data(q, slot);
    if (e.len != opt.bs + 1) q->len_mismatches++;
    q->completed++;
    if (resubmit) submit(q, slot);
  }
  /* We poll: keep used_event out of the device's reach so it never needs to signal. */
  if (event_idx) store_relaxed16(ring_used_event(&q->ring), (uint16_t)(q->last_used + FAR_AWAY));
  return pending;
}

static void *driver_main(void *arg) {
  struct driver_thread *t = arg;
  pin_self(t->cpu);
  for (unsigned i = 0; i < t->nq; i++) {
    struct queue *q = t->queues[i];
    for (unsigned s = 0; s < q->nslots; s++) submit(q, s);
    publish(q);
  }
  uint64_t done = 0;
  unsigned idle = 0;
  while (!__atomic_load_n(&stop_flag, __ATOMIC_RELAXED)) {
    unsigned got = 0;
    for (unsigned i = 0; i < t->nq; i++) {
      struct queue *q = t->queues[i];
      unsigned n = reap(q, 1);
      if (n) {
        publish(q);
        got += n;
      }
    }
    if (got) {
      done += got;
      idle = 0;
      __atomic_store_n(&t->progress, done, __ATOMIC_RELAXED);
    } else {
      idle_wait(&idle);
    }
  }
  /* Drain: let every request in flight complete so the rings end consistent. */
  double deadline = now_sec() + DRAIN_SECONDS;
  for (unsigned spins = 0;; spins++) {
    unsigned left = 0;
    for (unsigned i = 0; i < t->nq; i++) {
      reap(t->queues[i], 0);
      left += t->queues[i]->inflight;
    }
    if (!left) {
      t->drained = 1;
      break;
    }
    if ((spins & 1023) == 0 && now_sec() > deadline) break;
    idle_wait(&idle);
  }
  return NULL;
}

/* ---- in-process device for --ceiling ------------------------------------------------------------------------- */

static inline void *gpa(uint64_t addr, uint64_t len) {
  if (addr > ram_size || len > ram_size - addr) return NULL;
  return ram + addr;
}

/* Completes every available chain at once: reads the header, writes an OK status, reports the writable length. */
static void *device_main(void *arg) {
  (void)arg;
  pin_self(opt.pin_device);
  volatile uint64_t sink = 0;
  unsigned idle_spins = 0;
  while (!__atomic_load_n(&device_stop_flag, __ATOMIC_RELAXED)) {
    int idle = 1;
    for (unsigned i = 0; i < opt.queues; i++) {
      struct queue *q = &queues[i];
      uint16_t avail_idx = load_acquire16(&q->ring.avail->idx);
      if (avail_idx == q->dev_last_avail) continue;
      idle = 0;
      for (; q->dev_last_avail != avail_idx; q->dev_last_avail++) {
        uint16_t head = q->ring.avail->ring[q->dev_last_avail & q->mask];
        struct vring_desc d = q->ring.desc[head & q->mask];
        const struct slot_meta *hdr = gpa(d.addr, sizeof *hdr);
        if (hdr) sink += hdr->type + hdr->sector;
        uint32_t len = 0;
        for (unsigned hops = 0; (d.flags & VRING_DESC_F_NEXT) && hops < q->ring.size; hops++) {
          d = q->ring.desc[d.next & q->mask];
          if (d.flags & VRING_DESC_F_WRITE) len += d.len;
        }
        uint8_t *status = gpa(d.addr, 1);
        if (status) *status = BLK_S_OK;
        q->ring.used->ring[q->dev_used_idx & q->mask] = (struct vring_used_elem){head, len};
        q->dev_used_idx++;
      }
      store_release16(&q->ring.used->idx, q->dev_used_idx);
      if (event_idx) store_relaxed16(ring_avail_event(&q->ring), (uint16_t)(q->dev_last_avail + FAR_AWAY));
    }
    if (idle) idle_wait(&idle_spins);
    else idle_spins = 0;
  }
  return NULL;
}

/* ---- setup --------------------------------------------------------------------------------------------------- */

static size_t align_up(size_t v, size_t a) { return (v + a - 1) & ~(a - 1); }

static unsigned descs_per_request(void) {
  uint64_t segs = (opt.bs + opt.seg - 1) / opt.seg;
  return (unsigned)(2 + segs);
}

/* Lay out rings, headers and data buffers of every queue in one memfd and prebuild the descriptor chains:
 * slot s of a queue always uses descriptors s*dps .. s*dps+dps-1, so only heads move through the rings. */
static void setup_memory(void) {
  unsigned dps = descs_per_request();
  unsigned qsize = opt.queue_size;
  if (!qsize) {
    qsize = 256;
    while (qsize < opt.qd * dps) qsize *= 2;
  }
  if (qsize & (qsize - 1) || qsize > 32768) die(1, "queue size %u is not a power of two up to 32768", qsize);
  if ((uint64_t)opt.qd * dps > qsize) die(1, "queue depth %u needs %u descriptors; queue size is %u", opt.qd, opt.qd * dps, qsize);
  size_t off = 0;
  for (unsigned i = 0; i < opt.queues; i++) {
    struct queue *q = &queues[i];
    /* Each ring part on its own pages: the driver-written avail ring and device-written used ring must not
     * share cache lines. */
    q->desc_off = off;
    off = align_up(off + ring_desc_bytes(qsize), 4096);
    q->avail_off = off;
    off = align_up(off + ring_avail_bytes(qsize), 4096);
    q->used_off = off;
    off = align_up(off + ring_used_bytes(qsize), 4096);
    q->meta_off = off;
    off = align_up(off + sizeof(struct slot_meta) * opt.qd, 4096);
    q->data_off = off;
    off = align_up(off + (size_t)opt.bs * opt.qd, 4096);
  }
  ram_size = align_up(off, 2u << 20);
  ram_fd = memfd_create("blk-bench-ram", MFD_CLOEXEC);
  if (ram_fd < 0) die(1, "memfd_create: %s", strerror(errno));
  if (ftruncate(ram_fd, (off_t)ram_size) < 0) die(1, "ftruncate: %s", strerror(errno));
  ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ram_fd, 0);
  if (ram == MAP_FAILED) die(1, "mmap %zu bytes: %s", ram_size, strerror(errno));

  for (unsigned i = 0; i < opt.queues; i++) {
    struct queue *q = &queues[i];
    q->index = i;
    q->ring.size = (uint16_t)qsize; /* 32768 fits; the ring code masks with size - 1 */
    q->mask = (uint16_t)(qsize - 1);
    q->ring.desc = (struct vring_desc *)(ram + q->desc_off);
    q->ring.avail = (struct vring_avail *)(ram + q->avail_off);
    q->ring.used = (struct vring_used *)(ram + q->used_off);
    q->dps = dps;
    q->nslots = opt.qd;
    q->meta = (struct slot_meta *)(ram + q->meta_off);
    q->data = ram + q->data_off;
    q->slot_block = calloc(opt.qd, sizeof *q->slot_block);
    q->busy = calloc(opt.qd, 1);
    q->rng = (opt.seed + 1) * 0x9E3779B97F4A7C15ull ^ (i + 1) * 0xD1B54A32D192ED03ull;
    if (!q->rng) q->rng = 1;
    q->seq_next = nblocks * i / opt.queues;
    /* Interrupts: EVENT_IDX -> used_event out of reach; otherwise NO_INTERRUPT. */
    q->ring.avail->flags = event_idx ? 0 : VRING_AVAIL_F_NO_INTERRUPT;
    *ring_used_event(&q->ring) = FAR_AWAY;
    for (unsigned s = 0; s < opt.qd; s++) {
      unsigned h = s * dps;
      uint64_t meta_gpa = q->meta_off + (uint64_t)s * sizeof(struct slot_meta);
      uint64_t data_gpa = q->data_off + (uint64_t)s * opt.bs;
      q->ring.desc[h] = (struct vring_desc){meta_gpa, 16, VRING_DESC_F_NEXT, (uint16_t)(h + 1)};
      uint64_t left = opt.bs;
      unsigned d = h + 1;
      for (; left; d++) {
        uint32_t len = (uint32_t)(left < opt.seg ? left : opt.seg);
        q->ring.desc[d] = (struct vring_desc){data_gpa, len, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, (uint16_t)(d + 1)};
        data_gpa += len;
        left -= len;
      }
      q->ring.desc[d] = (struct vring_desc){meta_gpa + offsetof(struct slot_meta, status), 1, VRING_DESC_F_WRITE, 0};
    }
    q->kickfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    q->callfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->kickfd < 0 || q->callfd < 0) die(1, "eventfd: %s", strerror(errno));
  }
}

struct negotiated {
  uint64_t features, protocol_features, capacity_bytes;
  unsigned max_queues, size_max, seg_max;
  int have_config;
};

static void check(int rc, const char *what) {
  if (rc < 0) die(1, "%s: %s", what, strerror(errno ? errno : EPROTO));
}

/* Feature negotiation, before the memory layout is known (it decides segmenting). */
static int negotiate(int sock, struct negotiated *n) {
  uint64_t offered;
  memset(n, 0, sizeof *n);
  n->max_queues = 1;
  check(vhu_get_u64(sock, VHU_GET_FEATURES, &offered), "GET_FEATURES");
  if (!(offered & (1ull << F_VERSION_1))) die(1, "backend does not offer VERSION_1 (features 0x%" PRIx64 ")", offered);
  if (offered & (1ull << VHU_F_PROTOCOL_FEATURES)) {
    uint64_t pf;
    check(vhu_get_u64(sock, VHU_GET_PROTOCOL_FEATURES, &pf), "GET_PROTOCOL_FEATURES");
    /* Only features whose messages we handle without REPLY_ACK. */
    uint64_t want = (1ull << VHU_PF_MQ) | (1ull << VHU_PF_CONFIG) | (1ull << VHU_PF_CONFIGURE_MEM_SLOTS) |
                    (1ull << VHU_PF_STATUS);
    n->protocol_features = pf & want;
    check(vhu_set_u64(sock, VHU_SET_PROTOCOL_FEATURES, n->protocol_features), "SET_PROTOCOL_FEATURES");
    if (n->protocol_features & (1ull << VHU_PF_MQ)) {
      uint64_t qn;
      check(vhu_get_u64(sock, VHU_GET_QUEUE_NUM, &qn), "GET_QUEUE_NUM");
      n->max_queues = qn > MAX_QUEUES ? MAX_QUEUES : (unsigned)qn;
    }
    if (n->protocol_features & (1ull << VHU_PF_CONFIG)) {
      uint8_t cfg[36];
      if (vhu_get_config(sock, cfg, sizeof cfg) == 0) {
        uint64_t cap;
        uint32_t smax, sgmax;
        memcpy(&cap, cfg, 8);
        memcpy(&smax, cfg + 8, 4);
        memcpy(&sgmax, cfg + 12, 4);
        n->capacity_bytes = cap * SECTOR;
        n->size_max = (offered & (1ull << F_BLK_SIZE_MAX)) ? smax : 0;
        n->seg_max = (offered & (1ull << F_BLK_SEG_MAX)) ? sgmax : 0;
        n->have_config = 1;
      }
    }
  }
  check(vhu_send(sock, VHU_SET_OWNER, NULL, 0, NULL, 0), "SET_OWNER");
  uint64_t want = (1ull << F_VERSION_1) | (1ull << VHU_F_PROTOCOL_FEATURES) | (1ull << F_BLK_SIZE_MAX) |
                  (1ull << F_BLK_SEG_MAX) | (1ull << F_BLK_BLK_SIZE) | (1ull << F_BLK_RO) | (1ull << F_BLK_MQ);
  if (opt.event_idx_allowed) want |= 1ull << F_EVENT_IDX;
  n->features = offered & want;
  if (opt.queues > 1 && !(n->features & (1ull << F_BLK_MQ)))
    die(1, "%u queues asked, but the backend does not offer VIRTIO_BLK_F_MQ", opt.queues);
  if (opt.queues > n->max_queues) die(1, "%u queues asked, the backend supports %u", opt.queues, n->max_queues);
  check(vhu_set_u64(sock, VHU_SET_FEATURES, n->features), "SET_FEATURES");
  return 0;
}

static void configure_rings(int sock, const struct negotiated *n) {
  struct vhu_region region = {0, ram_size, (uint64_t)(uintptr_t)ram, 0};
  if (n->protocol_features & (1ull << VHU_PF_CONFIGURE_MEM_SLOTS)) {
    uint64_t slots;
    check(vhu_get_u64(sock, VHU_GET_MAX_MEM_SLOTS, &slots), "GET_MAX_MEM_SLOTS");
    if (slots < 1) die(1, "backend offers no memory slots");
    check(vhu_add_mem_reg(sock, &region, ram_fd), "ADD_MEM_REG");
  } else {
    check(vhu_set_mem_table(sock, &region, ram_fd), "SET_MEM_TABLE");
  }
  for (unsigned i = 0; i < opt.queues; i++) {
    struct queue *q = &queues[i];
    uint64_t base = (uint64_t)(uintptr_t)ram;
    check(vhu_set_state(sock, VHU_SET_VRING_NUM, i, q->ring.size), "SET_VRING_NUM");
    check(vhu_set_state(sock, VHU_SET_VRING_BASE, i, 0), "SET_VRING_BASE");
    check(vhu_set_vring_addr(sock, i, base + q->desc_off, base + q->used_off, base + q->avail_off), "SET_VRING_ADDR");
    check(vhu_set_vring_fd(sock, VHU_SET_VRING_CALL, i, q->callfd), "SET_VRING_CALL");
    check(vhu_set_vring_fd(sock, VHU_SET_VRING_KICK, i, q->kickfd), "SET_VRING_KICK");
    if (n->features & (1ull << VHU_F_PROTOCOL_FEATURES)) check(vhu_set_state(sock, VHU_SET_VRING_ENABLE, i, 1), "SET_VRING_ENABLE");
  }
  if (n->protocol_features & (1ull << VHU_PF_STATUS)) check(vhu_set_u64(sock, VHU_SET_STATUS, 0x0f), "SET_STATUS");
  /* A request with a reply as a barrier: everything above was read, and the backend is still there. */
  uint64_t again;
  check(vhu_get_u64(sock, VHU_GET_FEATURES, &again), "GET_FEATURES after setup");
}

/* ---- command line -------------------------------------------------------------------------------------------- */

static uint64_t parse_size(const char *s, const char *name) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  uint64_t mult = 1;
  if (*end == 'K' || *end == 'k') mult = 1ull << 10, end++;
  else if (*end == 'M' || *end == 'm') mult = 1ull << 20, end++;
  else if (*end == 'G' || *end == 'g') mult = 1ull << 30, end++;
  if (errno || *end || end == s || v == 0 || v > (UINT64_MAX >> 30)) die(1, "--%s: bad size '%s'", name, s);
  return v * mult;
}

static unsigned parse_uint(const char *s, const char *name, unsigned min, unsigned max) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || end == s || v < (long)min || v > (long)max) die(1, "--%s must be an integer in %u..%u", name, min, max);
  return (unsigned)v;
}

static double parse_seconds(const char *s, const char *name) {
  char *end;
  double v = strtod(s, &end);
  if (*end || end == s || !(v >= 0) || v > 3600) die(1, "--%s: bad duration '%s'", name, s);
  return v;
}

static void usage(void) {
  fputs("usage: blk-bench (--socket PATH | --ceiling) [--queues N] [--threads N] [--qd N] [--bs BYTES]\n"
        "         [--pattern rand|seq] [--time SEC] [--warmup SEC] [--size BYTES] [--queue-size N]\n"
        "         [--seg BYTES] [--backend-pid PID] [--no-event-idx] [--verify] [--seed N]\n"
        "         [--pin-driver CPU] [--pin-device CPU]\n"
        "       blk-bench --make-pattern FILE --size BYTES\n",
        stderr);
}

static void parse_args(int argc, char **argv) {
  static const struct option longopts[] = {
      {"socket", required_argument, 0, 's'},     {"ceiling", no_argument, 0, 'C'},
      {"queues", required_argument, 0, 'q'},     {"threads", required_argument, 0, 't'},
      {"qd", required_argument, 0, 'd'},         {"bs", required_argument, 0, 'b'},
      {"pattern", required_argument, 0, 'p'},    {"time", required_argument, 0, 'T'},
      {"warmup", required_argument, 0, 'w'},     {"size", required_argument, 0, 'S'},
      {"queue-size", required_argument, 0, 'Q'}, {"seg", required_argument, 0, 'g'},
      {"backend-pid", required_argument, 0, 'P'}, {"no-event-idx", no_argument, 0, 'E'},
      {"verify", no_argument, 0, 'V'},           {"seed", required_argument, 0, 'r'},
      {"pin-driver", required_argument, 0, 'D'}, {"pin-device", required_argument, 0, 'X'},
      {"make-pattern", required_argument, 0, 'M'}, {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 's': opt.socket_path = optarg; break;
    case 'C': opt.ceiling = 1; break;
    case 'q': opt.queues = parse_uint(optarg, "queues", 1, MAX_QUEUES); break;
    case 't': opt.threads = parse_uint(optarg, "threads", 1, MAX_QUEUES); break;
    case 'd': opt.qd = parse_uint(optarg, "qd", 1, 4096); break;
    case 'b': opt.bs = parse_size(optarg, "bs"); break;
    case 'p':
      if (!strcmp(optarg, "seq")) opt.seq = 1;
      else if (!strcmp(optarg, "rand")) opt.seq = 0;
      else die(1, "--pattern must be rand or seq");
      break;
    case 'T': opt.seconds = parse_seconds(optarg, "time"); break;
    case 'w': opt.warmup = parse_seconds(optarg, "warmup"); break;
    case 'S': opt.size = parse_size(optarg, "size"); break;
    case 'Q': opt.queue_size = parse_uint(optarg, "queue-size", 1, 32768); break;
    case 'g': opt.seg = parse_size(optarg, "seg"); break;
    case 'P': opt.backend_pid = parse_uint(optarg, "backend-pid", 1, 1u << 30); break;
    case 'E': opt.event_idx_allowed = 0; break;
    case 'V': opt.verify = 1; break;
    case 'r': opt.seed = parse_uint(optarg, "seed", 0, 1u << 30); break;
    case 'D': opt.pin_driver = (int)parse_uint(optarg, "pin-driver", 0, 4095); break;
    case 'X': opt.pin_device = (int)parse_uint(optarg, "pin-device", 0, 4095); break;
    case 'M': opt.make_pattern = optarg; break;
    case 'h': usage(); exit(0);
    default: usage(); exit(1);
    }
  }
  if (optind != argc) {
    usage();
    exit(1);
  }
}

/* ---- main ---------------------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  parse_args(argc, argv);
  if (opt.make_pattern) return make_pattern(opt.make_pattern, opt.size);
  if (!!opt.socket_path == !!opt.ceiling) {
    usage();
    die(1, "give exactly one of --socket and --ceiling");
  }
  if (opt.bs % SECTOR) die(1, "--bs must be a multiple of %u", SECTOR);
  if (opt.verify && opt.bs % STAMP_BLOCK) die(1, "--verify needs --bs a multiple of %u", STAMP_BLOCK);
  if (!opt.threads) opt.threads = opt.queues;
  if (opt.threads > opt.queues) opt.threads = opt.queues;

  struct negotiated n = {0};
  int sock = -1;
  if (opt.ceiling) {
    event_idx = opt.event_idx_allowed;
    n.features = (1ull << F_VERSION_1) | (event_idx ? 1ull << F_EVENT_IDX : 0);
    n.max_queues = MAX_QUEUES;
  } else {
    char err[256];
    sock = vhu_connect(opt.socket_path, err, sizeof err);
    if (sock < 0) die(1, "%s", err);
    negotiate(sock, &n);
    event_idx = !!(n.features & (1ull << F_EVENT_IDX));
  }

  /* What range to read: the device's capacity, narrowed by --size. */
  uint64_t span = opt.size;
  if (n.capacity_bytes && (!span || n.capacity_bytes < span)) span = n.capacity_bytes;
  if (!span) span = opt.ceiling ? 1ull << 30 : 0;
  if (!span) die(1, "the backend did not report its capacity: give --size");
  nblocks = span / opt.bs;
  if (!nblocks) die(1, "device of %" PRIu64 " bytes is smaller than one %" PRIu64 "-byte read", span, opt.bs);
  sectors_per_io = opt.bs / SECTOR;
  if (!opt.seg) opt.seg = opt.bs;
  if (n.size_max && opt.seg > n.size_max) opt.seg = n.size_max & ~(uint64_t)(SECTOR - 1);
  if (!opt.seg) die(1, "backend size_max %u is below one sector", n.size_max);
  if (n.seg_max && (opt.bs + opt.seg - 1) / opt.seg > n.seg_max)
    die(1, "a %" PRIu64 "-byte read needs more than seg_max %u segments", opt.bs, n.seg_max);

  setup_memory();
  if (!opt.ceiling) configure_rings(sock, &n);

  pthread_t device;
  if (opt.ceiling) {
    /* The in-process device polls: it never wants a kick, and says so before the driver starts. */
    for (unsigned i = 0; i < opt.queues; i++) {
      struct queue *q = &queues[i];
      if (event_idx) *ring_avail_event(&q->ring) = FAR_AWAY;
      else q->ring.used->flags = VRING_USED_F_NO_NOTIFY;
    }
  }
  if (opt.ceiling && pthread_create(&device, NULL, device_main, NULL) != 0) die(1, "pthread_create failed");

  threads = aligned_alloc(64, sizeof *threads * opt.threads);
  memset(threads, 0, sizeof *threads * opt.threads);
  for (unsigned i = 0; i < opt.queues; i++) {
    struct driver_thread *t = &threads[i % opt.threads];
    t->queues[t->nq++] = &queues[i];
  }
  for (unsigned i = 0; i < opt.threads; i++) {
    threads[i].cpu = opt.pin_driver < 0 ? -1 : opt.pin_driver + (int)i;
    if (pthread_create(&threads[i].tid, NULL, driver_main, &threads[i]) != 0) die(1, "pthread_create failed");
  }

  sleep_sec(opt.warmup);
  uint64_t ios0 = 0, ios1 = 0;
  double drv0 = 0, drv1 = 0;
  for (unsigned i = 0; i < opt.threads; i++) {
    ios0 += __atomic_load_n(&threads[i].progress, __ATOMIC_RELAXED);
    drv0 += thread_cpu_sec(threads[i].tid);
  }
  double dev0 = opt.ceiling ? thread_cpu_sec(device) : 0;
  long long be0 = opt.backend_pid > 0 ? proc_cpu_ticks(opt.backend_pid) : -1;
  long long sys0 = system_busy_ticks();
  double self0 = process_cpu_sec();
  double t0 = now_sec();
  sleep_sec(opt.seconds);
  for (unsigned i = 0; i < opt.threads; i++) {
    ios1 += __atomic_load_n(&threads[i].progress, __ATOMIC_RELAXED);
    drv1 += thread_cpu_sec(threads[i].tid);
  }
  double dev1 = opt.ceiling ? thread_cpu_sec(device) : 0;
  long long be1 = opt.backend_pid > 0 ? proc_cpu_ticks(opt.backend_pid) : -1;
  long long sys1 = system_busy_ticks();
  double self1 = process_cpu_sec();
  double t1 = now_sec();

  __atomic_store_n(&stop_flag, 1, __ATOMIC_RELAXED);
  int drained = 1;
  for (unsigned i = 0; i < opt.threads; i++) {
    pthread_join(threads[i].tid, NULL);
    drained &= threads[i].drained;
  }
  if (opt.ceiling) {
    __atomic_store_n(&device_stop_flag, 1, __ATOMIC_RELAXED);
    pthread_join(device, NULL);
  }

  /* Stop each ring: the backend's next avail index must be where we left ours. */
  int bases_ok = 1, bases_checked = 0;
  if (sock >= 0 && drained) {
    for (unsigned i = 0; i < opt.queues; i++) {
      uint32_t base;
      if (vhu_get_vring_base(sock, i, &base) < 0) {
        fprintf(stderr, "blk-bench: GET_VRING_BASE %u: %s\n", i, strerror(errno));
        bases_ok = 0;
        continue;
      }
      bases_checked++;
      if ((uint16_t)base != queues[i].avail_idx) {
        fprintf(stderr, "blk-bench: queue %u: backend stopped at avail index %u, driver published %u\n", i, base,
                queues[i].avail_idx);
        bases_ok = 0;
      }
    }
  }

  uint64_t completed = 0, errors = 0, verify_failures = 0, len_mismatches = 0, kicks = 0, calls = 0;
  for (unsigned i = 0; i < opt.queues; i++) {
    struct queue *q = &queues[i];
    completed += q->completed;
    errors += q->errors;
    verify_failures += q->verify_failures;
    len_mismatches += q->len_mismatches;
    kicks += q->kicks;
    uint64_t c;
    if (read(q->callfd, &c, sizeof c) == sizeof c) calls += c;
  }
  if (sock >= 0) close(sock);

  uint64_t ios = ios1 - ios0;
  double secs = t1 - t0;
  double iops = secs > 0 ? (double)ios / secs : 0;
  long tck = sysconf(_SC_CLK_TCK);
  double backend_cpu = -1;
  if (opt.ceiling) backend_cpu = dev1 - dev0;
  else if (be0 >= 0 && be1 >= 0) backend_cpu = (double)(be1 - be0) / (double)tck;
  /* CPU used by everything else on the machine during the window: a sign the numbers are disturbed. */
  double system_busy = sys0 >= 0 && sys1 >= 0 ? (double)(sys1 - sys0) / (double)tck : -1;
  double foreign = -1;
  if (system_busy >= 0) {
    foreign = system_busy - (self1 - self0) - (opt.ceiling || backend_cpu < 0 ? 0 : backend_cpu);
    if (foreign < 0) foreign = 0;
  }

  printf("{\"mode\":\"%s\",\"queues\":%u,\"threads\":%u,\"qd\":%u,\"bs\":%" PRIu64 ",\"pattern\":\"%s\","
         "\"queueSize\":%u,\"descriptorsPerRequest\":%u,\"eventIdx\":%s,"
         "\"features\":\"0x%" PRIx64 "\",\"protocolFeatures\":\"0x%" PRIx64 "\",\"spanBytes\":%" PRIu64 ","
         "\"seconds\":%.6f,\"ios\":%" PRIu64 ",\"iops\":%.1f,\"mbps\":%.2f,"
         "\"backendCpuSec\":%.3f,\"backendCpuUsPerIo\":%.4f,\"driverCpuSec\":%.3f,"
         "\"systemBusyCpuSec\":%.3f,\"foreignCpuSec\":%.3f,"
         "\"completedTotal\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"verify\":%s,\"verifyFailures\":%" PRIu64 ","
         "\"lenMismatches\":%" PRIu64 ",\"kicks\":%" PRIu64 ",\"calls\":%" PRIu64 ",\"drained\":%s,"
         "\"ringBasesChecked\":%d,\"ringBasesOk\":%s}\n",
         opt.ceiling ? "ceiling" : "vhost-user", opt.queues, opt.threads, opt.qd, opt.bs, opt.seq ? "seq" : "rand",
         queues[0].ring.size, queues[0].dps, event_idx ? "true" : "false", n.features, n.protocol_features, span,
         secs, ios, iops, iops * (double)opt.bs / 1e6, backend_cpu,
         backend_cpu >= 0 && ios ? backend_cpu * 1e6 / (double)ios : -1.0, drv1 - drv0, system_busy, foreign, completed, errors,
         opt.verify ? "true" : "false", verify_failures, len_mismatches, kicks, calls, drained ? "true" : "false",
         bases_checked, bases_ok ? "true" : "false");
  fflush(stdout);
  if (!drained) die(3, "requests were still in flight %.0f s after the run", DRAIN_SECONDS);
  if (errors || verify_failures) return 2;
  if (!bases_ok) return 3;
  return 0;
}
