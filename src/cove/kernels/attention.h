// What attention.cpp offers the extension's module: its training attention kernels.
#pragma once

#include <torch/extension.h>

namespace cove {

// Registers attention.cpp's functions on the extension module (none without AVX-512: callers
// then use torch's ops).
void bind_attention(pybind11::module& m);

}  // namespace cove
