/*
 * vhost-user frontend messages over a Unix socket: 12-byte header {request, flags, size} in host byte order,
 * payload, fds as SCM_RIGHTS on the same sendmsg.
 */
#define _GNU_SOURCE
#include "vhost_user.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define VHU_VERSION 0x1u
#define VHU_FLAG_REPLY 0x4u
#define VHU_HEADER 12u
#define VHU_MAX_PAYLOAD 4096u
#define VHU_MAX_FDS 8

int vhu_connect(const char *path, char *errbuf, unsigned errlen) {
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof addr.sun_path) {
    snprintf(errbuf, errlen, "socket path too long: %s", path);
    return -1;
  }
  strcpy(addr.sun_path, path);
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) {
    snprintf(errbuf, errlen, "socket: %s", strerror(errno));
    return -1;
  }
  if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
    snprintf(errbuf, errlen, "connect %s: %s", path, strerror(errno));
    close(sock);
    return -1;
  }
  struct timeval tv = {.tv_sec = 10, .tv_usec = 0};
  setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return sock;
}

int vhu_send(int sock, uint32_t request, const void *payload, uint32_t size, const int *fds, int nfds) {
  if (size > VHU_MAX_PAYLOAD || nfds < 0 || nfds > VHU_MAX_FDS) return -1;
  uint8_t buf[VHU_HEADER + VHU_MAX_PAYLOAD];
  uint32_t header[3] = {request, VHU_VERSION, size};
  memcpy(buf, header, VHU_HEADER);
  if (size) memcpy(buf + VHU_HEADER, payload, size);
  size_t total = VHU_HEADER + size, sent = 0;
  union {
    char raw[CMSG_SPACE(sizeof(int) * VHU_MAX_FDS)];
    struct cmsghdr align;
  } control;
  while (sent < total) {
    struct iovec iov = {.iov_base = buf + sent, .iov_len = total - sent};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (sent == 0 && nfds > 0) {
      /* fds ride on the first byte of the message. */
      memset(&control, 0, sizeof control);
      msg.msg_control = control.raw;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
      struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
      memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    sent += (size_t)n;
  }
  return 0;
}

/* Read exactly len bytes; fds that arrive (none are expected) are closed. */
static int read_full(int sock, void *dst, size_t len) {
  size_t got = 0;
  while (got < len) {
    union {
      char raw[CMSG_SPACE(sizeof(int) * VHU_MAX_FDS)];
      struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = (uint8_t *)dst + got, .iov_len = len - got};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.raw, .msg_controllen = sizeof control.raw};
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) {
      errno = ECONNRESET;
      return -1;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int fds[VHU_MAX_FDS];
        if (count > VHU_MAX_FDS) count = VHU_MAX_FDS;
        memcpy(fds, CMSG_DATA(c), count * sizeof(int));
        for (size_t i = 0; i < count; i++) close(fds[i]);
      }
    }
    got += (size_t)n;
  }
  return 0;
}

int vhu_call(int sock, uint32_t request, const void *payload, uint32_t size, void *out, uint32_t max) {
  if (vhu_send(sock, request, payload, size, NULL, 0) < 0) return -1;
  uint32_t header[3];
  if (read_full(sock, header, VHU_HEADER) < 0) return -1;
  if (header[0] != request || header[1] != (VHU_VERSION | VHU_FLAG_REPLY) || header[2] > VHU_MAX_PAYLOAD) {
    fprintf(stderr, "vhost-user: bad reply to request %u: request %u flags 0x%x size %u\n", request, header[0],
            header[1], header[2]);
    errno = EPROTO;
    return -1;
  }
  uint8_t body[VHU_MAX_PAYLOAD];
  if (header[2] && read_full(sock, body, header[2]) < 0) return -1;
  memcpy(out, body, header[2] < max ? header[2] : max);
  return (int)header[2];
}

int vhu_get_u64(int sock, uint32_t request, uint64_t *value) {
  int n = vhu_call(sock, request, NULL, 0, value, sizeof *value);
  if (n != (int)sizeof *value) {
    if (n >= 0) errno = EPROTO;
    return -1;
  }
  return 0;
}

int vhu_set_u64(int sock, uint32_t request, uint64_t value) {
  return vhu_send(sock, request, &value, sizeof value, NULL, 0);
}

int vhu_set_state(int sock, uint32_t request, uint32_t index, uint32_t num) {
  uint32_t state[2] = {index, num};
  return vhu_send(sock, request, state, sizeof state, NULL, 0);
}

int vhu_set_vring_fd(int sock, uint32_t request, uint32_t index, int fd) {
  uint64_t payload = index & 0xffu;
  return vhu_send(sock, request, &payload, sizeof payload, &fd, 1);
}

int vhu_set_vring_addr(int sock, uint32_t index, uint64_t desc, uint64_t used, uint64_t avail) {
  struct {
    uint32_t index, flags;
    uint64_t desc, used, avail, log;
  } addr = {index, 0, desc, used, avail, 0};
  return vhu_send(sock, VHU_SET_VRING_ADDR, &addr, sizeof addr, NULL, 0);
}

int vhu_get_vring_base(int sock, uint32_t index, uint32_t *base) {
  uint32_t state[2] = {index, 0};
  uint32_t reply[2];
  int n = vhu_call(sock, VHU_GET_VRING_BASE, state, sizeof state, reply, sizeof reply);
  if (n != (int)sizeof reply || reply[0] != index) {
    if (n >= 0) errno = EPROTO;
    return -1;
  }
  *base = reply[1];
  return 0;
}

int vhu_set_mem_table(int sock, const struct vhu_region *region, int fd) {
  struct {
    uint32_t nregions, padding;
    struct vhu_region regions[1];
  } table = {1, 0, {*region}};
  return vhu_send(sock, VHU_SET_MEM_TABLE, &table, sizeof table, &fd, 1);
}

int vhu_add_mem_reg(int sock, const struct vhu_region *region, int fd) {
  struct {
    uint64_t padding;
    struct vhu_region region;
  } msg = {0, *region};
  return vhu_send(sock, VHU_ADD_MEM_REG, &msg, sizeof msg, &fd, 1);
}

int vhu_get_config(int sock, void *config, uint32_t size) {
  uint8_t request[12 + 256];
  uint8_t reply[12 + 256];
  if (size > 256) return -1;
  uint32_t head[3] = {0, size, 0};
  memset(request, 0, sizeof request);
  memcpy(request, head, sizeof head);
  int n = vhu_call(sock, VHU_GET_CONFIG, request, 12 + size, reply, sizeof reply);
  if (n != (int)(12 + size)) return -1; /* an empty reply is the backend's "no" */
  memcpy(config, reply + 12, size);
  return 0;
}
