// LayerNorm of a residual sum with dropout on the branch (an XLA:CPU custom call, XLA FFI):
//   z = x + branch * M / keep,  xhat = (z - mean(z)) * rstd,  rstd = 1 / sqrt(var(z) + eps),
//   y = xhat * scale + bias
// over the last axis (D = 16 NV <= 128 features), with M the dropout keep mask drawn here from
// the seed words of the caller's key exactly as jaxmia/fastrand.py draws a Bernoulli array of
// branch's shape (so the pure-JAX reference applies the same mask). The forward pass returns y,
// xhat and rstd; the backward pass, given dy, computes
//   g = dy * scale,  dz = rstd * (g - mean(g) - xhat * mean(g * xhat)),
//   dx = dz,  dbranch = dz * M / keep,
// and per block of `chunk` rows the partial sums of dscale = sum(dy * xhat) and
// dbias = sum(dy), which the caller adds up (so the block sums, and the result, do not depend on
// the thread count). `scale` and `bias` are [G, D]: G = 1, or one row per model of a vmap, whose
// rows are the x rows of that model.
// Built by jaxmia/kernels/library.py and wrapped by jaxmia/kernels/layernorm.py;
// tests/test_layernorm_kernel.py checks it against the pure-JAX version.

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.h"

namespace ffi = xla::ffi;

namespace {

using jaxmia::Dropout;
using jaxmia::KeepFactors;
using jaxmia::Load;
using jaxmia::ParallelFor;
using jaxmia::RowShape;
using jaxmia::Store;
using jaxmia::Sum;
using jaxmia::V16;
constexpr int kLanes = jaxmia::kLanes;

template <int NV>
void ForwardRow(const RowShape& s, const float* xp, const float* bp, const float* scalep,
                const float* biasp, const Dropout& drop, float eps, float* yp, float* hp,
                float* rp, int64_t row) {
  constexpr int D = NV * kLanes;
  const int64_t at = row * D, g = (row / s.per_group) * D;
  V16 z[NV], total = {}, squares = {};
  for (int c = 0; c < NV; ++c) {
    const int64_t e = at + c * kLanes;
    z[c] = Load(xp + e) + Load(bp + e) * KeepFactors(drop, e);
    total += z[c];
  }
  const float mean = Sum(total) * (1.0f / D);
  for (int c = 0; c < NV; ++c) {
    z[c] -= mean;
    squares += z[c] * z[c];
  }
  const float rstd = 1.0f / std::sqrt(Sum(squares) * (1.0f / D) + eps);
  for (int c = 0; c < NV; ++c) {
    const int64_t e = at + c * kLanes;
    const V16 h = z[c] * rstd;
    Store(hp + e, h);
    Store(yp + e, h * Load(scalep + g + c * kLanes) + Load(biasp + g + c * kLanes));
  }
  rp[row] = rstd;
}

// Rows [first, end) of one group, and their partial dscale / dbias sums into ds / db.
template <int NV>
void BackwardRows(const float* dyp, const float* hp, const float* rp, const float* scalep,
                  const Dropout& drop, int64_t first, int64_t end, float* dxp, float* dbp,
                  float* ds, float* db) {
  constexpr int D = NV * kLanes;
  V16 gamma[NV], dscale[NV] = {}, dbias[NV] = {};
  for (int c = 0; c < NV; ++c) gamma[c] = Load(scalep + c * kLanes);
  for (int64_t row = first; row < end; ++row) {
    const int64_t at = row * D;
    V16 dy[NV], h[NV], g[NV], s1 = {}, s2 = {};
    for (int c = 0; c < NV; ++c) {
      dy[c] = Load(dyp + at + c * kLanes);
      h[c] = Load(hp + at + c * kLanes);
      g[c] = dy[c] * gamma[c];
      s1 += g[c];
      s2 += g[c] * h[c];
      dscale[c] += dy[c] * h[c];
      dbias[c] += dy[c];
    }
    const float m1 = Sum(s1) * (1.0f / D), m2 = Sum(s2) * (1.0f / D), rstd = rp[row];
    for (int c = 0; c < NV; ++c) {
      const int64_t e = at + c * kLanes;
      const V16 dz = rstd * (g[c] - m1 - h[c] * m2);
      Store(dxp + e, dz);
      Store(dbp + e, dz * KeepFactors(drop, e));
    }
  }
  for (int c = 0; c < NV; ++c) {
    Store(ds + c * kLanes, dscale[c]);
    Store(db + c * kLanes, dbias[c]);
  }
}

constexpr int64_t kForwardRows = 32;  // rows per forward work item

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> branch, ffi::Buffer<ffi::F32> scale,
                       ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::U32> seeds,
                       ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> xhat,
                       ffi::ResultBuffer<ffi::F32> rstd, float eps, float keep, float inv_keep,
                       int32_t use_dropout) {
  RowShape s;
  if (auto err = jaxmia::ReadRows(x, scale, "add_layernorm", &s); err.failure()) return err;
  if (branch.element_count() != x.element_count() || bias.element_count() != scale.element_count())
    return ffi::Error::InvalidArgument("add_layernorm: branch must match x, bias must match scale");
  Dropout drop;
  if (auto err = jaxmia::MakeDropout(seeds, s.rows * s.d, keep, inv_keep, use_dropout,
                                     "add_layernorm", &drop);
      err.failure())
    return err;
  const float *xp = x.typed_data(), *bp = branch.typed_data(), *sp = scale.typed_data(),
              *biasp = bias.typed_data();
  float *yp = y->typed_data(), *hp = xhat->typed_data(), *rp = rstd->typed_data();
  jaxmia::ForWidth(s, [&](auto nv) {
    const int64_t items = (s.rows + kForwardRows - 1) / kForwardRows;
    ParallelFor(pool, items, [=](int64_t item) {
      const int64_t end = std::min(s.rows, (item + 1) * kForwardRows);
      for (int64_t row = item * kForwardRows; row < end; ++row)
        ForwardRow<decltype(nv)::value>(s, xp, bp, sp, biasp, drop, eps, yp, hp, rp, row);
    });
  });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                        ffi::Buffer<ffi::F32> xhat, ffi::Buffer<ffi::F32> rstd,
                        ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::U32> seeds,
                        ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dbranch,
                        ffi::ResultBuffer<ffi::F32> dscale, ffi::ResultBuffer<ffi::F32> dbias,
                        float keep, float inv_keep, int32_t use_dropout, int64_t chunk) {
  RowShape s;
  if (auto err = jaxmia::ReadRows(xhat, scale, "add_layernorm", &s); err.failure()) return err;
  if (chunk < 1) return ffi::Error::InvalidArgument("add_layernorm: chunk must be positive");
  const int64_t parts = (s.per_group + chunk - 1) / chunk;
  if (dscale->element_count() != s.groups * parts * s.d ||
      dbias->element_count() != s.groups * parts * s.d)
    return ffi::Error::InvalidArgument("add_layernorm: partial sums must be [G, parts, D]");
  Dropout drop;
  if (auto err = jaxmia::MakeDropout(seeds, s.rows * s.d, keep, inv_keep, use_dropout,
                                     "add_layernorm", &drop);
      err.failure())
    return err;
  const float *dyp = dy.typed_data(), *hp = xhat.typed_data(), *rp = rstd.typed_data(),
              *sp = scale.typed_data();
  float *dxp = dx->typed_data(), *dbp = dbranch->typed_data(), *dsp = dscale->typed_data(),
        *dbiasp = dbias->typed_data();
  jaxmia::ForWidth(s, [&](auto nv) {
    jaxmia::ForRowBlocks(pool, s, chunk, [=](int64_t g, int64_t first, int64_t end, int64_t item) {
      BackwardRows<decltype(nv)::value>(dyp, hp, rp, sp + g * s.d, drop, first, end, dxp, dbp,
                                        dsp + item * s.d, dbiasp + item * s.d);
    });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmiaAddLayerNormForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // branch
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::U32>>()  // seeds
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Ret<ffi::Buffer<ffi::F32>>()  // xhat
                                  .Ret<ffi::Buffer<ffi::F32>>()  // rstd
                                  .Attr<float>("eps")
                                  .Attr<float>("keep")
                                  .Attr<float>("inv_keep")
                                  .Attr<int32_t>("use_dropout"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmiaAddLayerNormBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xhat
                                  .Arg<ffi::Buffer<ffi::F32>>()  // rstd
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::U32>>()  // seeds
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dbranch
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dscale partial sums
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dbias partial sums
                                  .Attr<float>("keep")
                                  .Attr<float>("inv_keep")
                                  .Attr<int32_t>("use_dropout")
                                  .Attr<int64_t>("chunk"));
