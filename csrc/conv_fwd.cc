// Forward dense 2-D convolution (and bias), float32, as an XLA FFI handler for the CPU backend:
//
//   y[n, oh, ow, co] = b[co] + sum_{i, j, ci} x[n, oh*sh + i - pt, ow*sw + j - pl, ci] * w[i, j, ci, co]
//
// x is NHWC, w HWIO, y NHWC: the layouts jaxcnn keeps, so no transposes.
//
// Why hand-written: on the 2-core machines of this project XLA:CPU's convolutions (YNNPACK's or
// Eigen's spatial convolution, whichever the compile options pick) ran allconv6's strided 3x3
// layers at about 100 GFLOP/s where PyTorch's oneDNN reached about 300 (experiments/profile_layers.py).
//
// How: for one output row and one kernel row i, the input window of output pixel o is kw*Cin
// contiguous floats of the (zero-padded) input row, starting at o*sw*Cin; y's row is then a GEMM
// of those windows (ow x kw*Cin, rows strided by sw*Cin) with w[i] (kw*Cin x Cout, HWIO), summed
// over the kernel rows. The micro-kernel keeps an R-pixel x (NV vectors of channels) tile of y in
// registers and, per window float, loads NV vectors of w and broadcasts R window floats
// (the register blocking of oneDNN's and libxsmm's direct convolutions). A tile's pixels may
// come from several output rows, so short rows (4x4 maps) still fill it. The input rows a chunk
// of output rows reads are copied, each once, into zero-padded rows first (padding rows and columns become
// zeros, so padding costs no branch) and w into one contiguous panel per block of channels a tile
// covers, padded to a multiple of 16 channels (so no channel tail inside the loop). Each pixel tile
// runs every channel block in turn, so its windows are read from L1 after the first.
//
// Threads: the output rows are split into ranges run on XLA's intra-op pool (parallel.h); every
// output element is written by one item, so the result does not depend on thread timing.
//
// ISA: compiled for AVX-512 (16-float vectors, 12 x 2 tile), AVX2+FMA (8-float vectors, 6 x 2)
// and baseline x86-64 (4-float SSE vectors, 6 x 2), picked at run time (conv_common.h's SelectIsa).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "conv_common.h"
#include "parallel.h"
#include "xla/ffi/api/ffi.h"

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

// A pixel tile's inputs: base[r] is the window start of its pixel r for kernel row 0 (kernel row i
// at base[r] + i * xrow, padding rows being zeros), out[r] where its Cout outputs go.
struct Pix {
  const float* base[12];
  float* out[12];
};

// y tile (R pixels, NV vectors of channels from c0) = bias + sum over kernel rows and window
template <typename V, int W, int R, int NV>
inline __attribute__((always_inline)) void Tile(const Geo& g, const Pix& px, const float* wpack, const float* bias,
                                                int64_t xrow, int64_t c0, int64_t cvalid) {
  V a[R][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const V b = LoadV<V>(bias + c0 + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) a[r][v] = b;
  }
  for (int64_t i = 0; i < g.kh; ++i) {
    const float* xp[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) xp[r] = px.base[r] + i * xrow;
    // wpack holds the channel block at c0 as its own (kh * m) x bw panel, so this walk is contiguous
    const int64_t bw = std::min<int64_t>(NV * W, g.cp - c0);
    const float* wrow = wpack + c0 * g.kh * g.m + i * g.m * bw;
    for (int64_t k = 0; k < g.m; ++k, wrow += bw) {
      V wv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) wv[v] = LoadV<V>(wrow + v * W);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const float b = xp[r][k];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) a[r][v] += b * wv[v];
      }
    }
  }
  if (g.relu) {  // max(a, 0) that keeps NaN, as jnp.maximum does: a < 0 is false for NaN
    const V z = {};
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) a[r][v] = a[r][v] < z ? z : a[r][v];
  }
  if (cvalid >= NV * W) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) StoreV<V>(px.out[r] + c0 + v * W, a[r][v]);
    return;
  }
  float tmp[NV * W];  // the channel tail: only the co - c0 valid channels are written
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) StoreV<V>(tmp + v * W, a[r][v]);
    std::memcpy(px.out[r] + c0, tmp, cvalid * sizeof(float));
  }
}

// Output rows [r_lo, r_hi) (r = n * oh + oh_index), in chunks of rows whose pixels are tiled together:
// a tile of R pixels may span output rows, so layers with short rows (a 4x4 map) still get full tiles.
template <typename V, int W, int RMAX, int NVMAX>
inline __attribute__((always_inline)) void RunRowsBody(const Geo& g, const float* x, const float* wpack,
                                                       const float* bias, float* y, int64_t r_lo, int64_t r_hi) {
  const int64_t xrow = g.wp * g.ci;     // floats per packed input row
  const int64_t block = g.kh * xrow;   // the kh packed rows one output row reads (the chunk size's unit)
  // rows per chunk: at least 4 tiles of pixels, and the packed rows within about 1 MB when that allows more
  // (every chunk streams the packed kernel through the tiles once)
  const int64_t want = std::max<int64_t>((4 * RMAX + g.ow - 1) / g.ow, (int64_t{1024} << 10) / std::max<int64_t>(4 * block, 1));
  const int64_t chunk = std::max<int64_t>(1, std::min(r_hi - r_lo, want));
  // The chunk's output rows of one image read input rows oh0*sh - pt .. (oh1*sh - pt + kh - 1): each is packed
  // once, in order, so output row u of the segment reads its kh rows from packed row u*sh on (L rows of a
  // segment need (L-1)*sh + kh <= L*max(kh, sh) packed rows). Packing kh rows per output row instead copied
  // every input row kh/sh times, from memory not yet in cache, before any arithmetic.
  // Every packed row is written before it is read (PackInputRow or zeros), so no value-initialisation.
  const std::unique_ptr<float[]> xpack(new float[chunk * std::max(g.kh, g.sh) * xrow]);
  const std::unique_ptr<const float*[]> rowbase(new const float*[chunk]);  // output row q's kernel row 0
  const int64_t xstep = g.sw * g.ci;
  for (int64_t r0 = r_lo; r0 < r_hi; r0 += chunk) {
    const int64_t nr = std::min(chunk, r_hi - r0);
    for (int64_t q = 0, used = 0; q < nr;) {
      const int64_t n = (r0 + q) / g.oh, oh0 = (r0 + q) % g.oh;
      const int64_t len = std::min(nr - q, g.oh - oh0);  // output rows of image n in this chunk
      const int64_t ih_lo = oh0 * g.sh - g.pt, rows = (len - 1) * g.sh + g.kh;
      for (int64_t t = 0; t < rows; ++t) {
        float* dst = xpack.get() + (used + t) * xrow;
        const int64_t ih = ih_lo + t;
        if (ih < 0 || ih >= g.h) {  // a padding row: zeros (its products add nothing)
          std::memset(dst, 0, xrow * sizeof(float));
          continue;
        }
        jaxcnn_native::PackInputRow(g, x + ((n * g.h + ih) * g.w) * g.ci, dst);
      }
      for (int64_t u = 0; u < len; ++u) rowbase[q + u] = xpack.get() + (used + u * g.sh) * xrow;
      used += rows;
      q += len;
    }
    const int64_t pixels = nr * g.ow;
    // pixel tiles outer, channel blocks inner: a tile's input windows are read from L1 by every block
    int64_t tq = 0, to = 0;  // output row (in the chunk) and column of the tile's first pixel
    for (int64_t p0 = 0; p0 < pixels; p0 += RMAX) {
      const int64_t r = std::min<int64_t>(RMAX, pixels - p0);
      Pix px;
      for (int64_t t = 0, q = tq, o = to; t < r; ++t) {
        px.base[t] = rowbase[q] + o * xstep;
        px.out[t] = y + ((r0 + q) * g.ow + o) * g.co;
        if (++o == g.ow) o = 0, ++q;
      }
      to += r;
      while (to >= g.ow) to -= g.ow, ++tq;
      for (int64_t c0 = 0; c0 < g.co; c0 += NVMAX * W) {
        const int64_t nv = std::min<int64_t>(NVMAX, (g.cp - c0) / W);
        const int64_t cvalid = std::min<int64_t>(g.co - c0, nv * W);
#define JAXCNN_FWD_CASE(RR)                                                                              \
  case RR:                                                                                               \
    if (NVMAX >= 2 && nv == 2) Tile<V, W, (RR <= RMAX ? RR : 1), 2>(g, px, wpack, bias, xrow, c0, cvalid); \
    else Tile<V, W, (RR <= RMAX ? RR : 1), 1>(g, px, wpack, bias, xrow, c0, cvalid);                     \
    break;
        switch (r) {
          JAXCNN_CASES_1_TO_12(JAXCNN_FWD_CASE)
          default:
            break;
        }
#undef JAXCNN_FWD_CASE
      }
    }
  }
}

using RunRowsFn = void (*)(const Geo&, const float*, const float*, const float*, float*, int64_t, int64_t);

// Each variant's vector width W and channel vectors per tile NV; W * NV channels is also the width of
// the weight panels Forward packs for it (kKernel.block), so both read these names.
constexpr int kW512 = 16, kNv512 = 2, kW256 = 8, kNv256 = 2, kW128 = 4, kNv128 = 2;

void RunRowsBase(const Geo& g, const float* x, const float* wp, const float* b, float* y, int64_t lo, int64_t hi) {
  RunRowsBody<jaxcnn_native::V4, kW128, 6, kNv128>(g, x, wp, b, y, lo, hi);
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void RunRowsAvx512(const Geo& g, const float* x,
                                                                        const float* wp, const float* b, float* y,
                                                                        int64_t lo, int64_t hi) {
  RunRowsBody<V16, kW512, 12, kNv512>(g, x, wp, b, y, lo, hi);
}
__attribute__((target("avx2,fma"))) void RunRowsAvx2(const Geo& g, const float* x, const float* wp, const float* b,
                                                     float* y, int64_t lo, int64_t hi) {
  RunRowsBody<V8, kW256, 6, kNv256>(g, x, wp, b, y, lo, hi);
}
#endif

// the rows loop for this CPU and its channel block (NVMAX * W: the weight panels' width)
struct Kernel {
  RunRowsFn run;
  int64_t block;
  const char* isa;  // which variant, for JaxcnnKernelIsa
};
#if defined(__x86_64__) || defined(__i386__)
const Kernel kKernel = jaxcnn_native::SelectIsa<Kernel>({RunRowsAvx512, kW512 * kNv512, "avx512"},
                                                         {RunRowsAvx2, kW256 * kNv256, "avx2"},
                                                         {RunRowsBase, kW128 * kNv128, "baseline"});
#else
const Kernel kKernel{RunRowsBase, kW128 * kNv128, "baseline"};
#endif

constexpr int64_t kItems = 16;  // row ranges per call: enough to balance 2-8 threads

void Forward(ffi::ThreadPool& pool, const float* x, const float* w, const float* b, float* y, const Geo& g) {
  // w (kh x kw x ci x co, i.e. kh * m rows of co) -> one (kh * m) x bw panel per block of kKernel.block
  // channels (the last block narrower, bw a multiple of the vector width), zero beyond co; the bias padded to cp
  const int64_t krows = g.kh * g.m;
  std::vector<float> wpack(krows * g.cp, 0.0f), bias(g.cp, 0.0f);
  for (int64_t c0 = 0; c0 < g.cp; c0 += kKernel.block) {
    const int64_t bw = std::min(kKernel.block, g.cp - c0), valid = std::max<int64_t>(0, std::min(bw, g.co - c0));
    float* panel = wpack.data() + c0 * krows;
    for (int64_t row = 0; row < krows; ++row) std::memcpy(panel + row * bw, w + row * g.co + c0, valid * sizeof(float));
  }
  if (b != nullptr) std::memcpy(bias.data(), b, g.co * sizeof(float));
  const int64_t rows = g.n * g.oh;
  if (rows == 0 || g.ow == 0 || g.co == 0) return;
  const int64_t items = std::min<int64_t>(rows, kItems);
  ParallelFor(pool, items, [&](int64_t k) {
    kKernel.run(g, x, wpack.data(), bias.data(), y, rows * k / items, rows * (k + 1) / items);
  });
}

// y = conv(x, w) (+ b when the optional bias operand is passed), then max(y, 0) when relu is nonzero
ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       std::optional<ffi::Buffer<ffi::F32>> b, ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw,
                       int64_t pt, int64_t pl, int64_t relu) {
  Geo g;
  if (auto e = jaxcnn_native::MakeGeo(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pl, "convolution", &g);
      e.failure())
    return e;
  g.relu = relu != 0;
  if (b.has_value()) {
    if (auto e = jaxcnn_native::CheckChannelVector(b->dimensions(), g, "convolution", "b must have shape (Cout,)");
        e.failure())
      return e;
  }
  Forward(pool, x.typed_data(), w.typed_data(), b.has_value() ? b->typed_data() : nullptr, y->typed_data(), g);
  return ffi::Error::Success();
}

}  // namespace

// The variant every kernel of this library runs on this CPU (they share SelectIsa): "avx512", "avx2" or
// "baseline". Python reads it (jaxcnn.lowering.native.isa) because which lowering wins depends on it.
extern "C" const char* JaxcnnKernelIsa() { return kKernel.isa; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnConvForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .OptionalArg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl")
                                  .Attr<int64_t>("relu"));
