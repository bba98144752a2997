// Cove's decode GEMV kernels: y[M, N] = x[M, K] @ W[N, K]^T for M = 1..8 activation rows, the
// shape of batch-1..8 decoding, where every weight is read once per step and memory bandwidth
// is the bound. torch's kernels fall short there: MKL's fp32 GEMV over [out, in] ran near a
// third of the bound, and the int8/int4 weight-only kernels are slow at M = 1.
//
// Weights are read row by row in their stored [N, K] layout (a row is contiguous, so R rows
// at once are R sequential streams). Weight kinds:
//   dense  float32 or bfloat16 rows (bfloat16 widened exactly by a 16-bit shift);
//   int8   int8 rows, one scale per row: y = scale[n] * (x . q[n]);
//   int4   codes 0..15 in groups of `group` inputs with a scale and zero point each,
//          w = (q - 8) * scale + zero; each 32 inputs are 16 bytes, byte j holding input j in
//          its low nibble and input 16 + j in its high one (see cove.kernels.pack_int4).
// Scales and zero points are float32, bfloat16 or float16 (the layers' compute dtype).
// Activations: float32 (and float32 sums), except for bfloat16 weights against x whose values
// are all bfloat16 ones (a bfloat16 model's) on CPUs with AVX512_BF16: there x is taken in
// bfloat16 and pairs multiply exactly into float32 sums (vdpbf16ps, see bf16_dp_row); and
// except for int4 weights on CPUs with AVX512-VNNI:
// there x is quantised to int8 in blocks of 32 inputs with a float32 scale each (a ~ d * qa,
// d = max|a| / 127, qa = round(a / d): llama.cpp's Q8_0 activations), once per parallel region,
// and codes and qa multiply byte by byte into an int32 sum per block (vpdpbusd), scaled as
//   y = sum_b d_b * (s_g * sum(q * qa) + (zero_g - 8 s_g) * sum(qa)).
// Widening each code to float32 kept int4 compute-bound (SmolLM2's int4 step: 10.3 ms of CPU
// time with float32 activations, 7.4 with these). int8 weights keep float32 activations: they
// ran as fast widened as in integer products (8.8 vs 9.0 ms) and stay exact, and the LM head
// is int8, where quantised activations flipped SmolLM2's near-tied first answer token.
// Without VNNI (or built with -DCOVE_KERNELS_NO_VNNI) int4 widens too.
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
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && !defined(COVE_KERNELS_SCALAR)
#include <immintrin.h>
#define COVE_AVX512 1
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && !defined(COVE_KERNELS_NO_VNNI)
#define COVE_VNNI 1
#endif
#if defined(__AVX512BF16__) && !defined(COVE_KERNELS_NO_BF16)
#define COVE_BF16DP 1
#endif
#endif

namespace {

using cove::MAX_ROWS;
// Rows of W per parallel block; a thread gets whole blocks.
constexpr int64_t BLOCK = 16;

template <class S>
inline float to_float(S v) { return static_cast<float>(v); }

struct F32 {
  const float* w; int64_t K;
  static constexpr int STEP = 16, STEP_BYTES = 64;
  static constexpr bool PREFETCH = false;
  const void* row(int64_t n) const { return w + n * K; }
  float at(int64_t n, int64_t k) const { return w[n * K + k]; }
  float finish(int64_t, float a) const { return a; }
#ifdef COVE_AVX512
  void load(int64_t n, int64_t k, __m512* v) const { v[0] = _mm512_loadu_ps(w + n * K + k); }
#endif
};

struct BF16 {
  const uint16_t* w; int64_t K;
  static constexpr int STEP = 16, STEP_BYTES = 32;
  static constexpr bool PREFETCH = false;
  const void* row(int64_t n) const { return w + n * K; }
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
  static constexpr int STEP = 16, STEP_BYTES = 16;
  static constexpr bool PREFETCH = true;
  const void* row(int64_t n) const { return q + n * K; }
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
  static constexpr int STEP = 32, STEP_BYTES = 16;
  static constexpr bool PREFETCH = true;
  const void* row(int64_t n) const { return q + n * (K / 2); }
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
  // int8/int4: the next R rows follow these in memory, fetched at the pace these are read:
  // their short rows (a few hundred bytes) are too short a stream for the hardware
  // prefetcher, which left SmolLM2's int8 step waiting on loads (18.4 -> 8.8 ms of CPU time
  // with it). Float rows are long enough: prefetching them cost time (34 -> 39 ms).
  const char* next = static_cast<const char*>(w.row(n + R));
  for (; k < vec_end; k += W::STEP) {
    if (W::PREFETCH)
      for (int64_t at = (k / W::STEP * R * W::STEP_BYTES) & ~int64_t(63),
                   end = (k / W::STEP + 1) * R * W::STEP_BYTES; at < end; at += 64)
        _mm_prefetch(next + at, _MM_HINT_T0);
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

using cove::QRows;

// Whether `lin`'s product takes the quantised activations.
inline bool takes_qrows(const cove::Lin& lin) {
#ifdef COVE_VNNI
  return lin.kind == cove::Kind::INT4;
#else
  (void)lin;
  return false;
#endif
}

#ifdef COVE_VNNI
}  // namespace

// qa = round(a / d) to nearest even, computed as a * (127 / max|a|) (the test's reference
// does the same float32 operations), per block of 32.
void cove::quantize_rows(const float* x, int64_t M, int64_t K, QRows& out) {
  out.resize(M, K);
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < out.nb; ++b) {
      const float* a = x + m * K + b * 32;
      const __m512 a0 = _mm512_loadu_ps(a), a1 = _mm512_loadu_ps(a + 16);
      const float amax = _mm512_reduce_max_ps(
          _mm512_max_ps(_mm512_andnot_ps(sign, a0), _mm512_andnot_ps(sign, a1)));
      const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      const __m512 vi = _mm512_set1_ps(inv);
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(a0, vi));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(a1, vi));
      int8_t* q = out.q.data() + m * K + b * 32;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtsepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtsepi32_epi8(q1));
      out.d[m * out.nb + b] = d;
      out.c[m * out.nb + b] = d * static_cast<float>(_mm512_reduce_add_epi32(
                                      _mm512_add_epi32(q0, q1)));
    }
}

namespace {

inline float sum8(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

// 16 scales (or zero points) from p as float32, the lanes past mask k zero.
template <class S>
inline __m512 scales16(const S* p, __mmask16 k);
template <>
inline __m512 scales16(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
template <>
inline __m512 scales16(const at::BFloat16* p, __mmask16 k) {
  const __m256i h = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
inline __m512 scales16(const at::Half* p, __mmask16 k) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}

// Blocks per pass of int4's rows: their per-block factors s_g * d_b sit on the stack.
constexpr int64_t Q4_CHUNK = 64;

// int4 rows n..n+R-1 against the quantised rows, one block (16 bytes, 32 codes) per step.
template <int M, int R, class S>
inline void q4_rows(const Int4<S>& w, const QRows& a, int64_t n, float* out, int64_t ldo) {
  const int64_t K = a.K, nb = a.nb, per_group = w.group / 32, groups = K / w.group;
  const __m256i low = _mm256_set1_epi8(15);
  __m256 acc[M][R];
  __m512 zacc[M][R];  // the zero points' terms (group 32, 16 blocks at a time)
  float zsum[M][R];   // the same, block by block (larger groups)
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      acc[m][r] = _mm256_setzero_ps();
      zacc[m][r] = _mm512_setzero_ps();
      zsum[m][r] = 0.0f;
    }
  alignas(64) float f[R][M][Q4_CHUNK];  // s_g * d_b of row r, activation row m, block b
  for (int64_t b0 = 0; b0 < nb; b0 += Q4_CHUNK) {
    const int64_t bn = std::min(Q4_CHUNK, nb - b0);
    for (int r = 0; r < R; ++r) {
      const S* sr = w.scale + (n + r) * groups;
      const S* zr = w.zero + (n + r) * groups;
      if (per_group == 1) {  // group 32: a block's scale is the next one, 16 at a time
        for (int64_t b = 0; b < bn; b += 16) {
          const __mmask16 k = bn - b >= 16 ? 0xFFFF : __mmask16((1u << (bn - b)) - 1);
          const __m512 s = scales16(sr + b0 + b, k), z = scales16(zr + b0 + b, k);
          const __m512 mn = _mm512_fnmadd_ps(_mm512_set1_ps(8.0f), s, z);  // zero - 8 s
          for (int m = 0; m < M; ++m) {
            const int64_t at = m * nb + b0 + b;
            _mm512_mask_storeu_ps(&f[r][m][b], k, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(k, &a.d[at])));
            zacc[m][r] = _mm512_fmadd_ps(mn, _mm512_maskz_loadu_ps(k, &a.c[at]), zacc[m][r]);
          }
        }
      } else {
        for (int64_t b = 0; b < bn; ++b) {
          const int64_t g = (b0 + b) / per_group;
          const float s = to_float(sr[g]), mn = to_float(zr[g]) - 8.0f * s;
          for (int m = 0; m < M; ++m) {
            f[r][m][b] = s * a.d[m * nb + b0 + b];
            zsum[m][r] += mn * a.c[m * nb + b0 + b];
          }
        }
      }
    }
    for (int64_t b = 0; b < bn; ++b) {
      const int64_t k = (b0 + b) * 32;
      if (b % 4 == 0)  // the next R rows, at the pace these are read (see rows)
        for (int r = 0; r < R; ++r)
          _mm_prefetch(reinterpret_cast<const char*>(w.q + (n + R) * (K / 2)) +
                       ((b0 + b) / 4 * R + r) * 64, _MM_HINT_T0);
      __m256i wv[R];
      for (int r = 0; r < R; ++r) {  // the 32 codes in input order: low nibbles, then high
        const __m128i p = _mm_loadu_si128(reinterpret_cast<const __m128i*>(
            w.q + (n + r) * (K / 2) + k / 2));
        wv[r] = _mm256_and_si256(
            _mm256_inserti128_si256(_mm256_castsi128_si256(p), _mm_srli_epi16(p, 4), 1), low);
      }
      for (int m = 0; m < M; ++m) {
        const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
            a.q.data() + m * K + k));
        for (int r = 0; r < R; ++r)
          acc[m][r] = _mm256_fmadd_ps(
              _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), wv[r], av)),
              _mm256_set1_ps(f[r][m][b]), acc[m][r]);
      }
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r)
      out[m * ldo + n + r] = sum8(acc[m][r]) + _mm512_reduce_add_ps(zacc[m][r]) + zsum[m][r];
}

// Rows n0..n1 of an int4 weight against the quantised rows, R at a time (as range).
template <int M, class S>
void q_range(const Int4<S>& w, const QRows& a, int64_t n0, int64_t n1, float* out,
             int64_t ldo) {
  constexpr int R = M <= 2 ? 8 : (M <= 4 ? 4 : 2);
  int64_t n = n0;
  for (; n + R <= n1; n += R) q4_rows<M, R>(w, a, n, out, ldo);
  for (; n < n1; ++n) q4_rows<M, 1>(w, a, n, out, ldo);
}

template <int M, class W>
void q_range(const W&, const QRows&, int64_t, int64_t, float*, int64_t) {
  TORCH_CHECK(false, "cove kernels: quantised activations for a dense weight");
}
#endif

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

// x as the bfloat16 weights' products read it, made once per parallel region. Where the CPU
// has AVX512_BF16 and every value of x is a bfloat16 value (a bfloat16 model's activations
// always are), x itself in bfloat16 (`pairs`: bf16_dp_row); else x in float32 with each 16
// inputs split into their 8 even then 8 odd ones (bf16_rows).
struct BRows {
  bool pairs = false;
  std::vector<uint16_t> b;   // [M, K] when pairs
  std::vector<float> split;  // [M, K] otherwise
};

void prepare_brows(const float* x, int64_t M, int64_t K, BRows& out) {
  const int64_t n = M * K;
#ifdef COVE_BF16DP
  // a float32 value is a bfloat16 one when its low 16 bits are zero; then its high half is it
  out.b.resize(n);
  out.pairs = true;
  int64_t i = 0;
  for (; i + 16 <= n && out.pairs; i += 16) {
    const __m512i v = _mm512_loadu_si512(x + i);
    out.pairs = _mm512_test_epi32_mask(v, _mm512_set1_epi32(0xffff)) == 0;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.b.data() + i),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)));
  }
  for (; i < n && out.pairs; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, 4);
    out.pairs = (bits & 0xffff) == 0;
    out.b[i] = static_cast<uint16_t>(bits >> 16);
  }
  if (out.pairs) return;
#endif
  out.pairs = false;
  out.split.resize(n);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k + 16 <= K; k += 16)
      for (int64_t i = 0; i < 8; ++i) {
        out.split[m * K + k + i] = x[m * K + k + 2 * i];
        out.split[m * K + k + 8 + i] = x[m * K + k + 2 * i + 1];
      }
}

// -- dense products (float32 and bfloat16 weights) --------------------------------------------
// The float32/bfloat16 rows' sums in `rows`' order (sixteen lanes of multiply-adds over k, then
// _mm512_reduce_add_ps, then the tail), so results are its bit for bit, with two changes for
// decoding's stream of weights: the next block of
// rows is prefetched while one is summed (a row of SmolLM2 is 1-2 KiB: the hardware
// prefetcher barely starts on a row before it ends), and bfloat16 weights are widened without
// a shuffle (a 16-weight load shifted for the even inputs and masked for the odd ones, summed
// in 8-lane halves against the activations split the same way: each lane still adds its own
// inputs in order). Measured on SmolLM2-135M, one thread, CPU time per step in one process
// (load ~7): float32 32.3 -> 28.4 ms, bfloat16 29.1 -> 22.0 ms; without the prefetch the
// shuffle-free widening alone gave 2%.
#ifdef COVE_AVX512
template <int M, int R>
void f32_rows(const float* w, const float* x, int64_t K, int64_t n, float* out, int64_t ldo,
              const char* next) {
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  const int64_t vec_end = K - K % 16;
  const int64_t pf_step = R * 64;  // bytes of the next block per 16 inputs (R rows * 64 B)
  for (int64_t k = 0, it = 0; k < vec_end; k += 16, ++it) {
    for (int64_t j = 0; j < pf_step; j += 64) _mm_prefetch(next + it * pf_step + j, _MM_HINT_T0);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_ps(w + (n + r) * K + k);
    for (int m = 0; m < M; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * K + k);
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_fmadd_ps(wv[r], xv, acc[m][r]);
    }
  }
  float sum[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) sum[m][r] = _mm512_reduce_add_ps(acc[m][r]);
  for (int64_t k = vec_end; k < K; ++k)
    for (int r = 0; r < R; ++r) {
      const float wk = w[(n + r) * K + k];
      for (int m = 0; m < M; ++m) sum[m][r] += x[m * K + k] * wk;
    }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) out[m * ldo + n + r] = sum[m][r];
}

// xs: x with each 16 inputs split into their 8 even then 8 odd ones.
template <int M, int R>
void bf16_rows(const uint16_t* w, const float* x, const float* xs, int64_t K, int64_t n,
               float* out, int64_t ldo, const char* next) {
  __m256 even[M][R], odd[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) even[m][r] = odd[m][r] = _mm256_setzero_ps();
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  const int64_t vec_end = K - K % 16;
  const int64_t pf_step = R * 32;
  for (int64_t k = 0, it = 0; k < vec_end; k += 16, ++it) {
    for (int64_t j = 0; j < pf_step; j += 64) _mm_prefetch(next + it * pf_step + j, _MM_HINT_T0);
    for (int r = 0; r < R; ++r) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (n + r) * K + k));
      const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, high));
      for (int m = 0; m < M; ++m) {
        even[m][r] = _mm256_fmadd_ps(we, _mm256_loadu_ps(xs + m * K + k), even[m][r]);
        odd[m][r] = _mm256_fmadd_ps(wo, _mm256_loadu_ps(xs + m * K + k + 8), odd[m][r]);
      }
    }
  }
  float sum[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      // the sixteen lanes in gemv.cpp's order: lane 2i even[i], lane 2i + 1 odd[i]
      const __m256 lo = _mm256_unpacklo_ps(even[m][r], odd[m][r]);
      const __m256 hi = _mm256_unpackhi_ps(even[m][r], odd[m][r]);
      const __m512 lanes = _mm512_insertf32x8(
          _mm512_castps256_ps512(_mm256_permute2f128_ps(lo, hi, 0x20)),
          _mm256_permute2f128_ps(lo, hi, 0x31), 1);
      sum[m][r] = _mm512_reduce_add_ps(lanes);
    }
  for (int64_t k = vec_end; k < K; ++k)
    for (int r = 0; r < R; ++r) {
      uint32_t bits = uint32_t(w[(n + r) * K + k]) << 16;
      float wk;
      std::memcpy(&wk, &bits, 4);
      for (int m = 0; m < M; ++m) sum[m][r] += x[m * K + k] * wk;
    }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) out[m * ldo + n + r] = sum[m][r];
}

#ifdef COVE_BF16DP
// One bfloat16 row against x in bfloat16 (BRows::pairs), 32 inputs per step: vdpbf16ps
// multiplies 32 weight/input pairs and adds them into 16 float32 lanes, lane i taking inputs
// 2i + 1 then 2i (the products of two bfloat16 values are exact in float32: only the sums
// round, in another order than bf16_rows'; the instruction takes subnormal inputs and sums as
// zero). Steps alternate between two accumulators (the instruction's latency), the last
// partial step is loaded masked (zeros add nothing), then acc0 + acc1 and
// _mm512_reduce_add_ps. One row at a time, with no software prefetch: a thread's rows are
// then one sequential stream, which the hardware prefetcher follows at the memory's pace
// (bf16_rows' eight interleaved rows needed their software prefetch and still ran ~25% under
// it: a one-thread microbenchmark over SmolLM2-135M's bfloat16 matrices, CPU time per pass,
// 20.3 ms eight rows with prefetch against 15.9 ms one row, 17.7 ms for plain loads alone).
template <int M>
void bf16_dp_row(const uint16_t* w, const uint16_t* xb, int64_t K, int64_t n, float* out,
                 int64_t ldo) {
  __m512 acc[M][2];
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  const uint16_t* row = w + n * K;
  const int64_t vec_end = K - K % 64;
  int64_t k = 0;
  for (; k < vec_end; k += 64) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(row + k);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(row + k + 32);
    for (int m = 0; m < M; ++m) {
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], w0, (__m512bh)_mm512_loadu_si512(xb + m * K + k));
      acc[m][1] = _mm512_dpbf16_ps(acc[m][1], w1,
                                   (__m512bh)_mm512_loadu_si512(xb + m * K + k + 32));
    }
  }
  for (; k < K; k += 32) {  // the last 1..63 inputs: a full step and/or a masked one
    const __mmask32 part = K - k >= 32 ? ~__mmask32(0)
                                       : static_cast<__mmask32>((uint64_t(1) << (K - k)) - 1);
    const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(part, row + k);
    for (int m = 0; m < M; ++m)
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], wv,
                                   (__m512bh)_mm512_maskz_loadu_epi16(part, xb + m * K + k));
  }
  for (int m = 0; m < M; ++m)
    out[m * ldo + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]));
}
#endif

// Rows n0..n1 of a dense layer against M rows of x; `next`: where the rows after n1 start.
template <int M>
void dense_range(const cove::Lin& lin, const float* x, const BRows& bx, int64_t n0, int64_t n1,
                 float* out, int64_t ldo) {
  const int64_t K = lin.K;
  if (lin.kind == cove::Kind::F32) {
    constexpr int R = M <= 2 ? 8 : (M <= 4 ? 4 : 2);
    const float* w = lin.w.data_ptr<float>();
    int64_t n = n0;
    for (; n + R <= n1; n += R)
      f32_rows<M, R>(w, x, K, n, out, ldo, reinterpret_cast<const char*>(w + (n + R) * K));
    for (; n < n1; ++n)
      f32_rows<M, 1>(w, x, K, n, out, ldo, reinterpret_cast<const char*>(w + (n + 1) * K));
  } else {
    const uint16_t* w = reinterpret_cast<const uint16_t*>(lin.w.data_ptr<at::BFloat16>());
#ifdef COVE_BF16DP
    if (bx.pairs) {
      for (int64_t n = n0; n < n1; ++n) bf16_dp_row<M>(w, bx.b.data(), K, n, out, ldo);
      return;
    }
#endif
    // 2 * M * R accumulators of the 32 registers
    constexpr int R = M == 1 ? 8 : (M == 2 ? 4 : (M <= 4 ? 2 : 1));
    const float* xs = bx.split.data();
    int64_t n = n0;
    for (; n + R <= n1; n += R)
      bf16_rows<M, R>(w, x, xs, K, n, out, ldo, reinterpret_cast<const char*>(w + (n + R) * K));
    for (; n < n1; ++n)
      bf16_rows<M, 1>(w, x, xs, K, n, out, ldo, reinterpret_cast<const char*>(w + (n + 1) * K));
  }
}

#endif

template <int M>
void lin_rows_m(const cove::Lin& lin, const float* x, const BRows* bx, const QRows* qx,
                int64_t n0, int64_t n1, float* out, int64_t ldo) {
#ifdef COVE_AVX512
  if (lin.kind == cove::Kind::F32 || lin.kind == cove::Kind::BF16)
    return dense_range<M>(lin, x, *bx, n0, n1, out, ldo);
#else
  (void)bx;
#endif
#ifdef COVE_VNNI
  if (qx != nullptr && takes_qrows(lin))
    return with_weight(lin, [&](const auto& w) { q_range<M>(w, *qx, n0, n1, out, ldo); });
#else
  (void)qx;
#endif
  with_weight(lin, [&](const auto& w) { range<M>(w, x, lin.K, n0, n1, out, ldo); });
}

// Rows n0..n1 of y = x @ W^T (no bias) for M rows of x [M, K], into out[m * ldo + n];
// bfloat16 weights read bx (x as BRows), int8 and int4 weights
// x's quantised rows qx when given (see QRows).
void lin_rows(const cove::Lin& lin, const float* x, const BRows* bx, const QRows* qx, int64_t M,
              int64_t n0, int64_t n1, float* out, int64_t ldo) {
  switch (M) {
    case 1: return lin_rows_m<1>(lin, x, bx, qx, n0, n1, out, ldo);
    case 2: return lin_rows_m<2>(lin, x, bx, qx, n0, n1, out, ldo);
    case 3: return lin_rows_m<3>(lin, x, bx, qx, n0, n1, out, ldo);
    case 4: return lin_rows_m<4>(lin, x, bx, qx, n0, n1, out, ldo);
    case 5: return lin_rows_m<5>(lin, x, bx, qx, n0, n1, out, ldo);
    case 6: return lin_rows_m<6>(lin, x, bx, qx, n0, n1, out, ldo);
    case 7: return lin_rows_m<7>(lin, x, bx, qx, n0, n1, out, ldo);
    case 8: return lin_rows_m<8>(lin, x, bx, qx, n0, n1, out, ldo);
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
  // x quantised once for the region's int8/int4 products (the caller's thread's buffers,
  // reused from call to call; the workers only read them).
  const QRows* qx = nullptr;
#ifdef COVE_VNNI
  thread_local QRows quantized;
  for (int64_t j = 0; j < count && qx == nullptr; ++j)
    if (takes_qrows(*jobs[j].lin)) {
      quantize_rows(x, M, jobs[j].lin->K, quantized);
      qx = &quantized;
    }
#endif
  // x as the region's bfloat16 products read it (the same per-thread reuse; the workers read
  // it through `brows`: inside the region `bx` would name their own, empty thread_local one).
  thread_local BRows bx;
  const BRows* brows = &bx;
#ifdef COVE_AVX512
  for (int64_t j = 0; j < count; ++j)
    if (jobs[j].lin->kind == Kind::BF16) {
      prepare_brows(x, M, jobs[j].lin->K, bx);
      break;
    }
#endif
  // Below ~64 KiB of weights a second thread costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / (BLOCK * row_bytes));
  at::parallel_for(0, total, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t j = 0; j < count; ++j) {
      const int64_t first = starts[j], blocks = (jobs[j].lin->N + BLOCK - 1) / BLOCK;
      const int64_t lo = std::max(b0, first), hi = std::min(b1, first + blocks);
      if (lo >= hi) continue;
      const Lin& lin = *jobs[j].lin;
      lin_rows(lin, x, brows, qx, M, (lo - first) * BLOCK,
               std::min(lin.N, (hi - first) * BLOCK), jobs[j].out, jobs[j].ldo);
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
  std::string name = "avx512";
#ifdef COVE_VNNI
  name += "+vnni";
#endif
#ifdef COVE_BF16DP
  name += "+bf16";
#endif
  return name;
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
  cove::bind_prefill(m);
  cove::bind_attention(m);
}
