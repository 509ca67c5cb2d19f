// CPU matrix products over weights kept as GGUF stores them (docs/kernels.md, "CPU kernels").
//
// y[n, o] = sum_k x[n, k] * W[o, k], where each row of W is a run of ggml blocks (Q8_0, Q5_0, Q4_K, Q6_K)
// or plain float32. Weights are decoded 32 at a time straight into registers (decode.h) and multiplied
// with up to 16 tokens' inputs before the next 32 are read, so a step streams the stored bytes once per
// 16 tokens: at one token that is about a quarter of the float32 bytes, which is what bounds a decode step,
// and 8 tokens (a verify step) read no more.
//
// Every y[n, o] is summed in one order whatever N, the tile shapes, the thread split or the instruction
// set are: one 16-lane accumulator fed by fused multiply-adds in k order, then a fixed tree over the lanes. So a token's logits do not depend on the batch it is in, and
// decoded weights are bit-identical to gguf-py's `dequantize`: the model is exactly the GGUF's model.
//
// Built by dspark_jax/kernels/cpu_kernels.py with the system C++ compiler against the XLA FFI headers
// that jaxlib ships; registered as custom-call targets for the CPU platform.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "decode.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace dspark;

#if defined(__AVX512F__)
constexpr int kAccumulators = 16;  // token x row pairs per tile, one vector each: 16 of the 32 registers
#else
constexpr int kAccumulators = 4;  // 2 AVX2 registers each: 8 of the 16, the rest hold weights and inputs
#endif
constexpr int kMaxTileTokens = kAccumulators;
constexpr int64_t kPanelTokens = 64;  // tokens whose inputs stay in L2 while a chunk of rows passes
constexpr int64_t kChunkRows = 32;    // output rows one thread claims at a time

// y[t, r] for NT tokens x NR rows; x rows have stride `cols`, y rows `y_stride`. The NR rows' next 32
// weights are decoded into registers, then each token's 32 inputs are loaded once and used NR times.
template <class F, int NT, int NR>
void tile(const float* x, int64_t cols, const uint8_t* w, int64_t row_bytes, float* y, int64_t y_stride) {
  F32x16 acc[NT][NR];
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < NR; ++r) acc[t][r] = zero();
  const int64_t blocks_per_row = cols / (32 * F::kChunks), block_bytes = row_bytes / blocks_per_row;
  for (int64_t b = 0; b < blocks_per_row; ++b) {
    typename F::Block blocks[NR];
    for (int r = 0; r < NR; ++r) {
      blocks[r] = F::begin(w + r * row_bytes, b);
      // the same block of the next tile's rows: the hardware prefetcher does not see those coming
      const uint8_t* next = w + (r + NR) * row_bytes + b * block_bytes;
      for (int64_t line = 0; line < block_bytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(next + line), _MM_HINT_T0);
    }
    for (int j = 0; j < F::kChunks; ++j) {
      F32x16 wv[NR][2];
      for (int r = 0; r < NR; ++r) F::chunk(blocks[r], j, wv[r]);
      const int64_t k = 32 * (b * F::kChunks + j);
      for (int t = 0; t < NT; ++t) {
        const F32x16 x0 = load(x + t * cols + k), x1 = load(x + t * cols + k + 16);
        for (int r = 0; r < NR; ++r) acc[t][r] = fma(x1, wv[r][1], fma(x0, wv[r][0], acc[t][r]));
      }
    }
  }
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < NR; ++r) y[t * y_stride + r] = lane_sum(acc[t][r]);
}

// NT tokens against `rows` rows: tiles of as many rows as the accumulators allow, then single rows.
template <class F, int NT>
void tokens_tile(const float* x, int64_t cols, const uint8_t* w, int64_t row_bytes, int64_t rows, float* y,
                 int64_t y_stride) {
  constexpr int NR = std::max(1, kAccumulators / NT);
  int64_t r = 0;
  for (; r + NR <= rows; r += NR) tile<F, NT, NR>(x, cols, w + r * row_bytes, row_bytes, y + r, y_stride);
  for (; r < rows; ++r) tile<F, NT, 1>(x, cols, w + r * row_bytes, row_bytes, y + r, y_stride);
}

// `tokens` tokens (at most kMaxTileTokens) as tiles of powers of two, largest first.
template <class F, int NT = kMaxTileTokens>
void any_tokens_tile(int64_t tokens, const float* x, int64_t cols, const uint8_t* w, int64_t row_bytes,
                     int64_t rows, float* y, int64_t y_stride) {
  if (tokens >= NT) {
    tokens_tile<F, NT>(x, cols, w, row_bytes, rows, y, y_stride);
    x += NT * cols;
    y += NT * y_stride;
    tokens -= NT;
  }
  if constexpr (NT > 1) {
    if (tokens > 0) any_tokens_tile<F, NT / 2>(tokens, x, cols, w, row_bytes, rows, y, y_stride);
  }
}

// Runs body(0..items-1) on the caller and the XLA intra-op pool. Helpers claim items from a shared
// counter; the caller claims too and waits only for items already claimed, so a helper that starts late
// (its thread was busy) finds nothing left and the call never waits on work nobody runs.
void parallel_for(ffi::ThreadPool& pool, int64_t items, const std::function<void(int64_t)>& body) {
  const int64_t threads = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), items);
  if (threads <= 1) {
    for (int64_t i = 0; i < items; ++i) body(i);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
    int64_t items;
    const std::function<void(int64_t)>* body;
  };
  auto shared = std::make_shared<Shared>();
  shared->items = items;
  shared->body = &body;
  auto work = [shared] {
    for (int64_t i; (i = shared->next.fetch_add(1, std::memory_order_relaxed)) < shared->items;) {
      (*shared->body)(i);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule([work] { work(); });
  work();
  while (shared->done.load(std::memory_order_acquire) < items) std::this_thread::yield();
}

// Must match FORMATS in packed_matrix.py.
template <class Body>
ffi::Error with_format(int64_t format, Body&& body) {
  switch (format) {
    case 0: return body(F32Rows{});
    case 1: return body(Q8_0{});
    case 2: return body(Q5_0{});
    case 3: return body(Q4_K{});
    case 4: return body(Q6_K{});
    default: return ffi::Error::InvalidArgument("unknown weight format");
  }
}

// x: f32[N, K]; w: u8[M, row_bytes]; y: f32[N, M].
ffi::Error PackedLinear(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::U8> w,
                        ffi::ResultBuffer<ffi::F32> y, int64_t format) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2) return ffi::Error::InvalidArgument("x and w must be 2-D");
  const int64_t tokens = xd[0], cols = xd[1], rows = wd[0], row_bytes = wd[1];
  return with_format(format, [&](auto f) {
    using F = decltype(f);
    if (F::row_bytes(cols) != row_bytes || row_bytes == 0)
      return ffi::Error::InvalidArgument("weight rows do not hold the input width's elements of this format");
    const float* xp = x.typed_data();
    const uint8_t* wp = w.typed_data();
    float* yp = y->typed_data();
    const int64_t chunks = (rows + kChunkRows - 1) / kChunkRows;
    const int64_t panels = (tokens + kPanelTokens - 1) / kPanelTokens;
    parallel_for(pool, chunks * panels, [&](int64_t item) {
      const int64_t panel = item / chunks, chunk = item % chunks;
      const int64_t r0 = chunk * kChunkRows, nr = std::min(rows, r0 + kChunkRows) - r0;
      const int64_t t1 = std::min(tokens, (panel + 1) * kPanelTokens);
      for (int64_t t = panel * kPanelTokens; t < t1; t += kMaxTileTokens) {
        const int64_t nt = std::min<int64_t>(kMaxTileTokens, t1 - t);
        any_tokens_tile<F>(nt, xp + t * cols, cols, wp + r0 * row_bytes, row_bytes, nr, yp + t * rows + r0, rows);
      }
    });
    return ffi::Error::Success();
  });
}

// w: u8[M, row_bytes] -> y: f32[M, K] (embedding lookups read rows this way).
ffi::Error DecodeRows(ffi::ThreadPool pool, ffi::Buffer<ffi::U8> w, ffi::ResultBuffer<ffi::F32> y, int64_t format) {
  const auto wd = w.dimensions(), yd = y->dimensions();
  if (wd.size() != 2 || yd.size() != 2 || wd[0] != yd[0]) return ffi::Error::InvalidArgument("bad shapes");
  const int64_t rows = wd[0], row_bytes = wd[1], cols = yd[1];
  return with_format(format, [&](auto f) {
    using F = decltype(f);
    if (F::row_bytes(cols) != row_bytes || row_bytes == 0)
      return ffi::Error::InvalidArgument("weight rows do not hold `cols` elements of this format");
    parallel_for(pool, (rows + kChunkRows - 1) / kChunkRows, [&](int64_t chunk) {
      for (int64_t r = chunk * kChunkRows; r < std::min(rows, (chunk + 1) * kChunkRows); ++r) {
        for (int64_t b = 0; b < cols / (32 * F::kChunks); ++b) {
          const typename F::Block block = F::begin(w.typed_data() + r * row_bytes, b);
          for (int j = 0; j < F::kChunks; ++j) {
            F32x16 out[2];
            F::chunk(block, j, out);
            float* y_chunk = y->typed_data() + r * cols + 32 * (b * F::kChunks + j);
            store(y_chunk, out[0]);
            store(y_chunk + 16, out[1]);
          }
        }
      }
    });
    return ffi::Error::Success();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(dspark_packed_linear, PackedLinear,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("format"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(dspark_decode_rows, DecodeRows,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("format"));
