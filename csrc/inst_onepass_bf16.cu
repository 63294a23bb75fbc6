// The onepass launchers for BF16 activations (delta_decode.cuh: DPK_ONEPASS), compiled in a unit of their own.
#include "delta_decode.cuh"

namespace dpk {
DPK_ONEPASS(, BF16)
}  // namespace dpk
