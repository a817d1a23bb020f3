/* Matmuls on GGUF-quantized weights, in their own block format (ggml's layout, byte for byte), so a
 * quantized checkpoint stays quantized in memory: Q8_0, Q4_0, Q4_1 (32 weights per block).
 *
 *   Q8_0: f16 d, int8 q[32]                  w = q * d
 *   Q4_0: f16 d, uint8 qs[16]                w[j] = ((qs[j] & 15) - 8) * d, w[j + 16] = ((qs[j] >> 4) - 8) * d
 *   Q4_1: f16 d, f16 m, uint8 qs[16]         w[j] = (qs[j] & 15) * d + m, w[j + 16] = (qs[j] >> 4) * d + m
 *
 * Entry points, one pair per type (the K-quants in quant_kquants.c follow the same names, and
 * kernels/quant.py binds whatever the library has by these names):
 *   void gguf_dequantize_<type>(const uint8_t *blocks, float *out, int64_t n_elements)
 *   void gguf_matmul_<type>(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y)
 *       y[m, n] = x[m, k] @ dequant(w)[n, k]^T; w is n rows of k / 32 blocks, row-major.
 *
 * Activations stay float32 and so do the sums (llama.cpp quantizes activations to int8 for its
 * dot products; here results equal "dequantize, then float matmul" up to float rounding). At m = 1,
 * Q4_0 and Q4_1 go to quant_kquants.c's integer GEMV (kq_x16_gemv_q4: x split into two int16 parts
 * per block, as exact as float32), faster than converting each weight to float; otherwise at m = 1
 * the matmul is bound by reading the weights, so each block's raw quants are converted in registers
 * and multiplied into x, the block's sum scaled once (offsets from per-call block sums of x), and
 * each thread reads one contiguous range of rows. For 1 < m <= SMALL_M every weight block is
 * expanded in registers once per tile of up to MT rows of x, threads splitting the output features
 * in chunks of ROW_CHUNK weight rows. For m > SMALL_M quant_gemm.c dequantizes panels of rows once
 * per call into L2 and runs a register-blocked float GEMM over them. Threads: OpenMP, torch's own
 * runtime (see cpu_ops.c).
 *
 * Three builds of the same loops: AVX-512 (16 floats a vector, two per block), AVX2 + FMA (8 a
 * vector, four per block), and plain C. kernels/cpu.py's load_variant("x86-64-v3") builds the
 * AVX2 one on an AVX-512 machine for the tests.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define QK 32          /* weights per block for every type here */
#define ROW_CHUNK 16   /* weight rows per thread work item */

static inline float fp16_to_f32(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);  /* inf / NaN */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {  /* subnormal: normalize */
        exp = 113;
        while (!(mant & 0x400u)) { mant <<= 1; exp--; }
        bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* ---------------------------------------------------------------------------------------------
 * One block -> 32 floats, plain C (the reference layout; also the dequantize entry points). */

static inline void block_q8_0(const uint8_t *b, float *out) {
    const float d = fp16_to_f32(b);
    const int8_t *q = (const int8_t *)(b + 2);
    for (int j = 0; j < QK; j++) out[j] = (float)q[j] * d;
}

static inline void block_q4_0(const uint8_t *b, float *out) {
    const float d = fp16_to_f32(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < QK / 2; j++) {
        out[j] = (float)((qs[j] & 15) - 8) * d;
        out[j + QK / 2] = (float)((qs[j] >> 4) - 8) * d;
    }
}

static inline void block_q4_1(const uint8_t *b, float *out) {
    const float d = fp16_to_f32(b), m = fp16_to_f32(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < QK / 2; j++) {
        out[j] = (float)(qs[j] & 15) * d + m;
        out[j + QK / 2] = (float)(qs[j] >> 4) * d + m;
    }
}

/* ---------------------------------------------------------------------------------------------
 * One block -> vector registers: W(0..VPB-1), VPB vectors of the block's 32 weights in order. */

#if defined(__AVX512F__)
typedef __m512 vec_t;
#define VW 16
#define VPB 2
#define MT 8
#define V_LOAD _mm512_loadu_ps
#define V_SET1 _mm512_set1_ps
#define V_STORE _mm512_storeu_ps
#define V_FMA _mm512_fmadd_ps
#define V_ZERO _mm512_setzero_ps
#define V_ADD _mm512_add_ps
#define V_SUM _mm512_reduce_add_ps

static inline void vec_q8_0(const uint8_t *b, vec_t *w) {
    const __m512 d = _mm512_set1_ps(fp16_to_f32(b));
    for (int v = 0; v < 2; v++)
        w[v] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2 + 16 * v)))));
}

/* the 16 low nibbles (weights 0-15) and the 16 high nibbles (weights 16-31) as int32 vectors */
static inline void nibbles_512(const uint8_t *qs, __m512i *lo, __m512i *hi) {
    const __m128i bytes = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(15);
    *lo = _mm512_cvtepu8_epi32(_mm_and_si128(bytes, mask));
    *hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask));
}

static inline void vec_q4_0(const uint8_t *b, vec_t *w) {
    const __m512 d = _mm512_set1_ps(fp16_to_f32(b));
    const __m512i eight = _mm512_set1_epi32(8);
    __m512i lo, hi;
    nibbles_512(b + 2, &lo, &hi);
    w[0] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, eight)));
    w[1] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, eight)));
}

static inline void vec_q4_1(const uint8_t *b, vec_t *w) {
    const __m512 d = _mm512_set1_ps(fp16_to_f32(b)), m = _mm512_set1_ps(fp16_to_f32(b + 2));
    __m512i lo, hi;
    nibbles_512(b + 4, &lo, &hi);
    w[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), d, m);
    w[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), d, m);
}

#elif defined(__AVX2__)
typedef __m256 vec_t;
#define VW 8
#define VPB 4
#define MT 4
#define V_LOAD _mm256_loadu_ps
#define V_SET1 _mm256_set1_ps
#define V_STORE _mm256_storeu_ps
#define V_FMA _mm256_fmadd_ps
#define V_ZERO _mm256_setzero_ps
#define V_ADD _mm256_add_ps

static inline float V_SUM(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline void vec_q8_0(const uint8_t *b, vec_t *w) {
    const __m256 d = _mm256_set1_ps(fp16_to_f32(b));
    for (int v = 0; v < 4; v++)
        w[v] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * v)))));
}

/* weights 0-7, 8-15 (low nibbles), 16-23, 24-31 (high nibbles) as int32 vectors */
static inline void nibbles_256(const uint8_t *qs, __m256i *q) {
    const __m128i bytes = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(bytes, mask), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    q[0] = _mm256_cvtepu8_epi32(lo);
    q[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
    q[2] = _mm256_cvtepu8_epi32(hi);
    q[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
}

static inline void vec_q4_0(const uint8_t *b, vec_t *w) {
    const __m256 d = _mm256_set1_ps(fp16_to_f32(b));
    const __m256i eight = _mm256_set1_epi32(8);
    __m256i q[4];
    nibbles_256(b + 2, q);
    for (int v = 0; v < 4; v++) w[v] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(q[v], eight)));
}

static inline void vec_q4_1(const uint8_t *b, vec_t *w) {
    const __m256 d = _mm256_set1_ps(fp16_to_f32(b)), m = _mm256_set1_ps(fp16_to_f32(b + 2));
    __m256i q[4];
    nibbles_256(b + 4, q);
    for (int v = 0; v < 4; v++) w[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[v]), d, m);
}
#endif

/* ---------------------------------------------------------------------------------------------
 * m = 1 (single-stream decode), bound by the weight bytes if the arithmetic per weight is small:
 * per block, the raw quants (nibbles 0..15, int8) are converted and multiplied into x unscaled,
 * and the block's partial sums scaled once (one FMA per block); Q4_1's min and Q4_0's -8 need only
 * the sum of x over the block (w.x = d * q.x + m * sum(x)), computed once per call. Per 16 weights:
 * one widening, one mask or shift, one conversion, one FMA. QDOT_<type>(xb, blk) -> the block's q.x
 * as a vector of partial sums. */

#if defined(__AVX512F__)
static inline __m512 qdot_q4(const float *xb, const uint8_t *qs) {
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, _mm512_set1_epi32(15)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
    return _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xb)));
}

static inline __m512 qdot_q8(const float *xb, const uint8_t *qs) {
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qs)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16))));
    return _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xb)));
}
#elif defined(__AVX2__)
static inline __m256 qdot_q4(const float *xb, const uint8_t *qs) {
    const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    const __m256i mask = _mm256_set1_epi32(15);
    __m256 s0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(a, mask)), _mm256_loadu_ps(xb));
    __m256 s1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b, mask)), _mm256_loadu_ps(xb + 8));
    s0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), _mm256_loadu_ps(xb + 16), s0);
    s1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), _mm256_loadu_ps(xb + 24), s1);
    return _mm256_add_ps(s0, s1);
}

static inline __m256 qdot_q8(const float *xb, const uint8_t *qs) {
    __m256 s[2];
    for (int h = 0; h < 2; h++) {
        const __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 16 * h))));
        const __m256 b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 16 * h + 8))));
        s[h] = _mm256_fmadd_ps(b, _mm256_loadu_ps(xb + 16 * h + 8), _mm256_mul_ps(a, _mm256_loadu_ps(xb + 16 * h)));
    }
    return _mm256_add_ps(s[0], s[1]);
}
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
#define GEMV_UNROLL 4 /* blocks per iteration: independent accumulators, so no FMA chain bounds the loop */

/* One weight row against x: Q8_0 (MIN_KIND 0: no offset), Q4_0 (1: -8 * d * sum(x)), Q4_1 (2: m * sum(x)). */
static inline __attribute__((always_inline)) float gemv_row(const float *x, const float *xs, const uint8_t *w,
                                                            int64_t nb, const int BYTES, const int MIN_KIND) {
    vec_t acc[GEMV_UNROLL];
    float off[GEMV_UNROLL];
    for (int u = 0; u < GEMV_UNROLL; u++) acc[u] = V_ZERO(), off[u] = 0.f;
    int64_t b = 0;
    for (; b + GEMV_UNROLL <= nb; b += GEMV_UNROLL) {
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const uint8_t *blk = w + (b + u) * BYTES;
            const float *xb = x + (b + u) * QK;
            const float d = fp16_to_f32(blk);
            const vec_t q = MIN_KIND == 0 ? qdot_q8(xb, blk + 2) : qdot_q4(xb, blk + (MIN_KIND == 2 ? 4 : 2));
            acc[u] = V_FMA(q, V_SET1(d), acc[u]);
            if (MIN_KIND == 1) off[u] += d * xs[b + u];
            if (MIN_KIND == 2) off[u] += fp16_to_f32(blk + 2) * xs[b + u];
        }
    }
    for (; b < nb; b++) {
        const uint8_t *blk = w + b * BYTES;
        const float *xb = x + b * QK;
        const float d = fp16_to_f32(blk);
        const vec_t q = MIN_KIND == 0 ? qdot_q8(xb, blk + 2) : qdot_q4(xb, blk + (MIN_KIND == 2 ? 4 : 2));
        acc[0] = V_FMA(q, V_SET1(d), acc[0]);
        if (MIN_KIND == 1) off[0] += d * xs[b];
        if (MIN_KIND == 2) off[0] += fp16_to_f32(blk + 2) * xs[b];
    }
    const float offset = (off[0] + off[1]) + (off[2] + off[3]);
    const float dot = V_SUM(V_ADD(V_ADD(acc[0], acc[1]), V_ADD(acc[2], acc[3])));
    return MIN_KIND == 1 ? dot - 8.f * offset : dot + offset;
}

/* x's sum over each block (the offsets' part), into xs[nb] */
static void block_sums(const float *x, int64_t nb, float *xs) {
    for (int64_t b = 0; b < nb; b++) {
        vec_t s = V_LOAD(x + b * QK);
        for (int v = 1; v < VPB; v++) s = V_ADD(s, V_LOAD(x + b * QK + v * VW));
        xs[b] = V_SUM(s);
    }
}

#define GEMV_STACK_BLOCKS 1024
#define GEMV_PARALLEL_BYTES (32 * 1024) /* below this, opening a region costs more than a thread saves */
#ifdef _OPENMP
#define GEMV_THREAD(t, nt) (t = omp_get_thread_num(), nt = omp_get_num_threads())
#else
#define GEMV_THREAD(t, nt) ((void)0)
#endif
#define DEFINE_GEMV(T, BYTES, MIN_KIND)                                                            \
static void gemv_##T(const float *x, int64_t k, const uint8_t *w, int64_t n, float *y) {           \
    const int64_t nb = k / QK, row_bytes = nb * BYTES;                                             \
    float xs_stack[GEMV_STACK_BLOCKS], *xs = xs_stack;                                             \
    if (MIN_KIND && nb > GEMV_STACK_BLOCKS && !(xs = (float *)malloc((size_t)nb * sizeof(float)))) { \
        for (int64_t j = 0; j < n; j++) tile_dot_##T(x, k, 1, w + j * row_bytes, nb, y + j, 1);    \
        return;                                                                                    \
    }                                                                                              \
    if (MIN_KIND) block_sums(x, nb, xs);                                                           \
    /* one contiguous range of rows per thread: each thread's reads are one stream to prefetch */ \
    _Pragma("omp parallel if (n * row_bytes >= GEMV_PARALLEL_BYTES)")                              \
    {                                                                                              \
        int64_t t = 0, nt = 1;                                                                     \
        GEMV_THREAD(t, nt);                                                                        \
        const int64_t j1 = n * (t + 1) / nt;                                                       \
        for (int64_t j = n * t / nt; j < j1; j++) y[j] = gemv_row(x, xs, w + j * row_bytes, nb, BYTES, MIN_KIND); \
    }                                                                                              \
    if (xs != xs_stack) free(xs);                                                                  \
}
#endif

/* ---------------------------------------------------------------------------------------------
 * The matmul, for each type: a tile of `mt` rows of x against one weight row, then the driver. */

#if defined(__AVX512F__) || defined(__AVX2__)

/* mt = 1 (single-stream decode): two blocks per iteration, so that 2 * VPB independent FMA
 * chains hide the FMA latency. */
#define DEFINE_ROW_DOT(T, BYTES)                                                                   \
static inline float row_dot_##T(const float *x, const uint8_t *w, int64_t nb) {                    \
    vec_t acc[2 * VPB], wv[2 * VPB];                                                               \
    for (int v = 0; v < 2 * VPB; v++) acc[v] = V_ZERO();                                           \
    int64_t b = 0;                                                                                 \
    for (; b + 1 < nb; b += 2) {                                                                   \
        vec_##T(w + b * BYTES, wv);                                                                \
        vec_##T(w + (b + 1) * BYTES, wv + VPB);                                                    \
        for (int v = 0; v < 2 * VPB; v++) acc[v] = V_FMA(V_LOAD(x + b * QK + v * VW), wv[v], acc[v]); \
    }                                                                                              \
    if (b < nb) {                                                                                  \
        vec_##T(w + b * BYTES, wv);                                                                \
        for (int v = 0; v < VPB; v++) acc[v] = V_FMA(V_LOAD(x + b * QK + v * VW), wv[v], acc[v]);  \
    }                                                                                              \
    for (int v = 1; v < 2 * VPB; v++) acc[0] = V_ADD(acc[0], acc[v]);                              \
    return V_SUM(acc[0]);                                                                          \
}                                                                                                  \
                                                                                                   \
/* mt rows of x (row stride k) against one weight row: out[i * ldo] = x_i . w. Two accumulators   \
 * per row (even and odd vectors of a block). always_inline + the constant mt of each call site    \
 * below: the loops over rows unroll and the accumulators stay in registers. */                    \
static inline __attribute__((always_inline)) void tile_dot_##T(const float *x, int64_t k, int mt,  \
                                                              const uint8_t *w, int64_t nb,        \
                                                              float *out, int64_t ldo) {           \
    vec_t acc[MT][2], wv[VPB];                                                                     \
    for (int i = 0; i < mt; i++) acc[i][0] = acc[i][1] = V_ZERO();                                 \
    for (int64_t b = 0; b < nb; b++) {                                                             \
        vec_##T(w + b * BYTES, wv);                                                                \
        for (int i = 0; i < mt; i++) {                                                             \
            const float *xb = x + i * k + b * QK;                                                  \
            for (int v = 0; v < VPB; v++) acc[i][v & 1] = V_FMA(V_LOAD(xb + v * VW), wv[v], acc[i][v & 1]); \
        }                                                                                          \
    }                                                                                              \
    for (int i = 0; i < mt; i++) out[i * ldo] = V_SUM(V_ADD(acc[i][0], acc[i][1]));                \
}

#else  /* plain C: expand each block to floats, then a dot product per row of the tile */

#define MT 4
#define DEFINE_ROW_DOT(T, BYTES)                                                                   \
static inline void tile_dot_##T(const float *x, int64_t k, int mt, const uint8_t *w, int64_t nb,   \
                                float *out, int64_t ldo) {                                         \
    float acc[MT] = {0}, wf[QK];                                                                   \
    for (int64_t b = 0; b < nb; b++) {                                                             \
        block_##T(w + b * BYTES, wf);                                                              \
        for (int i = 0; i < mt; i++) {                                                             \
            const float *xb = x + i * k + b * QK;                                                  \
            float s = 0.f;                                                                         \
            for (int j = 0; j < QK; j++) s += xb[j] * wf[j];                                       \
            acc[i] += s;                                                                           \
        }                                                                                          \
    }                                                                                              \
    for (int i = 0; i < mt; i++) out[i * ldo] = acc[i];                                            \
}                                                                                                  \
static inline float row_dot_##T(const float *x, const uint8_t *w, int64_t nb) {                    \
    float out;                                                                                     \
    tile_dot_##T(x, 0, 1, w, nb, &out, 1);                                                         \
    return out;                                                                                    \
}
#endif

/* m = 1, Q4_0 / Q4_1: quant_kquants.c's integer GEMV (x split into two int16 parts per block, exact
 * to ~2^-31 of the block's largest element; -1 where that build has none: then gemv_<type> below) */
int kq_x16_gemv_q4(const float *x, int64_t k, const uint8_t *w, int64_t n, float *y, int has_min);
#define X16_CALL_q8_0(x, k, w, n, y) 0
#define X16_CALL_q4_0(x, k, w, n, y) (kq_x16_gemv_q4(x, k, w, n, y, 0) == 0)
#define X16_CALL_q4_1(x, k, w, n, y) (kq_x16_gemv_q4(x, k, w, n, y, 1) == 0)

/* m > SMALL_M: quant_gemm.c's dequantize-a-panel GEMM, with each type's row of blocks -> floats */
#define SMALL_M 4
typedef void (*qgemm_dequant_row_fn)(const uint8_t *row, float *out, int64_t k);
int qgemm_dequant_gemm(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y,
                       int64_t row_bytes, qgemm_dequant_row_fn dequant_row);

#if defined(__AVX512F__) || defined(__AVX2__)
#define DEFINE_DEQUANT_ROW(T, BYTES)                                                               \
static void dequant_row_##T(const uint8_t *row, float *out, int64_t k) {                           \
    vec_t wv[VPB];                                                                                 \
    for (int64_t b = 0; b < k / QK; b++) {                                                         \
        vec_##T(row + b * BYTES, wv);                                                              \
        for (int v = 0; v < VPB; v++) V_STORE(out + b * QK + v * VW, wv[v]);                       \
    }                                                                                              \
}
#define DEFINE_M1(T, BYTES, MIN_KIND) DEFINE_GEMV(T, BYTES, MIN_KIND)
#define GEMV_CALL(T, x, m, k, w, n, y) ((m) == 1 ? (gemv_##T(x, k, w, n, y), 1) : 0)
#else
#define DEFINE_DEQUANT_ROW(T, BYTES)                                                               \
static void dequant_row_##T(const uint8_t *row, float *out, int64_t k) {                           \
    for (int64_t b = 0; b < k / QK; b++) block_##T(row + b * BYTES, out + b * QK);                 \
}
#define DEFINE_M1(T, BYTES, MIN_KIND)
#define GEMV_CALL(T, x, m, k, w, n, y) 0
#endif

#define DEFINE_GGUF_TYPE(T, BYTES, MIN_KIND)                                                       \
DEFINE_ROW_DOT(T, BYTES)                                                                           \
DEFINE_DEQUANT_ROW(T, BYTES)                                                                       \
DEFINE_M1(T, BYTES, MIN_KIND)                                                                      \
                                                                                                   \
void gguf_dequantize_##T(const uint8_t *blocks, float *out, int64_t n_elements) {                  \
    const int64_t nb = n_elements / QK;                                                            \
    _Pragma("omp parallel for schedule(static) if (nb > 8192)")                                    \
    for (int64_t b = 0; b < nb; b++) block_##T(blocks + b * BYTES, out + b * QK);                  \
}                                                                                                  \
                                                                                                   \
void gguf_matmul_##T(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y) { \
    const int64_t nb = k / QK, row_bytes = nb * BYTES, chunks = (n + ROW_CHUNK - 1) / ROW_CHUNK;   \
    if (m <= 0 || n <= 0) return;                                                                  \
    if (m == 1 && X16_CALL_##T(x, k, w, n, y)) return;                                             \
    if (GEMV_CALL(T, x, m, k, w, n, y)) return;                                                    \
    if (m > SMALL_M && qgemm_dequant_gemm(x, m, k, w, n, y, row_bytes, dequant_row_##T) == 0) return; \
    _Pragma("omp parallel for schedule(static)")                                                   \
    for (int64_t c = 0; c < chunks; c++) {                                                         \
        const int64_t j0 = c * ROW_CHUNK, j1 = j0 + ROW_CHUNK < n ? j0 + ROW_CHUNK : n;            \
        if (m == 1) {                                                                              \
            for (int64_t j = j0; j < j1; j++) y[j] = row_dot_##T(x, w + j * row_bytes, nb);        \
            continue;                                                                              \
        }                                                                                          \
        for (int64_t i0 = 0; i0 < m; i0 += MT) {                                                   \
            const int64_t rows = m - i0 < MT ? m - i0 : MT;                                        \
            const float *xt = x + i0 * k;                                                          \
            float *yt = y + i0 * n;                                                                \
            for (int64_t j = j0; j < j1; j++) {                                                    \
                const uint8_t *wr = w + j * row_bytes;                                             \
                switch (rows) { /* constant tile heights: unrolled register tiles */               \
                    case MT: tile_dot_##T(xt, k, MT, wr, nb, yt + j, n); break;                    \
                    case 1: tile_dot_##T(xt, k, 1, wr, nb, yt + j, n); break;                      \
                    case 2: tile_dot_##T(xt, k, 2, wr, nb, yt + j, n); break;                      \
                    case 3: tile_dot_##T(xt, k, 3, wr, nb, yt + j, n); break;                      \
                    default: tile_dot_##T(xt, k, (int)rows, wr, nb, yt + j, n); break;             \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_GGUF_TYPE(q8_0, 34, 0)
DEFINE_GGUF_TYPE(q4_0, 18, 1)
DEFINE_GGUF_TYPE(q4_1, 20, 2)
