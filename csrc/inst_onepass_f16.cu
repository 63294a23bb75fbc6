// The onepass launchers for F16 activations (delta_decode.cuh: DPK_ONEPASS), compiled in a unit of their own.
#include "delta_decode.cuh"

namespace dpk {
DPK_ONEPASS(, F16)
}  // namespace dpk
