// Shared by the dense convolution kernels (conv_fwd.cc, conv_wgrad.cc): vector types and unaligned
// loads, the geometry both read from their buffers and attributes, the zero-padded input row both
// pack, the micro-kernel row-count switch; and by those and depthwise.cc: the run-time ISA choice.

#ifndef JAXCNN_CSRC_CONV_COMMON_H_
#define JAXCNN_CSRC_CONV_COMMON_H_

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace jaxcnn_native {

typedef float V16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef float V8 __attribute__((vector_size(32), aligned(4), may_alias));
// Each variant computes in its target's native width (16 floats for AVX-512, 8 for AVX2, 4 for SSE in the
// baseline build): GCC lowers a generic vector wider than the target's registers through the stack, which
// made the baseline build 7x slower than its native-width code (allconv6's train step at 32x32 batch 128 on AMD
// Zen 3 with JAXCNN_NATIVE_ISA=baseline: 655 against 92 ms) and depthwise's AVX2 build up to 10x slower.
typedef float V4 __attribute__((vector_size(16), aligned(4), may_alias));

// Unaligned loads and stores through memcpy: the typedefs' aligned(4) does not survive being a
// template argument, and a plain dereference would then assume 64-byte alignment.
template <typename V>
inline __attribute__((always_inline)) V LoadV(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
inline __attribute__((always_inline)) void StoreV(float* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

constexpr int64_t kPad = 16;  // packed channel axes (weights, dy, accumulators) are padded to a multiple of 16

// One convolution y[n, oh, ow, co] = sum x[n, oh*sh + i - pt, ow*sw + j - pl, ci] * w[i, j, ci, co].
struct Geo {
  int64_t n, h, w, ci;  // input x (NHWC)
  int64_t kh, kw;       // kernel w (HWIO: kh x kw x ci x co)
  int64_t oh, ow, co;   // output y, or the output gradient dy (NHWC)
  int64_t sh, sw, pt, pl;
  int64_t m;   // kw * ci: one kernel row's window length
  int64_t cp;  // co rounded up to kPad
  int64_t wp;  // padded input row length in pixels: (ow - 1) * sw + kw
  bool relu = false;  // forward only: write max(y, 0) (NaN kept), the ReLU after the layer fused into the store
};

inline xla::ffi::Error CheckArg(bool ok, const char* who, const char* what) {
  if (!ok) return xla::ffi::Error::InvalidArgument(std::string("jaxcnn dense ") + who + ": " + what);
  return xla::ffi::Error::Success();
}

// Geo from the dimensions of x (NHWC), the kernel (HWIO) and y/dy (NHWC), checked; `who` names the
// kernel in the error ("convolution", "weight gradient").
inline xla::ffi::Error MakeGeo(xla::ffi::Span<const int64_t> xd, xla::ffi::Span<const int64_t> wd,
                               xla::ffi::Span<const int64_t> yd, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                               const char* who, Geo* g) {
  if (auto e = CheckArg(xd.size() == 4 && wd.size() == 4 && yd.size() == 4, who, "every operand must have rank 4");
      e.failure())
    return e;
  *g = Geo{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], yd[1], yd[2], yd[3], sh, sw, pt, pl, 0, 0, 0};
  if (auto e = CheckArg(wd[2] == g->ci && wd[3] == g->co && yd[0] == g->n, who, "shapes do not match"); e.failure())
    return e;
  if (auto e = CheckArg(sh >= 1 && sw >= 1 && pt >= 0 && pl >= 0, who, "stride must be >= 1 and padding >= 0");
      e.failure())
    return e;
  g->m = g->kw * g->ci;
  g->cp = (g->co + kPad - 1) / kPad * kPad;
  g->wp = g->ow > 0 ? (g->ow - 1) * g->sw + g->kw : 0;
  return xla::ffi::Error::Success();
}

// A per-channel operand (the bias, or the bias gradient): it must have shape (co,).
inline xla::ffi::Error CheckChannelVector(xla::ffi::Span<const int64_t> dims, const Geo& g, const char* who,
                                          const char* what) {
  return CheckArg(dims.size() == 1 && dims[0] == g.co, who, what);
}

// Copies input row srow (w pixels of ci floats) into dst as a padded row of wp pixels: padded column u
// holds input column u - pl, zeros outside the image (so padding costs the micro-kernels no branch).
inline void PackInputRow(const Geo& g, const float* srow, float* dst) {
  const int64_t u_lo = std::min(g.wp, std::max<int64_t>(0, g.pl));
  const int64_t u_hi = std::max(u_lo, std::min(g.wp, g.w + g.pl));
  std::memset(dst, 0, u_lo * g.ci * sizeof(float));
  if (u_hi > u_lo) std::memcpy(dst + u_lo * g.ci, srow + (u_lo - g.pl) * g.ci, (u_hi - u_lo) * g.ci * sizeof(float));
  std::memset(dst + u_hi * g.ci, 0, (g.wp - u_hi) * g.ci * sizeof(float));
}

// The micro-kernels are templates on their tile's row count R (1..12, a register tile needs it at
// compile time); CASE(R) is expanded for each inside a switch on the run-time count.
#define JAXCNN_CASES_1_TO_12(CASE) \
  CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)

#if defined(__x86_64__) || defined(__i386__)
// The variant for this CPU: AVX-512 (which __builtin_cpu_supports reports on AMD Zen 4/5 as on Intel),
// else AVX2+FMA, else the baseline build. x86 only: elsewhere the kernels are built once, for the baseline.
// JAXCNN_NATIVE_ISA=avx2 or =baseline caps the choice, so the tests can run every variant on one CPU; it never
// raises it (jaxcnn.lowering.native refuses to load the library for any other value).
template <typename Fn>
Fn SelectIsa(Fn avx512, Fn avx2, Fn base) {
  __builtin_cpu_init();
  const char* cap = std::getenv("JAXCNN_NATIVE_ISA");
  const int limit = cap == nullptr ? 2 : std::strcmp(cap, "baseline") == 0 ? 0 : std::strcmp(cap, "avx2") == 0 ? 1 : 2;
  if (limit >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return avx512;
  if (limit >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return avx2;
  return base;
}
#endif

}  // namespace jaxcnn_native

#endif  // JAXCNN_CSRC_CONV_COMMON_H_
