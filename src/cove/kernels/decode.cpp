// Cove's decoding step for Llama-family decoders (Llama, Mistral, Qwen2/3, SmolLM3): one new
// token for each of 1..8 sequences through every layer and the LM head in one call, so a
// token costs a few dispatches instead of thousands of small torch ops (each layer's norms,
// rotary embedding, cache writes, attention over one query, adds and activations).
//
// Per layer, for the M rows (one new token per sequence):
//   a = RMSNorm(h); q, k, v = a @ Wq/Wk/Wv^T (one parallel region; biases when the layer has
//   them); per-head RMSNorm of q and k (Qwen3); rotary embedding (cos/sin tables by position,
//   so every rope_type the model's RotaryEmbedding computes is covered); k, v written in place
//   into the preallocated cache [layers, 2, slots, kv_heads, max_length, head_dim], each row
//   into its own slot at its own length (generate: slot m, every row at one length; the
//   serving engine: a pool of slots, each sequence at its own length); attention of each query
//   head over its kv head's keys 0..length of its slot (grouped-query; keys the attention mask
//   zeroes are skipped: left padding); h += o_proj(attention); then
//   h += down(silu(gate(b)) * up(b)) with b = RMSNorm(h). Finally RMSNorm and the LM head.
// Weights are read in their stored kinds (gemv.h's Lin: float32, bfloat16, int8, int4) and
// are the model's own tensors (no copies); norm weights are float32 copies.
//
// Two arithmetics, chosen by the embeddings' dtype:
//   float32 (a float32 model): activations and sums in float32 throughout.
//   bfloat16 (a bfloat16 model): every value the module forward (Cove's, which is
//   transformers') holds as a bfloat16 tensor is rounded to bfloat16 (nearest even) at the
//   same point, so greedy answers stay the module's: the embedding row; RMSNorm as
//   x * rsqrt(mean(x^2) + eps) rounded, then times the weight rounded, its mean summed in
//   ATen's order; each linear's output (float32 sums, rounded once, as the kernels' module
//   path computes it); rotary products and their sum each rounded; the residual adds;
//   silu(gate) and its product with up; the logits. SiLU is torch's own op on the module's
//   shape (its own exp). Attention is attend_head in float32 over the bfloat16 cache, its
//   output rounded: the module forward's one-query attention in bfloat16 on the CPU runs the
//   same function (attend_one, through layers.attend) rather than torch's SDPA, whose result
//   depended on the batch's longest row and cost ~30 us a layer from here.
#include "attention.h"  // exp16
#include "gemv.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && !defined(COVE_KERNELS_SCALAR)
#include <immintrin.h>
#define COVE_AVX512 1
#endif

namespace {

using cove::Job;
using cove::Lin;

#ifdef COVE_AVX512
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#endif

// a . b over n values (b float32 or bfloat16).
template <class T>
inline float dot(const float* a, const T* b, int64_t n) {
  int64_t i = 0;
  float s = 0.0f;
#ifdef COVE_AVX512
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load16(b + i), acc);
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) s += a[i] * static_cast<float>(b[i]);
  return s;
}

// out += p * v over n values.
template <class T>
inline void axpy(float p, const T* v, float* out, int64_t n) {
  int64_t i = 0;
#ifdef COVE_AVX512
  const __m512 vp = _mm512_set1_ps(p);
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, _mm512_fmadd_ps(vp, load16(v + i), _mm512_loadu_ps(out + i)));
#endif
  for (; i < n; ++i) out[i] += p * static_cast<float>(v[i]);
}

inline void store(float* dst, const float* src, int64_t n) { std::copy(src, src + n, dst); }
inline void store(at::BFloat16* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = at::BFloat16(src[i]);  // round to nearest even
}

#ifdef COVE_AVX512
// q . K_j for 16 consecutive keys (D a multiple of 16), one 16-lane sum per key reduced
// together: a transposing tree of adds (unpacks within 128-bit lanes, then across them)
// instead of 16 horizontal reductions.
template <class T>
inline __m512 dot16(const float* q, const T* K, int64_t D) {
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) {
    const __m512 qv = _mm512_loadu_ps(q + d);
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(qv, load16(K + j * D + d), acc[j]);
  }
  __m512 two[8], four[4], eight[2];
  for (int j = 0; j < 8; ++j)  // lanes [k0 k1 k0 k1] of keys 2j, 2j + 1 per 128 bits
    two[j] = _mm512_add_ps(_mm512_unpacklo_ps(acc[2 * j], acc[2 * j + 1]),
                           _mm512_unpackhi_ps(acc[2 * j], acc[2 * j + 1]));
  for (int j = 0; j < 4; ++j) {  // [k0 k1 k2 k3] per 128 bits
    const __m512d a = _mm512_castps_pd(two[2 * j]), b = _mm512_castps_pd(two[2 * j + 1]);
    four[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  for (int j = 0; j < 2; ++j)  // 128-bit lanes: keys 0-3 (two halves), keys 4-7 (two halves)
    eight[j] = _mm512_add_ps(_mm512_shuffle_f32x4(four[2 * j], four[2 * j + 1], 0x88),
                             _mm512_shuffle_f32x4(four[2 * j], four[2 * j + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(eight[0], eight[1], 0x88),
                       _mm512_shuffle_f32x4(eight[0], eight[1], 0xDD));
}
#endif

// One query head's attention over n keys, softmax(q . K_j * scale) V in float32 (bfloat16
// keys and values widened exactly), into o[D]; keys a keep row marks 0 are skipped, and a row
// keeping none attends everywhere (as causal_mask has it). scores: room for n floats. The
// decoding step's attention and the bfloat16 module forward's one-query attention
// (attend_one, through layers.attend) both run this, so they agree bit for bit. bf16_probs:
// the probabilities multiply V as bfloat16 values, their sum taken unrounded, as torch's
// bfloat16 SDPA on the CPU does (transformers' forward: greedy answers part from it later).
template <class T>
void attend_head(const float* q, const T* K, const T* V, int64_t n, int64_t D,
                 const int64_t* keep, float scale, bool bf16_probs, float* scores, float* o) {
  bool any = keep == nullptr;
  for (int64_t j = 0; !any && j < n; ++j) any = keep[j] != 0;
  int64_t j = 0;
#ifdef COVE_AVX512
  if (D % 16 == 0)
    for (; j + 16 <= n; j += 16)
      _mm512_storeu_ps(scores + j, _mm512_mul_ps(dot16(q, K + j * D, D), _mm512_set1_ps(scale)));
#endif
  for (; j < n; ++j) scores[j] = dot(q, K + j * D, D) * scale;
  float top = -std::numeric_limits<float>::infinity();
  for (j = 0; j < n; ++j) {
    if (any && keep && !keep[j]) {
      scores[j] = -std::numeric_limits<float>::infinity();
      continue;
    }
    top = std::max(top, scores[j]);
  }
  // the probabilities first (one pass of exp, 16 keys at a time: attention.h's exp16), then
  // P V
  float total = 0.0f;
  j = 0;
#ifdef COVE_AVX512
  __m512 sum = _mm512_setzero_ps();
  const __m512 vtop = _mm512_set1_ps(top);
  for (; j + 16 <= n; j += 16) {
    const __m512 x = _mm512_loadu_ps(scores + j);
    const __mmask16 kept = _mm512_cmp_ps_mask(
        x, _mm512_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_NEQ_OQ);
    const __m512 p = _mm512_maskz_mov_ps(kept, cove::exp16(_mm512_sub_ps(x, vtop)));
    _mm512_storeu_ps(scores + j, p);
    sum = _mm512_add_ps(sum, p);
  }
  total = _mm512_reduce_add_ps(sum);
#endif
  for (; j < n; ++j) {
    const float p = scores[j] == -std::numeric_limits<float>::infinity()
                        ? 0.0f : std::exp(scores[j] - top);
    scores[j] = p;
    total += p;
  }
  const float inv = 1.0f / total;
  if (bf16_probs)
    for (j = 0; j < n; ++j) scores[j] = static_cast<float>(at::BFloat16(scores[j]));
#ifdef COVE_AVX512
  if (D == 64) {  // the usual head size: o in four registers across the keys
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    for (j = 0; j < n; ++j) {
      if (scores[j] == 0.0f) continue;
      const __m512 p = _mm512_set1_ps(scores[j]);
      for (int v = 0; v < 4; ++v)
        acc[v] = _mm512_fmadd_ps(p, load16(V + j * D + 16 * v), acc[v]);
    }
    for (int v = 0; v < 4; ++v)
      _mm512_storeu_ps(o + 16 * v, _mm512_mul_ps(acc[v], _mm512_set1_ps(inv)));
    return;
  }
#endif
  std::fill(o, o + D, 0.0f);
  for (j = 0; j < n; ++j)
    if (scores[j] != 0.0f) axpy(scores[j], V + j * D, o, D);
  for (int64_t d = 0; d < D; ++d) o[d] *= inv;
}

// Heads of one-query attention in parallel: a second thread pays off from a few thousand
// multiply-adds per thread.
inline int64_t attention_grain(int64_t n, int64_t D) {
  return std::max<int64_t>(1, 4096 / (n * D));
}

// out = w * (x / rms(x)), as RMSNorm computes it in float32.
void rms_norm(const float* x, const float* w, float eps, int64_t n, float* out) {
  float ss = 0.0f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

// Llama's rotary embedding of one head in place: x * cos + rotate_half(x) * sin over the
// first `rot` features (the rest pass through).
void rotate(float* x, const float* c, const float* s, int64_t rot) {
  const int64_t half = rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * c[i] - b * s[i];
    x[i + half] = b * c[i + half] + a * s[i + half];
  }
}

// -- the bfloat16 arithmetic's pieces -------------------------------------------------------
// No multiply-add contraction here: each product and sum rounds as torch's separate ops do.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

// v rounded to bfloat16 (nearest even), kept as a float: what a bfloat16 tensor stores.
inline float rb(float v) { return static_cast<float>(c10::BFloat16(v)); }

// p[0..n) rounded to bfloat16 in place.
void round_bf16(float* p, int64_t n) {
  int64_t i = 0;
#ifdef COVE_AVX512
  // c10's rounding: add 0x7fff plus the kept part's lowest bit, drop the low 16 bits
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff),
                high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(p + i);
    const __m512i b = _mm512_castps_si512(v);
    __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(bias, _mm512_and_si512(
                                                         _mm512_srli_epi32(b, 16), one)));
    r = _mm512_and_si512(r, high);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    _mm512_storeu_ps(p + i, _mm512_mask_mov_ps(_mm512_castsi512_ps(r), nan, v));
  }
#endif
  for (; i < n; ++i) p[i] = rb(p[i]);
}

// ATen's utils::CeilLog2 (1 for x <= 2).
int64_t ceil_log2(int64_t x) {
  int64_t r = 1;
  while ((int64_t(1) << r) < x) ++r;
  return r;
}

// The float32 sum of x[0..n) in the order ATen's CPU sum kernel adds a contiguous row
// (cascade_sum's inner reduction: 8-lane vectors in four interleaved partial sums, chunked
// into levels for long rows; then the scalar tail and the lanes one by one), so RMSNorm's
// mean of squares is the module's bit for bit. ATen reduces float32 rows in 8 lanes on x86
// (its AVX2 kernel, which the AVX512 dispatch shares); measured equal over random rows.
float aten_row_sum(const float* x, int64_t n) {
  constexpr int L = 8, ILP = 4, LEVELS = 4;
  const int64_t vecs = n / L, rows = vecs / ILP;
  float acc[LEVELS][ILP][L] = {};
  auto add = [](float* a, const float* b) {
    for (int l = 0; l < L; ++l) a[l] += b[l];
  };
  const int64_t power = std::max<int64_t>(4, ceil_log2(rows) / LEVELS);
  const int64_t step = int64_t(1) << power, mask = step - 1;
  int64_t i = 0;
  while (i + step <= rows) {
    for (int64_t j = 0; j < step; ++j, ++i)
      for (int k = 0; k < ILP; ++k) add(acc[0][k], x + (i * ILP + k) * L);
    for (int lv = 1; lv < LEVELS; ++lv) {
      for (int k = 0; k < ILP; ++k) {
        add(acc[lv][k], acc[lv - 1][k]);
        std::fill(acc[lv - 1][k], acc[lv - 1][k] + L, 0.0f);
      }
      if ((i & (mask << (lv * power))) != 0) break;
    }
  }
  for (; i < rows; ++i)
    for (int k = 0; k < ILP; ++k) add(acc[0][k], x + (i * ILP + k) * L);
  for (int lv = 1; lv < LEVELS; ++lv)
    for (int k = 0; k < ILP; ++k) add(acc[0][k], acc[lv][k]);
  for (int64_t v = rows * ILP; v < vecs; ++v) add(acc[0][0], x + v * L);
  for (int k = 1; k < ILP; ++k) add(acc[0][0], acc[0][k]);
  float total = 0.0f;
  for (int64_t k = vecs * L; k < n; ++k) total += x[k];
  for (int l = 0; l < L; ++l) total += acc[0][0][l];
  return total;
}

// RMSNorm of a bfloat16 row as the module computes it: x * rsqrt(mean(x^2) + eps) in
// float32, rounded; times the (bfloat16) weight, rounded. `squares`: n floats of scratch.
void rms_norm_bf16(const float* x, const float* w, float eps, int64_t n, float* out,
                   float* squares) {
  for (int64_t i = 0; i < n; ++i) squares[i] = x[i] * x[i];
  const float mean = aten_row_sum(squares, n) / static_cast<float>(n);
  const float r = 1.0f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = rb(w[i] * rb(x[i] * r));
}

// The rotary embedding as the module computes it in bfloat16: x * cos and
// rotate_half(x) * sin each rounded, then their sum (c, s: the bfloat16 tables' values).
void rotate_bf16(float* x, const float* c, const float* s, int64_t rot) {
  const int64_t half = rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = rb(rb(a * c[i]) - rb(b * s[i]));
    x[i + half] = rb(rb(b * c[i + half]) + rb(a * s[i + half]));
  }
}

// h = bfloat16(h + d), element by element (a residual add of two bfloat16 tensors).
void add_bf16(float* h, const float* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = h[i] + d[i];
  round_bf16(h, n);
}

#pragma GCC pop_options

at::Tensor float_vector(const at::Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
              t.numel() == n, "cove decoder: ", what, " must be a contiguous float32 CPU "
              "tensor of ", n, " values, got ", t.sizes(), " ", t.scalar_type());
  return t;
}

// Where a step's rows live in the cache: row m in slot slot[m], holding len[m] positions (its
// new key and value go to index len[m]); S slots of T positions.
struct Rows {
  const int64_t* slot;
  const int64_t* len;
  int64_t S, T, longest;  // longest: the largest len

  // values in one layer's keys (or values) [S, kv_heads, T, D]
  int64_t slab(int64_t kv_heads, int64_t D) const { return S * kv_heads * T * D; }
  // where row m's keys (or values) of kv head g start in them
  int64_t base(int64_t m, int64_t g, int64_t kv_heads, int64_t D) const {
    return (slot[m] * kv_heads + g) * T * D;
  }
  // where row m's new key (or value) of kv head g goes
  int64_t at(int64_t m, int64_t g, int64_t kv_heads, int64_t D) const {
    return base(m, g, kv_heads, D) + len[m] * D;
  }
};

struct Layer {
  at::Tensor in_norm, post_norm, q_norm, k_norm;  // q_norm/k_norm: undefined unless Qwen3
  Lin q, k, v, o, gate, up, down;
  bool rope = true;
};

class Decoder {
 public:
  Decoder(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, at::Tensor final_norm,
          Lin head)
      : heads_(heads), kv_heads_(kv_heads), dim_(head_dim), eps_(static_cast<float>(eps)),
        head_(std::move(head)) {
    TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && head_dim > 0,
                "cove decoder: ", heads, " heads over ", kv_heads, " key/value heads");
    hidden_ = final_norm.numel();
    norm_ = float_vector(final_norm, hidden_, "the final norm's weight");
    TORCH_CHECK(head_.K == hidden_, "cove decoder: the LM head takes ", head_.K,
                " inputs, the model's width is ", hidden_);
  }

  void add_layer(at::Tensor in_norm, at::Tensor post_norm, c10::optional<at::Tensor> q_norm,
                 c10::optional<at::Tensor> k_norm, bool rope, Lin q, Lin k, Lin v, Lin o,
                 Lin gate, Lin up, Lin down) {
    Layer l;
    l.in_norm = float_vector(in_norm, hidden_, "input_layernorm's weight");
    l.post_norm = float_vector(post_norm, hidden_, "post_attention_layernorm's weight");
    TORCH_CHECK(q_norm.has_value() == k_norm.has_value(),
                "cove decoder: q_norm and k_norm come together");
    if (q_norm.has_value()) {
      l.q_norm = float_vector(*q_norm, dim_, "q_norm's weight");
      l.k_norm = float_vector(*k_norm, dim_, "k_norm's weight");
    }
    const int64_t qw = heads_ * dim_, kvw = kv_heads_ * dim_;
    auto shape = [](const Lin& lin, int64_t n, int64_t k, const char* what) {
      TORCH_CHECK(lin.N == n && lin.K == k, "cove decoder: ", what, " is ", lin.N, " x ",
                  lin.K, ", expected ", n, " x ", k);
    };
    shape(q, qw, hidden_, "q_proj");
    shape(k, kvw, hidden_, "k_proj");
    shape(v, kvw, hidden_, "v_proj");
    shape(o, hidden_, qw, "o_proj");
    if (layers_.empty()) inter_ = gate.N;
    shape(gate, inter_, hidden_, "gate_proj");
    shape(up, inter_, hidden_, "up_proj");
    shape(down, hidden_, inter_, "down_proj");
    l.q = std::move(q); l.k = std::move(k); l.v = std::move(v); l.o = std::move(o);
    l.gate = std::move(gate); l.up = std::move(up); l.down = std::move(down);
    l.rope = rope;
    layers_.push_back(std::move(l));
  }

  // x: the new tokens' embeddings [M, hidden]; cache [layers, 2, S, kv_heads, T, head_dim]
  // (S slots of T positions); slots int64 [M]: the distinct slot each row reads and writes;
  // lengths int64 [M]: the positions each row's slot holds (its new key and value go to index
  // lengths[m], it attends over 0..lengths[m]); positions int64 [M] (rotary positions); cos,
  // sin float32 [P, rot] by position; mask: [M, > max length] of 1/0 over the slots'
  // positions (left padding), or None. Returns float32 logits [M, vocab].
  at::Tensor step(const at::Tensor& x, const at::Tensor& cache, const at::Tensor& slots,
                  const at::Tensor& lengths, const at::Tensor& positions, const at::Tensor& cos,
                  const at::Tensor& sin, const c10::optional<at::Tensor>& mask) const {
    const int64_t M = x.size(0);
    TORCH_CHECK(!layers_.empty(), "cove decoder: no layers");
    TORCH_CHECK(x.dim() == 2 && x.size(1) == hidden_ && M >= 1 && M <= cove::MAX_ROWS &&
                x.device().is_cpu(), "cove decoder: x must be [1..8 rows, ", hidden_,
                "] on the CPU, got ", x.sizes());
    TORCH_CHECK(cache.dim() == 6 && cache.size(0) == static_cast<int64_t>(layers_.size()) &&
                cache.size(1) == 2 && cache.size(3) == kv_heads_ && cache.size(5) == dim_ &&
                cache.is_contiguous() && cache.device().is_cpu(),
                "cove decoder: the cache must be a contiguous CPU tensor [", layers_.size(),
                ", 2, slots, ", kv_heads_, ", max_length, ", dim_, "], got ", cache.sizes());
    const int64_t S = cache.size(2), T_ = cache.size(4);
    TORCH_CHECK(slots.scalar_type() == at::kLong && slots.numel() == M && slots.is_contiguous()
                && lengths.scalar_type() == at::kLong && lengths.numel() == M &&
                lengths.is_contiguous(), "cove decoder: slots and lengths must be int64 [", M,
                "]");
    const int64_t* slot = slots.data_ptr<int64_t>();
    const int64_t* len = lengths.data_ptr<int64_t>();
    int64_t longest = 0;
    for (int64_t m = 0; m < M; ++m) {
      TORCH_CHECK(slot[m] >= 0 && slot[m] < S, "cove decoder: slot ", slot[m],
                  " is not in the cache's ", S);
      for (int64_t j = 0; j < m; ++j)
        TORCH_CHECK(slot[j] != slot[m], "cove decoder: rows ", j, " and ", m,
                    " both write slot ", slot[m]);
      TORCH_CHECK(len[m] >= 0 && len[m] < T_, "cove decoder: the cache holds ", T_,
                  " positions; position ", len[m], " was asked for");
      longest = std::max(longest, len[m]);
    }
    TORCH_CHECK(positions.scalar_type() == at::kLong && positions.numel() == M &&
                positions.is_contiguous(), "cove decoder: positions must be int64 [", M, "]");
    TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat &&
                cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.is_contiguous() &&
                sin.is_contiguous() && cos.size(1) % 2 == 0 && cos.size(1) <= dim_,
                "cove decoder: cos and sin must be float32 [positions, rotary dim <= ", dim_,
                "]");
    const int64_t* pos = positions.data_ptr<int64_t>();
    for (int64_t m = 0; m < M; ++m)
      TORCH_CHECK(pos[m] >= 0 && pos[m] < cos.size(0), "cove decoder: position ", pos[m],
                  " is past the rotary table's ", cos.size(0));
    at::Tensor keep;
    if (mask.has_value() && mask->defined()) {
      keep = mask->to(at::kLong).contiguous();
      TORCH_CHECK(keep.dim() == 2 && keep.size(0) == M && keep.size(1) > longest,
                  "cove decoder: the attention mask must be [", M, ", > ", longest, "], got ",
                  keep.sizes());
    }
    const Rows rows{slot, len, S, T_, longest};
    at::Tensor xf = x.to(at::kFloat).contiguous();
    at::Tensor logits = at::empty({M, head_.N}, xf.options());
    if (x.scalar_type() == at::kBFloat16) {
      TORCH_CHECK(cache.scalar_type() == at::kBFloat16, "cove decoder: bfloat16 embeddings "
                  "take a bfloat16 cache, not ", cache.scalar_type());
      run_bf16(xf, cache, rows, pos, cos, sin, keep, logits);
      return logits.to(at::kBFloat16);
    }
    if (cache.scalar_type() == at::kFloat) {
      run(xf, cache.data_ptr<float>(), rows, pos, cos, sin, keep, logits);
    } else {
      TORCH_CHECK(cache.scalar_type() == at::kBFloat16,
                  "cove decoder: the cache is float32 or bfloat16, not ", cache.scalar_type());
      run(xf, cache.data_ptr<at::BFloat16>(), rows, pos, cos, sin, keep, logits);
    }
    return logits;
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

 private:
  template <class T>
  void run(const at::Tensor& xf, T* cache, const Rows& rows, const int64_t* pos,
           const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& keep,
           at::Tensor& logits) const {
    const int64_t M = xf.size(0), H = hidden_, D = dim_, I = inter_;
    const int64_t qw = heads_ * D, kvw = kv_heads_ * D, width = qw + 2 * kvw;
    const int64_t rot = cos.size(1), groups = heads_ / kv_heads_;
    const float* cos_p = cos.data_ptr<float>();
    const float* sin_p = sin.data_ptr<float>();
    const int64_t* keep_p = keep.defined() ? keep.data_ptr<int64_t>() : nullptr;
    const int64_t keep_ld = keep.defined() ? keep.size(1) : 0;
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    // per layer: [2][S][kv_heads][T][D]
    const int64_t slab = rows.slab(kv_heads_, D), layer_stride = 2 * slab;

    std::vector<float> h(xf.data_ptr<float>(), xf.data_ptr<float>() + M * H);
    std::vector<float> a(M * H), qkv(M * width), att(M * qw), tmp(M * H), gu(M * 2 * I),
        act(M * I);
    for (size_t li = 0; li < layers_.size(); ++li) {
      const Layer& l = layers_[li];
      T* kcache = cache + li * layer_stride;
      T* vcache = kcache + slab;
      for (int64_t m = 0; m < M; ++m)
        rms_norm(&h[m * H], l.in_norm.data_ptr<float>(), eps_, H, &a[m * H]);
      const Job qkv_jobs[3] = {{&l.q, qkv.data(), width}, {&l.k, qkv.data() + qw, width},
                               {&l.v, qkv.data() + qw + kvw, width}};
      cove::run_jobs(qkv_jobs, 3, a.data(), M);
      for (int64_t m = 0; m < M; ++m) {
        float* qm = &qkv[m * width];
        float* km = qm + qw;
        const float* vm = km + kvw;
        if (l.q_norm.defined()) {
          for (int64_t hd = 0; hd < heads_; ++hd)
            rms_norm(qm + hd * D, l.q_norm.data_ptr<float>(), eps_, D, qm + hd * D);
          for (int64_t g = 0; g < kv_heads_; ++g)
            rms_norm(km + g * D, l.k_norm.data_ptr<float>(), eps_, D, km + g * D);
        }
        if (l.rope) {
          const float* c = cos_p + pos[m] * rot;
          const float* s = sin_p + pos[m] * rot;
          for (int64_t hd = 0; hd < heads_; ++hd) rotate(qm + hd * D, c, s, rot);
          for (int64_t g = 0; g < kv_heads_; ++g) rotate(km + g * D, c, s, rot);
        }
        for (int64_t g = 0; g < kv_heads_; ++g) {
          const int64_t at = rows.at(m, g, kv_heads_, D);
          store(kcache + at, km + g * D, D);
          store(vcache + at, vm + g * D, D);
        }
      }
      attend(kcache, vcache, rows, qkv.data(), width, keep_p, keep_ld, groups, scale, false, M,
             att.data());
      const Job o_job{&l.o, tmp.data(), H};
      cove::run_jobs(&o_job, 1, att.data(), M);
      for (int64_t i = 0; i < M * H; ++i) h[i] += tmp[i];
      for (int64_t m = 0; m < M; ++m)
        rms_norm(&h[m * H], l.post_norm.data_ptr<float>(), eps_, H, &a[m * H]);
      const Job mlp_jobs[2] = {{&l.gate, gu.data(), 2 * I}, {&l.up, gu.data() + I, 2 * I}};
      cove::run_jobs(mlp_jobs, 2, a.data(), M);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t i = 0; i < I; ++i) {
          const float g = gu[m * 2 * I + i];
          act[m * I + i] = g / (1.0f + std::exp(-g)) * gu[m * 2 * I + I + i];
        }
      const Job down_job{&l.down, tmp.data(), H};
      cove::run_jobs(&down_job, 1, act.data(), M);
      for (int64_t i = 0; i < M * H; ++i) h[i] += tmp[i];
    }
    for (int64_t m = 0; m < M; ++m)
      rms_norm(&h[m * H], norm_.data_ptr<float>(), eps_, H, &a[m * H]);
    const Job head_job{&head_, logits.data_ptr<float>(), head_.N};
    cove::run_jobs(&head_job, 1, a.data(), M);
  }

  // The step in the bfloat16 arithmetic (see the top). logits: float32 [M, vocab], holding
  // bfloat16 values.
  void run_bf16(const at::Tensor& xf, const at::Tensor& cache, const Rows& rows, const int64_t* pos, const at::Tensor& cos,
                const at::Tensor& sin, const at::Tensor& keep, at::Tensor& logits) const {
    const int64_t M = xf.size(0), H = hidden_, D = dim_, I = inter_;
    const int64_t qw = heads_ * D, kvw = kv_heads_ * D, width = qw + 2 * kvw;
    const int64_t rot = cos.size(1), groups = heads_ / kv_heads_;
    const float* cos_p = cos.data_ptr<float>();
    const float* sin_p = sin.data_ptr<float>();
    at::BFloat16* cache_p = cache.data_ptr<at::BFloat16>();
    const int64_t slab = rows.slab(kv_heads_, D);
    // the module's scale: head_dim ** -0.5 as Python computes it
    const float scale = static_cast<float>(std::pow(static_cast<double>(D), -0.5));
    const int64_t* keep_p = keep.defined() ? keep.data_ptr<int64_t>() : nullptr;
    const int64_t keep_ld = keep.defined() ? keep.size(1) : 0;
    // SiLU's input [M, I], as the module has it
    at::Tensor gate = at::empty({M, I}, xf.options().dtype(at::kBFloat16));

    std::vector<float> h(xf.data_ptr<float>(), xf.data_ptr<float>() + M * H);
    std::vector<float> a(M * H), qkv(M * width), att(M * qw), tmp(M * H), gu(M * 2 * I),
        act(M * I), squares(std::max(H, D));
    for (size_t li = 0; li < layers_.size(); ++li) {
      const Layer& l = layers_[li];
      at::BFloat16* kcache = cache_p + li * 2 * slab;
      at::BFloat16* vcache = kcache + slab;
      for (int64_t m = 0; m < M; ++m)
        rms_norm_bf16(&h[m * H], l.in_norm.data_ptr<float>(), eps_, H, &a[m * H],
                      squares.data());
      const Job qkv_jobs[3] = {{&l.q, qkv.data(), width}, {&l.k, qkv.data() + qw, width},
                               {&l.v, qkv.data() + qw + kvw, width}};
      cove::run_jobs(qkv_jobs, 3, a.data(), M);
      round_bf16(qkv.data(), M * width);
      for (int64_t m = 0; m < M; ++m) {
        float* qm = &qkv[m * width];
        float* km = qm + qw;
        const float* vm = km + kvw;
        if (l.q_norm.defined()) {
          for (int64_t hd = 0; hd < heads_; ++hd)
            rms_norm_bf16(qm + hd * D, l.q_norm.data_ptr<float>(), eps_, D, qm + hd * D,
                          squares.data());
          for (int64_t g = 0; g < kv_heads_; ++g)
            rms_norm_bf16(km + g * D, l.k_norm.data_ptr<float>(), eps_, D, km + g * D,
                          squares.data());
        }
        if (l.rope) {
          const float* c = cos_p + pos[m] * rot;
          const float* s = sin_p + pos[m] * rot;
          for (int64_t hd = 0; hd < heads_; ++hd) rotate_bf16(qm + hd * D, c, s, rot);
          for (int64_t g = 0; g < kv_heads_; ++g) rotate_bf16(km + g * D, c, s, rot);
        }
        for (int64_t g = 0; g < kv_heads_; ++g) {
          const int64_t at = rows.at(m, g, kv_heads_, D);
          store(kcache + at, km + g * D, D);
          store(vcache + at, vm + g * D, D);
        }
      }
      // the module's attention in bfloat16 on the CPU is this one too (attend_one), its output
      // rounded to bfloat16
      attend(kcache, vcache, rows, qkv.data(), width, keep_p, keep_ld, groups, scale, true, M,
             att.data());
      round_bf16(att.data(), M * qw);
      const Job o_job{&l.o, tmp.data(), H};
      cove::run_jobs(&o_job, 1, att.data(), M);
      round_bf16(tmp.data(), M * H);
      add_bf16(h.data(), tmp.data(), M * H);
      for (int64_t m = 0; m < M; ++m)
        rms_norm_bf16(&h[m * H], l.post_norm.data_ptr<float>(), eps_, H, &a[m * H],
                      squares.data());
      const Job mlp_jobs[2] = {{&l.gate, gu.data(), 2 * I}, {&l.up, gu.data() + I, 2 * I}};
      cove::run_jobs(mlp_jobs, 2, a.data(), M);
      round_bf16(gu.data(), M * 2 * I);
      at::BFloat16* gate_p = gate.data_ptr<at::BFloat16>();
      for (int64_t m = 0; m < M; ++m) store(gate_p + m * I, &gu[m * 2 * I], I);
      at::silu_(gate);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t i = 0; i < I; ++i)
          act[m * I + i] = static_cast<float>(gate_p[m * I + i]) * gu[m * 2 * I + I + i];
      round_bf16(act.data(), M * I);
      const Job down_job{&l.down, tmp.data(), H};
      cove::run_jobs(&down_job, 1, act.data(), M);
      round_bf16(tmp.data(), M * H);
      add_bf16(h.data(), tmp.data(), M * H);
    }
    for (int64_t m = 0; m < M; ++m)
      rms_norm_bf16(&h[m * H], norm_.data_ptr<float>(), eps_, H, &a[m * H], squares.data());
    const Job head_job{&head_, logits.data_ptr<float>(), head_.N};
    cove::run_jobs(&head_job, 1, a.data(), M);
  }

  // Each query head of each row over its kv head's keys 0..length of its slot (those the
  // mask keeps).
  template <class T>
  void attend(const T* kcache, const T* vcache, const Rows& rows, const float* qkv,
              int64_t width, const int64_t* keep, int64_t keep_ld, int64_t groups, float scale,
              bool bf16_probs, int64_t M, float* out) const {
    const int64_t D = dim_;
    at::parallel_for(0, M * heads_, attention_grain(rows.longest + 1, D),
                     [&](int64_t t0, int64_t t1) {
      std::vector<float> scores(rows.longest + 1);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t m = t / heads_, hd = t % heads_, g = hd / groups;
        attend_head(qkv + m * width + hd * D, kcache + rows.base(m, g, kv_heads_, D),
                    vcache + rows.base(m, g, kv_heads_, D), rows.len[m] + 1, D,
                    keep ? keep + m * keep_ld : nullptr, scale, bf16_probs, scores.data(),
                    out + m * heads_ * D + hd * D);
      }
    });
  }

  int64_t heads_, kv_heads_, dim_, hidden_ = 0, inter_ = 0;
  float eps_;
  at::Tensor norm_;
  Lin head_;
  std::vector<Layer> layers_;
};

// attend_head for q [B, H, 1, D] bfloat16 over k, v [B, KV, n, D] bfloat16 (H a multiple of
// KV; each row's positions consecutive in memory, so the cache's views need no copy), keys
// where keep [B, n] is 0 skipped; [B, H, 1, D] bfloat16.
at::Tensor attend_one(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const c10::optional<at::Tensor>& keep, double scale) {
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1 && k.dim() == 4 && k.sizes() == v.sizes() &&
                  q.size(0) == k.size(0) && q.size(3) == k.size(3) && k.size(1) > 0 &&
                  q.size(1) % k.size(1) == 0,
              "cove attend_one: q must be [B, H, 1, D] and k, v [B, KV, n, D] (H a multiple "
              "of KV), got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 &&
                  v.scalar_type() == at::kBFloat16 && q.device().is_cpu() &&
                  k.device().is_cpu() && v.device().is_cpu(),
              "cove attend_one: q, k and v must be bfloat16 CPU tensors");
  const int64_t B = q.size(0), H = q.size(1), KV = k.size(1), n = k.size(2), D = q.size(3);
  TORCH_CHECK(n > 0, "cove attend_one: no keys");
  for (const at::Tensor* t : {&k, &v})
    TORCH_CHECK(t->stride(3) == 1 && t->stride(2) == D,
                "cove attend_one: each row's keys and values must be consecutive");
  at::Tensor kept;
  if (keep.has_value() && keep->defined()) {
    kept = keep->to(at::kLong).contiguous();
    TORCH_CHECK(kept.dim() == 2 && kept.size(0) == B && kept.size(1) == n,
                "cove attend_one: keep must be [", B, ", ", n, "], got ", kept.sizes());
  }
  const at::Tensor qf = q.reshape({B, H, D}).to(at::kFloat).contiguous();
  at::Tensor out = at::empty({B, H, D}, qf.options());
  const float* qp = qf.data_ptr<float>();
  const int64_t* kp = kept.defined() ? kept.data_ptr<int64_t>() : nullptr;
  const at::BFloat16* K = k.data_ptr<at::BFloat16>();
  const at::BFloat16* V = v.data_ptr<at::BFloat16>();
  float* o = out.data_ptr<float>();
  const int64_t groups = H / KV;
  const float s = static_cast<float>(scale);
  {
    pybind11::gil_scoped_release release;
    at::parallel_for(0, B * H, attention_grain(n, D), [&](int64_t t0, int64_t t1) {
      std::vector<float> scores(n);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / H, g = (t % H) / groups;
        attend_head(qp + t * D, K + b * k.stride(0) + g * k.stride(1),
                    V + b * v.stride(0) + g * v.stride(1), n, D, kp ? kp + b * n : nullptr, s,
                    true, scores.data(), o + t * D);
      }
    });
  }
  return out.to(at::kBFloat16).view({B, H, 1, D});
}

}  // namespace

void cove::bind_decode(pybind11::module& m) {
  namespace py = pybind11;
  // module_local: a second build of the extension in one process (the tests' scalar one)
  // registers the same C++ types again.
  py::class_<Lin>(m, "Linear", py::module_local(),
                  "A linear layer's weight as the kernels read it (kind: 0 float32, "
                  "1 bfloat16, 2 int8 + scale, 3 int4 codes + scale, zero, group)")
      .def(py::init<int64_t, at::Tensor, c10::optional<at::Tensor>, c10::optional<at::Tensor>,
                    int64_t, c10::optional<at::Tensor>>(),
           py::arg("kind"), py::arg("weight"), py::arg("scale") = py::none(),
           py::arg("zero") = py::none(), py::arg("group") = 0, py::arg("bias") = py::none())
      .def_readonly("out_features", &Lin::N)
      .def_readonly("in_features", &Lin::K);
  py::class_<Decoder>(m, "Decoder", py::module_local(),
                      "A Llama-family decoder's layers for one-token steps")
      .def(py::init<int64_t, int64_t, int64_t, double, at::Tensor, Lin>(), py::arg("heads"),
           py::arg("kv_heads"), py::arg("head_dim"), py::arg("eps"), py::arg("final_norm"),
           py::arg("head"))
      .def("add_layer", &Decoder::add_layer)
      .def("step", &Decoder::step, py::arg("x"), py::arg("cache"), py::arg("slots"),
           py::arg("lengths"), py::arg("positions"), py::arg("cos"), py::arg("sin"),
           py::arg("mask") = py::none(), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_layers", &Decoder::num_layers);
  m.def("attend_one", &attend_one, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("keep") = py::none(), py::arg("scale"),
        "One query per row's attention in bfloat16 (the decoding step's, in float32 over the "
        "bfloat16 keys and values)");
}
