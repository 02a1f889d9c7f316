// What one core of this CPU can do in float32, without memory: the ceiling the convolution kernels are read against.
//
//   gcc -O3 -march=native -o /tmp/fma_ceiling experiments/fma_ceiling.c && /tmp/fma_ceiling
//
// Prints (1) a register-only loop of independent 512-bit (and 256-bit) FMAs, the arithmetic peak of one core;
// (2) the inner loop of csrc/conv_fwd.cc's AVX-512 micro-kernel alone (a 12-pixel x 32-channel tile of
// accumulators; per window float, two weight vectors loaded and 12 pixel values broadcast), with everything in
// L1, once with the windows behind 12 pointers (as the kernel reads them) and once packed as one [k][12] block.
// The gap between (2) and the kernel's speed on a real layer is what the kernel loses around the loop (packing,
// memory); the gap between (1) and (2) is the loop's own. x86-64 with AVX-512 only; single-threaded.

#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { kR = 12, kChains = 12 };

static double Now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static double FmaPeak512(long iters) {
  __m512 a[kChains];
  const __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-9f);
  for (int i = 0; i < kChains; i++) a[i] = _mm512_set1_ps((float)i);
  const double t = Now();
  for (long k = 0; k < iters; k++)
    for (int i = 0; i < kChains; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);  // 12 chains hide the FMA latency
  const double s = Now() - t;
  float sink = 0;
  for (int i = 0; i < kChains; i++) sink += _mm512_reduce_add_ps(a[i]);
  if (sink == 1234.5f) puts("");  // keeps the loop
  return iters * kChains * 32.0 / s / 1e9;
}

static double FmaPeak256(long iters) {
  __m256 a[kChains];
  const __m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-9f);
  for (int i = 0; i < kChains; i++) a[i] = _mm256_set1_ps((float)i);
  const double t = Now();
  for (long k = 0; k < iters; k++)
    for (int i = 0; i < kChains; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
  const double s = Now() - t;
  float out[8], sink = 0;
  for (int i = 0; i < kChains; i++) {
    _mm256_storeu_ps(out, a[i]);
    for (int j = 0; j < 8; j++) sink += out[j];
  }
  if (sink == 1234.5f) puts("");
  return iters * kChains * 16.0 / s / 1e9;
}

// the micro-kernel's loop: windows of m floats behind 12 pointers
__attribute__((noinline)) static void TilePointers(const float* const* xp, const float* w, long m, float* out) {
  __m512 a[kR][2];
  for (int r = 0; r < kR; r++) a[r][0] = a[r][1] = _mm512_setzero_ps();
  for (long k = 0; k < m; k++) {
    const __m512 w0 = _mm512_loadu_ps(w + k * 32), w1 = _mm512_loadu_ps(w + k * 32 + 16);
#pragma GCC unroll 12
    for (int r = 0; r < kR; r++) {
      const __m512 b = _mm512_set1_ps(xp[r][k]);
      a[r][0] = _mm512_fmadd_ps(b, w0, a[r][0]);
      a[r][1] = _mm512_fmadd_ps(b, w1, a[r][1]);
    }
  }
  for (int r = 0; r < kR; r++) {
    _mm512_storeu_ps(out + r * 32, a[r][0]);
    _mm512_storeu_ps(out + r * 32 + 16, a[r][1]);
  }
}

// the same loop with the windows packed as one [k][12] block (one pointer)
__attribute__((noinline)) static void TilePacked(const float* x, const float* w, long m, float* out) {
  __m512 a[kR][2];
  for (int r = 0; r < kR; r++) a[r][0] = a[r][1] = _mm512_setzero_ps();
  for (long k = 0; k < m; k++) {
    const __m512 w0 = _mm512_loadu_ps(w + k * 32), w1 = _mm512_loadu_ps(w + k * 32 + 16);
#pragma GCC unroll 12
    for (int r = 0; r < kR; r++) {
      const __m512 b = _mm512_set1_ps(x[k * kR + r]);
      a[r][0] = _mm512_fmadd_ps(b, w0, a[r][0]);
      a[r][1] = _mm512_fmadd_ps(b, w1, a[r][1]);
    }
  }
  for (int r = 0; r < kR; r++) {
    _mm512_storeu_ps(out + r * 32, a[r][0]);
    _mm512_storeu_ps(out + r * 32 + 16, a[r][1]);
  }
}

static void MicroKernel(long m, long stride) {  // stride: floats between two pixels' windows
  // room for both layouts: 12 windows `stride` apart, or the packed m x 12 block
  const long floats = stride * kR + m > m * kR ? stride * kR + m : m * kR;
  float* x = aligned_alloc(64, sizeof(float) * ((floats + 15) / 16 * 16));
  float* w = aligned_alloc(64, sizeof(float) * m * 32);
  float out[kR * 32], sink = 0;
  for (long i = 0; i < floats; i++) x[i] = 1e-3f * (float)(i % 7);
  for (long i = 0; i < m * 32; i++) w[i] = 1e-3f * (float)(i % 5);
  const float* xp[kR];
  for (int r = 0; r < kR; r++) xp[r] = x + r * stride;
  const long calls = 400000000 / m;
  double t = Now();
  for (long i = 0; i < calls; i++) TilePointers(xp, w, m, out), sink += out[5];
  const double pointers = calls * m * kR * 2 * 32.0 / (Now() - t) / 1e9;
  t = Now();
  for (long i = 0; i < calls; i++) TilePacked(x, w, m, out), sink += out[5];
  const double packed = calls * m * kR * 2 * 32.0 / (Now() - t) / 1e9;
  printf("micro-kernel, window %4ld floats, pixel stride %4ld: %6.1f GFLOP/s (12 pointers), %6.1f (packed)%s\n", m,
         stride, pointers, packed, sink == 1234.5f ? " " : "");
  free(x);
  free(w);
}

int main(void) {
  printf("FMA peak, one core: %.1f GFLOP/s (512-bit), %.1f (256-bit)\n", FmaPeak512(200000000),
         FmaPeak256(200000000));
  MicroKernel(48, 16);     // 3 x 16 channels, stride 1: windows overlapping as in a stride-1 layer
  MicroKernel(192, 128);   // 3 x 64 channels, stride 2: allconv6's 16x16x64 -> 8x8x64 layer
  MicroKernel(576, 1024);  // long windows far apart
  return 0;
}
