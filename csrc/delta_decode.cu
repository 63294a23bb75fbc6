// deltapack's CUDA decode extension: the dispatch over dtypes and kernels, the argument checks and
// the Python binding. The kernels and their launchers: delta_decode.cuh (read it first).

#include <torch/extension.h>
#include <pybind11/stl.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "delta_decode.cuh"

namespace dpk {

template <class D>
void launch(const Batch& b, int nr, bool fuse) {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (b.lut) {
    TORCH_CHECK(!fuse && !b.lowrank, "deltapack_cuda: the lookup-table kernel takes dense parts only, unfused");
    return launch_lut<D>(b, stream);
  }
  if constexpr (D::kVec == 8) {
    if (fuse && b.lean >= 0) {
      TORCH_CHECK(!b.lowrank, "deltapack_cuda: the lean fused GEMV takes tables without low-rank parts");
      if (launch_lean<D>(b, nr, stream)) return;
    }
  }
  if (fuse && b.lowrank && b.sync != nullptr) {
    TORCH_CHECK(b.minb == 2 || b.minb == 3, "deltapack_cuda: onepass_min_blocks must be 2 or 3, not ", b.minb);
    const bool tight = b.minb == 3;
    switch (nr) {
      case 1:
        return tight ? launch_onepass<D, 1, 3>(b, stream) : launch_onepass<D, 1, 2>(b, stream);
      case 2:
        return tight ? launch_onepass<D, 2, 3>(b, stream) : launch_onepass<D, 2, 2>(b, stream);
      case 4:
        return tight ? launch_onepass<D, 4, 3>(b, stream) : launch_onepass<D, 4, 2>(b, stream);
      default:
        TORCH_CHECK(false, "deltapack_cuda: rows_per_warp must be 1, 2 or 4, not ", nr);
    }
  }
  if (b.lowrank) launch_shrink<D>(b, stream);
#define DP_APPLY(NR_)                                    \
  case NR_:                                              \
    if (fuse) {                                          \
      launch_apply<D, NR_, true>(b, stream);             \
    } else {                                             \
      launch_apply<D, NR_, false>(b, stream);            \
    }                                                    \
    break;
  switch (nr) {
    DP_APPLY(1)
    DP_APPLY(2)
    DP_APPLY(4)
    default:
      TORCH_CHECK(false, "deltapack_cuda: rows_per_warp must be 1, 2 or 4, not ", nr);
  }
#undef DP_APPLY
}

void check_index(const at::Tensor& t, const char* name, const at::Device& dev) {
  TORCH_CHECK(t.device() == dev, "deltapack_cuda: ", name, " must be on ", dev, ", not ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kInt && t.dim() == 1 && t.is_contiguous(), "deltapack_cuda: ", name, " must be a contiguous 1-D int32 tensor");
}

// y[rows] += Δ_slot · x[rows] in place, or y = x · baseᵀ + Δ x with ``base`` (fuse). ``t``: fp32
// [M, max_rank] scratch for the low-rank intermediate (ignored without low-rank parts).
// ``fields``: packed.py's NF, F_KIND, F_RANK, F_ROFF, F_PERM, F_S, A_BITS, B_BITS, KIND_LOWRANK,
// KIND_DENSE. ``wlen``: the largest Σ over a slot's low-rank parts of the rank rounded up to 32.
void delta_decode(const at::Tensor& x, at::Tensor y, const at::Tensor& t, const c10::optional<at::Tensor>& base, const at::Tensor& table,
                  int64_t max_parts, const at::Tensor& row_idx, const at::Tensor& start, const at::Tensor& slot, const std::vector<int64_t>& fields,
                  int64_t wlen, bool lowrank, bool dense, int64_t rows_per_warp, int64_t shrink_rows, bool pdl, const c10::optional<at::Tensor>& sync,
                  int64_t onepass_a_blocks, int64_t onepass_min_blocks, const c10::optional<at::Tensor>& trace, bool identity, int64_t u_words,
                  bool onepass_prefetch, int64_t apply_subtiles, int64_t apply_min_blocks, int64_t shrink_warps, bool lut, bool lut_prefetch, int64_t lean, bool raw_x,
                  bool lut_stage) {
  TORCH_CHECK(x.is_cuda(), "deltapack_cuda: x must be a CUDA tensor");
  const at::Device dev = x.device();
  TORCH_CHECK(y.device() == dev && table.device() == dev, "deltapack_cuda: x, y and the table must be on one device");
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0), "deltapack_cuda: x [M, in] and y [M, out] expected");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "deltapack_cuda: x and y must have one dtype");
  TORCH_CHECK(x.stride(1) == 1 && y.stride(1) == 1, "deltapack_cuda: x and y need unit stride along the features");
  TORCH_CHECK(x.size(1) < (int64_t{1} << 20) && y.size(1) < (int64_t{1} << 31), "deltapack_cuda: feature dimension too large");
  TORCH_CHECK(fields.size() == kNumFields, "deltapack_cuda: expected ", kNumFields, " table field numbers, got ", fields.size());
  TORCH_CHECK(max_parts >= 1 && max_parts <= kMaxParts, "deltapack_cuda: at most ", kMaxParts, " parts per slot");
  TORCH_CHECK(fields.size() >= 1 && fields[0] >= 1 && fields[0] <= kMaxNF, "deltapack_cuda: at most ", kMaxNF, " fields per table row");
  TORCH_CHECK(shrink_rows >= 1, "deltapack_cuda: shrink_rows must be positive");
  Fields f;
  f.nf = static_cast<int>(fields[0]);
  f.kind = static_cast<int>(fields[1]);
  f.rank = static_cast<int>(fields[2]);
  f.roff = static_cast<int>(fields[3]);
  f.perm = static_cast<int>(fields[4]);
  f.s = static_cast<int>(fields[5]);
  f.a_bits = static_cast<int>(fields[6]);
  f.b_bits = static_cast<int>(fields[7]);
  f.kind_lowrank = static_cast<int>(fields[8]);
  f.kind_dense = static_cast<int>(fields[9]);
  f.a_idx = static_cast<int>(fields[10]);
  f.a_istride = static_cast<int>(fields[11]);
  f.kind_s24 = static_cast<int>(fields[12]);
  TORCH_CHECK(table.scalar_type() == at::kLong && table.dim() == 3 && table.is_contiguous() && table.size(1) == max_parts && table.size(2) == f.nf,
              "deltapack_cuda: the table must be a contiguous int64 [n_slots, max_parts, NF] tensor");
  if (lowrank) {
    TORCH_CHECK(t.is_cuda() && t.device() == dev && t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == x.size(0) && t.stride(1) == 1,
                "deltapack_cuda: t must be an fp32 [M, max_rank] tensor on x's device");
  }
  const bool fuse = base.has_value() && base->defined();
  at::Tensor w;
  if (fuse) {
    w = *base;
    TORCH_CHECK(w.device() == dev && w.scalar_type() == x.scalar_type() && w.dim() == 2 && w.size(0) == y.size(1) && w.size(1) == x.size(1) && w.stride(1) == 1,
                "deltapack_cuda: the base weight must be [out, in] in x's dtype with unit stride along the input");
  }
  check_index(row_idx, "row_idx", dev);
  check_index(start, "start", dev);
  check_index(slot, "slot", dev);
  TORCH_CHECK(start.numel() == slot.numel(), "deltapack_cuda: start and slot differ in size");
  TORCH_CHECK(!identity || slot.numel() == x.size(0), "deltapack_cuda: identity groups need one group per row");
  TORCH_CHECK(u_words >= 0, "deltapack_cuda: u_words must not be negative");
  TORCH_CHECK(apply_subtiles >= 1 && apply_subtiles <= 64, "deltapack_cuda: apply_subtiles must be in [1, 64]");
  TORCH_CHECK(apply_min_blocks >= 1 && apply_min_blocks <= 3, "deltapack_cuda: apply_min_blocks must be 1, 2 or 3, not ", apply_min_blocks);
  TORCH_CHECK(lean >= -1 && lean <= 2, "deltapack_cuda: lean must be -1 (off), 0, 1 or 2 (the dense parts' code width), not ", lean);
  TORCH_CHECK(shrink_warps >= 1 && shrink_warps <= kMaxShrinkWarps, "deltapack_cuda: shrink_warps must be in [1, ", kMaxShrinkWarps, "]");
  int* sync_ptr = nullptr;
  if (sync.has_value() && sync->defined() && fuse && lowrank) {
    TORCH_CHECK(sync->device() == dev && sync->scalar_type() == at::kInt && sync->is_contiguous() && sync->numel() >= 1 + 2 * slot.numel(),
                "deltapack_cuda: sync must be a contiguous int32 tensor of at least 1 + 2 × groups elements on x's device");
    sync_ptr = sync->data_ptr<int>();
  }
  long long* trace_ptr = nullptr;
  if (trace.has_value() && trace->defined()) {
    TORCH_CHECK(trace->device() == dev && trace->scalar_type() == at::kLong && trace->is_contiguous(), "deltapack_cuda: trace must be a contiguous int64 tensor on x's device");
    trace_ptr = reinterpret_cast<long long*>(trace->data_ptr<int64_t>());  // the caller sizes it: [grid, 8] (grid ≤ SMs + groups × tiles)
  }
  if (slot.numel() == 0 || x.size(0) == 0 || y.size(1) == 0) return;

  const c10::cuda::CUDAGuard guard(dev);
  const int64_t row_bytes = x.stride(0) * static_cast<int64_t>(x.element_size());
  const bool x_vec = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && (x.size(0) <= 1 || row_bytes % 16 == 0);
  const auto* prop = at::cuda::getDeviceProperties(dev.index());
  const int sms = prop->multiProcessorCount;
  const Batch b{x, y, t, w, table, static_cast<int>(max_parts), row_idx, start, slot, wlen, lowrank, dense, static_cast<int>(shrink_rows), x_vec, pdl, f, sync_ptr, sms,
                static_cast<int>(onepass_a_blocks), static_cast<int>(onepass_min_blocks), trace_ptr,
                trace_ptr != nullptr ? trace->numel() : 0, identity, u_words, onepass_prefetch, static_cast<int>(apply_subtiles),
                static_cast<int>(apply_min_blocks), static_cast<int>(shrink_warps), lut, lut_prefetch, raw_x, static_cast<int>(lean),
                lut_stage, prop->major};
  const int nr = static_cast<int>(rows_per_warp);
  switch (x.scalar_type()) {
    case at::kFloat:
      launch<F32>(b, nr, fuse);
      break;
    case at::kHalf:
      launch<F16>(b, nr, fuse);
      break;
    case at::kBFloat16:
      launch<BF16>(b, nr, fuse);
      break;
    default:
      TORCH_CHECK(false, "deltapack_cuda: activations must be float32, float16 or bfloat16, not ", x.scalar_type());
  }
}

}  // namespace dpk

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "deltapack decode kernels: low-rank mixed-precision and dense packed deltas (1/2/3/4/8-bit codes), gather mode, optional fused base";
  m.def("delta_decode", &dpk::delta_decode, "y[rows] += Δ_slot · x[rows] in place (or y = x·baseᵀ + Δx)", pybind11::arg("x"), pybind11::arg("y"),
        pybind11::arg("t"), pybind11::arg("base"), pybind11::arg("table"), pybind11::arg("max_parts"), pybind11::arg("row_idx"), pybind11::arg("start"),
        pybind11::arg("slot"), pybind11::arg("fields"), pybind11::arg("wlen"), pybind11::arg("lowrank"), pybind11::arg("dense"),
        pybind11::arg("rows_per_warp"), pybind11::arg("shrink_rows"), pybind11::arg("pdl") = true, pybind11::arg("sync") = pybind11::none(),
        pybind11::arg("onepass_a_blocks") = 0, pybind11::arg("onepass_min_blocks") = 2, pybind11::arg("trace") = pybind11::none(),
        pybind11::arg("identity") = false, pybind11::arg("u_words") = 0, pybind11::arg("onepass_prefetch") = false, pybind11::arg("apply_subtiles") = 1,
        pybind11::arg("apply_min_blocks") = 1, pybind11::arg("shrink_warps") = dpk::kShrinkWarps, pybind11::arg("lut") = false, pybind11::arg("lut_prefetch") = true,
        pybind11::arg("lean") = -1, pybind11::arg("raw_x") = true, pybind11::arg("lut_stage") = false);
  m.attr("TRACE_SLOTS") = static_cast<int>(dpk::kTrSlots);
  m.attr("APPLY_WARPS") = dpk::kApplyWarps;
  m.attr("SHRINK_WARPS") = dpk::kShrinkWarps;
  m.attr("MAX_PARTS") = dpk::kMaxParts;
  m.attr("LUT_THREADS") = dpk::kLutThreads;
  m.attr("CHUNKS_IN_FLIGHT") = dpk::kChunksInFlight;
  m.attr("LUT_STAGE_BYTES") = dpk::kLutStageBytes;
}
