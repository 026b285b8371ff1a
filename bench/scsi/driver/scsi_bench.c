/*
 * scsi-bench: a minimal virtio-scsi driver over vhost-user that keeps a fixed number of READ(16) commands in
 * flight per request queue and busy-polls the used rings, so that the backend, not the driver, is measured.
 * It is the virtio-scsi twin of bench/blk/driver/blk_bench.c: both are built on bench/common/driver/ (the
 * vhost-user frontend, the threads, the polling loop and the one-line JSON report), take the same options (those
 * that apply) and print the same report, so that one benchmark can put virtio-blk and virtio-scsi side by side.
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
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/driver/frontend.h"
#include "../../common/driver/poll_loop.h"
#include "../../common/driver/vhost_user.h"

#define FIRST_REQUEST_QUEUE 2
#define CDB_SIZE 32
#define SENSE_SIZE 96
#define REQ_HEADER (19 + CDB_SIZE)  /* lun[8], id, task_attr, prio, crn, cdb[32] */
#define RESP_HEADER (12 + SENSE_SIZE) /* sense_len, residual, status_qualifier, status, response, sense[96] */

/* Per-command request and response, preallocated per slot. Cache-line aligned, as Linux's struct virtio_scsi_cmd
 * is: the 51 header bytes never straddle two lines, and no two slots share one. */
struct slot_meta {
  uint8_t req[64];  /* REQ_HEADER bytes used */
  uint8_t resp[112]; /* RESP_HEADER bytes used */
} __attribute__((aligned(64)));

/* Options beyond bench_opt's. */
static struct {
  unsigned target, lun;
} scsi_opt;

/* Command tags, per queue. */
static uint64_t tags[BENCH_MAX_QUEUES];

static inline struct slot_meta *meta_of(const struct bench_queue *q, unsigned slot) {
  return (struct slot_meta *)q->meta + slot;
}

static inline void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* ---- the per-request hooks of poll_loop.h --------------------------------------------------------------------- */

/* A new tag and LBA in the slot's READ(16); the response poisoned so that it must be overwritten. */
static inline void dev_fill(struct bench_queue *q, unsigned slot, uint64_t block) {
  struct slot_meta *m = meta_of(q, slot);
  uint64_t lba = block * bench_sectors_per_io;
  uint64_t tag = ++tags[q->index];
  memcpy(m->req + 8, &tag, 8);
  uint8_t *cdb = m->req + 19;
  put_be32(cdb + 2, (uint32_t)(lba >> 32));
  put_be32(cdb + 6, (uint32_t)lba);
  m->resp[11] = 0xff; /* response */
  m->resp[10] = 0xff; /* status */
}

static inline void dev_complete(struct bench_queue *q, unsigned slot, uint32_t len) {
  const uint8_t *r = meta_of(q, slot)->resp;
  if (r[11] != 0 || r[10] != 0) {
    if (q->errors < 3) fprintf(stderr, "scsi-bench: queue %u: response %u, status 0x%02x\n", q->index, r[11], r[10]);
    q->errors++;
  }
  if (len != RESP_HEADER + bench_opt.bs) q->len_mismatches++;
}

/* ---- setup --------------------------------------------------------------------------------------------------- */

/* Every slot's chain: request (LUN and READ(16) prefilled), response with room for sense, data. */
static void build_chains(void) {
  for (unsigned i = 0; i < bench_opt.queues; i++) {
    struct bench_queue *q = &bench_queues[i];
    for (unsigned s = 0; s < q->nslots; s++) {
      struct slot_meta *m = meta_of(q, s);
      /* LUN field: 1, target, then the LUN in flat addressing (as Linux sends it). */
      m->req[0] = 1;
      m->req[1] = (uint8_t)scsi_opt.target;
      m->req[2] = (uint8_t)(0x40 | (scsi_opt.lun >> 8));
      m->req[3] = (uint8_t)scsi_opt.lun;
      uint8_t *cdb = m->req + 19;
      cdb[0] = 0x88; /* READ(16) */
      put_be32(cdb + 10, (uint32_t)bench_sectors_per_io);
      unsigned h = s * q->dps;
      uint64_t meta_gpa = q->meta_off + (uint64_t)s * sizeof(struct slot_meta);
      q->ring.desc[h] = (struct vring_desc){meta_gpa, REQ_HEADER, VRING_DESC_F_NEXT, (uint16_t)(h + 1)};
      q->ring.desc[h + 1] = (struct vring_desc){meta_gpa + offsetof(struct slot_meta, resp), RESP_HEADER,
                                                VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, (uint16_t)(h + 2)};
      q->ring.desc[h + 2] = (struct vring_desc){q->data_off + (uint64_t)s * bench_opt.bs, (uint32_t)bench_opt.bs, VRING_DESC_F_WRITE, 0};
    }
  }
}

static void negotiate(int sock, struct bench_negotiated *n) {
  bench_negotiate_start(sock, (1ull << VHU_PF_MQ) | (1ull << VHU_PF_CONFIGURE_MEM_SLOTS) | (1ull << VHU_PF_STATUS),
                        BENCH_MAX_QUEUES + FIRST_REQUEST_QUEUE, n);
  if (bench_opt.queues + FIRST_REQUEST_QUEUE > n->queue_num)
    bench_die(1, "%u request queues asked, the backend has %u virtqueues", bench_opt.queues, n->queue_num);
  bench_negotiate_finish(sock, (1ull << BENCH_F_VERSION_1) | (1ull << VHU_F_PROTOCOL_FEATURES), n);
}

/* ---- command line -------------------------------------------------------------------------------------------- */

static void usage(void) {
  fputs("usage: scsi-bench --socket PATH --size BYTES [--queues N] [--threads N] [--qd N] [--bs BYTES]\n"
        "         [--pattern rand|seq] [--time SEC] [--warmup SEC] [--queue-size N] [--backend-pid PID]\n"
        "         [--no-event-idx] [--seed N] [--pin-driver CPU] [--target T] [--lun L]\n",
        stderr);
}

static const struct option scsi_options[] = {
    {"target", required_argument, 0, 'g'}, {"lun", required_argument, 0, 'l'}, {0, 0, 0, 0},
};

static int scsi_option(int c, const char *arg) {
  switch (c) {
  case 'g': scsi_opt.target = bench_parse_uint(arg, "target", 0, 255); return 1;
  case 'l': scsi_opt.lun = bench_parse_uint(arg, "lun", 0, 16383); return 1;
  default: return 0;
  }
}

/* ---- main ---------------------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
  bench_prog = "scsi-bench";
  signal(SIGPIPE, SIG_IGN);
  bench_parse_args(argc, argv, scsi_options, scsi_option, usage);
  struct bench_options *o = &bench_opt;
  if (!o->socket_path || !o->size) {
    usage();
    bench_die(1, "--socket and --size are required");
  }
  if (o->bs % BENCH_SECTOR || o->bs > 0xffffffffu) bench_die(1, "--bs must be a multiple of %u", BENCH_SECTOR);
  if (!o->threads) o->threads = o->queues;
  if (o->threads > o->queues) o->threads = o->queues;
  bench_nblocks = o->size / o->bs;
  if (!bench_nblocks) bench_die(1, "device of %" PRIu64 " bytes is smaller than one %" PRIu64 "-byte read", o->size, o->bs);
  bench_sectors_per_io = o->bs / BENCH_SECTOR;

  char err[256];
  int sock = vhu_connect(o->socket_path, err, sizeof err);
  if (sock < 0) bench_die(1, "%s", err);
  struct bench_negotiated n;
  negotiate(sock, &n);
  bench_setup_memory(3, sizeof(struct slot_meta), "scsi-bench-ram");
  build_chains();
  bench_configure_rings(sock, &n, FIRST_REQUEST_QUEUE);

  struct bench_result r;
  bench_run(sock, FIRST_REQUEST_QUEUE, bench_driver_main, NULL, &r);
  close(sock);
  bench_report(&r, "vhost-user", "scsi", &n, bench_nblocks * o->bs, 0);
  return bench_exit_status(&r);
}
