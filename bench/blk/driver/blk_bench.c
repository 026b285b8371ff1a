/*
 * blk-bench: a minimal virtio-blk driver over vhost-user that keeps a fixed number of reads in flight per queue
 * and busy-polls the used rings, so that the backend, not the driver, is what gets measured.
 *
 *   blk-bench --socket PATH [options]      drive a vhost-user-blk backend
 *   blk-bench --ceiling [options]          drive an in-process device thread that completes requests at once
 *   blk-bench --make-pattern FILE --size N write an image whose 4 KiB blocks carry the stamp --verify checks
 *
 * Prints one JSON object on stdout. Exit status 0 on a clean run, 1 on bad usage or a failed setup, 2 when reads
 * failed or data did not verify, 3 when the device broke the ring protocol. The vhost-user frontend, the threads
 * and the report are bench/common/driver/'s; this file is what is virtio-blk about it.
 *
 * Written from the vhost-user specification (QEMU docs/interop/vhost-user.rst) and virtio 1.2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/driver/frontend.h"
#include "../../common/driver/poll_loop.h"
#include "../../common/driver/vhost_user.h"

/* Virtio feature bits we may accept. */
#define F_BLK_SIZE_MAX 1
#define F_BLK_SEG_MAX 2
#define F_BLK_RO 5
#define F_BLK_BLK_SIZE 6
#define F_BLK_MQ 12

#define BLK_T_IN 0
#define BLK_S_OK 0
#define STAMP_BLOCK 4096u
#define STAMP_MAGIC 0x6b6c622d75687621ull /* "!vhu-blk" */

/* Per-request header and status, preallocated per slot (device-readable header, device-writable status). One
 * cache line per slot, as in Linux (each request's header is in its own blk-mq request): records packed
 * closer would put two slots' headers, written by the driver and the device on two cores, in one line. */
struct slot_meta {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
  uint8_t status;
} __attribute__((aligned(64)));

/* What only blk-bench keeps per queue. */
struct blk_queue {
  uint64_t *slot_block; /* block each slot is reading, for --verify */
  /* in-process device state (--ceiling) */
  uint16_t dev_last_avail, dev_used_idx;
};

/* Options beyond bench_opt's. */
static struct {
  int ceiling;
  uint64_t seg;
  int verify;
  int pin_device;
  const char *make_pattern;
} blk_opt = {.pin_device = -1};

static struct blk_queue blk_queues[BENCH_MAX_QUEUES];
static int device_stop_flag;

static inline struct slot_meta *meta_of(const struct bench_queue *q, unsigned slot) {
  return (struct slot_meta *)q->meta + slot;
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
  if (size == 0 || size % STAMP_BLOCK) bench_die(1, "--make-pattern needs --size, a multiple of %u", STAMP_BLOCK);
  FILE *f = fopen(path, "wb");
  if (!f) bench_die(1, "%s: %s", path, strerror(errno));
  uint8_t buf[STAMP_BLOCK];
  for (uint64_t b = 0; b < size / STAMP_BLOCK; b++) {
    stamp_block(buf, b);
    if (fwrite(buf, 1, sizeof buf, f) != sizeof buf) bench_die(1, "%s: %s", path, strerror(errno));
  }
  if (fclose(f) != 0) bench_die(1, "%s: %s", path, strerror(errno));
  printf("{\"pattern\":\"%s\",\"blocks\":%" PRIu64 "}\n", path, size / STAMP_BLOCK);
  return 0;
}

/* ---- the per-request hooks of poll_loop.h --------------------------------------------------------------------- */

static inline void dev_fill(struct bench_queue *q, unsigned slot, uint64_t block) {
  struct slot_meta *m = meta_of(q, slot);
  m->type = BLK_T_IN;
  m->reserved = 0;
  m->sector = block * bench_sectors_per_io;
  m->status = 0xff;
  if (blk_opt.verify) {
    blk_queues[q->index].slot_block[slot] = block;
    memset(q->data + (size_t)slot * bench_opt.bs, 0xee, bench_opt.bs); /* stale data must not pass the check */
  }
}

static void check_data(struct bench_queue *q, unsigned slot) {
  const uint64_t bs = bench_opt.bs;
  const uint8_t *buf = q->data + (size_t)slot * bs;
  uint64_t first = blk_queues[q->index].slot_block[slot] * (bs / STAMP_BLOCK);
  for (uint64_t k = 0; k < bs / STAMP_BLOCK; k++) {
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

static inline void dev_complete(struct bench_queue *q, unsigned slot, uint32_t len) {
  if (meta_of(q, slot)->status != BLK_S_OK) q->errors++;
  else if (blk_opt.verify) check_data(q, slot);
  if (len != bench_opt.bs + 1) q->len_mismatches++;
}

/* ---- in-process device for --ceiling ------------------------------------------------------------------------- */

static inline void *gpa(uint64_t addr, uint64_t len) {
  if (addr > bench_ram_size || len > bench_ram_size - addr) return NULL;
  return bench_ram + addr;
}

/* Completes every available chain at once: reads the header, writes an OK status, reports the writable length. */
static void *device_main(void *arg) {
  (void)arg;
  bench_pin_self(blk_opt.pin_device);
  volatile uint64_t sink = 0;
  unsigned idle_spins = 0;
  while (!__atomic_load_n(&device_stop_flag, __ATOMIC_RELAXED)) {
    int idle = 1;
    for (unsigned i = 0; i < bench_opt.queues; i++) {
      struct bench_queue *q = &bench_queues[i];
      struct blk_queue *dq = &blk_queues[i];
      uint16_t avail_idx = load_acquire16(&q->ring.avail->idx);
      if (avail_idx == dq->dev_last_avail) continue;
      idle = 0;
      for (; dq->dev_last_avail != avail_idx; dq->dev_last_avail++) {
        uint16_t head = q->ring.avail->ring[dq->dev_last_avail & q->mask];
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
        q->ring.used->ring[dq->dev_used_idx & q->mask] = (struct vring_used_elem){head, len};
        dq->dev_used_idx++;
      }
      store_release16(&q->ring.used->idx, dq->dev_used_idx);
      if (bench_event_idx) store_relaxed16(ring_avail_event(&q->ring), (uint16_t)(dq->dev_last_avail + BENCH_FAR_AWAY));
    }
    if (idle) bench_idle_wait(&idle_spins);
    else idle_spins = 0;
  }
  return NULL;
}

/* ---- setup --------------------------------------------------------------------------------------------------- */

static unsigned descs_per_request(void) {
  uint64_t segs = (bench_opt.bs + blk_opt.seg - 1) / blk_opt.seg;
  return (unsigned)(2 + segs);
}

/* Every slot's chain: header, data split into --seg pieces, status. */
static void build_chains(void) {
  for (unsigned i = 0; i < bench_opt.queues; i++) {
    struct bench_queue *q = &bench_queues[i];
    blk_queues[i].slot_block = calloc(bench_opt.qd, sizeof *blk_queues[i].slot_block);
    if (!blk_queues[i].slot_block) bench_die(1, "out of memory");
    for (unsigned s = 0; s < q->nslots; s++) {
      unsigned h = s * q->dps;
      uint64_t meta_gpa = q->meta_off + (uint64_t)s * sizeof(struct slot_meta);
      uint64_t data_gpa = q->data_off + (uint64_t)s * bench_opt.bs;
      q->ring.desc[h] = (struct vring_desc){meta_gpa, 16, VRING_DESC_F_NEXT, (uint16_t)(h + 1)};
      uint64_t left = bench_opt.bs;
      unsigned d = h + 1;
      for (; left; d++) {
        uint32_t len = (uint32_t)(left < blk_opt.seg ? left : blk_opt.seg);
        q->ring.desc[d] = (struct vring_desc){data_gpa, len, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, (uint16_t)(d + 1)};
        data_gpa += len;
        left -= len;
      }
      q->ring.desc[d] = (struct vring_desc){meta_gpa + offsetof(struct slot_meta, status), 1, VRING_DESC_F_WRITE, 0};
    }
  }
}

/* What the blk config space says (when the backend lets us read it). */
struct blk_limits {
  uint64_t capacity_bytes;
  unsigned size_max, seg_max;
};

/* Feature negotiation, before the memory layout is known (it decides segmenting). */
static void negotiate(int sock, struct bench_negotiated *n, struct blk_limits *lim) {
  memset(lim, 0, sizeof *lim);
  /* Only protocol features whose messages we handle without REPLY_ACK. */
  bench_negotiate_start(sock, (1ull << VHU_PF_MQ) | (1ull << VHU_PF_CONFIG) | (1ull << VHU_PF_CONFIGURE_MEM_SLOTS) | (1ull << VHU_PF_STATUS),
                        BENCH_MAX_QUEUES, n);
  if (n->protocol_features & (1ull << VHU_PF_CONFIG)) {
    uint8_t cfg[36];
    if (vhu_get_config(sock, cfg, sizeof cfg) == 0) {
      uint64_t cap;
      uint32_t smax, sgmax;
      memcpy(&cap, cfg, 8);
      memcpy(&smax, cfg + 8, 4);
      memcpy(&sgmax, cfg + 12, 4);
      lim->capacity_bytes = cap * BENCH_SECTOR;
      lim->size_max = (n->offered & (1ull << F_BLK_SIZE_MAX)) ? smax : 0;
      lim->seg_max = (n->offered & (1ull << F_BLK_SEG_MAX)) ? sgmax : 0;
    }
  }
  bench_negotiate_finish(sock, (1ull << BENCH_F_VERSION_1) | (1ull << VHU_F_PROTOCOL_FEATURES) | (1ull << F_BLK_SIZE_MAX) |
                                   (1ull << F_BLK_SEG_MAX) | (1ull << F_BLK_BLK_SIZE) | (1ull << F_BLK_RO) | (1ull << F_BLK_MQ),
                         n);
  if (bench_opt.queues > 1 && !(n->features & (1ull << F_BLK_MQ)))
    bench_die(1, "%u queues asked, but the backend does not offer VIRTIO_BLK_F_MQ", bench_opt.queues);
  if (bench_opt.queues > n->queue_num) bench_die(1, "%u queues asked, the backend supports %u", bench_opt.queues, n->queue_num);
}

/* ---- command line -------------------------------------------------------------------------------------------- */

static void usage(void) {
  fputs("usage: blk-bench (--socket PATH | --ceiling) [--queues N] [--threads N] [--qd N] [--bs BYTES]\n"
        "         [--pattern rand|seq] [--time SEC] [--warmup SEC] [--size BYTES] [--queue-size N]\n"
        "         [--seg BYTES] [--backend-pid PID] [--no-event-idx] [--verify] [--seed N]\n"
        "         [--pin-driver CPU] [--pin-device CPU]\n"
        "       blk-bench --make-pattern FILE --size BYTES\n",
        stderr);
}

static const struct option blk_options[] = {
    {"ceiling", no_argument, 0, 'C'},           {"seg", required_argument, 0, 'g'},
    {"verify", no_argument, 0, 'V'},            {"pin-device", required_argument, 0, 'X'},
    {"make-pattern", required_argument, 0, 'M'}, {0, 0, 0, 0},
};

static int blk_option(int c, const char *arg) {
  switch (c) {
  case 'C': blk_opt.ceiling = 1; return 1;
  case 'g': blk_opt.seg = bench_parse_size(arg, "seg"); return 1;
  case 'V': blk_opt.verify = 1; return 1;
  case 'X': blk_opt.pin_device = (int)bench_parse_uint(arg, "pin-device", 0, 4095); return 1;
  case 'M': blk_opt.make_pattern = arg; return 1;
  default: return 0;
  }
}

/* ---- main ---------------------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
  bench_prog = "blk-bench";
  signal(SIGPIPE, SIG_IGN);
  bench_parse_args(argc, argv, blk_options, blk_option, usage);
  struct bench_options *o = &bench_opt;
  if (blk_opt.make_pattern) return make_pattern(blk_opt.make_pattern, o->size);
  if (!!o->socket_path == !!blk_opt.ceiling) {
    usage();
    bench_die(1, "give exactly one of --socket and --ceiling");
  }
  if (o->bs % BENCH_SECTOR) bench_die(1, "--bs must be a multiple of %u", BENCH_SECTOR);
  if (blk_opt.verify && o->bs % STAMP_BLOCK) bench_die(1, "--verify needs --bs a multiple of %u", STAMP_BLOCK);
  if (!o->threads) o->threads = o->queues;
  if (o->threads > o->queues) o->threads = o->queues;

  struct bench_negotiated n = {0};
  struct blk_limits lim = {0};
  int sock = -1;
  if (blk_opt.ceiling) {
    bench_event_idx = o->event_idx_allowed;
    n.features = (1ull << BENCH_F_VERSION_1) | (bench_event_idx ? 1ull << BENCH_F_EVENT_IDX : 0);
    n.queue_num = BENCH_MAX_QUEUES;
  } else {
    char err[256];
    sock = vhu_connect(o->socket_path, err, sizeof err);
    if (sock < 0) bench_die(1, "%s", err);
    negotiate(sock, &n, &lim);
  }

  /* What range to read: the device's capacity, narrowed by --size. */
  uint64_t span = o->size;
  if (lim.capacity_bytes && (!span || lim.capacity_bytes < span)) span = lim.capacity_bytes;
  if (!span) span = blk_opt.ceiling ? 1ull << 30 : 0;
  if (!span) bench_die(1, "the backend did not report its capacity: give --size");
  bench_nblocks = span / o->bs;
  if (!bench_nblocks) bench_die(1, "device of %" PRIu64 " bytes is smaller than one %" PRIu64 "-byte read", span, o->bs);
  bench_sectors_per_io = o->bs / BENCH_SECTOR;
  if (!blk_opt.seg) blk_opt.seg = o->bs;
  if (lim.size_max && blk_opt.seg > lim.size_max) blk_opt.seg = lim.size_max & ~(uint64_t)(BENCH_SECTOR - 1);
  if (!blk_opt.seg) bench_die(1, "backend size_max %u is below one sector", lim.size_max);
  if (lim.seg_max && (o->bs + blk_opt.seg - 1) / blk_opt.seg > lim.seg_max)
    bench_die(1, "a %" PRIu64 "-byte read needs more than seg_max %u segments", o->bs, lim.seg_max);

  bench_setup_memory(descs_per_request(), sizeof(struct slot_meta), "blk-bench-ram");
  build_chains();
  if (!blk_opt.ceiling) bench_configure_rings(sock, &n, 0);

  pthread_t device;
  if (blk_opt.ceiling) {
    /* The in-process device polls: it never wants a kick, and says so before the driver starts. */
    for (unsigned i = 0; i < o->queues; i++) {
      struct bench_queue *q = &bench_queues[i];
      if (bench_event_idx) *ring_avail_event(&q->ring) = BENCH_FAR_AWAY;
      else q->ring.used->flags = VRING_USED_F_NO_NOTIFY;
    }
    if (pthread_create(&device, NULL, device_main, NULL) != 0) bench_die(1, "pthread_create failed");
  }

  struct bench_result r;
  bench_run(sock, 0, bench_driver_main, blk_opt.ceiling ? &device : NULL, &r);
  if (blk_opt.ceiling) {
    __atomic_store_n(&device_stop_flag, 1, __ATOMIC_RELAXED);
    pthread_join(device, NULL);
  }
  if (sock >= 0) close(sock);
  bench_report(&r, blk_opt.ceiling ? "ceiling" : "vhost-user", NULL, &n, span, blk_opt.verify);
  return bench_exit_status(&r);
}
