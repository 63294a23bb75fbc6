// The lookup-table, shrink and lean launchers of every dtype (delta_decode.cuh: DPK_SMALL, DPK_LEAN), compiled in a unit of their own.
#include "delta_decode.cuh"

namespace dpk {
DPK_SMALL(, F32)
DPK_SMALL(, F16)
DPK_SMALL(, BF16)
DPK_LEAN(, F16)
DPK_LEAN(, BF16)
}  // namespace dpk
