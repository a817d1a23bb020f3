/* CPU kernels for the chains of small elementwise torch ops in every layer: each call replaces
 * several torch ops, each with its own dispatch and its own pass over memory. Built with the
 * system C compiler at first use (kernels/cpu.py) and called through ctypes; every kernel has a
 * torch reference there and a test against it.
 *
 * Tensors are passed as raw pointers with the strides the caller checked. Two element types:
 * float32 (suffix _f32) and bfloat16 (suffix _bf16, stored as uint16; math in float32).
 * Single-threaded on purpose: a second OpenMP runtime beside torch's makes both slower.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16_t;

static inline float bf16_to_f32(bf16_t x) {
    union { uint32_t u; float f; } v;
    v.u = ((uint32_t)x) << 16;
    return v.f;
}

static inline bf16_t f32_to_bf16(float f) {  /* round to nearest even, as torch does */
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((v.u >> 16) | 0x40);  /* NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (bf16_t)(v.u >> 16);
}

#define LOAD_f32(p) (p)
#define LOAD_bf16(p) bf16_to_f32(p)
#define STORE_f32(x) (x)
#define STORE_bf16(x) f32_to_bf16(x)

typedef float f32_t;

/* RMSNorm over rows of width N, as transformers computes it: x * rsqrt(mean(x^2) + eps) in
 * float32, rounded to the model dtype, then times the weight (in the model dtype). In and out
 * rows may have strides (out may alias x). */
#define DEFINE_RMS_NORM(T)                                                                          \
void rms_norm_##T(int64_t rows, int64_t N, const T##_t *x, int64_t x_stride, const T##_t *weight,  \
                  float eps, T##_t *out, int64_t out_stride) {                                      \
    for (int64_t r = 0; r < rows; r++) {                                                            \
        const T##_t *xr = x + r * x_stride;                                                         \
        T##_t *orow = out + r * out_stride;                                                         \
        float ss = 0.f;                                                                             \
        for (int64_t i = 0; i < N; i++) { const float v = LOAD_##T(xr[i]); ss += v * v; }           \
        const float inv = 1.f / sqrtf(ss / (float)N + eps);                                         \
        for (int64_t i = 0; i < N; i++) {                                                           \
            const float normed = LOAD_##T(STORE_##T(LOAD_##T(xr[i]) * inv));                        \
            orow[i] = STORE_##T(LOAD_##T(weight[i]) * normed);                                      \
        }                                                                                           \
    }                                                                                               \
}

DEFINE_RMS_NORM(f32)
DEFINE_RMS_NORM(bf16)

/* Rotary embedding, neox style (rotate halves), in place on `heads` heads of each row:
 *   x[t, h, :rot] = (x1 * c - x2 * s, x2 * c + x1 * s), x1/x2 the halves of the first rot dims
 * cos/sin [T, rot / 2] in float32 (already scaled); each product rounded to the model dtype as
 * torch computes it in that dtype. */
#define DEFINE_ROPE(T)                                                                              \
void rotary_neox_##T(int64_t tokens, int64_t heads, int64_t D, int64_t rot, T##_t *x,             \
                     int64_t row_stride, const T##_t *cos, const T##_t *sin) {                      \
    const int64_t half = rot / 2;                                                                   \
    for (int64_t t = 0; t < tokens; t++) {                                                          \
        const T##_t *c = cos + t * half, *s = sin + t * half;                                       \
        for (int64_t h = 0; h < heads; h++) {                                                       \
            T##_t *xh = x + t * row_stride + h * D;                                                 \
            for (int64_t i = 0; i < half; i++) {                                                    \
                const float x1 = LOAD_##T(xh[i]), x2 = LOAD_##T(xh[i + half]);                      \
                const float ci = LOAD_##T(c[i]), si = LOAD_##T(s[i]);                               \
                const float a = LOAD_##T(STORE_##T(x1 * ci)), b = LOAD_##T(STORE_##T(x2 * si));      \
                const float e = LOAD_##T(STORE_##T(x2 * ci)), f = LOAD_##T(STORE_##T(x1 * si));      \
                xh[i] = STORE_##T(a - b);                                                           \
                xh[i + half] = STORE_##T(e + f);                                                    \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
}

DEFINE_ROPE(f32)
DEFINE_ROPE(bf16)
