/* CPU kernels for the chains of small elementwise torch ops in every layer: each call replaces
 * several torch ops, each with its own dispatch and its own pass over memory. Built with the
 * system C compiler at first use (kernels/cpu.py) and called through ctypes; every kernel has a
 * torch reference there and a test against it.
 *
 * Tensors are passed as raw pointers with the strides the caller checked. Two element types:
 * float32 (suffix _f32) and bfloat16 (suffix _bf16, stored as uint16; math in float32).
 * The elementwise kernels split their rows over threads only for large inputs (PARALLEL_ELEMENTS:
 * at batch-1 decode sizes a parallel region costs more than it saves); paged decode attention runs its (sequence, KV head) items over OpenMP threads. The
 * library is linked against libgomp.so.1, the same SONAME as torch's own OpenMP runtime, so the
 * loader gives it torch's already-loaded copy and its threads: a second OpenMP runtime beside
 * torch's would make both slower.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "vector_expf.h"

#include "bf16.h"

#define LOAD_f32(p) (p)
#define LOAD_bf16(p) bf16_to_f32(p)
#define STORE_f32(x) (x)
#define STORE_bf16(x) f32_to_bf16(x)

typedef float f32_t;

/* The elementwise kernels split their rows over torch's OpenMP threads from this many elements
 * on (a batch's prefill, a decode step of a few dozen sequences); below it a parallel region
 * costs more than it saves (batch 1: one row, never). */
#define PARALLEL_ELEMENTS (1 << 15)
/* Tested before the region, not in an OpenMP if() clause: a region that the clause turns off still
 * costs a runtime call and a team of one per call, which batch-1 decode pays in every layer. */
#define PARALLEL_ROWS(rows, N) ((rows) > 1 && (rows) * (N) >= PARALLEL_ELEMENTS)

/* RMSNorm over rows of width N, as transformers computes it: x * rsqrt(mean(x^2) + eps) in
 * float32, rounded to the model dtype, then times the weight (in the model dtype). In and out
 * rows may have strides (out may alias x). */
#define DEFINE_RMS_NORM(T)                                                                          \
static inline void rms_norm_row_##T(int64_t N, const T##_t *xr, const T##_t *weight, float eps,    \
                                    T##_t *orow) {                                                  \
    float ss = 0.f;                                                                                 \
    for (int64_t i = 0; i < N; i++) { const float v = LOAD_##T(xr[i]); ss += v * v; }               \
    const float inv = 1.f / sqrtf(ss / (float)N + eps);                                             \
    for (int64_t i = 0; i < N; i++) {                                                               \
        const float normed = LOAD_##T(STORE_##T(LOAD_##T(xr[i]) * inv));                            \
        orow[i] = STORE_##T(LOAD_##T(weight[i]) * normed);                                          \
    }                                                                                               \
}                                                                                                   \
                                                                                                    \
void rms_norm_##T(int64_t rows, int64_t N, const T##_t *x, int64_t x_stride, const T##_t *weight,  \
                  float eps, T##_t *out, int64_t out_stride) {                                      \
    if (PARALLEL_ROWS(rows, N)) {                                                                   \
        _Pragma("omp parallel for schedule(static)")                                                \
        for (int64_t r = 0; r < rows; r++)                                                          \
            rms_norm_row_##T(N, x + r * x_stride, weight, eps, out + r * out_stride);              \
    } else {                                                                                        \
        for (int64_t r = 0; r < rows; r++)                                                          \
            rms_norm_row_##T(N, x + r * x_stride, weight, eps, out + r * out_stride);              \
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

/* Paged decode attention: one query token per sequence, its keys and values read in place from
 * the paged cache through the sequence's block table (no gather, no mask tensor).
 *   q [S, H, D] (row stride q_stride), caches [slots, KVH, D], out [S, H, D] (row stride
 *   out_stride); block_tables int32 [S, bt_stride]; context_lens int32 [S] (keys per sequence,
 *   the query being the last); alibi_slopes float32 [H] or NULL; window 0 or the sliding window
 *   (keys at positions > query - window).
 * Math in float32 (scores, an exact softmax per chunk, the weighted sum of V, chunks combined as
 * flash-decoding does), output rounded to T: scaled_dot_product_attention over the gathered keys
 * up to summation order. A work item is one sequence's keys in chunks of up to `chunk` tokens,
 * all heads at once, so each token's K and V rows (KVH * D contiguous values) stream in one
 * pass; chunking keeps both threads busy when there are few sequences. */
/* K/V rows come from DRAM (a step reads every layer's cache once), in blocks scattered over the
 * pool: the hardware prefetchers stop at block and page edges, so fetch a few tokens ahead. */
#ifndef PREFETCH_TOKENS
#define PREFETCH_TOKENS 8
#endif
/* Walks a sequence's slots token by token without a division per token. */
typedef struct { const int32_t *table; int64_t block_size, block, offset; } slot_cursor;

static inline slot_cursor cursor_at(const int32_t *table, int64_t block_size, int64_t t) {
    slot_cursor c = {table, block_size, t / block_size, t % block_size};
    return c;
}

static inline int64_t cursor_next(slot_cursor *c) {  /* the current slot, then advance */
    const int64_t slot = (int64_t)c->table[c->block] * c->block_size + c->offset;
    if (++c->offset == c->block_size) { c->offset = 0; c->block++; }
    return slot;
}

static inline void prefetch_bytes(const void *p, int64_t bytes) {
    for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch((const char *)p + i, 0, 3);
}

/* The largest of x[0..n): sixteen running maxima updated elementwise, then folded. A plain
 * `m = x[i] > m ? x[i] : m` loop vectorizes only under -ffinite-math-only (which the -INFINITY
 * start rules out); a maximum does not depend on the order, so the result is the same. */
static inline float max_of(const float *x, int64_t n) {
    float lane[16];
    for (int j = 0; j < 16; j++) lane[j] = -INFINITY;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
    float m = -INFINITY;
    for (int j = 0; j < 16; j++) m = lane[j] > m ? lane[j] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* The weighted sum of V for the head sizes 64 and 128 with AVX-512: per KV head, a block of its
 * query heads (16 / (D / 16) of them) keeps its accumulators in 16 vector registers while the
 * chunk's tokens stream by, each V row converted to float once per KV head. The scalar loop below
 * it instead loads and stores every head's accumulator (H * D floats, more than the registers
 * hold) once per token. Same products, same order per output element: the same sums. The first
 * pass over the rows carries on the V prefetch stream that the score loop began. */
#if defined(__AVX512F__)
#define DECODE_PV_VECTOR 1
#define LOADV_f32(p) _mm512_loadu_ps(p)
#define LOADV_bf16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define DEFINE_DECODE_PV(T)                                                                         \
static inline __attribute__((always_inline)) void                                                   \
decode_pv_##T(int64_t H, int64_t KVH, int64_t D, const T##_t *v_cache, const int32_t *table,        \
              int64_t block_size, int64_t first, int64_t last, const float *scores, float *acc,    \
              slot_cursor *v_pf, int64_t v_ahead) {                                                 \
    const int64_t G = H / KVH, W = KVH * D, n = last - first, NV = D / 16, GB = 16 / NV;           \
    const int64_t row_bytes = W * (int64_t)sizeof(T##_t);                                           \
    for (int64_t kvh = 0; kvh < KVH; kvh++) {                                                       \
        for (int64_t g0 = 0; g0 < G; g0 += GB) {                                                    \
            const int64_t gb = G - g0 < GB ? G - g0 : GB, h0 = kvh * G + g0;                        \
            const int first_pass = kvh == 0 && g0 == 0;                                             \
            __m512 a[4][8];                                                                         \
            _Pragma("GCC unroll 4") for (int64_t j = 0; j < GB; j++)                                \
                _Pragma("GCC unroll 8") for (int64_t v = 0; v < NV; v++) a[j][v] = _mm512_setzero_ps(); \
            slot_cursor cur = cursor_at(table, block_size, first);                                  \
            for (int64_t i = 0; i < n; i++) {                                                       \
                const T##_t *vr = v_cache + cursor_next(&cur) * W + kvh * D;                        \
                if (first_pass && v_ahead < last) {                                                 \
                    prefetch_bytes(v_cache + cursor_next(v_pf) * W, row_bytes);                     \
                    v_ahead++;                                                                      \
                }                                                                                   \
                __m512 vv[8];                                                                       \
                _Pragma("GCC unroll 8") for (int64_t v = 0; v < NV; v++) vv[v] = LOADV_##T(vr + 16 * v); \
                _Pragma("GCC unroll 4") for (int64_t j = 0; j < GB; j++) {                          \
                    if (j < gb) {                                                                   \
                        const __m512 p = _mm512_set1_ps(scores[(h0 + j) * n + i]);                  \
                        _Pragma("GCC unroll 8") for (int64_t v = 0; v < NV; v++)                    \
                            a[j][v] = _mm512_fmadd_ps(p, vv[v], a[j][v]);                           \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
            _Pragma("GCC unroll 4") for (int64_t j = 0; j < GB; j++)                                \
                if (j < gb)                                                                         \
                    _Pragma("GCC unroll 8") for (int64_t v = 0; v < NV; v++)                        \
                        _mm512_storeu_ps(acc + (h0 + j) * D + 16 * v, a[j][v]);                    \
        }                                                                                           \
    }                                                                                               \
}
/* One token's scores for every head (head h into scores[h * n]): each KV head's key converted to
 * float in registers once, then its query heads' dot products. */
#define DEFINE_DECODE_QK(T)                                                                         \
static inline __attribute__((always_inline)) void                                                   \
decode_qk_##T(int64_t KVH, int64_t G, int64_t D, const T##_t *kr, const float *qf, float *scores,  \
              int64_t n) {                                                                          \
    const int64_t NV = D / 16;                                                                      \
    for (int64_t kvh = 0, h = 0; kvh < KVH; kvh++) {                                                \
        __m512 kv[8];                                                                               \
        _Pragma("GCC unroll 8") for (int64_t v = 0; v < NV; v++) kv[v] = LOADV_##T(kr + kvh * D + 16 * v); \
        for (int64_t g = 0; g < G; g++, h++) {                                                      \
            const float *qh = qf + h * D;                                                           \
            __m512 dot = _mm512_mul_ps(_mm512_loadu_ps(qh), kv[0]);                                 \
            _Pragma("GCC unroll 8") for (int64_t v = 1; v < NV; v++)                                \
                dot = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * v), kv[v], dot);                    \
            scores[h * n] = _mm512_reduce_add_ps(dot);                                              \
        }                                                                                           \
    }                                                                                               \
}
#else
#define DECODE_PV_VECTOR 0
#define DEFINE_DECODE_QK(T)                                                                         \
static inline void decode_qk_##T(int64_t KVH, int64_t G, int64_t D, const T##_t *kr, const float *qf, \
                                 float *scores, int64_t n) {                                        \
    (void)KVH; (void)G; (void)D; (void)kr; (void)qf; (void)scores; (void)n;  /* never called */    \
}
#define DEFINE_DECODE_PV(T)                                                                         \
static inline void decode_pv_##T(int64_t H, int64_t KVH, int64_t D, const T##_t *v_cache,           \
                                 const int32_t *table, int64_t block_size, int64_t first,           \
                                 int64_t last, const float *scores, float *acc, slot_cursor *v_pf,  \
                                 int64_t v_ahead) {                                                 \
    (void)H; (void)KVH; (void)D; (void)v_cache; (void)table; (void)block_size; (void)first;        \
    (void)last; (void)scores; (void)acc; (void)v_pf; (void)v_ahead;  /* never called */            \
}
#endif
DEFINE_DECODE_QK(f32)
DEFINE_DECODE_QK(bf16)
DEFINE_DECODE_PV(f32)
DEFINE_DECODE_PV(bf16)

#define DEFINE_DECODE_ATTENTION(T)                                                                  \
static inline __attribute__((always_inline)) void                                                   \
decode_chunk_##T(int64_t H, int64_t KVH, int64_t D, const float *qf,                                \
                             const T##_t *k_cache, const T##_t *v_cache, const int32_t *table,      \
                             int64_t block_size, int64_t first, int64_t last, int64_t query_pos,    \
                             const float *alibi_slopes, float *scores, float *row, float *m,        \
                             float *l, float *acc) {                                                \
    const int64_t G = H / KVH, W = KVH * D, n = last - first, row_bytes = W * (int64_t)sizeof(T##_t); \
    /* prefetch cursors: K rows PREFETCH_TOKENS ahead, then V's first rows, then V ahead */         \
    int64_t k_ahead = first + PREFETCH_TOKENS < last ? first + PREFETCH_TOKENS : last, v_ahead = first; \
    slot_cursor k_pf = cursor_at(table, block_size, k_ahead), v_pf = cursor_at(table, block_size, first); \
    slot_cursor cur = cursor_at(table, block_size, first);                                          \
    for (int64_t i = 0; i < n; i++) {                                                               \
        const T##_t *kr = k_cache + cursor_next(&cur) * W;                                          \
        if (k_ahead < last) { prefetch_bytes(k_cache + cursor_next(&k_pf) * W, row_bytes); k_ahead++; } \
        else if (v_ahead < last) { prefetch_bytes(v_cache + cursor_next(&v_pf) * W, row_bytes); v_ahead++; } \
        if (DECODE_PV_VECTOR && (D == 64 || D == 128)) {                                            \
            decode_qk_##T(KVH, G, D, kr, qf, scores + i, n);                                        \
            continue;                                                                               \
        }                                                                                           \
        for (int64_t j = 0; j < W; j++) row[j] = LOAD_##T(kr[j]);                                   \
        for (int64_t kvh = 0, h = 0; kvh < KVH; kvh++) {                                            \
            const float *kh = row + kvh * D;                                                        \
            for (int64_t g = 0; g < G; g++, h++) {                                                  \
                const float *qh = qf + h * D;                                                       \
                float dot = 0.f;                                                                    \
                for (int64_t d = 0; d < D; d++) dot += qh[d] * kh[d];                               \
                scores[h * n + i] = dot;                                                            \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
    for (int64_t h = 0; h < H; h++) {                                                               \
        float *sh = scores + h * n;                                                                 \
        if (alibi_slopes) {                                                                         \
            const float slope = alibi_slopes[h];                                                    \
            for (int64_t i = 0; i < n; i++) sh[i] += slope * (float)(first + i - query_pos);       \
        }                                                                                           \
        const float mx = max_of(sh, n);                                                             \
        float total = 0.f;                                                                          \
        for (int64_t i = 0; i < n; i++) { sh[i] = expf(sh[i] - mx); total += sh[i]; }               \
        m[h] = mx;                                                                                  \
        l[h] = total;                                                                               \
    }                                                                                               \
    if (DECODE_PV_VECTOR && (D == 64 || D == 128)) {                                                \
        decode_pv_##T(H, KVH, D, v_cache, table, block_size, first, last, scores, acc, &v_pf, v_ahead); \
        return;                                                                                     \
    }                                                                                               \
    memset(acc, 0, sizeof(float) * (size_t)(H * D));                                               \
    cur = cursor_at(table, block_size, first);                                                      \
    for (int64_t i = 0; i < n; i++) {                                                               \
        const T##_t *vr = v_cache + cursor_next(&cur) * W;                                          \
        if (v_ahead < last) { prefetch_bytes(v_cache + cursor_next(&v_pf) * W, row_bytes); v_ahead++; } \
        for (int64_t j = 0; j < W; j++) row[j] = LOAD_##T(vr[j]);                                   \
        for (int64_t kvh = 0, h = 0; kvh < KVH; kvh++) {                                            \
            const float *vh = row + kvh * D;                                                        \
            for (int64_t g = 0; g < G; g++, h++) {                                                  \
                const float p = scores[h * n + i];                                                  \
                float *ah = acc + h * D;                                                            \
                for (int64_t d = 0; d < D; d++) ah[d] += p * vh[d];                                 \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
}                                                                                                   \
                                                                                                    \
/* The common head sizes as compile-time constants: the dot products and the V sums unroll into    \
 * a few vector FMAs instead of a loop with a remainder per head and token. */                      \
static void decode_chunk_any_##T(int64_t H, int64_t KVH, int64_t D, const float *qf,                \
                                 const T##_t *k_cache, const T##_t *v_cache, const int32_t *table,  \
                                 int64_t block_size, int64_t first, int64_t last, int64_t query_pos, \
                                 const float *alibi_slopes, float *scores, float *row, float *m,    \
                                 float *l, float *acc) {                                            \
    if (D == 64)                                                                                    \
        decode_chunk_##T(H, KVH, 64, qf, k_cache, v_cache, table, block_size, first, last, query_pos, \
                         alibi_slopes, scores, row, m, l, acc);                                     \
    else if (D == 128)                                                                              \
        decode_chunk_##T(H, KVH, 128, qf, k_cache, v_cache, table, block_size, first, last, query_pos, \
                         alibi_slopes, scores, row, m, l, acc);                                     \
    else                                                                                            \
        decode_chunk_##T(H, KVH, D, qf, k_cache, v_cache, table, block_size, first, last, query_pos, \
                         alibi_slopes, scores, row, m, l, acc);                                     \
}                                                                                                   \
                                                                                                    \
void paged_decode_attention_##T(int64_t S, int64_t H, int64_t KVH, int64_t D, const T##_t *q,      \
                                int64_t q_stride, const T##_t *k_cache, const T##_t *v_cache,       \
                                const int32_t *block_tables, int64_t bt_stride,                     \
                                const int32_t *context_lens, int64_t block_size, int64_t chunk,    \
                                float scale, const float *alibi_slopes, int64_t window,            \
                                T##_t *out, int64_t out_stride) {                                   \
    /* chunk_start[s]: index of sequence s's first chunk; chunks hold (m, l, acc) partials */      \
    int64_t *chunk_start = malloc(sizeof(int64_t) * (size_t)(S + 1));                               \
    chunk_start[0] = 0;                                                                             \
    for (int64_t s = 0; s < S; s++) {                                                               \
        const int64_t L = context_lens[s];                                                          \
        const int64_t n = L - ((window > 0 && L > window) ? L - window : 0);                        \
        chunk_start[s + 1] = chunk_start[s] + (n + chunk - 1) / chunk;                              \
    }                                                                                               \
    const int64_t items = chunk_start[S], part = H * (D + 2);                                       \
    float *partials = malloc(sizeof(float) * (size_t)(items * part));                               \
    /* one work item (batch 1, a short context): no parallel region, whose fork and barriers cost   \
     * more than the item, and on a loaded machine wait for a thread that is not running */       \
    _Pragma("omp parallel if(items > 1)")                                                           \
    {                                                                                               \
        float *scores = malloc(sizeof(float) * (size_t)(H * chunk + KVH * D + H * D));              \
        float *row = scores + H * chunk, *qf = row + KVH * D;                                       \
        int64_t s = 0;                                                                              \
        _Pragma("omp for schedule(dynamic, 1)")                                                     \
        for (int64_t item = 0; item < items; item++) {                                              \
            while (chunk_start[s + 1] <= item) s++;                                                 \
            if (chunk_start[s] > item) { s = 0; while (chunk_start[s + 1] <= item) s++; }          \
            const int64_t L = context_lens[s];                                                      \
            const int64_t begin = (window > 0 && L > window) ? L - window : 0;                      \
            const int64_t first = begin + (item - chunk_start[s]) * chunk;                          \
            const int64_t last = first + chunk < L ? first + chunk : L;                             \
            for (int64_t i = 0; i < H * D; i++) qf[i] = LOAD_##T(q[s * q_stride + i]) * scale;     \
            float *p = partials + item * part;                                                      \
            decode_chunk_any_##T(H, KVH, D, qf, k_cache, v_cache, block_tables + s * bt_stride,    \
                             block_size, first, last, L - 1, alibi_slopes, scores, row, p, p + H,   \
                             p + 2 * H);                                                            \
        }                                                                                           \
        free(scores);                                                                               \
        /* combine each sequence's chunks: out = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c */ \
        _Pragma("omp for schedule(static)")                                                         \
        for (int64_t s2 = 0; s2 < S; s2++) {                                                        \
            const int64_t c0 = chunk_start[s2], c1 = chunk_start[s2 + 1];                           \
            for (int64_t h = 0; h < H; h++) {                                                       \
                float M = -INFINITY, denom = 0.f;                                                   \
                for (int64_t c = c0; c < c1; c++) { const float mc = partials[c * part + h]; M = mc > M ? mc : M; } \
                float o[D];                                                                         \
                for (int64_t d = 0; d < D; d++) o[d] = 0.f;                                         \
                for (int64_t c = c0; c < c1; c++) {                                                 \
                    const float *pc = partials + c * part;                                          \
                    const float w = expf(pc[h] - M);                                                \
                    denom += w * pc[H + h];                                                         \
                    const float *ac = pc + 2 * H + h * D;                                           \
                    for (int64_t d = 0; d < D; d++) o[d] += w * ac[d];                              \
                }                                                                                   \
                T##_t *oh = out + s2 * out_stride + h * D;                                          \
                const float inv = 1.f / denom;                                                      \
                for (int64_t d = 0; d < D; d++) oh[d] = STORE_##T(o[d] * inv);                      \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
    free(partials);                                                                                 \
    free(chunk_start);                                                                              \
}

DEFINE_DECODE_ATTENTION(f32)
DEFINE_DECODE_ATTENTION(bf16)

/* The step's new K and V rows into the paged cache: cache[slots[t]] = rows[t], for k and v
 * together (rows may be strided views of the fused qkv output; each row is `row_bytes`
 * contiguous bytes). Replaces two index_copy_ calls, whose dispatch costs more than the copy at
 * decode sizes. */
void write_kv_cache(int64_t tokens, int64_t row_bytes, const int64_t *slots, const char *k,
                    int64_t k_stride_bytes, const char *v, int64_t v_stride_bytes, char *k_cache,
                    char *v_cache) {
    for (int64_t t = 0; t < tokens; t++) {
        memcpy(k_cache + slots[t] * row_bytes, k + t * k_stride_bytes, (size_t)row_bytes);
        memcpy(v_cache + slots[t] * row_bytes, v + t * v_stride_bytes, (size_t)row_bytes);
    }
}

/* The residual add before a norm, fused (vLLM's fused_add_rms_norm): residual += x (rounded to T,
 * as torch's add), then out = RMSNorm(residual). Rows may be strided; out may alias x. */
#define DEFINE_ADD_RMS_NORM(T)                                                                      \
static inline void add_rms_norm_row_##T(int64_t N, const T##_t *xr, T##_t *rr, const T##_t *weight, \
                                        float eps, T##_t *orow) {                                   \
    for (int64_t i = 0; i < N; i++) rr[i] = STORE_##T(LOAD_##T(rr[i]) + LOAD_##T(xr[i]));         \
    rms_norm_row_##T(N, rr, weight, eps, orow);  /* while the row is in L1 */                      \
}                                                                                                   \
                                                                                                    \
void add_rms_norm_##T(int64_t rows, int64_t N, const T##_t *x, int64_t x_stride, T##_t *residual, \
                      int64_t res_stride, const T##_t *weight, float eps, T##_t *out,              \
                      int64_t out_stride) {                                                         \
    if (PARALLEL_ROWS(rows, N)) {                                                                   \
        _Pragma("omp parallel for schedule(static)")                                                \
        for (int64_t r = 0; r < rows; r++)                                                          \
            add_rms_norm_row_##T(N, x + r * x_stride, residual + r * res_stride, weight, eps,      \
                                 out + r * out_stride);                                             \
    } else {                                                                                        \
        for (int64_t r = 0; r < rows; r++)                                                          \
            add_rms_norm_row_##T(N, x + r * x_stride, residual + r * res_stride, weight, eps,      \
                                 out + r * out_stride);                                             \
    }                                                                                               \
}

DEFINE_ADD_RMS_NORM(f32)
DEFINE_ADD_RMS_NORM(bf16)

/* SiLU-and-mul of the Llama MLP: out = silu(gate) * up for rows [gate (N) | up (N)], each op
 * rounded to T as torch computes F.silu(gate) * up, in one pass (torch: a chunk and two ops, two
 * passes); rows over threads for large inputs. */
#define DEFINE_SILU_AND_MUL(T)                                                                      \
static inline void silu_and_mul_row_##T(int64_t N, const T##_t *g, T##_t *o) {                     \
    const T##_t *u = g + N;                                                                         \
    for (int64_t i = 0; i < N; i++) {                                                               \
        const float gi = LOAD_##T(g[i]);                                                            \
        const float silu = LOAD_##T(STORE_##T(gi / (1.f + expf(-gi))));                            \
        o[i] = STORE_##T(silu * LOAD_##T(u[i]));                                                    \
    }                                                                                               \
}                                                                                                   \
                                                                                                    \
void silu_and_mul_##T(int64_t rows, int64_t N, const T##_t *x, int64_t x_stride, T##_t *out,      \
                      int64_t out_stride) {                                                         \
    if (PARALLEL_ROWS(rows, N)) {                                                                   \
        _Pragma("omp parallel for schedule(static)")                                                \
        for (int64_t r = 0; r < rows; r++) silu_and_mul_row_##T(N, x + r * x_stride, out + r * out_stride); \
    } else {                                                                                        \
        for (int64_t r = 0; r < rows; r++) silu_and_mul_row_##T(N, x + r * x_stride, out + r * out_stride); \
    }                                                                                               \
}

DEFINE_SILU_AND_MUL(f32)
DEFINE_SILU_AND_MUL(bf16)

/* A decode step's whole attention for one layer, from the fused qkv projection's output, in one
 * call: rotary (neox) on q and k in place, the new K/V rows into the cache, then paged decode
 * attention; every row is one sequence's single new token. qkv [S, (H + 2 KVH) D] rows of stride
 * qkv_stride; cos/sin [S, rot / 2] or NULL (no rotary: ALiBi or none); the rest as the kernels
 * above. Saves the per-layer Python and tensor views between the three. */
#define DEFINE_DECODE_QKV_ATTENTION(T)                                                              \
void decode_qkv_attention_##T(int64_t S, int64_t H, int64_t KVH, int64_t D, int64_t rot,         \
                              T##_t *qkv, int64_t qkv_stride, const T##_t *cos, const T##_t *sin, \
                              const int64_t *slots, T##_t *k_cache, T##_t *v_cache,                 \
                              const int32_t *block_tables, int64_t bt_stride,                       \
                              const int32_t *context_lens, int64_t block_size, int64_t chunk,      \
                              float scale, const float *alibi_slopes, int64_t window, T##_t *out,   \
                              int64_t out_stride) {                                                 \
    if (cos != NULL) rotary_neox_##T(S, H + KVH, D, rot, qkv, qkv_stride, cos, sin);               \
    const int64_t esize = (int64_t)sizeof(T##_t);                                                   \
    write_kv_cache(S, KVH * D * esize, slots, (const char *)(qkv + H * D), qkv_stride * esize,     \
                   (const char *)(qkv + (H + KVH) * D), qkv_stride * esize, (char *)k_cache,       \
                   (char *)v_cache);                                                                \
    paged_decode_attention_##T(S, H, KVH, D, qkv, qkv_stride, k_cache, v_cache, block_tables,      \
                               bt_stride, context_lens, block_size, chunk, scale, alibi_slopes,    \
                               window, out, out_stride);                                            \
}

DEFINE_DECODE_QKV_ATTENTION(f32)
DEFINE_DECODE_QKV_ATTENTION(bf16)

/* Greedy sampling's argmax of each row of float32 logits (row stride x_stride), as torch's
 * max(dim=-1).indices: the first index of the largest value, or of the first NaN where a row has
 * one. A vector pass for the maximum (and whether there is a NaN), then one for the first index
 * that holds it: the row stays in L2 between them (torch's reduction runs near 1 ns an element
 * here). Rows over threads for large inputs. */
static int64_t argmax_row(const float *xr, int64_t n) {
    int64_t i = 0;
    float best = -INFINITY;
    int nan = 0;
#if defined(__AVX512F__)
    __m512 m = _mm512_set1_ps(-INFINITY);
    __mmask16 unordered = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(xr + i);
        m = _mm512_max_ps(m, v);
        unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    }
    best = _mm512_reduce_max_ps(m);
    nan = unordered != 0;
#endif
    for (; i < n; i++) { best = xr[i] > best ? xr[i] : best; nan |= xr[i] != xr[i]; }
    i = 0;
#if defined(__AVX512F__)
    const __m512 target = _mm512_set1_ps(best);
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(xr + i);
        const __mmask16 hit = nan ? _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) : _mm512_cmp_ps_mask(v, target, _CMP_EQ_OQ);
        if (hit) return i + __builtin_ctz((unsigned)hit);
    }
#endif
    for (; i < n; i++)
        if (nan ? xr[i] != xr[i] : xr[i] == best) return i;
    return 0;  /* unreachable: the maximum (or the NaN) is one of the values */
}

void sampler_argmax_f32(int64_t rows, int64_t n, const float *x, int64_t x_stride, int64_t *out) {
    if (PARALLEL_ROWS(rows, n)) {
        _Pragma("omp parallel for schedule(static)")
        for (int64_t r = 0; r < rows; r++) out[r] = argmax_row(x + r * x_stride, n);
    } else {
        for (int64_t r = 0; r < rows; r++) out[r] = argmax_row(x + r * x_stride, n);
    }
}
