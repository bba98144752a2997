// Cove's decode GEMV kernels: y[M, N] = x[M, K] @ W[N, K]^T for M = 1..8 activation rows, the
// shape of batch-1..8 decoding, where every weight is read once per step and memory bandwidth
// is the bound. torch's kernels fall short there: MKL's fp32 GEMV over [out, in] ran near a
// third of the bound, and the int8/int4 weight-only kernels are slow at M = 1.
//
// Weights are read row by row in their stored [N, K] layout (a row is contiguous, so R rows
// at once are R sequential streams); activations and accumulation are float32. Weight kinds:
//   dense  float32 or bfloat16 rows (bfloat16 widened exactly by a 16-bit shift);
//   int8   int8 rows, one scale per row: y = scale[n] * (x . q[n]);
//   int4   codes 0..15 in groups of `group` inputs with a scale and zero point each,
//          w = (q - 8) * scale + zero; each 32 inputs are 16 bytes, byte j holding input j in
//          its low nibble and input 16 + j in its high one (see cove.kernels.pack_int4).
// Scales and zero points are float32, bfloat16 or float16 (the layers' compute dtype).
// Rows are split across torch's intra-op threads (at::parallel_for: torch's own OpenMP pool);
// the products of layers that read the same input (q/k/v, gate/up) share one parallel region
// (run_jobs, which decode.cpp's decoding step uses too).
// Built with -march=native: AVX-512 when the CPU has it, else a scalar loop.
#include "gemv.h"
#include "attention.h"

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__AVX512F__) && defined(__AVX512BW__) && !defined(COVE_KERNELS_SCALAR)
#include <immintrin.h>
#define COVE_AVX512 1
#endif

namespace {

using cove::MAX_ROWS;
// Rows of W per parallel block; a thread gets whole blocks.
constexpr int64_t BLOCK = 16;

template <class S>
inline float to_float(S v) { return static_cast<float>(v); }

struct F32 {
  const float* w; int64_t K;
  static constexpr int STEP = 16;
  float at(int64_t n, int64_t k) const { return w[n * K + k]; }
  float finish(int64_t, float a) const { return a; }
#ifdef COVE_AVX512
  void load(int64_t n, int64_t k, __m512* v) const { v[0] = _mm512_loadu_ps(w + n * K + k); }
#endif
};

struct BF16 {
  const uint16_t* w; int64_t K;
  static constexpr int STEP = 16;
  float at(int64_t n, int64_t k) const {
    uint32_t bits = uint32_t(w[n * K + k]) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  float finish(int64_t, float a) const { return a; }
#ifdef COVE_AVX512
  void load(int64_t n, int64_t k, __m512* v) const {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + n * K + k));
    v[0] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
#endif
};

template <class S>
struct Int8 {
  const int8_t* q; const S* scale; int64_t K;
  static constexpr int STEP = 16;
  float at(int64_t n, int64_t k) const { return float(q[n * K + k]); }
  float finish(int64_t n, float a) const { return a * to_float(scale[n]); }
#ifdef COVE_AVX512
  void load(int64_t n, int64_t k, __m512* v) const {
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + n * K + k));
    v[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
  }
#endif
};

template <class S>
struct Int4 {
  const uint8_t* q; const S* scale; const S* zero; int64_t K, group;
  static constexpr int STEP = 32;
  float at(int64_t n, int64_t k) const {
    uint8_t byte = q[n * (K / 2) + (k / 32) * 16 + (k % 16)];
    int code = (k % 32) < 16 ? (byte & 15) : (byte >> 4);
    int64_t g = n * (K / group) + k / group;
    float s = to_float(scale[g]);
    return (code - 8) * s + to_float(zero[g]);
  }
  float finish(int64_t, float a) const { return a; }
#ifdef COVE_AVX512
  void load(int64_t n, int64_t k, __m512* v) const {
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + n * (K / 2) + k / 2));
    __m512i wide = _mm512_cvtepu8_epi32(b);
    int64_t g = n * (K / group) + k / group;
    float s = to_float(scale[g]);
    // (q - 8) * s + zero as one multiply-add: q * s + (zero - 8 s)
    __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(to_float(zero[g]) - 8.0f * s);
    v[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(wide, _mm512_set1_epi32(15))),
                           vs, vz);
    v[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(wide, 4)), vs, vz);
  }
#endif
};

// R rows n..n+R-1 of W against the M rows of x, into out[m * N + n + r].
template <int M, int R, class W>
inline void rows(const W& w, const float* x, int64_t K, int64_t n, float* out, int64_t N) {
  int64_t k = 0;
  float sum[M][R];
#ifdef COVE_AVX512
  const int64_t vec_end = K - K % W::STEP;
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  for (; k < vec_end; k += W::STEP) {
    __m512 wv[R][W::STEP / 16];
    for (int r = 0; r < R; ++r) w.load(n + r, k, wv[r]);
    for (int s = 0; s < W::STEP / 16; ++s)
      for (int m = 0; m < M; ++m) {
        __m512 xv = _mm512_loadu_ps(x + m * K + k + 16 * s);
        for (int r = 0; r < R; ++r) acc[m][r] = _mm512_fmadd_ps(wv[r][s], xv, acc[m][r]);
      }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) sum[m][r] = _mm512_reduce_add_ps(acc[m][r]);
#else
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) sum[m][r] = 0.0f;
#endif
  for (; k < K; ++k)
    for (int r = 0; r < R; ++r) {
      float wk = w.at(n + r, k);
      for (int m = 0; m < M; ++m) sum[m][r] += x[m * K + k] * wk;
    }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) out[m * N + n + r] = w.finish(n + r, sum[m][r]);
}

// Rows n0..n1 of W (R at a time, then one by one) against the M rows of x.
template <int M, class W>
void range(const W& w, const float* x, int64_t K, int64_t n0, int64_t n1, float* out,
           int64_t ldo) {
  // Several rows at once give independent streams and FMA chains: eight for one or two
  // activation rows when a load is 16 weights (float32, bfloat16, int8: SmolLM2's float32
  // step took 19% less CPU time than with four, measured; int4's wider loads would spill),
  // else four; past four activation rows the accumulators (M * R of 32 registers) allow two.
  constexpr int R = (M <= 2 && W::STEP == 16) ? 8 : (M <= 4 ? 4 : 2);
  int64_t n = n0;
  for (; n + R <= n1; n += R) rows<M, R>(w, x, K, n, out, ldo);
  for (; n < n1; ++n) rows<M, 1>(w, x, K, n, out, ldo);
}

// Calls f with the weight reader of `lin`'s kind (and scale dtype).
template <class F>
void with_weight(const cove::Lin& lin, F&& f) {
  const int64_t K = lin.K;
  switch (lin.kind) {
    case cove::Kind::F32: return f(F32{lin.w.data_ptr<float>(), K});
    case cove::Kind::BF16:
      return f(BF16{reinterpret_cast<const uint16_t*>(lin.w.data_ptr<at::BFloat16>()), K});
    case cove::Kind::INT8: {
      const int8_t* q = lin.w.data_ptr<int8_t>();
      switch (lin.scale.scalar_type()) {
        case at::kFloat: return f(Int8<float>{q, lin.scale.data_ptr<float>(), K});
        case at::kBFloat16: return f(Int8<at::BFloat16>{q, lin.scale.data_ptr<at::BFloat16>(), K});
        default: return f(Int8<at::Half>{q, lin.scale.data_ptr<at::Half>(), K});
      }
    }
    case cove::Kind::INT4: {
      const uint8_t* q = lin.w.data_ptr<uint8_t>();
      switch (lin.scale.scalar_type()) {
        case at::kFloat:
          return f(Int4<float>{q, lin.scale.data_ptr<float>(), lin.zero.data_ptr<float>(), K,
                               lin.group});
        case at::kBFloat16:
          return f(Int4<at::BFloat16>{q, lin.scale.data_ptr<at::BFloat16>(),
                                      lin.zero.data_ptr<at::BFloat16>(), K, lin.group});
        default:
          return f(Int4<at::Half>{q, lin.scale.data_ptr<at::Half>(), lin.zero.data_ptr<at::Half>(),
                                  K, lin.group});
      }
    }
  }
}

template <int M>
void lin_rows_m(const cove::Lin& lin, const float* x, int64_t n0, int64_t n1, float* out,
                int64_t ldo) {
  with_weight(lin, [&](const auto& w) { range<M>(w, x, lin.K, n0, n1, out, ldo); });
}

// Rows n0..n1 of y = x @ W^T (no bias) for M rows of x [M, K], into out[m * ldo + n].
void lin_rows(const cove::Lin& lin, const float* x, int64_t M, int64_t n0, int64_t n1,
              float* out, int64_t ldo) {
  switch (M) {
    case 1: return lin_rows_m<1>(lin, x, n0, n1, out, ldo);
    case 2: return lin_rows_m<2>(lin, x, n0, n1, out, ldo);
    case 3: return lin_rows_m<3>(lin, x, n0, n1, out, ldo);
    case 4: return lin_rows_m<4>(lin, x, n0, n1, out, ldo);
    case 5: return lin_rows_m<5>(lin, x, n0, n1, out, ldo);
    case 6: return lin_rows_m<6>(lin, x, n0, n1, out, ldo);
    case 7: return lin_rows_m<7>(lin, x, n0, n1, out, ldo);
    case 8: return lin_rows_m<8>(lin, x, n0, n1, out, ldo);
  }
}

// x as float32 [M, K] (a copy only when it is not that already), checked against K.
at::Tensor activations(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "cove kernels: x must be [rows, ", K,
              "], got ", x.sizes());
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= MAX_ROWS, "cove kernels: 1 to ", MAX_ROWS,
              " rows of x, got ", x.size(0));
  TORCH_CHECK(x.device().is_cpu(), "cove kernels: x must be on the CPU");
  return x.to(at::kFloat).contiguous();
}

void check_weight(const at::Tensor& w, const char* what) {
  TORCH_CHECK(w.device().is_cpu() && w.is_contiguous(), "cove kernels: ", what,
              " must be a contiguous CPU tensor");
}

void check_int4(const at::Tensor& q, const at::Tensor& scale, const at::Tensor& zero,
                int64_t group) {
  check_weight(q, "the int4 codes");
  check_weight(scale, "the scales");
  check_weight(zero, "the zero points");
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kByte, "cove kernels: int4 codes are "
              "uint8 [out, in / 2]");
  const int64_t K = q.size(1) * 2;
  TORCH_CHECK(group % 32 == 0 && K % group == 0, "cove kernels: group ", group,
              " must be a multiple of 32 dividing in_features ", K);
  TORCH_CHECK(scale.sizes() == zero.sizes() && scale.numel() == q.size(0) * (K / group) &&
              scale.scalar_type() == zero.scalar_type(),
              "cove kernels: scales and zero points are [out, in / group] of one dtype");
}

void check_scale_dtype(const at::Tensor& scale) {
  const auto t = scale.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf,
              "cove kernels: scales are float32, bfloat16 or float16");
}

// y = x @ W^T (+ bias) for one layer, in x's dtype.
at::Tensor product(const at::Tensor& x, const cove::Lin& lin) {
  at::Tensor xf = activations(x, lin.K);
  at::Tensor out = at::empty({xf.size(0), lin.N}, xf.options());
  cove::Job job{&lin, out.data_ptr<float>(), lin.N};
  cove::run_jobs(&job, 1, xf.data_ptr<float>(), xf.size(0));
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

}  // namespace

namespace cove {

Lin::Lin(int64_t kind_, at::Tensor w_, c10::optional<at::Tensor> scale_,
         c10::optional<at::Tensor> zero_, int64_t group_, c10::optional<at::Tensor> bias_)
    : kind(static_cast<Kind>(kind_)), w(std::move(w_)), group(group_) {
  TORCH_CHECK(kind_ >= 0 && kind_ <= 3, "cove kernels: weight kind 0..3 (float32, bfloat16, "
              "int8, int4), not ", kind_);
  TORCH_CHECK(w.dim() == 2, "cove kernels: the weight must be [out, in]");
  N = w.size(0);
  K = w.size(1);
  switch (kind) {
    case Kind::F32:
    case Kind::BF16:
      check_weight(w, "the weight");
      TORCH_CHECK(w.scalar_type() == (kind == Kind::F32 ? at::kFloat : at::kBFloat16),
                  "cove kernels: dense weights are float32 or bfloat16, not ", w.scalar_type());
      break;
    case Kind::INT8:
      check_weight(w, "the int8 weight");
      TORCH_CHECK(w.scalar_type() == at::kChar, "cove kernels: int8 weight [out, in]");
      TORCH_CHECK(scale_.has_value(), "cove kernels: an int8 weight needs its scales");
      scale = *scale_;
      check_weight(scale, "the scale");
      TORCH_CHECK(scale.numel() == N, "cove kernels: one scale per output row");
      check_scale_dtype(scale);
      break;
    case Kind::INT4:
      TORCH_CHECK(scale_.has_value() && zero_.has_value(),
                  "cove kernels: int4 codes need their scales and zero points");
      scale = *scale_;
      zero = *zero_;
      check_int4(w, scale, zero, group);
      check_scale_dtype(scale);
      K = w.size(1) * 2;
      break;
  }
  if (bias_.has_value() && bias_->defined()) {
    TORCH_CHECK(bias_->numel() == N, "cove kernels: the bias has ", bias_->numel(),
                " values for ", N, " outputs");
    bias = bias_->to(at::kFloat).contiguous();
  }
}

int64_t Lin::row_bytes() const {
  switch (kind) {
    case Kind::F32: return K * 4;
    case Kind::BF16: return K * 2;
    case Kind::INT8: return K;
    case Kind::INT4: return K / 2;
  }
  return K;
}

void run_jobs(const Job* jobs, int64_t count, const float* x, int64_t M) {
  // Blocks of BLOCK output rows, numbered across the jobs; a thread gets whole blocks.
  TORCH_CHECK(count >= 1 && count <= 8, "cove kernels: 1 to 8 products per region");
  int64_t starts[8];
  int64_t total = 0, row_bytes = INT64_MAX;
  for (int64_t j = 0; j < count; ++j) {
    starts[j] = total;
    total += (jobs[j].lin->N + BLOCK - 1) / BLOCK;
    row_bytes = std::min(row_bytes, jobs[j].lin->row_bytes());
  }
  // Below ~64 KiB of weights a second thread costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / (BLOCK * row_bytes));
  at::parallel_for(0, total, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t j = 0; j < count; ++j) {
      const int64_t first = starts[j], blocks = (jobs[j].lin->N + BLOCK - 1) / BLOCK;
      const int64_t lo = std::max(b0, first), hi = std::min(b1, first + blocks);
      if (lo >= hi) continue;
      const Lin& lin = *jobs[j].lin;
      lin_rows(lin, x, M, (lo - first) * BLOCK, std::min(lin.N, (hi - first) * BLOCK),
               jobs[j].out, jobs[j].ldo);
    }
  });
  for (int64_t j = 0; j < count; ++j) {
    const Lin& lin = *jobs[j].lin;
    if (!lin.bias.defined()) continue;
    const float* b = lin.bias.data_ptr<float>();
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < lin.N; ++n) jobs[j].out[m * jobs[j].ldo + n] += b[n];
  }
}

}  // namespace cove

// y = x @ w.T (+ bias), w float32 or bfloat16 [N, K]; y in x's dtype.
at::Tensor dense(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  check_weight(w, "the weight");
  TORCH_CHECK(w.dim() == 2, "cove kernels: the weight must be [out, in]");
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16,
              "cove kernels: dense weights are float32 or bfloat16, not ", w.scalar_type());
  return product(x, cove::Lin(w.scalar_type() == at::kFloat ? 0 : 1, w, c10::nullopt,
                              c10::nullopt, 0, bias));
}

// y = x @ (q * scale[:, None]).T (+ bias), q int8 [N, K], scale [N].
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                       const c10::optional<at::Tensor>& bias) {
  return product(x, cove::Lin(2, q, scale, c10::nullopt, 0, bias));
}

// y = x @ W.T (+ bias), W from int4 codes in Cove's packed layout (see the top).
at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                       const at::Tensor& zero, int64_t group,
                       const c10::optional<at::Tensor>& bias) {
  return product(x, cove::Lin(3, q, scale, zero, group, bias));
}

namespace {
template <class S>
void dequantize_rows(const Int4<S>& w, int64_t N, int64_t K, float* out) {
  at::parallel_for(0, N, std::max<int64_t>(1, (1 << 16) / K), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
#ifdef COVE_AVX512
      for (int64_t k = 0; k < K; k += 32) {
        __m512 v[2];
        w.load(n, k, v);
        _mm512_storeu_ps(out + n * K + k, v[0]);
        _mm512_storeu_ps(out + n * K + k + 16, v[1]);
      }
#else
      for (int64_t k = 0; k < K; ++k) out[n * K + k] = w.at(n, k);
#endif
    }
  });
}
}  // namespace

// The float32 weight [N, K] of int4 codes (for products of more rows than decoding has).
at::Tensor int4_dequantize(const at::Tensor& q, const at::Tensor& scale, const at::Tensor& zero,
                           int64_t group) {
  check_int4(q, scale, zero, group);
  const int64_t N = q.size(0), K = q.size(1) * 2;
  at::Tensor out = at::empty({N, K}, q.options().dtype(at::kFloat));
  const uint8_t* qp = q.data_ptr<uint8_t>();
  switch (scale.scalar_type()) {
    case at::kFloat: dequantize_rows(Int4<float>{qp, scale.data_ptr<float>(), zero.data_ptr<float>(), K, group}, N, K, out.data_ptr<float>()); break;
    case at::kBFloat16: dequantize_rows(Int4<at::BFloat16>{qp, scale.data_ptr<at::BFloat16>(), zero.data_ptr<at::BFloat16>(), K, group}, N, K, out.data_ptr<float>()); break;
    case at::kHalf: dequantize_rows(Int4<at::Half>{qp, scale.data_ptr<at::Half>(), zero.data_ptr<at::Half>(), K, group}, N, K, out.data_ptr<float>()); break;
    default: TORCH_CHECK(false, "cove kernels: scales are float32, bfloat16 or float16");
  }
  return out;
}

std::string isa() {
#ifdef COVE_AVX512
  return "avx512";
#else
  return "scalar";
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dense", &dense, "x @ w.T (+ bias), float32 or bfloat16 weight [out, in]");
  m.def("int8_linear", &int8_linear, "x @ (q * scale).T (+ bias)");
  m.def("int4_linear", &int4_linear, "x @ int4 weight.T (+ bias), Cove's packed layout");
  m.def("int4_dequantize", &int4_dequantize, "the float32 weight of int4 codes");
  m.def("isa", &isa, "the vector instructions the kernels were built with");
  m.attr("MAX_ROWS") = MAX_ROWS;
  cove::bind_decode(m);
  cove::bind_attention(m);
}
