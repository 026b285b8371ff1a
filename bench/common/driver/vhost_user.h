/*
 * A minimal vhost-user frontend connection: the messages the benchmark drivers need, written from
 * docs/interop/vhost-user.rst. No REPLY_ACK: only GET_* requests (and GET_VRING_BASE) read a reply.
 */
#ifndef BENCH_VHOST_USER_H
#define BENCH_VHOST_USER_H

#include <stdint.h>

enum {
  VHU_GET_FEATURES = 1,
  VHU_SET_FEATURES = 2,
  VHU_SET_OWNER = 3,
  VHU_SET_MEM_TABLE = 5,
  VHU_SET_VRING_NUM = 8,
  VHU_SET_VRING_ADDR = 9,
  VHU_SET_VRING_BASE = 10,
  VHU_GET_VRING_BASE = 11,
  VHU_SET_VRING_KICK = 12,
  VHU_SET_VRING_CALL = 13,
  VHU_GET_PROTOCOL_FEATURES = 15,
  VHU_SET_PROTOCOL_FEATURES = 16,
  VHU_GET_QUEUE_NUM = 17,
  VHU_SET_VRING_ENABLE = 18,
  VHU_GET_CONFIG = 24,
  VHU_GET_MAX_MEM_SLOTS = 36,
  VHU_ADD_MEM_REG = 37,
  VHU_SET_STATUS = 39,
};

enum {
  VHU_PF_MQ = 0,
  VHU_PF_REPLY_ACK = 3,
  VHU_PF_CONFIG = 9,
  VHU_PF_CONFIGURE_MEM_SLOTS = 15,
  VHU_PF_STATUS = 16,
};

#define VHU_F_PROTOCOL_FEATURES 30

/* One shared-memory region as the backend must map it. */
struct vhu_region {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t mmap_offset;
};

/* Connect to a backend's listening socket; returns the fd or -1 (message in errbuf). A receive timeout
 * guards every reply so a stuck backend cannot hang the benchmark. */
int vhu_connect(const char *path, char *errbuf, unsigned errlen);

/* Send one request with an optional payload and fds. 0 on success, -1 on error. */
int vhu_send(int sock, uint32_t request, const void *payload, uint32_t size, const int *fds, int nfds);

/* Send a request and read its reply payload into out (at most max bytes); returns the reply payload size or -1.
 * The reply must carry the same request number and flags version 1 | REPLY. */
int vhu_call(int sock, uint32_t request, const void *payload, uint32_t size, void *out, uint32_t max);

/* Shorthands. */
int vhu_get_u64(int sock, uint32_t request, uint64_t *value);
int vhu_set_u64(int sock, uint32_t request, uint64_t value);
int vhu_set_state(int sock, uint32_t request, uint32_t index, uint32_t num);
int vhu_set_vring_fd(int sock, uint32_t request, uint32_t index, int fd);
int vhu_set_vring_addr(int sock, uint32_t index, uint64_t desc, uint64_t used, uint64_t avail);
int vhu_get_vring_base(int sock, uint32_t index, uint32_t *base);
int vhu_set_mem_table(int sock, const struct vhu_region *region, int fd);
int vhu_add_mem_reg(int sock, const struct vhu_region *region, int fd);
/* Read size bytes of config space at offset 0; returns 0, or -1 when the backend refuses (empty reply). */
int vhu_get_config(int sock, void *config, uint32_t size);

#endif
