/*
 * The driver threads' loop: keep every slot of every queue in flight, busy-poll the used rings, resubmit each
 * completed slot, and drain at the end. Shared by the drivers as a template, so the per-request path stays
 * inlined: a driver includes this file once and defines the two hooks declared below.
 */
#ifndef BENCH_POLL_LOOP_H
#define BENCH_POLL_LOOP_H

#include <unistd.h>

#include "frontend.h"

/* Hooks the including driver defines. dev_fill: set up slot's request to read request-sized block `block`
 * (the chain is prebuilt). dev_complete: check a completed slot (its status, data and the used length `len`),
 * counting into q->errors, q->verify_failures and q->len_mismatches. */
static inline void dev_fill(struct bench_queue *q, unsigned slot, uint64_t block);
static inline void dev_complete(struct bench_queue *q, unsigned slot, uint32_t len);

static inline uint64_t bench_next_block(struct bench_queue *q) {
  if (bench_opt.seq) {
    uint64_t b = q->seq_next;
    q->seq_next = b + 1 == bench_nblocks ? 0 : b + 1;
    return b;
  }
  uint64_t x = q->rng; /* xorshift64* */
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  q->rng = x;
  return (x * 0x2545F4914F6CDD1Dull) % bench_nblocks;
}

/* Fill a slot's request and put its chain head in the avail ring (not yet visible: see bench_publish). */
static inline void bench_submit(struct bench_queue *q, unsigned slot) {
  dev_fill(q, slot, bench_next_block(q));
  q->ring.avail->ring[q->avail_idx & q->mask] = (uint16_t)(slot * q->dps);
  q->avail_idx++;
  q->busy[slot] = 1;
  q->inflight++;
}

/* Make new avail entries visible, then kick only if the device asked for it. */
static inline void bench_publish(struct bench_queue *q) {
  uint16_t new_idx = q->avail_idx, old = q->published;
  if (new_idx == old) return;
  store_release16(&q->ring.avail->idx, new_idx);
  q->published = new_idx;
  full_fence(); /* our idx store before the device's event/flags load */
  int kick;
  if (bench_event_idx) kick = ring_need_event(load_relaxed16(ring_avail_event(&q->ring)), new_idx, old);
  else kick = !(load_relaxed16(&q->ring.used->flags) & VRING_USED_F_NO_NOTIFY);
  if (kick) {
    uint64_t one = 1;
    if (write(q->kickfd, &one, sizeof one) == sizeof one) q->kicks++;
  }
}

/* Consume used entries; resubmit each freed slot unless draining. Returns how many completed. */
static inline unsigned bench_reap(struct bench_queue *q, int resubmit) {
  uint16_t used_idx = load_acquire16(&q->ring.used->idx);
  uint16_t pending = (uint16_t)(used_idx - q->last_used);
  if (!pending) return 0;
  if (pending > q->inflight)
    bench_die(3, "queue %u: device published %u used entries with %u requests in flight", q->index, pending, q->inflight);
  for (; q->last_used != used_idx; q->last_used++) {
    struct vring_used_elem e = q->ring.used->ring[q->last_used & q->mask];
    unsigned slot = e.id / q->dps;
    if (e.id % q->dps || slot >= q->nslots || !q->busy[slot])
      bench_die(3, "queue %u: device returned descriptor %u, which is not a request head in flight", q->index, e.id);
    q->busy[slot] = 0;
    q->inflight--;
    dev_complete(q, slot, e.len);
    q->completed++;
    if (resubmit) bench_submit(q, slot);
  }
  /* We poll: keep used_event out of the device's reach so it never needs to signal. */
  if (bench_event_idx) store_relaxed16(ring_used_event(&q->ring), (uint16_t)(q->last_used + BENCH_FAR_AWAY));
  return pending;
}

/* A driver thread (bench_run's thread_main). */
static void *bench_driver_main(void *arg) {
  struct bench_thread *t = arg;
  bench_pin_self(t->cpu);
  for (unsigned i = 0; i < t->nq; i++) {
    struct bench_queue *q = t->queues[i];
    for (unsigned s = 0; s < q->nslots; s++) bench_submit(q, s);
    bench_publish(q);
  }
  uint64_t done = 0;
  unsigned idle = 0;
  while (!__atomic_load_n(&bench_stop_flag, __ATOMIC_RELAXED)) {
    unsigned got = 0;
    for (unsigned i = 0; i < t->nq; i++) {
      struct bench_queue *q = t->queues[i];
      unsigned n = bench_reap(q, 1);
      if (n) {
        bench_publish(q);
        got += n;
      }
    }
    if (got) {
      done += got;
      idle = 0;
      __atomic_store_n(&t->progress, done, __ATOMIC_RELAXED);
    } else {
      bench_idle_wait(&idle);
    }
  }
  /* Drain: let every request in flight complete so the rings end consistent. */
  double deadline = bench_now() + BENCH_DRAIN_SECONDS;
  for (unsigned spins = 0;; spins++) {
    unsigned left = 0;
    for (unsigned i = 0; i < t->nq; i++) {
      bench_reap(t->queues[i], 0);
      left += t->queues[i]->inflight;
    }
    if (!left) {
      t->drained = 1;
      break;
    }
    if ((spins & 1023) == 0 && bench_now() > deadline) break;
    bench_idle_wait(&idle);
  }
  return NULL;
}

#endif
