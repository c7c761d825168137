// Test helper (tests/test_augment_bands.py, tests/test_augment_block.py): the GPU's thread block and
// thread-block cluster emulated on the host, for the CUDA kernel's code in csrc/augment_resample.h and
// csrc/augment_block.h (their Load, Block and Cluster parameters). A block's threads are host threads
// with a barrier; a cluster's blocks run side by side, with a barrier of all their threads and each
// block's shared memory reachable from the others (map: the same offset in another block's).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

// A source byte, read plainly (the GPU reads it through the read-only cache: __ldg).
struct Plain {
  uint32_t operator()(const uint8_t* p) const { return *p; }
};

struct Barrier {
  std::mutex m;
  std::condition_variable cv;
  int n = 0, waiting = 0;
  long gen = 0;
  void wait() {
    std::unique_lock<std::mutex> l(m);
    const long g = gen;
    if (++waiting == n) {
      waiting = 0;
      ++gen;
      cv.notify_all();
    } else {
      cv.wait(l, [&] { return gen != g; });
    }
  }
};

// What a block's threads share: its barrier, its sum's accumulator, its shared memory (smem, the
// cluster launch's partial of the mean, blur_taps' totals).
struct Shared {
  Barrier bar;
  std::mutex m;
  double acc = 0.0;
  std::vector<unsigned char> smem;
  double partial = 0.0;
  float total[2];
};

struct HostBlock {
  int t, n;
  Shared* s;
  int tid() const { return t; }
  int size() const { return n; }
  void sync() const { s->bar.wait(); }
  double sum(double v, double*) const {
    sync();
    if (t == 0) s->acc = 0.0;
    sync();
    {
      std::lock_guard<std::mutex> l(s->m);
      s->acc += v;
    }
    sync();
    const double total = s->acc;
    sync();
    return total;
  }
};

// A block of one thread (its barriers are no-ops).
struct SerialBlock {
  int tid() const { return 0; }
  int size() const { return 1; }
  void sync() const {}
};

struct HostCluster {
  int rank;
  Barrier* bar;
  std::vector<Shared>* blocks;
  void sync() const { bar->wait(); }
  unsigned int num_blocks() const { return static_cast<unsigned int>(blocks->size()); }
  template <typename T>
  T* map(T* p, unsigned int r) const {
    Shared& me = (*blocks)[rank];
    Shared& them = (*blocks)[r];
    const unsigned char* q = reinterpret_cast<const unsigned char*>(p);
    if (q == reinterpret_cast<const unsigned char*>(&me.partial)) return reinterpret_cast<T*>(&them.partial);
    return reinterpret_cast<T*>(them.smem.data() + (q - me.smem.data()));
  }
};
