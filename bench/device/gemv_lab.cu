// One-row GEMV designs for the fused decode path (bench/device/gemv_lab.py): y = W x (+ a folded
// 1-bit delta, BitDelta: y += s_n Σ_k (q_nk − z) x_k), bf16 W [N, K] row-major, fp32 sums.
// A lab, not the product: each design is measured against cuBLAS on the Llama shapes before one
// moves into csrc/delta_decode.cu.
//
// - reg<NR, U, DB>: a warp takes NR rows; a lane loads U 16-byte vectors per row before the first
//   use (the production base_gemv's scheme), x as bf16 in shared memory (no fp32 staging, no
//   swizzle: a warp reads 512 contiguous bytes), double-buffered: the next U vectors are loaded
//   while the current ones are multiplied.
// - bulk<CHV, DB>: every warp streams its rows through its own ring of shared-memory stages,
//   filled by the bulk copy engine (cp.async.bulk, one instruction per stage, completing on an
//   mbarrier) — the weights cost no registers while in flight, and the depth in flight is
//   stages × chunk bytes per warp. A chunk is CHV warp-vectors (CHV × 256 inputs) of one row.
//   Persistent: the block loops over tiles of WARPS · RW rows (blockIdx.x, + gridDim.x, ...) and
//   the ring runs on across tiles, so x is staged once per block and no block restarts a pipeline.

#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

namespace {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
  return v;
}

__device__ __forceinline__ void bf8(const uint4& q, float (&v)[8]) {
  v[0] = __uint_as_float(q.x << 16), v[1] = __uint_as_float(q.x & 0xFFFF0000u);
  v[2] = __uint_as_float(q.y << 16), v[3] = __uint_as_float(q.y & 0xFFFF0000u);
  v[4] = __uint_as_float(q.z << 16), v[5] = __uint_as_float(q.z & 0xFFFF0000u);
  v[6] = __uint_as_float(q.w << 16), v[7] = __uint_as_float(q.w & 0xFFFF0000u);
}

// Σ over 8 products, plus (DB) the 1-bit codes' Σ_{q_i = 1} x_i into dq.
template <int DB>
__device__ __forceinline__ void vec_fma(const uint4& w, const uint4& xq, uint32_t code, float& acc, float& dq) {
  float wv[8], xv[8];
  bf8(w, wv);
  bf8(xq, xv);
#pragma unroll
  for (int e = 0; e < 8; ++e) acc = fmaf(wv[e], xv[e], acc);
  if constexpr (DB == 1) {
#pragma unroll
    for (int e = 0; e < 8; ++e) dq += ((code >> e) & 1u) ? xv[e] : 0.f;
  }
}

// x (bf16, K a multiple of 8) into shared memory, and Σ x into *xsum (block-wide; DB only).
__device__ __forceinline__ void stage_x(const uint4* __restrict__ x, int nv, uint4* xs) {
  for (int i = threadIdx.x; i < nv; i += blockDim.x) xs[i] = __ldg(x + i);
}

// ---- reg ------------------------------------------------------------------------------------------
template <int NR, int U, int DB>
__global__ void __launch_bounds__(256) reg_kernel(const uint4* __restrict__ w, const uint4* __restrict__ x, __nv_bfloat16* __restrict__ y,
                                                  const uint8_t* __restrict__ codes, const __half* __restrict__ scales, float zc, float xsum, int N, int K) {
  extern __shared__ uint4 xs[];
  const int nv = K / 8;
  stage_x(x, nv, xs);
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n0 = (blockIdx.x * (blockDim.x >> 5) + warp) * NR;
  if (n0 >= N) return;
  int rows[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) rows[r] = min(n0 + r, N - 1);
  float acc[NR], dq[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) acc[r] = dq[r] = 0.f;
  uint4 cur[NR][U], nxt[NR][U];
  uint8_t cc[NR][U], nc[NR][U];
  auto load = [&](int v0, uint4 (&q)[NR][U], uint8_t (&c)[NR][U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = v0 + 32 * u;
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        q[r][u] = v < nv ? __ldg(w + static_cast<int64_t>(rows[r]) * nv + v) : make_uint4(0, 0, 0, 0);
        if constexpr (DB == 1) c[r][u] = v < nv ? __ldg(codes + static_cast<int64_t>(rows[r]) * nv + v) : 0;
      }
    }
  };
  load(lane, cur, cc);
  for (int v0 = lane; v0 < nv; v0 += 32 * U) {
    if (v0 + 32 * U < nv) load(v0 + 32 * U, nxt, nc);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = v0 + 32 * u;
      if (v < nv) {
        const uint4 xq = xs[v];
#pragma unroll
        for (int r = 0; r < NR; ++r) vec_fma<DB>(cur[r][u], xq, DB ? cc[r][u] : 0u, acc[r], dq[r]);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        cur[r][u] = nxt[r][u];
        if constexpr (DB == 1) cc[r][u] = nc[r][u];
      }
  }
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    float a = warp_sum(acc[r]);
    if constexpr (DB == 1) {
      const float d = warp_sum(dq[r]);
      a += __half2float(scales[rows[r]]) * (d - zc * xsum);
    }
    if (lane == 0 && n0 + r < N) y[n0 + r] = __float2bfloat16_rn(a);
  }
}

// ---- bulk -----------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_u32(dst)), "l"(src), "r"(bytes),
               "r"(smem_u32(bar))
               : "memory");
}

constexpr int kMaxWarps = 8, kMaxStages = 8;

// A warp's items: (tile ti of this block, row r < RW, chunk c < nch), in that order; row
// n = tile · WARPS · RW + warp · RW + r with tile = blockIdx.x + ti · gridDim.x.
template <int CHV, int DB>
__global__ void __launch_bounds__(256) bulk_kernel(const __nv_bfloat16* __restrict__ w, const uint4* __restrict__ x, __nv_bfloat16* __restrict__ y,
                                                   const uint8_t* __restrict__ codes, const __half* __restrict__ scales, float zc, float xsum, int N, int K,
                                                   int RW, int stages) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) uint64_t bars[kMaxWarps * kMaxStages];
  constexpr int kChunkW = CHV * 512;               // weight bytes per chunk
  constexpr int kChunkC = DB ? CHV * 32 : 0;       // code bytes per chunk
  constexpr int kStage = kChunkW + kChunkC;
  const int nv = K / 8;
  const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  uint4* xs = reinterpret_cast<uint4*>(smem);
  unsigned char* ring = smem + ((static_cast<size_t>(K) * 2 + 127) & ~size_t{127}) + static_cast<size_t>(warp) * stages * kStage;
  uint64_t* bar = bars + warp * kMaxStages;
  const int nch = (nv + 32 * CHV - 1) / (32 * CHV);  // chunks per row
  const int tile_rows = warps * RW;
  const int ntiles = (N + tile_rows - 1) / tile_rows;
  const int bx = blockIdx.x, gx = gridDim.x;
  const int my_tiles = bx < ntiles ? (ntiles - 1 - bx) / gx + 1 : 0;
  // items of this warp: rows past N only in its last tile, at the end of its sequence
  int valid_rows = 0;
  if (my_tiles > 0) {
    const int last_tile = bx + (my_tiles - 1) * gx;
    const int last_first = last_tile * tile_rows + warp * RW;
    valid_rows = (my_tiles - 1) * RW + max(0, min(RW, N - last_first));
  }
  const int total = valid_rows * nch;
  auto row_of = [&](int it) {
    const int rr = it / nch;  // row index in the warp's sequence
    const int ti = rr / RW, r = rr - ti * RW;
    return (static_cast<int>(blockIdx.x) + ti * static_cast<int>(gridDim.x)) * tile_rows + warp * RW + r;
  };
  auto issue = [&](int it) {
    const int s = it % stages;
    const int n = row_of(it), c = it % nch;
    const int v0 = c * 32 * CHV;
    const int nvec = min(32 * CHV, nv - v0);
    const uint32_t wb = nvec * 16;
    unsigned char* dst = ring + s * kStage;
    if constexpr (DB == 1) {
      const uint32_t cbytes = nvec;  // one byte of codes per 8-input vector
      mbar_expect_tx(&bar[s], wb + cbytes);
      bulk_g2s(dst, w + static_cast<int64_t>(n) * K + v0 * 8, wb, &bar[s]);
      bulk_g2s(dst + kChunkW, codes + static_cast<int64_t>(n) * nv + v0, cbytes, &bar[s]);
    } else {
      mbar_expect_tx(&bar[s], wb);
      bulk_g2s(dst, w + static_cast<int64_t>(n) * K + v0 * 8, wb, &bar[s]);
    }
  };
  if (lane == 0) {
    for (int s = 0; s < stages; ++s) mbar_init(&bar[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncwarp();
  if (lane == 0)
    for (int it = 0; it < min(stages, total); ++it) issue(it);
  stage_x(x, nv, xs);
  __syncthreads();
  float acc = 0.f, dq = 0.f;
  for (int it = 0; it < total; ++it) {
    const int s = it % stages, c = it % nch;
    mbar_wait(&bar[s], (it / stages) & 1);
    const uint4* wv = reinterpret_cast<const uint4*>(ring + s * kStage);
    const uint8_t* cv = ring + s * kStage + kChunkW;
    const int v0 = c * 32 * CHV;
#pragma unroll
    for (int u = 0; u < CHV; ++u) {
      const int i = lane + 32 * u;
      if (v0 + i < nv) vec_fma<DB>(wv[i], xs[v0 + i], DB ? cv[i] : 0u, acc, dq);
    }
    __syncwarp();
    if (lane == 0 && it + stages < total) {
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      issue(it + stages);
    }
    if (c == nch - 1) {
      float a = warp_sum(acc);
      const int n = row_of(it);
      if constexpr (DB == 1) a += __half2float(scales[n]) * (warp_sum(dq) - zc * xsum);
      if (lane == 0) y[n] = __float2bfloat16_rn(a);
      acc = dq = 0.f;
    }
  }
}

template <int NR, int U, int DB>
void launch_reg(const torch::Tensor& w, const torch::Tensor& x, torch::Tensor& y, const uint8_t* codes, const __half* scales, float zc, float xsum, int warps) {
  const int N = w.size(0), K = w.size(1);
  const int rows = warps * NR;
  const int smem = K * 2;
  auto kern = reg_kernel<NR, U, DB>;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  kern<<<(N + rows - 1) / rows, warps * 32, smem, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint4*>(w.data_ptr()), reinterpret_cast<const uint4*>(x.data_ptr()), reinterpret_cast<__nv_bfloat16*>(y.data_ptr()), codes, scales,
      zc, xsum, N, K);
}

template <int CHV, int DB>
void launch_bulk(const torch::Tensor& w, const torch::Tensor& x, torch::Tensor& y, const uint8_t* codes, const __half* scales, float zc, float xsum, int warps,
                 int RW, int stages, int grid) {
  const int N = w.size(0), K = w.size(1);
  const int kStage = CHV * 512 + (DB ? CHV * 32 : 0);
  const int smem = ((K * 2 + 127) & ~127) + warps * stages * kStage;
  auto kern = bulk_kernel<CHV, DB>;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  const int tiles = (N + warps * RW - 1) / (warps * RW);
  if (grid <= 0) {  // persistent: as many blocks as fit at once
    int per_sm = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, warps * 32, smem);
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device());
    grid = per_sm * sms * (-grid > 0 ? -grid : 1);
  }
  grid = std::min(grid, tiles);
  kern<<<grid, warps * 32, smem, at::cuda::getCurrentCUDAStream()>>>(reinterpret_cast<const __nv_bfloat16*>(w.data_ptr()),
                                                                    reinterpret_cast<const uint4*>(x.data_ptr()),
                                                                    reinterpret_cast<__nv_bfloat16*>(y.data_ptr()), codes, scales, zc, xsum, N, K, RW, stages);
}

}  // namespace

// codes: uint8 [N, K / 8] (bit e of byte v: input 8 v + e) or empty; scales: f16 [N].
void gemv(torch::Tensor w, torch::Tensor x, torch::Tensor y, torch::Tensor codes, torch::Tensor scales, double zc, double xsum, std::string kind, int nr, int u,
          int warps, int rw, int stages, int grid) {
  TORCH_CHECK(w.is_cuda() && w.scalar_type() == at::kBFloat16 && w.is_contiguous() && w.size(1) % 256 == 0);
  TORCH_CHECK(warps >= 1 && warps <= kMaxWarps && stages >= 1 && stages <= kMaxStages);
  const bool db = codes.numel() > 0;
  const uint8_t* c = db ? codes.data_ptr<uint8_t>() : nullptr;
  const __half* s = db ? reinterpret_cast<const __half*>(scales.data_ptr()) : nullptr;
  const float z = static_cast<float>(zc), xs = static_cast<float>(xsum);
#define REG(NR_, U_)                                                    \
  if (nr == NR_ && u == U_) {                                           \
    if (db) launch_reg<NR_, U_, 1>(w, x, y, c, s, z, xs, warps);        \
    else launch_reg<NR_, U_, 0>(w, x, y, c, s, z, xs, warps);           \
    return;                                                             \
  }
#define BULK(CHV_)                                                                \
  if (u == CHV_) {                                                                \
    if (db) launch_bulk<CHV_, 1>(w, x, y, c, s, z, xs, warps, rw, stages, grid);  \
    else launch_bulk<CHV_, 0>(w, x, y, c, s, z, xs, warps, rw, stages, grid);     \
    return;                                                                       \
  }
  if (kind == "reg") {
    REG(1, 4) REG(1, 8) REG(2, 4) REG(2, 8) REG(4, 4)
  } else if (kind == "bulk") {
    BULK(2) BULK(4) BULK(8)
  }
  TORCH_CHECK(false, "no such configuration: ", kind, " nr ", nr, " u ", u);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("gemv", &gemv); }
