// Decode kernels for deltapack: y[row] (+)= Δ_slot(row) · x[row], one row per group (gather mode),
// for batches where launch overhead and memory bandwidth dominate. The deltas
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
//   act-order permutation of x;
// - 2:4 sparse (DeltaZip s24q2: 2-bit kept values, 2-bit positions, constant zero), by the
//   lookup-table kernel only.
//
// Launches:
// - shrink (low-rank parts only): t[row, roff + j] = Σ_k Vt[j, k] · x[row, perm(k)].
//   Grid (row group, tile of JB rank rows); a block stages x[row] (permuted) as fp32 in shared
//   memory with the sum of every 32-code chunk, then each warp walks whole rows of Vt.
// - apply: y[row, n] (+)= Σ_p Σ_j U_p[n, j] · s_j · t[row, j] + Σ_dense W[n, :] · x[row]
//   (+ base[n, :] · x[row] when fused: y is then overwritten). Grid (output tile of NB · nsub
//   rows, row group): unfused blocks of multi-delta batches take nsub sub-tiles of NB outputs,
//   so their prologue is paid once for all. A block's outputs lie in one scale group of every
//   Ut, so Ut's scale, zero and s fold into the activations once per block:
//       w_j = su(j, G) · s_j · t_j,   c = Σ_j zu(j, G) · w_j,   Σ_j (q_nj − zu) su s_j t_j = Σ_j q_nj w_j − c,
//   which leaves a plain integer-code GEMV over rank-major rows (no per-code scale load), run
//   part by part (a warp-uniform bit width; ut_items). Fused, a slot's first dense 1- or 2-bit
//   part (16-bit activations) folds into the base GEMV's loop (base_gemv): its codes multiply the
//   activations already loaded for the base product.
//   After a shrink it is a programmatic dependent launch: it starts while the shrink runs.
// - lookup table (dense 1-/2-bit and 2:4 2-bit parts only, unfused): a thread per output row, a
//   shared-memory table of partial sums of x per nibble of codes (lut_dense_kernel).
// - lean fused GEMV (fused, every slot at most one dense 1- or 2-bit part of one width for the
//   table, 16-bit activations, aligned rows): x kept 16-bit in shared memory, one output per warp,
//   double-buffered 16-byte loads, the codes folded into the loop (lean_kernel); slot −1 blocks
//   run the base GEMV alone.
// - one pass (fused with low-rank parts): the shrink's items and the fused apply's in one grid;
//   apply blocks run their base GEMV while shrink items compute t beside them, and wait for
//   their row's t (device-wide counters) only before the low-rank products (onepass_kernel).
//
// Code decoding: a lane takes one 32-code chunk (b consecutive words) at a time; codes become
// floats by the 2^23 exponent trick (OR into 0x4B000000, subtract 2^23: exact). Per chunk with
// scale s and zero z: Σ_i (q_i − z) s a_i = s (Σ_i q_i a_i − z Σ_i a_i), Σ a_i from shared memory.
// fp32 accumulation, warp shuffle reductions, one owner per output (no atomics on outputs), no
// host sync and no allocation: safe to capture in a CUDA graph.
//
// Files: this header holds the kernels and their host launchers; delta_decode.cu dispatches and
// binds (pybind11); csrc/inst_*.cu compile the launchers' specializations, each unit once (their
// explicit instantiations below), so that the build's units compile in parallel.

#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>
#include <algorithm>
#include <vector>

namespace dpk {

constexpr int kShrinkWarps = 4;  // warps per shrink block (default; the launch may ask for up to kMaxShrinkWarps)
constexpr int kMaxShrinkWarps = 8;
constexpr int kApplyWarps = 8;   // warps per apply block
constexpr int kMaxParts = 16;    // parts per slot (shared-memory zero terms)
constexpr int kMaxNF = 32;       // fields per table row (shared-memory copy of a slot's rows)
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
  int a_idx, a_istride;  // a 2:4 part's index stream (A_IDX, A_ISTRIDE)
  int kind_s24;
};
constexpr int kNumFields = 13;

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

// e: a table row copied into shared memory (load_parts).
__device__ __forceinline__ Operand read_operand(const int64_t* e, int first) {
  Operand o;
  o.bits = static_cast<int>(e[first + 0]);
  o.codes = reinterpret_cast<const uint32_t*>(static_cast<uintptr_t>(e[first + 1]));
  o.stride = e[first + 2];
  o.scales = reinterpret_cast<const __half*>(static_cast<uintptr_t>(e[first + 3]));
  o.srow = e[first + 4];
  o.group = e[first + 5];
  o.zeros = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(e[first + 6]));
  o.zc = __int_as_float(static_cast<int>(static_cast<uint32_t>(static_cast<uint64_t>(e[first + 7]) & 0xFFFFFFFFull)));
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
  static __device__ __forceinline__ void load8(const E* p, float (&v)[8]) {  // p 16-byte aligned
    const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
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
  static __device__ __forceinline__ void load8(const E* p, float (&v)[8]) { unpack(__ldg(reinterpret_cast<const uint4*>(p)), v); }  // p 16-byte aligned
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

// Pull [p, p + bytes) into L2 ahead of use (a hint: skipped unless 16-byte aligned; the size is
// rounded down to whole 16 bytes). One instruction per row: the TMA unit walks it.
__device__ __forceinline__ void prefetch_l2(const void* p, int64_t bytes) {
  const uint32_t n = static_cast<uint32_t>(min(bytes, int64_t{1} << 30)) & ~15u;
  if ((reinterpret_cast<uintptr_t>(p) & 15) == 0 && n > 0) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(n) : "memory");
}

// Activations in shared memory are swizzled by 16-byte slot: element k of a vector lives in
// slot 8·c + (i ^ (c & 7)) (c = k / 32 its chunk, i = k % 32 / 4), at k % 4 within the slot. The
// lanes of a warp read consecutive chunks (lane l: chunk c0 + l), so without the swizzle the 8
// lanes of a quarter-warp would hit the same banks; with it they hit 8 distinct slots' banks.
__device__ __forceinline__ int swz(int k) { return (k & ~31) | ((((k >> 2) & 7) ^ ((k >> 5) & 7)) << 2) | (k & 3); }

// The 4 activations k .. k + 3 (k a multiple of 4) of a swizzled vector.
__device__ __forceinline__ float4 load4(const float* __restrict__ a, int k) { return *reinterpret_cast<const float4*>(a + swz(k)); }

// Σ_i q_i · a[i] over chunk c of 32 B-bit codes held in w[0..B) (code i at bits [B i, B i + B)
// of the chunk's little-endian bit stream; w a register array once inlined); a: a swizzled fp32
// vector in shared memory.
template <int B>
__device__ __forceinline__ float chunk_dot(const uint32_t* w, const float* __restrict__ a, int c) {
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
    // the decode is one copy of chunk_dot<B> (not one per chunk in flight): a block often runs
    // this loop once per row, so its code is fetched cold; the loads above stay unrolled
#pragma unroll 1
    for (int u = 0; u < kChunksInFlight; ++u) {
      const int c = c0 + 32 * u;
      if (c < nchunks) {
        uint32_t qu[B];
#pragma unroll
        for (int i = 0; i < B; ++i) {
          qu[i] = q[0][i];
#pragma unroll
          for (int v = 1; v < kChunksInFlight; ++v) qu[i] = u == v ? q[v][i] : qu[i];
        }
        const float d = chunk_dot<B>(qu, a, c);
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

// raw[k] = x[k] as fp32 for k < K, 0 up to kp: coalesced 16-byte loads, no synchronization (the
// caller's next __syncthreads publishes it). Issued first by the shrink, so that x is on its way
// while the slot's table rows are read.
template <class D>
__device__ __forceinline__ void copy_x(const typename D::E* __restrict__ xr, int K, int kp, bool x_vec, float* raw) {
  const int ng = kp / 8;
#pragma unroll 4
  for (int gi = threadIdx.x; gi < ng; gi += blockDim.x) {
    const int k0 = 8 * gi;
    float v[8];
    if (k0 + 8 <= K && x_vec) {
      D::load8(xr + k0, v);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = k0 + i < K ? D::load1(xr + k0 + i) : 0.f;
    }
    *reinterpret_cast<float4*>(raw + k0) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(raw + k0 + 4) = make_float4(v[4], v[5], v[6], v[7]);
  }
}

// a (swizzled) [k] = x[perm ? perm[k] : k] as fp32 for k < K, 0 up to kp (a multiple of 32),
// and asum[c] = Σ a[32c .. 32c + 32). Every thread of the block calls it (it synchronizes).
// A thread stages groups of 8 consecutive k, kStageGroups groups per pass with all their loads
// issued before the first store; the 4 lanes holding one chunk sum it by shuffles. With ``raw``
// (x already copied there by copy_x and published by a __syncthreads), x is read from shared
// memory, and a permutation gathers from it: every block of a shrink gathers the whole of x,
// and gathers from L2 cost a 32-byte sector per element. Without, x is read from global memory
// (no permutation then). ``x_vec``: rows of x start on 16-byte boundaries.
constexpr int kStageGroups = 4;

template <class D>
__device__ __forceinline__ void stage_x(const typename D::E* __restrict__ xr, const int* __restrict__ perm, int K, int kp, bool x_vec, float* a,
                                        float* asum, const float* raw) {
  const int lane = threadIdx.x & 31;
  const int ng = kp / 8;  // a multiple of 4: a chunk's 4 groups are 4 neighbouring lanes
  const bool perm_vec = perm != nullptr && (reinterpret_cast<uintptr_t>(perm) & 15) == 0;
  for (int gb = threadIdx.x - lane; gb < ng; gb += blockDim.x * kStageGroups) {  // warp-uniform trip count
    float v[kStageGroups][8];
#pragma unroll
    for (int u = 0; u < kStageGroups; ++u) {
      const int k0 = (gb + lane + u * static_cast<int>(blockDim.x)) * 8;
      const bool whole = k0 + 8 <= K;
      if (perm != nullptr) {
        int idx[8];
        if (whole && perm_vec) {
          const int4 p0 = __ldg(reinterpret_cast<const int4*>(perm + k0));
          const int4 p1 = __ldg(reinterpret_cast<const int4*>(perm + k0) + 1);
          idx[0] = p0.x, idx[1] = p0.y, idx[2] = p0.z, idx[3] = p0.w, idx[4] = p1.x, idx[5] = p1.y, idx[6] = p1.z, idx[7] = p1.w;
        } else {
#pragma unroll
          for (int i = 0; i < 8; ++i) idx[i] = k0 + i < K ? __ldg(perm + k0 + i) : -1;
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) v[u][i] = idx[i] >= 0 ? raw[idx[i]] : 0.f;
      } else if (raw != nullptr) {
#pragma unroll
        for (int i = 0; i < 8; ++i) v[u][i] = k0 + i < kp ? raw[k0 + i] : 0.f;
      } else if (whole && x_vec) {
        D::load8(xr + k0, v[u]);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) v[u][i] = k0 + i < K ? D::load1(xr + k0 + i) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kStageGroups; ++u) {
      const int gi = gb + lane + u * static_cast<int>(blockDim.x);
      float s = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) s += v[u][i];
      s += __shfl_xor_sync(0xFFFFFFFFu, s, 1);
      s += __shfl_xor_sync(0xFFFFFFFFu, s, 2);
      if (gi < ng) {
        *reinterpret_cast<float4*>(a + swz(8 * gi)) = make_float4(v[u][0], v[u][1], v[u][2], v[u][3]);
        *reinterpret_cast<float4*>(a + swz(8 * gi + 4)) = make_float4(v[u][4], v[u][5], v[u][6], v[u][7]);
        if ((lane & 3) == 0) asum[gi >> 2] = s;
      }
    }
  }
  __syncthreads();
}

// Floats of shared memory before the apply kernel's folded activations: x and its chunk sums,
// padded to a 16-byte boundary.
__host__ __device__ __forceinline__ int x_floats(int kp) { return kp + ((kp / 32 + 3) & ~3); }

// The parts of one slot, read from the table by threads 0 .. max_parts − 1 in parallel and kept in
// shared memory. Low-rank parts also get their offsets in the apply kernel's flat index spaces:
// woff (folded activations, each part's rank padded to 32) and uoff (words of a rank-major Ut
// row, all parts).
enum PartKind : int { kNone = 0, kLowRank = 1, kDense = 2, kSparse24 = 3 };

struct PartDesc {
  Operand a;  // Vt (low-rank) or W (dense)
  Operand b;  // Ut, rank-major codes
  const __half* s;
  const int* perm;
  int kind, rank, roff, woff, uoff;
};

struct SlotParts {
  int64_t raw[kMaxParts * kMaxNF];  // the slot's table rows as read (coalesced, all threads)
  PartDesc p[kMaxParts];
  float c[kMaxParts];  // apply: Σ_j zu(j, G) w_j per low-rank part
  int w_total;         // folded activations, all low-rank parts (multiple of 32)
  int u_words;         // words of a rank-major Ut row, all low-rank parts
  int any_dense;
};

// Fill sp from the slot's table rows (copied by all threads, decoded by threads 0 .. max_parts − 1),
// then thread 0 lays out the flat index spaces. Ends synchronized.
__device__ __forceinline__ void load_parts(const int64_t* __restrict__ base, int max_parts, const Fields& f, SlotParts& sp) {
  // the rows come in as one flat coalesced copy (a short loop: this code runs cold, once per
  // block), then thread p decodes part p from shared memory
  for (int i = threadIdx.x; i < max_parts * f.nf; i += blockDim.x) sp.raw[i] = __ldg(base + i);
  __syncthreads();
  const int p = threadIdx.x;
  if (p < max_parts) {
    const int64_t* e = sp.raw + p * f.nf;
    const int64_t kind = e[f.kind];
    PartDesc& d = sp.p[p];
    d.kind = kind == f.kind_lowrank ? kLowRank : (kind == f.kind_dense ? kDense : (kind == f.kind_s24 ? kSparse24 : kNone));
    d.a = read_operand(e, f.a_bits);
    d.b = read_operand(e, f.b_bits);
    if (d.kind == kSparse24) {  // a 2:4 part has no operand B: its index stream travels there (codes, stride)
      d.b.codes = reinterpret_cast<const uint32_t*>(static_cast<uintptr_t>(e[f.a_idx]));
      d.b.stride = e[f.a_istride];
    }
    d.s = reinterpret_cast<const __half*>(static_cast<uintptr_t>(e[f.s]));
    d.perm = reinterpret_cast<const int*>(static_cast<uintptr_t>(e[f.perm]));
    d.rank = static_cast<int>(e[f.rank]);
    d.roff = static_cast<int>(e[f.roff]);
    sp.c[p] = 0.f;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int woff = 0, dense = 0, uw = 0;
    for (int q = 0; q < max_parts; ++q) {
      PartDesc& d = sp.p[q];
      dense |= d.kind == kDense;
      if (d.kind != kLowRank) continue;
      d.woff = woff;
      d.uoff = uw;
      woff += (d.rank + 31) & ~31;
      uw += static_cast<int>(d.b.stride);
    }
    sp.w_total = woff;
    sp.u_words = uw;
    sp.any_dense = dense;
  }
  __syncthreads();
}

// ---- shrink: t[row, j0 .. j0 + jb) for one row -------------------------------------------------------
// Dynamic shared memory: x_floats(kp) floats (a, asum), then kp floats (raw x for the permuted
// gather). Every thread of the block calls it; the warps of the block walk the rank rows.
template <class D>
__device__ __forceinline__ void shrink_item(const typename D::E* __restrict__ x, int64_t sx, float* __restrict__ t, int64_t st, const int64_t* __restrict__ tab,
                                            int max_parts, int row, int slot, int K, int j0, int jb, bool x_vec, const Fields& f, float* smem, SlotParts& sp) {
  const int kp = (K + 31) & ~31;
  float* a = smem;
  float* asum = smem + kp;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int j1 = j0 + jb;
  const typename D::E* xr = x + static_cast<int64_t>(row) * sx;
  float* raw = smem + x_floats(kp);
  copy_x<D>(xr, K, kp, x_vec, raw);  // in flight while the table rows are read; published by load_parts' barrier
  load_parts(tab + static_cast<int64_t>(slot) * max_parts * f.nf, max_parts, f, sp);
  // this block's rows of Vt into L2 while x is staged (lane 0 of each warp, the rows it walks)
  if (lane == 0) {
    for (int p = 0; p < max_parts; ++p) {
      const PartDesc& d = sp.p[p];
      if (d.kind != kLowRank) continue;
      for (int j = max(j0, d.roff) + warp; j < min(j1, d.roff + d.rank); j += nwarps) prefetch_l2(d.a.codes + static_cast<int64_t>(j - d.roff) * d.a.stride, d.a.stride * 4);
    }
  }
  const int* staged = reinterpret_cast<const int*>(uintptr_t{1});  // nothing staged yet (never a real pointer)
  for (int p = 0; p < max_parts; ++p) {
    const PartDesc& d = sp.p[p];
    if (d.kind != kLowRank) continue;
    const int lo = max(j0, d.roff), hi = min(j1, d.roff + d.rank);
    if (lo >= hi) continue;  // block-uniform
    if (d.perm != staged) {  // block-uniform; the blocks of one delta share one permutation
      __syncthreads();
      stage_x<D>(xr, d.perm, K, kp, x_vec, a, asum, raw);
      staged = d.perm;
    }
    const Operand vt = d.a;
    for (int j = lo + warp; j < hi; j += nwarps) {
      const float acc = warp_sum(row_dot_bits<true>(vt, j - d.roff, kp / 32, a, asum, lane));
      if (lane == 0) t[static_cast<int64_t>(row) * st + j] = acc;
    }
  }
}

// launch 1 of the two-launch path. Grid (row group, tile of jb rank rows).
template <class D>
__global__ void __launch_bounds__(kMaxShrinkWarps * 32)
    shrink_kernel(const typename D::E* __restrict__ x, int64_t sx, float* __restrict__ t, int64_t st, const int64_t* __restrict__ tab, int max_parts,
                  const int* __restrict__ row_idx, const int* __restrict__ gstart, const int* __restrict__ gslot, int K, int jb, bool x_vec, bool identity,
                  Fields f) {
  extern __shared__ float smem[];
  __shared__ SlotParts sp;
  // the apply grid may start now (programmatic dependent launch): its blocks stage x, read their
  // table rows and run the base GEMV, and wait for this grid only before they read t
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  const int g = blockIdx.x;
  const int slot = gslot[g];
  if (slot < 0) return;
  shrink_item<D>(x, sx, t, st, tab, max_parts, identity ? g : row_idx[gstart[g]], slot, K, static_cast<int>(blockIdx.y) * jb, jb, x_vec, f, smem, sp);
}

// ---- apply: y[row, n0 .. n0 + NB) ---------------------------------------------------------------
// How an apply item waits for t. Two launches: griddepcontrol.wait (returns at once when the grid
// was not launched as a programmatic dependent). One pass (done != nullptr): thread 0 waits until
// done[g] reaches a_tiles (every shrink item of the group has stored its t and counted itself);
// at its end the block counts itself in passed[g], and the group's last block zeroes both
// counters, so they are zero again for the next call (release_counters).
struct TWait {
  int* done;
  int* passed;
  int a_tiles;  // shrink items per group
  int b_tiles;  // apply items per group
};

// Phase timestamps of the one-pass kernel (benchmarks: ``trace``), in ns of the global timer.
enum TracePhase : int { kTrStart = 0, kTrClaimed = 1, kTrItems = 2, kTrGemv = 3, kTrWaited = 4, kTrEnd = 5, kTrStaged = 6, kTrSlots = 8 };

__device__ __forceinline__ void trace_at(long long* tr, int phase) {
  if (tr != nullptr && threadIdx.x == 0) {
    long long v;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(v));
    tr[phase] = v;
  }
}

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void wait_for_t(const TWait& tw, int g) {
  if (tw.done == nullptr) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    return;
  }
  if (threadIdx.x == 0) {
    while (ld_acquire(tw.done + g) < tw.a_tiles) __nanosleep(32);
  }
  __syncthreads();
}

// One pass, thread 0 at the end of an apply block that waited: count it in passed[g]; the
// group's last block zeroes both counters (every block of the group is past its wait by then).
__device__ __forceinline__ void release_counters(const TWait& tw, int g) {
  if (tw.done != nullptr && threadIdx.x == 0 && atomicAdd(tw.passed + g, 1) == tw.b_tiles - 1) {
    tw.done[g] = 0;
    tw.passed[g] = 0;
  }
}

// The NB rows of the base weight an apply block reads, into L2 (a warp's first NR lanes: its rows).
template <class D, int NR>
__device__ __forceinline__ void prefetch_base(const typename D::E* __restrict__ wb, int64_t swb, int n0, int N, int K) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane < NR && n0 + warp * NR + lane < N) prefetch_l2(wb + static_cast<int64_t>(n0 + warp * NR + lane) * swb, static_cast<int64_t>(K) * sizeof(typename D::E));
}

__device__ __forceinline__ void prefetch_line(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// One low-rank part's share of an apply warp's NR outputs: acc[r] += Σ_j q_{n_r j} w_j over the
// part's rank-major Ut rows n_r = nws + r. The NR · nc (row, 32-code chunk) items go to the lanes
// in turn, so a part of one or two chunks per row (Delta-CoMe's 8- and 3-bit groups) takes one
// step for all NR rows, and every lane of a step decodes the same width (no divergence). Words
// come from the block's shared-memory copy of its Ut rows (cbase: at the part's offset, rows of
// u_words from output n0) or from global memory.
template <int B, int NR>
__device__ __forceinline__ void ut_items(const Operand& ut, const uint32_t* __restrict__ cbase, int u_words, const float* __restrict__ wp, int nc, int nws,
                                         int n0, int N, int lane, float (&acc)[NR]) {
  const int items = NR * nc;
#pragma unroll 1
  for (int it = lane; it < items; it += 32) {
    const int r = it / nc, c = it - r * nc;
    const int n = min(nws + r, N - 1);  // clamped rows are read, not written
    const int64_t w0 = static_cast<int64_t>(c) * B;
    uint32_t q[B];
    if (cbase != nullptr) {
      const uint32_t* crow = cbase + (n - n0) * u_words;
#pragma unroll
      for (int i = 0; i < B; ++i) q[i] = w0 + i < ut.stride ? crow[w0 + i] : 0u;
    } else {
      const uint32_t* urow = ut.codes + static_cast<int64_t>(n) * ut.stride;
#pragma unroll
      for (int i = 0; i < B; ++i) q[i] = w0 + i < ut.stride ? __ldg(urow + w0 + i) : 0u;
    }
    const float d = chunk_dot<B>(q, wp, c);
#pragma unroll
    for (int rr = 0; rr < NR; ++rr) acc[rr] += rr == r ? d : 0.f;
  }
}

// Σ_i q_i x_i over the 8 DB-bit codes of one 8-input vector (code i at bits [DB i, DB i + DB) of c).
template <int DB>
__device__ __forceinline__ float vec8_dot(uint32_t c, const float (&xv)[8]) {
  float d0 = 0.f, d1 = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint32_t q = (c >> (DB * i)) & ((1u << DB) - 1u);
    float& d = (i & 1) ? d1 : d0;
    if constexpr (DB == 1) {
      d += q ? xv[i] : 0.f;
    } else {
      d = fmaf(__uint_as_float(q | 0x4B000000u) - kMagic, xv[i], d);
    }
  }
  return d0 + d1;
}

// A fused apply warp's base GEMV: acc[r] = Σ_k W[n_r, k] a[k] over its NR rows n_r = nrow[r]
// (16-byte loads of D::kVec inputs, kChunksInFlight per row ahead; rows 16-byte aligned, K a
// multiple of D::kVec). DB > 0: one dense DB-bit delta part (``op``: BitDelta q1, RTN q2) folds in
// on the way. The codes of a vector's 8 inputs are DB bytes of the row's bit stream, loaded beside
// the weights, and multiply the activations the base product already holds in registers: the
// delta costs no shared-memory traffic and no second pass. Per scale group g it adds s_g Σ q x;
// the zeros' share − Σ_g s_g z_g Σ_{k ∈ g} x_k comes from the chunk sums ``asum`` after the loop
// (a row-wide group takes its scale once, at the end).
// (A variant that streamed the weights through a cp.async ring in shared memory, 8 vectors per
// lane in flight, was slower: H100, 4096²: 27.1 vs 24.4 µs for the base alone, BitDelta's decode
// step 548 vs 492 µs; bench/results/kernels_h100_s9/call3.)
template <class D, int NR, int DB>
__device__ __forceinline__ void base_gemv(const typename D::E* __restrict__ wb, int64_t swb, const int (&nrow)[NR], int K, const float* __restrict__ a,
                                          const float* __restrict__ asum, const Operand* op, int lane, float (&acc)[NR]) {
  constexpr int V = D::kVec;
  using CT = typename std::conditional<DB == 2, uint16_t, uint8_t>::type;
  const int nv = K / V;
  const CT* crow[NR];
  float dq[NR];
  bool row_group = true;
  if constexpr (DB > 0) {
    static_assert(V == 8, "codes fold in by 8-input vectors");
    row_group = op->group >= K;
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      crow[r] = reinterpret_cast<const CT*>(op->codes + static_cast<int64_t>(nrow[r]) * op->stride);
      dq[r] = 0.f;
    }
  }
  for (int v0 = lane; v0 < nv; v0 += 32 * kChunksInFlight) {
    uint4 q[NR][kChunksInFlight];
    CT c[NR][kChunksInFlight];
#pragma unroll
    for (int u = 0; u < kChunksInFlight; ++u) {
      const int v = v0 + 32 * u;
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        q[r][u] = v < nv ? __ldg(reinterpret_cast<const uint4*>(wb + static_cast<int64_t>(nrow[r]) * swb) + v) : make_uint4(0, 0, 0, 0);
        if constexpr (DB > 0) c[r][u] = v < nv ? __ldg(crow[r] + v) : CT(0);
      }
    }
#pragma unroll
    for (int u = 0; u < kChunksInFlight; ++u) {
      const int v = v0 + 32 * u;
      if (v < nv) {
        float xv[V];
#pragma unroll
        for (int e = 0; e < V; e += 4) {
          const float4 xx = load4(a, V * v + e);
          xv[e] = xx.x;
          xv[e + 1] = xx.y;
          xv[e + 2] = xx.z;
          xv[e + 3] = xx.w;
        }
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          float wv[V];
          D::unpack(q[r][u], wv);
#pragma unroll
          for (int e = 0; e < V; ++e) acc[r] = fmaf(wv[e], xv[e], acc[r]);
          if constexpr (DB > 0) {
            const float d = vec8_dot<DB>(c[r][u], xv);
            if (row_group) {
              dq[r] += d;
            } else {
              const int64_t si = static_cast<int64_t>(nrow[r]) * op->srow + (static_cast<int64_t>(v) * 8) / op->group;
              acc[r] = fmaf(__half2float(__ldg(op->scales + si)), d, acc[r]);
            }
          }
        }
      }
    }
  }
  if constexpr (DB > 0) {
    // the zeros: − Σ_g s_g z_g Σ_{k ∈ g} x_k over this lane's 32-input chunks (groups hold whole chunks)
    const int nch = (K + 31) / 32;  // asum is 0 past K
    float xs = 0.f;  // row-wide group: Σ x over this lane's chunks, the same for every row
    if (row_group) {
      for (int ch = lane; ch < nch; ch += 32) xs += asum[ch];
    }
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      const int64_t sb = static_cast<int64_t>(nrow[r]) * op->srow;
      if (row_group) {
        const float z = op->zeros != nullptr ? static_cast<float>(__ldg(op->zeros + sb)) : op->zc;
        acc[r] = fmaf(__half2float(__ldg(op->scales + sb)), fmaf(-z, xs, dq[r]), acc[r]);
      } else {
        float zs = 0.f;
        for (int ch = lane; ch < nch; ch += 32) {
          const int64_t si = sb + (static_cast<int64_t>(ch) * 32) / op->group;
          const float z = op->zeros != nullptr ? static_cast<float>(__ldg(op->zeros + si)) : op->zc;
          zs = fmaf(__half2float(__ldg(op->scales + si)) * z, asum[ch], zs);
        }
        acc[r] -= zs;
      }
    }
  }
}

// x[row] as raw 16-byte vectors into shared memory (nv of them; x 16-byte aligned), for lean_rows;
// no synchronization (the caller's next __syncthreads publishes it).
__device__ __forceinline__ void copy_x16(const void* __restrict__ xr, int nv, uint4* __restrict__ dst) {
  const uint4* src = reinterpret_cast<const uint4*>(xr);
  for (int i = threadIdx.x; i < nv; i += blockDim.x) dst[i] = __ldg(src + i);
}

// The lean base GEMV (lean_kernel below; also the fused apply's when its slot has no dense part):
constexpr int kGemvU = 4;  // vectors per row a lane has in flight, per buffer

// A warp's NR rows (nrow) against x in shared memory (xs: K / 8 raw 16-byte vectors); DB > 0:
// the folded part's codes (op). Returns the lanes' partial sums in acc.
template <class D, int NR, int DB>
__device__ __forceinline__ void lean_rows(const typename D::E* __restrict__ wb, int64_t swb, const int (&nrow)[NR], int nv, const uint4* __restrict__ xs,
                                          const Operand& op, int K, int lane, float (&acc)[NR]) {
  using CT = typename std::conditional<DB == 2, uint16_t, uint8_t>::type;
  constexpr int U = kGemvU;
  const uint4* wrow[NR];
  const CT* crow[NR];
  float dq[NR];
  const bool row_group = DB > 0 && op.group >= K;
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    wrow[r] = reinterpret_cast<const uint4*>(wb + static_cast<int64_t>(nrow[r]) * swb);
    crow[r] = DB > 0 ? reinterpret_cast<const CT*>(op.codes + static_cast<int64_t>(nrow[r]) * op.stride) : nullptr;
    dq[r] = 0.f;
  }
  float xsum = 0.f;  // Σ x over this lane's vectors (row-wide group: the zero's share)
  uint4 cur[NR][U], nxt[NR][U];
  CT cc[NR][U], nc[NR][U];
  auto load = [&](int v0, uint4(&q)[NR][U], CT(&c)[NR][U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = v0 + 32 * u;
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        q[r][u] = v < nv ? __ldg(wrow[r] + v) : make_uint4(0, 0, 0, 0);
        if constexpr (DB > 0) c[r][u] = v < nv ? __ldg(crow[r] + v) : CT(0);
      }
    }
  };
  load(lane, cur, cc);
  for (int v0 = lane; v0 < nv; v0 += 32 * U) {
    if (v0 + 32 * U < nv) load(v0 + 32 * U, nxt, nc);  // the next step's vectors, in flight during this one
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = v0 + 32 * u;
      if (v < nv) {
        float xv[8];
        D::unpack(xs[v], xv);
        float sx = 0.f;
        if constexpr (DB > 0) {
#pragma unroll
          for (int e = 0; e < 8; ++e) sx += xv[e];
          xsum += sx;
        }
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          float wv[8];
          D::unpack(cur[r][u], wv);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r] = fmaf(wv[e], xv[e], acc[r]);
          if constexpr (DB > 0) {
            const float d = vec8_dot<DB>(cc[r][u], xv);
            if (row_group) {
              dq[r] += d;
            } else {
              const int64_t si = static_cast<int64_t>(nrow[r]) * op.srow + (static_cast<int64_t>(v) * 8) / op.group;
              const float z = op.zeros != nullptr ? static_cast<float>(__ldg(op.zeros + si)) : op.zc;
              acc[r] = fmaf(__half2float(__ldg(op.scales + si)), fmaf(-z, sx, d), acc[r]);
            }
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        cur[r][u] = nxt[r][u];
        if constexpr (DB > 0) cc[r][u] = nc[r][u];
      }
    }
  }
  if constexpr (DB > 0) {
    if (row_group) {
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        const int64_t sb = static_cast<int64_t>(nrow[r]) * op.srow;
        const float z = op.zeros != nullptr ? static_cast<float>(__ldg(op.zeros + sb)) : op.zc;
        acc[r] = fmaf(__half2float(__ldg(op.scales + sb)), fmaf(-z, xsum, dq[r]), acc[r]);
      }
    }
  }
}

// The rank-major Ut rows n0 .. n0 + nb − 1 of every low-rank part into shared memory:
// ucache[nn · u_words + uoff_p + word] (kU independent loads per thread in flight; rows past N
// read row N − 1, never used). Every thread of the block calls it.
__device__ __forceinline__ void stage_ucache(uint32_t* __restrict__ ucache, const SlotParts& sp, int n0, int nb, int N, int u_words) {
  constexpr int kU = 4;
  for (int ib = threadIdx.x; ib < nb * u_words; ib += blockDim.x * kU) {
    uint32_t q[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int i = ib + u * static_cast<int>(blockDim.x);
      q[u] = 0u;
      if (i < nb * u_words) {
        const int nn = i / u_words, w = i - nn * u_words;
        int p = 0;
        while (sp.p[p].kind != kLowRank || w >= sp.p[p].uoff + sp.p[p].b.stride) ++p;
        const int n = min(n0 + nn, N - 1);
        q[u] = __ldg(sp.p[p].b.codes + static_cast<int64_t>(n) * sp.p[p].b.stride + (w - sp.p[p].uoff));
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int i = ib + u * static_cast<int>(blockDim.x);
      if (i < nb * u_words) ucache[i] = q[u];
    }
  }
}

// Dynamic shared memory: [x: x_floats(kp) floats (a, asum), when fused or with dense parts]
// then w [wlen] floats (each low-rank part's folded activations, padded to 32). Every thread of
// the block calls it; with FUSE, y[row] is overwritten (base GEMV + delta), else added to.
template <class D, int NR, bool FUSE>
__device__ __forceinline__ void apply_item(const typename D::E* __restrict__ x, int64_t sx, typename D::E* __restrict__ y, int64_t sy, const float* __restrict__ t,
                                           int64_t st, const typename D::E* __restrict__ wb, int64_t swb, const int64_t* __restrict__ tab, int max_parts,
                                           int g, int row, int slot, int n0, int N, int K, bool stage_dense, bool base_vec, bool x_vec, bool ucache_ok, bool raw_ok,
                                           const Fields& f, float* smem, SlotParts& sp, const TWait& tw, long long* tr = nullptr, int nsub = 1) {
  constexpr int kU = 4;  // folded activations a thread loads before its first store
  constexpr int NB = kApplyWarps * NR;
  // sub-tiles of NB outputs per block (unfused only): the block's prologue (table rows, the fold
  // factors, t) is paid once for NB · nsub outputs, all in one scale group of every Ut
  if constexpr (FUSE) nsub = 1;
  const int span = NB * nsub;
  const int kp = (K + 31) & ~31;
  float* a = smem;
  float* asum = smem + kp;
  float* wsm = (FUSE || stage_dense) ? smem + x_floats(kp) : smem;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const typename D::E* xr = x + static_cast<int64_t>(row) * sx;
  const bool has_delta = slot >= 0;
  if (has_delta) {
    load_parts(tab + static_cast<int64_t>(slot) * max_parts * f.nf, max_parts, f, sp);
    // this block's rank-major Ut rows into L2 while t is computed (a thread per (part, output)),
    // and the lines of Ut's scales and zeros and of s that the fold reads (a thread per rank)
    for (int i = threadIdx.x; i < max_parts * span; i += blockDim.x) {
      const PartDesc& d = sp.p[i / span];
      const int n = n0 + i % span;
      if (d.kind == kLowRank && n < N) prefetch_l2(d.b.codes + static_cast<int64_t>(n) * d.b.stride, d.b.stride * 4);
    }
    for (int p = 0; p < max_parts; ++p) {
      const PartDesc& d = sp.p[p];
      if (d.kind != kLowRank) continue;
      for (int j = threadIdx.x; j < d.rank; j += blockDim.x) {
        const int64_t si = static_cast<int64_t>(j) * d.b.srow + static_cast<int64_t>(n0) / d.b.group;
        prefetch_line(d.b.scales + si);
        if (d.b.zeros != nullptr) prefetch_line(d.b.zeros + si);
        if (d.s != nullptr && (j & 63) == 0) prefetch_line(d.s + j);
      }
    }
  }
  // fused without dense parts (Delta-CoMe): x stays 16-bit in shared memory for the lean base
  // GEMV (lean_rows: double-buffered loads; nothing else here reads x); otherwise fp32 with chunk sums
  const bool raw_x = FUSE && NR <= 2 && raw_ok && D::kVec == 8 && base_vec && x_vec && !(has_delta && sp.any_dense);  // block-uniform
  if (raw_x) {
    copy_x16(xr, K / 8, reinterpret_cast<uint4*>(a));
    __syncthreads();
  } else if (FUSE || (has_delta && sp.any_dense)) {
    stage_x<D>(xr, nullptr, K, kp, x_vec, a, asum, nullptr);  // block-uniform; synchronizes
  }

  // Before the base GEMV, everything of the low-rank products that does not depend on t comes
  // into shared memory, so that its loads' latency hides behind the GEMV's stream rather than
  // following it (after the GEMV it cost ~5 µs per call at 4096², bench/results/kernels_h100_s5):
  // the fold's factors wsm[woff_p + swz(j)] = su(j, G) · s_j and zsm[i] = zu(j, G), and, when
  // they fit (ucache), the block's rank-major Ut rows: ucache[nn · u_words + uoff_p + word] for
  // its NB outputs nn.
  const int w_total = has_delta ? sp.w_total : 0;
  float* zsm = wsm + w_total;
  uint32_t* ucache = reinterpret_cast<uint32_t*>(zsm + w_total);
  for (int ib = threadIdx.x - lane; ib < w_total; ib += blockDim.x * kU) {
    float sc[kU], z[kU];
    int pi[kU], jj[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int i = ib + lane + u * static_cast<int>(blockDim.x);
      sc[u] = z[u] = 0.f;
      pi[u] = -1;
      jj[u] = 0;
      if (i < w_total) {
        int p = 0;
        while (sp.p[p].kind != kLowRank || i >= sp.p[p].woff + ((sp.p[p].rank + 31) & ~31)) ++p;
        const PartDesc& d = sp.p[p];
        const int j = i - d.woff;
        pi[u] = p;
        jj[u] = j;
        if (j < d.rank) {
          const Operand& ut = d.b;
          const int64_t si = static_cast<int64_t>(j) * ut.srow + static_cast<int64_t>(n0) / ut.group;  // one group per block (loader-checked)
          z[u] = ut.zeros != nullptr ? static_cast<float>(__ldg(ut.zeros + si)) : ut.zc;
          sc[u] = __half2float(__ldg(ut.scales + si)) * (d.s != nullptr ? __half2float(__ldg(d.s + j)) : 1.f);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int i = ib + lane + u * static_cast<int>(blockDim.x);
      if (pi[u] >= 0) {
        wsm[sp.p[pi[u]].woff + swz(jj[u])] = sc[u];
        zsm[i] = z[u];
      }
    }
  }
  // the cache holds NB rows: one sub-tile only (refilling it per sub-tile, with two barriers each,
  // was slower than direct loads: H100, bench/results/kernels_h100_s6/call2)
  const int u_words = has_delta && ucache_ok && nsub == 1 ? sp.u_words : 0;
  stage_ucache(ucache, sp, n0, NB, N, u_words);
  trace_at(tr, kTrStaged);

  float acc[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) acc[r] = 0.f;
  const int nw = n0 + warp * NR;  // this warp's first output
  const bool active = nw < N;
  int nrow[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) nrow[r] = min(nw + r, N - 1);  // clamped rows are read, not written

  int dq = -1;  // fused: the dense part folded into the base GEMV's loop (base_gemv), if any
  if constexpr (FUSE) {
    // base GEMV first: it does not need t, so with a programmatic dependent launch it runs while
    // the shrink launch is still computing t
    if constexpr (D::kVec == 8) {
      if (has_delta && base_vec) {
        for (int q = 0; q < max_parts && dq < 0; ++q) {
          const int b = sp.p[q].a.bits;
          if (sp.p[q].kind == kDense && (b == 1 || b == 2)) dq = q;
        }
      }
    }
    if (active && raw_x) {
      if constexpr (D::kVec == 8) lean_rows<D, NR, 0>(wb, swb, nrow, K / 8, reinterpret_cast<const uint4*>(a), Operand{}, K, lane, acc);
    } else if (active && base_vec) {
      if constexpr (D::kVec == 8) {
        if (dq >= 0 && sp.p[dq].a.bits == 1) {
          base_gemv<D, NR, 1>(wb, swb, nrow, K, a, asum, &sp.p[dq].a, lane, acc);
        } else if (dq >= 0) {
          base_gemv<D, NR, 2>(wb, swb, nrow, K, a, asum, &sp.p[dq].a, lane, acc);
        } else {
          base_gemv<D, NR, 0>(wb, swb, nrow, K, a, asum, nullptr, lane, acc);
        }
      } else {
        base_gemv<D, NR, 0>(wb, swb, nrow, K, a, asum, nullptr, lane, acc);
      }
    } else if (active) {  // rows of the base weight not 16-byte aligned: element by element
      for (int k = lane; k < K; k += 32) {
        const float xv = a[swz(k)];
#pragma unroll
        for (int r = 0; r < NR; ++r) acc[r] = fmaf(D::load1(wb + static_cast<int64_t>(nrow[r]) * swb + k), xv, acc[r]);
      }
    }
  }

  trace_at(tr, kTrGemv);

  // t comes from the shrink (launch or items): wait for it
  if (has_delta) wait_for_t(tw, g);
  trace_at(tr, kTrWaited);

  // fold t in: w = (su s)_j t_j, c_p = Σ_j zu(j, G) w_j; one flat index space over all low-rank
  // parts, whole warps per step (shuffles below)
  for (int ib = threadIdx.x - lane; ib < w_total; ib += blockDim.x * kU) {
    float tv[kU];
    int pi[kU], jj[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int i = ib + lane + u * static_cast<int>(blockDim.x);
      tv[u] = 0.f;
      pi[u] = -1;
      jj[u] = 0;
      if (i < w_total) {
        int p = 0;
        while (sp.p[p].kind != kLowRank || i >= sp.p[p].woff + ((sp.p[p].rank + 31) & ~31)) ++p;
        const PartDesc& d = sp.p[p];
        const int j = i - d.woff;
        pi[u] = p;
        jj[u] = j;
        if (j < d.rank) tv[u] = __ldcg(t + static_cast<int64_t>(row) * st + d.roff + j);  // L2: written by the shrink
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int i = ib + lane + u * static_cast<int>(blockDim.x);
      float cz = 0.f;
      if (pi[u] >= 0) {
        float& w = wsm[sp.p[pi[u]].woff + swz(jj[u])];
        w *= tv[u];
        cz = zsm[i] * w;
      }
      unsigned todo = __ballot_sync(0xFFFFFFFFu, pi[u] >= 0);
      while (todo) {  // one warp sum per part present in the warp (usually one)
        const int pl = __shfl_sync(0xFFFFFFFFu, pi[u], __ffs(todo) - 1);
        const float sum = warp_sum(pi[u] == pl ? cz : 0.f);
        if (lane == 0) atomicAdd(&sp.c[pl], sum);
        todo &= ~__ballot_sync(0xFFFFFFFFu, pi[u] == pl);
      }
    }
  }
  __syncthreads();

  // after the last __syncthreads: a warp leaves once its rows run past N
  for (int sub = 0; sub < nsub; ++sub) {
    const int nws = nw + sub * NB;  // this warp's first output in this sub-tile
    if (nws >= N) break;
    if (sub > 0) {
#pragma unroll
      for (int r = 0; r < NR; ++r) acc[r] = 0.f;
    }
    if (has_delta) {
      // low-rank parts, one at a time (its bit width is warp-uniform): Σ_j q_nj w_j over the
      // (row, chunk) items of the warp's NR rows, one item per lane per step; − c below
      for (int pp = 0; pp < max_parts; ++pp) {
        const PartDesc& d = sp.p[pp];
        if (d.kind != kLowRank) continue;
        const int nc = (d.rank + 31) / 32;
        const float* wp = wsm + d.woff;
        const uint32_t* cbase = u_words > 0 ? ucache + d.uoff : nullptr;
        switch (d.b.bits) {
          case 1:
            ut_items<1, NR>(d.b, cbase, u_words, wp, nc, nws, n0, N, lane, acc);
            break;
          case 2:
            ut_items<2, NR>(d.b, cbase, u_words, wp, nc, nws, n0, N, lane, acc);
            break;
          case 3:
            ut_items<3, NR>(d.b, cbase, u_words, wp, nc, nws, n0, N, lane, acc);
            break;
          case 4:
            ut_items<4, NR>(d.b, cbase, u_words, wp, nc, nws, n0, N, lane, acc);
            break;
          case 8:
            ut_items<8, NR>(d.b, cbase, u_words, wp, nc, nws, n0, N, lane, acc);
            break;
          default:
            break;
        }
      }
      if (lane == 0) {
        float ctot = 0.f;
        for (int q = 0; q < max_parts; ++q) ctot += sp.p[q].kind == kLowRank ? sp.c[q] : 0.f;
#pragma unroll
        for (int r = 0; r < NR; ++r) acc[r] -= ctot;
      }
      // dense parts: whole packed rows against x
      for (int q = 0; q < max_parts; ++q) {
        if (sp.p[q].kind != kDense || q == dq) continue;
        const Operand w = sp.p[q].a;
#pragma unroll 1
        for (int r = 0; r < NR; ++r) {  // one copy of the row decode (see row_dot)
          const float d = row_dot_bits<true>(w, min(nws + r, N - 1), kp / 32, a, asum, lane);
#pragma unroll
          for (int rr = 0; rr < NR; ++rr) acc[rr] += rr == r ? d : 0.f;
        }
      }
    }

#pragma unroll
    for (int r = 0; r < NR; ++r) acc[r] = warp_sum(acc[r]);
    trace_at(tr, kTrEnd);  // thread 0: warp 0 is active whenever any warp is
    if (lane == 0) {
      typename D::E* yr = y + static_cast<int64_t>(row) * sy;
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        if (nws + r < N) yr[nws + r] = FUSE ? D::from_float(acc[r]) : D::from_float(D::to_float(yr[nws + r]) + acc[r]);
      }
    }
  }  // sub-tiles
  if (has_delta) release_counters(tw, g);
}

// launch 2 of the two-launch path. Grid (output tile of NB · nsub rows, row group); fused: nsub = 1.
// MINB 2: at most 128 registers (fused default); MINB 3: at most 80, 3 blocks per SM (some spills).
template <class D, int NR, bool FUSE, int MINB>
__global__ void __launch_bounds__(kApplyWarps * 32, MINB)
    apply_kernel(const typename D::E* __restrict__ x, int64_t sx, typename D::E* __restrict__ y, int64_t sy, const float* __restrict__ t, int64_t st,
                 const typename D::E* __restrict__ wb, int64_t swb, const int64_t* __restrict__ tab, int max_parts, const int* __restrict__ row_idx,
                 const int* __restrict__ gstart, const int* __restrict__ gslot, int N, int K, bool stage_dense, bool base_vec, bool x_vec, bool identity,
                 bool ucache_ok, bool raw_ok, Fields f, int nsub) {
  extern __shared__ float smem[];
  __shared__ SlotParts sp;
  constexpr int NB = kApplyWarps * NR;
  const int g = blockIdx.y;
  const int slot = gslot[g];
  if (!FUSE && slot < 0) return;  // rows without a delta are never touched
  const int n0 = static_cast<int>(blockIdx.x) * NB * (FUSE ? 1 : nsub);
  if (FUSE) prefetch_base<D, NR>(wb, swb, n0, N, K);  // this warp's base rows into L2 during the prologue
  const TWait tw{nullptr, nullptr, 0, 0};
  apply_item<D, NR, FUSE>(x, sx, y, sy, t, st, wb, swb, tab, max_parts, g, identity ? g : row_idx[gstart[g]], slot, n0, N, K, stage_dense, base_vec, x_vec,
                          ucache_ok, raw_ok, f, smem, sp, tw, nullptr, nsub);
}

// ---- lean fused GEMV: y[row] = base · x[row] + one folded dense 1-/2-bit part --------------------
// For fused batches whose slots hold at most one part, dense with 1- or 2-bit codes (BitDelta q1,
// RTN q1 / q2), and no delta at all (slot −1: the base GEMV alone), with 16-bit activations and
// 16-byte aligned base rows. The fused apply above pays for its generality on this path: x staged
// as swizzled fp32 with chunk sums (twice the shared memory and its traffic), a slot's table rows
// decoded into shared memory, NR = 2 rows per warp at ≤ 128 registers. Here x stays in its 16-bit
// form in shared memory (a warp reads 512 contiguous bytes per step), a warp takes one row, and
// its next kGemvU 16-byte vectors are loaded while the current ones are multiplied (double
// buffered, ~50-60 registers: 4+ blocks per SM). The codes of a vector's 8 inputs are DB bytes of
// the row's bit stream, loaded beside the weights; each scale group adds s_g (Σ q x − z_g Σ x).
// H100, one row, designs measured against cuBLAS before this one was chosen:
// bench/device/gemv_lab.py, bench/results/kernels_h100_s10/call1.
// Grid (output tile of kApplyWarps · NR rows, row group). DB: the code width of every dense part
// of the table (the host checks: cuda.lean_bits); a slot's part 0 is read straight from the table
// (its kind and operand fields: a few cached loads, no shared copy), and a block whose slot has
// none runs the base GEMV alone. One width per kernel keeps the registers of its own path. One row
// per warp is bounded to 4 blocks per SM (sm_90: 47 registers base alone, 62 with 1- or 2-bit
// codes, no spills): at 3 (66 registers) the 512 blocks of a 4096-output layer took 1.3 waves and
// BitDelta at 4096×11008 / 4096×14336 ran 57.0 / 69.2 µs against the lab's 51.6 / 60.3 at 4
// blocks per SM (bench/results/kernels_h100_s10/call2).
template <class D, int NR, int DB>
__global__ void __launch_bounds__(kApplyWarps * 32, NR == 1 ? 4 : 2)
    lean_kernel(const typename D::E* __restrict__ x, int64_t sx, typename D::E* __restrict__ y, int64_t sy, const typename D::E* __restrict__ wb, int64_t swb,
                const int64_t* __restrict__ tab, int max_parts, const int* __restrict__ row_idx, const int* __restrict__ gstart, const int* __restrict__ gslot,
                int N, int K, bool identity, Fields f) {
  extern __shared__ uint4 xs[];
  constexpr int NB = kApplyWarps * NR;
  const int g = blockIdx.y;
  const int slot = gslot[g];
  const int row = identity ? g : row_idx[gstart[g]];
  const int nv = K / D::kVec;
  copy_x16(x + static_cast<int64_t>(row) * sx, nv, xs);
  Operand op{};
  bool folded = false;
  if (DB > 0 && slot >= 0) {
    const int64_t* e = tab + static_cast<int64_t>(slot) * max_parts * f.nf;  // part 0
    if (__ldg(e + f.kind) == f.kind_dense) {
      int64_t raw[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) raw[i] = __ldg(e + f.a_bits + i);
      op = read_operand(raw, 0);
      folded = true;
    }
  }
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nw = static_cast<int>(blockIdx.x) * NB + warp * NR;
  if (nw >= N) return;
  int nrow[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) nrow[r] = min(nw + r, N - 1);  // clamped rows are read, not written
  float acc[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) acc[r] = 0.f;
  if (folded) {
    lean_rows<D, NR, DB>(wb, swb, nrow, nv, xs, op, K, lane, acc);
  } else {
    lean_rows<D, NR, 0>(wb, swb, nrow, nv, xs, op, K, lane, acc);
  }
#pragma unroll
  for (int r = 0; r < NR; ++r) acc[r] = warp_sum(acc[r]);
  if (lane == 0) {
    typename D::E* yr = y + static_cast<int64_t>(row) * sy;
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      if (nw + r < N) yr[nw + r] = D::from_float(acc[r]);
    }
  }
}

// ---- one pass: shrink and fused apply in one launch ----------------------------------------------------
// The two-launch path pays for the shrink's whole chain of dependent loads before the apply can
// finish, and for the gap between the grids. Here one grid does both: the apply blocks (one per
// output tile and row group) start their base GEMV at once, and the shrink items (rank tiles)
// run beside them, so their latency hides behind the base weight's stream; an apply block waits
// for its group's t only after its base GEMV (wait_for_t).
//
// Shrink items are claimed from a ticket counter, never assigned by block index: blocks
// [0, a_blocks) claim until the tickets run out and then leave; apply blocks claim too (usually
// getting none) before their own item. A block that waits has claimed until the counter ran dry,
// so every shrink item is held by a block that is running and finishes it without waiting:
// no deadlock however many blocks are resident. Every block makes exactly one failing claim, so
// the block that draws ticket n_a + gridDim.x − 1 is the last and zeroes the counter.
// Scratch (``sync``, int32, zero between calls): [0] tickets, [1, 1 + G) done, [1 + G, 1 + 2G) passed.
template <class D, int NR, int MINB>
__global__ void __launch_bounds__(kApplyWarps * 32, MINB)
    onepass_kernel(const typename D::E* __restrict__ x, int64_t sx, typename D::E* __restrict__ y, int64_t sy, float* __restrict__ t, int64_t st,
                   const typename D::E* __restrict__ wb, int64_t swb, const int64_t* __restrict__ tab, int max_parts, const int* __restrict__ row_idx,
                   const int* __restrict__ gstart, const int* __restrict__ gslot, int N, int K, int jb, bool stage_dense, bool base_vec, bool x_vec,
                   bool identity, bool ucache_ok, bool raw_ok, bool prefetch, Fields f, int* __restrict__ sync, int groups, int a_tiles, int a_blocks, int b_tiles, long long* __restrict__ trace) {
  extern __shared__ float smem[];
  __shared__ SlotParts sp;
  __shared__ int ticket;
  constexpr int NB = kApplyWarps * NR;
  long long* tr = trace != nullptr ? trace + static_cast<int64_t>(blockIdx.x) * kTrSlots : nullptr;
  trace_at(tr, kTrStart);
  int items = 0;
  const bool apply_block = static_cast<int>(blockIdx.x) >= a_blocks;
  const int bi = static_cast<int>(blockIdx.x) - a_blocks;
  const int n0 = apply_block ? (bi % b_tiles) * NB : 0;
  // base rows into L2 while the tickets are drawn; off (prefetch = false), the shrink items' first
  // loads do not queue behind 128 KB of prefetch per apply block
  if (apply_block && prefetch) prefetch_base<D, NR>(wb, swb, n0, N, K);
  const int n_a = groups * a_tiles;
  for (;;) {
    __syncthreads();  // sp, ticket and the staged x are free again
    if (threadIdx.x == 0) ticket = atomicAdd(sync, 1);
    __syncthreads();
    const int a = ticket;
    if (a >= n_a) {
      if (threadIdx.x == 0 && a == n_a + static_cast<int>(gridDim.x) - 1) sync[0] = 0;
      break;
    }
    const int ag = a / a_tiles;
    const int aslot = gslot[ag];
    if (aslot < 0) continue;  // block-uniform; apply blocks of such a group do not wait
    shrink_item<D>(x, sx, t, st, tab, max_parts, identity ? ag : row_idx[gstart[ag]], aslot, K, (a % a_tiles) * jb, jb, x_vec, f, smem, sp);
    __syncthreads();  // every warp's t stores are done
    if (threadIdx.x == 0) {
      __threadfence();  // ... and visible device-wide before the count
      atomicAdd(sync + 1 + ag, 1);
    }
    ++items;
  }
  trace_at(tr, kTrClaimed);
  if (tr != nullptr && threadIdx.x == 0) tr[kTrItems] = items;
  if (!apply_block) return;
  const int g = bi / b_tiles;
  const TWait tw{sync + 1, sync + 1 + groups, a_tiles, b_tiles};
  apply_item<D, NR, true>(x, sx, y, sy, t, st, wb, swb, tab, max_parts, g, identity ? g : row_idx[gstart[g]], gslot[g], n0, N, K, stage_dense, base_vec,
                          x_vec, ucache_ok, raw_ok, f, smem, sp, tw, tr);
}

// ---- lookup-table apply: dense 1-/2-bit parts (BitDelta, RTN q1 / q2) and 2:4 s24q2 (DeltaZip) ----
// The decode above spends ~3.5 instructions per 1-bit code (extract, to float, FMA), which makes
// multi-delta batches issue-bound (ncu: DRAM 5-10 %, SM 54-72 %). Here a 4-bit nibble of codes is
// one shared-memory lookup and one add: per K step the block builds, from its row of x, a table of
// the 16 possible sums for every nibble position (kLutTables tables of 16 fp32: 32 KB), and each
// thread owns one output row and walks its packed row word by word (LUT-GEMM's idea, for the
// uniform integer codes of .dpk). All lanes of a warp look up the same table at once (one k, 32
// output rows): its 16 entries lie in 16 distinct banks, so lookups never conflict.
//   1-bit: a nibble is 4 codes, table i covers x[k0 + 4i .. + 4), entry e = Σ_c bit_c(e) x_c;
//   2-bit: a nibble is 2 codes, table i covers x[k0 + 2i .. + 2), entry e = (e & 3) x_0 + (e >> 2) x_1.
// Word w of a step holds nibbles for tables 8w .. 8w + 7 in both cases. Scales and zeros apply per
// scale group as in row_dot: Σ (q − z) s x = s (Σ q x − z Σ x), Σ x per 32-code chunk from csum.
constexpr int kLutThreads = 256;  // one output row per thread
constexpr int kLutTables = 512;   // nibble tables per K step: 2048 (1-bit) or 1024 (2-bit) codes of x
constexpr int kLutWords = 16;     // words of its row a thread loads at once (64 bytes)

// x[k .. k + C) as floats, 0 past K: one 8-byte (C = 4 16-bit values) or 4-byte (C = 2) load where
// aligned and inside K (ncu, session 12: the scalar loads used 8 of every 32-byte sector's bytes).
template <class D, int C>
__device__ __forceinline__ void lut_x(const typename D::E* __restrict__ xr, int k, int K, float (&v)[C]) {
  constexpr int kBytes = C * static_cast<int>(sizeof(typename D::E));
  if constexpr (sizeof(typename D::E) == 2 && (kBytes == 8 || kBytes == 4)) {
    if (k + C <= K && (reinterpret_cast<uintptr_t>(xr + k) & (kBytes - 1)) == 0) {
      if constexpr (kBytes == 8) {
        const uint2 u = __ldg(reinterpret_cast<const uint2*>(xr + k));
        D::pair(u.x, v[0], v[1]);
        D::pair(u.y, v[2], v[3]);
      } else {
        D::pair(__ldg(reinterpret_cast<const unsigned int*>(xr + k)), v[0], v[1]);
      }
      return;
    }
  }
#pragma unroll
  for (int c = 0; c < C; ++c) v[c] = k + c < K ? D::load1(xr + k + c) : 0.f;
}

// Tables and chunk sums for the step at k0 (x = 0 past K). Every thread of the block calls it.
// MODE 1 / 2: B-bit dense codes as above; MODE 24: a 2:4 part's 2-bit kept values with constant
// zero zc (DeltaZip): table i covers the block x[k0 + 4i .. + 4) of one kept pair, and a kept
// value's nibble (position i in bits 0-1, code q in bits 2-3) looks up (q − zc) x[k0 + 4i + pos];
// no chunk sums (the zero is in the tables).
template <class D, int MODE>
__device__ __forceinline__ void lut_build(const typename D::E* __restrict__ xr, int k0, int K, float* __restrict__ lut, float* __restrict__ csum, float zc = 0.f) {
  constexpr int B = MODE == 24 ? 1 : MODE;  // x per table: 4 / B
  constexpr int kCodes = 4 / B;           // codes per table
  constexpr int kPerChunk = 32 / kCodes;  // tables per 32-code chunk: 8 or 16
  const int lane = threadIdx.x & 31;
  // A thread writes its table's 4 quads of entries (16 bytes each) starting at quad (lane >> 1) & 3:
  // the 8 lanes of a quarter warp then write 8 distinct 16-byte bank groups at every store (in
  // quad order, tables 64 bytes apart put lanes 2 apart on the same banks: 12.6-way conflicts).
  const int rot = (lane >> 1) & 3;
  for (int i = threadIdx.x; i < kLutTables; i += blockDim.x) {  // kLutTables a multiple of blockDim: warp-uniform
    const int k = k0 + kCodes * i;
    float v[kCodes];
    lut_x<D, kCodes>(xr, k, K, v);
    float4* dst = reinterpret_cast<float4*>(lut + 16 * i);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int qq = (q + rot) & 3;  // entries 4 qq .. 4 qq + 3: e & 3 = 0..3, e >> 2 = qq
      const float hq = static_cast<float>(qq);
      float4 e;
      if constexpr (MODE == 24) {  // entry e = ((e >> 2) − zc) x[pos = e & 3]
        const float m = hq - zc;
        e = make_float4(m * v[0], m * v[1], m * v[2], m * v[3]);
      } else if constexpr (B == 1) {  // entry e = Σ_c bit_c(e) x_c: low pair from e & 3, high pair from qq
        const float h = ((qq & 1) ? v[2] : 0.f) + ((qq & 2) ? v[3] : 0.f);
        e = make_float4(h, v[0] + h, v[1] + h, (v[0] + v[1]) + h);
      } else {  // entry e = (e & 3) x_0 + (e >> 2) x_1
        const float h = hq * v[1];
        e = make_float4(h, v[0] + h, 2.f * v[0] + h, 3.f * v[0] + h);
      }
      dst[qq] = e;
    }
    if constexpr (MODE != 24) {
      float s = 0.f;
#pragma unroll
      for (int c = 0; c < kCodes; ++c) s += v[c];
#pragma unroll
      for (int off = 1; off < kPerChunk; off <<= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, off);
      if ((lane & (kPerChunk - 1)) == 0) csum[i / kPerChunk] = s;
    }
  }
}

// Shared-memory address of the tables: a word's 8 tables (16 fp32 each) take 512 bytes, and the
// lookups below write a nibble's byte offset into the low byte of the word's table address (PRMT),
// so the tables start on a 512-byte boundary (lut_dense_kernel's array, checked there).
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

template <int OFF>
__device__ __forceinline__ float lds_f32(uint32_t addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1+%2];" : "=f"(v) : "r"(addr), "n"(OFF));
  return v;
}

// Σ of the 8 lookups of one word of nibbles: nibble j indexes table j of the word's 8, at byte
// OFF + 64 j from ``tb`` (low byte 0). Two masks put the byte offsets (nibble · 4) of the even and
// the odd nibbles in the four bytes of e and o; one PRMT per nibble moves its byte into tb's low
// byte, and the load takes OFF + 64 j as its immediate: 3.5 instructions per nibble (SHF/LOP,
// PRMT, LDS, FADD), against 7 when the compiler forms each address (ncu / SASS: session 11).
template <int OFF>
__device__ __forceinline__ float lut_word(uint32_t w, uint32_t tb) {
  const uint32_t e = (w << 2) & 0x3C3C3C3Cu;  // nibbles 0, 2, 4, 6 (tables 0, 2, 4, 6)
  const uint32_t o = (w >> 2) & 0x3C3C3C3Cu;  // nibbles 1, 3, 5, 7
  float d0 = lds_f32<OFF + 0>(__byte_perm(e, tb, 0x7650));
  float d1 = lds_f32<OFF + 64>(__byte_perm(o, tb, 0x7650));
  d0 += lds_f32<OFF + 128>(__byte_perm(e, tb, 0x7651));
  d1 += lds_f32<OFF + 192>(__byte_perm(o, tb, 0x7651));
  d0 += lds_f32<OFF + 256>(__byte_perm(e, tb, 0x7652));
  d1 += lds_f32<OFF + 320>(__byte_perm(o, tb, 0x7652));
  d0 += lds_f32<OFF + 384>(__byte_perm(e, tb, 0x7653));
  d1 += lds_f32<OFF + 448>(__byte_perm(o, tb, 0x7653));
  return d0 + d1;
}

// Σ q x over chunk ci (words ci·B .. ci·B + B − 1 of q); ``tb``: the tables of q[0].
template <int B, int CI>
__device__ __forceinline__ float lut_chunk(const uint32_t (&q)[kLutWords], uint32_t tb) {
  if constexpr (B == 1) {
    return lut_word<512 * CI>(q[CI], tb);
  } else {
    return lut_word<512 * (2 * CI)>(q[2 * CI], tb) + lut_word<512 * (2 * CI + 1)>(q[2 * CI + 1], tb);
  }
}

// Σ q x over the whole batch q (every word live, no scale group ending inside it).
template <int B, int CI = 0>
__device__ __forceinline__ float lut_batch(const uint32_t (&q)[kLutWords], uint32_t tb) {
  if constexpr (CI + 2 > kLutWords / B) {
    return lut_chunk<B, CI>(q, tb);
  } else if constexpr (CI + 2 == kLutWords / B) {
    return lut_chunk<B, CI>(q, tb) + lut_chunk<B, CI + 1>(q, tb);
  } else {
    return lut_chunk<B, CI>(q, tb) + lut_chunk<B, CI + 1>(q, tb) + lut_batch<B, CI + 2>(q, tb);
  }
}

// q = words [wb, wb + W) of a row's step (at ``row``), 0 from nw on.
template <int W>
__device__ __forceinline__ void lut_load(uint32_t (&q)[W], const uint32_t* __restrict__ row, int wb, int nw, bool vec) {
  if (vec && wb + W <= nw) {
    const uint4* src = reinterpret_cast<const uint4*>(row + wb);
#pragma unroll
    for (int i = 0; i < W / 4; ++i) {
      const uint4 u = __ldg(src + i);
      q[4 * i] = u.x, q[4 * i + 1] = u.y, q[4 * i + 2] = u.z, q[4 * i + 3] = u.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < W; ++i) q[i] = wb + i < nw ? __ldg(row + wb + i) : 0u;
  }
}

// The open scale group of a row's walk: Σ q x and Σ x so far, its index and where it ends.
struct LutGroup {
  float dg = 0.f, sg = 0.f;
  int64_t gi = 0, kflush = 0;
};

// Closes the open scale group: acc += s (Σ q x − z Σ x).
__device__ __forceinline__ void lut_flush(const Operand& w, int64_t sbase, LutGroup& gr, float& acc) {
  const float s = __half2float(__ldg(w.scales + sbase + gr.gi));
  const float z = w.zeros != nullptr ? static_cast<float>(__ldg(w.zeros + sbase + gr.gi)) : w.zc;
  acc = fmaf(s, fmaf(-z, gr.sg, gr.dg), acc);
  gr.dg = gr.sg = 0.f;
  ++gr.gi;
  gr.kflush += w.group;
}

template <int B, int CI = 0>
__device__ __forceinline__ void lut_chunks(const uint32_t (&q)[kLutWords], int wb, int nw, int k0, int K, uint32_t tb, const float* __restrict__ csum,
                                           const Operand& w, int64_t sbase, LutGroup& gr, float& acc) {
  if constexpr (CI < kLutWords / B) {
    const int c = wb / B + CI;  // chunk of the step
    if (c * B < nw) {
      gr.dg += lut_chunk<B, CI>(q, tb);
      gr.sg += csum[c];
      const int64_t kend = k0 + 32 * (c + 1);
      if (kend >= gr.kflush || kend >= K) lut_flush(w, sbase, gr, acc);  // warp-uniform: the end of a scale group
      lut_chunks<B, CI + 1>(q, wb, nw, k0, K, tb, csum, w, sbase, gr, acc);
    }
  }
}

// Looks up words [wb, wb + kLutWords) of the step at k0 (held in q; ``tb``: the tables of word wb)
// and closes the scale groups that end in them. A batch (512 1-bit or 256 2-bit codes) of live
// words inside one scale group (per-row scales, or a longer group that ends past the batch)
// takes the straight path: no per-chunk group checks, its chunk sums of x read as float4.
template <int B>
__device__ __forceinline__ void lut_words(const uint32_t (&q)[kLutWords], int wb, int nw, int k0, int K, uint32_t tb,
                                          const float* __restrict__ csum, const Operand& w, int64_t sbase, LutGroup& gr, float& acc) {
  constexpr int kChunks = kLutWords / B;
  const int c0 = wb / B;
  const int64_t kend = k0 + 32 * (c0 + kChunks);
  if (wb + kLutWords <= nw && kend < gr.kflush && kend < K) {  // warp-uniform
    gr.dg += lut_batch<B>(q, tb);
    const float4* cs = reinterpret_cast<const float4*>(csum + c0);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kChunks / 4; ++i) {
      const float4 v = cs[i];
      s += (v.x + v.y) + (v.z + v.w);
    }
    gr.sg += s;
  } else {
    lut_chunks<B>(q, wb, nw, k0, K, tb, csum, w, sbase, gr, acc);
  }
}

// acc += Σ_k W[n, k] x[k] for one dense part of B-bit codes (threads past N build tables only).
// PF: two register buffers of words, the next loaded before the current is looked up, so that a
// warp's loads stay in flight while it computes. Either way a step's first words are loaded before
// its tables are built (the loads do not depend on them).
template <class D, int B, bool PF>
__device__ __forceinline__ void lut_part(const Operand& w, int n, int N, const typename D::E* __restrict__ xr, int K, float* __restrict__ lut,
                                         float* __restrict__ csum, float& acc) {
  constexpr int kStepCodes = 4 * kLutTables / B;
  constexpr int kStepWords = kStepCodes * B / 32;
  const bool live = n < N;
  const int64_t nn = live ? n : 0;
  const uint32_t* __restrict__ row = w.codes + nn * w.stride;
  const int64_t sbase = nn * w.srow;
  const bool vec = (reinterpret_cast<uintptr_t>(w.codes) & 15) == 0 && (w.stride & 3) == 0;
  const int row_words = (K * B + 31) / 32;  // words holding codes < K (≤ stride)
  const uint32_t tl = smem_addr(lut);
  LutGroup gr;
  gr.kflush = w.group < K ? w.group : static_cast<int64_t>(K);
  for (int k0 = 0; k0 < K; k0 += kStepCodes) {
    const int w0 = k0 / 32 * B;
    const int nw = min(kStepWords, row_words - w0);
    uint32_t q0[kLutWords], q1[kLutWords];
    if (live) lut_load(q0, row + w0, 0, nw, vec);
    __syncthreads();  // the previous step's tables are consumed
    lut_build<D, B>(xr, k0, K, lut, csum);
    __syncthreads();
    if (!live) continue;
    if constexpr (PF) {
      for (int wb = 0; wb < nw; wb += 2 * kLutWords) {
        const bool second = wb + kLutWords < nw;
        if (second) lut_load(q1, row + w0, wb + kLutWords, nw, vec);
        lut_words<B>(q0, wb, nw, k0, K, tl + 512 * wb, csum, w, sbase, gr, acc);
        if (second) {
          if (wb + 2 * kLutWords < nw) lut_load(q0, row + w0, wb + 2 * kLutWords, nw, vec);
          lut_words<B>(q1, wb + kLutWords, nw, k0, K, tl + 512 * (wb + kLutWords), csum, w, sbase, gr, acc);
        }
      }
    } else {
      for (int wb = 0; wb < nw; wb += kLutWords) {
        if (wb > 0) lut_load(q0, row + w0, wb, nw, vec);
        lut_words<B>(q0, wb, nw, k0, K, tl + 512 * wb, csum, w, sbase, gr, acc);
      }
    }
  }
}

// ---- staged code loads (lut_stage): coalesced async copies through shared memory --------------
// lut_part's loads are uncoalesced: a warp's 16-byte load touches 32 rows, i.e. 32 cache lines
// (ncu, session 11: L1/TEX 87 % busy, DRAM 39 %). Staged, each warp copies its 32 rows' next 16
// words (64 bytes a row, 2 KB) with cp.async, four lanes per row so that a warp's copy covers 8
// rows × 64 contiguous bytes, and each lane then reads its own row back with four 16-byte shared
// loads. A row's four 16-byte chunks are XOR-swizzled by (row >> 1) & 3, so that both the copies
// (8 rows of a quarter warp) and the reads (one row per lane) hit 8 distinct 16-byte bank groups.
// Two buffers per warp: the next 16 words (or the next step's first) are in flight while the
// current ones are looked up. Needs 16-byte aligned rows (``vec``) and sm_80's cp.async.
// Off by default: on the H100 the staging's shared memory costs more occupancy than the coalescing
// saves (session 12: 4096x11008, B = D = 32, 159 against 122 µs; docs/notes/2026-11-23-s12.md).
constexpr int kStageBufs = 2;
constexpr int kStageWarpBytes = 32 * kLutWords * 4;                              // 32 rows × 64 bytes
constexpr int kLutStageBytes = kLutThreads / 32 * kStageBufs * kStageWarpBytes;  // dynamic shared memory of a block

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
#else
  __trap();  // the host launches the staged kernel on sm_80 and newer only
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait1() {  // all but the newest group done
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 1;" ::: "memory");
#endif
}

__device__ __forceinline__ uint32_t stage_chunk(int r, int c) { return static_cast<uint32_t>(r * 64 + ((c ^ ((r >> 1) & 3)) << 4)); }

// Copies words [wb, wb + 16) of the step at w0 (nw live words) of the warp's rows n0 .. n0 + 31
// into ``buf``; words past nw and rows past N are zero-filled (src-size 0..16).
__device__ __forceinline__ void lut_stage(const Operand& w, int64_t n0, int N, int w0, int wb, int nw, uint32_t buf, int lane) {
  const int c = lane & 3;
  const int live = min(4, max(0, nw - wb - 4 * c));  // words of this lane's chunk below nw
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = 8 * i + (lane >> 2);
    const int64_t n = n0 + r;
    const int bytes = n < N ? 4 * live : 0;
    const uint32_t* src = bytes > 0 ? w.codes + n * w.stride + w0 + wb + 4 * c : w.codes;
    cp_async16(buf + stage_chunk(r, c), src, bytes);
  }
  cp_async_commit();
}

// q = the lane's row of a staged buffer (its 16 words).
__device__ __forceinline__ void lut_unstage(uint32_t (&q)[kLutWords], uint32_t buf, int lane) {
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    uint32_t a, b, d, e;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(a), "=r"(b), "=r"(d), "=r"(e) : "r"(buf + stage_chunk(lane, c)));
    q[4 * c] = a, q[4 * c + 1] = b, q[4 * c + 2] = d, q[4 * c + 3] = e;
  }
}

// lut_part with staged loads: every lane of a warp takes part (rows past N look up zeros and
// write nothing), so the warp-wide waits stay uniform. ``stage``: this warp's kStageBufs buffers.
template <class D, int B>
__device__ __forceinline__ void lut_part_staged(const Operand& w, int n, int N, const typename D::E* __restrict__ xr, int K, float* __restrict__ lut,
                                                float* __restrict__ csum, uint32_t stage, float& acc) {
  constexpr int kStepCodes = 4 * kLutTables / B;
  constexpr int kStepWords = kStepCodes * B / 32;
  const int lane = threadIdx.x & 31;
  const int64_t n0 = n - lane;
  const int64_t sbase = (n < N ? n : 0) * w.srow;
  const int row_words = (K * B + 31) / 32;
  const uint32_t tl = smem_addr(lut);
  LutGroup gr;
  gr.kflush = w.group < K ? w.group : static_cast<int64_t>(K);
  int s = 0;  // stages issued
  lut_stage(w, n0, N, 0, 0, min(kStepWords, row_words), stage, lane);
  ++s;
  for (int k0 = 0; k0 < K; k0 += kStepCodes) {
    const int w0 = k0 / 32 * B;
    const int nw = min(kStepWords, row_words - w0);
    __syncthreads();  // the previous step's tables are consumed
    lut_build<D, B>(xr, k0, K, lut, csum);
    __syncthreads();
    for (int wb = 0; wb < nw; wb += kLutWords) {
      const uint32_t cur = stage + ((s - 1) % kStageBufs) * kStageWarpBytes;
      const uint32_t nxt = stage + (s % kStageBufs) * kStageWarpBytes;
      if (wb + kLutWords < nw) {
        lut_stage(w, n0, N, w0, wb + kLutWords, nw, nxt, lane);
      } else if (k0 + kStepCodes < K) {  // the next step's first words: in flight across its table build
        lut_stage(w, n0, N, w0 + kStepWords, 0, min(kStepWords, row_words - w0 - kStepWords), nxt, lane);
      } else {
        cp_async_commit();  // an empty group keeps wait_group 1's count
      }
      ++s;
      cp_async_wait1();
      __syncwarp();  // the other lanes' copies into cur are visible
      uint32_t q[kLutWords];
      lut_unstage(q, cur, lane);
      __syncwarp();  // every lane has read cur before the next stage's copies overwrite it
      lut_words<B>(q, wb, nw, k0, K, tl + 512 * wb, csum, w, sbase, gr, acc);
    }
  }
}

// acc += Σ_k W[n, k] x[k] for one 2:4 part (DeltaZip s24q2, constant zero): the codes and the
// index stream have the same layout (2 bits per kept value), so word w of both holds kept values
// 16w .. 16w + 15, i.e. kept pairs (tables) 8w .. 8w + 7 of the step. Their nibbles (position |
// code << 2) come out of the two words with two masks: lo holds the first value of each pair,
// hi the second; both look up the pair's table.
template <class D>
__device__ __forceinline__ void lut_s24_part(const Operand& w, const uint32_t* __restrict__ idx, int64_t istride, int n, int N,
                                             const typename D::E* __restrict__ xr, int K, float* __restrict__ lut, float* __restrict__ csum, float& acc) {
  constexpr int kStepCodes = 4 * kLutTables;     // dense columns per step
  constexpr int kStepWords = kStepCodes / 2 / 16;  // words of kept values (and of positions) per step
  constexpr int kW = kLutWords / 2;                // words of each stream a thread loads at once
  const int kc = K / 2;                           // kept values per row (K is a multiple of 4)
  const bool live = n < N;
  const int64_t nn = live ? n : 0;
  const uint32_t* __restrict__ row = w.codes + nn * w.stride;
  const uint32_t* __restrict__ irow = idx + nn * istride;
  const int64_t sbase = nn * w.srow;
  const bool vec = (reinterpret_cast<uintptr_t>(w.codes) & 15) == 0 && (w.stride & 3) == 0 && (reinterpret_cast<uintptr_t>(idx) & 15) == 0 &&
                   (istride & 3) == 0;
  const int row_words = (kc * 2 + 31) / 32;
  const uint32_t tl = smem_addr(lut);
  LutGroup gr;
  gr.kflush = w.group < kc ? w.group : static_cast<int64_t>(kc);
  for (int k0 = 0; k0 < K; k0 += kStepCodes) {
    __syncthreads();  // the previous step's tables are consumed
    lut_build<D, 24>(xr, k0, K, lut, csum, w.zc);
    __syncthreads();
    if (!live) continue;
    const int kept0 = k0 / 2, w0 = k0 / 32;
    const int nw = min(kStepWords, row_words - w0);
    for (int wb = 0; wb < nw; wb += kW) {
      uint32_t q[kW], p[kW];
      lut_load(q, row + w0, wb, nw, vec);
      lut_load(p, irow + w0, wb, nw, vec);
#pragma unroll
      for (int ci = 0; ci < kW / 2; ++ci) {  // 32 kept values: 2 words
        const int c = wb / 2 + ci;
        if (c * 2 < nw) {
          float d0 = 0.f, d1 = 0.f;
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const uint32_t cw = q[2 * ci + i], pw = p[2 * ci + i];
            const uint32_t lo = (pw & 0x33333333u) | ((cw & 0x33333333u) << 2);
            const uint32_t hi = ((pw >> 2) & 0x33333333u) | (cw & 0xCCCCCCCCu);
            const uint32_t tb = tl + 512 * (wb + 2 * ci + i);
            d0 += lut_word<0>(lo, tb);
            d1 += lut_word<0>(hi, tb);
          }
          gr.dg += d0 + d1;
          const int64_t kend = kept0 + 32 * (c + 1);
          if (kend >= gr.kflush || kend >= kc) {  // warp-uniform: the end of a scale group
            acc = fmaf(__half2float(__ldg(w.scales + sbase + gr.gi)), gr.dg, acc);
            gr.dg = 0.f;
            ++gr.gi;
            gr.kflush += w.group;
          }
        }
      }
    }
  }
}

// Grid (tile of kLutThreads outputs, row group). Only for tables whose parts are all dense with
// 1- or 2-bit codes or 2:4 with 2-bit kept values and a constant zero (the loader checks:
// cuda.lut_table), unfused: y[row] += Δ x[row]. STAGE: dense parts with 16-byte aligned rows take
// the staged loads (lut_part_staged; kLutStageBytes of dynamic shared memory).
template <class D, bool PF, bool STAGE>
__global__ void __launch_bounds__(kLutThreads, 4)
    lut_dense_kernel(const typename D::E* __restrict__ x, int64_t sx, typename D::E* __restrict__ y, int64_t sy, const int64_t* __restrict__ tab, int max_parts,
                     const int* __restrict__ row_idx, const int* __restrict__ gstart, const int* __restrict__ gslot, int N, int K, bool identity, Fields f) {
  __shared__ __align__(512) float lut[kLutTables * 16];  // 512: lut_word's address merge
  __shared__ __align__(16) float csum[kLutTables / 8];
  __shared__ SlotParts sp;
  if ((smem_addr(lut) & 511u) != 0) __trap();  // lut_word's address merge needs the 512-byte alignment
  const int g = blockIdx.y;
  const int slot = gslot[g];
  if (slot < 0) return;  // rows without a delta are never touched
  const int row = identity ? g : row_idx[gstart[g]];
  load_parts(tab + static_cast<int64_t>(slot) * max_parts * f.nf, max_parts, f, sp);
  const int n = static_cast<int>(blockIdx.x) * kLutThreads + threadIdx.x;
  const typename D::E* xr = x + static_cast<int64_t>(row) * sx;
  float acc = 0.f;
  for (int p = 0; p < max_parts; ++p) {
    if (sp.p[p].kind == kSparse24) {  // block-uniform
      lut_s24_part<D>(sp.p[p].a, sp.p[p].b.codes, sp.p[p].b.stride, n, N, xr, K, lut, csum, acc);
      continue;
    }
    if (sp.p[p].kind != kDense) continue;
    const Operand w = sp.p[p].a;
    if constexpr (STAGE) {
      extern __shared__ __align__(16) unsigned char lut_stage_smem[];
      const bool vec = (reinterpret_cast<uintptr_t>(w.codes) & 15) == 0 && (w.stride & 3) == 0;  // block-uniform
      if (vec) {
        const uint32_t stage = smem_addr(lut_stage_smem) + (threadIdx.x >> 5) * kStageBufs * kStageWarpBytes;
        if (w.bits == 1) {
          lut_part_staged<D, 1>(w, n, N, xr, K, lut, csum, stage, acc);
        } else {
          lut_part_staged<D, 2>(w, n, N, xr, K, lut, csum, stage, acc);
        }
        continue;
      }
    }
    if (w.bits == 1) {
      lut_part<D, 1, PF>(w, n, N, xr, K, lut, csum, acc);
    } else {
      lut_part<D, 2, PF>(w, n, N, xr, K, lut, csum, acc);
    }
  }
  if (n < N) {
    typename D::E* yp = y + static_cast<int64_t>(row) * sy + n;
    *yp = D::from_float(D::to_float(*yp) + acc);
  }
}

// ---- host -----------------------------------------------------------------------------------------
// Dynamic shared memory beyond the default 48 KB (static included: SlotParts) needs an opt-in.
template <class K>
void set_smem(K kernel, int64_t bytes) {
  if (bytes + static_cast<int64_t>(sizeof(SlotParts)) > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
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
  bool x_vec;  // rows of x start on 16-byte boundaries
  bool pdl;    // launch apply as a programmatic dependent of the shrink
  Fields f;
  int* sync;   // one-pass scratch (int32, zero), or nullptr for two launches
  int sms;     // multiprocessors of the device
  int a_blocks;  // one pass: blocks that only run shrink items (0: min(items, SMs))
  int minb;      // one pass: blocks per SM the compiler must fit (2: at most 128 registers, or 3: 80)
  long long* trace;  // one pass: phase timestamps per block [grid, kTrSlots], or nullptr
  int64_t trace_len;
  bool identity;    // row g is group g (RowGroups.per_row): no row_idx / start reads
  int64_t u_words;  // the largest Σ over a slot's low-rank parts of a rank-major Ut row's words
  bool prefetch;    // one pass: apply blocks prefetch their base rows into L2 at start
  int nsub;         // unfused apply: sub-tiles of NB outputs per block (NB · nsub divides Ut's scale groups)
  int apply_minb;   // apply: 3 blocks per SM (at most 80 registers); otherwise unfused no bound, fused 2 blocks per SM
  int shrink_warps;  // warps per shrink block (two launches): more warps share one staged x
  bool lut;          // dense 1-/2-bit parts only, unfused: the lookup-table kernel (lut_dense_kernel)
  bool lut_prefetch;  // lookup-table kernel: load the next words of a row before looking up the current ones
  bool raw_x;         // fused apply / one pass without dense parts: x 16-bit in shared memory, the lean base GEMV (lean_rows)
  int lean;           // fused, every slot at most one dense part, all of DB = lean ∈ {1, 2} bits (0: no parts): lean_kernel where the layout allows; −1 off
  bool lut_stage;     // lookup-table kernel: coalesced staged loads of the codes (lut_part_staged)
  int cc_major;       // the device's compute capability (major)
};

// Shared memory (floats) of an apply block past x: the fold's factors and zeros (2 · wlen), then
// the block's Ut rows when they fit in kUcacheBytes (ucache_ok).
constexpr int64_t kUcacheBytes = 48 * 1024;
inline bool ucache_fits(const Batch& b, int nb) { return b.u_words > 0 && nb * b.u_words * 4 <= kUcacheBytes; }
inline int64_t apply_extra_floats(const Batch& b, int nb) { return 2 * b.wlen + (ucache_fits(b, nb) ? nb * b.u_words : 0); }

// Whether the base weight's rows take 16-byte vector loads (K a multiple of D::kVec, aligned start
// and row stride): base_gemv's and lean_rows' condition.
template <class D>
bool base_rows_vec(const typename D::E* wb, int64_t swb, int K) {
  return K % D::kVec == 0 && reinterpret_cast<uintptr_t>(wb) % 16 == 0 && (swb * static_cast<int64_t>(sizeof(typename D::E))) % 16 == 0;
}

template <class D, int NR, bool FUSE>
void launch_apply(const Batch& b, cudaStream_t stream) {
  using E = typename D::E;
  const int64_t groups = b.slot.numel();
  const int N = static_cast<int>(b.y.size(1));
  const int K = static_cast<int>(b.x.size(1));
  const int64_t kp = (K + 31) / 32 * 32;
  const bool stage_dense = b.dense;
  constexpr int NB = kApplyWarps * NR;
  const int64_t smem = ((FUSE || stage_dense) ? x_floats(static_cast<int>(kp)) : 0) + apply_extra_floats(b, NB);
  const int nsub = FUSE ? 1 : b.nsub;
  const int64_t tiles = (N + NB * nsub - 1) / (NB * nsub);
  TORCH_CHECK(groups <= 65535, "deltapack_cuda: at most 65535 row groups");
  const E* wb = FUSE ? reinterpret_cast<const E*>(b.base.data_ptr()) : nullptr;
  const int64_t swb = FUSE ? b.base.stride(0) : 0;
  const bool base_vec = FUSE && base_rows_vec<D>(wb, swb, K);
  // fused: at least two blocks per SM (at most 128 registers; the base GEMV needs the loads in
  // flight of 16 warps per SM); unfused: no bound. apply_minb 3: at most 80 registers.
  auto kernel = apply_kernel<D, NR, FUSE, FUSE ? 2 : 1>;
  if (b.apply_minb == 3) kernel = apply_kernel<D, NR, FUSE, 3>;
  set_smem(kernel, smem * 4);
  const float* tp = b.lowrank ? b.t.data_ptr<float>() : nullptr;
  const int64_t st = b.lowrank ? b.t.stride(0) : 0;
  // after a shrink launch: a programmatic dependent launch (Hopper), so that the apply blocks start
  // while the shrink runs (they wait for it before reading t: griddepcontrol.wait)
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(groups));
  cfg.blockDim = dim3(kApplyWarps * 32);
  cfg.dynamicSmemBytes = static_cast<size_t>(smem * 4);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = b.lowrank && b.pdl ? 1 : 0;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, reinterpret_cast<const E*>(b.x.data_ptr()), b.x.stride(0), reinterpret_cast<E*>(b.y.data_ptr()),
                                    b.y.stride(0), tp, st, wb, swb, static_cast<const int64_t*>(b.table.data_ptr<int64_t>()), b.max_parts,
                                    static_cast<const int*>(b.row_idx.data_ptr<int>()), static_cast<const int*>(b.start.data_ptr<int>()),
                                    static_cast<const int*>(b.slot.data_ptr<int>()), N, K, stage_dense, base_vec, b.x_vec, b.identity,
                                    ucache_fits(b, NB), b.raw_x, b.f, nsub));
}

template <class D, int NR, int MINB>
void launch_onepass(const Batch& b, cudaStream_t stream) {
  using E = typename D::E;
  const int groups = static_cast<int>(b.slot.numel());
  const int N = static_cast<int>(b.y.size(1));
  const int K = static_cast<int>(b.x.size(1));
  const int kp = (K + 31) / 32 * 32;
  constexpr int NB = kApplyWarps * NR;
  const int64_t a_tiles = (b.t.size(1) + b.jb - 1) / b.jb;
  const int64_t b_tiles = (N + NB - 1) / NB;
  const int64_t n_a = groups * a_tiles;
  const int64_t a_blocks = std::min<int64_t>(n_a, b.a_blocks > 0 ? b.a_blocks : b.sms);
  const int64_t grid = a_blocks + groups * b_tiles;
  TORCH_CHECK(n_a + grid < (int64_t{1} << 31), "deltapack_cuda: too many blocks for one pass");
  TORCH_CHECK(b.trace == nullptr || b.trace_len >= grid * kTrSlots, "deltapack_cuda: trace needs ", grid * kTrSlots, " elements");
  const int64_t smem = (static_cast<int64_t>(x_floats(kp)) + std::max<int64_t>(kp, apply_extra_floats(b, NB))) * 4;
  const E* wb = reinterpret_cast<const E*>(b.base.data_ptr());
  const int64_t swb = b.base.stride(0);
  const bool base_vec = base_rows_vec<D>(wb, swb, K);
  auto kernel = onepass_kernel<D, NR, MINB>;
  set_smem(kernel, smem);
  kernel<<<static_cast<unsigned>(grid), kApplyWarps * 32, smem, stream>>>(
      reinterpret_cast<const E*>(b.x.data_ptr()), b.x.stride(0), reinterpret_cast<E*>(b.y.data_ptr()), b.y.stride(0), b.t.data_ptr<float>(), b.t.stride(0),
      wb, swb, b.table.data_ptr<int64_t>(), b.max_parts, b.row_idx.data_ptr<int>(), b.start.data_ptr<int>(), b.slot.data_ptr<int>(), N, K, b.jb, b.dense,
      base_vec, b.x_vec, b.identity, ucache_fits(b, NB), b.raw_x, b.prefetch, b.f, b.sync, groups, static_cast<int>(a_tiles), static_cast<int>(a_blocks), static_cast<int>(b_tiles), b.trace);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class D>
void launch_lut(const Batch& b, cudaStream_t stream) {
  using E = typename D::E;
  const int64_t groups = b.slot.numel();
  const int N = static_cast<int>(b.y.size(1));
  const int K = static_cast<int>(b.x.size(1));
  TORCH_CHECK(groups <= 65535, "deltapack_cuda: at most 65535 row groups");
  const unsigned tiles = static_cast<unsigned>((N + kLutThreads - 1) / kLutThreads);
  auto kernel = b.lut_prefetch ? lut_dense_kernel<D, true, false> : lut_dense_kernel<D, false, false>;
  int64_t smem = 0;
  if (b.lut_stage) {
    TORCH_CHECK(b.cc_major >= 8, "deltapack_cuda: the staged lookup-table kernel needs sm_80 or newer");
    kernel = lut_dense_kernel<D, false, true>;
    smem = kLutStageBytes;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  kernel<<<dim3(tiles, static_cast<unsigned>(groups)), kLutThreads, smem, stream>>>(
      reinterpret_cast<const E*>(b.x.data_ptr()), b.x.stride(0), reinterpret_cast<E*>(b.y.data_ptr()), b.y.stride(0), b.table.data_ptr<int64_t>(),
      b.max_parts, b.row_idx.data_ptr<int>(), b.start.data_ptr<int>(), b.slot.data_ptr<int>(), N, K, b.identity, b.f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class D>
bool launch_lean(const Batch& b, int nr, cudaStream_t stream) {
  using E = typename D::E;
  const int64_t groups = b.slot.numel();
  const int N = static_cast<int>(b.y.size(1));
  const int K = static_cast<int>(b.x.size(1));
  const E* wb = reinterpret_cast<const E*>(b.base.data_ptr());
  const int64_t swb = b.base.stride(0);
  // 16-byte vectors of x and of every base row; otherwise the fused apply takes the batch
  if (!b.x_vec || !base_rows_vec<D>(wb, swb, K)) return false;
  TORCH_CHECK(groups <= 65535, "deltapack_cuda: at most 65535 row groups");
  const int64_t smem = static_cast<int64_t>(K) * sizeof(E);
  auto kernel = lean_kernel<D, 1, 0>;
  switch (b.lean * 2 + (nr >= 2 ? 1 : 0)) {
    case 1: kernel = lean_kernel<D, 2, 0>; break;
    case 2: kernel = lean_kernel<D, 1, 1>; break;
    case 3: kernel = lean_kernel<D, 2, 1>; break;
    case 4: kernel = lean_kernel<D, 1, 2>; break;
    case 5: kernel = lean_kernel<D, 2, 2>; break;
    default: break;
  }
  const int nb = kApplyWarps * (nr >= 2 ? 2 : 1);
  if (smem > 48 * 1024) C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<dim3(static_cast<unsigned>((N + nb - 1) / nb), static_cast<unsigned>(groups)), kApplyWarps * 32, smem, stream>>>(
      reinterpret_cast<const E*>(b.x.data_ptr()), b.x.stride(0), reinterpret_cast<E*>(b.y.data_ptr()), b.y.stride(0), wb, swb, b.table.data_ptr<int64_t>(),
      b.max_parts, b.row_idx.data_ptr<int>(), b.start.data_ptr<int>(), b.slot.data_ptr<int>(), N, K, b.identity, b.f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

template <class D>
void launch_shrink(const Batch& b, cudaStream_t stream) {
  using E = typename D::E;
  const int64_t groups = b.slot.numel();
  const int K = static_cast<int>(b.x.size(1));
  const int64_t kp = (K + 31) / 32 * 32;
  const int64_t max_rank = b.t.size(1);
  const int64_t tiles = (max_rank + b.jb - 1) / b.jb;
  TORCH_CHECK(tiles <= 65535, "deltapack_cuda: rank ", max_rank, " needs too many shrink tiles");
  const int64_t smem = (static_cast<int64_t>(x_floats(static_cast<int>(kp))) + kp) * 4;
  auto kernel = shrink_kernel<D>;
  set_smem(kernel, smem);
  kernel<<<dim3(static_cast<unsigned>(groups), static_cast<unsigned>(tiles)), b.shrink_warps * 32, smem, stream>>>(
      reinterpret_cast<const E*>(b.x.data_ptr()), b.x.stride(0), b.t.data_ptr<float>(), b.t.stride(0), b.table.data_ptr<int64_t>(), b.max_parts,
      b.row_idx.data_ptr<int>(), b.start.data_ptr<int>(), b.slot.data_ptr<int>(), K, b.jb, b.x_vec, b.identity, b.f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Every launcher's specializations: each compiled once, in the unit named after it
// (csrc/inst_<family>_<dtype>.cu, by DPK_*(, D)); every other unit sees them as extern.
#define DPK_APPLY(PFX, D)                                                 \
  PFX template void launch_apply<D, 1, false>(const Batch&, cudaStream_t); \
  PFX template void launch_apply<D, 1, true>(const Batch&, cudaStream_t);  \
  PFX template void launch_apply<D, 2, false>(const Batch&, cudaStream_t); \
  PFX template void launch_apply<D, 2, true>(const Batch&, cudaStream_t);  \
  PFX template void launch_apply<D, 4, false>(const Batch&, cudaStream_t); \
  PFX template void launch_apply<D, 4, true>(const Batch&, cudaStream_t);
#define DPK_ONEPASS(PFX, D)                                             \
  PFX template void launch_onepass<D, 1, 2>(const Batch&, cudaStream_t); \
  PFX template void launch_onepass<D, 1, 3>(const Batch&, cudaStream_t); \
  PFX template void launch_onepass<D, 2, 2>(const Batch&, cudaStream_t); \
  PFX template void launch_onepass<D, 2, 3>(const Batch&, cudaStream_t); \
  PFX template void launch_onepass<D, 4, 2>(const Batch&, cudaStream_t); \
  PFX template void launch_onepass<D, 4, 3>(const Batch&, cudaStream_t);
#define DPK_SMALL(PFX, D)                                            \
  PFX template void launch_lut<D>(const Batch&, cudaStream_t);      \
  PFX template void launch_shrink<D>(const Batch&, cudaStream_t);
#define DPK_LEAN(PFX, D) PFX template bool launch_lean<D>(const Batch&, int, cudaStream_t);  // 16-bit activations only

DPK_APPLY(extern, F32)
DPK_APPLY(extern, F16)
DPK_APPLY(extern, BF16)
DPK_ONEPASS(extern, F32)
DPK_ONEPASS(extern, F16)
DPK_ONEPASS(extern, BF16)
DPK_SMALL(extern, F32)
DPK_SMALL(extern, F16)
DPK_SMALL(extern, BF16)
DPK_LEAN(extern, F16)
DPK_LEAN(extern, BF16)

}  // namespace dpk
