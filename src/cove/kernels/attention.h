// What attention.cpp offers the extension's module: its training attention kernels; and
// exp16, the vector exp of attention.cpp's softmax and decode.cpp's one-query attention.
#pragma once

#include <torch/extension.h>

#if defined(__AVX512F__) && !defined(COVE_KERNELS_SCALAR)
#include <immintrin.h>
#endif

namespace cove {

#if defined(__AVX512F__) && !defined(COVE_KERNELS_SCALAR)
// exp(x) in float32 to about 1 ulp: x = n ln2 + r, |r| <= ln2 / 2, Cephes' expf polynomial for
// exp(r), times 2^n by scalef. Below -104 the result is 0 (as expf's), which masked scores
// (the dtype's minimum, or -inf) give.
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.72f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}
#endif

// Registers attention.cpp's functions on the extension module (none without AVX-512: callers
// then use torch's ops).
void bind_attention(pybind11::module& m);

}  // namespace cove
