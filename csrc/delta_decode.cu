// Decode kernel for deltapack: y[row, n] += sum_k x[row, k] * W_slot(row)[n, k] for batches of at
// most a few rows (gather mode: every row group holds one row), where launch overhead and memory
// bandwidth dominate. W is read straight from the packed .dpk layout (docs/FORMAT.md §3.2, §3.4):
// one little-endian bit stream of b-bit codes per row, rows padded to 32-bit words,
// value = (code - zero) * scale, scale index = row * srow + col / group, zero from a u8 grid with
// the same index or a float32 constant. Only dense parts (KIND_DENSE) with b in {1, 2, 4, 8} are
// computed; other kinds are skipped, so the loader (python/deltapack/kernels/cuda.py) sends only
// tables it has checked: every part dense with b in {1, 2, 4, 8}, group a power of two that is a
// multiple of 32 / b (one scale and zero per packed word).
//
// The descriptor table (packed.py DeltaTable: int64 [n_slots, max_parts, NF]) is read on the
// device; its field numbers come from packed.py through the Fields argument.
//
// Work split: grid (row group, output tile); a block of kWarps warps, each warp owns NR consecutive
// outputs n. Lane l reads packed words l, l + 32, ... of the NR rows of W (each warp load is 128
// contiguous bytes of one row), U = kWordsInFlight / NR words per row ahead (32-bit rather than
// 128-bit loads of W: with one word per lane the activations a warp reads per step are one
// contiguous run, and U words ahead keep as many bytes in flight), unpacks the 32 / b
// codes of a word with byte permutes (code -> float through the 2^23 exponent trick), and takes
// the matching 32 / b activations from x once for its NR rows (vector loads where the rows of x
// are 16-byte aligned, else element by element). Per word, with the word's scale s
// and zero z: sum_i (q_i - z) s x_i = s (sum_i q_i x_i - z sum_i x_i). fp32 accumulation, a warp
// shuffle reduction, lane 0 adds into y (each (row, n) has one owner: no atomics). No shared
// memory, no allocation, no host sync: safe to capture in a CUDA graph.

#include <torch/extension.h>
#include <pybind11/stl.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <vector>

namespace {

constexpr int kWarps = 4;  // warps per block
#ifndef DELTAPACK_WORDS_IN_FLIGHT
#define DELTAPACK_WORDS_IN_FLIGHT 16
#endif
#ifndef DELTAPACK_MIN_BLOCKS
#define DELTAPACK_MIN_BLOCKS 4
#endif
constexpr int kWordsInFlight = DELTAPACK_WORDS_IN_FLIGHT;  // packed words per lane loaded ahead (all NR rows)
constexpr int kMinBlocks = DELTAPACK_MIN_BLOCKS;           // __launch_bounds__ occupancy hint

// Field numbers of the descriptor table (packed.py), in the order the loader passes them.
struct Fields {
  int nf;          // NF: fields per (slot, part)
  int kind;        // F_KIND
  int bits;        // A_BITS
  int codes;       // A_CODES: int32 words [rows, stride]
  int stride;      // A_STRIDE: words per packed row
  int scales;      // A_SCALES: float16 grid
  int srow;        // A_SROW: scale index = row * srow + col / group
  int group;       // A_GROUP
  int zeros;       // A_ZEROS: uint8 grid like scales, or 0 for the constant
  int zconst;      // A_ZCONST: float32 bits of the constant zero point
  int kind_dense;  // KIND_DENSE
};
constexpr int kNumFields = 11;

// Activation / output element types. 16-bit types travel as raw uint16 bits: vector loads,
// exact widening, round-to-nearest-even narrowing.
struct F32 {
  using E = float;
  static __device__ __forceinline__ float to_float(E v) { return v; }
  static __device__ __forceinline__ E from_float(float v) { return v; }
  static __device__ __forceinline__ float load1(const E* p) { return __ldg(p); }
  template <int N>
  static __device__ __forceinline__ void loadv(const E* p, float (&v)[N]) {  // p 16-byte aligned
    static_assert(N % 4 == 0, "float activations are read 4 at a time");
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      const float4 q = __ldg(reinterpret_cast<const float4*>(p) + i);
      v[4 * i + 0] = q.x;
      v[4 * i + 1] = q.y;
      v[4 * i + 2] = q.z;
      v[4 * i + 3] = q.w;
    }
  }
};

template <class Derived>
struct Half16 {  // shared code of the two 16-bit types
  using E = uint16_t;
  static __device__ __forceinline__ float load1(const E* p) { return Derived::to_float(__ldg(reinterpret_cast<const unsigned short*>(p))); }
  static __device__ __forceinline__ void pair(uint32_t u, float& lo, float& hi) {
    lo = Derived::to_float(static_cast<E>(u & 0xFFFFu));
    hi = Derived::to_float(static_cast<E>(u >> 16));
  }
  template <int N>
  static __device__ __forceinline__ void loadv(const E* p, float (&v)[N]) {  // p aligned to min(16, 2N) bytes
    if constexpr (N >= 8) {
#pragma unroll
      for (int i = 0; i < N / 8; ++i) {
        const uint4 q = __ldg(reinterpret_cast<const uint4*>(p) + i);
        pair(q.x, v[8 * i + 0], v[8 * i + 1]);
        pair(q.y, v[8 * i + 2], v[8 * i + 3]);
        pair(q.z, v[8 * i + 4], v[8 * i + 5]);
        pair(q.w, v[8 * i + 6], v[8 * i + 7]);
      }
    } else {
      static_assert(N == 4, "16-bit activations are read 4 or 8k at a time");
      const uint2 q = __ldg(reinterpret_cast<const uint2*>(p));
      pair(q.x, v[0], v[1]);
      pair(q.y, v[2], v[3]);
    }
  }
};

struct F16 : Half16<F16> {
  static __device__ __forceinline__ float to_float(uint16_t v) { return __half2float(__ushort_as_half(v)); }
  static __device__ __forceinline__ uint16_t from_float(float v) { return __half_as_ushort(__float2half_rn(v)); }
};

struct BF16 : Half16<BF16> {
  static __device__ __forceinline__ float to_float(uint16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }
  static __device__ __forceinline__ uint16_t from_float(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};

// sum_i code_i * xv[i] over the 32 / B codes of one packed word (code i at bits [B i, B i + B)).
// t = (w >> jB) & mask puts codes j, j + 8/B, j + 16/B, j + 24/B in bytes 0..3; a byte permute
// with 0x4B000000 makes the float 2^23 + code, and subtracting 2^23 is exact.
template <int B>
__device__ __forceinline__ float dot_word(uint32_t w, const float (&xv)[32 / B]) {
  constexpr int kPer = 8 / B;  // codes per byte
  constexpr uint32_t kMask = ((1u << B) - 1u) * 0x01010101u;
  float d0 = 0.f, d1 = 0.f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const uint32_t t = (w >> (j * B)) & kMask;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const float c = __uint_as_float(__byte_perm(t, 0x4B000000u, 0x7540u | static_cast<uint32_t>(b))) - 8388608.0f;
      if (b & 1) {
        d1 = fmaf(c, xv[b * kPer + j], d1);
      } else {
        d0 = fmaf(c, xv[b * kPer + j], d0);
      }
    }
  }
  return d0 + d1;
}

// acc[r] += sum_k x[k] * W[nrow[r], k] for one dense part of B-bit codes.
template <int B, class D, int NR>
__device__ __forceinline__ void dense_part(const int64_t* __restrict__ e, const Fields& f, const typename D::E* __restrict__ xr, int K,
                                           bool x_vec, const int (&nrow)[NR], float (&acc)[NR], int lane) {
  constexpr int kCpw = 32 / B;  // codes per word
  constexpr int U = kWordsInFlight / NR > 0 ? kWordsInFlight / NR : 1;
  const uint32_t* codes = reinterpret_cast<const uint32_t*>(static_cast<uintptr_t>(e[f.codes]));
  const int64_t stride = e[f.stride];
  const unsigned short* scales = reinterpret_cast<const unsigned short*>(static_cast<uintptr_t>(e[f.scales]));
  const int64_t srow = e[f.srow];
  const int64_t group = e[f.group];
  const unsigned char* zeros = reinterpret_cast<const unsigned char*>(static_cast<uintptr_t>(e[f.zeros]));
  const float zc = __int_as_float(static_cast<int>(static_cast<uint32_t>(static_cast<uint64_t>(e[f.zconst]) & 0xFFFFFFFFull)));
  // words per scale group: a power of two (checked by the loader), so the group of word w is w >> gshift
  const int gshift = __ffsll(static_cast<long long>(group / kCpw)) - 1;
  const int kw = (K + kCpw - 1) / kCpw;  // words holding columns < K
  // words whose activations are read with vector loads: all columns < K, rows of x 16-byte aligned
  const int kw_vec = x_vec ? K / kCpw : 0;

  const uint32_t* wrow[NR];
  int64_t sbase[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    wrow[r] = codes + static_cast<int64_t>(nrow[r]) * stride;
    sbase[r] = static_cast<int64_t>(nrow[r]) * srow;
  }

  for (int w0 = 0; w0 < kw; w0 += 32 * U) {
    uint32_t q[NR][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int w = w0 + u * 32 + lane;
#pragma unroll
      for (int r = 0; r < NR; ++r) q[r][u] = w < kw ? __ldg(wrow[r] + w) : 0u;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int w = w0 + u * 32 + lane;
      if (w < kw) {
        float xv[kCpw];
        if (w < kw_vec) {
          D::template loadv<kCpw>(xr + static_cast<int64_t>(w) * kCpw, xv);
        } else {  // the row's last, partial word (columns >= K read as 0), or unaligned rows of x
#pragma unroll
          for (int i = 0; i < kCpw; ++i) {
            const int c = w * kCpw + i;
            xv[i] = c < K ? D::load1(xr + c) : 0.f;
          }
        }
        float sx = 0.f;
#pragma unroll
        for (int i = 0; i < kCpw; ++i) sx += xv[i];
        const int64_t gi = static_cast<int64_t>(w >> gshift);
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          const float d = dot_word<B>(q[r][u], xv);
          const int64_t si = sbase[r] + gi;
          const float s = __half2float(__ushort_as_half(__ldg(scales + si)));
          const float z = zeros != nullptr ? static_cast<float>(__ldg(zeros + si)) : zc;
          acc[r] = fmaf(s, fmaf(-z, sx, d), acc[r]);
        }
      }
    }
  }
}

template <class D, int NR>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks)
    delta_decode_kernel(const typename D::E* __restrict__ x, int64_t sx, typename D::E* __restrict__ y, int64_t sy,
                        const int64_t* __restrict__ tab, int max_parts, const int* __restrict__ row_idx, const int* __restrict__ gstart,
                        const int* __restrict__ glen, const int* __restrict__ gslot, int N, int K, bool x_vec, Fields f) {
  const int g = blockIdx.x;
  const int slot = gslot[g];
  if (slot < 0) return;  // rows without a delta are never touched
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int n0 = (static_cast<int>(blockIdx.y) * kWarps + warp) * NR;
  if (n0 >= N) return;  // whole warp: no shuffle below is left half-done
  int nrow[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) nrow[r] = n0 + r < N ? n0 + r : N - 1;  // clamped rows are read, not written

  const int64_t* base = tab + static_cast<int64_t>(slot) * max_parts * f.nf;
  const int s0 = gstart[g];
  const int len = glen[g];  // 1 in gather mode; longer groups loop (each row re-reads W)
  for (int i = 0; i < len; ++i) {
    const int row = row_idx[s0 + i];
    const typename D::E* xr = x + static_cast<int64_t>(row) * sx;
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; ++r) acc[r] = 0.f;
    for (int p = 0; p < max_parts; ++p) {
      const int64_t* e = base + static_cast<int64_t>(p) * f.nf;
      if (e[f.kind] != f.kind_dense) continue;  // KIND_NONE (and kinds this kernel does not read)
      switch (e[f.bits]) {
        case 1:
          dense_part<1, D, NR>(e, f, xr, K, x_vec, nrow, acc, lane);
          break;
        case 2:
          dense_part<2, D, NR>(e, f, xr, K, x_vec, nrow, acc, lane);
          break;
        case 4:
          dense_part<4, D, NR>(e, f, xr, K, x_vec, nrow, acc, lane);
          break;
        case 8:
          dense_part<8, D, NR>(e, f, xr, K, x_vec, nrow, acc, lane);
          break;
        default:
          break;
      }
    }
#pragma unroll
    for (int r = 0; r < NR; ++r) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[r] += __shfl_xor_sync(0xFFFFFFFFu, acc[r], off);
    }
    if (lane == 0) {
      typename D::E* yr = y + static_cast<int64_t>(row) * sy;
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        if (n0 + r < N) yr[n0 + r] = D::from_float(D::to_float(yr[n0 + r]) + acc[r]);
      }
    }
  }
}

template <class D, int NR>
void launch(const at::Tensor& x, at::Tensor& y, const at::Tensor& table, int max_parts, const at::Tensor& row_idx, const at::Tensor& start,
            const at::Tensor& length, const at::Tensor& slot, const Fields& f) {
  const int64_t groups = slot.numel();
  const int N = static_cast<int>(y.size(1));
  const int K = static_cast<int>(x.size(1));
  // activations by vector loads only where every row of x starts on a 16-byte boundary
  const int64_t row_bytes = x.stride(0) * static_cast<int64_t>(x.element_size());
  const bool x_vec = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && (x.size(0) <= 1 || row_bytes % 16 == 0);
  const int64_t per_block = static_cast<int64_t>(kWarps) * NR;
  const int64_t tiles = (N + per_block - 1) / per_block;
  TORCH_CHECK(tiles <= 65535, "deltapack_cuda: ", N, " outputs need ", tiles, " output tiles (at most 65535)");
  TORCH_CHECK(groups <= 2147483647LL, "deltapack_cuda: too many row groups");
  const dim3 grid(static_cast<unsigned>(groups), static_cast<unsigned>(tiles));
  const dim3 block(kWarps * 32);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  using E = typename D::E;
  delta_decode_kernel<D, NR><<<grid, block, 0, stream>>>(
      reinterpret_cast<const E*>(x.data_ptr()), x.stride(0), reinterpret_cast<E*>(y.data_ptr()), y.stride(0), table.data_ptr<int64_t>(), max_parts,
      row_idx.data_ptr<int>(), start.data_ptr<int>(), length.data_ptr<int>(), slot.data_ptr<int>(), N, K, x_vec, f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int NR>
void launch_dtype(const at::Tensor& x, at::Tensor& y, const at::Tensor& table, int max_parts, const at::Tensor& row_idx, const at::Tensor& start,
                  const at::Tensor& length, const at::Tensor& slot, const Fields& f) {
  switch (x.scalar_type()) {
    case at::kFloat:
      launch<F32, NR>(x, y, table, max_parts, row_idx, start, length, slot, f);
      break;
    case at::kHalf:
      launch<F16, NR>(x, y, table, max_parts, row_idx, start, length, slot, f);
      break;
    case at::kBFloat16:
      launch<BF16, NR>(x, y, table, max_parts, row_idx, start, length, slot, f);
      break;
    default:
      TORCH_CHECK(false, "deltapack_cuda: activations must be float32, float16 or bfloat16, not ", x.scalar_type());
  }
}

void check_index(const at::Tensor& t, const char* name, const at::Device& dev) {
  TORCH_CHECK(t.device() == dev, "deltapack_cuda: ", name, " must be on ", dev, ", not ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kInt && t.dim() == 1 && t.is_contiguous(), "deltapack_cuda: ", name, " must be a contiguous 1-D int32 tensor");
}

// y[rows] += W_slot · x[rows] in place. ``fields``: packed.py's NF, F_KIND, A_BITS, A_CODES,
// A_STRIDE, A_SCALES, A_SROW, A_GROUP, A_ZEROS, A_ZCONST, KIND_DENSE.
void delta_decode(const at::Tensor& x, at::Tensor y, const at::Tensor& table, int64_t max_parts, const at::Tensor& row_idx, const at::Tensor& start,
                  const at::Tensor& length, const at::Tensor& slot, const std::vector<int64_t>& fields, int64_t rows_per_warp) {
  TORCH_CHECK(x.is_cuda(), "deltapack_cuda: x must be a CUDA tensor");
  const at::Device dev = x.device();
  TORCH_CHECK(y.device() == dev && table.device() == dev, "deltapack_cuda: x, y and the table must be on one device");
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0), "deltapack_cuda: x [M, in] and y [M, out] expected");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "deltapack_cuda: x and y must have one dtype");
  TORCH_CHECK(x.stride(1) == 1 && y.stride(1) == 1, "deltapack_cuda: x and y need unit stride along the features");
  TORCH_CHECK(x.size(1) < (int64_t{1} << 31) && y.size(1) < (int64_t{1} << 31), "deltapack_cuda: feature dimension too large");
  TORCH_CHECK(fields.size() == kNumFields, "deltapack_cuda: expected ", kNumFields, " table field numbers, got ", fields.size());
  Fields f;
  f.nf = static_cast<int>(fields[0]);
  f.kind = static_cast<int>(fields[1]);
  f.bits = static_cast<int>(fields[2]);
  f.codes = static_cast<int>(fields[3]);
  f.stride = static_cast<int>(fields[4]);
  f.scales = static_cast<int>(fields[5]);
  f.srow = static_cast<int>(fields[6]);
  f.group = static_cast<int>(fields[7]);
  f.zeros = static_cast<int>(fields[8]);
  f.zconst = static_cast<int>(fields[9]);
  f.kind_dense = static_cast<int>(fields[10]);
  TORCH_CHECK(table.scalar_type() == at::kLong && table.dim() == 3 && table.is_contiguous() && table.size(1) == max_parts && table.size(2) == f.nf,
              "deltapack_cuda: the table must be a contiguous int64 [n_slots, max_parts, NF] tensor");
  check_index(row_idx, "row_idx", dev);
  check_index(start, "start", dev);
  check_index(length, "length", dev);
  check_index(slot, "slot", dev);
  TORCH_CHECK(start.numel() == slot.numel() && length.numel() == slot.numel(), "deltapack_cuda: start, length and slot differ in size");
  if (slot.numel() == 0 || x.size(0) == 0 || y.size(1) == 0) return;

  const c10::cuda::CUDAGuard guard(dev);
  const int mp = static_cast<int>(max_parts);
  switch (rows_per_warp) {
    case 1:
      launch_dtype<1>(x, y, table, mp, row_idx, start, length, slot, f);
      break;
    case 2:
      launch_dtype<2>(x, y, table, mp, row_idx, start, length, slot, f);
      break;
    case 4:
      launch_dtype<4>(x, y, table, mp, row_idx, start, length, slot, f);
      break;
    default:
      TORCH_CHECK(false, "deltapack_cuda: rows_per_warp must be 1, 2 or 4, not ", rows_per_warp);
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "deltapack decode kernel: dense packed deltas (1/2/4/8-bit codes), gather mode";
  m.def("delta_decode", &delta_decode, "y[rows] += W_slot · x[rows] in place", pybind11::arg("x"), pybind11::arg("y"), pybind11::arg("table"),
        pybind11::arg("max_parts"), pybind11::arg("row_idx"), pybind11::arg("start"), pybind11::arg("length"), pybind11::arg("slot"),
        pybind11::arg("fields"), pybind11::arg("rows_per_warp"));
  m.attr("WARPS_PER_BLOCK") = kWarps;
  m.attr("WORDS_IN_FLIGHT") = kWordsInFlight;
}
