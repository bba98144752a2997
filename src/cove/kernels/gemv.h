// What gemv.cpp's kernels offer the rest of the extension (decode.cpp): a linear layer's
// weight as the kernels read it, and products of 1..8 activation rows with it.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <vector>

namespace cove {

constexpr int64_t MAX_ROWS = 8;

// How a layer's weight is stored (see gemv.cpp's top for each layout).
enum class Kind : int64_t { F32 = 0, BF16 = 1, INT8 = 2, INT4 = 3 };

// One linear layer: y = x @ W^T + bias. The tensors are the layer's own (not copied; the
// bias is a float32 copy when the layer's is not float32); checked once when built.
struct Lin {
  Kind kind = Kind::F32;
  at::Tensor w, scale, zero, bias;  // scale/zero: int8 and int4 only; bias may be undefined
  int64_t group = 0, N = 0, K = 0;

  Lin() = default;
  Lin(int64_t kind, at::Tensor w, c10::optional<at::Tensor> scale,
      c10::optional<at::Tensor> zero, int64_t group, c10::optional<at::Tensor> bias);
  int64_t row_bytes() const;
};

// One product of a parallel region: `lin` over the region's x into out[m * ldo + n].
struct Job {
  const Lin* lin;
  float* out;
  int64_t ldo;
};

// The products of several layers that read the same float32 x [M, K] (q/k/v, gate/up), their
// output rows split across torch's threads in one parallel region; biases added.
void run_jobs(const Job* jobs, int64_t count, const float* x, int64_t M);

// x's rows as int8 in blocks of 32 inputs (see gemv.cpp's top): what the int4 weights' integer
// products read in the decoding kernels, made once per parallel region (prefill.cpp's first
// pass quantises as quantize_rows does).
struct QRows {
  int64_t M = 0, K = 0, nb = 0;  // nb: blocks per row (K / 32)
  std::vector<int8_t> q;         // [M, K]: qa
  std::vector<float> d;          // [M, nb]: each block's scale
  std::vector<float> c;          // [M, nb]: d * sum(qa) of each block (the zero points' term)

  // Holds M rows of K inputs (K a multiple of 32).
  void resize(int64_t rows, int64_t width) {
    M = rows;
    K = width;
    nb = width / 32;
    q.resize(M * K);
    d.resize(M * nb);
    c.resize(M * nb);
  }
};

// Fills `out` from float32 x [M, K] (K a multiple of 32). Built only with AVX512-VNNI.
void quantize_rows(const float* x, int64_t M, int64_t K, QRows& out);

// Registers decode.cpp's classes on the extension module.
void bind_decode(pybind11::module& m);

// Registers prefill.cpp's functions (a prompt's int4 products) on the extension module.
void bind_prefill(pybind11::module& m);

}  // namespace cove
