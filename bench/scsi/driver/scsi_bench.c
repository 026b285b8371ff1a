/*
 * scsi-bench: a minimal virtio-scsi driver over vhost-user that keeps a fixed number of READ(16) commands in
 * flight per request queue and busy-polls the used rings, so that the backend, not the driver, is measured.
 * It is the virtio-scsi twin of bench/blk/driver/blk_bench.c: the same options (those that apply), the same
 * threading and polling, the same one-line JSON report, so that one benchmark can put virtio-blk and
 * virtio-scsi side by side. The vhost-user connection and ring helpers are blk-bench's (vhost_user.c, ring.h).
 *
 *   scsi-bench --socket PATH --size BYTES [--queues N] [--threads N] [--qd N] [--bs BYTES] [--pattern rand|seq]
 *              [--time SEC] [--warmup SEC] [--backend-pid PID] [--no-event-idx] [--seed N] [--pin-driver CPU]
 *              [--target T] [--lun L]
 *
 * Only the request queues (virtqueues 2..) are set up; the control and event queues stay idle. Exit status 0 on
 * a clean run, 1 on bad usage or a failed setup, 2 when commands failed, 3 when the device broke the ring
 * protocol. Written from the vhost-user specification and virtio 1.2 (5.6).
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
#include <time.h>
#include <unistd.h>

#include "../../blk/driver/ring.h"
#include "../../blk/driver/vhost_user.h"

#define F_SCSI_HOTPLUG 1
#define F_SCSI_CHANGE 2
#define F_EVENT_IDX 29
#define F_VERSION_1 32

#define FIRST_REQUEST_QUEUE 2
#define CDB_SIZE 32
#define SENSE_SIZE 96
#define REQ_HEADER (19 + CDB_SIZE)  /* lun[8], id, task_attr, prio, crn, cdb[32] */
#define RESP_HEADER (12 + SENSE_SIZE) /* sense_len, residual, status_qualifier, status, response, sense[96] */
#define SECTOR 512u
#define FAR_AWAY 0x8000u
#define MAX_QUEUES 64
#define DRAIN_SECONDS 5.0

/* Per-command request and response, preallocated per slot. */
struct slot_meta {
  uint8_t req[64];  /* REQ_HEADER bytes used */
  uint8_t resp[112]; /* RESP_HEADER bytes used */
};

struct queue {
  unsigned index; /* request queue number (virtqueue FIRST_REQUEST_QUEUE + index) */
  struct split_ring ring;
  uint16_t mask;
  int kickfd, callfd;
  uint16_t avail_idx, published, last_used;
  unsigned dps, nslots, inflight;
  struct slot_meta *meta;
  uint8_t *busy;
  uint64_t seq_next, rng, tag;
  uint64_t completed, errors, len_mismatches, kicks;
  size_t desc_off, avail_off, used_off, meta_off, data_off;
};

struct driver_thread {
  pthread_t tid;
  unsigned nq;
  struct queue *queues[MAX_QUEUES];
  int cpu;
  int drained;
  uint64_t progress __attribute__((aligned(64)));
  char pad[56];
};

static struct {
  const char *socket_path;
  unsigned queues, threads, qd, queue_size, target, lun;
  uint64_t bs, size;
  int seq;
  double seconds, warmup;
  long backend_pid;
  int event_idx_allowed;
  uint64_t seed;
  int pin_driver;
} opt = {.queues = 1, .qd = 32, .bs = 4096, .seconds = 3.0, .warmup = 0.5, .backend_pid = -1, .event_idx_allowed = 1,
         .seed = 1, .pin_driver = -1};

static uint8_t *ram;
static size_t ram_size;
static int ram_fd = -1;
static int event_idx;
static uint64_t nblocks, sectors_per_io;
static int stop_flag;
static struct queue queues[MAX_QUEUES];
static struct driver_thread *threads;

static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("scsi-bench: ", stderr);
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

static double process_cpu_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_sec(double s) {
  struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
  while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
  }
}

/* utime + stime of a whole process, in clock ticks, from /proc/<pid>/stat; -1 if unreadable. */
static long long proc_cpu_ticks(long pid) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  unsigned long long utime = 0;
  int field = 2;
  for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
    field++;
    if (field == 14) utime = strtoull(tok, NULL, 10);
    if (field == 15) return (long long)(utime + strtoull(tok, NULL, 10));
  }
  return -1;
}

/* Busy ticks of all CPUs from /proc/stat; -1 if unreadable. */
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
  return (long long)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]);
}

#define IDLE_SPINS_BEFORE_YIELD 512u
static inline void idle_wait(unsigned *idle) {
  if (++*idle < IDLE_SPINS_BEFORE_YIELD) {
    cpu_relax();
  } else {
    *idle = 0;
    sched_yield();
  }
}

static void pin_self(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

/* ---- driver side of the rings -------------------------------------------------------------------------------- */

static inline uint64_t next_block(struct queue *q) {
  if (opt.seq) {
    uint64_t b = q->seq_next;
    q->seq_next = b + 1 == nblocks ? 0 : b + 1;
    return b;
  }
  uint64_t x = q->rng; /* xorshift64* */
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  q->rng = x;
  return (x * 0x2545F4914F6CDD1Dull) % nblocks;
}

static inline void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* Fill a slot's READ(16) and put its chain head in the avail ring (not yet visible: see publish). */
static inline void submit(struct queue *q, unsigned slot) {
  struct slot_meta *m = &q->meta[slot];
  uint64_t lba = next_block(q) * sectors_per_io;
  uint64_t tag = ++q->tag;
  memcpy(m->req + 8, &tag, 8);
  uint8_t *cdb = m->req + 19;
  put_be32(cdb + 2, (uint32_t)(lba >> 32));
  put_be32(cdb + 6, (uint32_t)lba);
  m->resp[11] = 0xff; /* response: must be overwritten */
  m->resp[10] = 0xff; /* status */
  q->ring.avail->ring[q->avail_idx & q->mask] = (uint16_t)(slot * q->dps);
  q->avail_idx++;
  q->busy[slot] = 1;
  q->inflight++;
}

static inline void publish(struct queue *q) {
  uint16_t new_idx = q->avail_idx, old = q->published;
  if (new_idx == old) return;
  store_release16(&q->ring.avail->idx, new_idx);
  q->published = new_idx;
  full_fence();
  int kick;
  if (event_idx) kick = ring_need_event(load_relaxed16(ring_avail_event(&q->ring)), new_idx, old);
  else kick = !(load_relaxed16(&q->ring.used->flags) & VRING_USED_F_NO_NOTIFY);
  if (kick) {
    uint64_t one = 1;
    if (write(q->kickfd, &one, sizeof one) == sizeof one) q->kicks++;
  }
}

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
    const uint8_t *r = q->meta[slot].resp;
    if (r[11] != 0 || r[10] != 0) {
      if (q->errors < 3) fprintf(stderr, "scsi-bench: queue %u: response %u, status 0x%02x\n", q->index, r[11], r[10]);
      q->errors++;
    }
    if (e.len != RESP_HEADER + opt.bs) q->len_mismatches++;
    q->completed++;
    if (resubmit) submit(q, slot);
  }
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

/* ---- setup --------------------------------------------------------------------------------------------------- */

static size_t align_up(size_t v, size_t a) { return (v + a - 1) & ~(a - 1); }

/* Rings, command records and data buffers of every queue in one memfd; chains (request, response, data) are
 * built once per slot, so only heads move through the rings. */
static void setup_memory(void) {
  const unsigned dps = 3;
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
  ram_fd = memfd_create("scsi-bench-ram", MFD_CLOEXEC);
  if (ram_fd < 0) die(1, "memfd_create: %s", strerror(errno));
  if (ftruncate(ram_fd, (off_t)ram_size) < 0) die(1, "ftruncate: %s", strerror(errno));
  ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ram_fd, 0);
  if (ram == MAP_FAILED) die(1, "mmap %zu bytes: %s", ram_size, strerror(errno));

  for (unsigned i = 0; i < opt.queues; i++) {
    struct queue *q = &queues[i];
    q->index = i;
    q->ring.size = (uint16_t)qsize;
    q->mask = (uint16_t)(qsize - 1);
    q->ring.desc = (struct vring_desc *)(ram + q->desc_off);
    q->ring.avail = (struct vring_avail *)(ram + q->avail_off);
    q->ring.used = (struct vring_used *)(ram + q->used_off);
    q->dps = dps;
    q->nslots = opt.qd;
    q->meta = (struct slot_meta *)(ram + q->meta_off);
    q->busy = calloc(opt.qd, 1);
    q->rng = (opt.seed + 1) * 0x9E3779B97F4A7C15ull ^ (i + 1) * 0xD1B54A32D192ED03ull;
    if (!q->rng) q->rng = 1;
    q->seq_next = nblocks * i / opt.queues;
    q->ring.avail->flags = event_idx ? 0 : VRING_AVAIL_F_NO_INTERRUPT;
    *ring_used_event(&q->ring) = FAR_AWAY;
    for (unsigned s = 0; s < opt.qd; s++) {
      struct slot_meta *m = &q->meta[s];
      /* LUN field: 1, target, then the LUN in flat addressing (as Linux sends it). */
      m->req[0] = 1;
      m->req[1] = (uint8_t)opt.target;
      m->req[2] = (uint8_t)(0x40 | (opt.lun >> 8));
      m->req[3] = (uint8_t)opt.lun;
      uint8_t *cdb = m->req + 19;
      cdb[0] = 0x88; /* READ(16) */
      put_be32(cdb + 10, (uint32_t)sectors_per_io);
      unsigned h = s * dps;
      uint64_t meta_gpa = q->meta_off + (uint64_t)s * sizeof(struct slot_meta);
      q->ring.desc[h] = (struct vring_desc){meta_gpa, REQ_HEADER, VRING_DESC_F_NEXT, (uint16_t)(h + 1)};
      q->ring.desc[h + 1] = (struct vring_desc){meta_gpa + offsetof(struct slot_meta, resp), RESP_HEADER,
                                                VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, (uint16_t)(h + 2)};
      q->ring.desc[h + 2] = (struct vring_desc){q->data_off + (uint64_t)s * opt.bs, (uint32_t)opt.bs, VRING_DESC_F_WRITE, 0};
    }
    q->kickfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    q->callfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->kickfd < 0 || q->callfd < 0) die(1, "eventfd: %s", strerror(errno));
  }
}

static void check(int rc, const char *what) {
  if (rc < 0) die(1, "%s: %s", what, strerror(errno ? errno : EPROTO));
}

static uint64_t features, protocol_features;

static void negotiate(int sock) {
  uint64_t offered;
  unsigned max_queues = 1;
  check(vhu_get_u64(sock, VHU_GET_FEATURES, &offered), "GET_FEATURES");
  if (!(offered & (1ull << F_VERSION_1))) die(1, "backend does not offer VERSION_1 (features 0x%" PRIx64 ")", offered);
  if (offered & (1ull << VHU_F_PROTOCOL_FEATURES)) {
    uint64_t pf;
    check(vhu_get_u64(sock, VHU_GET_PROTOCOL_FEATURES, &pf), "GET_PROTOCOL_FEATURES");
    protocol_features = pf & ((1ull << VHU_PF_MQ) | (1ull << VHU_PF_CONFIGURE_MEM_SLOTS) | (1ull << VHU_PF_STATUS));
    check(vhu_set_u64(sock, VHU_SET_PROTOCOL_FEATURES, protocol_features), "SET_PROTOCOL_FEATURES");
    if (protocol_features & (1ull << VHU_PF_MQ)) {
      uint64_t qn;
      check(vhu_get_u64(sock, VHU_GET_QUEUE_NUM, &qn), "GET_QUEUE_NUM");
      max_queues = qn > MAX_QUEUES + FIRST_REQUEST_QUEUE ? MAX_QUEUES + FIRST_REQUEST_QUEUE : (unsigned)qn;
    }
  }
  if (opt.queues + FIRST_REQUEST_QUEUE > max_queues)
    die(1, "%u request queues asked, the backend has %u virtqueues", opt.queues, max_queues);
  check(vhu_send(sock, VHU_SET_OWNER, NULL, 0, NULL, 0), "SET_OWNER");
  uint64_t want = (1ull << F_VERSION_1) | (1ull << VHU_F_PROTOCOL_FEATURES);
  if (opt.event_idx_allowed) want |= 1ull << F_EVENT_IDX;
  features = offered & want;
  check(vhu_set_u64(sock, VHU_SET_FEATURES, features), "SET_FEATURES");
  event_idx = !!(features & (1ull << F_EVENT_IDX));
}

static void configure_rings(int sock) {
  struct vhu_region region = {0, ram_size, (uint64_t)(uintptr_t)ram, 0};
  if (protocol_features & (1ull << VHU_PF_CONFIGURE_MEM_SLOTS)) {
    uint64_t slots;
    check(vhu_get_u64(sock, VHU_GET_MAX_MEM_SLOTS, &slots), "GET_MAX_MEM_SLOTS");
    check(vhu_add_mem_reg(sock, &region, ram_fd), "ADD_MEM_REG");
  } else {
    check(vhu_set_mem_table(sock, &region, ram_fd), "SET_MEM_TABLE");
  }
  for (unsigned i = 0; i < opt.queues; i++) {
    struct queue *q = &queues[i];
    unsigned vq = FIRST_REQUEST_QUEUE + i;
    uint64_t base = (uint64_t)(uintptr_t)ram;
    check(vhu_set_state(sock, VHU_SET_VRING_NUM, vq, q->ring.size), "SET_VRING_NUM");
    check(vhu_set_state(sock, VHU_SET_VRING_BASE, vq, 0), "SET_VRING_BASE");
    check(vhu_set_vring_addr(sock, vq, base + q->desc_off, base + q->used_off, base + q->avail_off), "SET_VRING_ADDR");
    check(vhu_set_vring_fd(sock, VHU_SET_VRING_CALL, vq, q->callfd), "SET_VRING_CALL");
    check(vhu_set_vring_fd(sock, VHU_SET_VRING_KICK, vq, q->kickfd), "SET_VRING_KICK");
    if (features & (1ull << VHU_F_PROTOCOL_FEATURES)) check(vhu_set_state(sock, VHU_SET_VRING_ENABLE, vq, 1), "SET_VRING_ENABLE");
  }
  if (protocol_features & (1ull << VHU_PF_STATUS)) check(vhu_set_u64(sock, VHU_SET_STATUS, 0x0f), "SET_STATUS");
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
  fputs("usage: scsi-bench --socket PATH --size BYTES [--queues N] [--threads N] [--qd N] [--bs BYTES]\n"
        "         [--pattern rand|seq] [--time SEC] [--warmup SEC] [--queue-size N] [--backend-pid PID]\n"
        "         [--no-event-idx] [--seed N] [--pin-driver CPU] [--target T] [--lun L]\n",
        stderr);
}

static void parse_args(int argc, char **argv) {
  static const struct option longopts[] = {
      {"socket", required_argument, 0, 's'},      {"queues", required_argument, 0, 'q'},
      {"threads", required_argument, 0, 't'},     {"qd", required_argument, 0, 'd'},
      {"bs", required_argument, 0, 'b'},          {"pattern", required_argument, 0, 'p'},
      {"time", required_argument, 0, 'T'},        {"warmup", required_argument, 0, 'w'},
      {"size", required_argument, 0, 'S'},        {"queue-size", required_argument, 0, 'Q'},
      {"backend-pid", required_argument, 0, 'P'}, {"no-event-idx", no_argument, 0, 'E'},
      {"seed", required_argument, 0, 'r'},        {"pin-driver", required_argument, 0, 'D'},
      {"target", required_argument, 0, 'g'},      {"lun", required_argument, 0, 'l'},
      {"help", no_argument, 0, 'h'},              {0, 0, 0, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 's': opt.socket_path = optarg; break;
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
    case 'P': opt.backend_pid = parse_uint(optarg, "backend-pid", 1, 1u << 30); break;
    case 'E': opt.event_idx_allowed = 0; break;
    case 'r': opt.seed = parse_uint(optarg, "seed", 0, 1u << 30); break;
    case 'D': opt.pin_driver = (int)parse_uint(optarg, "pin-driver", 0, 4095); break;
    case 'g': opt.target = parse_uint(optarg, "target", 0, 255); break;
    case 'l': opt.lun = parse_uint(optarg, "lun", 0, 16383); break;
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
  if (!opt.socket_path || !opt.size) {
    usage();
    die(1, "--socket and --size are required");
  }
  if (opt.bs % SECTOR || opt.bs > 0xffffffffu) die(1, "--bs must be a multiple of %u", SECTOR);
  if (!opt.threads) opt.threads = opt.queues;
  if (opt.threads > opt.queues) opt.threads = opt.queues;
  nblocks = opt.size / opt.bs;
  if (!nblocks) die(1, "device of %" PRIu64 " bytes is smaller than one %" PRIu64 "-byte read", opt.size, opt.bs);
  sectors_per_io = opt.bs / SECTOR;

  char err[256];
  int sock = vhu_connect(opt.socket_path, err, sizeof err);
  if (sock < 0) die(1, "%s", err);
  negotiate(sock);
  setup_memory();
  configure_rings(sock);

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
  long long be0 = opt.backend_pid > 0 ? proc_cpu_ticks(opt.backend_pid) : -1;
  long long sys0 = system_busy_ticks();
  double self0 = process_cpu_sec();
  double t0 = now_sec();
  sleep_sec(opt.seconds);
  for (unsigned i = 0; i < opt.threads; i++) {
    ios1 += __atomic_load_n(&threads[i].progress, __ATOMIC_RELAXED);
    drv1 += thread_cpu_sec(threads[i].tid);
  }
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

  int bases_ok = 1, bases_checked = 0;
  if (drained) {
    for (unsigned i = 0; i < opt.queues; i++) {
      uint32_t base;
      if (vhu_get_vring_base(sock, FIRST_REQUEST_QUEUE + i, &base) < 0) {
        fprintf(stderr, "scsi-bench: GET_VRING_BASE %u: %s\n", FIRST_REQUEST_QUEUE + i, strerror(errno));
        bases_ok = 0;
        continue;
      }
      bases_checked++;
      if ((uint16_t)base != queues[i].avail_idx) {
        fprintf(stderr, "scsi-bench: queue %u: backend stopped at avail index %u, driver published %u\n", i, base,
                queues[i].avail_idx);
        bases_ok = 0;
      }
    }
  }

  uint64_t completed = 0, errors = 0, len_mismatches = 0, kicks = 0, calls = 0;
  for (unsigned i = 0; i < opt.queues; i++) {
    struct queue *q = &queues[i];
    completed += q->completed;
    errors += q->errors;
    len_mismatches += q->len_mismatches;
    kicks += q->kicks;
    uint64_t c;
    if (read(q->callfd, &c, sizeof c) == sizeof c) calls += c;
  }
  close(sock);

  uint64_t ios = ios1 - ios0;
  double secs = t1 - t0;
  double iops = secs > 0 ? (double)ios / secs : 0;
  long tck = sysconf(_SC_CLK_TCK);
  double backend_cpu = be0 >= 0 && be1 >= 0 ? (double)(be1 - be0) / (double)tck : -1;
  double system_busy = sys0 >= 0 && sys1 >= 0 ? (double)(sys1 - sys0) / (double)tck : -1;
  double foreign = -1;
  if (system_busy >= 0) {
    foreign = system_busy - (self1 - self0) - (backend_cpu < 0 ? 0 : backend_cpu);
    if (foreign < 0) foreign = 0;
  }

  printf("{\"mode\":\"vhost-user\",\"transport\":\"scsi\",\"queues\":%u,\"threads\":%u,\"qd\":%u,\"bs\":%" PRIu64
         ",\"pattern\":\"%s\",\"queueSize\":%u,\"descriptorsPerRequest\":%u,\"eventIdx\":%s,"
         "\"features\":\"0x%" PRIx64 "\",\"protocolFeatures\":\"0x%" PRIx64 "\",\"spanBytes\":%" PRIu64 ","
         "\"seconds\":%.6f,\"ios\":%" PRIu64 ",\"iops\":%.1f,\"mbps\":%.2f,"
         "\"backendCpuSec\":%.3f,\"backendCpuUsPerIo\":%.4f,\"driverCpuSec\":%.3f,"
         "\"systemBusyCpuSec\":%.3f,\"foreignCpuSec\":%.3f,"
         "\"completedTotal\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"verify\":false,\"verifyFailures\":0,"
         "\"lenMismatches\":%" PRIu64 ",\"kicks\":%" PRIu64 ",\"calls\":%" PRIu64 ",\"drained\":%s,"
         "\"ringBasesChecked\":%d,\"ringBasesOk\":%s}\n",
         opt.queues, opt.threads, opt.qd, opt.bs, opt.seq ? "seq" : "rand", queues[0].ring.size, queues[0].dps,
         event_idx ? "true" : "false", features, protocol_features, nblocks * opt.bs, secs, ios, iops,
         iops * (double)opt.bs / 1e6, backend_cpu, backend_cpu >= 0 && ios ? backend_cpu * 1e6 / (double)ios : -1.0,
         drv1 - drv0, system_busy, foreign, completed, errors, len_mismatches, kicks, calls, drained ? "true" : "false",
         bases_checked, bases_ok ? "true" : "false");
  fflush(stdout);
  if (!drained) die(3, "requests were still in flight %.0f s after the run", DRAIN_SECONDS);
  if (errors) return 2;
  if (!bases_ok) return 3;
  return 0;
}
