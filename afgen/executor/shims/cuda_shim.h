// Stand-in for the CUDA device environment MLX's cuda_kernel source is
// compiled in by NVRTC (cuda_fp16.h, cuda_bf16.h, cuda/std/array,
// cooperative_groups.h and mlx/backend/cuda/device/utils.cuh), reduced to
// what afgen kernels use, so the exact generated text compiles with g++ and
// runs on the CPU. The kernel unit is compiled with -nostdinc: nothing from
// the host C++ standard library is visible, as under NVRTC.
#pragma once

#include "runtime.h"

#define __CUDACC__ 1
#define __CUDA_ARCH__ 900
#define CUDART_VERSION 13000

#define __global__
#define __device__
#define __host__
#define __constant__
#define __grid_constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// One static copy per block (blocks run one at a time). The kernel unit's
// uninitialised static storage is moved to the section the runtime poisons
// with 0xFF bytes before each block; constinit rejects initialisers.
#define __shared__ static __constinit

#define MAX_NDIM 10
#define WARP_SIZE 32
#define warpSize 32

typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef unsigned long size_t;
typedef long ptrdiff_t;
typedef unsigned long uintptr_t;

// ---------------------------------------------------------------------------
// Builtin vector types: plain structs without operators, as in CUDA.
#define AFGEN_CUDA_VEC(T, name, al)                              \
  struct __attribute__((aligned(al * 1))) name##1 { T x; };      \
  struct __attribute__((aligned(al * 2))) name##2 { T x, y; };   \
  struct name##3 { T x, y, z; };                                 \
  struct __attribute__((aligned(al * 4))) name##4 { T x, y, z, w; }; \
  inline name##2 make_##name##2(T x, T y) { return {x, y}; }     \
  inline name##3 make_##name##3(T x, T y, T z) { return {x, y, z}; } \
  inline name##4 make_##name##4(T x, T y, T z, T w) { return {x, y, z, w}; }
AFGEN_CUDA_VEC(float, float, 4)
AFGEN_CUDA_VEC(int, int, 4)
AFGEN_CUDA_VEC(unsigned int, uint, 4)
AFGEN_CUDA_VEC(short, short, 2)
AFGEN_CUDA_VEC(unsigned short, ushort, 2)
AFGEN_CUDA_VEC(double, double, 8)
#undef AFGEN_CUDA_VEC

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};

namespace afgen {
inline uint3 u3(const unsigned* v) { return {v[0], v[1], v[2]}; }
}  // namespace afgen

#define threadIdx (afgen::u3(afgen_self()->pos_in_group))
#define blockIdx (afgen::u3(afgen_self()->group_pos))
#define blockDim (afgen::u3(afgen_self()->dispatch_group))
#define gridDim (afgen::u3(afgen_self()->groups_per_grid))

// ---------------------------------------------------------------------------
// Math (CUDA math API subset; float and double overloads).
#define AFGEN_F1(name, builtin) \
  inline float name(float x) { return builtin(x); }
AFGEN_F1(sqrtf, __builtin_sqrtf)
AFGEN_F1(expf, __builtin_expf)
AFGEN_F1(exp2f, __builtin_exp2f)
AFGEN_F1(expm1f, __builtin_expm1f)
AFGEN_F1(logf, __builtin_logf)
AFGEN_F1(log2f, __builtin_log2f)
AFGEN_F1(log10f, __builtin_log10f)
AFGEN_F1(log1pf, __builtin_log1pf)
AFGEN_F1(fabsf, __builtin_fabsf)
AFGEN_F1(tanhf, __builtin_tanhf)
AFGEN_F1(erff, __builtin_erff)
AFGEN_F1(erfcf, __builtin_erfcf)
AFGEN_F1(floorf, __builtin_floorf)
AFGEN_F1(ceilf, __builtin_ceilf)
AFGEN_F1(roundf, __builtin_roundf)
AFGEN_F1(rintf, __builtin_rintf)
AFGEN_F1(truncf, __builtin_truncf)
AFGEN_F1(sinf, __builtin_sinf)
AFGEN_F1(cosf, __builtin_cosf)
AFGEN_F1(tanf, __builtin_tanf)
AFGEN_F1(asinf, __builtin_asinf)
AFGEN_F1(acosf, __builtin_acosf)
AFGEN_F1(atanf, __builtin_atanf)
AFGEN_F1(sinhf, __builtin_sinhf)
AFGEN_F1(coshf, __builtin_coshf)
AFGEN_F1(cbrtf, __builtin_cbrtf)
AFGEN_F1(__expf, __builtin_expf)
AFGEN_F1(__logf, __builtin_logf)
AFGEN_F1(__sinf, __builtin_sinf)
AFGEN_F1(__cosf, __builtin_cosf)
AFGEN_F1(__fsqrt_rn, __builtin_sqrtf)
#undef AFGEN_F1
inline float rsqrtf(float x) { return 1.0f / __builtin_sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / __builtin_sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) {
  return __builtin_fminf(__builtin_fmaxf(x, 0.0f), 1.0f);
}
inline float powf(float x, float y) { return __builtin_powf(x, y); }
inline float __powf(float x, float y) { return __builtin_powf(x, y); }
inline float fmaxf(float x, float y) { return __builtin_fmaxf(x, y); }
inline float fminf(float x, float y) { return __builtin_fminf(x, y); }
inline float fmodf(float x, float y) { return __builtin_fmodf(x, y); }
inline float atan2f(float y, float x) { return __builtin_atan2f(y, x); }
inline float copysignf(float x, float y) { return __builtin_copysignf(x, y); }
inline float fmaf(float a, float b, float c) { return __builtin_fmaf(a, b, c); }

#define AFGEN_FD1(name, fb, db)                        \
  inline float name(float x) { return fb(x); }         \
  inline double name(double x) { return db(x); }
AFGEN_FD1(sqrt, __builtin_sqrtf, __builtin_sqrt)
AFGEN_FD1(exp, __builtin_expf, __builtin_exp)
AFGEN_FD1(exp2, __builtin_exp2f, __builtin_exp2)
AFGEN_FD1(log, __builtin_logf, __builtin_log)
AFGEN_FD1(log2, __builtin_log2f, __builtin_log2)
AFGEN_FD1(log1p, __builtin_log1pf, __builtin_log1p)
AFGEN_FD1(expm1, __builtin_expm1f, __builtin_expm1)
AFGEN_FD1(fabs, __builtin_fabsf, __builtin_fabs)
AFGEN_FD1(tanh, __builtin_tanhf, __builtin_tanh)
AFGEN_FD1(erf, __builtin_erff, __builtin_erf)
AFGEN_FD1(floor, __builtin_floorf, __builtin_floor)
AFGEN_FD1(ceil, __builtin_ceilf, __builtin_ceil)
AFGEN_FD1(round, __builtin_roundf, __builtin_round)
AFGEN_FD1(trunc, __builtin_truncf, __builtin_trunc)
AFGEN_FD1(sin, __builtin_sinf, __builtin_sin)
AFGEN_FD1(cos, __builtin_cosf, __builtin_cos)
#undef AFGEN_FD1
inline double rsqrt(double x) { return 1.0 / __builtin_sqrt(x); }
inline float pow(float x, float y) { return __builtin_powf(x, y); }
inline double pow(double x, double y) { return __builtin_pow(x, y); }
inline double fmax(double x, double y) { return __builtin_fmax(x, y); }
inline double fmin(double x, double y) { return __builtin_fmin(x, y); }

inline bool isnan(float x) { return x != x; }
inline bool isnan(double x) { return x != x; }
inline bool isinf(float x) { return __builtin_fabsf(x) == __builtin_inff(); }
inline bool isinf(double x) { return __builtin_fabs(x) == __builtin_inf(); }
inline bool isfinite(float x) { return !isnan(x) && !isinf(x); }
inline bool isfinite(double x) { return !isnan(x) && !isinf(x); }
inline bool signbit(float x) { return __builtin_signbit(x); }

#define AFGEN_MINMAX(T)                                  \
  inline T max(T a, T b) { return a < b ? b : a; }      \
  inline T min(T a, T b) { return b < a ? b : a; }
AFGEN_MINMAX(int)
AFGEN_MINMAX(unsigned int)
AFGEN_MINMAX(long)
AFGEN_MINMAX(unsigned long)
AFGEN_MINMAX(long long)
AFGEN_MINMAX(unsigned long long)
#undef AFGEN_MINMAX
inline float max(float a, float b) { return __builtin_fmaxf(a, b); }
inline float min(float a, float b) { return __builtin_fminf(a, b); }
inline double max(double a, double b) { return __builtin_fmax(a, b); }
inline double min(double a, double b) { return __builtin_fmin(a, b); }
inline int abs(int x) { return x < 0 ? -x : x; }
inline long abs(long x) { return x < 0 ? -x : x; }
inline float abs(float x) { return __builtin_fabsf(x); }
inline double abs(double x) { return __builtin_fabs(x); }

inline float __int_as_float(int v) { return __builtin_bit_cast(float, v); }
inline int __float_as_int(float v) { return __builtin_bit_cast(int, v); }
inline float __uint_as_float(unsigned v) {
  return __builtin_bit_cast(float, v);
}
inline unsigned __float_as_uint(float v) {
  return __builtin_bit_cast(unsigned, v);
}

// ---------------------------------------------------------------------------
// __half and __nv_bfloat16: 16-bit storage, round-to-nearest-even. Like
// cuda_fp16.hpp they convert implicitly to and from float and define
// operators only between two values of the same type, so mixed expressions
// such as `__half * float` are ambiguous exactly as under NVCC/NVRTC.
namespace afgen {
constexpr float bits_to_f32(unsigned u) { return __builtin_bit_cast(float, u); }
constexpr unsigned f32_to_bits(float f) {
  return __builtin_bit_cast(unsigned, f);
}
constexpr unsigned short f32_to_f16(float f) {
  unsigned x = f32_to_bits(f);
  unsigned sign = x & 0x80000000u;
  x ^= sign;
  unsigned short o = 0;
  if (x >= (143u << 23)) {
    o = x > (255u << 23) ? 0x7e00 : 0x7c00;
  } else if (x < (113u << 23)) {
    const unsigned magic = 126u << 23;
    o = (unsigned short)(f32_to_bits(bits_to_f32(x) + bits_to_f32(magic)) -
                         magic);
  } else {
    unsigned odd = (x >> 13) & 1u;
    x += 0xc8000fffu + odd;
    o = (unsigned short)(x >> 13);
  }
  return (unsigned short)(o | (sign >> 16));
}
constexpr float f16_to_f32(unsigned short h) {
  unsigned sign = (unsigned)(h & 0x8000u) << 16;
  unsigned exp = (h >> 10) & 0x1fu;
  unsigned mant = h & 0x3ffu;
  if (exp == 0) {
    float v = (float)mant * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (mant << 13));
  return bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}
constexpr unsigned short f32_to_bf16(float f) {
  unsigned x = f32_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)0x7fff;
  x += 0x7fffu + ((x >> 16) & 1u);
  return (unsigned short)(x >> 16);
}
constexpr float bf16_to_f32(unsigned short b) {
  return bits_to_f32((unsigned)b << 16);
}
}  // namespace afgen

struct __half {
  unsigned short __x;
  __half() = default;
  constexpr __half(float f) : __x(afgen::f32_to_f16(f)) {}
  constexpr __half(double f) : __x(afgen::f32_to_f16((float)f)) {}
  constexpr __half(short v) : __x(afgen::f32_to_f16((float)v)) {}
  constexpr __half(unsigned short v) : __x(afgen::f32_to_f16((float)v)) {}
  constexpr __half(int v) : __x(afgen::f32_to_f16((float)v)) {}
  constexpr __half(unsigned int v) : __x(afgen::f32_to_f16((float)v)) {}
  constexpr __half(long v) : __x(afgen::f32_to_f16((float)v)) {}
  constexpr __half(unsigned long v) : __x(afgen::f32_to_f16((float)v)) {}
  constexpr __half(long long v) : __x(afgen::f32_to_f16((float)v)) {}
  constexpr __half(unsigned long long v) : __x(afgen::f32_to_f16((float)v)) {}
  constexpr operator float() const { return afgen::f16_to_f32(__x); }
};
struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(float f) : __x(afgen::f32_to_bf16(f)) {}
  constexpr __nv_bfloat16(double f) : __x(afgen::f32_to_bf16((float)f)) {}
  constexpr __nv_bfloat16(short v) : __x(afgen::f32_to_bf16((float)v)) {}
  constexpr __nv_bfloat16(unsigned short v) : __x(afgen::f32_to_bf16((float)v)) {}
  constexpr __nv_bfloat16(int v) : __x(afgen::f32_to_bf16((float)v)) {}
  constexpr __nv_bfloat16(unsigned int v) : __x(afgen::f32_to_bf16((float)v)) {}
  constexpr __nv_bfloat16(long v) : __x(afgen::f32_to_bf16((float)v)) {}
  constexpr __nv_bfloat16(unsigned long v) : __x(afgen::f32_to_bf16((float)v)) {}
  constexpr __nv_bfloat16(long long v) : __x(afgen::f32_to_bf16((float)v)) {}
  constexpr __nv_bfloat16(unsigned long long v) : __x(afgen::f32_to_bf16((float)v)) {}
  constexpr operator float() const { return afgen::bf16_to_f32(__x); }
};
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;

#define AFGEN_H16_OPS(T)                                                  \
  inline T operator+(const T& a, const T& b) { return T(float(a) + float(b)); } \
  inline T operator-(const T& a, const T& b) { return T(float(a) - float(b)); } \
  inline T operator*(const T& a, const T& b) { return T(float(a) * float(b)); } \
  inline T operator/(const T& a, const T& b) { return T(float(a) / float(b)); } \
  inline T operator-(const T& a) { return T(-float(a)); }                 \
  inline T& operator+=(T& a, const T& b) { return a = a + b; }            \
  inline T& operator-=(T& a, const T& b) { return a = a - b; }            \
  inline T& operator*=(T& a, const T& b) { return a = a * b; }            \
  inline T& operator/=(T& a, const T& b) { return a = a / b; }            \
  inline bool operator==(const T& a, const T& b) { return float(a) == float(b); } \
  inline bool operator!=(const T& a, const T& b) { return float(a) != float(b); } \
  inline bool operator<(const T& a, const T& b) { return float(a) < float(b); }   \
  inline bool operator<=(const T& a, const T& b) { return float(a) <= float(b); } \
  inline bool operator>(const T& a, const T& b) { return float(a) > float(b); }   \
  inline bool operator>=(const T& a, const T& b) { return float(a) >= float(b); }
AFGEN_H16_OPS(__half)
AFGEN_H16_OPS(__nv_bfloat16)
#undef AFGEN_H16_OPS

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hsub(__half a, __half b) { return a - b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hdiv(__half a, __half b) { return a / b; }
inline __half __hneg(__half a) { return -a; }
inline __half __hmax(__half a, __half b) { return __half(fmaxf(a, b)); }
inline __half __hmin(__half a, __half b) { return __half(fminf(a, b)); }
inline __half hsqrt(__half a) { return __half(sqrtf(float(a))); }
inline __half hexp(__half a) { return __half(expf(float(a))); }
inline __half hlog(__half a) { return __half(logf(float(a))); }
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return a + b; }
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return a * b; }

// ---------------------------------------------------------------------------
// cuda::std subset.
namespace cuda {
namespace std {
template <class T, size_t N>
struct array {
  T __elems_[N];
  constexpr T& operator[](size_t i) { return __elems_[i]; }
  constexpr const T& operator[](size_t i) const { return __elems_[i]; }
  constexpr T* data() { return __elems_; }
  constexpr const T* data() const { return __elems_; }
  constexpr size_t size() const { return N; }
  constexpr T* begin() { return __elems_; }
  constexpr T* end() { return __elems_ + N; }
  constexpr const T* begin() const { return __elems_; }
  constexpr const T* end() const { return __elems_ + N; }
};
template <class T>
struct numeric_limits;
#define AFGEN_INT_LIMITS(T, lo, hi)                 \
  template <>                                       \
  struct numeric_limits<T> {                        \
    static constexpr T min() { return (T)(lo); }    \
    static constexpr T lowest() { return (T)(lo); } \
    static constexpr T max() { return (T)(hi); }    \
  };
AFGEN_INT_LIMITS(int, -2147483647 - 1, 2147483647)
AFGEN_INT_LIMITS(unsigned int, 0u, 4294967295u)
AFGEN_INT_LIMITS(long, -9223372036854775807L - 1, 9223372036854775807L)
AFGEN_INT_LIMITS(unsigned long, 0ul, 18446744073709551615ul)
#undef AFGEN_INT_LIMITS
template <>
struct numeric_limits<float> {
  static constexpr float min() { return 0x1p-126f; }
  static constexpr float lowest() { return -0x1.fffffep+127f; }
  static constexpr float max() { return 0x1.fffffep+127f; }
  static constexpr float infinity() { return __builtin_inff(); }
  static constexpr float quiet_NaN() { return __builtin_nanf(""); }
  static constexpr float epsilon() { return 0x1p-23f; }
};
template <>
struct numeric_limits<double> {
  static constexpr double min() { return 0x1p-1022; }
  static constexpr double lowest() { return -0x1.fffffffffffffp+1023; }
  static constexpr double max() { return 0x1.fffffffffffffp+1023; }
  static constexpr double infinity() { return __builtin_inf(); }
  static constexpr double quiet_NaN() { return __builtin_nan(""); }
  static constexpr double epsilon() { return 0x1p-52; }
};
}  // namespace std
}  // namespace cuda

// ---------------------------------------------------------------------------
// Synchronisation, warp intrinsics and atomics.
inline void __syncthreads() { afgen_group_barrier(); }

namespace afgen {
template <class T>
inline T lane_value(const unsigned char* slots, unsigned lane,
                    unsigned active) {
  T out;
  if (lane < AFGEN_SIMD_WIDTH && (active >> lane & 1u)) {
    __builtin_memcpy(&out, slots + lane * AFGEN_SLOT_BYTES, sizeof(T));
  } else {
    __builtin_memset(&out, 0xFF, sizeof(T));
  }
  return out;
}
inline unsigned lane() { return afgen_self()->lane; }
template <class T>
inline T shfl(unsigned mask, T v, unsigned src, bool keep_own) {
  static_assert(sizeof(T) <= AFGEN_SLOT_BYTES, "shuffle value too large");
  unsigned active = 0;
  const unsigned char* s = afgen_lane_exchange(&v, sizeof(T), mask, &active);
  return keep_own ? v : lane_value<T>(s, src, active);
}
}  // namespace afgen

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  unsigned active = 0;
  afgen_lane_exchange(nullptr, 0, mask, &active);
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  unsigned base = afgen::lane() / width * width;
  return afgen::shfl(mask, v, base + (unsigned)src % width, false);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  unsigned me = afgen::lane();
  bool own = me % width + delta >= (unsigned)width;
  return afgen::shfl(mask, v, me + delta, own);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  unsigned me = afgen::lane();
  bool own = me % width < delta;
  return afgen::shfl(mask, v, me - delta, own);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  unsigned me = afgen::lane();
  unsigned src = me ^ (unsigned)lane_mask;
  bool own = src / width > me / width;  // later segments are not readable
  return afgen::shfl(mask, v, src, own);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  unsigned active = 0;
  bool p = pred != 0;
  const unsigned char* s = afgen_lane_exchange(&p, 1, mask, &active);
  unsigned out = 0;
  for (unsigned l = 0; l < AFGEN_SIMD_WIDTH; ++l) {
    if ((active >> l & 1u) && afgen::lane_value<bool>(s, l, active)) {
      out |= 1u << l;
    }
  }
  return out;
}
inline int __all_sync(unsigned mask, int pred) {
  return __ballot_sync(mask, pred) == __ballot_sync(mask, 1);
}
inline int __any_sync(unsigned mask, int pred) {
  return __ballot_sync(mask, pred) != 0;
}

template <class T, class U>
inline T atomicAdd(T* p, U v) {
  T old = *p;
  *p = T(old + T(v));
  return old;
}
template <class T, class U>
inline T atomicSub(T* p, U v) {
  T old = *p;
  *p = T(old - T(v));
  return old;
}
template <class T, class U>
inline T atomicMax(T* p, U v) {
  T old = *p;
  *p = old < T(v) ? T(v) : old;
  return old;
}
template <class T, class U>
inline T atomicMin(T* p, U v) {
  T old = *p;
  *p = T(v) < old ? T(v) : old;
  return old;
}
template <class T, class U>
inline T atomicExch(T* p, U v) {
  T old = *p;
  *p = T(v);
  return old;
}
template <class T>
inline T atomicCAS(T* p, T compare, T v) {
  T old = *p;
  if (old == compare) *p = v;
  return old;
}

// ---------------------------------------------------------------------------
// cooperative_groups subset: grid, block and 32-wide tiles (what
// <cooperative_groups.h> declares; cg::reduce needs a header MLX does not
// include, so it is absent here too).
namespace cooperative_groups {
struct thread_block {
  void sync() const { afgen_group_barrier(); }
  unsigned thread_rank() const { return afgen_self()->index_in_group; }
  unsigned size() const { return afgen_self()->group_threads; }
  unsigned num_threads() const { return size(); }
  dim3 group_index() const { return blockIdx; }
  dim3 thread_index() const { return threadIdx; }
};
inline thread_block this_thread_block() { return thread_block(); }

struct grid_group {
  unsigned long long thread_rank() const {
    const afgen_thread_info* t = afgen_self();
    const unsigned* n = t->groups_per_grid;
    const unsigned* b = t->group_pos;
    unsigned long long block = b[0] + (unsigned long long)n[0] * (b[1] + n[1] * b[2]);
    return block * t->group_threads + t->index_in_group;
  }
  unsigned long long size() const {
    const afgen_thread_info* t = afgen_self();
    const unsigned* n = t->groups_per_grid;
    return (unsigned long long)n[0] * n[1] * n[2] * t->group_threads;
  }
  unsigned long long num_threads() const { return size(); }
};
inline grid_group this_grid() { return grid_group(); }
inline void sync(const thread_block& b) { b.sync(); }

template <unsigned N>
struct thread_block_tile {
  static_assert(N == 32, "only 32-wide tiles are supported");
  void sync() const { __syncwarp(); }
  unsigned thread_rank() const { return afgen_self()->lane; }
  unsigned meta_group_rank() const { return afgen_self()->simd_group; }
  unsigned meta_group_size() const { return afgen_self()->simd_groups; }
  static constexpr unsigned size() { return N; }
  static constexpr unsigned num_threads() { return N; }
  template <class T>
  T shfl(T v, int src) const {
    return __shfl_sync(0xffffffffu, v, src);
  }
  template <class T>
  T shfl_down(T v, unsigned d) const {
    return __shfl_down_sync(0xffffffffu, v, d);
  }
  template <class T>
  T shfl_up(T v, unsigned d) const {
    return __shfl_up_sync(0xffffffffu, v, d);
  }
  template <class T>
  T shfl_xor(T v, int m) const {
    return __shfl_xor_sync(0xffffffffu, v, m);
  }
};
template <unsigned N, class Parent>
inline thread_block_tile<N> tiled_partition(const Parent&) {
  return thread_block_tile<N>();
}

}  // namespace cooperative_groups

// ---------------------------------------------------------------------------
// What mlx/backend/cuda/device/utils.cuh provides that custom kernels use.
namespace mlx::core::cu {
using Shape = cuda::std::array<int32_t, MAX_NDIM>;
using Strides = cuda::std::array<int64_t, MAX_NDIM>;

template <typename IdxT = int64_t>
inline IdxT elem_to_loc(IdxT elem, const int* shape, const int64_t* strides,
                        int ndim) {
  IdxT loc = 0;
  for (int i = ndim - 1; i >= 0 && elem > 0; --i) {
    loc += (elem % shape[i]) * IdxT(strides[i]);
    elem /= shape[i];
  }
  return loc;
}

template <typename T>
struct Limits {
  static constexpr T max() { return cuda::std::numeric_limits<T>::max(); }
  static constexpr T min() { return cuda::std::numeric_limits<T>::min(); }
  static constexpr T finite_max() {
    return cuda::std::numeric_limits<T>::max();
  }
  static constexpr T finite_min() {
    return cuda::std::numeric_limits<T>::min();
  }
};
#define AFGEN_FLOAT_LIMITS(T)                                              \
  template <>                                                              \
  struct Limits<T> {                                                       \
    static constexpr T max() { return cuda::std::numeric_limits<T>::infinity(); } \
    static constexpr T min() {                                             \
      return -cuda::std::numeric_limits<T>::infinity();                    \
    }                                                                      \
    static constexpr T finite_max() {                                      \
      return cuda::std::numeric_limits<T>::max();                          \
    }                                                                      \
    static constexpr T finite_min() {                                      \
      return cuda::std::numeric_limits<T>::lowest();                       \
    }                                                                      \
  };
AFGEN_FLOAT_LIMITS(float)
AFGEN_FLOAT_LIMITS(double)
#undef AFGEN_FLOAT_LIMITS
}  // namespace mlx::core::cu

// ---------------------------------------------------------------------------
// Launch glue used by the generated entry point (not part of CUDA).
namespace afgen {
struct arg {
  void* p;
  template <class T>
  operator T&() const {
    return *static_cast<T*>(p);
  }
};
}  // namespace afgen
