/* GGUF matmul kernels for weights kept quantized in memory: the K-quants Q4_K, Q5_K and Q6_K (what
 * Q4_K_M and Q5_K_M files are made of) and Q5_0, Q5_1 (what llama.cpp falls back to in those files
 * for rows that are no whole number of 256-weight blocks), byte for byte in ggml's block layouts
 * (ggml-common.h):
 *   Q4_K, 144 bytes / 256 weights: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins (8 sub-blocks
 *         of 32), 128 bytes of nibbles; w = d*sc[j]*q - dmin*mn[j]
 *   Q5_K, 176 bytes: as Q4_K plus 32 bytes holding each weight's fifth bit (qh) before the nibbles
 *   Q6_K, 210 bytes: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales (sub-blocks
 *         of 16), f16 d; w = d*sc[j]*(q - 32)
 *   Q5_0, 22 bytes / 32 weights: f16 d, 4 bytes of fifth bits, 16 of nibbles; w = d*(q - 16)
 *   Q5_1, 24 bytes: f16 d, f16 m, then as Q5_0; w = d*q + m
 *
 *   gguf_dequantize_<type>(blocks, out, n_elements)
 *   gguf_matmul_<type>(x, m, k, w, n, y): y[m, n] = x[m, k] @ dequant(w)[n, k]^T, w row-major, n rows
 *         of k / (weights per block) blocks each
 *
 * Activations are not quantized to fewer bits than float32 carries (Q5_0/Q5_1's m = 1 splits them
 * into integers exactly enough, below): the result is "dequantize, then a float matmul" up to
 * summation order, and dequantize matches gguf/ggml bit for bit.
 * m = 1 (decode), K-quants: per sub-block the raw quants are converted in registers and multiplied
 * into x, the sum scaled once; the mins (and Q6_K's -32) come from per-call sums of x over each
 * sub-block, so a weight costs a few integer ops, a conversion and one FMA, and the weights stream
 * from memory once. m = 1, Q5_0/Q5_1 (AVX-512BW, AVX2): x is rounded once per call to two int16 parts
 * per block, precise to ~2^-31 of the block's largest element, and the 5-bit quants times them are
 * summed exactly in int32, 32 weights an instruction (see kq_x16_prepare). m <= 4: each chunk is
 * dequantized in registers (the scale and min in one FMA) and multiplied into every row's
 * accumulators. m > 4 (a batch, a prefill chunk): quant_gemm.c dequantizes panels of weight rows once
 * per call (this file's block functions, row by row) and runs a register-blocked float GEMM over every
 * row of x. Rows of w (n) are spread over OpenMP threads (torch's libgomp, see cpu_ops.c), scheduled
 * dynamically (a descheduled thread then delays only its own rows), except Q5_0/Q5_1's m = 1: one
 * contiguous range per thread, one stream to prefetch, as quant_ops.c's GEMVs.
 *
 * One body per kernel, written on a small vector vocabulary (kq_vf / kq_vi and kq_* operations)
 * defined three times: AVX-512 (16 lanes), AVX2+FMA (8 lanes) and plain C (1 lane, the fallback
 * for other CPUs). Everything here is static or prefixed gguf_/kq_: this file shares its library
 * with cpu_ops.c and quant_ops.c.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#define KQ_QK 256
#define KQ_Q4K_BYTES 144
#define KQ_Q5K_BYTES 176
#define KQ_Q6K_BYTES 210

#if defined(__GNUC__) && !defined(__clang__)
#define KQ_UNROLL _Pragma("GCC unroll 16")
#elif defined(__clang__)
#define KQ_UNROLL _Pragma("unroll")
#else
#define KQ_UNROLL
#endif
#define KQ_INLINE static inline __attribute__((always_inline))
#define KQ_ALIGN64 __attribute__((aligned(64)))

/* ------------------------------------------------------------------------------------------- */
/* The vector vocabulary. kq_u8 / kq_i8 (p) zero- / sign-extend KQ_VLEN bytes at p into 32-bit lanes;
 * kq_bit4(bits, first): lane i is 16 where bit first + i of the uint32 bits is set, else 0. */

#if defined(__AVX512F__)
#define KQ_VLEN 16
typedef __m512 kq_vf;
typedef __m512i kq_vi;
#define kq_load(p) _mm512_loadu_ps(p)
#define kq_store(p, v) _mm512_storeu_ps((p), (v))
#define kq_set1(s) _mm512_set1_ps(s)
#define kq_zero() _mm512_setzero_ps()
#define kq_fma(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define kq_mul(a, b) _mm512_mul_ps((a), (b))
#define kq_u8(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define kq_i8(p) _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define kq_and(a, imm) _mm512_and_si512((a), _mm512_set1_epi32(imm))
#define kq_or(a, b) _mm512_or_si512((a), (b))
#define kq_srli(a, s) _mm512_srli_epi32((a), (s))
#define kq_slli(a, s) _mm512_slli_epi32((a), (s))
#define kq_cvt(a) _mm512_cvtepi32_ps(a)
#define kq_hsum(v) _mm512_reduce_add_ps(v)
#define kq_bit4(bits, first) _mm512_maskz_mov_epi32((__mmask16)((bits) >> (first)), _mm512_set1_epi32(16))
#elif defined(__AVX2__) && defined(__FMA__)
#define KQ_VLEN 8
typedef __m256 kq_vf;
typedef __m256i kq_vi;
#define kq_load(p) _mm256_loadu_ps(p)
#define kq_store(p, v) _mm256_storeu_ps((p), (v))
#define kq_set1(s) _mm256_set1_ps(s)
#define kq_zero() _mm256_setzero_ps()
#define kq_fma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define kq_mul(a, b) _mm256_mul_ps((a), (b))
#define kq_u8(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p)))
#define kq_i8(p) _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p)))
#define kq_and(a, imm) _mm256_and_si256((a), _mm256_set1_epi32(imm))
#define kq_or(a, b) _mm256_or_si256((a), (b))
#define kq_srli(a, s) _mm256_srli_epi32((a), (s))
#define kq_slli(a, s) _mm256_slli_epi32((a), (s))
#define kq_cvt(a) _mm256_cvtepi32_ps(a)
#define kq_bit4(bits, first)                                                                            \
    _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)((bits) >> (first))),           \
                                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),             \
                                       _mm256_set1_epi32(1)),                                                    \
                      4)
KQ_INLINE float kq_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#else
#define KQ_VLEN 1
typedef float kq_vf;
typedef int32_t kq_vi;
#define kq_load(p) (*(p))
#define kq_store(p, v) (*(p) = (v))
#define kq_set1(s) (s)
#define kq_zero() 0.f
#define kq_fma(a, b, c) ((a) * (b) + (c))
#define kq_mul(a, b) ((a) * (b))
#define kq_u8(p) ((int32_t)*(const uint8_t *)(p))
#define kq_i8(p) ((int32_t)*(const int8_t *)(p))
#define kq_and(a, imm) ((a) & (imm))
#define kq_or(a, b) ((a) | (b))
#define kq_srli(a, s) ((int32_t)((uint32_t)(a) >> (s)))
#define kq_slli(a, s) ((a) << (s))
#define kq_cvt(a) ((float)(a))
#define kq_hsum(v) (v)
#define kq_bit4(bits, first) ((int32_t)(((bits) >> (first)) & 1u) << 4)
#endif

/* IEEE half -> float, exact (subnormals included). */
KQ_INLINE float kq_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        const float f = (float)mant * 5.9604644775390625e-8f;  /* mant * 2^-24: zero and subnormals */
        return sign ? -f : f;
    }
    bits = exp == 31 ? sign | 0x7f800000u | (mant << 13) : sign | ((exp + 112u) << 23) | (mant << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* Q4_K/Q5_K: 8 six-bit scales and 8 six-bit mins packed in 12 bytes. Bytes 0-3 hold scales 0-3
 * (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the same for the mins; bytes 8-11 the
 * low nibbles of scales 4-7 (low half) and of mins 4-7 (high half). Unpacked four at a time in
 * 32-bit words (little-endian) -> out[16] = d * sc[0..7], -dmin * mn[0..7] (the mins negated: they
 * are subtracted). */
KQ_INLINE void kq_q45_scales(const uint8_t *s, float d, float dmin, float *out) {
    uint32_t u[3], v[4];
    memcpy(u, s, 12);
    v[0] = u[0] & 0x3f3f3f3fu;
    v[1] = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);
    v[2] = u[1] & 0x3f3f3f3fu;
    v[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);
    const uint8_t *b = (const uint8_t *)v;
#if KQ_VLEN == 16
    kq_store(out, kq_mul(kq_cvt(kq_u8(b)), _mm512_mask_blend_ps(0xff00, kq_set1(d), kq_set1(-dmin))));
#else
    for (int i = 0; i < 8; i += KQ_VLEN) {
        kq_store(out + i, kq_mul(kq_cvt(kq_u8(b + i)), kq_set1(d)));
        kq_store(out + 8 + i, kq_mul(kq_cvt(kq_u8(b + 8 + i)), kq_set1(-dmin)));
    }
#endif
}

/* Q6_K's 16 int8 scales -> ds[16] = d * sc, n32[16] = -32 * ds (exact). */
KQ_INLINE void kq_q6_scales(const uint8_t *blk, float *ds, float *n32) {
    const kq_vf d = kq_set1(kq_f16(blk + 208));
    KQ_UNROLL for (int i = 0; i < 16; i += KQ_VLEN) {
        const kq_vf v = kq_mul(kq_cvt(kq_i8(blk + 192 + i)), d);
        kq_store(ds + i, v);
        kq_store(n32 + i, kq_mul(v, kq_set1(-32.f)));
    }
}

/* ------------------------------------------------------------------------------------------- */
/* One block, dequantized chunk by chunk in registers: each macro calls EMIT(offset, vector,     */
/* slot) for every KQ_VLEN weights of the block (offset = the first weight's index in the block; */
/* slot 0-3 = which of the caller's independent accumulators to use, so FMA chains interleave).   */

#define KQ_Q4K_BLOCK(blk, EMIT)                                                                         \
    do {                                                                                                \
        const uint8_t *kq_b = (blk);                                                                    \
        KQ_ALIGN64 float kq_sm[16];                                                                     \
        kq_q45_scales(kq_b + 4, kq_f16(kq_b), kq_f16(kq_b + 2), kq_sm);                                 \
        const uint8_t *kq_qs = kq_b + 16;                                                               \
        KQ_UNROLL for (int kq_p = 0; kq_p < 4; kq_p++) {                                                \
            const kq_vf kq_d1 = kq_set1(kq_sm[2 * kq_p]), kq_m1 = kq_set1(kq_sm[8 + 2 * kq_p]);           \
            const kq_vf kq_d2 = kq_set1(kq_sm[2 * kq_p + 1]), kq_m2 = kq_set1(kq_sm[9 + 2 * kq_p]);       \
            KQ_UNROLL for (int kq_l = 0; kq_l < 32; kq_l += KQ_VLEN) {                                  \
                const kq_vi kq_q = kq_u8(kq_qs + 32 * kq_p + kq_l);                                     \
                EMIT(64 * kq_p + kq_l, kq_fma(kq_cvt(kq_and(kq_q, 15)), kq_d1, kq_m1), 2 * (kq_p & 1));  \
                EMIT(64 * kq_p + 32 + kq_l, kq_fma(kq_cvt(kq_srli(kq_q, 4)), kq_d2, kq_m2),             \
                     2 * (kq_p & 1) + 1);                                                               \
            }                                                                                           \
        }                                                                                               \
    } while (0)

/* Q5_K: weight l of sub-block j has its fifth bit at bit j of qh[l]. */
#define KQ_Q5K_BLOCK(blk, EMIT)                                                                         \
    do {                                                                                                \
        const uint8_t *kq_b = (blk);                                                                    \
        KQ_ALIGN64 float kq_sm[16];                                                                     \
        kq_q45_scales(kq_b + 4, kq_f16(kq_b), kq_f16(kq_b + 2), kq_sm);                                 \
        const uint8_t *kq_qh = kq_b + 16, *kq_qs = kq_b + 48;                                           \
        KQ_UNROLL for (int kq_p = 0; kq_p < 4; kq_p++) {                                                \
            const kq_vf kq_d1 = kq_set1(kq_sm[2 * kq_p]), kq_m1 = kq_set1(kq_sm[8 + 2 * kq_p]);           \
            const kq_vf kq_d2 = kq_set1(kq_sm[2 * kq_p + 1]), kq_m2 = kq_set1(kq_sm[9 + 2 * kq_p]);       \
            KQ_UNROLL for (int kq_l = 0; kq_l < 32; kq_l += KQ_VLEN) {                                  \
                const kq_vi kq_q = kq_u8(kq_qs + 32 * kq_p + kq_l);                                     \
                const kq_vi kq_h = kq_srli(kq_u8(kq_qh + kq_l), 2 * kq_p);                              \
                const kq_vi kq_lo = kq_or(kq_and(kq_q, 15), kq_and(kq_slli(kq_h, 4), 16));              \
                const kq_vi kq_hi = kq_or(kq_srli(kq_q, 4), kq_and(kq_slli(kq_h, 3), 16));              \
                EMIT(64 * kq_p + kq_l, kq_fma(kq_cvt(kq_lo), kq_d1, kq_m1), 2 * (kq_p & 1));             \
                EMIT(64 * kq_p + 32 + kq_l, kq_fma(kq_cvt(kq_hi), kq_d2, kq_m2), 2 * (kq_p & 1) + 1);    \
            }                                                                                           \
        }                                                                                               \
    } while (0)

/* Q6_K: in each half of 128 weights, weight l (0-31) of quarter g takes its low nibble from
 * ql[l + 32 * (g & 1)] (low half of the byte for g < 2) and its top 2 bits from qh[l] bits 2g, 2g+1.
 * d*sc*(q - 32) as one FMA: q*ds - 32*ds, where 32*ds is exact, rounds once like the product. */
#define KQ_Q6K_BLOCK(blk, EMIT)                                                                         \
    do {                                                                                                \
        const uint8_t *kq_b = (blk);                                                                    \
        KQ_ALIGN64 float kq_ds[16], kq_n32[16];                                                         \
        kq_q6_scales(kq_b, kq_ds, kq_n32);                                                              \
        KQ_UNROLL for (int kq_h = 0; kq_h < 2; kq_h++) {                                                \
            const uint8_t *kq_ql = kq_b + 64 * kq_h, *kq_qh = kq_b + 128 + 32 * kq_h;                   \
            KQ_UNROLL for (int kq_l = 0; kq_l < 32; kq_l += KQ_VLEN) {                                  \
                const int kq_s = 8 * kq_h + kq_l / 16;                                                  \
                const kq_vi kq_a = kq_u8(kq_ql + kq_l), kq_c = kq_u8(kq_ql + 32 + kq_l);                \
                const kq_vi kq_hb = kq_u8(kq_qh + kq_l);                                                \
                const kq_vi kq_q0 = kq_or(kq_and(kq_a, 15), kq_and(kq_slli(kq_hb, 4), 0x30));           \
                const kq_vi kq_q1 = kq_or(kq_and(kq_c, 15), kq_and(kq_slli(kq_hb, 2), 0x30));           \
                const kq_vi kq_q2 = kq_or(kq_srli(kq_a, 4), kq_and(kq_hb, 0x30));                        \
                const kq_vi kq_q3 = kq_or(kq_srli(kq_c, 4), kq_and(kq_srli(kq_hb, 2), 0x30));           \
                EMIT(128 * kq_h + kq_l, kq_fma(kq_cvt(kq_q0), kq_set1(kq_ds[kq_s]), kq_set1(kq_n32[kq_s])), 0); \
                EMIT(128 * kq_h + 32 + kq_l, kq_fma(kq_cvt(kq_q1), kq_set1(kq_ds[kq_s + 2]), kq_set1(kq_n32[kq_s + 2])), 1); \
                EMIT(128 * kq_h + 64 + kq_l, kq_fma(kq_cvt(kq_q2), kq_set1(kq_ds[kq_s + 4]), kq_set1(kq_n32[kq_s + 4])), 2); \
                EMIT(128 * kq_h + 96 + kq_l, kq_fma(kq_cvt(kq_q3), kq_set1(kq_ds[kq_s + 6]), kq_set1(kq_n32[kq_s + 6])), 3); \
            }                                                                                           \
        }                                                                                               \
    } while (0)

/* Q5_0 (22 bytes / 32 weights: f16 d, 32 fifth bits qh, 16 bytes of nibbles; w = d*(q - 16)) and
 * Q5_1 (24 bytes: f16 d, f16 m, qh, nibbles; w = d*q + m). Weight j < 16 is the low nibble of
 * qs[j], weight 16 + j the high one; weight i's fifth bit is bit i of qh. Both round once, as gguf
 * does: d*q is exact, and -16*d is. */
#if KQ_VLEN == 16
/* AVX-512: the block's 32 possible weights as two 16-entry tables (d*q + add for q < 16 and >= 16,
 * each one rounding, as gguf's), looked up by the nibbles (vpermps reads only an index's low 4
 * bits: no masking, no conversion), the fifth bit choosing the table through a lane mask. */
#define KQ_Q5_BLOCK(blk, EMIT, HAS_MIN)                                                                 \
    do {                                                                                                \
        const uint8_t *kq_b = (blk);                                                                    \
        const float kq_d = kq_f16(kq_b);                                                                \
        const __m512 kq_dv = _mm512_set1_ps(kq_d);                                                      \
        const __m512 kq_add = _mm512_set1_ps((HAS_MIN) ? kq_f16(kq_b + 2) : -16.f * kq_d);              \
        const __m512 kq_iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);    \
        const __m512 kq_t0 = _mm512_fmadd_ps(kq_iota, kq_dv, kq_add);                                   \
        const __m512 kq_t1 = _mm512_fmadd_ps(_mm512_add_ps(kq_iota, _mm512_set1_ps(16.f)), kq_dv, kq_add); \
        uint32_t kq_qh;                                                                                 \
        memcpy(&kq_qh, kq_b + ((HAS_MIN) ? 4 : 2), 4);                                                  \
        const __m512i kq_q = kq_u8(kq_b + ((HAS_MIN) ? 8 : 6));                                         \
        const __m512i kq_hi = kq_srli(kq_q, 4);                                                         \
        EMIT(0, _mm512_mask_permutexvar_ps(_mm512_permutexvar_ps(kq_q, kq_t0), (__mmask16)kq_qh, kq_q, kq_t1), 0); \
        EMIT(16, _mm512_mask_permutexvar_ps(_mm512_permutexvar_ps(kq_hi, kq_t0), (__mmask16)(kq_qh >> 16), kq_hi, kq_t1), 1); \
    } while (0)
#else
#define KQ_Q5_BLOCK(blk, EMIT, HAS_MIN)                                                                 \
    do {                                                                                                \
        const uint8_t *kq_b = (blk);                                                                    \
        const float kq_d = kq_f16(kq_b);                                                                \
        const kq_vf kq_dv = kq_set1(kq_d), kq_add = kq_set1((HAS_MIN) ? kq_f16(kq_b + 2) : -16.f * kq_d); \
        uint32_t kq_qh;                                                                                 \
        memcpy(&kq_qh, kq_b + ((HAS_MIN) ? 4 : 2), 4);                                                  \
        const uint8_t *kq_qs = kq_b + ((HAS_MIN) ? 8 : 6);                                              \
        KQ_UNROLL for (int kq_l = 0; kq_l < 16; kq_l += KQ_VLEN) {                                      \
            const kq_vi kq_q = kq_u8(kq_qs + kq_l);                                                     \
            const kq_vi kq_lo = kq_or(kq_and(kq_q, 15), kq_bit4(kq_qh, kq_l));                           \
            const kq_vi kq_hi = kq_or(kq_srli(kq_q, 4), kq_bit4(kq_qh, 16 + kq_l));                      \
            EMIT(kq_l, kq_fma(kq_cvt(kq_lo), kq_dv, kq_add), (kq_l / KQ_VLEN) & 1);                      \
            EMIT(16 + kq_l, kq_fma(kq_cvt(kq_hi), kq_dv, kq_add), 2 + ((kq_l / KQ_VLEN) & 1));           \
        }                                                                                               \
    } while (0)
#endif
#define KQ_Q50_BYTES 22
#define KQ_Q51_BYTES 24
#define KQ_Q50_BLOCK(blk, EMIT) KQ_Q5_BLOCK(blk, EMIT, 0)
#define KQ_Q51_BLOCK(blk, EMIT) KQ_Q5_BLOCK(blk, EMIT, 1)

/* ------------------------------------------------------------------------------------------- */
/* Kernels, instantiated per type.                                                              */

#define KQ_EMIT_STORE(off, wv, slot) kq_store(kq_out + (off), (wv))

/* m <= 4: the weight chunk in a register, times each of the MR activation rows. MR = 1 keeps four
 * accumulators (slots) so the FMA chain does not bound the loop; MR = 2 two. */
#define KQ_EMIT_FMA(off, wv, slot)                                                                      \
    do {                                                                                                \
        const kq_vf kq_w = (wv);                                                                        \
        KQ_UNROLL for (int kq_i = 0; kq_i < MR; kq_i++) {                                               \
            const int kq_a = (slot) & (KQ_SLOTS(MR) - 1);                                               \
            kq_acc[kq_i][kq_a] = kq_fma(kq_w, kq_load(kq_xb + kq_i * k + (off)), kq_acc[kq_i][kq_a]);   \
        }                                                                                               \
    } while (0)
#define KQ_SLOTS(mr) ((mr) == 1 ? 4 : (mr) == 2 ? 2 : 1)

/* m > 4: quant_gemm.c */
typedef void (*qgemm_dequant_row_fn)(const uint8_t *row, float *out, int64_t k);
int qgemm_dequant_gemm(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y,
                       int64_t row_bytes, qgemm_dequant_row_fn dequant_row);

/* ------------------------------------------------------------------------------------------- */
/* m = 1: one weight row against one activation row, the cheapest form per weight (decode is     */
/* bound by the weight bytes only if the arithmetic keeps up). Each sub-block's raw quants times   */
/* x are summed first and scaled once (the scales come from memory, broadcast by the FMA); the    */
/* constant parts (Q4_K/Q5_K's -dmin*mn[j], Q6_K's -32) need only the sums of x over each          */
/* sub-block, computed once per call: w.x = sum_j ds_j * (q_j . x_j) - sum_j mins_j * sum(x_j).     */

/* Per block, `width`-wide sums of x laid out as the block's mins are (below): Q4_K/Q5_K 8 zeros
 * then the 8 sums of 32 (so one 16-lane FMA against [d*sc, dmin*mn] picks the mins' part), Q6_K
 * the 16 sums of 16. */
static void kq_block_sums(const float *x, int64_t k, int width, float *sums) {
    const int per_block = KQ_QK / width, pad = 16 - per_block;
    for (int64_t b = 0; b < k / KQ_QK; b++) {
        float *out = sums + b * 16;
        for (int i = 0; i < pad; i++) out[i] = 0.f;
        for (int c = 0; c < per_block; c++) {
            float s = 0.f;
            for (int i = 0; i < width; i++) s += x[b * KQ_QK + c * width + i];
            out[pad + c] = s;
        }
    }
}

/* acc + a*b, or a*b where acc has nothing yet (FIRST is a constant once unrolled). */
#define KQ_MAC(first, a, b, acc) ((first) ? kq_mul((a), (b)) : kq_fma((a), (b), (acc)))

/* Q4_K (HIGH_BITS 0) and Q5_K (HIGH_BITS 1): 8 sub-blocks of 32, scales and mins 6-bit. */
KQ_INLINE float kq_gemv_q45_k(const float *x, const float *xs, int64_t nb, const uint8_t *w, const int HIGH_BITS) {
    const int64_t bytes = HIGH_BITS ? KQ_Q5K_BYTES : KQ_Q4K_BYTES;
    kq_vf acc0 = kq_zero(), acc1 = kq_zero(), corr = kq_zero();
    KQ_ALIGN64 float sm[16];
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bytes, *qh = blk + 16, *qs = blk + (HIGH_BITS ? 48 : 16);
        const float *xb = x + b * KQ_QK;
        kq_q45_scales(blk + 4, kq_f16(blk), kq_f16(blk + 2), sm);
        KQ_UNROLL for (int i = 0; i < 16; i += KQ_VLEN) corr = kq_fma(kq_load(sm + i), kq_load(xs + b * 16 + i), corr);
        KQ_UNROLL for (int p = 0; p < 4; p++) {
            kq_vf s_lo = kq_zero(), s_hi = kq_zero();
            KQ_UNROLL for (int l = 0; l < 32; l += KQ_VLEN) {
                const kq_vi q = kq_u8(qs + 32 * p + l);
                kq_vi lo = kq_and(q, 15), hi = kq_srli(q, 4);
                if (HIGH_BITS) {
                    const kq_vi h = kq_srli(kq_u8(qh + l), 2 * p);
                    lo = kq_or(lo, kq_and(kq_slli(h, 4), 16));
                    hi = kq_or(hi, kq_and(kq_slli(h, 3), 16));
                }
                s_lo = KQ_MAC(l == 0, kq_cvt(lo), kq_load(xb + 64 * p + l), s_lo);
                s_hi = KQ_MAC(l == 0, kq_cvt(hi), kq_load(xb + 64 * p + 32 + l), s_hi);
            }
            acc0 = kq_fma(s_lo, kq_set1(sm[2 * p]), acc0);
            acc1 = kq_fma(s_hi, kq_set1(sm[2 * p + 1]), acc1);
        }
    }
    return kq_hsum(acc0 + acc1) + kq_hsum(corr);  /* corr: the (negated) mins times the sums of x */
}

/* Q6_K: 16 sub-blocks of 16, int8 scales, quants 0..63 offset by -32. */
static float kq_gemv_q6_k(const float *x, const float *xs, int64_t nb, const uint8_t *w) {
    kq_vf acc[4] = {kq_zero(), kq_zero(), kq_zero(), kq_zero()}, corr = kq_zero();
    KQ_ALIGN64 float ds[16], n32[16];
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * KQ_Q6K_BYTES;
        const float *xb = x + b * KQ_QK;
        kq_q6_scales(blk, ds, n32);
        KQ_UNROLL for (int i = 0; i < 16; i += KQ_VLEN) corr = kq_fma(kq_load(n32 + i), kq_load(xs + b * 16 + i), corr);
        KQ_UNROLL for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
            const float *xh = xb + 128 * h;
            KQ_UNROLL for (int half = 0; half < 32; half += 16) {  /* one sub-block of each quarter */
                kq_vf s[4] = {kq_zero(), kq_zero(), kq_zero(), kq_zero()};
                KQ_UNROLL for (int l = half; l < half + 16; l += KQ_VLEN) {
                    const kq_vi a = kq_u8(ql + l), c = kq_u8(ql + 32 + l), hb = kq_u8(qh + l);
                    const kq_vi q0 = kq_or(kq_and(a, 15), kq_and(kq_slli(hb, 4), 0x30));
                    const kq_vi q1 = kq_or(kq_and(c, 15), kq_and(kq_slli(hb, 2), 0x30));
                    const kq_vi q2 = kq_or(kq_srli(a, 4), kq_and(hb, 0x30));
                    const kq_vi q3 = kq_or(kq_srli(c, 4), kq_and(kq_srli(hb, 2), 0x30));
                    s[0] = KQ_MAC(l == half, kq_cvt(q0), kq_load(xh + l), s[0]);
                    s[1] = KQ_MAC(l == half, kq_cvt(q1), kq_load(xh + 32 + l), s[1]);
                    s[2] = KQ_MAC(l == half, kq_cvt(q2), kq_load(xh + 64 + l), s[2]);
                    s[3] = KQ_MAC(l == half, kq_cvt(q3), kq_load(xh + 96 + l), s[3]);
                }
                KQ_UNROLL for (int g = 0; g < 4; g++) acc[g] = kq_fma(s[g], kq_set1(ds[8 * h + 2 * g + half / 16]), acc[g]);
            }
        }
    }
    return kq_hsum((acc[0] + acc[1]) + (acc[2] + acc[3])) + kq_hsum(corr);
}

static float kq_gemv_q4_k(const float *x, const float *xs, int64_t nb, const uint8_t *w) {
    return kq_gemv_q45_k(x, xs, nb, w, 0);
}
static float kq_gemv_q5_k(const float *x, const float *xs, int64_t nb, const uint8_t *w) {
    return kq_gemv_q45_k(x, xs, nb, w, 1);
}

/* The 32-weight types with 4- and 5-bit quants at m = 1 (Q5_0 and Q5_1 here; Q4_0 and Q4_1 for
 * quant_ops.c through kq_x16_gemv_q4): integer dot products. Converting every weight to float bounded
 * the float kernels at ~13 (Q5) to ~17 (Q4) G weights/s per core, below what memory delivers. Here x
 * is rounded once per call, per block of 32, to two int16 parts with the block's scale
 * s = max|x| / 32767: x = s * (h + l / 32768), h = round(x / s), l = round((x / s - h) * 32768), so x
 * is kept to ~2^-31 of the block's largest element (finer than float32's own rounding of all but the
 * block's tiny elements: the result equals "dequantize, then a float matmul" within float tolerance;
 * llama.cpp rounds x to int8 instead; one int16 part alone was 1.2x faster still but not float-exact).
 * The block's quants times h and times l are summed exactly in int32 (vpdpwssd / vpmaddwd: 32 weights
 * an instruction), combined in float and scaled by d * s once per block. Q5_0's -16 is folded into the
 * quants (16 subtracted where the fifth bit is clear: q - 16 in -16..15), Q4_0's -8 too; Q5_1's and
 * Q4_1's min comes through x's block sums: m * sum(x). A block of x that is not finite (or sums past
 * float's range) makes its scale NaN, so the row's result is NaN (the float product's inf or NaN).
 *
 * Blocks: Q4_0 f16 d, 16 bytes of nibbles (18 bytes); Q4_1 d, m, nibbles (20); Q5_0 d, 4 bytes of
 * fifth bits, nibbles (22); Q5_1 d, m, fifth bits, nibbles (24). Weight j < 16 is qs[j]'s low nibble.
 * AVX-512 takes two blocks (A, B) at a time, as their bytes come: the two blocks' 16 bytes of nibbles
 * widen to 32 words [A's bytes, B's bytes], whose low nibbles are weights [A 0-15, B 0-15] and high
 * nibbles [A 16-31, B 16-31]; x is stored per pair in that order, so one conversion and one FMA serve
 * 64 weights (lanes 0-7: block A, 8-15: block B). AVX2 takes one block at a time, x in its order. */
#if (KQ_VLEN == 16 && defined(__AVX512BW__)) || KQ_VLEN == 8
#define KQ_X16_PAIRS (KQ_VLEN == 16)
#if KQ_X16_PAIRS
/* per pair: 128 words [h of A 0-15, B 0-15, A 16-31, B 16-31, then l in the same order]; 16 scales
 * [s A x8, s B x8]; 4 sums [0, sum A, 0, sum B] (against the pair's [dA, mA, dB, mB]) */
#define KQ_X16_WORDS(nb) (((nb) + 1) / 2 * 128)
#define KQ_X16_FLOATS(nb) (((nb) + 1) / 2 * 20)
#define KQ_X16_AT(b, i) (128 * ((b) / 2) + 32 * ((i) / 16) + 16 * ((b) & 1) + ((i) & 15))
#else
/* per block: 64 words [h 0-31, l 0-31]; then nb scales, then nb sums */
#define KQ_X16_WORDS(nb) ((nb) * 64)
#define KQ_X16_FLOATS(nb) ((nb) * 2)
#define KQ_X16_AT(b, i) (64 * (b) + (i))
#endif
#define KQ_X16_STACK_BLOCKS 256 /* x of up to 8192 elements: its copy on the stack (42 KB) */

/* x [nb * 32] -> xq, scales, sums as laid out above; AVX-512 pads an odd nb with a zero block. */
static void kq_x16_prepare(const float *x, int64_t nb, int16_t *xq, float *floats) {
    const int64_t padded = KQ_X16_PAIRS ? (nb + 1) / 2 * 2 : nb;
    float *scale = floats, *sums = floats + (KQ_X16_PAIRS ? padded * 8 : nb);
    for (int64_t b = 0; b < padded; b++) {
#if KQ_X16_PAIRS
        const __mmask16 live = b < nb ? 0xffff : 0;
        const __m512 x0 = _mm512_maskz_loadu_ps(live, x + 32 * b), x1 = _mm512_maskz_loadu_ps(live, x + 32 * b + 16);
        const __m512 absmax = _mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1));
        const float amax = _mm512_reduce_max_ps(absmax), sum = _mm512_reduce_add_ps(_mm512_add_ps(x0, x1));
#else
        float amax = 0.f, sum = 0.f;
        for (int i = 0; i < 32; i++) {
            amax = fabsf(x[32 * b + i]) > amax ? fabsf(x[32 * b + i]) : amax;
            sum += x[32 * b + i];
        }
#endif
        const int finite = sum - sum == 0.f && amax - amax == 0.f;
        const float inv = finite && amax > 0.f ? 32767.f / amax : 0.f, s = finite ? amax / 32767.f : NAN;
#if KQ_X16_PAIRS
        for (int half = 0; half < 2; half++) {
            const __m512 t = _mm512_mul_ps(half ? x1 : x0, _mm512_set1_ps(inv));
            const __m512 h = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m512 l = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(t, h), _mm512_set1_ps(32768.f)),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m256i *at = (__m256i *)(void *)(xq + KQ_X16_AT(b, 16 * half));
            _mm256_storeu_si256(at, _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(h)));
            _mm256_storeu_si256(at + 4, _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(l))); /* 64 words on: l */
        }
        for (int i = 0; i < 8; i++) scale[16 * (b / 2) + 8 * (b & 1) + i] = s;
        sums[4 * (b / 2) + 2 * (b & 1)] = 0.f;
        sums[4 * (b / 2) + 2 * (b & 1) + 1] = sum;
#else
        for (int i = 0; i < 32; i++) {
            const float t = x[32 * b + i] * inv, h = rintf(t);
            xq[KQ_X16_AT(b, i)] = (int16_t)h;
            xq[KQ_X16_AT(b, i) + 32] = (int16_t)rintf((t - h) * 32768.f);
        }
        scale[b] = s;
        sums[b] = sum;
#endif
    }
}

#if KQ_X16_PAIRS
static const uint8_t kq_zero_block[32] KQ_ALIGN64 = {0}; /* the missing B of an odd last block */

#if defined(__AVX512VNNI__)
#define KQ_DPWSSD(acc, a, b) _mm512_dpwssd_epi32((acc), (a), (b))
#else
#define KQ_DPWSSD(acc, a, b) _mm512_add_epi32((acc), _mm512_madd_epi16((a), (b)))
#endif

/* Blocks a and b (b may be kq_zero_block) against their pair of x: acc + the 16 scaled partial sums;
 * *mins += [dA, mA, dB, mB] * [0, sum A, 0, sum B] (Q4_1, Q5_1). FIFTH: the 5-bit types. */
KQ_INLINE __m512 kq_x16_pair(const uint8_t *a, const uint8_t *b, const int16_t *xq, const float *scale,
                             const float *sums, __m512 acc, __m128 *mins, const int HAS_MIN, const int FIFTH) {
    const int qh_at = HAS_MIN ? 4 : 2, qs_at = qh_at + (FIFTH ? 4 : 0);
    const __m128i qs_a = _mm_loadu_si128((const __m128i *)(const void *)(a + qs_at));
    const __m128i qs_b = _mm_loadu_si128((const __m128i *)(const void *)(b + qs_at));
    const __m512i words = _mm512_cvtepu8_epi16(_mm256_inserti128_si256(_mm256_castsi128_si256(qs_a), qs_b, 1));
    const __m512i sixteen = _mm512_set1_epi16(16);
    __m512i lo = _mm512_and_si512(words, _mm512_set1_epi16(15)), hi = _mm512_srli_epi16(words, 4);
    uint32_t ha = 0, hb = 0;
    if (FIFTH) memcpy(&ha, a + qh_at, 4), memcpy(&hb, b + qh_at, 4);
    const __mmask32 fifth_lo = (ha & 0xffffu) | (hb << 16), fifth_hi = (ha >> 16) | (hb & 0xffff0000u);
    if (!FIFTH) {
        if (!HAS_MIN) lo = _mm512_sub_epi16(lo, _mm512_set1_epi16(8)), hi = _mm512_sub_epi16(hi, _mm512_set1_epi16(8));
    } else if (HAS_MIN) {
        lo = _mm512_mask_add_epi16(lo, fifth_lo, lo, sixteen);
        hi = _mm512_mask_add_epi16(hi, fifth_hi, hi, sixteen);
    } else {
        lo = _mm512_mask_sub_epi16(lo, (__mmask32)~fifth_lo, lo, sixteen);
        hi = _mm512_mask_sub_epi16(hi, (__mmask32)~fifth_hi, hi, sixteen);
    }
    const __m512i zero = _mm512_setzero_si512();
    const __m512i dot_h = KQ_DPWSSD(KQ_DPWSSD(zero, lo, _mm512_loadu_si512((const void *)xq)), hi,
                                    _mm512_loadu_si512((const void *)(xq + 32)));
    const __m512i dot_l = KQ_DPWSSD(KQ_DPWSSD(zero, lo, _mm512_loadu_si512((const void *)(xq + 64))), hi,
                                    _mm512_loadu_si512((const void *)(xq + 96)));
    const __m512 dot =
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot_l), _mm512_set1_ps(1.f / 32768.f), _mm512_cvtepi32_ps(dot_h));
    /* [dA, mA, dB, mB] (Q5_0: [dA, ?, dB, ?]) in one conversion; lanes 0-7 take dA, 8-15 dB */
    uint32_t head_a, head_b;
    memcpy(&head_a, a, 4);
    memcpy(&head_b, b, 4);
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi64_si128((int64_t)((uint64_t)head_a | ((uint64_t)head_b << 32))));
    const __m512 d = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2),
                                           _mm512_castps128_ps512(dm));
    if (HAS_MIN) *mins = _mm_fmadd_ps(dm, _mm_loadu_ps(sums), *mins);
    return _mm512_fmadd_ps(dot, _mm512_mul_ps(d, _mm512_loadu_ps(scale)), acc);
}

#define KQ_X16_BLOCK_BYTES(HAS_MIN, FIFTH) (((HAS_MIN) ? 20 : 18) + ((FIFTH) ? 4 : 0))

KQ_INLINE float kq_x16_row(const int16_t *xq, const float *floats, int64_t nb, const uint8_t *w, const int HAS_MIN,
                           const int FIFTH) {
    const int64_t bytes = KQ_X16_BLOCK_BYTES(HAS_MIN, FIFTH), pairs = (nb + 1) / 2;
    const float *scale = floats, *sums = floats + 16 * pairs;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m128 mins0 = _mm_setzero_ps(), mins1 = _mm_setzero_ps();
    int64_t p = 0;
    for (; 2 * p + 3 < nb; p += 2) { /* two pairs an iteration: two independent chains */
        const uint8_t *a = w + 2 * p * bytes;
        acc0 = kq_x16_pair(a, a + bytes, xq + 128 * p, scale + 16 * p, sums + 4 * p, acc0, &mins0, HAS_MIN, FIFTH);
        acc1 = kq_x16_pair(a + 2 * bytes, a + 3 * bytes, xq + 128 * (p + 1), scale + 16 * (p + 1), sums + 4 * (p + 1),
                           acc1, &mins1, HAS_MIN, FIFTH);
    }
    for (; 2 * p < nb; p++) {
        const uint8_t *a = w + 2 * p * bytes, *b = 2 * p + 1 < nb ? a + bytes : kq_zero_block;
        acc0 = kq_x16_pair(a, b, xq + 128 * p, scale + 16 * p, sums + 4 * p, acc0, &mins0, HAS_MIN, FIFTH);
    }
    const __m128 mins = _mm_add_ps(mins0, mins1);
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + (HAS_MIN ? mins[1] + mins[3] : 0.f);
}
#else /* AVX2: one block at a time */
#define KQ_X16_BLOCK_BYTES(HAS_MIN, FIFTH) (((HAS_MIN) ? 20 : 18) + ((FIFTH) ? 4 : 0))

KQ_INLINE float kq_x16_row(const int16_t *xq, const float *floats, int64_t nb, const uint8_t *w, const int HAS_MIN,
                           const int FIFTH) {
    const int64_t bytes = KQ_X16_BLOCK_BYTES(HAS_MIN, FIFTH);
    const int qh_at = HAS_MIN ? 4 : 2, qs_at = qh_at + (FIFTH ? 4 : 0);
    const float *scale = floats, *sums = floats + nb;
    const __m256i bit = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, -32768);
    const __m256i sixteen = _mm256_set1_epi16(16), fifteen = _mm256_set1_epi16(15);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float mins = 0.f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bytes;
        const int16_t *xb = xq + 64 * b;
        const __m256i words = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(blk + qs_at)));
        __m256i lo = _mm256_and_si256(words, fifteen), hi = _mm256_srli_epi16(words, 4);
        if (FIFTH) {
            uint32_t qh;
            memcpy(&qh, blk + qh_at, 4);
            /* per word, 16 where the weight's fifth bit is set */
            const __m256i set_lo = _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_set1_epi16((int16_t)qh), bit), bit);
            const __m256i set_hi = _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_set1_epi16((int16_t)(qh >> 16)), bit), bit);
            lo = _mm256_or_si256(lo, _mm256_and_si256(set_lo, sixteen));
            hi = _mm256_or_si256(hi, _mm256_and_si256(set_hi, sixteen));
        }
        if (!HAS_MIN) {
            const __m256i offset = FIFTH ? sixteen : _mm256_set1_epi16(8);
            lo = _mm256_sub_epi16(lo, offset), hi = _mm256_sub_epi16(hi, offset);
        }
#define KQ_MADD2(x0, x1)                                                                                           \
    _mm256_add_epi32(_mm256_madd_epi16(lo, _mm256_loadu_si256((const __m256i *)(const void *)(x0))),              \
                     _mm256_madd_epi16(hi, _mm256_loadu_si256((const __m256i *)(const void *)(x1))))
        const __m256i dot_h = KQ_MADD2(xb, xb + 16), dot_l = KQ_MADD2(xb + 32, xb + 48);
#undef KQ_MADD2
        const __m256 dot =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_l), _mm256_set1_ps(1.f / 32768.f), _mm256_cvtepi32_ps(dot_h));
        if (b & 1) acc1 = _mm256_fmadd_ps(dot, _mm256_set1_ps(kq_f16(blk) * scale[b]), acc1);
        else acc0 = _mm256_fmadd_ps(dot, _mm256_set1_ps(kq_f16(blk) * scale[b]), acc0);
        if (HAS_MIN) mins += kq_f16(blk + 2) * sums[b];
    }
    return kq_hsum(_mm256_add_ps(acc0, acc1)) + mins;
}
#endif

#ifdef _OPENMP
#define KQ_THREAD(t, nt) (t = omp_get_thread_num(), nt = omp_get_num_threads())
#else
#define KQ_THREAD(t, nt) ((void)0)
#endif
#define KQ_GEMV_PARALLEL_BYTES (32 * 1024) /* below this, opening a region costs more than a thread saves */

/* m = 1, one function per type (HAS_MIN, FIFTH constants inside the OpenMP region): 0 when done, -1
 * when x's integer copy could not be allocated. */
#define KQ_DEFINE_X16_GEMV(TYPE, HAS_MIN, FIFTH)                                                        \
static int kq_gemv_##TYPE(const float *x, int64_t k, const uint8_t *w, int64_t n, float *y) {           \
    const int64_t nb = k / 32, row_bytes = nb * KQ_X16_BLOCK_BYTES(HAS_MIN, FIFTH);                     \
    int16_t xq_stack[KQ_X16_WORDS(KQ_X16_STACK_BLOCKS)] KQ_ALIGN64, *xq = xq_stack;                     \
    float floats_stack[KQ_X16_FLOATS(KQ_X16_STACK_BLOCKS)] KQ_ALIGN64, *floats = floats_stack;          \
    void *heap = NULL;                                                                                  \
    if (nb > KQ_X16_STACK_BLOCKS) {                                                                     \
        const size_t words = (size_t)KQ_X16_WORDS(nb);                                                  \
        if (!(heap = malloc(words * sizeof(int16_t) + (size_t)KQ_X16_FLOATS(nb) * sizeof(float)))) return -1; \
        xq = (int16_t *)heap, floats = (float *)(void *)(xq + words);                                  \
    }                                                                                                   \
    kq_x16_prepare(x, nb, xq, floats);                                                                  \
    /* one contiguous range of rows per thread: each thread's reads are one stream to prefetch */     \
    _Pragma("omp parallel if (n * row_bytes >= KQ_GEMV_PARALLEL_BYTES)")                               \
    {                                                                                                   \
        int64_t t = 0, nt = 1;                                                                          \
        KQ_THREAD(t, nt);                                                                               \
        const int64_t j1 = n * (t + 1) / nt;                                                            \
        for (int64_t j = n * t / nt; j < j1; j++)                                                       \
            y[j] = kq_x16_row(xq, floats, nb, w + j * row_bytes, (HAS_MIN), (FIFTH));                   \
    }                                                                                                   \
    free(heap);                                                                                         \
    return 0;                                                                                           \
}
KQ_DEFINE_X16_GEMV(q5_0, 0, 1)
KQ_DEFINE_X16_GEMV(q5_1, 1, 1)
KQ_DEFINE_X16_GEMV(q4_0, 0, 0)
KQ_DEFINE_X16_GEMV(q4_1, 1, 0)
#define KQ_Q5_GEMV(TYPE, x, m, k, w, n, y) ((m) == 1 && kq_gemv_##TYPE(x, k, w, n, y) == 0)
#else
#define KQ_Q5_GEMV(TYPE, x, m, k, w, n, y) 0
#endif

/* quant_ops.c's Q4_0 (has_min 0) and Q4_1 (1) at m = 1: 0 when done, -1 when this build has no
 * integer GEMV (a CPU with neither AVX-512BW nor AVX2) or no memory for x's copy: the caller runs its
 * float one. */
int kq_x16_gemv_q4(const float *x, int64_t k, const uint8_t *w, int64_t n, float *y, int has_min) {
#ifdef KQ_X16_PAIRS
    return has_min ? kq_gemv_q4_1(x, k, w, n, y) : kq_gemv_q4_0(x, k, w, n, y);
#else
    (void)x, (void)k, (void)w, (void)n, (void)y, (void)has_min;
    return -1;
#endif
}

/* The entry points of one type: QK weights per block of BYTES bytes, BLOCK its chunk macro. */
#define KQ_DEFINE(TYPE, QK, BYTES, BLOCK)                                                               \
static void kq_dequant_block_##TYPE(const uint8_t *blk, float *kq_out) { BLOCK(blk, KQ_EMIT_STORE); }    \
                                                                                                        \
void gguf_dequantize_##TYPE(const uint8_t *blocks, float *out, int64_t n_elements) {                    \
    const int64_t nblocks = n_elements / (QK);                                                          \
    _Pragma("omp parallel for schedule(static) if (nblocks >= 2048)")                                  \
    for (int64_t b = 0; b < nblocks; b++) kq_dequant_block_##TYPE(blocks + b * (BYTES), out + b * (QK)); \
}                                                                                                       \
                                                                                                        \
/* y[i * n] for the MR activation rows at x (row stride k) against one weight row. */                   \
KQ_INLINE void kq_rows_##TYPE(const float *x, int64_t k, const uint8_t *wrow, float *y, int64_t n, const int MR) { \
    kq_vf kq_acc[4][4];                                                                                 \
    KQ_UNROLL for (int i = 0; i < 4; i++) KQ_UNROLL for (int s = 0; s < 4; s++) kq_acc[i][s] = kq_zero(); \
    const int64_t nb = k / (QK);                                                                        \
    for (int64_t b = 0; b < nb; b++) {                                                                  \
        const float *kq_xb = x + b * (QK);                                                              \
        BLOCK(wrow + b * (BYTES), KQ_EMIT_FMA);                                                         \
    }                                                                                                   \
    KQ_UNROLL for (int i = 0; i < MR; i++) {                                                            \
        kq_vf s = kq_acc[i][0];                                                                         \
        for (int a = 1; a < KQ_SLOTS(MR); a++) s = s + kq_acc[i][a];                                    \
        y[i * n] = kq_hsum(s);                                                                          \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
static void kq_small_m_##TYPE(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y) { \
    const int64_t row_bytes = k / (QK) * (BYTES);                                                       \
    _Pragma("omp parallel for schedule(dynamic, 16)")                                                  \
    for (int64_t j = 0; j < n; j++) {                                                                   \
        const uint8_t *wrow = w + j * row_bytes;                                                        \
        switch (m) {                                                                                    \
            case 1: kq_rows_##TYPE(x, k, wrow, y + j, n, 1); break;                                     \
            case 2: kq_rows_##TYPE(x, k, wrow, y + j, n, 2); break;                                     \
            case 3: kq_rows_##TYPE(x, k, wrow, y + j, n, 3); break;                                     \
            default: kq_rows_##TYPE(x, k, wrow, y + j, n, 4); break;                                    \
        }                                                                                               \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
static void kq_dequant_row_##TYPE(const uint8_t *row, float *out, int64_t k) {                            \
    for (int64_t b = 0; b < k / (QK); b++) kq_dequant_block_##TYPE(row + b * (BYTES), out + b * (QK));   \
}                                                                                                       \
                                                                                                        \
/* m > 4: quant_gemm.c's panel GEMM (each weight expanded once per call); tiles of 4 rows if it cannot \
 * allocate its panel buffer. */                                                                        \
static void kq_many_m_##TYPE(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y) { \
    if (qgemm_dequant_gemm(x, m, k, w, n, y, k / (QK) * (BYTES), kq_dequant_row_##TYPE) == 0) return;   \
    for (int64_t i0 = 0; i0 < m; i0 += 4)                                                               \
        kq_small_m_##TYPE(x + i0 * k, m - i0 < 4 ? m - i0 : 4, k, w, n, y + i0 * n);                    \
}

/* K-quants: m = 1 through the type's GEMV (SUB: its sub-block width, for the sums of x). */
#define KQ_DEFINE_MATMUL_GEMV(TYPE, BYTES, SUB)                                                         \
void gguf_matmul_##TYPE(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y) {  \
    if (m <= 0 || n <= 0) return;                                                                       \
    if (m == 1) {                                                                                       \
        float *xs = (float *)malloc((size_t)(k / KQ_QK * 16) * sizeof(float)); /* x summed per sub-block */ \
        if (xs) {                                                                                       \
            const int64_t nb = k / KQ_QK, row_bytes = nb * (BYTES);                                     \
            kq_block_sums(x, k, (SUB), xs);                                                             \
            _Pragma("omp parallel for schedule(dynamic, 32)")                                          \
            for (int64_t j = 0; j < n; j++) y[j] = kq_gemv_##TYPE(x, xs, nb, w + j * row_bytes);       \
            free(xs);                                                                                   \
            return;                                                                                     \
        }                                                                                               \
    }                                                                                                   \
    if (m <= 4) kq_small_m_##TYPE(x, m, k, w, n, y);                                                    \
    else kq_many_m_##TYPE(x, m, k, w, n, y);                                                             \
}

/* 32-weight types: m = 1 through kq_gemv_q5 (AVX-512), other m <= 4 dequantize in registers. */
#define KQ_DEFINE_MATMUL(TYPE, HAS_MIN)                                                                 \
void gguf_matmul_##TYPE(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y) {  \
    if (m <= 0 || n <= 0) return;                                                                       \
    if (KQ_Q5_GEMV(TYPE, x, m, k, w, n, y)) return;                                                  \
    if (m <= 4) kq_small_m_##TYPE(x, m, k, w, n, y);                                                    \
    else kq_many_m_##TYPE(x, m, k, w, n, y);                                                             \
}

KQ_DEFINE(q4_k, KQ_QK, KQ_Q4K_BYTES, KQ_Q4K_BLOCK)
KQ_DEFINE_MATMUL_GEMV(q4_k, KQ_Q4K_BYTES, 32)
KQ_DEFINE(q5_k, KQ_QK, KQ_Q5K_BYTES, KQ_Q5K_BLOCK)
KQ_DEFINE_MATMUL_GEMV(q5_k, KQ_Q5K_BYTES, 32)
KQ_DEFINE(q6_k, KQ_QK, KQ_Q6K_BYTES, KQ_Q6K_BLOCK)
KQ_DEFINE_MATMUL_GEMV(q6_k, KQ_Q6K_BYTES, 16)
KQ_DEFINE(q5_0, 32, KQ_Q50_BYTES, KQ_Q50_BLOCK)
KQ_DEFINE_MATMUL(q5_0, 0)
KQ_DEFINE(q5_1, 32, KQ_Q51_BYTES, KQ_Q51_BLOCK)
KQ_DEFINE_MATMUL(q5_1, 1)
