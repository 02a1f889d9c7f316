// Weight gradient (and bias gradient) of a dense 2-D convolution, float32, as an XLA FFI
// handler for the CPU backend:
//
//   dw[i, j, ci, co] = sum_{n, oh, ow} x[n, oh*sh + i - pt, ow*sw + j - pl, ci] * dy[n, oh, ow, co]
//   db[co]           = sum_{n, oh, ow} dy[n, oh, ow, co]
//
// x is NHWC, dy NHWC, dw HWIO: the layouts jaxcnn keeps, so no transposes.
//
// Why hand-written: XLA:CPU computes this as a forward convolution of x with dy (batch and
// feature axes swapped, the stride as a window dilation), which it canonicalises with full
// transposes and then runs through Eigen's image-patch contraction, whose patch gather goes
// element by element for strided layers (see ../shared/research/xla-cpu-conv-backward.md).
//
// How: for one kernel row i and one output pixel, the input window x[n, ih, ow*sw - pl + (0..kw-1), :]
// is kw*Cin contiguous floats, and dw[i] (kw*Cin x Cout, HWIO) gets their outer product with
// dy[n, oh, ow, :]. So dw[i] += A^T B over all pixels, a GEMM with a long K (pixels) and a
// short M x N. The micro-kernel keeps an R x (NV vectors) tile of dw[i] in registers and, per
// pixel, loads NV vectors of dy and broadcasts R window floats (outer-product accumulation, as
// oneDNN's and libxsmm's backward-weights kernels do). Pixels are walked in chunks of output
// rows sized for L2; for each chunk the input rows are copied into zero-padded rows (so
// padding costs no branch) and dy into rows padded to a multiple of 16 channels (so no
// channel tail), the bias gradient summed on the way.
//
// Threads: the output rows are split into P ranges, each summed into a private accumulator, and the
// (padded) channels into Q ranges; the P*Q items run on XLA's intra-op pool (parallel.h). The
// accumulators are added in range order, so the result does not depend on thread timing. P and Q
// depend only on the shape (few pixels and many channels: split channels; else split pixels).
//
// ISA: the chunk loop is compiled for AVX-512 (16-float vectors, 12 x 2 tile), AVX2+FMA (8-float
// vectors, 6 x 2) and baseline x86-64 (4-float SSE vectors, 6 x 2), and picked at run time
// (conv_common.h's SelectIsa; __builtin_cpu_supports reports AVX-512 on AMD Zen 4/5 as on Intel).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "conv_common.h"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

// a * b + c as one fused multiply-add (ISO C++ mode would otherwise keep them apart)
#pragma GCC optimize("fp-contract=fast")

namespace ffi = xla::ffi;

namespace {

using jaxcnn_native::Geo;
using jaxcnn_native::kPad;
using jaxcnn_native::LoadV;
using jaxcnn_native::ParallelFor;
using jaxcnn_native::StoreV;
using jaxcnn_native::V16;
using jaxcnn_native::V8;

// What one chunk hands the micro-kernels: per output row q (with a valid input row for this
// kernel row), the packed input row xr[q] (window of pixel o at xr[q] + o * xstep) and the packed
// dy row dr[q] (pixel o at dr[q] + o * dstride).
struct Rows {
  const float* const* xr;
  const float* const* dr;
  int64_t nrows, ow, xstep, dstride;
};

// acc[r * astride + v * W + lane] += sum over the rows' pixels of window[m0 + r] * dy[c0 + v * W + lane]
template <typename V, int W, int R, int NV>
inline __attribute__((always_inline)) void Tile(const Rows& rows, int64_t m0, int64_t c0, float* acc,
                                                int64_t astride) {
  V a[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) a[r][v] = LoadV<V>(acc + r * astride + v * W);
  for (int64_t q = 0; q < rows.nrows; ++q) {
    const float* xp = rows.xr[q] + m0;
    const float* dp = rows.dr[q] + c0;
    for (int64_t o = 0; o < rows.ow; ++o, xp += rows.xstep, dp += rows.dstride) {
      V d[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) d[v] = LoadV<V>(dp + v * W);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const float b = xp[r];  // scalar * vector: a broadcast (V{} + b would add 0.0f first)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) a[r][v] += b * d[v];
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) StoreV<V>(acc + r * astride + v * W, a[r][v]);
}

// One kernel row's accumulator acc (m x astride, at channel offset 0 of this item's range) over
// a chunk: tiles of up to RMAX window floats by up to NVMAX vectors of channels (width cw).
template <typename V, int W, int RMAX, int NVMAX>
inline __attribute__((always_inline)) void ChunkRow(const Rows& rows, int64_t m, int64_t cw, float* acc,
                                                    int64_t astride) {
  for (int64_t m0 = 0; m0 < m; m0 += RMAX) {
    const int64_t r = std::min<int64_t>(RMAX, m - m0);
    for (int64_t c0 = 0; c0 < cw; c0 += NVMAX * W) {
      const int64_t nv = std::min<int64_t>(NVMAX, (cw - c0) / W);
      float* t = acc + m0 * astride + c0;
#define JAXCNN_TILE_CASE(RR)                                                \
  case RR:                                                                  \
    if (NVMAX >= 2 && nv == 2) Tile<V, W, (RR <= RMAX ? RR : 1), 2>(rows, m0, c0, t, astride); \
    else Tile<V, W, (RR <= RMAX ? RR : 1), 1>(rows, m0, c0, t, astride);    \
    break;
      switch (r) {
        JAXCNN_CASES_1_TO_12(JAXCNN_TILE_CASE)
        default:
          break;
      }
#undef JAXCNN_TILE_CASE
    }
  }
}

// The work of one item: output rows [r_lo, r_hi) (r = n * oh + oh_index), channels [c_lo, c_hi)
// of the padded range, summed into acc (kh x m x cp) and dbacc (cp).
struct Item {
  const float* x;
  const float* dy;
  float* acc;
  float* dbacc;
  int64_t r_lo, r_hi, c_lo, c_hi;
  bool bias;
};

template <typename V, int W, int RMAX, int NVMAX>
inline __attribute__((always_inline)) void RunItemBody(const Geo& g, const Item& it) {
  const int64_t cw = it.c_hi - it.c_lo;
  const int64_t xrow = g.wp * g.ci;  // floats per padded input row
  const int64_t drow = g.ow * cw;    // floats per packed dy row
  // rows per chunk: their packed dy and input rows (one per kernel row) in about 768 KB (within L2), or
  // in twice this item's accumulator when that is larger (up to 6 MB): every chunk streams the whole
  // accumulator through the tiles once, which dominates for deep layers with few pixels
  const int64_t per_row = std::max<int64_t>(1, (drow + g.kh * xrow) * 4);
  const int64_t acc_bytes = 4 * g.kh * g.m * cw;
  const int64_t budget = std::min<int64_t>(int64_t{6} << 20, std::max<int64_t>(int64_t{768} << 10, 2 * acc_bytes));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(it.r_hi - it.r_lo, budget / per_row));
  // packed rows are written before they are read (a chunk's nr dy rows; its valid input rows), so no
  // value-initialisation
  const std::unique_ptr<float[]> dpack(new float[chunk * drow]), xpack(new float[chunk * g.kh * xrow]);
  std::vector<const float*> xr(chunk), dr(chunk);
  std::vector<char> valid(chunk * g.kh);
  const int64_t copy_lo = std::min(it.c_lo, g.co), copy_hi = std::min(it.c_hi, g.co);
  for (int64_t r0 = it.r_lo; r0 < it.r_hi; r0 += chunk) {
    const int64_t nr = std::min(chunk, it.r_hi - r0);
    // pack dy rows (channels [c_lo, c_hi), zero beyond co) and sum the bias gradient
    for (int64_t q = 0; q < nr; ++q) {
      const float* src = it.dy + (r0 + q) * g.ow * g.co;
      float* dst = dpack.get() + q * drow;
      for (int64_t o = 0; o < g.ow; ++o) {
        float* d = dst + o * cw;
        const float* s = src + o * g.co;
        for (int64_t c = copy_lo; c < copy_hi; ++c) d[c - it.c_lo] = s[c];
        for (int64_t c = copy_hi; c < it.c_hi; ++c) d[c - it.c_lo] = 0.0f;
      }
      if (it.bias) {
        for (int64_t o = 0; o < g.ow; ++o) {
          const float* d = dst + o * cw;
          for (int64_t c = 0; c < cw; ++c) it.dbacc[it.c_lo + c] += d[c];
        }
      }
    }
    // pack the input row each (output row, kernel row) reads, zero-padded left and right
    for (int64_t q = 0; q < nr; ++q) {
      const int64_t r = r0 + q, n = r / g.oh, oh = r % g.oh;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh + i - g.pt;
        const bool ok = ih >= 0 && ih < g.h;
        valid[q * g.kh + i] = ok;
        if (!ok) continue;
        float* dst = xpack.get() + (q * g.kh + i) * xrow;
        jaxcnn_native::PackInputRow(g, it.x + ((n * g.h + ih) * g.w) * g.ci, dst);
      }
    }
    for (int64_t i = 0; i < g.kh; ++i) {
      int64_t np = 0;
      for (int64_t q = 0; q < nr; ++q) {
        if (!valid[q * g.kh + i]) continue;
        xr[np] = xpack.get() + (q * g.kh + i) * xrow;
        dr[np] = dpack.get() + q * drow;
        ++np;
      }
      if (!np) continue;
      Rows rows{xr.data(), dr.data(), np, g.ow, g.sw * g.ci, cw};
      ChunkRow<V, W, RMAX, NVMAX>(rows, g.m, cw, it.acc + i * g.m * g.cp + it.c_lo, g.cp);
    }
  }
}

using RunItemFn = void (*)(const Geo&, const Item&);

void RunItemBase(const Geo& g, const Item& it) { RunItemBody<jaxcnn_native::V4, 4, 6, 2>(g, it); }

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void RunItemAvx512(const Geo& g, const Item& it) {
  RunItemBody<V16, 16, 12, 2>(g, it);
}
__attribute__((target("avx2,fma"))) void RunItemAvx2(const Geo& g, const Item& it) {
  RunItemBody<V8, 8, 6, 2>(g, it);
}
#endif

#if defined(__x86_64__) || defined(__i386__)
const RunItemFn kRunItem = jaxcnn_native::SelectIsa<RunItemFn>(RunItemAvx512, RunItemAvx2, RunItemBase);
#else
const RunItemFn kRunItem = RunItemBase;
#endif

constexpr int64_t kItems = 8;  // work items per call: enough to balance 2-8 threads

void WeightGrad(ffi::ThreadPool& pool, const float* x, const float* dy, float* dw, float* db, const Geo& g) {
  const int64_t rows = g.n * g.oh, pixels = rows * g.ow, blocks = g.cp / kPad;
  // Row ranges P (each with a private accumulator): one per 1024 pixels, at most kItems; the rest of
  // the kItems go to channel ranges Q (whole 16-channel blocks, at least 32 channels each).
  const int64_t acc_size = g.kh * g.m * g.cp;
  // ... and no more accumulators than fit in about 32 MB (a 3x3 512 -> 512 layer's are 9 MB each)
  const int64_t acc_cap = std::max<int64_t>(1, (int64_t{32} << 20) / (4 * (acc_size + g.cp)));
  const int64_t p_count = std::max<int64_t>(1, std::min<int64_t>({kItems, rows, pixels / 1024, acc_cap}));
  const int64_t q_count = std::max<int64_t>(1, std::min<int64_t>(kItems / p_count, blocks / 2));
  const bool bias = db != nullptr;
  if (p_count == 1 && g.cp == g.co) {
    // one row range and no channel padding: accumulate straight into dw (no copy, no reduction)
    std::fill(dw, dw + acc_size, 0.0f);
    std::vector<float> dbacc(g.cp, 0.0f);
    ParallelFor(pool, q_count, [&](int64_t q) {
      Item it{x, dy, dw, dbacc.data(), 0, rows, blocks * q / q_count * kPad, blocks * (q + 1) / q_count * kPad, bias};
      kRunItem(g, it);
    });
    if (bias) std::copy(dbacc.begin(), dbacc.begin() + g.co, db);
    return;
  }
  std::unique_ptr<float[]> acc(new float[p_count * (acc_size + g.cp)]());
  ParallelFor(pool, p_count * q_count, [&](int64_t k) {
    const int64_t p = k / q_count, q = k % q_count;
    Item it;
    it.x = x;
    it.dy = dy;
    it.acc = acc.get() + p * (acc_size + g.cp);
    it.dbacc = it.acc + acc_size;
    it.r_lo = rows * p / p_count;
    it.r_hi = rows * (p + 1) / p_count;
    it.c_lo = blocks * q / q_count * kPad;
    it.c_hi = blocks * (q + 1) / q_count * kPad;
    it.bias = bias;
    kRunItem(g, it);
  });
  // dw[i, j, ci, co] = sum_p acc[p][i][j * ci + ci][co], in p order
  const int64_t out_rows = g.kh * g.m;
  const int64_t red_items = std::min<int64_t>(out_rows, kItems);
  ParallelFor(pool, red_items, [&](int64_t k) {
    for (int64_t row = out_rows * k / red_items; row < out_rows * (k + 1) / red_items; ++row) {
      float* out = dw + row * g.co;
      const float* a0 = acc.get() + row * g.cp;
      for (int64_t c = 0; c < g.co; ++c) out[c] = a0[c];
      for (int64_t p = 1; p < p_count; ++p) {
        const float* ap = acc.get() + p * (acc_size + g.cp) + row * g.cp;
        for (int64_t c = 0; c < g.co; ++c) out[c] += ap[c];
      }
    }
  });
  if (bias) {
    for (int64_t c = 0; c < g.co; ++c) {
      float s = 0.0f;
      for (int64_t p = 0; p < p_count; ++p) s += acc[p * (acc_size + g.cp) + acc_size + c];
      db[c] = s;
    }
  }
}

// dw (and db when the optional second result is asked for) from x and dy
ffi::Error WeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, std::optional<ffi::ResultBuffer<ffi::F32>> db, int64_t sh,
                          int64_t sw, int64_t pt, int64_t pl) {
  Geo g;
  if (auto e = jaxcnn_native::MakeGeo(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pl,
                                      "weight gradient", &g);
      e.failure())
    return e;
  float* dbp = nullptr;
  if (db.has_value()) {
    if (auto e = jaxcnn_native::CheckChannelVector((*db)->dimensions(), g, "weight gradient", "db must have shape (Cout,)");
        e.failure())
      return e;
    dbp = (*db)->typed_data();
  }
  WeightGrad(pool, x.typed_data(), dy.typed_data(), dw->typed_data(), dbp, g);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnConvWeightGrad, WeightGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .OptionalRet<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));
