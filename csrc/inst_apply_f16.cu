// The apply launchers for F16 activations (delta_decode.cuh: DPK_APPLY), compiled in a unit of their own.
#include "delta_decode.cuh"

namespace dpk {
DPK_APPLY(, F16)
}  // namespace dpk
