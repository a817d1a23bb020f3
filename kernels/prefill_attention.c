/* Prefill and chunked-prefill attention on the CPU, reading K/V in place from the paged cache.
 *
 * The torch path (attention/torch_backend.py) gathers every sequence's keys and values into a
 * padded copy (index_select), pads the queries (cat + advanced indexing), runs SDPA and picks the
 * real rows out again (index_select): for a batch of short prompts (32 x 64 tokens) those copies
 * and SDPA's per-call overhead cost several times the attention's arithmetic. Here one call does
 * the whole group: work items of (sequence, KV head, tile of PREFILL_QT queries) on torch's OpenMP
 * threads (the library links libgomp.so.1, torch's copy: cpu_ops.c), each item holding the tile's
 * queries times the KV head's query heads (grouped-query attention: one pass over the keys serves
 * every query head of the group) and streaming the keys a block of PREFILL_KB at a time, with an
 * online softmax (flash attention's running max and sum, as paged decode attention combines its
 * chunks).
 *
 * Shapes: q [T, H, D] (row stride q_stride elements, heads contiguous); sequence s's queries are
 * rows cu_seqlens_q[s] .. cu_seqlens_q[s + 1] - 1, at positions context_lens[s] - (its query count)
 * .. context_lens[s] - 1 (a prompt with a cached prefix starts past 0); its keys are positions
 * 0 .. context_lens[s] - 1 of the cache through its block table (int32, row stride bt_stride),
 * caches [slots, KVH, D] contiguous. A query attends to the keys at or before its position, and
 * only to the last `window` of them when window > 0; alibi_slopes float32 [H] or NULL adds
 * slope * (key - query position). out has q's row layout (row stride out_stride).
 *
 * Math in float32 (scores, softmax, the weighted sum of V), output rounded to T: SDPA's result up
 * to summation order. bfloat16 caches on a CPU with AVX512_BF16 keep K and V in bf16 and take both
 * products with the bf16 dot-product instruction (exact products, float32 sums), the probabilities
 * rounded to bf16 for the sum over V, as SDPA does in bf16; elsewhere they are converted to float.
 * Key slots a sequence does not own are never read (they may hold NaN). */
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

typedef float f32_t;
#define PREFILL_LOAD_f32(x) (x)
#define PREFILL_LOAD_bf16(x) bf16_to_f32(x)

/* Queries per work item (times the group's query heads: the rows of its score and output tiles)
 * and keys per block (two 16-float vectors). A 64-token prompt is 2 tiles, so 32 of them give
 * 32 x KVH x 2 items to balance over the threads; a long prompt's tiles differ in cost (causal),
 * which dynamic scheduling with the heaviest first evens out. 32 rather than 16 queries: the block's
 * K/V conversion is shared by twice the rows (5-15% less CPU time at 32 x 64 and 1 x 2000 here). */
#define PREFILL_QT 32
#define PREFILL_KB 32

/* The block's keys as floats: kT transposed ([D][KB], the score kernel's vector operand), columns
 * past nk zero; vf row-major ([nk][D]). */
#define DEFINE_PREFILL_LOAD_KV(T)                                                                   \
static inline __attribute__((always_inline)) void prefill_load_kv_##T(int64_t KVH, int64_t D, const T##_t *k_cache, const T##_t *v_cache, \
                                const int32_t *table, int64_t block_size, int64_t kvh, int64_t k0,  \
                                int64_t nk, float *kT, float *vf) {                                 \
    const int64_t W = KVH * D;                                                                      \
    for (int64_t j = 0; j < nk; j++) {                                                              \
        const int64_t key = k0 + j;                                                                 \
        const int64_t slot = (int64_t)table[key / block_size] * block_size + key % block_size;     \
        const T##_t *kr = k_cache + slot * W + kvh * D, *vr = v_cache + slot * W + kvh * D;        \
        for (int64_t d = 0; d < D; d++) kT[d * PREFILL_KB + j] = PREFILL_LOAD_##T(kr[d]);          \
        for (int64_t d = 0; d < D; d++) vf[j * D + d] = PREFILL_LOAD_##T(vr[d]);                   \
    }                                                                                               \
    for (int64_t d = 0; d < D; d++)                                                                 \
        for (int64_t j = nk; j < PREFILL_KB; j++) kT[d * PREFILL_KB + j] = 0.f;                    \
}
DEFINE_PREFILL_LOAD_KV(f32)
DEFINE_PREFILL_LOAD_KV(bf16)

#if defined(__AVX512BF16__)
/* bfloat16 caches on CPUs with AVX512_BF16: keys and values stay bf16, in the dot-product
 * instruction's pairs. Keys transposed by pairs of dimensions (kT2[D/2][KB], 32-bit pairs), columns
 * past nk zero; values by pairs of keys (vT2[KB/2][D]: key 2i in the low half, 2i + 1 in the high
 * half, a missing last key zero). */
static inline __attribute__((always_inline)) void
prefill_load_kv_bf16_pairs(int64_t KVH, int64_t D, const bf16_t *k_cache, const bf16_t *v_cache,
                           const int32_t *table, int64_t block_size, int64_t kvh, int64_t k0, int64_t nk,
                           uint32_t *kT2, uint32_t *vT2) {
    const int64_t W = KVH * D, D2 = D / 2;
    const bf16_t *vprev = NULL;
    for (int64_t j = 0; j < nk; j++) {
        const int64_t key = k0 + j;
        const int64_t slot = (int64_t)table[key / block_size] * block_size + key % block_size;
        const bf16_t *kr = k_cache + slot * W + kvh * D, *vr = v_cache + slot * W + kvh * D;
        for (int64_t d = 0; d < D2; d++) {
            uint32_t pair;
            memcpy(&pair, kr + 2 * d, sizeof pair);
            kT2[d * PREFILL_KB + j] = pair;
        }
        if (j & 1) {
            uint32_t *row = vT2 + (j / 2) * D;
            for (int64_t d = 0; d < D; d++) row[d] = (uint32_t)vprev[d] | ((uint32_t)vr[d] << 16);
        }
        vprev = vr;
    }
    if (nk & 1) {
        uint32_t *row = vT2 + (nk / 2) * D;
        for (int64_t d = 0; d < D; d++) row[d] = (uint32_t)vprev[d];
    }
    for (int64_t d = 0; d < D2; d++)
        for (int64_t j = nk; j < PREFILL_KB; j++) kT2[d * PREFILL_KB + j] = 0;
}

/* acc[r] += sum_j p[r][j] v[j] with the probabilities rounded to bf16 (as SDPA does in bf16) and
 * taken by pairs of keys: half the instructions of prefill_pv. Each score row's first 16 floats
 * are overwritten by its 16 pairs. */
static inline __attribute__((always_inline)) void prefill_pv_bf16_pairs(int64_t rows, int64_t D, float *p, int64_t nk,
                                                                        const uint32_t *vT2, float *acc) {
    const int64_t np = (nk + 1) / 2;
    for (int64_t r = 0; r < rows; r++) {
        float *pr = p + r * PREFILL_KB;
        const __m512bh packed = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(pr + 16), _mm512_loadu_ps(pr));
        _mm512_storeu_si512(pr, (__m512i)packed);
    }
    const uint32_t *p2 = (const uint32_t *)p;
    int64_t r = 0;
    if (__builtin_constant_p(D) && D % 16 == 0 && D <= 128) {  /* the unrolled head sizes */
        const int64_t NV = D / 16, RB = 16 / NV;
        for (; r + RB <= rows; r += RB) {
            __m512 a[16];
            _Pragma("GCC unroll 16") for (int64_t i = 0; i < RB * NV; i++)
                a[i] = _mm512_loadu_ps(acc + (r + i / NV) * D + 16 * (i % NV));
            for (int64_t j = 0; j < np; j++) {
                __m512i vv[8];
                _Pragma("GCC unroll 8") for (int64_t v = 0; v < NV; v++) {
                    vv[v] = _mm512_loadu_si512(vT2 + j * D + 16 * v);
                    __asm__("" : "+v"(vv[v]));  /* one load per V vector, not one per row */
                }
                _Pragma("GCC unroll 16") for (int64_t i = 0; i < RB * NV; i++)
                    a[i] = _mm512_dpbf16_ps(a[i], (__m512bh)_mm512_set1_epi32((int)p2[(r + i / NV) * PREFILL_KB + j]),
                                            (__m512bh)vv[i % NV]);
            }
            _Pragma("GCC unroll 16") for (int64_t i = 0; i < RB * NV; i++)
                _mm512_storeu_ps(acc + (r + i / NV) * D + 16 * (i % NV), a[i]);
        }
    }
    for (; r < rows; r++) {
        float *ar = acc + r * D;
        for (int64_t j = 0; j < np; j++) {
            const uint32_t pp = p2[r * PREFILL_KB + j];
            const float p0 = bf16_to_f32((bf16_t)(pp & 0xffff)), p1 = bf16_to_f32((bf16_t)(pp >> 16));
            const uint32_t *vr = vT2 + j * D;
            for (int64_t d = 0; d < D; d++)
                ar[d] += p0 * bf16_to_f32((bf16_t)(vr[d] & 0xffff)) + p1 * bf16_to_f32((bf16_t)(vr[d] >> 16));
        }
    }
}

/* s[r][0..KB) = q[r] . k[j] in bf16 pairs (products exact, sums in float32): half the
 * instructions of the float kernel below. */
static inline __attribute__((always_inline)) void prefill_qk_bf16_pairs(int64_t rows, int64_t D, const uint32_t *q2,
                                                                        const uint32_t *kT2, float *s) {
    const int64_t D2 = D / 2;
    int64_t r = 0;
    for (; r + 8 <= rows; r += 8) {
        __m512 c[8][2];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) c[i][0] = c[i][1] = _mm512_setzero_ps();
        for (int64_t d = 0; d < D2; d++) {
            __m512i k0 = _mm512_loadu_si512(kT2 + d * PREFILL_KB), k1 = _mm512_loadu_si512(kT2 + d * PREFILL_KB + 16);
            __asm__("" : "+v"(k0), "+v"(k1));
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
                const __m512bh b = (__m512bh)_mm512_set1_epi32((int)q2[(r + i) * D2 + d]);
                c[i][0] = _mm512_dpbf16_ps(c[i][0], b, (__m512bh)k0);
                c[i][1] = _mm512_dpbf16_ps(c[i][1], b, (__m512bh)k1);
            }
        }
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
            _mm512_storeu_ps(s + (r + i) * PREFILL_KB, c[i][0]);
            _mm512_storeu_ps(s + (r + i) * PREFILL_KB + 16, c[i][1]);
        }
    }
    for (; r < rows; r++) {
        __m512 c0 = _mm512_setzero_ps(), c1 = _mm512_setzero_ps();
        for (int64_t d = 0; d < D2; d++) {
            const __m512bh b = (__m512bh)_mm512_set1_epi32((int)q2[r * D2 + d]);
            c0 = _mm512_dpbf16_ps(c0, b, (__m512bh)_mm512_loadu_si512(kT2 + d * PREFILL_KB));
            c1 = _mm512_dpbf16_ps(c1, b, (__m512bh)_mm512_loadu_si512(kT2 + d * PREFILL_KB + 16));
        }
        _mm512_storeu_ps(s + r * PREFILL_KB, c0);
        _mm512_storeu_ps(s + r * PREFILL_KB + 16, c1);
    }
}
#define PREFILL_BF16_PAIRS 1
#else
#define PREFILL_BF16_PAIRS 0
#endif

/* s[r][0..KB) = q[r] . k[j] for `rows` query rows. AVX-512: eight rows x two key vectors in 16
 * accumulators, each key column loaded once per eight rows. */
static inline __attribute__((always_inline)) void prefill_qk(int64_t rows, int64_t D, const float *qf,
                                                             const float *kT, float *s) {
    int64_t r = 0;
#if defined(__AVX512F__)
    for (; r + 8 <= rows; r += 8) {
        __m512 c[8][2];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) c[i][0] = c[i][1] = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d++) {
            __m512 k0 = _mm512_loadu_ps(kT + d * PREFILL_KB), k1 = _mm512_loadu_ps(kT + d * PREFILL_KB + 16);
            __asm__("" : "+v"(k0), "+v"(k1));
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
                const __m512 b = _mm512_set1_ps(qf[(r + i) * D + d]);
                c[i][0] = _mm512_fmadd_ps(b, k0, c[i][0]);
                c[i][1] = _mm512_fmadd_ps(b, k1, c[i][1]);
            }
        }
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
            _mm512_storeu_ps(s + (r + i) * PREFILL_KB, c[i][0]);
            _mm512_storeu_ps(s + (r + i) * PREFILL_KB + 16, c[i][1]);
        }
    }
#endif
    for (; r < rows; r++) {
        float acc[PREFILL_KB] = {0.f};
        for (int64_t d = 0; d < D; d++) {
            const float qd = qf[r * D + d];
            for (int j = 0; j < PREFILL_KB; j++) acc[j] += qd * kT[d * PREFILL_KB + j];
        }
        memcpy(s + r * PREFILL_KB, acc, sizeof acc);
    }
}

/* acc[r] += sum_j p[r][j] v[j] over the block's nk keys. AVX-512 with D a multiple of 16 (at most
 * 128, a compile-time constant): a block of RB = 16 / (D / 16) rows keeps its accumulators in 16 registers while the keys
 * stream by, each V row loaded once per block of rows; the rows past the last full block take the
 * plain loop. */
static inline __attribute__((always_inline)) void prefill_pv(int64_t rows, int64_t D, const float *p, int64_t nk,
                                                             const float *vf, float *acc) {
    int64_t r = 0;
#if defined(__AVX512F__)
    if (__builtin_constant_p(D) && D % 16 == 0 && D <= 128) {  /* the unrolled head sizes */
        const int64_t NV = D / 16, RB = 16 / NV;
        for (; r + RB <= rows; r += RB) {
            __m512 a[16];
            _Pragma("GCC unroll 16") for (int64_t i = 0; i < RB * NV; i++)
                a[i] = _mm512_loadu_ps(acc + (r + i / NV) * D + 16 * (i % NV));
            for (int64_t j = 0; j < nk; j++) {
                __m512 vv[8];
                _Pragma("GCC unroll 8") for (int64_t v = 0; v < NV; v++) {
                    vv[v] = _mm512_loadu_ps(vf + j * D + 16 * v);
                    __asm__("" : "+v"(vv[v]));  /* one load per V vector, not one per row (load ports) */
                }
                _Pragma("GCC unroll 16") for (int64_t i = 0; i < RB * NV; i++)
                    a[i] = _mm512_fmadd_ps(_mm512_set1_ps(p[(r + i / NV) * PREFILL_KB + j]), vv[i % NV], a[i]);
            }
            _Pragma("GCC unroll 16") for (int64_t i = 0; i < RB * NV; i++)
                _mm512_storeu_ps(acc + (r + i / NV) * D + 16 * (i % NV), a[i]);
        }
    }
#endif
    for (; r < rows; r++) {
        float *ar = acc + r * D;
        for (int64_t j = 0; j < nk; j++) {
            const float pj = p[r * PREFILL_KB + j];
            const float *vr = vf + j * D;
            for (int64_t d = 0; d < D; d++) ar[d] += pj * vr[d];
        }
    }
}

static inline float prefill_row_max(const float *x) {
#if defined(__AVX512F__)
    return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(x + 16)));
#else
    float m = -INFINITY;
    for (int j = 0; j < PREFILL_KB; j++) m = x[j] > m ? x[j] : m;
    return m;
#endif
}

/* One key block's scores turned into probabilities in place, with the online softmax's running
 * max m, sum l and the accumulators rescaled. Row r is query r / G (at position pos0 + r / G) of
 * query head h0 + r % G. Masks only where the block needs it (the diagonal, the window's edge, a
 * short last block). */
static inline __attribute__((always_inline)) void
prefill_softmax_block(int64_t rows, int64_t G, int64_t D, int64_t h0, int64_t pos0, int64_t k0, int64_t nk,
                      int64_t window, int masked, float scale, const float *alibi_slopes, float *s, float *m,
                      float *l, float *acc) {
    for (int64_t r = 0; r < rows; r++) {
        float *sr = s + r * PREFILL_KB;
        const int64_t pos = pos0 + r / G;
        if (alibi_slopes) {
            const float slope = alibi_slopes[h0 + r % G];
            for (int j = 0; j < PREFILL_KB; j++) sr[j] = sr[j] * scale + slope * (float)(k0 + j - pos);
        } else {
            for (int j = 0; j < PREFILL_KB; j++) sr[j] *= scale;
        }
        if (masked) {
            for (int j = 0; j < PREFILL_KB; j++) {
                const int64_t key = k0 + j;
                const int valid = j < nk && key <= pos && (window <= 0 || key > pos - window);
                sr[j] = valid ? sr[j] : -INFINITY;
            }
        }
        const float mx = prefill_row_max(sr), m_old = m[r], m_new = mx > m_old ? mx : m_old;
        if (m_new == -INFINITY) {  /* no key of this row yet (the window starts later) */
            for (int j = 0; j < PREFILL_KB; j++) sr[j] = 0.f;
            continue;
        }
        float total = 0.f;
        for (int j = 0; j < PREFILL_KB; j++) {
            sr[j] = expf(sr[j] - m_new);
            total += sr[j];
        }
        if (m_new != m_old && m_old != -INFINITY) {  /* (on a row's first keys acc and l are 0) */
            const float alpha = expf(m_old - m_new);
            float *ar = acc + r * D;
            for (int64_t d = 0; d < D; d++) ar[d] *= alpha;
            l[r] *= alpha;
        }
        l[r] += total;
        m[r] = m_new;
    }
}

/* One work item: `rows` = the tile's queries x the query heads of KV head kvh, their queries in qbuf
 * (float [rows][D], or bf16 pairs [rows][D/2] in mode PREFILL_MODE_BF16_PAIRS). */
enum { PREFILL_MODE_F32, PREFILL_MODE_BF16, PREFILL_MODE_BF16_PAIRS };

static inline __attribute__((always_inline)) void
prefill_tile(int mode, int64_t rows, int64_t G, int64_t KVH, int64_t D, int64_t kvh, int64_t pos0, int64_t key_lo,
             int64_t key_hi, int64_t window, float scale, const float *alibi_slopes, const void *qbuf, float *s,
             float *kT, float *vf, float *m, float *l, float *acc, const void *k_cache, const void *v_cache,
             const int32_t *table, int64_t block_size) {
    const int64_t qt = rows / G, pos_max = pos0 + qt - 1;
    for (int64_t r = 0; r < rows; r++) { m[r] = -INFINITY; l[r] = 0.f; }
    memset(acc, 0, sizeof(float) * (size_t)(rows * D));
    for (int64_t k0 = key_lo; k0 < key_hi; k0 += PREFILL_KB) {
        const int64_t nk = key_hi - k0 < PREFILL_KB ? key_hi - k0 : PREFILL_KB;
#if PREFILL_BF16_PAIRS
        if (mode == PREFILL_MODE_BF16_PAIRS) {
            prefill_load_kv_bf16_pairs(KVH, D, k_cache, v_cache, table, block_size, kvh, k0, nk, (uint32_t *)kT,
                                       (uint32_t *)vf);
            prefill_qk_bf16_pairs(rows, D, qbuf, (const uint32_t *)kT, s);
        } else
#endif
        {
            if (mode == PREFILL_MODE_BF16)
                prefill_load_kv_bf16(KVH, D, k_cache, v_cache, table, block_size, kvh, k0, nk, kT, vf);
            else
                prefill_load_kv_f32(KVH, D, k_cache, v_cache, table, block_size, kvh, k0, nk, kT, vf);
            prefill_qk(rows, D, qbuf, kT, s);
        }
        const int masked = nk < PREFILL_KB || k0 + PREFILL_KB - 1 > pos0 || (window > 0 && k0 <= pos_max - window);
        prefill_softmax_block(rows, G, D, kvh * G, pos0, k0, nk, window, masked, scale, alibi_slopes, s, m, l, acc);
#if PREFILL_BF16_PAIRS
        if (mode == PREFILL_MODE_BF16_PAIRS) {
            prefill_pv_bf16_pairs(rows, D, s, nk, (const uint32_t *)vf, acc);
            continue;
        }
#endif
        prefill_pv(rows, D, s, nk, vf, acc);
    }
}

/* The common head sizes as compile-time constants: the kernels' loops over D unroll. */
#define DEFINE_PREFILL_TILE(NAME, MODE)                                                             \
static void NAME(int64_t rows, int64_t G, int64_t KVH, int64_t D, int64_t kvh, int64_t pos0, int64_t key_lo, \
                 int64_t key_hi, int64_t window, float scale, const float *alibi_slopes, const void *qbuf, \
                 float *s, float *kT, float *vf, float *m, float *l, float *acc, const void *k_cache,    \
                 const void *v_cache, const int32_t *table, int64_t block_size) {                      \
    if (D == 64)                                                                                    \
        prefill_tile(MODE, rows, G, KVH, 64, kvh, pos0, key_lo, key_hi, window, scale, alibi_slopes, qbuf, s, kT, \
                     vf, m, l, acc, k_cache, v_cache, table, block_size);                           \
    else if (D == 128)                                                                              \
        prefill_tile(MODE, rows, G, KVH, 128, kvh, pos0, key_lo, key_hi, window, scale, alibi_slopes, qbuf, s, kT, \
                     vf, m, l, acc, k_cache, v_cache, table, block_size);                           \
    else                                                                                            \
        prefill_tile(MODE, rows, G, KVH, D, kvh, pos0, key_lo, key_hi, window, scale, alibi_slopes, qbuf, s, kT, \
                     vf, m, l, acc, k_cache, v_cache, table, block_size);                           \
}
DEFINE_PREFILL_TILE(prefill_tile_f32, PREFILL_MODE_F32)
DEFINE_PREFILL_TILE(prefill_tile_bf16, PREFILL_MODE_BF16)
#if PREFILL_BF16_PAIRS
DEFINE_PREFILL_TILE(prefill_tile_bf16_pairs, PREFILL_MODE_BF16_PAIRS)
#endif

/* A tile's queries into the work item's buffer (unscaled: the scores are scaled), and its output
 * rows out of the accumulators. */
static inline int prefill_use_pairs_f32(int64_t D) { (void)D; return 0; }
static inline int prefill_use_pairs_bf16(int64_t D) { return PREFILL_BF16_PAIRS && D % 2 == 0 && D <= 256; }

static inline void prefill_tile_dispatch_f32(int pairs, int64_t rows, int64_t G, int64_t KVH, int64_t D, int64_t kvh,
                                             int64_t pos0, int64_t key_lo, int64_t key_hi, int64_t window,
                                             float scale, const float *alibi_slopes, const void *qbuf, float *s,
                                             float *kT, float *vf, float *m, float *l, float *acc,
                                             const void *k_cache, const void *v_cache, const int32_t *table,
                                             int64_t block_size) {
    (void)pairs;
    prefill_tile_f32(rows, G, KVH, D, kvh, pos0, key_lo, key_hi, window, scale, alibi_slopes, qbuf, s, kT, vf, m, l,
                     acc, k_cache, v_cache, table, block_size);
}

static inline void prefill_tile_dispatch_bf16(int pairs, int64_t rows, int64_t G, int64_t KVH, int64_t D, int64_t kvh,
                                              int64_t pos0, int64_t key_lo, int64_t key_hi, int64_t window,
                                              float scale, const float *alibi_slopes, const void *qbuf, float *s,
                                              float *kT, float *vf, float *m, float *l, float *acc,
                                              const void *k_cache, const void *v_cache, const int32_t *table,
                                              int64_t block_size) {
#if PREFILL_BF16_PAIRS
    if (pairs) {
        prefill_tile_bf16_pairs(rows, G, KVH, D, kvh, pos0, key_lo, key_hi, window, scale, alibi_slopes, qbuf, s, kT,
                                vf, m, l, acc, k_cache, v_cache, table, block_size);
        return;
    }
#endif
    (void)pairs;
    prefill_tile_bf16(rows, G, KVH, D, kvh, pos0, key_lo, key_hi, window, scale, alibi_slopes, qbuf, s, kT, vf, m, l,
                      acc, k_cache, v_cache, table, block_size);
}

static inline void prefill_store_row_f32(int64_t n, const float *x, float inv, f32_t *o) {
    for (int64_t d = 0; d < n; d++) o[d] = x[d] * inv;
}

static inline void prefill_store_row_bf16(int64_t n, const float *x, float inv, bf16_t *o) {
    int64_t d = 0;
#if defined(__AVX512BF16__)
    /* round to nearest even, as f32_to_bf16 (and torch) */
    const __m512 scale = _mm512_set1_ps(inv);
    for (; d + 16 <= n; d += 16)
        _mm256_storeu_si256((__m256i *)(o + d),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(x + d), scale)));
#endif
    for (; d < n; d++) o[d] = f32_to_bf16(x[d] * inv);
}

#define DEFINE_PREFILL_ATTENTION(T)                                                                 \
void prefill_attention_##T(int64_t S, int64_t H, int64_t KVH, int64_t D, const T##_t *q,           \
                           int64_t q_stride, const int32_t *cu_seqlens_q, const T##_t *k_cache,    \
                           const T##_t *v_cache, const int32_t *block_tables, int64_t bt_stride,   \
                           const int32_t *context_lens, int64_t block_size, float scale,           \
                           const float *alibi_slopes, int64_t window, T##_t *out, int64_t out_stride) { \
    const int64_t G = H / KVH, max_rows = PREFILL_QT * G;                                           \
    /* tile_start[s]: sequence s's first query tile; an item is (tile, KV head) */                 \
    int64_t *tile_start = malloc(sizeof(int64_t) * (size_t)(S + 1));                               \
    tile_start[0] = 0;                                                                              \
    for (int64_t s = 0; s < S; s++) {                                                               \
        const int64_t n = cu_seqlens_q[s + 1] - cu_seqlens_q[s];                                    \
        tile_start[s + 1] = tile_start[s] + (n + PREFILL_QT - 1) / PREFILL_QT;                      \
    }                                                                                               \
    const int64_t items = tile_start[S] * KVH;                                                      \
    const int pairs = prefill_use_pairs_##T(D);                                                     \
    _Pragma("omp parallel if(items > 1)")                                                           \
    {                                                                                               \
        float *qf = malloc(sizeof(float) * (size_t)(2 * max_rows * D + max_rows * PREFILL_KB       \
                                                    + 2 * PREFILL_KB * D + 2 * max_rows));         \
        float *acc = qf + max_rows * D, *s_buf = acc + max_rows * D, *kT = s_buf + max_rows * PREFILL_KB; \
        float *vf = kT + PREFILL_KB * D, *m = vf + PREFILL_KB * D, *l = m + max_rows;               \
        /* the last items first: a sequence's last tiles see the most keys */                      \
        _Pragma("omp for schedule(dynamic, 1)")                                                     \
        for (int64_t item = 0; item < items; item++) {                                              \
            const int64_t it = items - 1 - item, tile = it / KVH, kvh = it % KVH;                   \
            int64_t lo = 0, hi = S;  /* the sequence whose tiles hold `tile` */                    \
            while (hi - lo > 1) {                                                                   \
                const int64_t mid = (lo + hi) / 2;                                                  \
                if (tile_start[mid] <= tile) lo = mid; else hi = mid;                               \
            }                                                                                       \
            const int64_t s = lo, n = cu_seqlens_q[s + 1] - cu_seqlens_q[s], L = context_lens[s];   \
            const int64_t qi0 = (tile - tile_start[s]) * PREFILL_QT;                                \
            const int64_t qt = n - qi0 < PREFILL_QT ? n - qi0 : PREFILL_QT, rows = qt * G;          \
            const int64_t pos0 = L - n + qi0, row0 = cu_seqlens_q[s] + qi0;                         \
            for (int64_t i = 0; i < qt; i++) {                                                      \
                const T##_t *qr = q + (row0 + i) * q_stride + kvh * G * D;                          \
                if (pairs) memcpy((T##_t *)qf + i * G * D, qr, sizeof(T##_t) * (size_t)(G * D));    \
                else for (int64_t e = 0; e < G * D; e++) qf[i * G * D + e] = PREFILL_LOAD_##T(qr[e]); \
            }                                                                                       \
            const int64_t key_hi = pos0 + qt;                                                       \
            const int64_t key_lo = window > 0 && pos0 - window + 1 > 0 ? pos0 - window + 1 : 0;     \
            prefill_tile_dispatch_##T(pairs, rows, G, KVH, D, kvh, pos0, key_lo, key_hi, window,    \
                                      scale, alibi_slopes, qf, s_buf, kT, vf, m, l, acc, k_cache,   \
                                      v_cache, block_tables + s * bt_stride, block_size);           \
            for (int64_t i = 0; i < qt; i++) {                                                      \
                T##_t *orow = out + (row0 + i) * out_stride + kvh * G * D;                          \
                for (int64_t g = 0; g < G; g++)                                                     \
                    prefill_store_row_##T(D, acc + (i * G + g) * D, 1.f / l[i * G + g], orow + g * D); \
            }                                                                                       \
        }                                                                                           \
        free(qf);                                                                                   \
    }                                                                                               \
    free(tile_start);                                                                               \
}

DEFINE_PREFILL_ATTENTION(f32)
DEFINE_PREFILL_ATTENTION(bf16)
