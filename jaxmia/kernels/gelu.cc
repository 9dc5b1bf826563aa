// Dropout of the exact GELU of a biased product (a Transformer's feed-forward activation; an
// XLA:CPU custom call, XLA FFI):
//   u = z + bias,  y = GELU(u) * M / keep,  GELU(u) = u Phi(u) = u (1 + erf(u / sqrt 2)) / 2
// over rows of D = 16 NV <= 128 features, with M the dropout keep mask drawn here from the seed
// words of the caller's key exactly as jaxmia/fastrand.py draws a Bernoulli array of z's shape
// (so the pure-JAX reference applies the same mask). The backward pass recomputes u and gives
//   dz = dy * M / keep * (Phi(u) + u phi(u))
// and per block of `chunk` rows the partial sums of dbias = sum(dz), which the caller adds up (so
// the result does not depend on the thread count). `bias` is [G, D]: G = 1, or one row per model
// of a vmap. erf is Eigen's rational approximation on [-4, 4] (max abs error 4e-7 in float32,
// about XLA's own).
// Built by jaxmia/kernels/library.py and wrapped by jaxmia/kernels/gelu.py;
// tests/test_gelu_kernel.py checks it against the pure-JAX version.

#include <cstdint>
#include <type_traits>

#include "common.h"

namespace ffi = xla::ffi;

namespace {

using jaxmia::Dropout;
using jaxmia::KeepFactors;
using jaxmia::Load;
using jaxmia::RowShape;
using jaxmia::Splat;
using jaxmia::Store;
using jaxmia::V16;
constexpr int kLanes = jaxmia::kLanes;

inline V16 Erf(V16 x) {
  x = x < -4.0f ? Splat(-4.0f) : x;
  x = x > 4.0f ? Splat(4.0f) : x;
  const V16 x2 = x * x;
  V16 p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  V16 q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return p * x / q;
}

constexpr float kInvSqrt2 = 0.70710678118654752f, kInvSqrt2Pi = 0.39894228040143268f;

template <int NV>
void ForwardRows(const float* zp, const float* bp, const Dropout& drop, int64_t first,
                 int64_t end, float* yp) {
  constexpr int D = NV * kLanes;
  V16 bias[NV];
  for (int c = 0; c < NV; ++c) bias[c] = Load(bp + c * kLanes);
  for (int64_t row = first; row < end; ++row)
    for (int c = 0; c < NV; ++c) {
      const int64_t e = row * D + c * kLanes;
      const V16 u = Load(zp + e) + bias[c];
      Store(yp + e, 0.5f * u * (1.0f + Erf(u * kInvSqrt2)) * KeepFactors(drop, e));
    }
}

template <int NV>
void BackwardRows(const float* dyp, const float* zp, const float* bp, const Dropout& drop,
                  int64_t first, int64_t end, float* dzp, float* dbp) {
  constexpr int D = NV * kLanes;
  V16 bias[NV], dbias[NV] = {};
  for (int c = 0; c < NV; ++c) bias[c] = Load(bp + c * kLanes);
  for (int64_t row = first; row < end; ++row)
    for (int c = 0; c < NV; ++c) {
      const int64_t e = row * D + c * kLanes;
      const V16 u = Load(zp + e) + bias[c];
      const V16 cdf = 0.5f * (1.0f + Erf(u * kInvSqrt2));
      const V16 pdf = jaxmia::ExpNonPositive(-0.5f * u * u) * kInvSqrt2Pi;
      const V16 dz = Load(dyp + e) * KeepFactors(drop, e) * (cdf + u * pdf);
      Store(dzp + e, dz);
      dbias[c] += dz;
    }
  for (int c = 0; c < NV; ++c) Store(dbp + c * kLanes, dbias[c]);
}

constexpr int64_t kForwardRows = 32;  // rows per forward work item

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> z, ffi::Buffer<ffi::F32> bias,
                       ffi::Buffer<ffi::U32> seeds, ffi::ResultBuffer<ffi::F32> y, float keep,
                       float inv_keep, int32_t use_dropout) {
  RowShape s;
  if (auto err = jaxmia::ReadRows(z, bias, "bias_gelu_dropout", &s); err.failure()) return err;
  Dropout drop;
  if (auto err = jaxmia::MakeDropout(seeds, s.rows * s.d, keep, inv_keep, use_dropout,
                                     "bias_gelu_dropout", &drop);
      err.failure())
    return err;
  const float *zp = z.typed_data(), *bp = bias.typed_data();
  float* yp = y->typed_data();
  jaxmia::ForWidth(s, [&](auto nv) {
    jaxmia::ForRowBlocks(pool, s, kForwardRows, [=](int64_t g, int64_t first, int64_t end,
                                                    int64_t) {
      ForwardRows<decltype(nv)::value>(zp, bp + g * s.d, drop, first, end, yp);
    });
  });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> z,
                        ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::U32> seeds,
                        ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dbias,
                        float keep, float inv_keep, int32_t use_dropout, int64_t chunk) {
  RowShape s;
  if (auto err = jaxmia::ReadRows(z, bias, "bias_gelu_dropout", &s); err.failure()) return err;
  if (chunk < 1) return ffi::Error::InvalidArgument("bias_gelu_dropout: chunk must be positive");
  const int64_t parts = (s.per_group + chunk - 1) / chunk;
  if (dbias->element_count() != s.groups * parts * s.d)
    return ffi::Error::InvalidArgument("bias_gelu_dropout: partial sums must be [G, parts, D]");
  Dropout drop;
  if (auto err = jaxmia::MakeDropout(seeds, s.rows * s.d, keep, inv_keep, use_dropout,
                                     "bias_gelu_dropout", &drop);
      err.failure())
    return err;
  const float *dyp = dy.typed_data(), *zp = z.typed_data(), *bp = bias.typed_data();
  float *dzp = dz->typed_data(), *dbp = dbias->typed_data();
  jaxmia::ForWidth(s, [&](auto nv) {
    jaxmia::ForRowBlocks(pool, s, chunk, [=](int64_t g, int64_t first, int64_t end, int64_t item) {
      BackwardRows<decltype(nv)::value>(dyp, zp, bp + g * s.d, drop, first, end, dzp,
                                        dbp + item * s.d);
    });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmiaBiasGeluDropoutForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::U32>>()  // seeds
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Attr<float>("keep")
                                  .Attr<float>("inv_keep")
                                  .Attr<int32_t>("use_dropout"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmiaBiasGeluDropoutBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::U32>>()  // seeds
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dbias partial sums
                                  .Attr<float>("keep")
                                  .Attr<float>("inv_keep")
                                  .Attr<int32_t>("use_dropout")
                                  .Attr<int64_t>("chunk"));
