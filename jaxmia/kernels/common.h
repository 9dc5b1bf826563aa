// Helpers shared by the jaxmia XLA:CPU kernels (attention.cc, layernorm.cc, gelu.cc): a
// deadlock-free ParallelFor over XLA's intra-op pool, 16-float vectors (GCC/Clang vector
// extensions) with tree reductions and exp, jaxmia/fastrand.py's hash for in-kernel dropout
// masks, and row arrays with per-model parameters.
#ifndef JAXMIA_KERNELS_COMMON_H_
#define JAXMIA_KERNELS_COMMON_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>

#include "xla/ffi/api/ffi.h"

namespace jaxmia {

namespace ffi = xla::ffi;

// Runs f(item) for item in [0, count) on the calling thread and the pool's other threads.
// Chunks are claimed through an atomic counter, so the caller never waits on a task that has not
// started: a helper scheduled late finds nothing left and returns (no deadlock when every pool
// thread is busy). Which thread runs an item never changes what the item computes.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t count, F f) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  int64_t chunk = std::max<int64_t>(1, count / (threads * 8));
  int64_t chunks = (count + chunk - 1) / chunk;
  if (threads == 1 || chunks == 1) {
    for (int64_t i = 0; i < count; ++i) f(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, f, chunk, chunks, count]() {
    for (;;) {
      int64_t c = state->next.fetch_add(1);
      if (c >= chunks) return;
      int64_t end = std::min(count, (c + 1) * chunk);
      for (int64_t i = c * chunk; i < end; ++i) f(i);
      if (state->done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  for (int64_t i = 1; i < std::min(threads, chunks); ++i) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == chunks; });
}

// One vector of 16 floats: with -march=native an AVX-512 register (two AVX2 registers on older
// CPUs).
typedef float V16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));
typedef uint32_t U16 __attribute__((vector_size(64)));
constexpr int kLanes = 16;

inline V16 Load(const float* p) {
  V16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store(float* p, V16 v) { std::memcpy(p, &v, sizeof(v)); }
inline V16 Splat(float x) { return V16{} + x; }

// Lane i of the result is lane perm[i] of v.
inline V16 Permute(V16 v, I16 perm) {
#if defined(__clang__)
  V16 out;
  for (int i = 0; i < kLanes; ++i) out[i] = v[perm[i] & (kLanes - 1)];
  return out;
#else
  return __builtin_shuffle(v, perm);
#endif
}

// Tree reductions over the 16 lanes (four shuffle steps instead of a 16-long serial chain).
inline float Sum(V16 v) {
  v += Permute(v, I16{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  v += Permute(v, I16{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
  v += Permute(v, I16{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
  v += Permute(v, I16{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
  return v[0];
}
inline V16 Maximum(V16 a, V16 b) { return a > b ? a : b; }
inline float Max(V16 v) {
  v = Maximum(v, Permute(v, I16{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
  v = Maximum(v, Permute(v, I16{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
  v = Maximum(v, Permute(v, I16{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
  v = Maximum(v, Permute(v, I16{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
  return v[0];
}

// exp(x) for x <= 0 (e.g. softmax after subtracting the row maximum), lane-wise: x = n ln2 + r with
// |r| <= ln2 / 2, a degree-6 Taylor polynomial for exp(r) (relative error < 3e-7), then 2^n
// through the exponent bits. Lanes below -87 give 0.
inline V16 ExpNonPositive(V16 x) {
  const I16 tiny = x < -87.0f;
  x = tiny ? Splat(-87.0f) : x;
  V16 n = x * 1.44269504088896341f;
  n = __builtin_convertvector(__builtin_convertvector(n + (n < 0.0f ? Splat(-0.5f) : Splat(0.5f)),
                                                      I16), V16);
  const V16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
  V16 poly = Splat(1.0f / 720.0f);
  poly = poly * r + 1.0f / 120.0f;
  poly = poly * r + 1.0f / 24.0f;
  poly = poly * r + 1.0f / 6.0f;
  poly = poly * r + 0.5f;
  poly = poly * r + 1.0f;
  poly = poly * r + 1.0f;
  const I16 bits = (__builtin_convertvector(n, I16) + 127) << 23;
  V16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return tiny ? V16{} : poly * scale;
}

// jaxmia/fastrand.py's stream: word e of a seed (s0, s1) is h(h(e ^ s0) + s1), h Wellons'
// lowbias32 hash; a Bernoulli(keep) draw is kept iff float(word >> 8) * 2^-24 < keep, i.e.
// float(word >> 8) < threshold = float32(keep) * 2^24.
template <typename U>
inline U Hash(U x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

// Dropout settings of one call: `seeds` [S, 2] (nullptr: no dropout), each seed drawing the
// mask of `per_seed` consecutive elements (each model of a vmap has its own key).
struct Dropout {
  const uint32_t* seeds;
  int64_t per_seed;
  float threshold, inv_keep;
};

// The keep factors (0 or inv_keep) of 16 consecutive elements starting at flat element
// `element` of the caller's array (all 1 without dropout).
inline V16 KeepFactors(const Dropout& drop, int64_t element) {
  if (drop.seeds == nullptr) return Splat(1.0f);
  const uint32_t* seed = drop.seeds + 2 * (element / drop.per_seed);
  const uint32_t first = static_cast<uint32_t>(element % drop.per_seed);
  const U16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const U16 word = Hash<U16>(Hash<U16>((first + lane) ^ seed[0]) + seed[1]);
  const V16 u = __builtin_convertvector(__builtin_convertvector(word >> 8, I16), V16);
  return u < drop.threshold ? Splat(drop.inv_keep) : V16{};
}

// Reads the dropout settings: `seeds` [..., 2] uint32, one pair per model of a vmap, over an
// array of `elements` elements.
inline ffi::Error MakeDropout(ffi::Buffer<ffi::U32>& seeds, int64_t elements, float keep,
                              float inv_keep, int32_t use_dropout, const char* name,
                              Dropout* drop) {
  *drop = Dropout{nullptr, 1, 0.0f, inv_keep};
  if (!use_dropout) return ffi::Error::Success();
  const int64_t pairs = seeds.element_count() / 2;
  if (pairs < 1 || elements % pairs != 0)
    return ffi::Error::InvalidArgument(std::string(name) + ": one seed pair per model is needed");
  *drop = Dropout{seeds.typed_data(), elements / pairs, keep * 16777216.0f, inv_keep};
  return ffi::Error::Success();
}

// An array of rows [R, D] (D = 16 NV, NV <= 8) with per-model parameters [G, D]: G = 1, or one
// parameter row per model of a vmap, whose rows are the next R / G rows of the array.
struct RowShape {
  int64_t rows, d, groups, per_group;
};

inline ffi::Error ReadRows(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& params,
                           const char* name, RowShape* r) {
  auto dims = x.dimensions();
  if (dims.size() < 1) return ffi::Error::InvalidArgument(std::string(name) + ": x must be [..., D]");
  r->d = dims[dims.size() - 1];
  if (r->d % kLanes != 0 || r->d < kLanes || r->d > 8 * kLanes)
    return ffi::Error::InvalidArgument(std::string(name) + ": D must be 16, 32, ..., 128");
  r->rows = x.element_count() / r->d;
  r->groups = params.element_count() / r->d;
  if (r->groups < 1 || r->rows % r->groups != 0)
    return ffi::Error::InvalidArgument(std::string(name) + ": one parameter row per model is needed");
  r->per_group = r->rows / r->groups;
  return ffi::Error::Success();
}

// Calls body(NV) with NV (1..8: rows of up to 128 floats) as a compile-time constant; false
// (body not called) for any other NV.
template <typename Body>
bool WithVectors(int64_t nv, Body body) {
  switch (nv) {
    case 1: body(std::integral_constant<int, 1>()); return true;
    case 2: body(std::integral_constant<int, 2>()); return true;
    case 3: body(std::integral_constant<int, 3>()); return true;
    case 4: body(std::integral_constant<int, 4>()); return true;
    case 5: body(std::integral_constant<int, 5>()); return true;
    case 6: body(std::integral_constant<int, 6>()); return true;
    case 7: body(std::integral_constant<int, 7>()); return true;
    case 8: body(std::integral_constant<int, 8>()); return true;
    default: return false;
  }
}

// Calls body(NV) with NV = D / 16 (1..8, checked by ReadRows) as a compile-time constant.
template <typename Body>
void ForWidth(const RowShape& s, Body body) {
  WithVectors(s.d / kLanes, body);
}

// Runs rows(group, first, end, item) over blocks of at most `chunk` rows of each group, one
// block per work item (item = group * parts + part, parts = ceil(per_group / chunk)), so that
// per-block partial sums are the same whatever the thread count.
template <typename F>
void ForRowBlocks(ffi::ThreadPool& pool, const RowShape& s, int64_t chunk, F rows) {
  const int64_t parts = (s.per_group + chunk - 1) / chunk;
  ParallelFor(pool, s.groups * parts, [=](int64_t item) {
    const int64_t g = item / parts, first = g * s.per_group + (item % parts) * chunk;
    rows(g, first, std::min((g + 1) * s.per_group, first + chunk), item);
  });
}

}  // namespace jaxmia

#endif  // JAXMIA_KERNELS_COMMON_H_
