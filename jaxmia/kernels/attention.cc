// Scaled dot-product attention core for short sequences (an XLA:CPU custom call, XLA FFI).
//
// q/k/v keep the layout the projections produce, [N, T, H, 16] (N = every leading dimension;
// T <= 128 tokens, head size 16), so no transposes to a head-major layout are needed. Per block
// (n, h):
//   S = scale * Q K^T,  P = softmax(S) (rows),  W = P * M / keep,  O = W V
// with M the dropout keep mask, drawn here from the seed words of the caller's key exactly as
// jaxmia/fastrand.py draws a [N, H, T, T] Bernoulli array (so the pure-JAX reference applies the
// same mask). The forward pass returns O [N, T, H, 16] and P [N, H, T, Tp] (rows padded with
// zeros to Tp = 16 ceil(T / 16); kept for the backward pass), which computes
//   dW = dO V^T,  dV = W^T dO,  dP = dW * M / keep,  dS = P * (dP - rowsum(dP * P)),
//   dQ = scale * dS K,  dK = scale * dS^T Q.
// Blocks are spread over XLA's intra-op thread pool; each block is computed by one thread in a
// fixed order, so the results do not depend on the thread count.
// Built and loaded by jaxmia/kernels/attention.py; tests/test_attention_kernel.py checks it
// against the pure-JAX attention.

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "common.h"

namespace ffi = xla::ffi;

namespace {

using jaxmia::Dropout;
using jaxmia::ExpNonPositive;
using jaxmia::Load;
using jaxmia::Max;
using jaxmia::ParallelFor;
using jaxmia::Splat;
using jaxmia::Store;
using jaxmia::Sum;
using jaxmia::V16;
constexpr int kHead = jaxmia::kLanes;  // one head row (Dh = 16 floats) is one vector

struct Shape {
  int64_t n, t, h, d;
};

ffi::Error ReadShape(ffi::Buffer<ffi::F32>& q, Shape* s) {
  auto dims = q.dimensions();
  if (dims.size() < 3) return ffi::Error::InvalidArgument("attention: q must be [..., T, H, Dh]");
  int64_t r = dims.size();
  s->t = dims[r - 3];
  s->h = dims[r - 2];
  s->d = dims[r - 1];
  s->n = 1;
  for (int64_t i = 0; i < r - 3; ++i) s->n *= dims[i];
  return ffi::Error::Success();
}

// A row of T <= 128 attention weights is NV <= 8 vectors. Block buffers live on the stack, sized
// by NV (T <= 16 NV).

// Rows of one (n, h) block of a [N, T, H, 16] array.
inline const float* Row(const float* base, const Shape& s, int64_t n, int64_t h, int64_t i) {
  return base + ((n * s.t + i) * s.h + h) * kHead;
}
inline float* Row(float* base, const Shape& s, int64_t n, int64_t h, int64_t i) {
  return base + ((n * s.t + i) * s.h + h) * kHead;
}

// The keep mask of row i of block `item` as NV vectors of 0 / inv_keep (all 1 without dropout;
// lanes j >= T are never used): elements of fastrand's [N, H, T, T] draw.
template <int NV>
inline void MaskRow(const Dropout& drop, int64_t item, int64_t i, int64_t t, V16* out) {
  for (int c = 0; c < NV; ++c) out[c] = jaxmia::KeepFactors(drop, (item * t + i) * t + c * kHead);
}

// The T rows of one head block as vectors (rows T..T+3 zero, for the 4-row blocks below).
inline void Rows(const float* base, const Shape& s, int64_t n, int64_t h, V16* rows) {
  for (int64_t j = 0; j < s.t; ++j) rows[j] = Load(Row(base, s, n, h, j));
  for (int64_t j = s.t; j < s.t + 4; ++j) rows[j] = V16{};
}

// xt[k][c] = lanes of column k of the T x 16 block x (16 rows of NV vectors).
template <int NV>
inline void Transpose(const V16* x, int64_t t, V16* xt) {
  float tmp[kHead][NV * kHead] = {};
  for (int64_t j = 0; j < t; ++j)
    for (int k = 0; k < kHead; ++k) tmp[k][j] = x[j][k];
  for (int k = 0; k < kHead; ++k)
    for (int c = 0; c < NV; ++c) xt[k * NV + c] = Load(&tmp[k][c * kHead]);
}

// out[i][:] = a[i] . b^T for i < T (rows of NV vectors), four rows at a time so that the
// multiply-adds of different rows overlap.
template <int NV>
inline void TimesT(const V16* a, int64_t t, const V16* bt, V16* out) {
  for (int64_t i = 0; i < t; i += 4) {
    V16 acc[4][NV] = {};
    for (int k = 0; k < kHead; ++k)
      for (int r = 0; r < 4; ++r) {
        const V16 x = Splat(a[i + r][k]);
        for (int c = 0; c < NV; ++c) acc[r][c] += x * bt[k * NV + c];
      }
    for (int r = 0; r < 4 && i + r < t; ++r)
      for (int c = 0; c < NV; ++c) out[(i + r) * NV + c] = acc[r][c];
  }
}

// Rows are taken eight at a time below, so that eight independent multiply-add chains overlap;
// w holds at least Padded8(T) rows, those past T zero.
inline int64_t Padded8(int64_t t) { return (t + 7) / 8 * 8; }

// out[i] = sum_j w[i][j] b[j] for i < T (w: rows of NV vectors).
template <int NV>
inline void Times(const V16* w, int64_t t, const V16* b, V16* out) {
  for (int64_t i = 0; i < t; i += 8) {
    V16 acc[8] = {};
    for (int64_t j = 0; j < t; ++j) {
      const V16 bj = b[j];
      for (int r = 0; r < 8; ++r) acc[r] += w[(i + r) * NV + j / kHead][j % kHead] * bj;
    }
    for (int r = 0; r < 8 && i + r < t; ++r) out[i + r] = acc[r];
  }
}

// out[j] = sum_i w[i][j] b[i] for j < T (w^T b); lanes j >= T of w are zero.
template <int NV>
inline void TransposedTimes(const V16* w, int64_t t, const V16* b, V16* out) {
  for (int64_t j = 0; j < t; j += 8) {
    V16 acc[8] = {};
    for (int64_t i = 0; i < t; ++i) {
      const V16 bi = b[i];
      const float* row = reinterpret_cast<const float*>(w + i * NV) + j;
      for (int r = 0; r < 8; ++r) acc[r] += row[r] * bi;
    }
    for (int r = 0; r < 8 && j + r < t; ++r) out[j + r] = acc[r];
  }
}

template <int NV>
void Forward(const Shape& s, const float* qp, const float* kp, const float* vp,
             const Dropout& drop, float scale, float* op, float* pp, int64_t item) {
  const int64_t n = item / s.h, h = item % s.h, t = s.t;
  constexpr int kRows = NV * kHead;
  V16 q[kRows + 4], k[kRows + 4], v[kRows + 4], kt[kHead * NV], w[(kRows + 8) * NV];
  V16 out[kRows];
  for (int64_t i = t * NV; i < Padded8(t) * NV; ++i) w[i] = V16{};
  Rows(qp, s, n, h, q);
  Rows(kp, s, n, h, k);
  Rows(vp, s, n, h, v);
  Transpose<NV>(k, t, kt);
  TimesT<NV>(q, t, kt, w);
  V16 valid[NV];
  for (int c = 0; c < NV; ++c)
    for (int l = 0; l < kHead; ++l) valid[c][l] = c * kHead + l < t ? 1.0f : 0.0f;
  float* probs = pp + item * t * kRows;  // rows padded to whole vectors (zero lanes past T)
  for (int64_t i = 0; i < t; ++i) {
    V16* row = w + i * NV;
    float top = -INFINITY;
    for (int c = 0; c < NV; ++c) {
      row[c] = valid[c] > 0.0f ? row[c] * scale : Splat(-INFINITY);
      top = std::max(top, Max(row[c]));
    }
    float total = 0.0f;
    for (int c = 0; c < NV; ++c) {
      row[c] = ExpNonPositive(row[c] - top) * valid[c];
      total += Sum(row[c]);
    }
    const float inv = 1.0f / total;
    V16 keep[NV];
    MaskRow<NV>(drop, item, i, t, keep);
    for (int c = 0; c < NV; ++c) {
      row[c] *= inv;
      Store(probs + i * kRows + c * kHead, row[c]);
      row[c] *= keep[c];  // the dropped-out weights W
    }
  }
  Times<NV>(w, t, v, out);
  for (int64_t i = 0; i < t; ++i) Store(Row(op, s, n, h, i), out[i]);
}

template <int NV>
void Backward(const Shape& s, const float* qp, const float* kp, const float* vp,
              const Dropout& drop, const float* pp, const float* gp, float scale, float* dqp,
              float* dkp, float* dvp, int64_t item) {
  const int64_t n = item / s.h, h = item % s.h, t = s.t;
  constexpr int kRows = NV * kHead;
  V16 q[kRows + 4], k[kRows + 4], v[kRows + 4], g[kRows + 4], vt[kHead * NV];
  V16 w[(kRows + 8) * NV], ds[(kRows + 8) * NV], dq[kRows], dk[kRows], dv[kRows];
  for (int64_t i = t * NV; i < Padded8(t) * NV; ++i) w[i] = ds[i] = V16{};
  Rows(qp, s, n, h, q);
  Rows(kp, s, n, h, k);
  Rows(vp, s, n, h, v);
  Rows(gp, s, n, h, g);
  Transpose<NV>(v, t, vt);
  TimesT<NV>(g, t, vt, ds);  // dW = dO V^T
  const float* probs = pp + item * t * kRows;
  for (int64_t i = 0; i < t; ++i) {
    V16 keep[NV], p[NV];
    MaskRow<NV>(drop, item, i, t, keep);
    float dot = 0.0f;
    for (int c = 0; c < NV; ++c) {
      p[c] = Load(probs + i * kRows + c * kHead);
      w[i * NV + c] = p[c] * keep[c];
      ds[i * NV + c] *= keep[c];  // dP
      dot += Sum(ds[i * NV + c] * p[c]);
    }
    for (int c = 0; c < NV; ++c) ds[i * NV + c] = scale * p[c] * (ds[i * NV + c] - dot);
  }
  TransposedTimes<NV>(w, t, g, dv);   // dV = W^T dO
  Times<NV>(ds, t, k, dq);            // dQ = scale dS K
  TransposedTimes<NV>(ds, t, q, dk);  // dK = scale dS^T Q
  for (int64_t i = 0; i < t; ++i) {
    Store(Row(dqp, s, n, h, i), dq[i]);
    Store(Row(dkp, s, n, h, i), dk[i]);
    Store(Row(dvp, s, n, h, i), dv[i]);
  }
}

// Calls body(NV) with NV = ceil(T / 16) as a compile-time constant.
template <typename Body>
ffi::Error ForLength(const Shape& s, Body body) {
  if (s.d != kHead) return ffi::Error::InvalidArgument("attention: head size must be 16");
  if (!jaxmia::WithVectors((s.t + kHead - 1) / kHead, body))
    return ffi::Error::InvalidArgument("attention: sequence length must be 1..128");
  return ffi::Error::Success();
}

// Reads the block shape from q and the dropout settings: `seeds` [..., 2] uint32, one pair per
// model of a vmap.
ffi::Error Prepare(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::U32>& seeds, float keep,
                   float inv_keep, int32_t use_dropout, Shape* shape, Dropout* drop) {
  if (auto err = ReadShape(q, shape); err.failure()) return err;
  const Shape& s = *shape;
  return jaxmia::MakeDropout(seeds, s.n * s.h * s.t * s.t, keep, inv_keep, use_dropout,
                             "attention", drop);
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                       ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::U32> seeds,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> probs,
                       float scale, float keep, float inv_keep, int32_t use_dropout) {
  Shape s;
  Dropout drop;
  if (auto err = Prepare(q, seeds, keep, inv_keep, use_dropout, &s, &drop); err.failure())
    return err;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  float *op = out->typed_data(), *pp = probs->typed_data();
  return ForLength(s, [&](auto nv) {
    ParallelFor(pool, s.n * s.h, [=](int64_t item) {
      Forward<decltype(nv)::value>(s, qp, kp, vp, drop, scale, op, pp, item);
    });
  });
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::U32> seeds,
                        ffi::Buffer<ffi::F32> probs, ffi::Buffer<ffi::F32> dout,
                        ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                        ffi::ResultBuffer<ffi::F32> dv, float scale, float keep, float inv_keep,
                        int32_t use_dropout) {
  Shape s;
  Dropout drop;
  if (auto err = Prepare(q, seeds, keep, inv_keep, use_dropout, &s, &drop); err.failure())
    return err;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *pp = probs.typed_data(), *gp = dout.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  return ForLength(s, [&](auto nv) {
    ParallelFor(pool, s.n * s.h, [=](int64_t item) {
      Backward<decltype(nv)::value>(s, qp, kp, vp, drop, pp, gp, scale, dqp, dkp, dvp, item);
    });
  });
}

}  // namespace

namespace {

// The arguments both directions start with: q, k, v and the dropout seeds.
auto Inputs() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::U32>>();
}

// The attributes both directions end with.
template <typename Binding>
auto Attributes(Binding binding) {
  return std::move(binding)
      .template Attr<float>("scale")
      .template Attr<float>("keep")
      .template Attr<float>("inv_keep")
      .template Attr<int32_t>("use_dropout");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmiaAttentionForward, ForwardImpl,
                              Attributes(Inputs()
                                             .Ret<ffi::Buffer<ffi::F32>>()    // out
                                             .Ret<ffi::Buffer<ffi::F32>>()));  // probs

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmiaAttentionBackward, BackwardImpl,
                              Attributes(Inputs()
                                             .Arg<ffi::Buffer<ffi::F32>>()    // probs
                                             .Arg<ffi::Buffer<ffi::F32>>()    // d out
                                             .Ret<ffi::Buffer<ffi::F32>>()    // dq
                                             .Ret<ffi::Buffer<ffi::F32>>()    // dk
                                             .Ret<ffi::Buffer<ffi::F32>>()));  // dv
