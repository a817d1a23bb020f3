/* bfloat16 <-> float32 for the kernels' scalar code (cpu_ops.c, decode_loop.c): one home for the
 * rounding, which must stay torch's (round to nearest even; NaN kept a quiet NaN). */
#ifndef VLLM_CLI_BF16_H
#define VLLM_CLI_BF16_H
#include <stdint.h>

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
#endif
