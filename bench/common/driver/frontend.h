/*
 * The frontend the benchmark drivers share (bench/blk/driver/blk_bench.c, bench/scsi/driver/scsi_bench.c): the
 * common options, guest RAM and split rings in one memfd, feature negotiation and ring setup over vhost-user, the
 * measured window with its driver threads, and the one-line JSON report. What differs per device (the request
 * records and their descriptor chains, device features, completion checks) stays in each driver; the per-request
 * loop is in poll_loop.h.
 */
#ifndef BENCH_FRONTEND_H
#define BENCH_FRONTEND_H

#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>

#include "ring.h"

#define BENCH_MAX_QUEUES 64
#define BENCH_SECTOR 512u
#define BENCH_FAR_AWAY 0x8000u /* an event index the other side can never cross */
#define BENCH_DRAIN_SECONDS 5.0

/* Device-independent virtio feature bits. */
#define BENCH_F_EVENT_IDX 29
#define BENCH_F_VERSION_1 32

/* Options every driver takes (bench_parse_args). */
struct bench_options {
  const char *socket_path;
  unsigned queues, threads, qd, queue_size;
  uint64_t bs, size;
  int seq;
  double seconds, warmup;
  long backend_pid;
  int event_idx_allowed;
  uint64_t seed;
  int pin_driver;
};

/* One request queue: its ring and the driver's state for it. Slot s owns descriptors s*dps .. s*dps+dps-1,
 * meta record s and data buffer s for the whole run, so only heads move through the rings. */
struct bench_queue {
  unsigned index; /* among the driver's queues; the virtqueue is first_vq + index */
  struct split_ring ring;
  uint16_t mask;
  int kickfd, callfd;
  uint16_t avail_idx; /* next free avail slot (shadow) */
  uint16_t published; /* avail idx last made visible */
  uint16_t last_used;
  unsigned dps;    /* descriptors per request */
  unsigned nslots; /* = queue depth */
  unsigned inflight;
  uint8_t *meta; /* nslots records of meta_size bytes: request headers and status */
  size_t meta_size;
  uint8_t *data; /* nslots buffers of bs bytes */
  uint8_t *busy;
  uint64_t seq_next, rng;
  uint64_t completed, errors, verify_failures, len_mismatches, kicks;
  /* offsets within guest RAM, which are also its guest-physical addresses */
  size_t desc_off, avail_off, used_off, meta_off, data_off;
};

/* A driver thread and the queues it serves. */
struct bench_thread {
  pthread_t tid;
  unsigned nq;
  struct bench_queue *queues[BENCH_MAX_QUEUES];
  int cpu;
  int drained;
  uint64_t progress __attribute__((aligned(64))); /* completions so far, read by the main thread */
  char pad[56];
};

/* What was negotiated with the backend. */
struct bench_negotiated {
  uint64_t offered, features, protocol_features;
  unsigned queue_num; /* virtqueues the backend has (1 without MQ) */
};

/* The measured window and the checks after it. */
struct bench_result {
  double seconds;
  uint64_t ios;
  double iops;
  double backend_cpu, driver_cpu, system_busy, foreign; /* seconds; -1 when unknown */
  uint64_t completed, errors, verify_failures, len_mismatches, kicks, calls;
  int drained, bases_checked, bases_ok;
};

extern const char *bench_prog; /* prefix of messages */
extern struct bench_options bench_opt;
extern struct bench_queue bench_queues[BENCH_MAX_QUEUES];
extern uint8_t *bench_ram;
extern size_t bench_ram_size;
extern int bench_ram_fd;
extern int bench_event_idx;
extern uint64_t bench_nblocks, bench_sectors_per_io;
extern int bench_stop_flag;

void bench_die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
/* Die (exit 1) naming `what` when rc < 0. */
void bench_check(int rc, const char *what);
double bench_now(void);
void bench_sleep(double s);
void bench_pin_self(int cpu);
size_t bench_align_up(size_t v, size_t a);

/* Busy-poll, but give the CPU away after ~20 µs of nothing: on a machine with more runnable threads than
 * cores, a spinning pair that never yields would wait a whole scheduler tick for its partner. */
#define BENCH_IDLE_SPINS_BEFORE_YIELD 512u
static inline void bench_idle_wait(unsigned *idle) {
  if (++*idle < BENCH_IDLE_SPINS_BEFORE_YIELD) {
    cpu_relax();
  } else {
    *idle = 0;
    sched_yield();
  }
}

uint64_t bench_parse_size(const char *s, const char *name);
unsigned bench_parse_uint(const char *s, const char *name, unsigned min, unsigned max);
double bench_parse_seconds(const char *s, const char *name);

/* Parse argv into bench_opt: --socket --queues --threads --qd --bs --pattern --time --warmup --size --queue-size
 * --backend-pid --no-event-idx --seed --pin-driver --help, plus the driver's `extra` options (zero-terminated,
 * codes distinct from those above), each handed to `handle`, which returns 0 for a code it does not know.
 * -h prints `usage` and exits 0; a bad option prints it and exits 1. */
void bench_parse_args(int argc, char **argv, const struct option *extra, int (*handle)(int code, const char *arg),
                      void (*usage)(void));

/* First half of feature negotiation: GET_FEATURES (VERSION_1 required), then, if offered, the protocol features
 * in want_pf (GET/SET_PROTOCOL_FEATURES) and GET_QUEUE_NUM under MQ (capped at max_queue_num). */
void bench_negotiate_start(int sock, uint64_t want_pf, unsigned max_queue_num, struct bench_negotiated *n);
/* Second half: SET_OWNER, then SET_FEATURES with the offered features in `want`; sets bench_event_idx. */
void bench_negotiate_finish(int sock, uint64_t want, struct bench_negotiated *n);

/* Lay out every queue's rings (each part on its own pages), meta records and data buffers in one memfd, and
 * initialise bench_queues (not the descriptor chains: the driver builds those), their random and sequential
 * positions (bench_nblocks must be set) and their kick and call eventfds. The ring size is --queue-size, or the
 * smallest power of two from 256 that holds qd * dps descriptors. */
void bench_setup_memory(unsigned dps, size_t meta_size, const char *memfd_name);

/* Hand guest RAM and the rings of every queue (virtqueues first_vq..) to the backend, enable them, set the
 * status, and end with a request that replies, as a barrier. */
void bench_configure_rings(int sock, const struct bench_negotiated *n, unsigned first_vq);

/* Start bench_opt.threads threads running thread_main (queues shared out round-robin), measure a window of
 * bench_opt.seconds after bench_opt.warmup, stop and drain them, stop every ring with GET_VRING_BASE (when
 * sock >= 0) checking the backend's index against the driver's, and sum the queues' counters. The backend's CPU
 * is that of bench_opt.backend_pid, or of `device` (an in-process device thread) when not NULL. */
void bench_run(int sock, unsigned first_vq, void *(*thread_main)(void *), const pthread_t *device, struct bench_result *r);

/* Print the one-line JSON report on stdout; `transport` NULL leaves that field out. */
void bench_report(const struct bench_result *r, const char *mode, const char *transport, const struct bench_negotiated *n,
                  uint64_t span, int verify);

/* The exit status for a run: dies with 3 when requests were left in flight, 2 when reads failed or did not
 * verify, 3 when a ring stopped at the wrong index, else 0. */
int bench_exit_status(const struct bench_result *r);

#endif
