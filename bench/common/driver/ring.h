/*
 * Split virtqueue layout (virtio 1.2, section 2.7) and the memory-ordering helpers the driver and the
 * in-process fake device share. Little-endian host assumed (x86-64, aarch64): fields are used in place.
 */
#ifndef BENCH_RING_H
#define BENCH_RING_H

#include <stddef.h>
#include <stdint.h>

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

struct vring_desc {
  uint64_t addr; /* guest-physical */
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

struct vring_used_elem {
  uint32_t id;
  uint32_t len;
};

/* avail: flags, idx, ring[size], used_event. */
struct vring_avail {
  uint16_t flags;
  uint16_t idx;
  uint16_t ring[];
};

/* used: flags, idx, ring[size], avail_event. */
struct vring_used {
  uint16_t flags;
  uint16_t idx;
  struct vring_used_elem ring[];
};

/* One split ring as both sides see it (pointers into shared memory). */
struct split_ring {
  uint16_t size; /* a power of two */
  struct vring_desc *desc;
  struct vring_avail *avail;
  struct vring_used *used;
};

static inline size_t ring_desc_bytes(unsigned size) { return 16u * size; }
static inline size_t ring_avail_bytes(unsigned size) { return 6u + 2u * size; }
static inline size_t ring_used_bytes(unsigned size) { return 6u + 8u * size; }

/* The EVENT_IDX fields live just past each ring. */
static inline uint16_t *ring_used_event(const struct split_ring *r) { return &r->avail->ring[r->size]; }
static inline uint16_t *ring_avail_event(const struct split_ring *r) { return (uint16_t *)&r->used->ring[r->size]; }

/* Index publication is release/acquire; checking the other side's event index after publishing needs a full
 * fence (store->load ordering), as in virtio 1.2 2.7.7.2 / 2.7.10.1. */
static inline uint16_t load_acquire16(const uint16_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint16_t load_relaxed16(const uint16_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void store_release16(uint16_t *p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void store_relaxed16(uint16_t *p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* Does moving an index from old to new_idx cross the other side's event index? (virtio 1.2 2.7.10.1) */
static inline int ring_need_event(uint16_t event, uint16_t new_idx, uint16_t old) {
  return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#endif
}

#endif
