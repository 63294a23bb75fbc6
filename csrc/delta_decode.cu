// Decode kernels for deltapack: y[row] (+)= Δ_slot(row) · x[row] for batches of at most 16 rows,
// one row per group (gather mode), where launch overhead and memory bandwidth dominate. The deltas
// are read straight from the packed .dpk layout (docs/FORMAT.md §3.2, §3.4): one little-endian
// bit stream of b-bit codes per row, rows padded to 32-bit words, value = (code − zero) · scale,
// scale index = row · srow + col / group, zero from a u8 grid with the same index or an f32
// constant. The descriptor table is packed.py's DeltaTable (int64 [n_slots, max_parts, NF]);
// its field numbers come from packed.py through the ``fields`` argument.
//
// Parts read (the loader, python/deltapack/kernels/cuda.py, sends only tables it has checked):
// - dense (BitDelta q1, RTN q{b}): b ∈ {1, 2, 3, 4, 8}, scale groups of whole 32-code chunks;
// - low-rank (Delta-CoMe blocks): Vt [r, in] as stored, Ut through its rank-major copy [out, r]
//   (same codes, same bit width), b ∈ {1, 2, 3, 4, 8}; f16 singular values s; an optional
//   act-order permutation of x.
//
// Two launches:
// 1. shrink (low-rank parts only): t[row, roff + j] = Σ_k Vt[j, k] · x[row, perm(k)].
//    Grid (row group, tile of JB rank rows); a block stages x[row] (permuted) as fp32 in shared
//    memory with the sum of every 32-code chunk, then each warp walks whole rows of Vt.
// 2. apply: y[row, n] (+)= Σ_p Σ_j U_p[n, j] · s_j · t[row, j] + Σ_dense W[n, :] · x[row]
//    (+ base[n, :] · x[row] when fused: y is then overwritten). Grid (output tile of NB rows,
//    row group). A block's outputs lie in one scale group of every Ut, so Ut's scale, zero
//    and s fold into the activations once per block:
//        w_j = su(j, G) · s_j · t_j,   c = Σ_j zu(j, G) · w_j,   Σ_j (q_nj − zu) su s_j t_j = Σ_j q_nj w_j − c,
//    which leaves a plain integer-code GEMV over rank-major rows (no per-code scale load).
//
// Code decoding: a lane takes one 32-code chunk (b consecutive words) at a time; codes become
// floats by the 2^23 exponent trick (OR into 0x4B000000, subtract 2^23: exact). Per chunk with
// scale s and zero z: Σ_i (q_i − z) s a_i = s (Σ_i q_i a_i − z Σ_i a_i), Σ a_i from shared memory.
// fp32 accumulation, warp shuffle reductions, one owner per output (no atomics), no host sync
// and no allocation: safe to capture in a CUDA graph.

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

constexpr int kShrinkWarps = 4;  // warps per shrink block
constexpr int kApplyWarps = 8;   // warps per apply block
constexpr int kMaxParts = 16;    // parts per slot (shared-memory zero terms)
#ifndef DELTAPACK_CHUNKS_IN_FLIGHT
#define DELTAPACK_CHUNKS_IN_FLIGHT 4
#endif
constexpr int kChunksInFlight = DELTAPACK_CHUNKS_IN_FLIGHT;  // 32-code chunks a lane loads ahead
constexpr float kMagic = 8388608.0f;                          // 2^23

// Field numbers of the descriptor table (packed.py), in the order the loader passes them.
struct Fields {
  int nf, kind, rank, roff, perm, s;
  int a_bits;  // first of the 8 operand fields A_BITS, A_CODES, A_STRIDE, A_SCALES, A_SROW, A_GROUP, A_ZEROS, A_ZCONST
  int b_bits;  // first of the same 8 fields of operand B (Ut, B_CODES = its rank-major codes)
  int kind_lowrank, kind_dense;
};
constexpr int kNumFields = 10;

// One packed operand as a table entry describes it.
struct Operand {
  const uint32_t* codes;
  int64_t stride;  // words per row
  const __half* scales;
  int64_t srow;
  int64_t group;
  const uint8_t* zeros;
  float zc;
  int bits;
};

__device__ __forceinline__ Operand read_operand(const int64_t* __restrict__ e, int first) {
  Operand o;
  o.bits = static_cast<int>(__ldg(e + first + 0));
  o.codes = reinterpret_cast<const uint32_t*>(static_cast<uintptr_t>(__ldg(e + first + 1)));
  o.stride = __ldg(e + first + 2);
  o.scales = reinterpret_cast<const __half*>(static_cast<uintptr_t>(__ldg(e + first + 3)));
  o.srow = __ldg(e + first + 4);
  o.group = __ldg(e + first + 5);
  o.zeros = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(__ldg(e + first + 6)));
  o.zc = __int_as_float(static_cast<int>(static_cast<uint32_t>(static_cast<uint64_t>(__ldg(e + first + 7)) & 0xFFFFFFFFull)));
  return o;
}

// Activation / output element types. 16-bit types travel as raw uint16 bits.
struct F32 {
  using E = float;
  static constexpr int kVec = 4;  // elements per 16-byte load
  static __device__ __forceinline__ float to_float(E v) { return v; }
  static __device__ __forceinline__ E from_float(float v) { return v; }
  static __device__ __forceinline__ float load1(const E* p) { return __ldg(p); }
  static __device__ __forceinline__ void unpack(const uint4& q, float (&v)[kVec]) {
    v[0] = __uint_as_float(q.x);
    v[1] = __uint_as_float(q.y);
    v[2] = __uint_as_float(q.z);
    v[3] = __uint_as_float(q.w);
  }
};

template <class Derived>
struct Half16 {
  using E = uint16_t;
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float load1(const E* p) { return Derived::to_float(__ldg(reinterpret_cast<const unsigned short*>(p))); }
  static __device__ __forceinline__ void pair(uint32_t u, float& lo, float& hi) {
    lo = Derived::to_float(static_cast<E>(u & 0xFFFFu));
    hi = Derived::to_float(static_cast<E>(u >> 16));
  }
  static __device__ __forceinline__ void unpack(const uint4& q, float (&v)[kVec]) {
    pair(q.x, v[0], v[1]);
    pair(q.y, v[2], v[3]);
    pair(q.z, v[4], v[5]);
    pair(q.w, v[6], v[7]);
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

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
  return v;
}

// Activations in shared memory are swizzled by 16-byte slot: element k of a vector lives in
// slot 8·c + (i ^ (c & 7)) (c = k / 32 its chunk, i = k % 32 / 4), at k % 4 within the slot. The
// lanes of a warp read consecutive chunks (lane l: chunk c0 + l), so without the swizzle the 8
// lanes of a quarter-warp would hit the same banks; with it they hit 8 distinct slots' banks.
__device__ __forceinline__ int swz(int k) { return (k & ~31) | ((((k >> 2) & 7) ^ ((k >> 5) & 7)) << 2) | (k & 3); }

// The 4 activations k .. k + 3 (k a multiple of 4) of a swizzled vector.
__device__ __forceinline__ float4 load4(const float* __restrict__ a, int k) { return *reinterpret_cast<const float4*>(a + swz(k)); }

// Σ_i q_i · a[i] over chunk c of 32 B-bit codes held in w[0..B) (code i at bits [B i, B i + B)
// of the chunk's little-endian bit stream); a: a swizzled fp32 vector in shared memory.
template <int B>
__device__ __forceinline__ float chunk_dot(const uint32_t (&w)[B], const float* __restrict__ a, int c) {
  float av[32];
  const float4* a4 = reinterpret_cast<const float4*>(a) + 8 * c;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float4 v = a4[i ^ (c & 7)];
    av[4 * i + 0] = v.x;
    av[4 * i + 1] = v.y;
    av[4 * i + 2] = v.z;
    av[4 * i + 3] = v.w;
  }
  float d0 = 0.f, d1 = 0.f;
  if constexpr (B == 1 || B == 2 || B == 4 || B == 8) {
    // t = (word >> jB) & mask puts codes j, j + 8/B, j + 16/B, j + 24/B of the word in bytes
    // 0..3; a byte permute with 0x4B000000 makes the float 2^23 + code.
    constexpr int kPer = 8 / B;  // codes per byte
    constexpr int kCpw = 32 / B;  // codes per word
    constexpr uint32_t kMask = ((1u << B) - 1u) * 0x01010101u;
#pragma unroll
    for (int wi = 0; wi < B; ++wi) {
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const uint32_t t = (w[wi] >> (j * B)) & kMask;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const float c = __uint_as_float(__byte_perm(t, 0x4B000000u, 0x7540u | static_cast<uint32_t>(b))) - kMagic;
          const float x = av[wi * kCpw + b * kPer + j];
          if (b & 1) {
            d1 = fmaf(c, x, d1);
          } else {
            d0 = fmaf(c, x, d0);
          }
        }
      }
    }
  } else {
    static_assert(B == 3, "codes of 1, 2, 3, 4 or 8 bits");
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      constexpr int kB = 3;
      const int bit = kB * i, wi = bit >> 5, sh = bit & 31;
      uint32_t v;
      if (sh + kB <= 32) {
        v = w[wi] >> sh;
      } else {
        v = __funnelshift_r(w[wi], w[wi + 1], sh);
      }
      const float c = __uint_as_float((v & 7u) | 0x4B000000u) - kMagic;
      if (i & 1) {
        d1 = fmaf(c, av[i], d1);
      } else {
        d0 = fmaf(c, av[i], d0);
      }
    }
  }
  return d0 + d1;
}

// One lane's share of Σ_k W[row, k] a[k] over a packed row of ``nchunks`` 32-code chunks:
// chunks lane, lane + 32, ... . SCALED: value = (q − z) s with the chunk's scale and zero (the
// row's scale grid starts at ``sbase``; asum[c] = Σ of the chunk's activations); otherwise the
// plain Σ q a (Ut rows with the scale folded into a). Words at or past ``stride`` read as 0
// (a 3- or 8-bit chunk may reach past the end of a row).
template <int B, bool SCALED>
__device__ __forceinline__ float row_dot(const uint32_t* __restrict__ row, int64_t stride, int nchunks, const float* __restrict__ a,
                                         const float* __restrict__ asum, const Operand& op, int64_t sbase, int lane) {
  float acc = 0.f;
  for (int c0 = lane; c0 < nchunks; c0 += 32 * kChunksInFlight) {
    uint32_t q[kChunksInFlight][B];
#pragma unroll
    for (int u = 0; u < kChunksInFlight; ++u) {
      const int c = c0 + 32 * u;
#pragma unroll
      for (int i = 0; i < B; ++i) {
        const int64_t wi = static_cast<int64_t>(c) * B + i;
        q[u][i] = (c < nchunks && wi < stride) ? __ldg(row + wi) : 0u;
      }
    }
#pragma unroll
    for (int u = 0; u < kChunksInFlight; ++u) {
      const int c = c0 + 32 * u;
      if (c < nchunks) {
        const float d = chunk_dot<B>(q[u], a, c);
        if constexpr (SCALED) {
          const int64_t si = sbase + (static_cast<int64_t>(c) * 32) / op.group;
          const float s = __half2float(__ldg(op.scales + si));
          const float z = op.zeros != nullptr ? static_cast<float>(__ldg(op.zeros + si)) : op.zc;
          acc = fmaf(s, fmaf(-z, asum[c], d), acc);
        } else {
          acc += d;
        }
      }
    }
  }
  return acc;
}

template <bool SCALED>
__device__ __forceinline__ float row_dot_bits(const Operand& op, int64_t r, int nchunks, const float* a, const float* asum, int lane) {
  const uint32_t* row = op.codes + r * op.stride;
  const int64_t sbase = r * op.srow;
  switch (op.bits) {
    case 1:
      return row_dot<1, SCALED>(row, op.stride, nchunks, a, asum, op, sbase, lane);
    case 2:
      return row_dot<2, SCALED>(row, op.stride, nchunks, a, asum, op, sbase, lane);
    case 3:
      return row_dot<3, SCALED>(row, op.stride, nchunks, a, asum, op, sbase, lane);
    case 4:
      return row_dot<4, SCALED>(row, op.stride, nchunks, a, asum, op, sbase, lane);
    case 8:
      return row_dot<8, SCALED>(row, op.stride, nchunks, a, asum, op, sbase, lane);
    default:
      return 0.f;
  }
}

// a (swizzled) [k] = x[perm ? perm[k] : k] as fp32 for k < K, 0 up to kp (a multiple of 32),
// and asum[c] = Σ a[32c .. 32c + 32). Every thread of the block calls it (it synchronizes);
// blockDim is a multiple of 32, so each warp stages whole chunks.
template <class D>
__device__ __forceinline__ void stage_x(const typename D::E* __restrict__ xr, const int* __restrict__ perm, int K, int kp, float* a, float* asum) {
  for (int k = threadIdx.x; k < kp; k += blockDim.x) {
    float v = 0.f;
    if (k < K) v = D::load1(xr + (perm != nullptr ? __ldg(perm + k) : k));
    a[swz(k)] = v;
    v = warp_sum(v);
    if ((k & 31) == 0) asum[k >> 5] = v;
  }
  __syncthreads();
}

// Floats of shared memory before the apply kernel's folded activations: x and its chunk sums,
// padded to a 16-byte boundary.
__host__ __device__ __forceinline__ int x_floats(int kp) { return kp + ((kp / 32 + 3) & ~3); }

// ---- launch 1: shrink -----------------------------------------------------------------------------
// Dynamic shared memory: x_floats(kp) floats (a, asum).
template <class D>
__global__ void __launch_bounds__(kShrinkWarps * 32)
    shrink_kernel(const typename D::E* __restrict__ x, int64_t sx, float* __restrict__ t, int64_t st, const int64_t* __restrict__ tab, int max_parts,
                  const int* __restrict__ row_idx, const int* __restrict__ gstart, const int* __restrict__ gslot, int K, int jb, Fields f) {
  extern __shared__ float smem[];
  const int g = blockIdx.x;
  const int slot = gslot[g];
  if (slot < 0) return;
  const int kp = (K + 31) & ~31;
  float* a = smem;
  float* asum = smem + kp;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int j0 = static_cast<int>(blockIdx.y) * jb, j1 = j0 + jb;
  const int row = row_idx[gstart[g]];
  const typename D::E* xr = x + static_cast<int64_t>(row) * sx;
  const int64_t* base = tab + static_cast<int64_t>(slot) * max_parts * f.nf;
  const int* staged = reinterpret_cast<const int*>(uintptr_t{1});  // nothing staged yet (never a real pointer)
  for (int p = 0; p < max_parts; ++p) {
    const int64_t* e = base + static_cast<int64_t>(p) * f.nf;
    if (__ldg(e + f.kind) != f.kind_lowrank) continue;
    const int rank = static_cast<int>(__ldg(e + f.rank)), roff = static_cast<int>(__ldg(e + f.roff));
    const int lo = max(j0, roff), hi = min(j1, roff + rank);
    if (lo >= hi) continue;  // block-uniform
    const int* perm = reinterpret_cast<const int*>(static_cast<uintptr_t>(__ldg(e + f.perm)));
    if (perm != staged) {  // block-uniform; the blocks of one delta share one permutation
      __syncthreads();
      stage_x<D>(xr, perm, K, kp, a, asum);
      staged = perm;
    }
    const Operand vt = read_operand(e, f.a_bits);
    for (int j = lo + warp; j < hi; j += kShrinkWarps) {
      const float acc = warp_sum(row_dot_bits<true>(vt, j - roff, kp / 32, a, asum, lane));
      if (lane == 0) t[static_cast<int64_t>(row) * st + j] = acc;
    }
  }
}

// ---- launch 2: apply ------------------------------------------------------------------------------
// Dynamic shared memory: [x: x_floats(kp) floats (a, asum), when fused or with dense parts]
// w [wlen] floats (each low-rank part's folded activations, padded to 32) + c [kMaxParts].
template <class D, int NR, bool FUSE>
__global__ void __launch_bounds__(kApplyWarps * 32)
    apply_kernel(const typename D::E* __restrict__ x, int64_t sx, typename D::E* __restrict__ y, int64_t sy, const float* __restrict__ t, int64_t st,
                 const typename D::E* __restrict__ wb, int64_t swb, const int64_t* __restrict__ tab, int max_parts, const int* __restrict__ row_idx,
                 const int* __restrict__ gstart, const int* __restrict__ gslot, int N, int K, bool stage_dense, bool base_vec, Fields f) {
  extern __shared__ float smem[];
  constexpr int NB = kApplyWarps * NR;
  const int g = blockIdx.y;
  const int slot = gslot[g];
  if (!FUSE && slot < 0) return;  // rows without a delta are never touched
  const int kp = (K + 31) & ~31;
  const bool has_x = FUSE || stage_dense;
  float* a = smem;
  float* asum = smem + kp;
  float* wsm = has_x ? smem + x_floats(kp) : smem;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n0 = static_cast<int>(blockIdx.x) * NB;
  const int row = row_idx[gstart[g]];
  const typename D::E* xr = x + static_cast<int64_t>(row) * sx;
  const int64_t* base = slot >= 0 ? tab + static_cast<int64_t>(slot) * max_parts * f.nf : nullptr;

  // stage x, fold Ut's scales / zeros and s into t (block-wide; every branch block-uniform)
  bool dense = false;
  int wlen = 0;
  float* csm = nullptr;
  if (base != nullptr) {
    for (int p = 0; p < max_parts; ++p) {
      const int64_t kind = __ldg(base + static_cast<int64_t>(p) * f.nf + f.kind);
      dense |= kind == f.kind_dense;
      if (kind == f.kind_lowrank) wlen += (static_cast<int>(__ldg(base + static_cast<int64_t>(p) * f.nf + f.rank)) + 31) & ~31;
    }
    csm = wsm + wlen;
    if (threadIdx.x < kMaxParts) csm[threadIdx.x] = 0.f;
  }
  if (has_x && (FUSE || dense)) {
    stage_x<D>(xr, nullptr, K, kp, a, asum);  // synchronizes: csm zeroed before the atomics below
  } else {
    __syncthreads();
  }
  if (base != nullptr && wlen > 0) {
    int woff = 0;
    for (int p = 0; p < max_parts; ++p) {
      const int64_t* e = base + static_cast<int64_t>(p) * f.nf;
      if (__ldg(e + f.kind) != f.kind_lowrank) continue;
      const int rank = static_cast<int>(__ldg(e + f.rank)), roff = static_cast<int>(__ldg(e + f.roff));
      const Operand ut = read_operand(e, f.b_bits);
      const __half* s = reinterpret_cast<const __half*>(static_cast<uintptr_t>(__ldg(e + f.s)));
      const int64_t G = static_cast<int64_t>(n0) / ut.group;  // the block's outputs share one group (loader-checked)
      const int rp = (rank + 31) & ~31;
      float cz = 0.f;
      for (int j = threadIdx.x; j < rp; j += blockDim.x) {
        float v = 0.f;
        if (j < rank) {
          const int64_t si = static_cast<int64_t>(j) * ut.srow + G;
          const float su = __half2float(__ldg(ut.scales + si));
          const float zu = ut.zeros != nullptr ? static_cast<float>(__ldg(ut.zeros + si)) : ut.zc;
          const float sj = s != nullptr ? __half2float(__ldg(s + j)) : 1.f;
          v = su * sj * __ldg(t + static_cast<int64_t>(row) * st + roff + j);
          cz = fmaf(zu, v, cz);
        }
        wsm[woff + swz(j)] = v;
      }
      cz = warp_sum(cz);
      if (lane == 0) atomicAdd(csm + p, cz);
      woff += rp;
    }
    __syncthreads();
  }

  float acc[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) acc[r] = 0.f;
  const int nw = n0 + warp * NR;  // this warp's first output
  if (nw >= N) return;            // after the last __syncthreads: whole warps leave
  int nrow[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) nrow[r] = min(nw + r, N - 1);  // clamped rows are read, not written

  if constexpr (FUSE) {
    // base GEMV: 16-byte loads of NR rows of the base weight, kChunksInFlight loads ahead per row
    using E = typename D::E;
    constexpr int V = D::kVec;
    if (base_vec) {
      const int nv = K / V;
      for (int v0 = lane; v0 < nv; v0 += 32 * kChunksInFlight) {
        uint4 q[NR][kChunksInFlight];
#pragma unroll
        for (int u = 0; u < kChunksInFlight; ++u) {
          const int v = v0 + 32 * u;
#pragma unroll
          for (int r = 0; r < NR; ++r) q[r][u] = v < nv ? __ldg(reinterpret_cast<const uint4*>(wb + static_cast<int64_t>(nrow[r]) * swb) + v) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kChunksInFlight; ++u) {
          const int v = v0 + 32 * u;
          if (v < nv) {
            float xv[V];
#pragma unroll
            for (int i = 0; i < V; i += 4) {
              const float4 xx = load4(a, V * v + i);
              xv[i] = xx.x;
              xv[i + 1] = xx.y;
              xv[i + 2] = xx.z;
              xv[i + 3] = xx.w;
            }
#pragma unroll
            for (int r = 0; r < NR; ++r) {
              float wv[V];
              D::unpack(q[r][u], wv);
#pragma unroll
              for (int i = 0; i < V; ++i) acc[r] = fmaf(wv[i], xv[i], acc[r]);
            }
          }
        }
      }
    } else {  // rows of the base weight not 16-byte aligned: element by element
      for (int k = lane; k < K; k += 32) {
        const float xv = a[swz(k)];
#pragma unroll
        for (int r = 0; r < NR; ++r) acc[r] = fmaf(D::load1(wb + static_cast<int64_t>(nrow[r]) * swb + k), xv, acc[r]);
      }
    }
  }

  if (base != nullptr) {
    int woff = 0;
    for (int p = 0; p < max_parts; ++p) {
      const int64_t* e = base + static_cast<int64_t>(p) * f.nf;
      const int64_t kind = __ldg(e + f.kind);
      if (kind == f.kind_lowrank) {
        const int rank = static_cast<int>(__ldg(e + f.rank));
        const Operand ut = read_operand(e, f.b_bits);
        const float c = csm[p];
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          acc[r] += row_dot_bits<false>(ut, nrow[r], (rank + 31) / 32, wsm + woff, nullptr, lane);
          if (lane == 0) acc[r] -= c;
        }
        woff += (rank + 31) & ~31;
      } else if (kind == f.kind_dense) {
        const Operand w = read_operand(e, f.a_bits);
#pragma unroll
        for (int r = 0; r < NR; ++r) acc[r] += row_dot_bits<true>(w, nrow[r], kp / 32, a, asum, lane);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < NR; ++r) acc[r] = warp_sum(acc[r]);
  if (lane == 0) {
    typename D::E* yr = y + static_cast<int64_t>(row) * sy;
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      if (nw + r < N) yr[nw + r] = FUSE ? D::from_float(acc[r]) : D::from_float(D::to_float(yr[nw + r]) + acc[r]);
    }
  }
}

// ---- host -----------------------------------------------------------------------------------------
template <class K>
void set_smem(K kernel, int64_t bytes) {
  if (bytes > 48 * 1024) C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

struct Batch {
  const at::Tensor& x;
  at::Tensor& y;
  const at::Tensor& t;
  const at::Tensor& base;
  const at::Tensor& table;
  int max_parts;
  const at::Tensor& row_idx;
  const at::Tensor& start;
  const at::Tensor& slot;
  int64_t wlen;
  bool lowrank, dense;
  int jb;
  Fields f;
};

template <class D, int NR, bool FUSE>
void launch_apply(const Batch& b, cudaStream_t stream) {
  using E = typename D::E;
  const int64_t groups = b.slot.numel();
  const int N = static_cast<int>(b.y.size(1));
  const int K = static_cast<int>(b.x.size(1));
  const int64_t kp = (K + 31) / 32 * 32;
  const bool stage_dense = b.dense;
  const int64_t smem = ((FUSE || stage_dense) ? x_floats(static_cast<int>(kp)) : 0) + b.wlen + kMaxParts;
  constexpr int NB = kApplyWarps * NR;
  const int64_t tiles = (N + NB - 1) / NB;
  TORCH_CHECK(groups <= 65535, "deltapack_cuda: at most 65535 row groups");
  const E* wb = FUSE ? reinterpret_cast<const E*>(b.base.data_ptr()) : nullptr;
  const int64_t swb = FUSE ? b.base.stride(0) : 0;
  const bool base_vec = FUSE && K % D::kVec == 0 && reinterpret_cast<uintptr_t>(wb) % 16 == 0 && (swb * static_cast<int64_t>(sizeof(E))) % 16 == 0;
  auto kernel = apply_kernel<D, NR, FUSE>;
  set_smem(kernel, smem * 4);
  const float* tp = b.lowrank ? b.t.data_ptr<float>() : nullptr;
  const int64_t st = b.lowrank ? b.t.stride(0) : 0;
  kernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(groups)), kApplyWarps * 32, smem * 4, stream>>>(
      reinterpret_cast<const E*>(b.x.data_ptr()), b.x.stride(0), reinterpret_cast<E*>(b.y.data_ptr()), b.y.stride(0), tp, st, wb, swb,
      b.table.data_ptr<int64_t>(), b.max_parts, b.row_idx.data_ptr<int>(), b.start.data_ptr<int>(), b.slot.data_ptr<int>(), N, K, stage_dense, base_vec, b.f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class D>
void launch(const Batch& b, int nr, bool fuse) {
  using E = typename D::E;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t groups = b.slot.numel();
  const int K = static_cast<int>(b.x.size(1));
  const int64_t kp = (K + 31) / 32 * 32;
  if (b.lowrank) {
    const int64_t max_rank = b.t.size(1);
    const int64_t tiles = (max_rank + b.jb - 1) / b.jb;
    TORCH_CHECK(tiles <= 65535, "deltapack_cuda: rank ", max_rank, " needs too many shrink tiles");
    const int64_t smem = static_cast<int64_t>(x_floats(static_cast<int>(kp))) * 4;
    auto kernel = shrink_kernel<D>;
    set_smem(kernel, smem);
    kernel<<<dim3(static_cast<unsigned>(groups), static_cast<unsigned>(tiles)), kShrinkWarps * 32, smem, stream>>>(
        reinterpret_cast<const E*>(b.x.data_ptr()), b.x.stride(0), b.t.data_ptr<float>(), b.t.stride(0), b.table.data_ptr<int64_t>(), b.max_parts,
        b.row_idx.data_ptr<int>(), b.start.data_ptr<int>(), b.slot.data_ptr<int>(), K, b.jb, b.f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
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
                  int64_t wlen, bool lowrank, bool dense, int64_t rows_per_warp, int64_t shrink_rows) {
  TORCH_CHECK(x.is_cuda(), "deltapack_cuda: x must be a CUDA tensor");
  const at::Device dev = x.device();
  TORCH_CHECK(y.device() == dev && table.device() == dev, "deltapack_cuda: x, y and the table must be on one device");
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0), "deltapack_cuda: x [M, in] and y [M, out] expected");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "deltapack_cuda: x and y must have one dtype");
  TORCH_CHECK(x.stride(1) == 1 && y.stride(1) == 1, "deltapack_cuda: x and y need unit stride along the features");
  TORCH_CHECK(x.size(1) < (int64_t{1} << 20) && y.size(1) < (int64_t{1} << 31), "deltapack_cuda: feature dimension too large");
  TORCH_CHECK(fields.size() == kNumFields, "deltapack_cuda: expected ", kNumFields, " table field numbers, got ", fields.size());
  TORCH_CHECK(max_parts >= 1 && max_parts <= kMaxParts, "deltapack_cuda: at most ", kMaxParts, " parts per slot");
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
  if (slot.numel() == 0 || x.size(0) == 0 || y.size(1) == 0) return;

  const c10::cuda::CUDAGuard guard(dev);
  const Batch b{x, y, t, w, table, static_cast<int>(max_parts), row_idx, start, slot, wlen, lowrank, dense, static_cast<int>(shrink_rows), f};
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "deltapack decode kernels: low-rank mixed-precision and dense packed deltas (1/2/3/4/8-bit codes), gather mode, optional fused base";
  m.def("delta_decode", &delta_decode, "y[rows] += Δ_slot · x[rows] in place (or y = x·baseᵀ + Δx)", pybind11::arg("x"), pybind11::arg("y"),
        pybind11::arg("t"), pybind11::arg("base"), pybind11::arg("table"), pybind11::arg("max_parts"), pybind11::arg("row_idx"), pybind11::arg("start"),
        pybind11::arg("slot"), pybind11::arg("fields"), pybind11::arg("wlen"), pybind11::arg("lowrank"), pybind11::arg("dense"),
        pybind11::arg("rows_per_warp"), pybind11::arg("shrink_rows"));
  m.attr("APPLY_WARPS") = kApplyWarps;
  m.attr("SHRINK_WARPS") = kShrinkWarps;
  m.attr("MAX_PARTS") = kMaxParts;
  m.attr("CHUNKS_IN_FLIGHT") = kChunksInFlight;
}
