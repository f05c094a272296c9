// Stand-in for MLX's Metal preamble (metal::utils()) and the subset of the
// Metal Shading Language that afgen kernels use, so that the exact kernel
// text MLX hands to the Metal compiler can be compiled by g++ and run on the
// CPU. The kernel unit is compiled with -nostdinc: nothing from the C++
// standard library is visible, so code that would not compile as MSL fails
// here too. Anything not defined below is deliberately unsupported.
#pragma once

#include "runtime.h"

#define __METAL__ 1
#define __METAL_VERSION__ 310
#define __HAVE_BFLOAT__ 1
#define MLX_METAL_JIT 1

// Address spaces and function qualifiers carry no meaning on the CPU.
#define device
#define constant
#define thread
#define threadgroup
#define kernel
#define METAL_FUNC inline __attribute__((always_inline))
// Storage for threadgroup variables: one static copy shared by the
// threadgroup (threadgroups run one at a time). The kernel unit's
// uninitialised static storage is moved to the section the runtime poisons
// with 0xFF bytes before each threadgroup. constinit rejects initialisers,
// as MSL does for threadgroup variables.
#define afgen_threadgroup_storage static __constinit

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;
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

namespace afgen {

template <bool B, class T = int>
struct enable_if {};
template <class T>
struct enable_if<true, T> {
  typedef T type;
};
template <class A, class B>
struct is_same {
  static constexpr bool value = false;
};
template <class A>
struct is_same<A, A> {
  static constexpr bool value = true;
};
template <class T>
struct is_int {
  static constexpr bool value = false;
};
#define AFGEN_INT(T)                    \
  template <>                           \
  struct is_int<T> {                    \
    static constexpr bool value = true; \
  };
AFGEN_INT(bool)
AFGEN_INT(char)
AFGEN_INT(signed char)
AFGEN_INT(unsigned char)
AFGEN_INT(short)
AFGEN_INT(unsigned short)
AFGEN_INT(int)
AFGEN_INT(unsigned int)
AFGEN_INT(long)
AFGEN_INT(unsigned long)
AFGEN_INT(long long)
AFGEN_INT(unsigned long long)
#undef AFGEN_INT
template <class T>
struct is_flt {
  static constexpr bool value = is_same<T, float>::value ||
      is_same<T, double>::value;
};
template <class T>
using if_int = typename enable_if<is_int<T>::value>::type;
template <class T>
using if_builtin =
    typename enable_if<is_int<T>::value || is_flt<T>::value>::type;

constexpr float bits_to_f32(unsigned u) { return __builtin_bit_cast(float, u); }
constexpr unsigned f32_to_bits(float f) {
  return __builtin_bit_cast(unsigned, f);
}

// IEEE binary16 round-to-nearest-even (F. Giesen's float_to_half_rtne).
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
    x += 0xc8000fffu + odd;  // rebias exponent (-112 << 23) and round
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

// bfloat16 round-to-nearest-even; NaN becomes the canonical quiet NaN.
constexpr unsigned short f32_to_bf16(float f) {
  unsigned x = f32_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)0x7fc0;
  x += 0x7fffu + ((x >> 16) & 1u);
  return (unsigned short)(x >> 16);
}

constexpr float bf16_to_f32(unsigned short b) {
  return bits_to_f32((unsigned)b << 16);
}

}  // namespace afgen

namespace metal {

// ---------------------------------------------------------------------------
// half: IEEE binary16 storage; arithmetic is done in float and rounded back
// (exact for + - * / and sqrt). Converts implicitly to and from builtin types.
struct half {
  unsigned short bits_;
  half() = default;
  template <class T, class = afgen::if_builtin<T>>
  constexpr half(T v) : bits_(afgen::f32_to_f16((float)v)) {}
  constexpr operator float() const { return afgen::f16_to_f32(bits_); }
};

// bfloat: converts implicitly to float only. Every conversion into bfloat
// must be explicit, so an accidental float -> bfloat narrowing fails to
// compile, as in MSL.
struct bfloat {
  unsigned short bits_;
  bfloat() = default;
  template <class T, class = afgen::if_builtin<T>>
  constexpr explicit bfloat(T v) : bits_(afgen::f32_to_bf16((float)v)) {}
  constexpr explicit bfloat(half v) : bits_(afgen::f32_to_bf16(float(v))) {}
  constexpr operator float() const { return afgen::bf16_to_f32(bits_); }
  constexpr explicit operator half() const { return half(float(*this)); }
};

constexpr half operator-(half a) { return half(-float(a)); }
constexpr half operator+(half a) { return a; }
constexpr bfloat operator-(bfloat a) { return bfloat(-float(a)); }
constexpr bfloat operator+(bfloat a) { return a; }

#define AFGEN_HALF_BINOP(op)                                            \
  constexpr half operator op(half a, half b) {                          \
    return half(float(a) op float(b));                                  \
  }                                                                     \
  constexpr float operator op(half a, float b) { return float(a) op b; } \
  constexpr float operator op(float a, half b) { return a op float(b); } \
  constexpr float operator op(half a, double b) {                       \
    return float(a) op float(b);                                        \
  }                                                                     \
  constexpr float operator op(double a, half b) {                       \
    return float(a) op float(b);                                        \
  }                                                                     \
  template <class I, class = afgen::if_int<I>>                          \
  constexpr half operator op(half a, I b) {                             \
    return half(float(a) op float(b));                                  \
  }                                                                     \
  template <class I, class = afgen::if_int<I>>                          \
  constexpr half operator op(I a, half b) {                             \
    return half(float(a) op float(b));                                  \
  }                                                                     \
  constexpr bfloat operator op(bfloat a, bfloat b) {                    \
    return bfloat(float(a) op float(b));                                \
  }
AFGEN_HALF_BINOP(+)
AFGEN_HALF_BINOP(-)
AFGEN_HALF_BINOP(*)
AFGEN_HALF_BINOP(/)
#undef AFGEN_HALF_BINOP

#define AFGEN_HALF_CMP(op)                                                  \
  constexpr bool operator op(half a, half b) { return float(a) op float(b); } \
  constexpr bool operator op(half a, float b) { return float(a) op b; }     \
  constexpr bool operator op(float a, half b) { return a op float(b); }     \
  constexpr bool operator op(half a, double b) { return float(a) op b; }    \
  constexpr bool operator op(double a, half b) { return a op float(b); }    \
  template <class I, class = afgen::if_int<I>>                              \
  constexpr bool operator op(half a, I b) {                                 \
    return float(a) op float(b);                                            \
  }                                                                         \
  template <class I, class = afgen::if_int<I>>                              \
  constexpr bool operator op(I a, half b) {                                 \
    return float(a) op float(b);                                            \
  }                                                                         \
  constexpr bool operator op(bfloat a, bfloat b) {                          \
    return float(a) op float(b);                                            \
  }
AFGEN_HALF_CMP(==)
AFGEN_HALF_CMP(!=)
AFGEN_HALF_CMP(<)
AFGEN_HALF_CMP(<=)
AFGEN_HALF_CMP(>)
AFGEN_HALF_CMP(>=)
#undef AFGEN_HALF_CMP

#define AFGEN_HALF_ASSIGN(op, bop)                          \
  template <class T>                                        \
  constexpr half& operator op(half& a, T b) {               \
    a = half(float(a) bop float(b));                        \
    return a;                                               \
  }                                                         \
  constexpr bfloat& operator op(bfloat& a, bfloat b) {      \
    a = bfloat(float(a) bop float(b));                      \
    return a;                                               \
  }
AFGEN_HALF_ASSIGN(+=, +)
AFGEN_HALF_ASSIGN(-=, -)
AFGEN_HALF_ASSIGN(*=, *)
AFGEN_HALF_ASSIGN(/=, /)
#undef AFGEN_HALF_ASSIGN

constexpr half operator""h(long double v) { return half((float)v); }
constexpr half operator""h(unsigned long long v) { return half((float)v); }

template <class T, class U>
constexpr T as_type(U u) {
  static_assert(sizeof(T) == sizeof(U), "as_type needs types of equal size");
  return __builtin_bit_cast(T, u);
}

// ---------------------------------------------------------------------------
// Type traits that metal_stdlib provides.
template <class A, class B>
constexpr bool is_same_v = afgen::is_same<A, B>::value;
template <class A, class B>
using is_same = afgen::is_same<A, B>;
template <bool B, class T = void>
using enable_if = afgen::enable_if<B, T>;
template <bool B, class T = void>
using enable_if_t = typename afgen::enable_if<B, T>::type;
template <bool B, class T, class F>
struct conditional {
  typedef T type;
};
template <class T, class F>
struct conditional<false, T, F> {
  typedef F type;
};
template <bool B, class T, class F>
using conditional_t = typename conditional<B, T, F>::type;
template <class T>
constexpr bool is_floating_point_v = afgen::is_flt<T>::value ||
    afgen::is_same<T, half>::value || afgen::is_same<T, bfloat>::value;
template <class T>
constexpr bool is_integral_v = afgen::is_int<T>::value;

// ---------------------------------------------------------------------------
// Vectors.
template <class T, int N>
struct vec;

}  // namespace metal

namespace afgen {
template <class T>
struct is_vec {
  static constexpr bool value = false;
};
template <class T, int N>
struct is_vec<metal::vec<T, N>> {
  static constexpr bool value = true;
};
template <class T>
using if_scalar = typename enable_if<!is_vec<T>::value>::type;

template <class T, int N, int... I>
struct swizzle {
  T v_[N];
  operator metal::vec<T, (int)sizeof...(I)>() const {
    return metal::vec<T, (int)sizeof...(I)>(v_[I]...);
  }
};
}  // namespace afgen

namespace metal {

template <class T>
struct vec<T, 2> {
  union {
    T v_[2];
    struct {
      T x, y;
    };
    struct {
      T r, g;
    };
    afgen::swizzle<T, 2, 1, 0> yx;
  };
  vec() = default;
  constexpr vec(T s) : v_{s, s} {}
  constexpr vec(T a, T b) : v_{a, b} {}
  template <class U>
  constexpr explicit vec(const vec<U, 2>& o) : v_{T(o.v_[0]), T(o.v_[1])} {}
  constexpr T& operator[](int i) { return v_[i]; }
  constexpr const T& operator[](int i) const { return v_[i]; }
};

template <class T>
struct vec<T, 3> {
  union {
    T v_[3];
    struct {
      T x, y, z;
    };
    struct {
      T r, g, b;
    };
    afgen::swizzle<T, 3, 0, 1> xy;
    afgen::swizzle<T, 3, 0, 2> xz;
    afgen::swizzle<T, 3, 1, 2> yz;
    afgen::swizzle<T, 3, 1, 0> yx;
  };
  vec() = default;
  constexpr vec(T s) : v_{s, s, s} {}
  constexpr vec(T a, T b, T c) : v_{a, b, c} {}
  constexpr vec(vec<T, 2> ab, T c) : v_{ab.v_[0], ab.v_[1], c} {}
  constexpr vec(T a, vec<T, 2> bc) : v_{a, bc.v_[0], bc.v_[1]} {}
  template <class U>
  constexpr explicit vec(const vec<U, 3>& o)
      : v_{T(o.v_[0]), T(o.v_[1]), T(o.v_[2])} {}
  constexpr T& operator[](int i) { return v_[i]; }
  constexpr const T& operator[](int i) const { return v_[i]; }
};

template <class T>
struct vec<T, 4> {
  union {
    T v_[4];
    struct {
      T x, y, z, w;
    };
    struct {
      T r, g, b, a;
    };
    afgen::swizzle<T, 4, 0, 1> xy;
    afgen::swizzle<T, 4, 2, 3> zw;
    afgen::swizzle<T, 4, 0, 1, 2> xyz;
  };
  vec() = default;
  constexpr vec(T s) : v_{s, s, s, s} {}
  constexpr vec(T a, T b, T c, T d) : v_{a, b, c, d} {}
  constexpr vec(vec<T, 2> ab, vec<T, 2> cd)
      : v_{ab.v_[0], ab.v_[1], cd.v_[0], cd.v_[1]} {}
  constexpr vec(vec<T, 3> abc, T d) : v_{abc.v_[0], abc.v_[1], abc.v_[2], d} {}
  template <class U>
  constexpr explicit vec(const vec<U, 4>& o)
      : v_{T(o.v_[0]), T(o.v_[1]), T(o.v_[2]), T(o.v_[3])} {}
  constexpr T& operator[](int i) { return v_[i]; }
  constexpr const T& operator[](int i) const { return v_[i]; }
};

#define AFGEN_VEC_BINOP(op, aop)                                            \
  template <class T, int N>                                                 \
  constexpr vec<T, N> operator op(const vec<T, N>& a, const vec<T, N>& b) { \
    vec<T, N> r = a;                                                        \
    for (int i = 0; i < N; ++i) r.v_[i] = T(a.v_[i] op b.v_[i]);            \
    return r;                                                               \
  }                                                                         \
  template <class T, int N, class S, class = afgen::if_scalar<S>>          \
  constexpr vec<T, N> operator op(const vec<T, N>& a, S s) {                \
    return a op vec<T, N>(T(s));                                            \
  }                                                                         \
  template <class T, int N, class S, class = afgen::if_scalar<S>>          \
  constexpr vec<T, N> operator op(S s, const vec<T, N>& a) {                \
    return vec<T, N>(T(s)) op a;                                            \
  }                                                                         \
  template <class T, int N, class S>                                        \
  constexpr vec<T, N>& operator aop(vec<T, N>& a, const S& b) {             \
    a = a op b;                                                             \
    return a;                                                               \
  }
AFGEN_VEC_BINOP(+, +=)
AFGEN_VEC_BINOP(-, -=)
AFGEN_VEC_BINOP(*, *=)
AFGEN_VEC_BINOP(/, /=)
AFGEN_VEC_BINOP(%, %=)
AFGEN_VEC_BINOP(&, &=)
AFGEN_VEC_BINOP(|, |=)
AFGEN_VEC_BINOP(^, ^=)
AFGEN_VEC_BINOP(<<, <<=)
AFGEN_VEC_BINOP(>>, >>=)
#undef AFGEN_VEC_BINOP

template <class T, int N>
constexpr vec<T, N> operator-(const vec<T, N>& a) {
  vec<T, N> r = a;
  for (int i = 0; i < N; ++i) r.v_[i] = T(-a.v_[i]);
  return r;
}

template <class T, int N>
constexpr T dot(const vec<T, N>& a, const vec<T, N>& b) {
  T s = T(a.v_[0] * b.v_[0]);
  for (int i = 1; i < N; ++i) s = T(s + a.v_[i] * b.v_[i]);
  return s;
}

#define AFGEN_VEC_TYPES(T, name) \
  typedef vec<T, 2> name##2;     \
  typedef vec<T, 3> name##3;     \
  typedef vec<T, 4> name##4;
AFGEN_VEC_TYPES(float, float)
AFGEN_VEC_TYPES(half, half)
AFGEN_VEC_TYPES(bfloat, bfloat)
AFGEN_VEC_TYPES(int, int)
AFGEN_VEC_TYPES(uint, uint)
AFGEN_VEC_TYPES(short, short)
AFGEN_VEC_TYPES(ushort, ushort)
AFGEN_VEC_TYPES(char, char)
AFGEN_VEC_TYPES(uchar, uchar)
AFGEN_VEC_TYPES(long, long)
AFGEN_VEC_TYPES(ulong, ulong)
AFGEN_VEC_TYPES(bool, bool)
#undef AFGEN_VEC_TYPES

// ---------------------------------------------------------------------------
// Numeric limits (metal_limits).
template <class T>
struct numeric_limits;
#define AFGEN_INT_LIMITS(T, lo, hi)                       \
  template <>                                             \
  struct numeric_limits<T> {                              \
    static constexpr T min() { return (T)(lo); }          \
    static constexpr T lowest() { return (T)(lo); }       \
    static constexpr T max() { return (T)(hi); }          \
    static constexpr bool is_integer = true;              \
  };
AFGEN_INT_LIMITS(bool, 0, 1)
AFGEN_INT_LIMITS(signed char, -128, 127)
AFGEN_INT_LIMITS(unsigned char, 0, 255)
AFGEN_INT_LIMITS(short, -32768, 32767)
AFGEN_INT_LIMITS(unsigned short, 0, 65535)
AFGEN_INT_LIMITS(int, -2147483647 - 1, 2147483647)
AFGEN_INT_LIMITS(unsigned int, 0u, 4294967295u)
AFGEN_INT_LIMITS(long, -9223372036854775807L - 1, 9223372036854775807L)
AFGEN_INT_LIMITS(unsigned long, 0ul, 18446744073709551615ul)
#undef AFGEN_INT_LIMITS

#define AFGEN_FLT_LIMITS(T, make, minb, maxb, infb, nanb, epsb) \
  template <>                                                   \
  struct numeric_limits<T> {                                    \
    static constexpr T min() { return make(minb); }             \
    static constexpr T lowest() { return -make(maxb); }         \
    static constexpr T max() { return make(maxb); }             \
    static constexpr T infinity() { return make(infb); }        \
    static constexpr T quiet_NaN() { return make(nanb); }       \
    static constexpr T epsilon() { return make(epsb); }         \
    static constexpr bool is_integer = false;                   \
  };
constexpr float afgen_f32(unsigned b) { return afgen::bits_to_f32(b); }
constexpr half afgen_f16(unsigned short b) { return as_type<half>(b); }
constexpr bfloat afgen_bf16(unsigned short b) { return as_type<bfloat>(b); }
AFGEN_FLT_LIMITS(float, afgen_f32, 0x00800000u, 0x7f7fffffu, 0x7f800000u,
                 0x7fc00000u, 0x34000000u)
AFGEN_FLT_LIMITS(half, afgen_f16, (unsigned short)0x0400,
                 (unsigned short)0x7bff, (unsigned short)0x7c00,
                 (unsigned short)0x7e00, (unsigned short)0x1400)
AFGEN_FLT_LIMITS(bfloat, afgen_bf16, (unsigned short)0x0080,
                 (unsigned short)0x7f7f, (unsigned short)0x7f80,
                 (unsigned short)0x7fc0, (unsigned short)0x3c00)
#undef AFGEN_FLT_LIMITS

// ---------------------------------------------------------------------------
// Math. float uses the compiler builtins; half and bfloat compute in float
// and round back to their own type.
#define AFGEN_UNARY(name, builtin)                                     \
  inline float name(float x) { return builtin(x); }                    \
  inline half name(half x) { return half(builtin(float(x))); }         \
  inline bfloat name(bfloat x) { return bfloat(builtin(float(x))); }   \
  template <class T, int N>                                            \
  inline vec<T, N> name(vec<T, N> v) {                                 \
    for (int i = 0; i < N; ++i) v.v_[i] = name(v.v_[i]);               \
    return v;                                                          \
  }

inline float afgen_rsqrt(float x) { return 1.0f / __builtin_sqrtf(x); }
inline float afgen_fract(float x) {
  float f = x - __builtin_floorf(x);
  return f < 0x1.fffffep-1f ? f : 0x1.fffffep-1f;
}
inline float afgen_exp10(float x) { return __builtin_powf(10.0f, x); }
inline float afgen_sign(float x) {
  return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : (x == x ? x * 0.0f : 0.0f));
}
inline float afgen_saturate(float x) {
  return __builtin_fminf(__builtin_fmaxf(x, 0.0f), 1.0f);
}

AFGEN_UNARY(sqrt, __builtin_sqrtf)
AFGEN_UNARY(rsqrt, afgen_rsqrt)
AFGEN_UNARY(exp, __builtin_expf)
AFGEN_UNARY(exp2, __builtin_exp2f)
AFGEN_UNARY(exp10, afgen_exp10)
AFGEN_UNARY(log, __builtin_logf)
AFGEN_UNARY(log2, __builtin_log2f)
AFGEN_UNARY(log10, __builtin_log10f)
AFGEN_UNARY(sin, __builtin_sinf)
AFGEN_UNARY(cos, __builtin_cosf)
AFGEN_UNARY(tan, __builtin_tanf)
AFGEN_UNARY(asin, __builtin_asinf)
AFGEN_UNARY(acos, __builtin_acosf)
AFGEN_UNARY(atan, __builtin_atanf)
AFGEN_UNARY(sinh, __builtin_sinhf)
AFGEN_UNARY(cosh, __builtin_coshf)
AFGEN_UNARY(tanh, __builtin_tanhf)
AFGEN_UNARY(asinh, __builtin_asinhf)
AFGEN_UNARY(acosh, __builtin_acoshf)
AFGEN_UNARY(atanh, __builtin_atanhf)
AFGEN_UNARY(cbrt, __builtin_cbrtf)
AFGEN_UNARY(floor, __builtin_floorf)
AFGEN_UNARY(ceil, __builtin_ceilf)
AFGEN_UNARY(round, __builtin_roundf)
AFGEN_UNARY(rint, __builtin_rintf)
AFGEN_UNARY(trunc, __builtin_truncf)
AFGEN_UNARY(fabs, __builtin_fabsf)
AFGEN_UNARY(fract, afgen_fract)
AFGEN_UNARY(sign, afgen_sign)
AFGEN_UNARY(saturate, afgen_saturate)
#undef AFGEN_UNARY

inline float abs(float x) { return __builtin_fabsf(x); }
inline half abs(half x) { return half(__builtin_fabsf(float(x))); }
inline bfloat abs(bfloat x) { return bfloat(__builtin_fabsf(float(x))); }
template <class I, class = afgen::if_int<I>>
constexpr I abs(I x) {
  return x < 0 ? I(-x) : x;
}
template <class T, int N>
inline vec<T, N> abs(vec<T, N> v) {
  for (int i = 0; i < N; ++i) v.v_[i] = abs(v.v_[i]);
  return v;
}

#define AFGEN_BINARY(name, builtin)                                         \
  inline float name(float x, float y) { return builtin(x, y); }             \
  inline half name(half x, half y) {                                        \
    return half(builtin(float(x), float(y)));                               \
  }                                                                         \
  inline bfloat name(bfloat x, bfloat y) {                                  \
    return bfloat(builtin(float(x), float(y)));                             \
  }                                                                         \
  template <class T, int N>                                                 \
  inline vec<T, N> name(vec<T, N> a, const vec<T, N>& b) {                  \
    for (int i = 0; i < N; ++i) a.v_[i] = name(a.v_[i], b.v_[i]);           \
    return a;                                                               \
  }

inline float afgen_powr(float x, float y) { return __builtin_powf(x, y); }
AFGEN_BINARY(pow, __builtin_powf)
AFGEN_BINARY(powr, afgen_powr)
AFGEN_BINARY(fmax, __builtin_fmaxf)
AFGEN_BINARY(fmin, __builtin_fminf)
AFGEN_BINARY(max, __builtin_fmaxf)
AFGEN_BINARY(min, __builtin_fminf)
AFGEN_BINARY(fmod, __builtin_fmodf)
AFGEN_BINARY(atan2, __builtin_atan2f)
AFGEN_BINARY(copysign, __builtin_copysignf)
#undef AFGEN_BINARY

template <class I, class = afgen::if_int<I>>
constexpr I max(I a, I b) {
  return a < b ? b : a;
}
template <class I, class = afgen::if_int<I>>
constexpr I min(I a, I b) {
  return b < a ? b : a;
}

inline float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline half fma(half a, half b, half c) {
  return half(__builtin_fmaf(float(a), float(b), float(c)));
}
inline float mix(float x, float y, float a) { return x + (y - x) * a; }
inline half mix(half x, half y, half a) { return half(x + (y - x) * a); }

template <class T>
inline T clamp(T x, T lo, T hi) {
  return min(max(x, lo), hi);
}
template <class T>
constexpr T select(T a, T b, bool c) {
  return c ? b : a;
}

constexpr bool isnan(float x) { return x != x; }
constexpr bool isnan(half x) { return float(x) != float(x); }
constexpr bool isnan(bfloat x) { return float(x) != float(x); }
constexpr bool isinf(float x) { return __builtin_fabsf(x) == __builtin_inff(); }
constexpr bool isinf(half x) { return isinf(float(x)); }
constexpr bool isinf(bfloat x) { return isinf(float(x)); }
constexpr bool isfinite(float x) { return !isnan(x) && !isinf(x); }
constexpr bool isfinite(half x) { return isfinite(float(x)); }
constexpr bool isfinite(bfloat x) { return isfinite(float(x)); }
constexpr bool signbit(float x) { return (afgen::f32_to_bits(x) >> 31) != 0; }

namespace precise {
using metal::cos;
using metal::exp;
using metal::exp2;
using metal::log;
using metal::log2;
using metal::pow;
using metal::rsqrt;
using metal::sin;
using metal::sqrt;
using metal::tanh;
}  // namespace precise
namespace fast {
using metal::cos;
using metal::exp;
using metal::exp2;
using metal::log;
using metal::log2;
using metal::pow;
using metal::rsqrt;
using metal::sin;
using metal::sqrt;
using metal::tanh;
}  // namespace fast

// ---------------------------------------------------------------------------
// Synchronisation and SIMD-group functions.
enum class mem_flags : unsigned {
  mem_none = 0,
  mem_device = 1,
  mem_threadgroup = 2,
  mem_texture = 4,
  mem_threadgroup_imageblock = 8,
};
constexpr mem_flags operator|(mem_flags a, mem_flags b) {
  return mem_flags((unsigned)a | (unsigned)b);
}

inline void threadgroup_barrier(mem_flags) { afgen_group_barrier(); }

inline void simdgroup_barrier(mem_flags) {
  unsigned active = 0;
  afgen_lane_exchange(nullptr, 0, 0, &active);
}

}  // namespace metal

namespace afgen {

// Values of lanes outside the active set read as 0xFF garbage.
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

template <class T>
inline const unsigned char* exchange(const T& v, unsigned* active) {
  static_assert(sizeof(T) <= AFGEN_SLOT_BYTES, "SIMD value too large");
  return afgen_lane_exchange(&v, sizeof(T), 0, active);
}

inline unsigned my_lane() { return afgen_self()->lane; }

// Pairwise (tree) reduction over the active lanes, like the hardware's
// butterfly, so rounding is close to what a GPU produces.
template <class T, class Op>
inline T simd_reduce(T v, Op op) {
  unsigned active = 0;
  const unsigned char* slots = exchange(v, &active);
  T vals[AFGEN_SIMD_WIDTH];
  unsigned present = active;
  for (unsigned l = 0; l < AFGEN_SIMD_WIDTH; ++l) {
    vals[l] = lane_value<T>(slots, l, active);
  }
  for (unsigned stride = AFGEN_SIMD_WIDTH / 2; stride > 0; stride /= 2) {
    for (unsigned l = 0; l < stride; ++l) {
      bool a = present >> l & 1u, b = present >> (l + stride) & 1u;
      if (a && b) vals[l] = op(vals[l], vals[l + stride]);
      if (!a && b) vals[l] = vals[l + stride];
      if (a || b) present |= 1u << l;
    }
  }
  return vals[0];
}

template <class T, class Op>
inline T simd_scan(T v, Op op, bool inclusive, T identity) {
  unsigned active = 0;
  const unsigned char* slots = exchange(v, &active);
  unsigned me = my_lane();
  T acc = identity;
  for (unsigned l = 0; l < me; ++l) {
    if (active >> l & 1u) acc = op(acc, lane_value<T>(slots, l, active));
  }
  return inclusive ? op(acc, v) : acc;
}

template <class T>
inline T shuffle_from(T v, unsigned src, bool keep_own) {
  unsigned active = 0;
  const unsigned char* slots = exchange(v, &active);
  return keep_own ? v : lane_value<T>(slots, src, active);
}

}  // namespace afgen

namespace metal {

template <class T>
inline T simd_sum(T v) {
  return afgen::simd_reduce(v, [](T a, T b) { return T(a + b); });
}
template <class T>
inline T simd_product(T v) {
  return afgen::simd_reduce(v, [](T a, T b) { return T(a * b); });
}
template <class T>
inline T simd_max(T v) {
  return afgen::simd_reduce(v, [](T a, T b) { return max(a, b); });
}
template <class T>
inline T simd_min(T v) {
  return afgen::simd_reduce(v, [](T a, T b) { return min(a, b); });
}
template <class T>
inline T simd_and(T v) {
  return afgen::simd_reduce(v, [](T a, T b) { return T(a & b); });
}
template <class T>
inline T simd_or(T v) {
  return afgen::simd_reduce(v, [](T a, T b) { return T(a | b); });
}
template <class T>
inline T simd_xor(T v) {
  return afgen::simd_reduce(v, [](T a, T b) { return T(a ^ b); });
}
inline bool simd_all(bool v) {
  return afgen::simd_reduce(v, [](bool a, bool b) { return a && b; });
}
inline bool simd_any(bool v) {
  return afgen::simd_reduce(v, [](bool a, bool b) { return a || b; });
}
template <class T>
inline T simd_prefix_inclusive_sum(T v) {
  return afgen::simd_scan(v, [](T a, T b) { return T(a + b); }, true, T(0));
}
template <class T>
inline T simd_prefix_exclusive_sum(T v) {
  return afgen::simd_scan(v, [](T a, T b) { return T(a + b); }, false, T(0));
}
template <class T>
inline T simd_prefix_inclusive_product(T v) {
  return afgen::simd_scan(v, [](T a, T b) { return T(a * b); }, true, T(1));
}
template <class T>
inline T simd_prefix_exclusive_product(T v) {
  return afgen::simd_scan(v, [](T a, T b) { return T(a * b); }, false, T(1));
}

template <class T>
inline T simd_shuffle(T v, ushort lane) {
  return afgen::shuffle_from(v, lane, false);
}
template <class T>
inline T simd_broadcast(T v, ushort lane) {
  return afgen::shuffle_from(v, lane, false);
}
template <class T>
inline T simd_shuffle_down(T v, ushort delta) {
  unsigned src = afgen::my_lane() + delta;
  return afgen::shuffle_from(v, src, src >= AFGEN_SIMD_WIDTH);
}
template <class T>
inline T simd_shuffle_up(T v, ushort delta) {
  unsigned me = afgen::my_lane();
  return afgen::shuffle_from(v, me - delta, delta > me);
}
template <class T>
inline T simd_shuffle_xor(T v, ushort mask) {
  return afgen::shuffle_from(v, (afgen::my_lane() ^ mask) % 64u, false);
}
template <class T>
inline T simd_shuffle_rotate_down(T v, ushort delta) {
  return afgen::shuffle_from(
      v, (afgen::my_lane() + delta) % AFGEN_SIMD_WIDTH, false);
}
template <class T>
inline T simd_shuffle_rotate_up(T v, ushort delta) {
  unsigned me = afgen::my_lane() + AFGEN_SIMD_WIDTH;
  return afgen::shuffle_from(v, (me - delta % AFGEN_SIMD_WIDTH) %
                                    AFGEN_SIMD_WIDTH, false);
}
template <class T>
inline T simd_broadcast_first(T v) {
  unsigned active = 0;
  const unsigned char* slots = afgen::exchange(v, &active);
  return afgen::lane_value<T>(slots, __builtin_ctz(active), active);
}
inline bool simd_is_first() {
  unsigned active = 0;
  afgen_lane_exchange(nullptr, 0, 0, &active);
  return __builtin_ctz(active) == afgen::my_lane();
}

// ---------------------------------------------------------------------------
// Atomics. Only one GPU thread runs at a time, so plain read-modify-write is
// atomic; memory orders have nothing to order.
enum memory_order {
  memory_order_relaxed,
  memory_order_acquire,
  memory_order_release,
  memory_order_acq_rel,
  memory_order_seq_cst
};
template <class T>
struct atomic {
  T v_;
};
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<float> atomic_float;
typedef atomic<bool> atomic_bool;

template <class T, class U>
inline void atomic_store_explicit(volatile atomic<T>* o, U v, memory_order) {
  o->v_ = T(v);
}
template <class T>
inline T atomic_load_explicit(volatile atomic<T>* o, memory_order) {
  return o->v_;
}
#define AFGEN_ATOMIC_RMW(name, expr)                                       \
  template <class T, class U>                                              \
  inline T name(volatile atomic<T>* o, U v, memory_order) {                \
    T old = o->v_;                                                         \
    T arg = T(v);                                                          \
    o->v_ = expr;                                                          \
    return old;                                                            \
  }
AFGEN_ATOMIC_RMW(atomic_fetch_add_explicit, T(old + arg))
AFGEN_ATOMIC_RMW(atomic_fetch_sub_explicit, T(old - arg))
AFGEN_ATOMIC_RMW(atomic_fetch_max_explicit, max(old, arg))
AFGEN_ATOMIC_RMW(atomic_fetch_min_explicit, min(old, arg))
AFGEN_ATOMIC_RMW(atomic_fetch_and_explicit, T(old & arg))
AFGEN_ATOMIC_RMW(atomic_fetch_or_explicit, T(old | arg))
AFGEN_ATOMIC_RMW(atomic_fetch_xor_explicit, T(old ^ arg))
AFGEN_ATOMIC_RMW(atomic_exchange_explicit, arg)
#undef AFGEN_ATOMIC_RMW
template <class T, class U>
inline bool atomic_compare_exchange_weak_explicit(volatile atomic<T>* o,
                                                  T* expected, U desired,
                                                  memory_order, memory_order) {
  if (o->v_ == *expected) {
    o->v_ = T(desired);
    return true;
  }
  *expected = o->v_;
  return false;
}

}  // namespace metal

// MSL macros.
#define INFINITY (__builtin_inff())
#define NAN (__builtin_nanf(""))
#define HUGE_VALF (__builtin_inff())
#define MAXFLOAT 0x1.fffffep+127f
#define FLT_MAX 0x1.fffffep+127f
#define FLT_MIN 0x1p-126f
#define FLT_EPSILON 0x1p-23f
#define HALF_MAX 65504.0h
#define M_PI_F 3.14159265358979323846264338327950288f
#define M_PI_2_F 1.57079632679489661923132169163975144f
#define M_1_PI_F 0.318309886183790671537767526745028724f
#define M_E_F 2.71828182845904523536028747135266250f
#define M_LOG2E_F 1.44269504088896340735992468100189214f
#define M_LOG10E_F 0.434294481903251827651128918916605082f
#define M_LN2_F 0.693147180559945309417232121458176568f
#define M_LN10_F 2.30258509299404568401799145468436421f
#define M_SQRT2_F 1.41421356237309504880168872420969808f
#define M_SQRT1_2_F 0.707106781186547524400844362104849039f

using namespace metal;

// ---------------------------------------------------------------------------
// What MLX's metal::utils() preamble adds on top of metal_stdlib.
typedef half float16_t;
typedef bfloat bfloat16_t;

inline uint16_t bfloat16_to_uint16(const bfloat16_t x) {
  return as_type<uint16_t>(x);
}
inline bfloat16_t uint16_to_bfloat16(const uint16_t x) {
  return as_type<bfloat16_t>(x);
}

template <typename U>
struct WorkPerThread {
  static_assert(sizeof(U) <= 8, "Type too large");
  static constexpr int n = 8 / sizeof(U);
};

template <typename U>
struct Limits {
  static constexpr U max = metal::numeric_limits<U>::max();
  static constexpr U min = metal::numeric_limits<U>::min();
  static constexpr U finite_max = metal::numeric_limits<U>::max();
  static constexpr U finite_min = metal::numeric_limits<U>::min();
};
#define AFGEN_FLOAT_LIMIT(type)                                      \
  template <>                                                        \
  struct Limits<type> {                                              \
    static constexpr type max = metal::numeric_limits<type>::infinity(); \
    static constexpr type min = -metal::numeric_limits<type>::infinity(); \
    static constexpr type finite_max = metal::numeric_limits<type>::max(); \
    static constexpr type finite_min = -metal::numeric_limits<type>::max(); \
  };
AFGEN_FLOAT_LIMIT(half)
AFGEN_FLOAT_LIMIT(float)
AFGEN_FLOAT_LIMIT(bfloat16_t)
#undef AFGEN_FLOAT_LIMIT

#define MLX_MTL_PRAGMA_UNROLL

template <typename IdxT = int64_t>
METAL_FUNC IdxT elem_to_loc(IdxT elem, constant const int* shape,
                            constant const int64_t* strides, int ndim) {
  IdxT loc = 0;
  for (int i = ndim - 1; i >= 0 && elem > 0; --i) {
    loc += (elem % shape[i]) * IdxT(strides[i]);
    elem /= shape[i];
  }
  return loc;
}

template <typename IdxT = int64_t>
METAL_FUNC IdxT elem_to_loc(uint3 elem, constant const int* shape,
                            constant const int64_t* strides, int ndim) {
  IdxT loc =
      elem.x * IdxT(strides[ndim - 1]) + elem.y * IdxT(strides[ndim - 2]);
  for (int d = ndim - 3; d >= 0; --d) {
    loc += (elem.z % shape[d]) * IdxT(strides[d]);
    elem.z /= shape[d];
  }
  return loc;
}

template <typename IdxT = int64_t>
METAL_FUNC IdxT elem_to_loc_1(uint elem, constant const int64_t& stride) {
  return elem * IdxT(stride);
}

template <typename IdxT = int64_t>
METAL_FUNC IdxT elem_to_loc_2(uint2 elem, constant const int64_t strides[2]) {
  return elem.x * IdxT(strides[1]) + elem.y * IdxT(strides[0]);
}

template <typename IdxT = int64_t>
METAL_FUNC IdxT elem_to_loc_3(uint3 elem, constant const int64_t strides[3]) {
  return elem.x * IdxT(strides[2]) + elem.y * IdxT(strides[1]) +
      elem.z * IdxT(strides[0]);
}

template <typename T, typename U>
inline T ceildiv(T N, U M) {
  return (N + M - 1) / M;
}

inline float log1p(float x) {
  float xp1 = 1.0f + x;
  if (xp1 == Limits<float>::max) return Limits<float>::max;
  if (xp1 == 1.0f) return x;
  return x * (metal::log(xp1) / (xp1 - 1.0f));
}

// ---------------------------------------------------------------------------
// Launch glue used by the generated entry point (not part of MSL).
namespace afgen {

// Binds a launch argument slot to whatever parameter type the kernel
// declares, like a CUDA launch binds void* args.
struct arg {
  void* p;
  template <class T>
  operator T&() const {
    return *static_cast<T*>(p);
  }
};

enum attr_id {
  attr_dispatch_quadgroups_per_threadgroup,
  attr_dispatch_simdgroups_per_threadgroup,
  attr_dispatch_threads_per_threadgroup,
  attr_grid_origin,
  attr_grid_size,
  attr_quadgroup_index_in_threadgroup,
  attr_quadgroups_per_threadgroup,
  attr_simdgroup_index_in_threadgroup,
  attr_simdgroups_per_threadgroup,
  attr_thread_execution_width,
  attr_thread_index_in_quadgroup,
  attr_thread_index_in_simdgroup,
  attr_thread_index_in_threadgroup,
  attr_thread_position_in_grid,
  attr_thread_position_in_threadgroup,
  attr_threadgroup_position_in_grid,
  attr_threadgroups_per_grid,
  attr_threads_per_grid,
  attr_threads_per_simdgroup,
  attr_threads_per_threadgroup,
};

inline void copy3(unsigned* out, const unsigned* in) {
  out[0] = in[0];
  out[1] = in[1];
  out[2] = in[2];
}

inline void fill_attr(attr_id id, unsigned* v) {
  const afgen_thread_info* t = afgen_self();
  unsigned quads = (t->group_threads + 3) / 4;
  unsigned dq = (t->dispatch_group[0] * t->dispatch_group[1] *
                 t->dispatch_group[2] + 3) / 4;
  unsigned s = 0;
  switch (id) {
    case attr_dispatch_quadgroups_per_threadgroup: s = dq; break;
    case attr_dispatch_simdgroups_per_threadgroup:
      s = t->dispatch_simd_groups;
      break;
    case attr_dispatch_threads_per_threadgroup:
      return copy3(v, t->dispatch_group);
    case attr_grid_origin: break;
    case attr_grid_size: return copy3(v, t->grid_size);
    case attr_quadgroup_index_in_threadgroup: s = t->index_in_group / 4; break;
    case attr_quadgroups_per_threadgroup: s = quads; break;
    case attr_simdgroup_index_in_threadgroup: s = t->simd_group; break;
    case attr_simdgroups_per_threadgroup: s = t->simd_groups; break;
    case attr_thread_execution_width: s = AFGEN_SIMD_WIDTH; break;
    case attr_thread_index_in_quadgroup: s = t->index_in_group % 4; break;
    case attr_thread_index_in_simdgroup: s = t->lane; break;
    case attr_thread_index_in_threadgroup: s = t->index_in_group; break;
    case attr_thread_position_in_grid: return copy3(v, t->pos_in_grid);
    case attr_thread_position_in_threadgroup:
      return copy3(v, t->pos_in_group);
    case attr_threadgroup_position_in_grid: return copy3(v, t->group_pos);
    case attr_threadgroups_per_grid: return copy3(v, t->groups_per_grid);
    case attr_threads_per_grid: return copy3(v, t->grid_size);
    case attr_threads_per_simdgroup: s = AFGEN_SIMD_WIDTH; break;
    case attr_threads_per_threadgroup: return copy3(v, t->group_size);
  }
  v[0] = s;
}

// Value of a thread attribute, convertible to every type MSL allows for it.
struct attr {
  unsigned v[3] = {0, 0, 0};
  explicit attr(attr_id id) { fill_attr(id, v); }
  operator uint3() const { return uint3(v[0], v[1], v[2]); }
  operator uint2() const { return uint2(v[0], v[1]); }
  operator uint() const { return v[0]; }
  operator ushort3() const {
    return ushort3(ushort(v[0]), ushort(v[1]), ushort(v[2]));
  }
  operator ushort2() const { return ushort2(ushort(v[0]), ushort(v[1])); }
};

}  // namespace afgen

// MSL has no double precision.
#define double afgen_double_is_not_supported_in_msl
