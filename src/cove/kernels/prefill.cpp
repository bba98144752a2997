// Cove's prompt product for int4 weights: y[M, N] = x[M, K] @ W[N, K]^T for a prompt's many
// rows, in integer dot products. The decoding kernels (gemv.cpp) stream each weight once per
// step; a prompt reuses every weight M times, so here the bound is arithmetic, and torch's
// float32 GEMM over the dequantised weight (the path without VNNI) reaches the CPU's float32
// peak. Integer products do four times the work per instruction. x is quantised to int8 in
// blocks of 32 inputs as the decoding step quantises it (gemv.cpp's quantize_rows: a ~ d *
// qa), and what that misses, x - d * qa (at most d / 2 per input), is quantised again at the
// scale e = d / 256 (qr in -128..127): two int8 passes carry x to within e / 2, 2^-16 of each
// block's largest value, near float32's product, where one pass alone (~2^-8) moved SmolLM2's
// near-tied first answer tokens ("The capital of France..." became "L'Etoile...", a 0.08-logit
// tie in float32). With that fixed ratio the passes share one int32 sum per block, 256 *
// sum(q * qa) + sum(q * qr) (at most 2^24: exact in float32), so per block
//   y += e_b * s_g * (256 * sum(q * qa) + sum(q * qr))
// with q the codes 0..15 (unsigned, vpdpbusd's first operand), and the zero points' term,
// sum_b (zero_g - 8 s_g) * c_b with c_b = d_b * sum(qa) + e_b * sum(qr) (the block's sum as
// quantised), is one small float32 GEMM over the groups first (MKL): per block the products
// only convert, scale and add their sums.
//
// Work is split in tiles of 48 output columns (three 16-lane vectors): a thread unpacks a
// tile's codes once into vpdpbusd's layout (four consecutive inputs of a column in one 32-bit
// lane: [K / 4][48][4] bytes, 27-72 KiB at SmolLM2's widths, so it stays in L2), then runs
// every row of x through it, four rows at a time: 12 int32 sums per block of 32 inputs (one
// per row and vector) over both passes, added into 12 float32 accumulators with the block's
// scales, all in registers. Tiles go to torch's threads (at::parallel_for).
#include "gemv.h"

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && \
    defined(__AVX512VL__) && !defined(COVE_KERNELS_SCALAR) && !defined(COVE_KERNELS_NO_VNNI)
#include <immintrin.h>
#define COVE_PREFILL 1
#endif

namespace {

#ifdef COVE_PREFILL
// Tiles of NV 16-column vectors, MR rows of x at a time: the 2 * MR * NV int32 and float32
// accumulators and NV weight vectors fit the 32 registers. Measured at SmolLM2's shapes (512
// rows, one thread, CPU time): 3 x 4 and 1 x 8 alike (8.7 ms for q/k/v/o-, gate- and down-
// sized layers), 2 x 6 9.9, 4 x 3 9.5, 2 x 4 10.2.
constexpr int NV = 3;
constexpr int64_t NT = 16 * NV;
constexpr int MR = 4;

template <class S>
inline float to_float(S v) { return static_cast<float>(v); }

// One tile of the weight as the products read it: codes [K / 4][NT][4] (columns past N zero),
// each group's scale [groups][NT].
struct Tile {
  std::vector<uint8_t> w;
  std::vector<float> s;
};

// x as the products read it: qa [M, K] (quantize_rows' blocks), qr [M, K] (the remainder at
// e = d / 256), e [M, nb], each block's sum as quantised, c [M, nb], and what an int8 weight's
// + 128 adds to a block's integer sum, offset = 128 * (256 * sum(qa) + sum(qr)) [M, nb].
struct Prompt {
  int64_t M = 0, K = 0, nb = 0;
  std::vector<int8_t> qa, qr;
  std::vector<float> e, c;
  std::vector<int32_t> offset;
};

template <class S>
void unpack(const uint8_t* q, const S* scale, int64_t N, int64_t K, int64_t group, int64_t n0,
            Tile& t) {
  const int64_t cols = std::min(NT, N - n0), groups = K / group, blocks = K / 32;
  t.w.resize(K * NT);
  t.s.assign(groups * NT, 0.0f);
  if (cols < NT) std::fill(t.w.begin(), t.w.end(), 0);
  const __m128i low = _mm_set1_epi8(15);
  for (int64_t c = 0; c < cols; ++c) {
    const uint8_t* row = q + (n0 + c) * (K / 2);
    uint32_t* dst = reinterpret_cast<uint32_t*>(t.w.data()) + c;
    for (int64_t b = 0; b < blocks; ++b) {
      // 16 bytes: input j in the low nibble of byte j, input 16 + j in the high one
      const __m128i p = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + b * 16));
      alignas(32) uint32_t words[8];  // the 32 codes in input order, four per word
      _mm_store_si128(reinterpret_cast<__m128i*>(words), _mm_and_si128(p, low));
      _mm_store_si128(reinterpret_cast<__m128i*>(words + 4),
                      _mm_and_si128(_mm_srli_epi16(p, 4), low));
      for (int j = 0; j < 8; ++j) dst[(b * 8 + j) * NT] = words[j];
    }
    for (int64_t g = 0; g < groups; ++g) t.s[g * NT + c] = to_float(scale[(n0 + c) * groups + g]);
  }
}

// An int8 weight's tile: its bytes plus 128 [K / 4][NT][4] (vpdpbusd's unsigned operand, as
// int4's codes are), and each column's scale in the tile's one "group".
template <class S>
void unpack_int8(const int8_t* q, const S* scale, int64_t N, int64_t K, int64_t n0, Tile& t) {
  const int64_t cols = std::min(NT, N - n0);
  t.w.resize(K * NT);
  t.s.assign(NT, 0.0f);
  if (cols < NT) std::fill(t.w.begin(), t.w.end(), 0x80);  // zeros
  for (int64_t c = 0; c < cols; ++c) {
    const int8_t* row = q + (n0 + c) * K;
    uint32_t* dst = reinterpret_cast<uint32_t*>(t.w.data()) + c;
    for (int64_t k4 = 0; k4 < K / 4; ++k4) {
      uint32_t four;
      std::memcpy(&four, row + 4 * k4, 4);
      dst[k4 * NT] = four ^ 0x80808080u;  // each byte + 128
    }
    t.s[c] = to_float(scale[n0 + c]);
  }
}

// Rows m0..m0+R-1 of the quantised x through one tile, added into out[m * ldo + n0 + c] for
// its first `cols` columns (fewer than NT in a tile past N). The weight is vpdpbusd's unsigned
// operand (int4's codes 0..15, int8's bytes + 128) and x its signed one. int4 (INT8 false):
// each block's sums scaled by its group's scales; int8: each block's sums less what the 128s
// added (Prompt::offset, integers: exact), the column's scale applied at the end.
template <int R, bool INT8>
void tile_rows(const Tile& t, const Prompt& a, int64_t m0, int64_t per_group, float* out,
               int64_t ldo, int64_t n0, int64_t cols) {
  const int64_t K = a.K, nb = a.nb;
  const uint8_t* w = t.w.data();
  const int8_t* xa = a.qa.data() + m0 * K;
  const int8_t* xr = a.qr.data() + m0 * K;
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512i sum[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) sum[r][v] = _mm512_setzero_si512();
    for (int pass = 0; pass < 2; ++pass) {
      const int8_t* x = pass == 0 ? xa : xr;
      if (pass == 1)
        for (int r = 0; r < R; ++r)
          for (int v = 0; v < NV; ++v) sum[r][v] = _mm512_slli_epi32(sum[r][v], 8);
      for (int64_t k4 = b * 8; k4 < b * 8 + 8; ++k4) {
        __m512i wv[NV];
        for (int v = 0; v < NV; ++v)
          wv[v] = _mm512_loadu_si512(w + (k4 * NT + 16 * v) * 4);
        for (int r = 0; r < R; ++r) {
          int32_t four;
          std::memcpy(&four, x + r * K + k4 * 4, 4);
          const __m512i xv = _mm512_set1_epi32(four);
          for (int v = 0; v < NV; ++v) sum[r][v] = _mm512_dpbusd_epi32(sum[r][v], wv[v], xv);
        }
      }
    }
    if (INT8) {
      for (int r = 0; r < R; ++r) {
        const __m512 e = _mm512_set1_ps(a.e[(m0 + r) * nb + b]);
        const __m512i off = _mm512_set1_epi32(a.offset[(m0 + r) * nb + b]);
        for (int v = 0; v < NV; ++v)
          acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sum[r][v], off)), e,
                                      acc[r][v]);
      }
      continue;
    }
    const int64_t g = b / per_group;
    __m512 s[NV];
    for (int v = 0; v < NV; ++v) s[v] = _mm512_loadu_ps(t.s.data() + g * NT + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 e = _mm512_set1_ps(a.e[(m0 + r) * nb + b]);
      for (int v = 0; v < NV; ++v)
        acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[r][v]), _mm512_mul_ps(s[v], e),
                                    acc[r][v]);
    }
  }
  if (INT8)
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v)
        acc[r][v] = _mm512_mul_ps(acc[r][v], _mm512_loadu_ps(t.s.data() + 16 * v));
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      const int64_t valid = std::clamp<int64_t>(cols - 16 * v, 0, 16);
      const __mmask16 k = valid == 16 ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1);
      float* o = out + (m0 + r) * ldo + n0 + 16 * v;
      _mm512_mask_storeu_ps(o, k, _mm512_add_ps(acc[r][v], _mm512_maskz_loadu_ps(k, o)));
    }
}

// x quantised for the products (see the top), slices of rows on torch's threads (on one
// thread quantising took ~7% of a 576-wide layer's time). The first pass is gemv.cpp's
// quantize_rows, operation for operation.
void quantize(const float* x, int64_t M, int64_t K, Prompt& a) {
  a.M = M;
  a.K = K;
  a.nb = K / 32;
  a.qa.resize(M * K);
  a.qr.resize(M * K);
  a.e.resize(M * a.nb);
  a.c.resize(M * a.nb);
  a.offset.resize(M * a.nb);
  const __m512 sign = _mm512_set1_ps(-0.0f);
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t i = m0 * a.nb; i < m1 * a.nb; ++i) {
      const float* p = x + i * 32;
      const __m512 x0 = _mm512_loadu_ps(p), x1 = _mm512_loadu_ps(p + 16);
      const float amax = _mm512_reduce_max_ps(
          _mm512_max_ps(_mm512_andnot_ps(sign, x0), _mm512_andnot_ps(sign, x1)));
      const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      const __m512 vi = _mm512_set1_ps(inv), vd = _mm512_set1_ps(-d);
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vi));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vi));
      // the remainder x - d * qa (one rounding: fma), in steps of e = d / 256
      const __m512 ve = _mm512_set1_ps(256.0f * inv);
      const __m512i r0 = _mm512_cvtps_epi32(
          _mm512_mul_ps(_mm512_fmadd_ps(vd, _mm512_cvtepi32_ps(q0), x0), ve));
      const __m512i r1 = _mm512_cvtps_epi32(
          _mm512_mul_ps(_mm512_fmadd_ps(vd, _mm512_cvtepi32_ps(q1), x1), ve));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(&a.qa[i * 32]), _mm512_cvtsepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(&a.qa[i * 32 + 16]), _mm512_cvtsepi32_epi8(q1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(&a.qr[i * 32]), _mm512_cvtsepi32_epi8(r0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(&a.qr[i * 32 + 16]), _mm512_cvtsepi32_epi8(r1));
      const float e = d / 256.0f;
      const int32_t sa = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      const int32_t sr = _mm512_reduce_add_epi32(
          _mm512_add_epi32(_mm512_cvtepi8_epi32(_mm512_cvtsepi32_epi8(r0)),
                           _mm512_cvtepi8_epi32(_mm512_cvtsepi32_epi8(r1))));
      a.e[i] = e;
      // an explicit fma, not the compiler's choice to contract or not: the GGUF-kept
      // SmolLM2's first answer token rides on a bfloat16 tie (issue 20's notes)
      a.c[i] = std::fma(e, static_cast<float>(sr), d * static_cast<float>(sa));
      a.offset[i] = 128 * (256 * sa + sr);
    }
  });
}

// Every tile of the weight (`unpack` fills one) through all rows of x, tiles on torch's
// threads.
template <bool INT8, class Unpack>
void run_tiles(const Prompt& a, int64_t N, int64_t per_group, float* out, Unpack unpack) {
  const int64_t M = a.M, tiles = (N + NT - 1) / NT;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    thread_local Tile tile;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * NT, cols = std::min(NT, N - n0);
      unpack(n0, tile);
      int64_t m = 0;
      for (; m + MR <= M; m += MR) tile_rows<MR, INT8>(tile, a, m, per_group, out, N, n0, cols);
      for (; m < M; ++m) tile_rows<1, INT8>(tile, a, m, per_group, out, N, n0, cols);
    }
  });
}

template <class S>
void int4_tiles(const Prompt& a, const uint8_t* q, const S* scale, int64_t N, int64_t group,
                float* out) {
  run_tiles<false>(a, N, group / 32, out, [&](int64_t n0, Tile& t) {
    unpack(q, scale, N, a.K, group, n0, t);
  });
}

template <class S>
void int8_tiles(const Prompt& a, const int8_t* q, const S* scale, int64_t N, float* out) {
  run_tiles<true>(a, N, 1, out, [&](int64_t n0, Tile& t) { unpack_int8(q, scale, N, a.K, n0, t); });
}
#endif

}  // namespace

// y = x @ W.T (+ bias) for x [M, K] float32, W from int4 codes in Cove's packed layout
// (cove.kernels.pack_int4) with scales and zero points [N, K / group]; y float32 [M, N].
at::Tensor int4_gemm(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                     const at::Tensor& zero, int64_t group,
                     const c10::optional<at::Tensor>& bias) {
#ifdef COVE_PREFILL
  const cove::Lin lin(3, q, scale, zero, group, bias);  // checks the weight's shapes and dtypes
  TORCH_CHECK(x.dim() == 2 && x.size(1) == lin.K, "cove kernels: x must be [rows, ", lin.K,
              "], got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), "cove kernels: x must be on the CPU");
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t M = xf.size(0), N = lin.N, K = lin.K, groups = K / group;
  if (M == 0) return at::empty({0, N}, xf.options());
  Prompt a;
  quantize(xf.data_ptr<float>(), M, K, a);
  // The zero points' term (and the bias) first: sum over each group's blocks of c, times
  // zero - 8 * scale in float32, in one GEMM.
  const at::Tensor c = at::from_blob(a.c.data(), {M, groups, group / 32}, xf.options()).sum(2);
  const at::Tensor low = (zero.to(at::kFloat) - 8.0f * scale.to(at::kFloat)).t();
  at::Tensor out = lin.bias.defined() ? at::addmm(lin.bias, c, low) : at::mm(c, low);
  const uint8_t* qp = q.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  switch (scale.scalar_type()) {
    case at::kFloat: int4_tiles(a, qp, scale.data_ptr<float>(), N, group, o); break;
    case at::kBFloat16: int4_tiles(a, qp, scale.data_ptr<at::BFloat16>(), N, group, o); break;
    default: int4_tiles(a, qp, scale.data_ptr<at::Half>(), N, group, o);
  }
  return out;
#else
  (void)x; (void)q; (void)scale; (void)zero; (void)group; (void)bias;
  TORCH_CHECK(false, "cove kernels: int4_gemm needs AVX512-VNNI (this build: without)");
#endif
}

// y = x @ (q * scale[:, None]).T (+ bias) for x [M, K] float32 (K a multiple of 32), q int8
// [N, K] with a scale per row; y float32 [M, N]. The same two passes as int4_gemm, the weight
// + 128 as vpdpbusd's unsigned operand (each block's sum less the 128s' share, in integers).
at::Tensor int8_gemm(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& bias) {
#ifdef COVE_PREFILL
  const cove::Lin lin(2, q, scale, c10::nullopt, 0, bias);  // checks the weight's shapes
  TORCH_CHECK(x.dim() == 2 && x.size(1) == lin.K, "cove kernels: x must be [rows, ", lin.K,
              "], got ", x.sizes());
  TORCH_CHECK(lin.K % 32 == 0, "cove kernels: int8_gemm takes inputs in blocks of 32, not ",
              lin.K);
  TORCH_CHECK(x.device().is_cpu(), "cove kernels: x must be on the CPU");
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t M = xf.size(0), N = lin.N, K = lin.K;
  if (M == 0) return at::empty({0, N}, xf.options());
  Prompt a;
  quantize(xf.data_ptr<float>(), M, K, a);
  // a copy of the bias per row (expand().contiguous() of one row would be the bias itself)
  at::Tensor out = lin.bias.defined() ? lin.bias.unsqueeze(0).repeat({M, 1})
                                       : at::zeros({M, N}, xf.options());
  const int8_t* qp = q.data_ptr<int8_t>();
  float* o = out.data_ptr<float>();
  switch (scale.scalar_type()) {
    case at::kFloat: int8_tiles(a, qp, scale.data_ptr<float>(), N, o); break;
    case at::kBFloat16: int8_tiles(a, qp, scale.data_ptr<at::BFloat16>(), N, o); break;
    default: int8_tiles(a, qp, scale.data_ptr<at::Half>(), N, o);
  }
  return out;
#else
  (void)x; (void)q; (void)scale; (void)bias;
  TORCH_CHECK(false, "cove kernels: int8_gemm needs AVX512-VNNI (this build: without)");
#endif
}

// Whether this build has int4_gemm (else prompts take the dequantised weight).
bool has_int4_gemm() {
#ifdef COVE_PREFILL
  return true;
#else
  return false;
#endif
}

namespace cove {

void bind_prefill(pybind11::module& m) {
  m.def("int4_gemm", &int4_gemm, "x @ int4 weight.T (+ bias) for a prompt's many rows, in "
        "integer products on x quantised in blocks of 32 (AVX512-VNNI builds)");
  m.def("int8_gemm", &int8_gemm, "x @ int8 weight.T (+ bias) for a prompt's many rows, in "
        "integer products on x quantised in blocks of 32 (AVX512-VNNI builds)");
  m.def("has_int4_gemm", &has_int4_gemm, "whether this build has int4_gemm and int8_gemm");
}

}  // namespace cove
