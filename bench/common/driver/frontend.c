/*
 * The benchmark drivers' shared frontend: see frontend.h. Written from the vhost-user specification (QEMU
 * docs/interop/vhost-user.rst) and virtio 1.2.
 */
#define _GNU_SOURCE
#include "frontend.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vhost_user.h"

const char *bench_prog = "bench";
struct bench_options bench_opt = {
    .queues = 1, .qd = 32, .bs = 4096, .seconds = 3.0, .warmup = 0.5, .backend_pid = -1,
    .event_idx_allowed = 1, .seed = 1, .pin_driver = -1,
};
struct bench_queue bench_queues[BENCH_MAX_QUEUES];
uint8_t *bench_ram;
size_t bench_ram_size;
int bench_ram_fd = -1;
int bench_event_idx;
uint64_t bench_nblocks, bench_sectors_per_io;
int bench_stop_flag;

/* ---- utilities ----------------------------------------------------------------------------------------------- */

void bench_die(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", bench_prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(code);
}

void bench_check(int rc, const char *what) {
  if (rc < 0) bench_die(1, "%s: %s", what, strerror(errno ? errno : EPROTO));
}

double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void bench_sleep(double s) {
  struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
  while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
  }
}

void bench_pin_self(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

size_t bench_align_up(size_t v, size_t a) { return (v + a - 1) & ~(a - 1); }

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
  unsigned long long utime = 0;
  int field = 2;
  for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
    field++;
    if (field == 14) utime = strtoull(tok, NULL, 10);
    if (field == 15) return (long long)(utime + strtoull(tok, NULL, 10));
  }
  return -1;
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

/* ---- command line -------------------------------------------------------------------------------------------- */

uint64_t bench_parse_size(const char *s, const char *name) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  uint64_t mult = 1;
  if (*end == 'K' || *end == 'k') mult = 1ull << 10, end++;
  else if (*end == 'M' || *end == 'm') mult = 1ull << 20, end++;
  else if (*end == 'G' || *end == 'g') mult = 1ull << 30, end++;
  if (errno || *end || end == s || v == 0 || v > (UINT64_MAX >> 30)) bench_die(1, "--%s: bad size '%s'", name, s);
  return v * mult;
}

unsigned bench_parse_uint(const char *s, const char *name, unsigned min, unsigned max) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || end == s || v < (long)min || v > (long)max)
    bench_die(1, "--%s must be an integer in %u..%u", name, min, max);
  return (unsigned)v;
}

double bench_parse_seconds(const char *s, const char *name) {
  char *end;
  double v = strtod(s, &end);
  if (*end || end == s || !(v >= 0) || v > 3600) bench_die(1, "--%s: bad duration '%s'", name, s);
  return v;
}

static const struct option common_options[] = {
    {"socket", required_argument, 0, 's'},      {"queues", required_argument, 0, 'q'},
    {"threads", required_argument, 0, 't'},     {"qd", required_argument, 0, 'd'},
    {"bs", required_argument, 0, 'b'},          {"pattern", required_argument, 0, 'p'},
    {"time", required_argument, 0, 'T'},        {"warmup", required_argument, 0, 'w'},
    {"size", required_argument, 0, 'S'},        {"queue-size", required_argument, 0, 'Q'},
    {"backend-pid", required_argument, 0, 'P'}, {"no-event-idx", no_argument, 0, 'E'},
    {"seed", required_argument, 0, 'r'},        {"pin-driver", required_argument, 0, 'D'},
    {"help", no_argument, 0, 'h'},
};

void bench_parse_args(int argc, char **argv, const struct option *extra, int (*handle)(int code, const char *arg),
                      void (*usage)(void)) {
  size_t ncommon = sizeof common_options / sizeof common_options[0], nextra = 0;
  while (extra && extra[nextra].name) nextra++;
  struct option *all = calloc(ncommon + nextra + 1, sizeof *all); /* zero-terminated */
  if (!all) bench_die(1, "out of memory");
  memcpy(all, common_options, sizeof common_options);
  if (nextra) memcpy(all + ncommon, extra, nextra * sizeof *extra);
  struct bench_options *o = &bench_opt;
  int c;
  while ((c = getopt_long(argc, argv, "h", all, NULL)) != -1) {
    switch (c) {
    case 's': o->socket_path = optarg; break;
    case 'q': o->queues = bench_parse_uint(optarg, "queues", 1, BENCH_MAX_QUEUES); break;
    case 't': o->threads = bench_parse_uint(optarg, "threads", 1, BENCH_MAX_QUEUES); break;
    case 'd': o->qd = bench_parse_uint(optarg, "qd", 1, 4096); break;
    case 'b': o->bs = bench_parse_size(optarg, "bs"); break;
    case 'p':
      if (!strcmp(optarg, "seq")) o->seq = 1;
      else if (!strcmp(optarg, "rand")) o->seq = 0;
      else bench_die(1, "--pattern must be rand or seq");
      break;
    case 'T': o->seconds = bench_parse_seconds(optarg, "time"); break;
    case 'w': o->warmup = bench_parse_seconds(optarg, "warmup"); break;
    case 'S': o->size = bench_parse_size(optarg, "size"); break;
    case 'Q': o->queue_size = bench_parse_uint(optarg, "queue-size", 1, 32768); break;
    case 'P': o->backend_pid = bench_parse_uint(optarg, "backend-pid", 1, 1u << 30); break;
    case 'E': o->event_idx_allowed = 0; break;
    case 'r': o->seed = bench_parse_uint(optarg, "seed", 0, 1u << 30); break;
    case 'D': o->pin_driver = (int)bench_parse_uint(optarg, "pin-driver", 0, 4095); break;
    case 'h': usage(); exit(0);
    default:
      if (c != '?' && handle && handle(c, optarg)) break;
      usage();
      exit(1);
    }
  }
  free(all);
  if (optind != argc) {
    usage();
    exit(1);
  }
}

/* ---- negotiation and setup ----------------------------------------------------------------------------------- */

void bench_negotiate_start(int sock, uint64_t want_pf, unsigned max_queue_num, struct bench_negotiated *n) {
  memset(n, 0, sizeof *n);
  n->queue_num = 1;
  bench_check(vhu_get_u64(sock, VHU_GET_FEATURES, &n->offered), "GET_FEATURES");
  if (!(n->offered & (1ull << BENCH_F_VERSION_1)))
    bench_die(1, "backend does not offer VERSION_1 (features 0x%" PRIx64 ")", n->offered);
  if (!(n->offered & (1ull << VHU_F_PROTOCOL_FEATURES))) return;
  uint64_t pf;
  bench_check(vhu_get_u64(sock, VHU_GET_PROTOCOL_FEATURES, &pf), "GET_PROTOCOL_FEATURES");
  n->protocol_features = pf & want_pf;
  bench_check(vhu_set_u64(sock, VHU_SET_PROTOCOL_FEATURES, n->protocol_features), "SET_PROTOCOL_FEATURES");
  if (n->protocol_features & (1ull << VHU_PF_MQ)) {
    uint64_t qn;
    bench_check(vhu_get_u64(sock, VHU_GET_QUEUE_NUM, &qn), "GET_QUEUE_NUM");
    n->queue_num = qn > max_queue_num ? max_queue_num : (unsigned)qn;
  }
}

void bench_negotiate_finish(int sock, uint64_t want, struct bench_negotiated *n) {
  bench_check(vhu_send(sock, VHU_SET_OWNER, NULL, 0, NULL, 0), "SET_OWNER");
  if (bench_opt.event_idx_allowed) want |= 1ull << BENCH_F_EVENT_IDX;
  else want &= ~(1ull << BENCH_F_EVENT_IDX);
  n->features = n->offered & want;
  bench_check(vhu_set_u64(sock, VHU_SET_FEATURES, n->features), "SET_FEATURES");
  bench_event_idx = !!(n->features & (1ull << BENCH_F_EVENT_IDX));
}

void bench_setup_memory(unsigned dps, size_t meta_size, const char *memfd_name) {
  const struct bench_options *o = &bench_opt;
  unsigned qsize = o->queue_size;
  if (!qsize) {
    qsize = 256;
    while (qsize < o->qd * dps) qsize *= 2;
  }
  if (qsize & (qsize - 1) || qsize > 32768) bench_die(1, "queue size %u is not a power of two up to 32768", qsize);
  if ((uint64_t)o->qd * dps > qsize)
    bench_die(1, "queue depth %u needs %u descriptors; queue size is %u", o->qd, o->qd * dps, qsize);
  size_t off = 0;
  for (unsigned i = 0; i < o->queues; i++) {
    struct bench_queue *q = &bench_queues[i];
    /* Each ring part on its own pages: the driver-written avail ring and device-written used ring must not
     * share cache lines. */
    q->desc_off = off;
    off = bench_align_up(off + ring_desc_bytes(qsize), 4096);
    q->avail_off = off;
    off = bench_align_up(off + ring_avail_bytes(qsize), 4096);
    q->used_off = off;
    off = bench_align_up(off + ring_used_bytes(qsize), 4096);
    q->meta_off = off;
    off = bench_align_up(off + meta_size * o->qd, 4096);
    q->data_off = off;
    off = bench_align_up(off + (size_t)o->bs * o->qd, 4096);
  }
  bench_ram_size = bench_align_up(off, 2u << 20);
  bench_ram_fd = memfd_create(memfd_name, MFD_CLOEXEC);
  if (bench_ram_fd < 0) bench_die(1, "memfd_create: %s", strerror(errno));
  if (ftruncate(bench_ram_fd, (off_t)bench_ram_size) < 0) bench_die(1, "ftruncate: %s", strerror(errno));
  bench_ram = mmap(NULL, bench_ram_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, bench_ram_fd, 0);
  if (bench_ram == MAP_FAILED) bench_die(1, "mmap %zu bytes: %s", bench_ram_size, strerror(errno));

  for (unsigned i = 0; i < o->queues; i++) {
    struct bench_queue *q = &bench_queues[i];
    q->index = i;
    q->ring.size = (uint16_t)qsize; /* 32768 fits; the ring code masks with size - 1 */
    q->mask = (uint16_t)(qsize - 1);
    q->ring.desc = (struct vring_desc *)(bench_ram + q->desc_off);
    q->ring.avail = (struct vring_avail *)(bench_ram + q->avail_off);
    q->ring.used = (struct vring_used *)(bench_ram + q->used_off);
    q->dps = dps;
    q->nslots = o->qd;
    q->meta = bench_ram + q->meta_off;
    q->meta_size = meta_size;
    q->data = bench_ram + q->data_off;
    q->busy = calloc(o->qd, 1);
    if (!q->busy) bench_die(1, "out of memory");
    q->rng = (o->seed + 1) * 0x9E3779B97F4A7C15ull ^ (i + 1) * 0xD1B54A32D192ED03ull;
    if (!q->rng) q->rng = 1;
    q->seq_next = bench_nblocks * i / o->queues;
    /* Interrupts: EVENT_IDX -> used_event out of reach; otherwise NO_INTERRUPT. */
    q->ring.avail->flags = bench_event_idx ? 0 : VRING_AVAIL_F_NO_INTERRUPT;
    *ring_used_event(&q->ring) = BENCH_FAR_AWAY;
    q->kickfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    q->callfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->kickfd < 0 || q->callfd < 0) bench_die(1, "eventfd: %s", strerror(errno));
  }
}

void bench_configure_rings(int sock, const struct bench_negotiated *n, unsigned first_vq) {
  struct vhu_region region = {0, bench_ram_size, (uint64_t)(uintptr_t)bench_ram, 0};
  if (n->protocol_features & (1ull << VHU_PF_CONFIGURE_MEM_SLOTS)) {
    uint64_t slots;
    bench_check(vhu_get_u64(sock, VHU_GET_MAX_MEM_SLOTS, &slots), "GET_MAX_MEM_SLOTS");
    if (slots < 1) bench_die(1, "backend offers no memory slots");
    bench_check(vhu_add_mem_reg(sock, &region, bench_ram_fd), "ADD_MEM_REG");
  } else {
    bench_check(vhu_set_mem_table(sock, &region, bench_ram_fd), "SET_MEM_TABLE");
  }
  uint64_t base = (uint64_t)(uintptr_t)bench_ram;
  for (unsigned i = 0; i < bench_opt.queues; i++) {
    const struct bench_queue *q = &bench_queues[i];
    unsigned vq = first_vq + i;
    bench_check(vhu_set_state(sock, VHU_SET_VRING_NUM, vq, q->ring.size), "SET_VRING_NUM");
    bench_check(vhu_set_state(sock, VHU_SET_VRING_BASE, vq, 0), "SET_VRING_BASE");
    bench_check(vhu_set_vring_addr(sock, vq, base + q->desc_off, base + q->used_off, base + q->avail_off), "SET_VRING_ADDR");
    bench_check(vhu_set_vring_fd(sock, VHU_SET_VRING_CALL, vq, q->callfd), "SET_VRING_CALL");
    bench_check(vhu_set_vring_fd(sock, VHU_SET_VRING_KICK, vq, q->kickfd), "SET_VRING_KICK");
    if (n->features & (1ull << VHU_F_PROTOCOL_FEATURES))
      bench_check(vhu_set_state(sock, VHU_SET_VRING_ENABLE, vq, 1), "SET_VRING_ENABLE");
  }
  if (n->protocol_features & (1ull << VHU_PF_STATUS)) bench_check(vhu_set_u64(sock, VHU_SET_STATUS, 0x0f), "SET_STATUS");
  /* A request with a reply as a barrier: everything above was read, and the backend is still there. */
  uint64_t again;
  bench_check(vhu_get_u64(sock, VHU_GET_FEATURES, &again), "GET_FEATURES after setup");
}

/* ---- the run ------------------------------------------------------------------------------------------------- */

/* Completions, driver CPU, backend CPU, machine CPU and time at one edge of the measured window. */
struct window_edge {
  uint64_t ios;
  double driver_cpu, device_cpu, self_cpu, t;
  long long backend_ticks, system_ticks;
};

static void window_edge(struct bench_thread *threads, const pthread_t *device, struct window_edge *e) {
  e->ios = 0;
  e->driver_cpu = 0;
  for (unsigned i = 0; i < bench_opt.threads; i++) {
    e->ios += __atomic_load_n(&threads[i].progress, __ATOMIC_RELAXED);
    e->driver_cpu += thread_cpu_sec(threads[i].tid);
  }
  e->device_cpu = device ? thread_cpu_sec(*device) : 0;
  e->backend_ticks = bench_opt.backend_pid > 0 ? proc_cpu_ticks(bench_opt.backend_pid) : -1;
  e->system_ticks = system_busy_ticks();
  e->self_cpu = process_cpu_sec();
  e->t = bench_now();
}

void bench_run(int sock, unsigned first_vq, void *(*thread_main)(void *), const pthread_t *device, struct bench_result *r) {
  const struct bench_options *o = &bench_opt;
  memset(r, 0, sizeof *r);
  struct bench_thread *threads = aligned_alloc(64, sizeof *threads * o->threads);
  if (!threads) bench_die(1, "out of memory");
  memset(threads, 0, sizeof *threads * o->threads);
  for (unsigned i = 0; i < o->queues; i++) {
    struct bench_thread *t = &threads[i % o->threads];
    t->queues[t->nq++] = &bench_queues[i];
  }
  for (unsigned i = 0; i < o->threads; i++) {
    threads[i].cpu = o->pin_driver < 0 ? -1 : o->pin_driver + (int)i;
    if (pthread_create(&threads[i].tid, NULL, thread_main, &threads[i]) != 0) bench_die(1, "pthread_create failed");
  }

  struct window_edge a, b;
  bench_sleep(o->warmup);
  window_edge(threads, device, &a);
  bench_sleep(o->seconds);
  window_edge(threads, device, &b);

  __atomic_store_n(&bench_stop_flag, 1, __ATOMIC_RELAXED);
  r->drained = 1;
  for (unsigned i = 0; i < o->threads; i++) {
    pthread_join(threads[i].tid, NULL);
    r->drained &= threads[i].drained;
  }
  free(threads);

  /* Stop each ring: the backend's next avail index must be where we left ours. */
  r->bases_ok = 1;
  if (sock >= 0 && r->drained) {
    for (unsigned i = 0; i < o->queues; i++) {
      uint32_t base;
      if (vhu_get_vring_base(sock, first_vq + i, &base) < 0) {
        fprintf(stderr, "%s: GET_VRING_BASE %u: %s\n", bench_prog, first_vq + i, strerror(errno));
        r->bases_ok = 0;
        continue;
      }
      r->bases_checked++;
      if ((uint16_t)base != bench_queues[i].avail_idx) {
        fprintf(stderr, "%s: queue %u: backend stopped at avail index %u, driver published %u\n", bench_prog, i, base,
                bench_queues[i].avail_idx);
        r->bases_ok = 0;
      }
    }
  }

  for (unsigned i = 0; i < o->queues; i++) {
    struct bench_queue *q = &bench_queues[i];
    r->completed += q->completed;
    r->errors += q->errors;
    r->verify_failures += q->verify_failures;
    r->len_mismatches += q->len_mismatches;
    r->kicks += q->kicks;
    uint64_t c;
    if (read(q->callfd, &c, sizeof c) == sizeof c) r->calls += c;
  }

  r->ios = b.ios - a.ios;
  r->seconds = b.t - a.t;
  r->iops = r->seconds > 0 ? (double)r->ios / r->seconds : 0;
  r->driver_cpu = b.driver_cpu - a.driver_cpu;
  long tck = sysconf(_SC_CLK_TCK);
  r->backend_cpu = -1;
  if (device) r->backend_cpu = b.device_cpu - a.device_cpu;
  else if (a.backend_ticks >= 0 && b.backend_ticks >= 0) r->backend_cpu = (double)(b.backend_ticks - a.backend_ticks) / (double)tck;
  /* CPU used by everything else on the machine during the window: a sign the numbers are disturbed. An
   * in-process device's CPU is already part of this process's. */
  r->system_busy = a.system_ticks >= 0 && b.system_ticks >= 0 ? (double)(b.system_ticks - a.system_ticks) / (double)tck : -1;
  r->foreign = -1;
  if (r->system_busy >= 0) {
    r->foreign = r->system_busy - (b.self_cpu - a.self_cpu) - (device || r->backend_cpu < 0 ? 0 : r->backend_cpu);
    if (r->foreign < 0) r->foreign = 0;
  }
}

void bench_report(const struct bench_result *r, const char *mode, const char *transport, const struct bench_negotiated *n,
                  uint64_t span, int verify) {
  const struct bench_options *o = &bench_opt;
  printf("{\"mode\":\"%s\",", mode);
  if (transport) printf("\"transport\":\"%s\",", transport);
  printf("\"queues\":%u,\"threads\":%u,\"qd\":%u,\"bs\":%" PRIu64 ",\"pattern\":\"%s\","
         "\"queueSize\":%u,\"descriptorsPerRequest\":%u,\"eventIdx\":%s,"
         "\"features\":\"0x%" PRIx64 "\",\"protocolFeatures\":\"0x%" PRIx64 "\",\"spanBytes\":%" PRIu64 ","
         "\"seconds\":%.6f,\"ios\":%" PRIu64 ",\"iops\":%.1f,\"mbps\":%.2f,"
         "\"backendCpuSec\":%.3f,\"backendCpuUsPerIo\":%.4f,\"driverCpuSec\":%.3f,"
         "\"systemBusyCpuSec\":%.3f,\"foreignCpuSec\":%.3f,"
         "\"completedTotal\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"verify\":%s,\"verifyFailures\":%" PRIu64 ","
         "\"lenMismatches\":%" PRIu64 ",\"kicks\":%" PRIu64 ",\"calls\":%" PRIu64 ",\"drained\":%s,"
         "\"ringBasesChecked\":%d,\"ringBasesOk\":%s}\n",
         o->queues, o->threads, o->qd, o->bs, o->seq ? "seq" : "rand", bench_queues[0].ring.size, bench_queues[0].dps,
         bench_event_idx ? "true" : "false", n->features, n->protocol_features, span, r->seconds, r->ios, r->iops,
         r->iops * (double)o->bs / 1e6, r->backend_cpu,
         r->backend_cpu >= 0 && r->ios ? r->backend_cpu * 1e6 / (double)r->ios : -1.0, r->driver_cpu, r->system_busy,
         r->foreign, r->completed, r->errors, verify ? "true" : "false", r->verify_failures, r->len_mismatches, r->kicks,
         r->calls, r->drained ? "true" : "false", r->bases_checked, r->bases_ok ? "true" : "false");
  fflush(stdout);
}

int bench_exit_status(const struct bench_result *r) {
  if (!r->drained) bench_die(3, "requests were still in flight %.0f s after the run", BENCH_DRAIN_SECONDS);
  if (r->errors || r->verify_failures) return 2;
  if (!r->bases_ok) return 3;
  return 0;
}
