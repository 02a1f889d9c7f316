// Depthwise 2-D convolution (NHWC input, kernel (kh, kw, 1, C), channel multiplier 1),
// float32, as XLA FFI handlers for the CPU backend: forward, input gradient, weight gradient.
//
// Why hand-written: XLA:CPU has no fast depthwise weight gradient (a reduction over N, H, W
// per tap and channel), and its grouped convolution is slow in all three directions. These
// loops keep the channel axis innermost and contiguous, so the compiler vectorises them; the
// hot loop is compiled three times on x86-64 (AVX-512, AVX2+FMA, baseline) and picked at run
// time, so the built library runs on any x86-64 CPU (other CPUs get the baseline build).
// Work is split over rows of the output
// and run on XLA's own intra-op thread pool (the FFI ThreadPool context), so the kernels
// use the cores XLA uses and never add threads of their own.
//
// Geometry: padding is given as (pad_top, pad_left); the far-side padding is implied by the
// output shape, exactly as in lax.conv_general_dilated with explicit padding.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "conv_common.h"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using jaxcnn_native::ParallelFor;

using jaxcnn_native::LoadV;
using jaxcnn_native::StoreV;
using jaxcnn_native::V16;
using jaxcnn_native::V4;
using jaxcnn_native::V8;

// out[c] (+)= sum_p a[p][c] * b[p][c] for c in [0, C): the one hot loop of all three kernels.
// `a` and `b` list the pairs of C-long channel vectors to multiply (taps x input pixels for
// the forward and input gradient, output pixels for one tap of the weight gradient). Blocks of
// four vectors keep four accumulators in registers across the pairs. V is the target's native
// vector (16, 8 or 4 floats; see conv_common.h: a 16-float vector under AVX2 ran 4-10x slower on Zen 3).
// Each channel's sum runs over p in the same order in every variant, so all give the same bits.
template <typename V, bool kAdd>
inline __attribute__((always_inline)) void PairSumBody(const float* const* a, const float* const* b, int64_t np,
                                                        float* __restrict out, int64_t C) {
  constexpr int64_t kW = sizeof(V) / sizeof(float);
  int64_t c0 = 0;
  for (; c0 + 4 * kW <= C; c0 += 4 * kW) {
    V r0 = {}, r1 = {}, r2 = {}, r3 = {};
    if (kAdd) {
      r0 = LoadV<V>(out + c0);
      r1 = LoadV<V>(out + c0 + kW);
      r2 = LoadV<V>(out + c0 + 2 * kW);
      r3 = LoadV<V>(out + c0 + 3 * kW);
    }
    for (int64_t p = 0; p < np; ++p) {
      const float* ap = a[p] + c0;
      const float* bp = b[p] + c0;
      r0 += LoadV<V>(ap) * LoadV<V>(bp);
      r1 += LoadV<V>(ap + kW) * LoadV<V>(bp + kW);
      r2 += LoadV<V>(ap + 2 * kW) * LoadV<V>(bp + 2 * kW);
      r3 += LoadV<V>(ap + 3 * kW) * LoadV<V>(bp + 3 * kW);
    }
    StoreV<V>(out + c0, r0);
    StoreV<V>(out + c0 + kW, r1);
    StoreV<V>(out + c0 + 2 * kW, r2);
    StoreV<V>(out + c0 + 3 * kW, r3);
  }
  for (; c0 + kW <= C; c0 += kW) {
    V r = {};
    if (kAdd) r = LoadV<V>(out + c0);
    for (int64_t p = 0; p < np; ++p) r += LoadV<V>(a[p] + c0) * LoadV<V>(b[p] + c0);
    StoreV<V>(out + c0, r);
  }
  for (; c0 < C; ++c0) {
    float r = kAdd ? out[c0] : 0.0f;
    for (int64_t p = 0; p < np; ++p) r += a[p][c0] * b[p][c0];
    out[c0] = r;
  }
}

using PairSumFn = void (*)(const float* const*, const float* const*, int64_t, float*, int64_t);

#define JAXCNN_PAIRSUM_VARIANT(NAME, V, ATTR)                                                         \
  template <bool kAdd>                                                                                \
  ATTR void NAME(const float* const* a, const float* const* b, int64_t np, float* out, int64_t C) {   \
    PairSumBody<V, kAdd>(a, b, np, out, C);                                                           \
  }

JAXCNN_PAIRSUM_VARIANT(PairSumBase, V4, )

#if defined(__x86_64__) || defined(__i386__)
JAXCNN_PAIRSUM_VARIANT(PairSumAvx512, V16, __attribute__((target("avx512f,avx512vl,avx2,fma"))))
JAXCNN_PAIRSUM_VARIANT(PairSumAvx2, V8, __attribute__((target("avx2,fma"))))
#endif

#if defined(__x86_64__) || defined(__i386__)
const PairSumFn kPairSet = jaxcnn_native::SelectIsa<PairSumFn>(PairSumAvx512<false>, PairSumAvx2<false>, PairSumBase<false>);
const PairSumFn kPairAdd = jaxcnn_native::SelectIsa<PairSumFn>(PairSumAvx512<true>, PairSumAvx2<true>, PairSumBase<true>);
#else
const PairSumFn kPairSet = PairSumBase<false>;
const PairSumFn kPairAdd = PairSumBase<true>;
#endif

struct Geometry {
  int64_t n, h, w, c;  // input
  int64_t kh, kw;
  int64_t oh, ow;  // output
  int64_t sh, sw, pt, pl;
};

// Output columns ow whose input column ow * sw + j - pl lies in [0, w): [lo, hi).
inline void ColumnRange(const Geometry& g, int64_t j, int64_t* lo, int64_t* hi) {
  const int64_t off = j - g.pl;  // input column of output column 0
  int64_t l = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
  int64_t top = g.w - 1 - off;  // need ow * sw <= top
  int64_t h = top < 0 ? 0 : top / g.sw + 1;
  *lo = std::min(l, g.ow);
  *hi = std::min(h, g.ow);
  if (*hi < *lo) *hi = *lo;
}

constexpr int64_t kChunks = 16;  // work items per call: enough to balance 2-8 threads

// y[n, oh, ow, c] = sum_{i, j} x[n, oh*sh + i - pt, ow*sw + j - pl, c] * w[i, j, c]
void Forward(ffi::ThreadPool& pool, const float* x, const float* w, float* y, const Geometry& g) {
  const int64_t rows = g.n * g.oh, C = g.c;
  const int64_t items = std::min(rows, kChunks);
  ParallelFor(pool, items, [&](int64_t item) {
    std::vector<const float*> a(g.kh * g.kw), b(g.kh * g.kw);
    for (int64_t r = rows * item / items; r < rows * (item + 1) / items; ++r) {
      const int64_t n = r / g.oh, oh = r % g.oh;
      const float* xn = x + n * g.h * g.w * C;
      float* yr = y + r * g.ow * C;
      auto border = [&](int64_t ow) {
        int64_t np = 0;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t ih = oh * g.sh + i - g.pt;
          if (ih < 0 || ih >= g.h) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t iw = ow * g.sw + j - g.pl;
            if (iw < 0 || iw >= g.w) continue;
            a[np] = xn + (ih * g.w + iw) * C;
            b[np] = w + (i * g.kw + j) * C;
            ++np;
          }
        }
        kPairSet(a.data(), b.data(), np, yr + ow * C, C);
      };
      // Interior columns [olo, ohi), whose taps all lie inside the row: the same pairs shifted by
      // sw pixels per column, so the pointers are stepped instead of rebuilt and re-checked.
      const int64_t olo = std::min(g.ow, (g.pl + g.sw - 1) / g.sw);
      const int64_t last = g.w - g.kw + g.pl;  // interior needs ow * sw <= last
      const int64_t ohi = std::max(olo, std::min(g.ow, last < 0 ? int64_t{0} : last / g.sw + 1));
      for (int64_t ow = 0; ow < olo; ++ow) border(ow);
      if (ohi > olo) {
        int64_t np = 0;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t ih = oh * g.sh + i - g.pt;
          if (ih < 0 || ih >= g.h) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            a[np] = xn + (ih * g.w + olo * g.sw + j - g.pl) * C;
            b[np] = w + (i * g.kw + j) * C;
            ++np;
          }
        }
        const int64_t step = g.sw * C;
        for (int64_t ow = olo; ow < ohi; ++ow) {
          kPairSet(a.data(), b.data(), np, yr + ow * C, C);
          for (int64_t q = 0; q < np; ++q) a[q] += step;
        }
      }
      for (int64_t ow = ohi; ow < g.ow; ++ow) border(ow);
    }
  });
}

// dx[n, ih, iw, c] = sum over taps (i, j) and output pixels (oh, ow) with
// oh*sh + i - pt = ih and ow*sw + j - pl = iw of dy[n, oh, ow, c] * w[i, j, c].
void InputGrad(ffi::ThreadPool& pool, const float* dy, const float* w, float* dx, const Geometry& g) {
  const int64_t rows = g.n * g.h, C = g.c;
  const int64_t items = std::min(rows, kChunks);
  // ow_of[iw * kw + j]: the output column that tap column j maps onto input column iw, or -1
  // (precomputed: the divisibility tests would otherwise cost a division per tap and pixel).
  std::vector<int64_t> ow_of(g.w * g.kw, -1);
  for (int64_t iw = 0; iw < g.w; ++iw) {
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t u = iw + g.pl - j;  // = ow * sw
      if (u >= 0 && u % g.sw == 0 && u / g.sw < g.ow) ow_of[iw * g.kw + j] = u / g.sw;
    }
  }
  ParallelFor(pool, items, [&](int64_t item) {
    std::vector<const float*> a(g.kh * g.kw), b(g.kh * g.kw);
    std::vector<int64_t> taps_i, taps_oh;
    for (int64_t r = rows * item / items; r < rows * (item + 1) / items; ++r) {
      const int64_t n = r / g.h, ih = r % g.h;
      taps_i.clear();
      taps_oh.clear();
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t t = ih + g.pt - i;  // = oh * sh
        if (t >= 0 && t % g.sh == 0 && t / g.sh < g.oh) {
          taps_i.push_back(i);
          taps_oh.push_back(t / g.sh);
        }
      }
      const float* dyn = dy + n * g.oh * g.ow * C;
      float* dxr = dx + r * g.w * C;
      auto column = [&](int64_t iw) {
        int64_t np = 0;
        for (size_t q = 0; q < taps_i.size(); ++q) {
          const int64_t i = taps_i[q];
          const float* dyr = dyn + taps_oh[q] * g.ow * C;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t ow = ow_of[iw * g.kw + j];
            if (ow < 0) continue;
            a[np] = dyr + ow * C;
            b[np] = w + (i * g.kw + j) * C;
            ++np;
          }
        }
        kPairSet(a.data(), b.data(), np, dxr + iw * C, C);
      };
      // Stride 1 in width: for input columns [ilo, ihi) every tap column j hits an output column
      // (ow = iw + pl - j), so the pairs only shift by one pixel per column (as in Forward).
      int64_t ilo = g.w, ihi = g.w;
      if (g.sw == 1) {
        ilo = std::min(g.w, std::max<int64_t>(0, g.kw - 1 - g.pl));
        ihi = std::max(ilo, std::min(g.w, g.ow - g.pl));
      }
      for (int64_t iw = 0; iw < ilo; ++iw) column(iw);
      if (ihi > ilo) {
        int64_t np = 0;
        for (size_t q = 0; q < taps_i.size(); ++q) {
          const float* dyr = dyn + taps_oh[q] * g.ow * C;
          for (int64_t j = 0; j < g.kw; ++j) {
            a[np] = dyr + (ilo + g.pl - j) * C;
            b[np] = w + (taps_i[q] * g.kw + j) * C;
            ++np;
          }
        }
        for (int64_t iw = ilo; iw < ihi; ++iw) {
          kPairSet(a.data(), b.data(), np, dxr + iw * C, C);
          for (int64_t q = 0; q < np; ++q) a[q] += C;
        }
      }
      for (int64_t iw = ihi; iw < g.w; ++iw) column(iw);
    }
  });
}

// dw[i, j, c] = sum_{n, oh, ow} dy[n, oh, ow, c] * x[n, oh*sh + i - pt, ow*sw + j - pl, c].
// Each work item sums its own rows into a private accumulator; the accumulators are added in
// item order afterwards, so the result does not depend on which thread ran which item.
void WeightGrad(ffi::ThreadPool& pool, const float* x, const float* dy, float* dw, const Geometry& g) {
  const int64_t rows = g.n * g.oh, C = g.c, taps = g.kh * g.kw;
  const int64_t items = std::max<int64_t>(1, std::min<int64_t>(rows, 8));
  std::vector<float> acc(items * taps * C, 0.0f);
  ParallelFor(pool, items, [&](int64_t item) {
    float* mine = acc.data() + item * taps * C;
    std::vector<const float*> a(g.ow), b(g.ow);
    for (int64_t r = rows * item / items; r < rows * (item + 1) / items; ++r) {
      const int64_t n = r / g.oh, oh = r % g.oh;
      const float* xn = x + n * g.h * g.w * C;
      const float* dyr = dy + r * g.ow * C;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh + i - g.pt;
        if (ih < 0 || ih >= g.h) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          int64_t lo, hi;
          ColumnRange(g, j, &lo, &hi);
          int64_t np = 0;
          for (int64_t ow = lo; ow < hi; ++ow) {
            a[np] = dyr + ow * C;
            b[np] = xn + (ih * g.w + ow * g.sw + j - g.pl) * C;
            ++np;
          }
          kPairAdd(a.data(), b.data(), np, mine + (i * g.kw + j) * C, C);
        }
      }
    }
  });
  for (int64_t k = 0; k < taps * C; ++k) {
    float s = 0.0f;
    for (int64_t item = 0; item < items; ++item) s += acc[item * taps * C + k];
    dw[k] = s;
  }
}

ffi::Error CheckRank(const char* what, size_t rank, size_t want) {
  if (rank != want) return ffi::Error::InvalidArgument(std::string("jaxcnn depthwise: ") + what + " has wrong rank");
  return ffi::Error::Success();
}

ffi::Error DepthwiseForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                                ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (auto e = CheckRank("x", xd.size(), 4); e.failure()) return e;
  if (auto e = CheckRank("w", wd.size(), 4); e.failure()) return e;
  if (auto e = CheckRank("y", yd.size(), 4); e.failure()) return e;
  Geometry g{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], yd[1], yd[2], sh, sw, pt, pl};
  if (wd[2] != 1 || wd[3] != g.c || yd[3] != g.c || yd[0] != g.n)
    return ffi::Error::InvalidArgument("jaxcnn depthwise forward: shapes do not match");
  Forward(pool, x.typed_data(), w.typed_data(), y->typed_data(), g);
  return ffi::Error::Success();
}

ffi::Error DepthwiseInputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                                  ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  auto dyd = dy.dimensions(), wd = w.dimensions(), xd = dx->dimensions();
  if (auto e = CheckRank("dy", dyd.size(), 4); e.failure()) return e;
  if (auto e = CheckRank("w", wd.size(), 4); e.failure()) return e;
  if (auto e = CheckRank("dx", xd.size(), 4); e.failure()) return e;
  Geometry g{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], dyd[1], dyd[2], sh, sw, pt, pl};
  if (wd[2] != 1 || wd[3] != g.c || dyd[3] != g.c || dyd[0] != g.n)
    return ffi::Error::InvalidArgument("jaxcnn depthwise input gradient: shapes do not match");
  InputGrad(pool, dy.typed_data(), w.typed_data(), dx->typed_data(), g);
  return ffi::Error::Success();
}

ffi::Error DepthwiseWeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                   ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  auto xd = x.dimensions(), dyd = dy.dimensions(), wd = dw->dimensions();
  if (auto e = CheckRank("x", xd.size(), 4); e.failure()) return e;
  if (auto e = CheckRank("dy", dyd.size(), 4); e.failure()) return e;
  if (auto e = CheckRank("dw", wd.size(), 4); e.failure()) return e;
  Geometry g{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], dyd[1], dyd[2], sh, sw, pt, pl};
  if (wd[2] != 1 || wd[3] != g.c || dyd[3] != g.c || dyd[0] != g.n)
    return ffi::Error::InvalidArgument("jaxcnn depthwise weight gradient: shapes do not match");
  WeightGrad(pool, x.typed_data(), dy.typed_data(), dw->typed_data(), g);
  return ffi::Error::Success();
}

}  // namespace

#define JAXCNN_BIND(A, B, R)                                                                                \
  ffi::Ffi::Bind()                                                                                          \
      .Ctx<ffi::ThreadPool>()                                                                               \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                         \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                         \
      .Attr<int64_t>("sh")                                                                                  \
      .Attr<int64_t>("sw")                                                                                  \
      .Attr<int64_t>("pt")                                                                                  \
      .Attr<int64_t>("pl")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnDepthwiseForward, DepthwiseForwardImpl, JAXCNN_BIND(x, w, y));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnDepthwiseInputGrad, DepthwiseInputGradImpl, JAXCNN_BIND(dy, w, dx));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnDepthwiseWeightGrad, DepthwiseWeightGradImpl, JAXCNN_BIND(x, dy, dw));
