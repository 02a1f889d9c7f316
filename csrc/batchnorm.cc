// BatchNorm's per-channel sums over the rows of an NHWC map (rows = N*H*W, channels contiguous), each in
// one read of its operands: the batch statistics (mean and biased variance of x) and the backward's pair
// (sum of dy, sum of dy * (x - mean)). Compiled XLA computes these as separate reductions, one pass over
// the map each (and writes x - mean out between them); on MobileNet v1's 112x112 maps that is half of
// BatchNorm's time.
//
// Accuracy and determinism: rows are cut into fixed chunks (their boundaries depend on the shape only,
// never on the thread count); each chunk is summed in float32 over at most kMaxChunkRows rows (the
// statistics two-pass inside the chunk: its mean, then squares about that mean, read again from cache),
// and the chunks are merged in order in float64 (Chan et al.'s update for the variance). So the result
// does not depend on how the chunks were spread over XLA's threads, and every float32 accumulation is
// short (the same bound as jaxcnn.lowering.reductions' two-stage sums).
//
// Memory-bound: the inner loops run over contiguous channels and are vectorised by the compiler in the
// baseline build; no ISA dispatch is needed to reach memory bandwidth.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxcnn_native {
namespace {

constexpr int64_t kMaxChunkRows = 256;
constexpr int64_t kChunkFloats = 16384;  // a chunk of at most 64 KB, re-read from L2 by the second pass

int64_t ChunkRows(int64_t channels) {
  return std::max<int64_t>(8, std::min<int64_t>(kMaxChunkRows, kChunkFloats / std::max<int64_t>(channels, 1)));
}

// rows x channels from a buffer whose last axis is the channels
template <typename Dims>
bool RowsChannels(const Dims& dims, int64_t* rows, int64_t* channels) {
  if (dims.size() < 1) return false;
  *channels = dims.back();
  int64_t r = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) r *= dims[i];
  *rows = r;
  return true;
}

ffi::Error StatsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> mean_out,
                     ffi::ResultBuffer<ffi::F32> var_out) {
  int64_t rows, c;
  if (!RowsChannels(x.dimensions(), &rows, &c) || static_cast<int64_t>(mean_out->element_count()) != c ||
      static_cast<int64_t>(var_out->element_count()) != c) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxcnn_batchnorm_stats: shapes do not match");
  }
  const float* xp = x.typed_data();
  float* mean = mean_out->typed_data();
  float* var = var_out->typed_data();
  if (rows == 0) {
    std::fill(mean, mean + c, 0.0f);
    std::fill(var, var + c, 0.0f);
    return ffi::Error::Success();
  }
  const int64_t chunk = ChunkRows(c);
  const int64_t chunks = (rows + chunk - 1) / chunk;
  std::vector<float> part(static_cast<size_t>(chunks) * 2 * c);  // per chunk: mean[c], M2[c]
  ParallelFor(pool, chunks, [&](int64_t k) {
    const int64_t r0 = k * chunk, r1 = std::min(rows, r0 + chunk);
    float* __restrict__ m = part.data() + k * 2 * c;
    float* __restrict__ m2 = m + c;
    std::fill(m, m + 2 * c, 0.0f);
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict__ row = xp + r * c;
      for (int64_t j = 0; j < c; ++j) m[j] += row[j];
    }
    const float inv = 1.0f / static_cast<float>(r1 - r0);
    for (int64_t j = 0; j < c; ++j) m[j] *= inv;
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict__ row = xp + r * c;
      for (int64_t j = 0; j < c; ++j) {
        const float d = row[j] - m[j];
        m2[j] += d * d;
      }
    }
  });
  // chunks merged in order, in float64: n_a, mean_a, M2_a with chunk b (Chan, Golub and LeVeque 1979)
  std::vector<double> dm(c, 0.0), dm2(c, 0.0);
  double n = 0.0;
  for (int64_t k = 0; k < chunks; ++k) {
    const double nb = static_cast<double>(std::min(rows, (k + 1) * chunk) - k * chunk);
    const double total = n + nb;
    const float* m = part.data() + k * 2 * c;
    const float* m2 = m + c;
    for (int64_t j = 0; j < c; ++j) {
      const double delta = static_cast<double>(m[j]) - dm[j];
      dm[j] += delta * (nb / total);
      dm2[j] += static_cast<double>(m2[j]) + delta * delta * (n * nb / total);
    }
    n = total;
  }
  for (int64_t j = 0; j < c; ++j) {
    mean[j] = static_cast<float>(dm[j]);
    var[j] = static_cast<float>(dm2[j] / n);
  }
  return ffi::Error::Success();
}

ffi::Error DualSumImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> mean_in, ffi::ResultBuffer<ffi::F32> sum_g,
                       ffi::ResultBuffer<ffi::F32> sum_gc) {
  int64_t rows, c, rows_x, c_x;
  if (!RowsChannels(g.dimensions(), &rows, &c) || !RowsChannels(x.dimensions(), &rows_x, &c_x) || rows != rows_x ||
      c != c_x || static_cast<int64_t>(mean_in.element_count()) != c ||
      static_cast<int64_t>(sum_g->element_count()) != c || static_cast<int64_t>(sum_gc->element_count()) != c) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jaxcnn_batchnorm_dual_sum: shapes do not match");
  }
  const float* gp = g.typed_data();
  const float* xp = x.typed_data();
  const float* mu = mean_in.typed_data();
  const int64_t chunk = ChunkRows(c);
  const int64_t chunks = (rows + chunk - 1) / chunk;
  std::vector<float> part(static_cast<size_t>(std::max<int64_t>(chunks, 1)) * 2 * c, 0.0f);
  ParallelFor(pool, chunks, [&](int64_t k) {
    const int64_t r0 = k * chunk, r1 = std::min(rows, r0 + chunk);
    float* __restrict__ s = part.data() + k * 2 * c;
    float* __restrict__ sc = s + c;
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict__ grow = gp + r * c;
      const float* __restrict__ xrow = xp + r * c;
      for (int64_t j = 0; j < c; ++j) {
        s[j] += grow[j];
        sc[j] += grow[j] * (xrow[j] - mu[j]);
      }
    }
  });
  std::vector<double> ds(c, 0.0), dsc(c, 0.0);
  for (int64_t k = 0; k < chunks; ++k) {
    const float* s = part.data() + k * 2 * c;
    for (int64_t j = 0; j < c; ++j) {
      ds[j] += s[j];
      dsc[j] += s[c + j];
    }
  }
  float* og = sum_g->typed_data();
  float* ogc = sum_gc->typed_data();
  for (int64_t j = 0; j < c; ++j) {
    og[j] = static_cast<float>(ds[j]);
    ogc[j] = static_cast<float>(dsc[j]);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxcnn_native

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormStats, jaxcnn_native::StatsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormDualSum, jaxcnn_native::DualSumImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
