/* The many-row side of the GGUF matmuls (quant_ops.c, quant_kquants.c): y[m, n] = x[m, k] @ W^T for
 * quantized W, as a BLIS-style dequantize-a-panel, then a register-blocked float GEMM.
 *
 * Each thread takes a panel of `nc` weight rows at a time, dequantizes it whole (nc x k floats, sized
 * to stay in L2) with the type's row function, then runs every row of x against it in QG_MR x QG_NR
 * register tiles (x rows x weight rows, dot-product form: the vectors run along k, one accumulator
 * per pair, reduced once at the end). So each weight byte is expanded once per call, whatever m is,
 * and the FMA loop reads floats from L1/L2 only. Panels are handed out dynamically (a thread that
 * loses its core to another process delays only its own panels).
 *
 * Written with GCC/Clang vector extensions: one source for the AVX-512 (16-lane), AVX2 (8-lane) and
 * baseline x86-64 builds. Symbols prefixed qgemm_ (one shared library with the other kernels).
 */
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define QG_VBYTES 64
#define QG_MR 6 /* 24 accumulators + 6 + 1 operands of 32 zmm registers */
#elif defined(__AVX2__)
#define QG_VBYTES 32
#define QG_MR 2 /* 8 accumulators + 6 operands of 16 ymm registers */
#else
#define QG_VBYTES 16 /* SSE2, the x86-64 baseline (and the width any other target can split) */
#define QG_MR 2
#endif
#define QG_NR 4
#define QG_VLEN (QG_VBYTES / 4)
#define QG_PANEL_FLOATS (64 * 1024) /* 256 KiB of dequantized weights per thread: in L2 with x's tile */
#define QG_MAX_PANEL_ROWS 64

typedef float qg_vf __attribute__((vector_size(QG_VBYTES)));
typedef float qg_vfu __attribute__((vector_size(QG_VBYTES), aligned(4))); /* for unaligned loads */

/* Dequantize the first k weights of one row of blocks into out[k]. */
typedef void (*qgemm_dequant_row_fn)(const uint8_t *row, float *out, int64_t k);

static inline qg_vf qg_load(const float *p) { return *(const qg_vfu *)p; }

static inline float qg_hsum(qg_vf v) {
    float s = 0.f;
    for (int i = 0; i < QG_VLEN; i++) s += v[i];
    return s;
}

#if defined(__AVX512F__)
/* The sums of four vectors as four floats: one unpack-and-add tree instead of four reductions. */
static inline __m128 qg_hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                      _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
#endif

/* y[i * ldy + r] = x_i . w_r for MR rows of x (stride k) and NR rows of the panel (stride k); k is a
 * multiple of QG_VLEN (every GGUF block is 32 weights or more). MR and NR are constants at each call
 * site (always_inline), so the tile is unrolled and kept in registers. */
static inline __attribute__((always_inline)) void qg_tile(const float *x, const float *wp, int64_t k, float *y,
                                                          int64_t ldy, const int MR, const int NR) {
    qg_vf acc[QG_MR][QG_NR];
    for (int i = 0; i < MR; i++)
        for (int r = 0; r < NR; r++) acc[i][r] = (qg_vf){0};
    for (int64_t c = 0; c < k; c += QG_VLEN) {
        qg_vf xv[QG_MR], wv[QG_NR];
        for (int i = 0; i < MR; i++) xv[i] = qg_load(x + i * k + c);
        for (int r = 0; r < NR; r++) wv[r] = qg_load(wp + r * k + c);
        for (int i = 0; i < MR; i++)
            for (int r = 0; r < NR; r++) acc[i][r] += xv[i] * wv[r];
    }
#if defined(__AVX512F__)
    if (NR == 4) {
        for (int i = 0; i < MR; i++)
            _mm_storeu_ps(y + i * ldy, qg_hsum4((__m512)acc[i][0], (__m512)acc[i][1], (__m512)acc[i][2], (__m512)acc[i][3]));
        return;
    }
#endif
    for (int i = 0; i < MR; i++)
        for (int r = 0; r < NR; r++) y[i * ldy + r] = qg_hsum(acc[i][r]);
}

/* An edge tile (mr < QG_MR or nr < QG_NR): dispatched to constant shapes so it stays in registers too. */
static void qg_edge(const float *x, const float *wp, int64_t k, float *y, int64_t ldy, int mr, int nr) {
    for (int i = 0; i < mr; i++) {
        const float *xi = x + i * k;
        float *yi = y + i * ldy;
        switch (nr) {
            case 4: qg_tile(xi, wp, k, yi, ldy, 1, 4); break;
            case 3: qg_tile(xi, wp, k, yi, ldy, 1, 3); break;
            case 2: qg_tile(xi, wp, k, yi, ldy, 1, 2); break;
            default: qg_tile(xi, wp, k, yi, ldy, 1, 1); break;
        }
    }
}

/* Per-thread panel buffer, kept between calls (libgomp's threads persist): no allocation per call. */
static _Thread_local float *qg_buffer;
static _Thread_local size_t qg_capacity;

static float *qg_panel(size_t floats) {
    if (floats > qg_capacity) {
        free(qg_buffer);
        qg_buffer = (float *)aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
        qg_capacity = qg_buffer ? floats : 0;
    }
    return qg_buffer;
}

/* y[m, n] = x[m, k] @ dequant(w)^T, w: n rows of row_bytes bytes; returns 0, or -1 when a panel
 * buffer could not be allocated (the caller then runs its own path). */
int qgemm_dequant_gemm(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y,
                       int64_t row_bytes, qgemm_dequant_row_fn dequant_row) {
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    /* panel rows: as many as fit QG_PANEL_FLOATS, a multiple of QG_NR, and at least 4 panels per
     * thread when n allows (small n, e.g. a 192-row k/v projection, still keeps both cores busy) */
    int64_t nc = QG_PANEL_FLOATS / k;
    const int64_t share = (n + 4 * threads - 1) / (4 * threads);
    if (nc > share) nc = share;
    if (nc > QG_MAX_PANEL_ROWS) nc = QG_MAX_PANEL_ROWS;
    nc = (nc + QG_NR - 1) / QG_NR * QG_NR;
    if (nc < QG_NR) nc = QG_NR;
    const int64_t panels = (n + nc - 1) / nc;
    int failed = 0;
#pragma omp parallel if (panels > 1) reduction(| : failed)
    {
        float *wp = qg_panel((size_t)(nc * k));
        if (!wp) failed = 1;
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < panels; p++) {
            if (!wp) continue;
            const int64_t j0 = p * nc, rows = n - j0 < nc ? n - j0 : nc;
            for (int64_t r = 0; r < rows; r++) dequant_row(w + (j0 + r) * row_bytes, wp + r * k, k);
            for (int64_t i0 = 0; i0 < m; i0 += QG_MR) {
                const int mr = m - i0 < QG_MR ? (int)(m - i0) : QG_MR;
                const float *xt = x + i0 * k;
                float *yt = y + i0 * n + j0;
                for (int64_t r0 = 0; r0 < rows; r0 += QG_NR) {
                    const int nr = rows - r0 < QG_NR ? (int)(rows - r0) : QG_NR;
                    if (mr == QG_MR && nr == QG_NR)
                        qg_tile(xt, wp + r0 * k, k, yt + r0, n, QG_MR, QG_NR);
                    else
                        qg_edge(xt, wp + r0 * k, k, yt + r0, n, mr, nr);
                }
            }
        }
    }
    return failed ? -1 : 0;
}
