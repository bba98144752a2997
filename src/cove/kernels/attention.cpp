// Attention with dropout for training, forward and backward, float32 on CPU: the kernels behind
// cove.models.dropout.dropout_attention.
//
// Per (batch, head) block, in one at::parallel_for over the blocks:
//   forward   S = q k^T * scale (+ the additive mask), P = softmax(S) (returned: the backward
//             pass keeps it), O = (P * keep) v * keep_scale;
//   backward  dV = (P * keep)^T dO * keep_scale, dP = dO v^T * keep_scale * keep,
//             dS = P * (dP - rowsum(dP * P)), dq = dS k * scale, dk = dS^T q * scale.
// The keep mask (1 byte per probability) is drawn by the caller, so the random stream is
// Python's. Why not torch's ops: at an encoder's shapes (128 positions, heads of 32) each of
// the six small products is a separate batched GEMM call that reaches about half the FMA rate,
// and softmax, the dropout products and softmax's backward each stream the [seq, seq] block
// through memory again; here a block's scores stay in L2 between the steps, and the products
// are register-tiled loops (A broadcast, B rows in 16-float vectors) for these small K.
// q, k, v and dO are read where they lie (heads split from a [batch, seq, width] projection are
// strided views: no copies) and O, dq, dk, dv are written in [batch, seq, heads, dim] order, so
// merging the heads back and the projections' backward copy nothing either.
//
// AVX-512 only: without it nothing is registered and the caller uses torch's ops.
#include "attention.h"

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    !defined(COVE_KERNELS_SCALAR)
#include <immintrin.h>
#define COVE_ATTENTION_AVX512 1
#endif

#ifdef COVE_ATTENTION_AVX512
namespace {

inline __mmask16 tail_mask(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
}

// C[m, n] = alpha * sum_k A(m, k) B[k, n] for MR rows and NV vectors of 16 columns, the last
// vector masked by `last`. A(m, k) = A[m * sam + k * sak] (so A may be read transposed); B's
// rows are ldb apart, C's ldc apart. MR x NV accumulators stay in registers.
template <int MR, int NV>
void tile(const float* A, int64_t sam, int64_t sak, const float* B, int64_t ldb, int64_t K,
          float* C, int64_t ldc, float alpha, __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    __m512 bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV - 1; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
    bv[NV - 1] = _mm512_maskz_loadu_ps(last, b + 16 * (NV - 1));
    const float* a = A + k * sak;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * sam]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  const __m512 scale = _mm512_set1_ps(alpha);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
#pragma GCC unroll 8
    for (int v = 0; v < NV - 1; ++v) _mm512_storeu_ps(c + 16 * v, _mm512_mul_ps(acc[r][v], scale));
    _mm512_mask_storeu_ps(c + 16 * (NV - 1), last, _mm512_mul_ps(acc[r][NV - 1], scale));
  }
}

using Tile = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*,
                      int64_t, float, __mmask16);

// tile<rows, nv> for rows <= R, nv <= V (the edges of a product)
template <int R, int V>
Tile pick_vectors(int nv) {
  if constexpr (V == 1) {
    return &tile<R, 1>;
  } else {
    return nv == V ? &tile<R, V> : pick_vectors<R, V - 1>(nv);
  }
}

template <int R, int V>
Tile pick(int rows, int nv) {
  if constexpr (R == 1) {
    return pick_vectors<1, V>(nv);
  } else {
    return rows == R ? pick_vectors<R, V>(nv) : pick<R - 1, V>(rows, nv);
  }
}

// C[M, N] = alpha * A(M x K) B[K, N], tiles of MR rows by NV * 16 columns; column blocks outside
// so a block of B stays in L1 while every row block reads it.
template <int MR, int NV>
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak,
          const float* B, int64_t ldb, float* C, int64_t ldc, float alpha) {
  for (int64_t n0 = 0; n0 < N; n0 += 16 * NV) {
    const int64_t cols = std::min<int64_t>(16 * NV, N - n0);
    const int nv = int((cols + 15) / 16);
    const __mmask16 last = tail_mask(cols - 16 * (nv - 1));
    const Tile full = pick<MR, NV>(MR, nv);
    for (int64_t m0 = 0; m0 < M; m0 += MR) {
      const int rows = int(std::min<int64_t>(MR, M - m0));
      const Tile t = rows == MR ? full : pick<MR, NV>(rows, nv);
      t(A + m0 * sam, sam, sak, B + n0, ldb, K, C + m0 * ldc + n0, ldc, alpha, last);
    }
  }
}

// The two shapes here: K = head dim with N = keys (scores, dP: 4 rows x 64 columns), and
// K = positions with N = head dim (O, dV, dq, dk: 8 rows x 32 columns); 16 accumulators each.
void gemm_wide(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak,
               const float* B, int64_t ldb, float* C, int64_t ldc, float alpha) {
  gemm<4, 4>(M, N, K, A, sam, sak, B, ldb, C, ldc, alpha);
}

void gemm_narrow(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak,
                 const float* B, int64_t ldb, float* C, int64_t ldc, float alpha) {
  if (N > 32) {
    gemm<4, 4>(M, N, K, A, sam, sak, B, ldb, C, ldc, alpha);
  } else {
    gemm<8, 2>(M, N, K, A, sam, sak, B, ldb, C, ldc, alpha);
  }
}

using cove::exp16;  // attention.h

// 16 lanes of a keep mask (bytes, nonzero = kept) as a lane mask.
inline __mmask16 kept(const uint8_t* keep, __mmask16 lanes) {
  return _mm_mask_cmpneq_epi8_mask(lanes, _mm_maskz_loadu_epi8(lanes, keep), _mm_setzero_si128());
}

// One row of scores -> probabilities (in place), and the dropped probabilities into `dropped`.
void softmax_row(float* s, const float* mask, const uint8_t* keep, float* dropped, int64_t n) {
  __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = tail_mask(n - j);
    __m512 x = _mm512_maskz_loadu_ps(m, s + j);
    if (mask) {
      x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, mask + j));
      _mm512_mask_storeu_ps(s + j, m, x);
    }
    top = _mm512_mask_max_ps(top, m, top, x);
  }
  const __m512 most = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), most));
    total = _mm512_mask_add_ps(total, m, total, e);
    _mm512_mask_storeu_ps(s + j, m, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), inv);
    _mm512_mask_storeu_ps(s + j, m, p);
    _mm512_mask_storeu_ps(dropped + j, m, _mm512_maskz_mov_ps(kept(keep + j, m), p));
  }
}

// dP (in place, already times keep_scale) -> dS = P * (dP * keep - rowsum(dP * keep * P)).
void softmax_backward_row(float* dp, const float* p, const uint8_t* keep, int64_t n) {
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 g = _mm512_maskz_loadu_ps(kept(keep + j, m), dp + j);
    total = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(m, p + j), total);
    _mm512_mask_storeu_ps(dp + j, m, g);
  }
  const __m512 sum = _mm512_set1_ps(_mm512_reduce_add_ps(total));
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 g = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp + j), sum);
    _mm512_mask_storeu_ps(dp + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + j), g));
  }
}

// rows x D of a [B, H, S, D] tensor (any strides, the last 1) -> D x rows, row stride `ld`.
void transpose(const float* x, int64_t row_stride, int64_t rows, int64_t D, float* out,
               int64_t ld) {
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t d = 0; d < D; ++d) out[d * ld + j] = x[j * row_stride + d];
}

void check_heads(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == at::kFloat && t.device().is_cpu(),
              "cove attention: ", name, " must be a float32 CPU [batch, heads, seq, dim] tensor");
  TORCH_CHECK(t.stride(3) == 1, "cove attention: ", name, "'s last dimension must be contiguous");
}

const uint8_t* keep_data(const at::Tensor& keep, int64_t B, int64_t H, int64_t Sq, int64_t Skv) {
  TORCH_CHECK(keep.scalar_type() == at::kBool && keep.is_contiguous() &&
                  keep.sizes() == at::IntArrayRef({B, H, Sq, Skv}),
              "cove attention: the keep mask must be a contiguous bool [batch, heads, q, kv] tensor");
  return reinterpret_cast<const uint8_t*>(keep.data_ptr<bool>());
}

// A [batch, seq, heads, dim] buffer, returned as its [batch, heads, seq, dim] view.
at::Tensor heads_view(int64_t B, int64_t S, int64_t H, int64_t D) {
  return at::empty({B, S, H, D}, at::TensorOptions().dtype(at::kFloat)).transpose(1, 2);
}

// -> (O, P): O [batch, heads, q, dim] (a view of [batch, q, heads, dim]), P the probabilities.
std::vector<at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, c10::optional<at::Tensor> mask,
                                          const at::Tensor& keep, double scale,
                                          double keep_scale) {
  check_heads(q, "q");
  check_heads(k, "k");
  check_heads(v, "v");
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3), Skv = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == D && v.sizes() == k.sizes(),
              "cove attention: q, k and v must share batch, heads and dim; k and v their length");
  const uint8_t* keep_p = keep_data(keep, B, H, Sq, Skv);
  const float* mask_p = nullptr;
  std::array<int64_t, 3> ms{0, 0, 0};
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kFloat && mask->sizes() == keep.sizes() &&
                    mask->stride(3) == 1,
                "cove attention: the mask must be additive float32, expanded to [batch, heads, "
                "q, kv] with its last dimension contiguous");
    mask_p = mask->data_ptr<float>();
    ms = {mask->stride(0), mask->stride(1), mask->stride(2)};
  }
  at::Tensor probs = at::empty({B, H, Sq, Skv}, q.options());
  at::Tensor out = heads_view(B, Sq, H, D);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *pp = probs.data_ptr<float>(), *op = out.data_ptr<float>();
  const float fscale = float(scale), fkeep = float(keep_scale);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kt(D * Skv), dropped(Sq * Skv);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float* qb = qp + b * q.stride(0) + h * q.stride(1);
      const float* kb = kp + b * k.stride(0) + h * k.stride(1);
      const float* vb = vp + b * v.stride(0) + h * v.stride(1);
      float* pb = pp + bh * Sq * Skv;
      transpose(kb, k.stride(2), Skv, D, kt.data(), Skv);
      gemm_wide(Sq, Skv, D, qb, q.stride(2), 1, kt.data(), Skv, pb, Skv, fscale);
      for (int64_t i = 0; i < Sq; ++i) {
        const float* mrow = mask_p ? mask_p + b * ms[0] + h * ms[1] + i * ms[2] : nullptr;
        softmax_row(pb + i * Skv, mrow, keep_p + (bh * Sq + i) * Skv,
                    dropped.data() + i * Skv, Skv);
      }
      gemm_narrow(Sq, D, Skv, dropped.data(), Skv, 1, vb, v.stride(2),
                  op + b * out.stride(0) + h * out.stride(1), out.stride(2), fkeep);
    }
  });
  return {out, probs};
}

// -> (dq, dk, dv), each a [batch, heads, seq, dim] view of a [batch, seq, heads, dim] buffer.
std::vector<at::Tensor> attention_backward(const at::Tensor& grad, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& probs, const at::Tensor& keep,
                                           double scale, double keep_scale) {
  check_heads(grad, "grad");
  check_heads(q, "q");
  check_heads(k, "k");
  check_heads(v, "v");
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3), Skv = k.size(2);
  TORCH_CHECK(grad.sizes() == q.sizes() && v.sizes() == k.sizes() && k.size(3) == D,
              "cove attention: grad, q, k and v shapes disagree");
  const uint8_t* keep_p = keep_data(keep, B, H, Sq, Skv);
  TORCH_CHECK(probs.scalar_type() == at::kFloat && probs.is_contiguous() &&
                  probs.sizes() == keep.sizes(),
              "cove attention: probs must be the forward's contiguous float32 probabilities");
  at::Tensor dq = heads_view(B, Sq, H, D), dk = heads_view(B, Skv, H, D),
             dv = heads_view(B, Skv, H, D);
  const float *gp = grad.data_ptr<float>(), *qp = q.data_ptr<float>(),
              *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>(),
              *pp = probs.data_ptr<float>();
  float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
  const float fscale = float(scale), fkeep = float(keep_scale);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> vt(D * Skv), dropped(Sq * Skv), ds(Sq * Skv);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float* gb = gp + b * grad.stride(0) + h * grad.stride(1);
      const float* qb = qp + b * q.stride(0) + h * q.stride(1);
      const float* kb = kp + b * k.stride(0) + h * k.stride(1);
      const float* vb = vp + b * v.stride(0) + h * v.stride(1);
      const float* pb = pp + bh * Sq * Skv;
      const uint8_t* kbk = keep_p + bh * Sq * Skv;
      for (int64_t i = 0; i < Sq * Skv; i += 16) {
        const __mmask16 m = tail_mask(Sq * Skv - i);
        _mm512_mask_storeu_ps(dropped.data() + i, m,
                              _mm512_maskz_loadu_ps(kept(kbk + i, m), pb + i));
      }
      // dV = (P * keep)^T dO * keep_scale
      gemm_narrow(Skv, D, Sq, dropped.data(), 1, Skv, gb, grad.stride(2),
                  dvp + b * dv.stride(0) + h * dv.stride(1), dv.stride(2), fkeep);
      // dP = dO v^T * keep_scale, then dS in place
      transpose(vb, v.stride(2), Skv, D, vt.data(), Skv);
      gemm_wide(Sq, Skv, D, gb, grad.stride(2), 1, vt.data(), Skv, ds.data(), Skv, fkeep);
      for (int64_t i = 0; i < Sq; ++i)
        softmax_backward_row(ds.data() + i * Skv, pb + i * Skv, kbk + i * Skv, Skv);
      // dq = dS k * scale, dk = dS^T q * scale
      gemm_narrow(Sq, D, Skv, ds.data(), Skv, 1, kb, k.stride(2),
                  dqp + b * dq.stride(0) + h * dq.stride(1), dq.stride(2), fscale);
      gemm_narrow(Skv, D, Sq, ds.data(), 1, Skv, qb, q.stride(2),
                  dkp + b * dk.stride(0) + h * dk.stride(1), dk.stride(2), fscale);
    }
  });
  return {dq, dk, dv};
}

}  // namespace
#endif  // COVE_ATTENTION_AVX512

namespace cove {

void bind_attention(pybind11::module& m) {
#ifdef COVE_ATTENTION_AVX512
  m.def("attention_forward", &attention_forward,
        "training attention with dropout: (O, probabilities) of float32 [batch, heads, seq, dim] "
        "q, k, v, an optional additive mask expanded to [batch, heads, q, kv], the bool keep "
        "mask, scale and keep_scale",
        pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("mask"),
        pybind11::arg("keep"), pybind11::arg("scale"), pybind11::arg("keep_scale"));
  m.def("attention_backward", &attention_backward,
        "the gradients (dq, dk, dv) of attention_forward from its output's gradient",
        pybind11::arg("grad"), pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"),
        pybind11::arg("probs"), pybind11::arg("keep"), pybind11::arg("scale"),
        pybind11::arg("keep_scale"));
#else
  (void)m;
#endif
}

}  // namespace cove
