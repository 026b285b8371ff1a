// vhost_native: the syscalls Node lacks, as a thin Node-API addon.
//
// Contract: src/native/index.ts (NativeBinding). Every failed syscall throws a JS Error with
// `code` ('EBADF'...), positive `errno` and `syscall`; would-block comes back as a sentinel.
// No C++ exceptions, no per-process JS state: everything JS-related lives in a per-env
// EnvData so the addon loads in any number of worker_threads. The only process-wide state is
// the mmap registry, which must be shared because SharedArrayBuffers cross threads.
//
// Files: common.h (errors, argument checks, EnvData), uring.cc (io_uring for file storage), this
// file (everything else, the fd watchers and the module's set-up).

#include <node_api.h>
#include <uv.h>
#include <v8.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <pty.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <signal.h>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common.h"

using namespace vhost;

namespace {

// Linux's SCM_MAX_FD: the kernel refuses more fds in one message.
constexpr size_t kMaxFds = 253;

constexpr int32_t kReadable = 1;
constexpr int32_t kWritable = 2;

// ---------------------------------------------------------------------------------------------
// Sockets

bool FillSockaddr(const std::string& path, sockaddr_un* addr) {
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr->sun_path) return false;
  memcpy(addr->sun_path, path.data(), path.size());
  return true;
}

napi_value UnixListen(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!Args(env, info, argv)) return nullptr;
  std::string path;
  int32_t backlog;
  if (!ArgString(env, argv[0], "path", &path) || !ArgInt32(env, argv[1], "backlog", &backlog))
    return nullptr;
  sockaddr_un addr;
  if (!FillSockaddr(path, &addr)) return ThrowErrno(env, "bind", path.empty() ? EINVAL : ENAMETOOLONG, path.c_str());

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(env, "socket", errno);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "bind", err, path.c_str());
  }
  if (listen(fd, backlog) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "listen", err, path.c_str());
  }
  return Int(env, fd);
}

napi_value UnixAccept(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd)) return nullptr;
  int conn;
  do {
    conn = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (conn < 0 && (errno == EINTR || errno == ECONNABORTED));
  if (conn < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Int(env, -1);
    return ThrowErrno(env, "accept4", errno);
  }
  return Int(env, conn);
}

napi_value UnixConnect(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  std::string path;
  if (!Args(env, info, argv) || !ArgString(env, argv[0], "path", &path)) return nullptr;
  sockaddr_un addr;
  if (!FillSockaddr(path, &addr))
    return ThrowErrno(env, "connect", path.empty() ? EINVAL : ENAMETOOLONG, path.c_str());

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(env, "socket", errno);
  int r;
  // An interrupted AF_UNIX connect leaves the socket unconnected, so retrying is correct.
  do {
    r = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "connect", err, path.c_str());
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "fcntl", err);
  }
  return Int(env, fd);
}

napi_value SocketPair(napi_env env, napi_callback_info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    return ThrowErrno(env, "socketpair", errno);
  napi_value arr;
  if (napi_create_array_with_length(env, 2, &arr) != napi_ok ||
      napi_set_element(env, arr, 0, Int(env, sv[0])) != napi_ok ||
      napi_set_element(env, arr, 1, Int(env, sv[1])) != napi_ok) {
    close(sv[0]);
    close(sv[1]);
    EnsureThrown(env);
    return nullptr;
  }
  return arr;
}

napi_value SendMsg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t fd;
  uint8_t* data;
  size_t len;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd) ||
      !ArgBytes(env, argv[1], "data", &data, &len))
    return nullptr;
  bool is_array = false;
  napi_is_array(env, argv[2], &is_array);
  if (!is_array) return ThrowType(env, "The \"fds\" argument must be an array of integers");
  uint32_t nfds = 0;
  NAPI_OK(napi_get_array_length(env, argv[2], &nfds));
  if (nfds > kMaxFds) return ThrowErrno(env, "sendmsg", EINVAL, nullptr, "more than 253 fds");
  // On a stream socket the fds ride on the first byte: with no byte they would be dropped.
  if (nfds > 0 && len == 0)
    return ThrowErrno(env, "sendmsg", EINVAL, nullptr, "fds need at least one data byte");

  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr msg;
  memset(&msg, 0, sizeof msg);
  iovec iov = {data, len};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    int* out = reinterpret_cast<int*>(CMSG_DATA(cmsg));
    for (uint32_t i = 0; i < nfds; i++) {
      napi_value el;
      NAPI_OK(napi_get_element(env, argv[2], i, &el));
      int32_t one;
      if (!ArgInt32(env, el, "fds[i]", &one)) return nullptr;
      memcpy(out + i, &one, sizeof one);
    }
  }
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Int(env, -1);
    return ThrowErrno(env, "sendmsg", errno);
  }
  return Int(env, n);
}

napi_value RecvMsg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t fd;
  uint8_t* data;
  size_t len;
  uint64_t max_fds;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd) ||
      !ArgBytes(env, argv[1], "buf", &data, &len) ||
      !ArgUint(env, argv[2], "maxFds", kMaxFds, &max_fds))
    return nullptr;

  // Always leave room for the kernel maximum so we see every fd and can close the surplus
  // ourselves, whatever maxFds says.
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr msg;
  memset(&msg, 0, sizeof msg);
  iovec iov = {data, len};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      napi_value null_v;
      napi_get_null(env, &null_v);
      return null_v;
    }
    return ThrowErrno(env, "recvmsg", errno);
  }

  std::vector<int> fds;
  bool truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* p = CMSG_DATA(c);
    for (size_t i = 0; i < count; i++) {
      int one;
      memcpy(&one, p + i * sizeof(int), sizeof one);
      if (fds.size() < max_fds) {
        fds.push_back(one);
      } else {
        close(one);
        truncated = true;
      }
    }
  }

  napi_value result, fds_v;
  bool ok = napi_create_object(env, &result) == napi_ok &&
            napi_create_array_with_length(env, fds.size(), &fds_v) == napi_ok;
  for (size_t i = 0; ok && i < fds.size(); i++)
    ok = napi_set_element(env, fds_v, static_cast<uint32_t>(i), Int(env, fds[i])) == napi_ok;
  ok = ok && napi_set_named_property(env, result, "bytes", Int(env, n)) == napi_ok &&
       napi_set_named_property(env, result, "fds", fds_v) == napi_ok &&
       napi_set_named_property(env, result, "fdsTruncated", Bool(env, truncated)) == napi_ok;
  if (!ok) {
    for (int f : fds) close(f);  // never leak received fds
    EnsureThrown(env);
    return nullptr;
  }
  return result;
}

napi_value IsListeningUnixSocket(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd)) return nullptr;
  int domain = 0, type = 0, listening = 0;
  socklen_t l = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l) < 0) {
    if (errno == ENOTSOCK) return Bool(env, false);
    return ThrowErrno(env, "getsockopt", errno);
  }
  l = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) < 0) return ThrowErrno(env, "getsockopt", errno);
  l = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l) < 0)
    return ThrowErrno(env, "getsockopt", errno);
  return Bool(env, domain == AF_UNIX && type == SOCK_STREAM && listening == 1);
}

// ---------------------------------------------------------------------------------------------
// Plain fds

napi_value SetNonBlocking(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd;
  bool on;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd) || !ArgBool(env, argv[1], "on", &on))
    return nullptr;
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return ThrowErrno(env, "fcntl", errno);
  int want = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (want != flags && fcntl(fd, F_SETFL, want) < 0) return ThrowErrno(env, "fcntl", errno);
  return Undefined(env);
}

napi_value Close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd)) return nullptr;
  // Linux releases the fd even when close reports EINTR: retrying could close a reused number.
  if (close(fd) < 0 && errno != EINTR) return ThrowErrno(env, "close", errno);
  return Undefined(env);
}

napi_value Fstat(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd)) return nullptr;
  struct stat st;
  if (fstat(fd, &st) < 0) return ThrowErrno(env, "fstat", errno);
  napi_value result, size_v, mode_v;
  NAPI_OK(napi_create_object(env, &result));
  NAPI_OK(napi_create_double(env, static_cast<double>(st.st_size), &size_v));
  NAPI_OK(napi_create_uint32(env, st.st_mode, &mode_v));
  NAPI_OK(napi_set_named_property(env, result, "size", size_v));
  NAPI_OK(napi_set_named_property(env, result, "mode", mode_v));
  return result;
}

// fallocate(2): punch holes and zero ranges for block storage. Synchronous: these are metadata operations.
napi_value Fallocate(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t fd, mode;
  uint64_t offset, length;
  const double kMax = 9007199254740991.0;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd) || !ArgInt32(env, argv[1], "mode", &mode) ||
      !ArgUint(env, argv[2], "offset", kMax, &offset) || !ArgUint(env, argv[3], "length", kMax, &length))
    return nullptr;
  int rc;
  do {
    rc = fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length));
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) return ThrowErrno(env, "fallocate", errno);
  return Undefined(env);
}

// Open (creating if needed) a TAP interface: /dev/net/tun + TUNSETIFF with IFF_TAP|IFF_NO_PI, non-blocking.
napi_value TapOpen(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  std::string name;
  bool vnetHdr;
  if (!Args(env, info, argv) || !ArgString(env, argv[0], "name", &name) || !ArgBool(env, argv[1], "vnetHdr", &vnetHdr))
    return nullptr;
  if (name.size() >= IFNAMSIZ) return ThrowErrno(env, "TUNSETIFF", ENAMETOOLONG);
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, "open", errno, "/dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnetHdr ? IFF_VNET_HDR : 0);
  memcpy(ifr.ifr_name, name.data(), name.size());
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "TUNSETIFF", err);
  }
  napi_value result, fd_v, name_v;
  NAPI_OK(napi_create_object(env, &result));
  NAPI_OK(napi_create_int32(env, fd, &fd_v));
  NAPI_OK(napi_create_string_utf8(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ), &name_v));
  NAPI_OK(napi_set_named_property(env, result, "fd", fd_v));
  NAPI_OK(napi_set_named_property(env, result, "name", name_v));
  return result;
}

// openpty(3): a pseudo-terminal pair for console ports; both ends CLOEXEC, the controller non-blocking.
napi_value OpenPty(napi_env env, napi_callback_info) {
  int controller, terminal;
  char path[256];
  if (openpty(&controller, &terminal, path, nullptr, nullptr) < 0) return ThrowErrno(env, "openpty", errno);
  fcntl(controller, F_SETFD, FD_CLOEXEC);
  fcntl(terminal, F_SETFD, FD_CLOEXEC);
  int flags = fcntl(controller, F_GETFL);
  if (flags < 0 || fcntl(controller, F_SETFL, flags | O_NONBLOCK) < 0) {
    int err = errno;
    close(controller);
    close(terminal);
    return ThrowErrno(env, "fcntl", err);
  }
  napi_value result, c_v, t_v, p_v;
  NAPI_OK(napi_create_object(env, &result));
  NAPI_OK(napi_create_int32(env, controller, &c_v));
  NAPI_OK(napi_create_int32(env, terminal, &t_v));
  NAPI_OK(napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &p_v));
  NAPI_OK(napi_set_named_property(env, result, "controller", c_v));
  NAPI_OK(napi_set_named_property(env, result, "terminal", t_v));
  NAPI_OK(napi_set_named_property(env, result, "path", p_v));
  return result;
}

napi_value EventFd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint64_t initval;
  if (!Args(env, info, argv) || !ArgUint(env, argv[0], "initval", 4294967295.0, &initval)) return nullptr;
  int fd = eventfd(static_cast<unsigned>(initval), EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, "eventfd", errno);
  return Int(env, fd);
}

napi_value EventFdRead(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd)) return nullptr;
  uint64_t value = 0;
  ssize_t n;
  do {
    n = read(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Int(env, 0);
    return ThrowErrno(env, "read", errno);
  }
  if (n != sizeof value) return ThrowErrno(env, "read", EINVAL);  // not an eventfd
  napi_value v;
  NAPI_OK(napi_create_double(env, static_cast<double>(value), &v));  // exact below 2^53
  return v;
}

napi_value EventFdWrite(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd;
  uint64_t value;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd) ||
      !ArgUint(env, argv[1], "value", kMaxSafeInteger, &value))
    return nullptr;
  ssize_t n;
  do {
    n = write(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Bool(env, false);
    return ThrowErrno(env, "write", errno);
  }
  return Bool(env, true);
}

napi_value MemfdCreate(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  std::string name;
  uint64_t size;
  if (!Args(env, info, argv) || !ArgString(env, argv[0], "name", &name) ||
      !ArgUint(env, argv[1], "size", kMaxSafeInteger, &size))
    return nullptr;
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return ThrowErrno(env, "memfd_create", errno);
  if (ftruncate(fd, static_cast<off_t>(size)) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "ftruncate", err);
  }
  return Int(env, fd);
}

napi_value PollFd(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t fd, events, timeout;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd) ||
      !ArgInt32(env, argv[1], "events", &events) || !ArgInt32(env, argv[2], "timeoutMs", &timeout))
    return nullptr;
  if (events & ~(kReadable | kWritable)) return ThrowRange(env, "The \"events\" argument has unknown bits");
  pollfd p = {fd, 0, 0};
  if (events & kReadable) p.events |= POLLIN;
  if (events & kWritable) p.events |= POLLOUT;

  // EINTR: retry with what is left of the timeout.
  timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  int remaining = timeout;
  int r;
  for (;;) {
    r = poll(&p, 1, remaining);
    if (r >= 0 || errno != EINTR) break;
    if (timeout >= 0) {
      timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      int64_t elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
      remaining = elapsed >= timeout ? 0 : static_cast<int>(timeout - elapsed);
    }
  }
  if (r < 0) return ThrowErrno(env, "poll", errno);
  if (r == 0) return Int(env, 0);
  if (p.revents & POLLNVAL) return ThrowErrno(env, "poll", EBADF);
  int32_t out = 0;
  if (p.revents & (POLLIN | POLLHUP | POLLERR | POLLRDHUP)) out |= kReadable;
  if (p.revents & POLLOUT) out |= kWritable;
  return Int(env, out);
}

// ---------------------------------------------------------------------------------------------
// mmap as an external SharedArrayBuffer (through V8 directly: Node-API cannot wrap foreign memory
// in a SharedArrayBuffer; see ToV8/FromV8 in common.h).

// Process-wide: a SAB may be collected (and its deleter run) on any thread, and unmapNow may be
// called from any thread that received it. Leaked on purpose so it outlives static destructors.
struct MapRegistry {
  std::mutex mutex;
  std::map<uintptr_t, size_t> live;     // address -> length, still backed by the file
  std::set<uintptr_t> released;         // replaced by anonymous pages by unmapNow
};

MapRegistry& Registry() {
  static MapRegistry* registry = new MapRegistry();
  return *registry;
}

// ---- SIGBUS containment ----
// A frontend can shrink a region's file after handing it over; touching the lost pages raises SIGBUS.
// The handler replaces the faulting page of one of our mappings with a private zero page and counts the
// fault, so the daemon survives and the JS side can fail the ring it was serving. The slot table is
// lock-free because a signal handler cannot take the registry's mutex.
constexpr size_t kFaultSlots = 4096;
struct FaultSlot {
  std::atomic<uintptr_t> start{0};
  std::atomic<size_t> length{0};
};
FaultSlot g_fault_slots[kFaultSlots];
std::atomic<int32_t> g_fault_count{0};
struct sigaction g_old_sigbus;
std::once_flag g_sigbus_once;

void FaultTrack(uintptr_t start, size_t length) {
  for (FaultSlot& slot : g_fault_slots) {
    uintptr_t expected = 0;
    if (slot.start.compare_exchange_strong(expected, start)) {
      slot.length.store(length);
      return;
    }
  }
  // Table full: faults in this mapping will not be contained (4096 live mappings is far past any limit).
}

void FaultUntrack(uintptr_t start) {
  for (FaultSlot& slot : g_fault_slots) {
    if (slot.start.load() == start) {
      slot.length.store(0);
      slot.start.store(0);
      return;
    }
  }
}

void OnSigbus(int sig, siginfo_t* info, void* context) {
  uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (FaultSlot& slot : g_fault_slots) {
    uintptr_t start = slot.start.load();
    size_t length = slot.length.load();
    if (start != 0 && addr >= start && addr - start < length) {
      uintptr_t page = addr & ~(static_cast<uintptr_t>(sysconf(_SC_PAGESIZE)) - 1);
      void* r = mmap(reinterpret_cast<void*>(page), static_cast<size_t>(sysconf(_SC_PAGESIZE)),
                     PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (r != MAP_FAILED) {
        g_fault_count.fetch_add(1);
        return;  // the access is retried on the zero page
      }
      break;
    }
  }
  // Not ours: hand it to whoever was there before, or die as the default action does.
  if (g_old_sigbus.sa_flags & SA_SIGINFO) {
    if (g_old_sigbus.sa_sigaction) {
      g_old_sigbus.sa_sigaction(sig, info, context);
      return;
    }
  } else if (g_old_sigbus.sa_handler != SIG_DFL && g_old_sigbus.sa_handler != SIG_IGN) {
    g_old_sigbus.sa_handler(sig);
    return;
  }
  signal(SIGBUS, SIG_DFL);  // returning re-executes the access, which now kills the process
}

void InstallSigbusHandler() {
  std::call_once(g_sigbus_once, [] {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &g_old_sigbus);
  });
}

void NoopDeleter(void*, size_t, void*) {}

// An Int32Array-sized SharedArrayBuffer over the fault counter: JS reads it with Atomics.load, no call.
napi_value FaultCounter(napi_env, napi_callback_info) {
  std::unique_ptr<v8::BackingStore> store =
      v8::SharedArrayBuffer::NewBackingStore(&g_fault_count, sizeof g_fault_count, NoopDeleter, nullptr);
  return FromV8(v8::SharedArrayBuffer::New(v8::Isolate::GetCurrent(), std::move(store)));
}

void UnmapDeleter(void* data, size_t length, void*) {
  MapRegistry& reg = Registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  uintptr_t addr = reinterpret_cast<uintptr_t>(data);
  if (reg.live.count(addr) != 0) FaultUntrack(addr);
  reg.live.erase(addr);
  reg.released.erase(addr);
  // Under the lock: the address can only be handed out again once the registry forgot it.
  munmap(data, length);
}

napi_value Mmap(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t fd;
  uint64_t length;
  bool writable;
  if (!Args(env, info, argv) || !ArgInt32(env, argv[0], "fd", &fd) ||
      !ArgUint(env, argv[1], "length", kMaxSafeInteger, &length) ||
      !ArgBool(env, argv[2], "writable", &writable))
    return nullptr;
  if (length == 0) return ThrowErrno(env, "mmap", EINVAL, nullptr, "length must not be 0");
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* addr = mmap(nullptr, length, prot, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) return ThrowErrno(env, "mmap", errno);
  {
    MapRegistry& reg = Registry();
    std::lock_guard<std::mutex> lock(reg.mutex);
    reg.live[reinterpret_cast<uintptr_t>(addr)] = length;
  }
  InstallSigbusHandler();
  FaultTrack(reinterpret_cast<uintptr_t>(addr), length);
  // From here the backing store owns the mapping: its deleter munmaps, whichever thread drops
  // the last reference (postMessage shares the store between isolates).
  std::unique_ptr<v8::BackingStore> store =
      v8::SharedArrayBuffer::NewBackingStore(addr, length, UnmapDeleter, nullptr);
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  v8::Local<v8::SharedArrayBuffer> sab = v8::SharedArrayBuffer::New(isolate, std::move(store));
  return FromV8(sab);
}

napi_value UnmapNow(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!Args(env, info, argv)) return nullptr;
  v8::Local<v8::Value> value = ToV8(argv[0]);
  if (value.IsEmpty() || !value->IsSharedArrayBuffer())
    return ThrowType(env, "The \"buffer\" argument must be a SharedArrayBuffer");
  // Holding the store keeps the deleter from running while we work on the range.
  std::shared_ptr<v8::BackingStore> store = value.As<v8::SharedArrayBuffer>()->GetBackingStore();
  uintptr_t addr = reinterpret_cast<uintptr_t>(store->Data());

  MapRegistry& reg = Registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  if (reg.released.count(addr) != 0) return Undefined(env);  // second call: nothing left to drop
  auto it = reg.live.find(addr);
  if (store->Data() == nullptr || it == reg.live.end() || it->second != store->ByteLength())
    return ThrowErrno(env, "unmapNow", EINVAL, nullptr, "not a buffer returned by mmap()");
  // Atomic replacement: concurrent readers see either file pages or zeros, never a hole.
  void* r = mmap(store->Data(), it->second, PROT_READ | PROT_WRITE,
                 MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return ThrowErrno(env, "mmap", errno);
  FaultUntrack(addr);
  reg.live.erase(it);
  reg.released.insert(addr);
  return Undefined(env);
}

// ---------------------------------------------------------------------------------------------
// fd watchers (uv_poll_t on this env's loop)
//
// Ownership: a Watcher lives until both its JS object has been finalized and its uv handle has
// been closed (the close callback is the only place the handle memory may go). While started,
// the watcher holds its JS object strongly (like an active socket); stopped, only weakly, so a
// forgotten watcher is collected and its finalizer closes the handle. The JS callback is kept as
// a property of the object rather than a strong ref, so a callback that closes over its own
// watcher does not make it immortal.

}  // namespace

// Declared in common.h (EnvData lists them).
struct vhost::Watcher {
  uv_poll_t handle;
  napi_env env = nullptr;
  EnvData* data = nullptr;              // valid until the close callback
  napi_ref self = nullptr;              // the JS object; strong (1) while started
  napi_async_context async = nullptr;
  bool started = false;
  bool closing = false;
  bool handle_closed = false;
  bool js_alive = true;
};

namespace {

// uv close callback: runs possibly after the env has gone, so it touches no Node-API.
void OnHandleClosed(uv_handle_t* h) {
  Watcher* w = static_cast<Watcher*>(h->data);
  EnvData* d = w->data;
  w->data = nullptr;
  w->handle_closed = true;
  EnvHandleClosed(d);
  if (!w->js_alive) delete w;
}

void SetStarted(Watcher* w, bool started) {
  if (w->started == started) return;
  w->started = started;
  if (w->self == nullptr) return;
  if (started)
    napi_reference_ref(w->env, w->self, nullptr);
  else
    napi_reference_unref(w->env, w->self, nullptr);
}

void CloseWatcher(Watcher* w) {
  if (w->closing) return;
  SetStarted(w, false);
  w->closing = true;
  if (w->async != nullptr) napi_async_destroy(w->env, w->async);
  w->async = nullptr;
  if (w->self != nullptr) napi_delete_reference(w->env, w->self);
  w->self = nullptr;
  w->data->live.erase(w);
  w->data->closing++;
  uv_close(reinterpret_cast<uv_handle_t*>(&w->handle), OnHandleClosed);
}

void FinalizeWatcher(napi_env, void* data, void*) {
  Watcher* w = static_cast<Watcher*>(data);
  w->js_alive = false;
  CloseWatcher(w);
  if (w->handle_closed) delete w;
}

void OnPoll(uv_poll_t* h, int status, int uv_events) {
  Watcher* w = static_cast<Watcher*>(h->data);
  if (w->closing || w->self == nullptr) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;

  napi_value self = nullptr, key, cb;
  napi_get_reference_value(env, w->self, &self);
  if (self != nullptr && napi_get_reference_value(env, w->data->cb_key, &key) == napi_ok &&
      napi_get_property(env, self, key, &cb) == napi_ok) {
    int32_t events = 0;
    if (uv_events & (UV_READABLE | UV_DISCONNECT)) events |= kReadable;
    if (uv_events & UV_WRITABLE) events |= kWritable;
    napi_value argv[2];
    size_t argc = 1;
    napi_create_int32(env, events, &argv[0]);
    if (status < 0) {
      // libuv has already stopped the handle; mirror that so the object may be collected.
      uv_poll_stop(&w->handle);
      SetStarted(w, false);
      napi_create_int32(env, -status, &argv[1]);
      argc = 2;
    }
    napi_value result;
    // make_callback runs the microtask/nextTick queues afterwards, like any Node I/O callback.
    napi_status st = napi_make_callback(env, w->async, self, cb, argc, argv, &result);
    // A throwing callback becomes an uncaught exception, as for any Node I/O callback. (When the
    // env is shutting down, make_callback fails without an exception: nothing to report then.)
    bool pending = false;
    if (st != napi_ok && napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value exc;
      if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) napi_fatal_exception(env, exc);
    }
  }
  napi_close_handle_scope(env, scope);
}

Watcher* UnwrapThis(napi_env env, napi_callback_info info, napi_value* argv, size_t want) {
  size_t argc = want;
  napi_value self;
  if (napi_get_cb_info(env, info, &argc, argv, &self, nullptr) != napi_ok) return nullptr;
  void* ptr = nullptr;
  if (napi_unwrap(env, self, &ptr) != napi_ok || ptr == nullptr) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) ThrowType(env, "Illegal invocation: not an FdWatcher");
    return nullptr;
  }
  return static_cast<Watcher*>(ptr);
}

napi_value WatcherStop(napi_env env, napi_callback_info info) {
  Watcher* w = UnwrapThis(env, info, nullptr, 0);
  if (w == nullptr) return nullptr;
  if (!w->closing) {
    uv_poll_stop(&w->handle);
    SetStarted(w, false);
  }
  return Undefined(env);
}

napi_value WatcherStart(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  Watcher* w = UnwrapThis(env, info, argv, 1);
  int32_t events;
  if (w == nullptr || !ArgInt32(env, argv[0], "events", &events)) return nullptr;
  if (events & ~(kReadable | kWritable)) return ThrowRange(env, "The \"events\" argument has unknown bits");
  if (w->closing) return ThrowErrno(env, "uv_poll_start", EBADF, nullptr, "watcher is closed");
  if (events == 0) return WatcherStop(env, info);
  int uv_events = 0;
  if (events & kReadable) uv_events |= UV_READABLE | UV_DISCONNECT;
  if (events & kWritable) uv_events |= UV_WRITABLE;
  int r = uv_poll_start(&w->handle, uv_events, OnPoll);
  if (r < 0) return ThrowErrno(env, "uv_poll_start", -r);
  SetStarted(w, true);
  return Undefined(env);
}

napi_value WatcherClose(napi_env env, napi_callback_info info) {
  Watcher* w = UnwrapThis(env, info, nullptr, 0);
  if (w == nullptr) return nullptr;
  CloseWatcher(w);
  return Undefined(env);
}

napi_value WatcherConstructor(napi_env env, napi_callback_info info) {
  napi_value self;
  NAPI_OK(napi_get_cb_info(env, info, nullptr, nullptr, &self, nullptr));
  return self;  // unusable until watch() wraps it
}

napi_value Watch(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  void* raw;
  int32_t fd;
  if (!Args(env, info, argv, nullptr, &raw) || !ArgInt32(env, argv[0], "fd", &fd) ||
      !ArgFunction(env, argv[1], "callback"))
    return nullptr;
  EnvData* d = static_cast<EnvData*>(raw);
  if (fd < 0) return ThrowErrno(env, "uv_poll_init", EBADF);

  napi_value ctor, self, key, name;
  NAPI_OK(napi_get_reference_value(env, d->ctor, &ctor));
  NAPI_OK(napi_new_instance(env, ctor, 0, nullptr, &self));
  NAPI_OK(napi_get_reference_value(env, d->cb_key, &key));
  napi_property_descriptor prop = {nullptr, key, nullptr, nullptr, nullptr, argv[1], napi_default, nullptr};
  NAPI_OK(napi_define_properties(env, self, 1, &prop));
  NAPI_OK(napi_create_string_utf8(env, "vhost:FdWatcher", NAPI_AUTO_LENGTH, &name));

  uv_loop_t* loop;
  NAPI_OK(napi_get_uv_event_loop(env, &loop));
  Watcher* w = new Watcher();
  w->env = env;
  w->data = d;
  w->handle.data = w;
  // Note: libuv makes the fd non-blocking, and refuses a second poll handle on the same fd.
  int r = uv_poll_init(loop, &w->handle, fd);
  if (r < 0) {
    delete w;
    return ThrowErrno(env, "uv_poll_init", -r);
  }
  d->live.insert(w);
  if (napi_wrap(env, self, w, FinalizeWatcher, nullptr, nullptr) != napi_ok) {
    w->js_alive = false;
    CloseWatcher(w);
    EnsureThrown(env);
    return nullptr;
  }
  // From here the finalizer owns the cleanup if anything below fails.
  NAPI_OK(napi_create_reference(env, self, 0, &w->self));
  NAPI_OK(napi_async_init(env, self, name, &w->async));
  return self;
}

// Worker exit / env teardown: close every open handle and hold the teardown (async cleanup
// hook) until libuv has run their close callbacks, so no handle outlives its loop.
void OnEnvTeardown(napi_async_cleanup_hook_handle handle, void* arg) {
  EnvData* d = static_cast<EnvData*>(arg);
  d->cleanup = handle;
  d->tearing_down = true;
  std::vector<Watcher*> open(d->live.begin(), d->live.end());
  for (Watcher* w : open) CloseWatcher(w);
  UringTeardown(d);
  napi_delete_reference(d->env, d->ctor);
  napi_delete_reference(d->env, d->ring_ctor);
  napi_delete_reference(d->env, d->cb_key);
  d->ctor = d->ring_ctor = d->cb_key = nullptr;
  if (d->closing == 0) {
    napi_remove_async_cleanup_hook(d->cleanup);
    delete d;
  }
}

}  // namespace

void vhost::EnvHandleClosed(EnvData* d) {
  if (--d->closing == 0 && d->tearing_down) {
    napi_remove_async_cleanup_hook(d->cleanup);
    delete d;
  }
}

NAPI_MODULE_INIT() {
  EnvData* d = new EnvData();
  d->env = env;

  napi_property_descriptor methods[] = {
      {"start", nullptr, WatcherStart, nullptr, nullptr, nullptr, napi_default_method, d},
      {"stop", nullptr, WatcherStop, nullptr, nullptr, nullptr, napi_default_method, d},
      {"close", nullptr, WatcherClose, nullptr, nullptr, nullptr, napi_default_method, d},
  };
  napi_value ctor, key, desc;
  if (napi_define_class(env, "FdWatcher", NAPI_AUTO_LENGTH, WatcherConstructor, d, 3, methods, &ctor) != napi_ok ||
      napi_create_reference(env, ctor, 1, &d->ctor) != napi_ok ||
      napi_create_string_utf8(env, "vhost.callback", NAPI_AUTO_LENGTH, &desc) != napi_ok ||
      napi_create_symbol(env, desc, &key) != napi_ok ||
      napi_create_reference(env, key, 1, &d->cb_key) != napi_ok ||
      napi_add_async_cleanup_hook(env, OnEnvTeardown, d, nullptr) != napi_ok) {
    EnsureThrown(env);
    return nullptr;
  }

  napi_property_descriptor fns[] = {
#define FN(name, impl) {name, nullptr, impl, nullptr, nullptr, nullptr, napi_enumerable, d}
      FN("unixListen", UnixListen),
      FN("unixAccept", UnixAccept),
      FN("unixConnect", UnixConnect),
      FN("socketPair", SocketPair),
      FN("sendMsg", SendMsg),
      FN("recvMsg", RecvMsg),
      FN("isListeningUnixSocket", IsListeningUnixSocket),
      FN("setNonBlocking", SetNonBlocking),
      FN("close", Close),
      FN("mmap", Mmap),
      FN("unmapNow", UnmapNow),
      FN("eventfd", EventFd),
      FN("eventfdRead", EventFdRead),
      FN("eventfdWrite", EventFdWrite),
      FN("memfdCreate", MemfdCreate),
      FN("watch", Watch),
      FN("pollFd", PollFd),
      FN("fstat", Fstat),
      FN("fallocate", Fallocate),
      FN("tapOpen", TapOpen),
      FN("openpty", OpenPty),
      FN("faultCounter", FaultCounter),
#undef FN
  };
  if (napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns) != napi_ok ||
      !UringInit(env, d, exports)) {
    EnsureThrown(env);
    return nullptr;
  }
  return exports;
}
