// afgen CPU executor runtime.
//
// Two translation units include this header:
//   * the kernel unit (kernel text + metal_shim.h or cuda_shim.h). It is
//     compiled with -nostdinc, so the part outside AFGEN_RUNTIME_IMPL must
//     not include any standard header and may only use builtin types.
//   * the runtime unit, compiled once with AFGEN_RUNTIME_IMPL defined. It
//     holds main(), the launch-file loader and the deterministic scheduler.
//
// Execution model: every GPU thread of a threadgroup (block) is a real
// pthread. Exactly one of them runs at a time; the running thread keeps the
// CPU until it reaches a synchronisation point (threadgroup barrier, SIMD /
// warp collective) or returns. The next thread to run is always the lowest
// (schedule 0) or highest (schedule 1) numbered runnable thread. This makes
// every run bit-for-bit reproducible and makes races adversarial: without a
// barrier, a reader runs to completion before (or after) the writers it
// depends on, so a missing barrier reads poisoned memory instead of passing
// by luck. Threadgroup memory is filled with 0xFF bytes (NaN for every float
// type, -1 for integers) before each threadgroup starts.
#pragma once

#define AFGEN_SIMD_WIDTH 32u
#define AFGEN_SLOT_BYTES 64u
#define AFGEN_MAX_GROUP_THREADS 1024u

extern "C" {

// Everything a GPU thread can ask about its own position. Filled by the
// scheduler before the thread starts.
struct afgen_thread_info {
  unsigned pos_in_grid[3];       // thread_position_in_grid
  unsigned group_pos[3];         // threadgroup_position_in_grid / blockIdx
  unsigned pos_in_group[3];      // thread_position_in_threadgroup / threadIdx
  unsigned group_size[3];        // threads_per_threadgroup (actual size)
  unsigned dispatch_group[3];    // dispatch_threads_per_threadgroup / blockDim
  unsigned grid_size[3];         // threads_per_grid
  unsigned groups_per_grid[3];   // threadgroups_per_grid / gridDim
  unsigned index_in_group;       // thread_index_in_threadgroup
  unsigned lane;                 // thread_index_in_simdgroup / lane id
  unsigned simd_group;           // simdgroup_index_in_threadgroup / warp id
  unsigned simd_groups;          // simdgroups_per_threadgroup
  unsigned dispatch_simd_groups; // dispatch_simdgroups_per_threadgroup
  unsigned group_threads;        // number of threads in this threadgroup
};

// Identity of the calling GPU thread.
const afgen_thread_info* afgen_self(void);

// Threadgroup / block barrier over every thread of the group (all must
// reach it; a thread that returned first is reported as an error).
void afgen_group_barrier(void);

// Rendezvous of SIMD lanes that exchanges `size` bytes (<= AFGEN_SLOT_BYTES)
// per lane. `mask` == 0 means "every lane of my SIMD group that has not
// returned" (Metal semantics); otherwise it is a CUDA lane mask that must
// name the caller. Returns AFGEN_SIMD_WIDTH slots of AFGEN_SLOT_BYTES bytes
// indexed by lane; `*active` receives the lanes whose slot is valid.
const unsigned char* afgen_lane_exchange(
    const void* value, unsigned size, unsigned mask, unsigned* active);

// Reports a kernel-level error (e.g. unsupported feature) and stops.
void afgen_fatal(const char* message);

// Provided by the kernel unit: calls the kernel with the launch arguments.
// argv[i] points at the storage of parameter i (for pointer parameters the
// storage holds the device address), exactly like a CUDA launch.
void afgen_kernel_entry(void* const* argv);

}  // extern "C"

// Launch-file layout shared with the Python side (all little-endian).
//   header  : struct afgen_launch_header
//   args    : nargs x struct afgen_launch_arg
//   payload : buffers and values at the given offsets
#define AFGEN_LAUNCH_MAGIC 0x4e55524e45474641ull /* "AFGENRUN" */

struct afgen_launch_header {
  unsigned long long magic;
  unsigned version;
  unsigned api;       // 0 = Metal, 1 = CUDA
  unsigned schedule;  // 0 = ascending, 1 = descending
  unsigned nargs;
  unsigned groups[3];      // number of threadgroups / blocks per dimension
  unsigned group[3];       // dispatched threadgroup / block size
  unsigned limit[3];       // threads with position >= limit are not launched
  unsigned grid_size[3];   // value of threads_per_grid
  unsigned pad;
};

struct afgen_launch_arg {
  unsigned kind;  // 0 = pointer to payload, 1 = value stored in payload
  unsigned pad;
  unsigned long long offset;
  unsigned long long size;
};

#ifdef AFGEN_RUNTIME_IMPL

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// Threadgroup (__shared__) variables live in this section: the executor
// compiles the kernel unit with -fno-zero-initialized-in-bss, so its .bss
// holds exactly the uninitialised statics, and renames .bss* to afgen_tg.
// The linker provides the bounds; weak so kernels without shared memory
// still link.
extern "C" char __start_afgen_tg[] __attribute__((weak));
extern "C" char __stop_afgen_tg[] __attribute__((weak));

namespace afgen_rt {

enum State { RUNNABLE, AT_BARRIER, AT_LANES, DONE };

struct Worker {
  pthread_t thread;
  sem_t go;
  unsigned index;  // linear index in the current threadgroup
  State state;
  unsigned lane_mask;    // requested CUDA mask, 0 for Metal semantics
  unsigned lane_size;    // bytes exchanged at the pending collective
  unsigned result_mask;  // lanes that took part in the last collective
  unsigned char deposit[AFGEN_SLOT_BYTES];
  afgen_thread_info info;
};

struct Scheduler {
  Worker* workers = nullptr;
  unsigned created = 0;
  unsigned n = 0;  // threads in the current group
  unsigned done = 0;
  unsigned at_barrier = 0;
  unsigned descending = 0;
  unsigned cuda = 0;
  unsigned group_id[3] = {0, 0, 0};
  void* const* argv = nullptr;
  sem_t main_sem;
  unsigned char snap[AFGEN_MAX_GROUP_THREADS / AFGEN_SIMD_WIDTH]
                    [AFGEN_SIMD_WIDTH][AFGEN_SLOT_BYTES];
};

static Scheduler g;
static thread_local Worker* t_self = nullptr;

[[noreturn]] static void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "AFGEN_ERROR: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, " [threadgroup (%u, %u, %u)]\n", g.group_id[0],
          g.group_id[1], g.group_id[2]);
  va_end(ap);
  fflush(stderr);
  _exit(3);
}

static Worker* pick_next() {
  if (g.descending) {
    for (unsigned i = g.n; i-- > 0;) {
      if (g.workers[i].state == RUNNABLE) return &g.workers[i];
    }
  } else {
    for (unsigned i = 0; i < g.n; ++i) {
      if (g.workers[i].state == RUNNABLE) return &g.workers[i];
    }
  }
  return nullptr;
}

static void report_deadlock() {
  unsigned barrier = 0, lanes = 0, first_lane = 0, first_barrier = 0;
  for (unsigned i = g.n; i-- > 0;) {
    if (g.workers[i].state == AT_BARRIER) {
      barrier++;
      first_barrier = i;
    } else if (g.workers[i].state == AT_LANES) {
      lanes++;
      first_lane = i;
    }
  }
  fail("deadlock: %u thread(s) wait at a threadgroup barrier (first: %u) and "
       "%u wait at a SIMD/warp collective (first: %u); divergent control flow "
       "around a barrier or collective, or a lane mask naming a thread that "
       "never arrives",
       barrier, first_barrier, lanes, first_lane);
}

static void complete_lanes(unsigned base, unsigned members);

// Metal SIMD functions act on the *active* lanes. When nothing can run and
// some lanes of a SIMD group wait at a collective while their other live
// lanes wait elsewhere (a barrier), those lanes took a divergent branch:
// complete the collective over the lanes that reached it, as the hardware
// does. CUDA names its participants in the mask, so there is nothing to
// infer there.
static bool release_divergent_simd() {
  if (g.cuda) return false;
  for (unsigned base = 0; base < g.n; base += AFGEN_SIMD_WIDTH) {
    unsigned members = 0;
    for (unsigned l = 0; l < AFGEN_SIMD_WIDTH && base + l < g.n; ++l) {
      if (g.workers[base + l].state == AT_LANES) members |= 1u << l;
    }
    if (members != 0) {
      complete_lanes(base, members);
      return true;
    }
  }
  return false;
}

static Worker* next_or_deadlock() {
  Worker* next = pick_next();
  if (next == nullptr && release_divergent_simd()) next = pick_next();
  if (next == nullptr) report_deadlock();
  return next;
}

// Hands the CPU to the next runnable thread and parks `self` until it is
// chosen again. Called with `self` no longer runnable or just unblocked.
static void yield_from(Worker* self) {
  Worker* next = next_or_deadlock();
  if (next == self) return;
  sem_post(&next->go);
  sem_wait(&self->go);
}

// Every thread of the group must reach the barrier: one that returned first
// means the barrier sits in divergent control flow, which is undefined on
// GPUs (it hangs or silently misbehaves), so it is reported.
static void check_barrier_divergence() {
  if (g.at_barrier > 0 && g.done > 0) {
    fail("threadgroup barrier reached by %u thread(s) after %u thread(s) of "
         "the group returned without reaching it (barrier in divergent "
         "control flow, e.g. after an early return)",
         g.at_barrier, g.done);
  }
}

static void try_release_barrier() {
  check_barrier_divergence();
  if (g.at_barrier == 0 || g.at_barrier != g.n) return;
  for (unsigned i = 0; i < g.n; ++i) {
    if (g.workers[i].state == AT_BARRIER) g.workers[i].state = RUNNABLE;
  }
  g.at_barrier = 0;
}

static unsigned simd_base(unsigned index) {
  return index - index % AFGEN_SIMD_WIDTH;
}

static unsigned simd_count(unsigned base) {
  unsigned left = g.n - base;
  return left < AFGEN_SIMD_WIDTH ? left : AFGEN_SIMD_WIDTH;
}

static void complete_lanes(unsigned base, unsigned members) {
  unsigned char(*snap)[AFGEN_SLOT_BYTES] = g.snap[base / AFGEN_SIMD_WIDTH];
  for (unsigned l = 0; l < AFGEN_SIMD_WIDTH; ++l) {
    if (!(members >> l & 1u)) continue;
    Worker& w = g.workers[base + l];
    memcpy(snap[l], w.deposit, AFGEN_SLOT_BYTES);
    w.result_mask = members;
    w.state = RUNNABLE;
  }
}

// Metal: a collective completes when every lane of the SIMD group that has
// not returned is waiting at one.
static void try_release_simd_metal(unsigned base) {
  unsigned count = simd_count(base), members = 0, size = 0;
  for (unsigned l = 0; l < count; ++l) {
    Worker& w = g.workers[base + l];
    if (w.state == DONE) continue;
    if (w.state != AT_LANES) return;
    if (members != 0 && w.lane_size != size) {
      fail("divergent SIMD collectives in simdgroup %u: lanes exchange "
           "different value sizes (%u vs %u bytes)",
           base / AFGEN_SIMD_WIDTH, size, w.lane_size);
    }
    size = w.lane_size;
    members |= 1u << l;
  }
  if (members != 0) complete_lanes(base, members);
}

// CUDA: a *_sync collective completes when every existing lane named in the
// mask waits with the same mask. A named lane that has returned is an error.
static void try_release_warp_cuda(unsigned base, unsigned mask) {
  unsigned count = simd_count(base), members = 0;
  for (unsigned l = 0; l < count; ++l) {
    if (!(mask >> l & 1u)) continue;
    Worker& w = g.workers[base + l];
    if (w.state == DONE) {
      fail("lane %u of warp %u is named in mask 0x%08x but has already "
           "returned",
           l, base / AFGEN_SIMD_WIDTH, mask);
    }
    if (w.state != AT_LANES || w.lane_mask != mask) return;
    members |= 1u << l;
  }
  if (members != 0) complete_lanes(base, members);
}

static void try_release_lanes(unsigned base) {
  if (!g.cuda) {
    try_release_simd_metal(base);
    return;
  }
  unsigned count = simd_count(base);
  for (unsigned l = 0; l < count; ++l) {
    Worker& w = g.workers[base + l];
    if (w.state == AT_LANES) try_release_warp_cuda(base, w.lane_mask);
  }
}

static void thread_finished(Worker* self) {
  self->state = DONE;
  g.done++;
  try_release_barrier();
  try_release_lanes(simd_base(self->index));
  if (g.done == g.n) {
    sem_post(&g.main_sem);
    return;
  }
  sem_post(&next_or_deadlock()->go);
}

static void* worker_main(void* arg) {
  Worker* self = static_cast<Worker*>(arg);
  t_self = self;
  for (;;) {
    sem_wait(&self->go);
    afgen_kernel_entry(g.argv);
    thread_finished(self);
  }
  return nullptr;
}

static void ensure_workers(unsigned count) {
  if (g.workers == nullptr) {
    g.workers = static_cast<Worker*>(
        calloc(AFGEN_MAX_GROUP_THREADS, sizeof(Worker)));
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  for (; g.created < count; ++g.created) {
    Worker* w = &g.workers[g.created];
    sem_init(&w->go, 0, 0);
    if (pthread_create(&w->thread, &attr, worker_main, w) != 0) {
      fail("cannot create thread %u", g.created);
    }
  }
  pthread_attr_destroy(&attr);
}

static unsigned min_u(unsigned a, unsigned b) { return a < b ? a : b; }

static unsigned ceil_div(unsigned a, unsigned b) { return (a + b - 1) / b; }

static void fill_info(const afgen_launch_header& h, const unsigned gp[3],
                      const unsigned size[3], unsigned i, Worker& w) {
  afgen_thread_info& t = w.info;
  unsigned p[3] = {i % size[0], (i / size[0]) % size[1],
                   i / (size[0] * size[1])};
  unsigned total = size[0] * size[1] * size[2];
  unsigned dispatched = h.group[0] * h.group[1] * h.group[2];
  for (int d = 0; d < 3; ++d) {
    t.pos_in_group[d] = p[d];
    t.group_pos[d] = gp[d];
    t.pos_in_grid[d] = gp[d] * h.group[d] + p[d];
    t.group_size[d] = size[d];
    t.dispatch_group[d] = h.group[d];
    t.grid_size[d] = h.grid_size[d];
    t.groups_per_grid[d] = h.groups[d];
  }
  t.index_in_group = i;
  t.lane = i % AFGEN_SIMD_WIDTH;
  t.simd_group = i / AFGEN_SIMD_WIDTH;
  t.simd_groups = ceil_div(total, AFGEN_SIMD_WIDTH);
  t.dispatch_simd_groups = ceil_div(dispatched, AFGEN_SIMD_WIDTH);
  t.group_threads = total;
  w.index = i;
  w.state = RUNNABLE;
  w.lane_mask = 0;
  w.result_mask = 0;
}

static void run_group(const afgen_launch_header& h, const unsigned gp[3]) {
  unsigned size[3];
  for (int d = 0; d < 3; ++d) {
    unsigned origin = gp[d] * h.group[d];
    size[d] = min_u(h.group[d], h.limit[d] - origin);
  }
  unsigned n = size[0] * size[1] * size[2];
  if (n == 0) return;
  ensure_workers(n);
  g.n = n;
  g.done = 0;
  g.at_barrier = 0;
  for (int d = 0; d < 3; ++d) g.group_id[d] = gp[d];
  for (unsigned i = 0; i < n; ++i) fill_info(h, gp, size, i, g.workers[i]);
  if (__start_afgen_tg != nullptr && __stop_afgen_tg != nullptr) {
    memset(__start_afgen_tg, 0xFF, __stop_afgen_tg - __start_afgen_tg);
  }
  memset(g.snap, 0xFF, sizeof(g.snap));
  sem_post(&pick_next()->go);
  sem_wait(&g.main_sem);
}

static unsigned order(unsigned i, unsigned count) {
  return g.descending ? count - 1 - i : i;
}

static void run_grid(const afgen_launch_header& h) {
  for (unsigned z = 0; z < h.groups[2]; ++z) {
    for (unsigned y = 0; y < h.groups[1]; ++y) {
      for (unsigned x = 0; x < h.groups[0]; ++x) {
        unsigned gp[3] = {order(x, h.groups[0]), order(y, h.groups[1]),
                          order(z, h.groups[2])};
        run_group(h, gp);
      }
    }
  }
}

static void** bind_args(const afgen_launch_header& h, char* base) {
  const afgen_launch_arg* args =
      reinterpret_cast<const afgen_launch_arg*>(base + sizeof(h));
  void** argv = static_cast<void**>(calloc(h.nargs + 1, sizeof(void*)));
  void** pointers = static_cast<void**>(calloc(h.nargs + 1, sizeof(void*)));
  for (unsigned i = 0; i < h.nargs; ++i) {
    if (args[i].kind == 0) {
      pointers[i] = base + args[i].offset;
      argv[i] = &pointers[i];
    } else {
      argv[i] = base + args[i].offset;
    }
  }
  return argv;
}

// Static threadgroup memory is limited to 32 KiB on Apple GPUs and static
// __shared__ memory to 48 KiB per block on NVIDIA GPUs.
static void check_shared_memory_size() {
  if (__start_afgen_tg == nullptr || __stop_afgen_tg == nullptr) return;
  unsigned long bytes = __stop_afgen_tg - __start_afgen_tg;
  unsigned long limit = g.cuda ? 48u * 1024u : 32u * 1024u;
  if (bytes > limit) {
    fail("kernel declares %lu bytes of threadgroup/shared memory; the limit "
         "is %lu",
         bytes, limit);
  }
}

static char* map_launch_file(const char* path, size_t* length) {
  int fd = open(path, O_RDWR);
  if (fd < 0) fail("cannot open launch file %s", path);
  struct stat st;
  fstat(fd, &st);
  *length = static_cast<size_t>(st.st_size);
  void* p = mmap(nullptr, *length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) fail("cannot map launch file %s", path);
  return static_cast<char*>(p);
}

}  // namespace afgen_rt

extern "C" const afgen_thread_info* afgen_self(void) {
  return &afgen_rt::t_self->info;
}

extern "C" void afgen_group_barrier(void) {
  using namespace afgen_rt;
  Worker* self = t_self;
  self->state = AT_BARRIER;
  g.at_barrier++;
  try_release_barrier();
  yield_from(self);
}

extern "C" const unsigned char* afgen_lane_exchange(
    const void* value, unsigned size, unsigned mask, unsigned* active) {
  using namespace afgen_rt;
  Worker* self = t_self;
  if (size > AFGEN_SLOT_BYTES) fail("SIMD value of %u bytes is too big", size);
  unsigned lane = self->index % AFGEN_SIMD_WIDTH;
  if (g.cuda && !(mask >> lane & 1u)) {
    fail("lane %u calls a *_sync collective with mask 0x%08x that does not "
         "name it",
         lane, mask);
  }
  memset(self->deposit, 0xFF, AFGEN_SLOT_BYTES);
  if (size > 0) memcpy(self->deposit, value, size);
  self->lane_size = size;
  self->lane_mask = mask;
  self->state = AT_LANES;
  unsigned base = simd_base(self->index);
  try_release_lanes(base);
  yield_from(self);
  *active = self->result_mask;
  return &g.snap[base / AFGEN_SIMD_WIDTH][0][0];
}

extern "C" void afgen_fatal(const char* message) {
  afgen_rt::fail("%s", message);
}

// Only one GPU thread runs at a time, so keeping all of them on one CPU
// turns every hand-off into a cheap same-core switch.
static void pin_to_cpu(const char* cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(atoi(cpu), &set);
  sched_setaffinity(0, sizeof(set), &set);
}

int main(int argc, char** argv) {
  using namespace afgen_rt;
  if (argc != 2 && argc != 3) {
    fprintf(stderr, "usage: %s LAUNCH_FILE [CPU]\n", argv[0]);
    return 2;
  }
  if (argc == 3) pin_to_cpu(argv[2]);
  size_t length = 0;
  char* base = map_launch_file(argv[1], &length);
  afgen_launch_header h;
  memcpy(&h, base, sizeof(h));
  if (h.magic != AFGEN_LAUNCH_MAGIC || h.version != 1) {
    fail("bad launch file %s", argv[1]);
  }
  g.descending = h.schedule;
  g.cuda = h.api;
  g.argv = bind_args(h, base);
  check_shared_memory_size();
  sem_init(&g.main_sem, 0, 0);
  run_grid(h);
  msync(base, length, MS_SYNC);
  fflush(stdout);
  _exit(0);
}

#endif  // AFGEN_RUNTIME_IMPL
