// The apply launchers for BF16 activations (delta_decode.cuh: DPK_APPLY), compiled in a unit of their own.
#include "delta_decode.cuh"

namespace dpk {
DPK_APPLY(, BF16)
}  // namespace dpk
