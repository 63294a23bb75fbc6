// The onepass launchers for F32 activations (delta_decode.cuh: DPK_ONEPASS), compiled in a unit of their own.
#include "delta_decode.cuh"

namespace dpk {
DPK_ONEPASS(, F32)
}  // namespace dpk
