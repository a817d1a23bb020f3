/* Float matmuls on a weight layout of our own (float32 and bfloat16 weights; CpuLinear's "fgemm" kind),
 * with the ABI every layout-owning kernel here shares (kernel_parts.py):
 *
 *   fgemm_matmul_f32(x, m, k, w, n, y), fgemm_matmul_bf16(x, m, k, w, n, y):
 *       y[m, n] = x[m, k] @ W[n, k]^T; x and y float32, contiguous; y overwritten.
 *
 * The layout (packed once at load, by cpu_linear.py): W's n rows are cut into panels of FG_NR = 32
 * outputs (the last zero-padded); a panel is k "steps" of 128 bytes, step p holding the 32 outputs'
 * weights for input p side by side:
 *   float32:  panel[p][j] = W[32 * panel + j][p]                            (k steps)
 *   bfloat16: panel[p][j] = (W[.][2p], W[.][2p + 1]) as one 32-bit pair     (ceil(k / 2) steps; k padded
 *             with a zero) -- the operand layout of AVX512_BF16's vdpbf16ps, which multiplies a pair of
 *             x by a pair of weights and adds both products to a float32 lane.
 * So a step is two 512-bit loads for 32 outputs, and a panel is one sequential stream of memory.
 *
 * The bf16 kernel rounds x to bfloat16 (nearest even, as torch's .to(torch.bfloat16)) and accumulates in
 * float32, as torch's bf16 linear does (its output rounding to bf16 is the caller's).
 * fgemm_matmul_bf16_io(x, m, k, w, n, y) is the same with x and y bfloat16 (y rounded once), for a bf16
 * model's torch path; it is not of the shared ABI.
 *
 * One driver for both types and every m: a register-blocked micro-kernel of FG_MR rows x 32 outputs
 * (AVX-512: 8 x 2 zmm accumulators, the weight step loaded once and used by every row; AVX2: 2 x 4 ymm)
 * runs over a cache block of FG_KC steps of one panel (32 KB: it stays in L1 while the tiles of up to
 * FG_MC rows of x reuse it), x read in place. m <= 8 (decode): one pass over each panel with all rows at
 * once, the whole k; each thread takes a contiguous run of panels (n = 192 on 2 threads: 3 + 3) and streams
 * up to 4 of them at once (fg_stream: one panel from each quarter of its run, so each stream stays
 * sequential), prefetched 4 KB ahead into L1 and 16 KB ahead into L2. One sequential stream per core reads
 * only ~15 GB/s here (a plain 4-accumulator read loop too); four streams with the L2 prefetch ~20-23 GB/s
 * per core, 27-35 at two threads (benchmarks/RESULTS.md). Larger m: the work items are (row block, panel) pairs, row-block major, so the block of x
 * rows stays in L2 while its panels pass. Items are handed out dynamically: on this shared machine a
 * descheduled thread then delays only the item it holds, where a static split waits for its whole half.
 * Threads: torch's OpenMP runtime (libgomp, as cpu_ops.c).
 *
 * Built where AVX-512F or AVX2+FMA is (the rest of the time this file defines nothing and CpuLinear does
 * not offer the kind). bfloat16 uses vdpbf16ps where AVX512_BF16 is compiled in; elsewhere the pairs are
 * widened to float32 in registers (a shift and a mask) and multiplied with FMAs: the same products (a
 * product of two bf16 is exact in float32), summed in another order.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>

#define FG_NR 32      /* outputs per panel */
#define FG_STEP 128   /* bytes per step of a panel: 32 x 4 */
#ifndef FG_KC
#define FG_KC 256     /* steps per cache block: 32 KB of a panel */
#endif
#ifndef FG_PF
#define FG_PF 32      /* steps ahead the m <= 8 pass prefetches (4 KB; 8-64 measured alike) */
#endif
#define FG_SMALL_M 8  /* up to this many rows: one pass over each panel */
#ifndef FG_PF_L2
#define FG_PF_L2 128  /* steps ahead (16 KB) of a second, _MM_HINT_T1 prefetch in the m <= 8 pass (0: none) */
#endif
#ifndef FG_GMAX
#define FG_GMAX 4     /* panels one thread streams at once in the m <= 8 pass (registers permitting) */
#endif
#ifndef FG_SPREAD
#define FG_SPREAD 1   /* the m <= 8 pass's G panels: from G parts of a thread's run (1) or adjacent (0) */
#endif
#ifndef FG_TILE_RUNS
#define FG_TILE_RUNS 1 /* contiguous runs of panels per thread in the m > 8 pass with one block of rows */
#endif
#ifndef FG_TILE_PF
#define FG_TILE_PF 1   /* that pass prefetches the bytes after each cache block into L2 (0: not) */
#endif
#ifndef FG_CHUNKS
#define FG_CHUNKS 1   /* contiguous runs of panels per thread in the m <= 8 pass */
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define FG_UNROLL _Pragma("GCC unroll 16")
#elif defined(__clang__)
#define FG_UNROLL _Pragma("unroll")
#else
#define FG_UNROLL
#endif
#define FG_INLINE static inline __attribute__((always_inline))

#if defined(__AVX512F__)
#define FG_VLEN 16
#ifndef FG_MR
#define FG_MR 8 /* 8 x 2 accumulators: measured as fast as 12 x 2 here, and faster at k = 2048 */
#endif
typedef __m512 fg_vf;
typedef __m512i fg_vi;
#define fg_load(p) _mm512_loadu_ps(p)
#define fg_loadi(p) _mm512_loadu_si512((const void *)(p))
#define fg_store(p, v) _mm512_storeu_ps((p), (v))
#define fg_set1(s) _mm512_set1_ps(s)
#define fg_zero() _mm512_setzero_ps()
#define fg_fma(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define fg_bf16_lo(v) _mm512_castsi512_ps(_mm512_slli_epi32((v), 16))
#define fg_bf16_hi(v) _mm512_castsi512_ps(_mm512_and_si512((v), _mm512_set1_epi32((int)0xffff0000u)))
#else
#define FG_VLEN 8
#define FG_MR 2
typedef __m256 fg_vf;
typedef __m256i fg_vi;
#define fg_load(p) _mm256_loadu_ps(p)
#define fg_loadi(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define fg_store(p, v) _mm256_storeu_ps((p), (v))
#define fg_set1(s) _mm256_set1_ps(s)
#define fg_zero() _mm256_setzero_ps()
#define fg_fma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define fg_bf16_lo(v) _mm256_castsi256_ps(_mm256_slli_epi32((v), 16))
#define fg_bf16_hi(v) _mm256_castsi256_ps(_mm256_and_si256((v), _mm256_set1_epi32((int)0xffff0000u)))
#endif
#define FG_NV (FG_NR / FG_VLEN)
#ifndef FG_MC
#define FG_MC 192 /* rows per block of x: 192 x 256 steps x 4 bytes = 192 KB, in L2 */
#endif

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#define FG_NATIVE_BF16 1
#else
#define FG_NATIVE_BF16 0
#endif

/* What one step of x is, per type: float32 x (4 bytes); bf16 with vdpbf16ps: a pair of bf16 (4 bytes);
 * bf16 widened: the pair rounded to bf16 and kept as two floats (8 bytes). */
enum { FG_F32 = 0, FG_BF16 = 1 };
#define FG_A_STEP(type) ((type) == FG_F32 || FG_NATIVE_BF16 ? 4 : 8)

/* c[r][0..31] (+)= sum over kc steps p of x[r, p] . panel step p, for MR rows of x (row r at a + r * lda,
 * step p at + p * a_step): the m > 8 pass, over a cache block of the panel that every tile of rows reuses.
 * (Tried: x packed into tiles of interleaved rows, as BLIS does: no faster here, the rows of x stay in
 * L1/L2 anyway.) */
FG_INLINE void fg_tile(const int type, const int MR, const uint8_t *a, int64_t lda, const uint8_t *b, int64_t kc,
                       float *c, int64_t ldc, int accumulate, const uint8_t *pf, int64_t pf_step) {
    const int64_t row_stride = lda, step_stride = FG_A_STEP(type);
    fg_vf acc[FG_MR][FG_NV];
    FG_UNROLL for (int r = 0; r < MR; r++) FG_UNROLL for (int v = 0; v < FG_NV; v++) acc[r][v] =
        accumulate ? fg_load(c + r * ldc + v * FG_VLEN) : fg_zero();
    for (int64_t p = 0; p < kc; p++) {
        const uint8_t *bp = b + p * FG_STEP, *ap = a + p * step_stride;
        if (pf != NULL)
            for (int64_t o = 0; o < pf_step; o += 64) _mm_prefetch((const char *)(pf + p * pf_step + o), _MM_HINT_T1);
        if (type == FG_F32) {
            fg_vf bv[FG_NV];
            FG_UNROLL for (int v = 0; v < FG_NV; v++) bv[v] = fg_load((const float *)bp + v * FG_VLEN);
            FG_UNROLL for (int r = 0; r < MR; r++) {
                const fg_vf av = fg_set1(*(const float *)(ap + r * row_stride));
                FG_UNROLL for (int v = 0; v < FG_NV; v++) acc[r][v] = fg_fma(av, bv[v], acc[r][v]);
            }
        } else {
#if FG_NATIVE_BF16
            __m512i bv[FG_NV];
            FG_UNROLL for (int v = 0; v < FG_NV; v++) bv[v] = fg_loadi(bp + 64 * v);
            FG_UNROLL for (int r = 0; r < MR; r++) {
                int32_t pair;
                memcpy(&pair, ap + r * row_stride, 4);
                const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
                FG_UNROLL for (int v = 0; v < FG_NV; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, (__m512bh)bv[v]);
            }
#else
            FG_UNROLL for (int v = 0; v < FG_NV; v++) {
                const fg_vi pairs = fg_loadi(bp + FG_VLEN * 4 * v);
                const fg_vf lo = fg_bf16_lo(pairs), hi = fg_bf16_hi(pairs);
                FG_UNROLL for (int r = 0; r < MR; r++) {
                    const float *ar = (const float *)(ap + r * row_stride);
                    acc[r][v] = fg_fma(fg_set1(ar[1]), hi, fg_fma(fg_set1(ar[0]), lo, acc[r][v]));
                }
            }
#endif
        }
    }
    FG_UNROLL for (int r = 0; r < MR; r++) FG_UNROLL for (int v = 0; v < FG_NV; v++)
        fg_store(c + r * ldc + v * FG_VLEN, acc[r][v]);
}

/* The tile for a run-time row count (1..FG_MR), each a compile-time constant so the accumulators stay
 * in registers: one function per type. */
#define FG_TILE_CASE(R) \
    case R: fg_tile(tile_type, R, a, lda, b, kc, c, ldc, accumulate, pf, pf_step); break;
#define FG_DEFINE_TILE(NAME, TYPE)                                                                      \
    static void NAME(int mr, const uint8_t *a, int64_t lda, const uint8_t *b, int64_t kc, float *c, int64_t ldc, \
                     int accumulate, const uint8_t *pf, int64_t pf_step) {                                       \
        const int tile_type = (TYPE);                                                                            \
        switch (mr) {                                                                                            \
            FG_TILE_CASES                                                                                        \
            default: break;                                                                                      \
        }                                                                                                        \
    }
#if FG_MR == 12
#define FG_TILE_CASES FG_TILE_CASE(1) FG_TILE_CASE(2) FG_TILE_CASE(3) FG_TILE_CASE(4) FG_TILE_CASE(5) \
    FG_TILE_CASE(6) FG_TILE_CASE(7) FG_TILE_CASE(8) FG_TILE_CASE(9) FG_TILE_CASE(10) FG_TILE_CASE(11) FG_TILE_CASE(12)
#elif FG_MR == 8
#define FG_TILE_CASES FG_TILE_CASE(1) FG_TILE_CASE(2) FG_TILE_CASE(3) FG_TILE_CASE(4) FG_TILE_CASE(5) \
    FG_TILE_CASE(6) FG_TILE_CASE(7) FG_TILE_CASE(8)
#elif FG_MR == 2
#define FG_TILE_CASES FG_TILE_CASE(1) FG_TILE_CASE(2)
#else
#error "FG_MR: 12, 8 or 2"
#endif
FG_DEFINE_TILE(fg_tile_f32_block, FG_F32)
FG_DEFINE_TILE(fg_tile_bf16_block, FG_BF16)

typedef void (*fg_tile_fn)(int, const uint8_t *, int64_t, const uint8_t *, int64_t, float *, int64_t, int,
                           const uint8_t *, int64_t);

/* The m <= 8 pass: c[r][32 g + 0..31] = sum over all steps p of x[r, p] . step p of panel g, for MR rows
 * and G panels (panel g at b + g * panel_bytes, its outputs at c + g * cgap), each weight byte loaded once. The G panels
 * are G sequential streams in flight at once, each prefetched ahead, so one core keeps more misses
 * outstanding than one stream lets it; and G x NV independent accumulator chains per row. */
FG_INLINE void fg_stream(const int type, const int MR, const int G, const uint8_t *a, int64_t lda,
                         const uint8_t *b, int64_t panel_bytes, int64_t steps, float *c, int64_t ldc, int64_t cgap) {
    const int64_t step_stride = FG_A_STEP(type);
    fg_vf acc[FG_MR][8][FG_NV];
    FG_UNROLL for (int r = 0; r < MR; r++) FG_UNROLL for (int g = 0; g < G; g++) FG_UNROLL for (int v = 0; v < FG_NV;
                                                                                               v++) acc[r][g][v] =
        fg_zero();
    for (int64_t p = 0; p < steps; p++) {
        const uint8_t *ap = a + p * step_stride;
        FG_UNROLL for (int g = 0; g < G; g++) {
            const uint8_t *bp = b + g * panel_bytes + p * FG_STEP;
            _mm_prefetch((const char *)(bp + FG_PF * FG_STEP), _MM_HINT_T0);
            _mm_prefetch((const char *)(bp + FG_PF * FG_STEP + 64), _MM_HINT_T0);
            if (FG_PF_L2) {
                _mm_prefetch((const char *)(bp + FG_PF_L2 * FG_STEP), _MM_HINT_T1);
                _mm_prefetch((const char *)(bp + FG_PF_L2 * FG_STEP + 64), _MM_HINT_T1);
            }
        }
        if (type == FG_F32) {
            fg_vf bv[8][FG_NV];
            FG_UNROLL for (int g = 0; g < G; g++) FG_UNROLL for (int v = 0; v < FG_NV; v++) bv[g][v] =
                fg_load((const float *)(b + g * panel_bytes + p * FG_STEP) + v * FG_VLEN);
            FG_UNROLL for (int r = 0; r < MR; r++) {
                const fg_vf av = fg_set1(*(const float *)(ap + r * lda));
                FG_UNROLL for (int g = 0; g < G; g++) FG_UNROLL for (int v = 0; v < FG_NV; v++) acc[r][g][v] =
                    fg_fma(av, bv[g][v], acc[r][g][v]);
            }
        } else {
#if FG_NATIVE_BF16
            __m512i bv[8][FG_NV];
            FG_UNROLL for (int g = 0; g < G; g++) FG_UNROLL for (int v = 0; v < FG_NV; v++) bv[g][v] =
                fg_loadi(b + g * panel_bytes + p * FG_STEP + 64 * v);
            FG_UNROLL for (int r = 0; r < MR; r++) {
                int32_t pair;
                memcpy(&pair, ap + r * lda, 4);
                const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
                FG_UNROLL for (int g = 0; g < G; g++) FG_UNROLL for (int v = 0; v < FG_NV; v++) acc[r][g][v] =
                    _mm512_dpbf16_ps(acc[r][g][v], av, (__m512bh)bv[g][v]);
            }
#else
            FG_UNROLL for (int g = 0; g < G; g++) FG_UNROLL for (int v = 0; v < FG_NV; v++) {
                const fg_vi pairs = fg_loadi(b + g * panel_bytes + p * FG_STEP + FG_VLEN * 4 * v);
                const fg_vf lo = fg_bf16_lo(pairs), hi = fg_bf16_hi(pairs);
                FG_UNROLL for (int r = 0; r < MR; r++) {
                    const float *ar = (const float *)(ap + r * lda);
                    acc[r][g][v] = fg_fma(fg_set1(ar[1]), hi, fg_fma(fg_set1(ar[0]), lo, acc[r][g][v]));
                }
            }
#endif
        }
    }
    FG_UNROLL for (int r = 0; r < MR; r++) FG_UNROLL for (int g = 0; g < G; g++) FG_UNROLL for (int v = 0; v < FG_NV;
                                                                                               v++)
        fg_store(c + r * ldc + g * cgap + v * FG_VLEN, acc[r][g][v]);
}

/* How many panels the m <= 8 pass streams at once for a tile of mr rows: as many as the 32 zmm (16 ymm)
 * registers hold with the accumulators and the loaded steps, at most FG_GMAX. */
static inline int fg_group(int mr) {
#if defined(__AVX512F__)
    const int fit = mr == 1 ? 8 : mr <= 2 ? 4 : mr <= 4 ? 2 : 1;
#else
    const int fit = 1;
    (void)mr;
#endif
    return fit < FG_GMAX ? fit : FG_GMAX;
}

#define FG_STREAM_CASE(R, G) \
    case (R) * 16 + (G): fg_stream(stream_type, R, G, a, lda, b, panel_bytes, steps, c, ldc, cgap); break;
#if defined(__AVX512F__)
#define FG_STREAM_CASES                                                                                        \
    FG_STREAM_CASE(1, 1) FG_STREAM_CASE(1, 2) FG_STREAM_CASE(1, 3) FG_STREAM_CASE(1, 4) FG_STREAM_CASE(1, 5)    \
    FG_STREAM_CASE(1, 6) FG_STREAM_CASE(1, 7) FG_STREAM_CASE(1, 8) FG_STREAM_CASE(2, 1)                        \
    FG_STREAM_CASE(2, 2) FG_STREAM_CASE(2, 3) FG_STREAM_CASE(2, 4) FG_STREAM_CASE(3, 1) FG_STREAM_CASE(3, 2)    \
    FG_STREAM_CASE(4, 1) FG_STREAM_CASE(4, 2) FG_STREAM_CASE(5, 1) FG_STREAM_CASE(6, 1) FG_STREAM_CASE(7, 1)    \
    FG_STREAM_CASE(8, 1)
#else
#define FG_STREAM_CASES FG_STREAM_CASE(1, 1) FG_STREAM_CASE(2, 1)
#endif
#define FG_DEFINE_STREAM(NAME, TYPE)                                                                            \
    static void NAME(int mr, int g, const uint8_t *a, int64_t lda, const uint8_t *b, int64_t panel_bytes,      \
                     int64_t steps, float *c, int64_t ldc, int64_t cgap) {                                     \
        const int stream_type = (TYPE);                                                                        \
        switch (mr * 16 + g) {                                                                                  \
            FG_STREAM_CASES                                                                                    \
            default: break;                                                                                    \
        }                                                                                                      \
    }
FG_DEFINE_STREAM(fg_stream_f32, FG_F32)
FG_DEFINE_STREAM(fg_stream_bf16, FG_BF16)

typedef void (*fg_stream_fn)(int, int, const uint8_t *, int64_t, const uint8_t *, int64_t, int64_t, float *, int64_t,
                             int64_t);

/* float32 -> bfloat16, nearest even (NaN stays NaN, quiet), as torch rounds. */
static inline uint16_t fg_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#if defined(__AVX512F__)
/* 16 floats rounded to bf16 (nearest even, NaN kept and quiet): fg_to_bf16 in vector lanes */
static inline __m256i fg_bf16x16(const float *src) {
    const __m512i u = _mm512_loadu_si512((const void *)src);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet));
}
#endif
/* dst[0..cols) = src[0..cols) rounded to bf16 as fg_to_bf16 rounds, 16 at a time where AVX-512 is. */
static inline void fg_round_row_bf16(const float *src, int64_t cols, uint16_t *dst) {
    int64_t col = 0;
#if defined(__AVX512F__)
    for (; col + 16 <= cols; col += 16) _mm256_storeu_si256((__m256i *)(void *)(dst + col), fg_bf16x16(src + col));
#endif
    for (; col < cols; col++) dst[col] = fg_to_bf16(src[col]);
}

/* x's value at (row, input) as one step of x wants it: float32, or rounded to bf16 (0 past k). */
static inline uint16_t fg_bf16_at(const float *x, int64_t k, int64_t row, int64_t col) {
    return col < k ? fg_to_bf16(x[row * k + col]) : 0;
}

/* Step p of x's row as the tile reads it, written at dst (FG_A_STEP bytes). */
static inline void fg_put_step(int type, const float *x, int64_t k, int64_t row, int64_t p, uint8_t *dst) {
    if (type == FG_F32) {
        memcpy(dst, x + row * k + p, 4);
    } else if (FG_NATIVE_BF16) {
        const uint32_t pair = fg_bf16_at(x, k, row, 2 * p) | (uint32_t)fg_bf16_at(x, k, row, 2 * p + 1) << 16;
        memcpy(dst, &pair, 4);
    } else {
        const uint32_t lo = (uint32_t)fg_bf16_at(x, k, row, 2 * p) << 16;
        const uint32_t hi = (uint32_t)fg_bf16_at(x, k, row, 2 * p + 1) << 16;
        memcpy(dst, &lo, 4);
        memcpy(dst + 4, &hi, 4);
    }
}

/* y[rows, panel j] for mc rows of x at a (row stride lda) over all steps: in cache blocks of FG_KC steps
 * when blocked (each block of the panel reused by every tile of rows). A panel past n (the padded tail),
 * or every panel when the output is bf16 (y16), goes through a scratch tile; only its real columns are
 * copied out (rounded to bf16 for y16, while they are in L1). */
static void fg_block(fg_tile_fn tile, int blocked, const uint8_t *a, int64_t lda, int64_t a_step, int64_t mc,
                     int64_t steps, const uint8_t *panel, int64_t j, int64_t n, float *y, uint16_t *y16, int prefetch) {
    float scratch[FG_MC * FG_NR];
    const int64_t cols = n - j * FG_NR < FG_NR ? n - j * FG_NR : FG_NR;
    const int direct = cols == FG_NR && y16 == NULL;
    float *c = direct ? y + j * FG_NR : scratch;
    const int64_t ldc = direct ? n : FG_NR;
    /* Equal cache blocks of at most FG_KC steps (k = 576 in bf16: 2 x 144, not 256 + 32) */
    const int64_t kc_blocks = blocked ? (steps + FG_KC - 1) / FG_KC : 1;
    const int64_t kc_block = (steps + kc_blocks - 1) / kc_blocks;
    const int64_t tiles = (mc + FG_MR - 1) / FG_MR;
    for (int64_t p0 = 0; p0 < steps; p0 += kc_block) {
        const int64_t kc = steps - p0 < kc_block ? steps - p0 : kc_block;
        /* prefetch: while the tiles of rows run over this block, the bytes that follow it in memory (the next
         * block, or the next panel of the thread's run) are brought into L2, each tile a 1 / tiles share of
         * them, spread over its steps: the weight then streams from DRAM under the arithmetic. */
        const int64_t next_bytes = kc_block * FG_STEP, share = next_bytes / tiles;
        const int64_t pf_step = prefetch ? (share + kc - 1) / kc : 0;
        for (int64_t i = 0, t = 0; i < mc; i += FG_MR, t++) {
            const int mr = mc - i < FG_MR ? (int)(mc - i) : FG_MR;
            const uint8_t *pf = prefetch ? panel + (p0 + kc + (FG_TILE_PF - 1) * kc_block) * FG_STEP + t * share : NULL;
            tile(mr, a + i * lda + p0 * a_step, lda, panel + p0 * FG_STEP, kc, c + i * ldc, ldc, p0 > 0, pf, pf_step);
        }
    }
    if (direct) return;
    for (int64_t i = 0; i < mc; i++) {
        if (y16 != NULL)
            fg_round_row_bf16(scratch + i * FG_NR, cols, y16 + i * n + j * FG_NR);
        else
            memcpy(y + i * n + j * FG_NR, scratch + i * FG_NR, cols * sizeof(float));
    }
}

/* The m <= 8 pass over panels [j0, j1): fg_group(rows) panels at a time, every row tile over them (one
 * tile when AVX-512's 8 rows cover m). FG_SPREAD: the G panels of a group are one from each of G equal
 * parts of the run (j, j + part, ...), so each stream runs on through consecutive panels and its prefetch
 * ahead crosses into the next one it reads; else G adjacent panels. Whole panels into float32 y go
 * straight to y; the padded tail, or bf16 y16, through a scratch tile, only the real columns copied out. */
static void fg_stream_run(fg_stream_fn stream, const uint8_t *a, int64_t lda, int64_t m, int64_t steps,
                          const uint8_t *w, int64_t j0, int64_t j1, int64_t n, float *y, uint16_t *y16) {
    float scratch[FG_SMALL_M * 8 * FG_NR];
    const int64_t panel_bytes = steps * FG_STEP, panels_n = (n + FG_NR - 1) / FG_NR;
    const int mr_max = m < FG_MR ? (int)m : FG_MR, gmax = fg_group(mr_max);
    const int64_t part = FG_SPREAD ? (j1 - j0) / gmax : 0; /* panels per stream; the rest adjacent at the end */
    for (int64_t j = j0, done = 0; j < j1;) {
        const int spread = part > 0 && done < part;
        const int g = spread ? gmax : j1 - j < gmax ? (int)(j1 - j) : gmax;
        const int64_t gap = spread ? part : 1; /* panels between the group's streams */
        const int tail = j + (g - 1) * gap == panels_n - 1 && n % FG_NR != 0;
        const int direct = !tail && y16 == NULL;
        float *c = direct ? y + j * FG_NR : scratch;
        const int64_t ldc = direct ? n : g * FG_NR, cgap = direct ? gap * FG_NR : FG_NR;
        for (int64_t i = 0; i < m; i += FG_MR) {
            const int mr = m - i < FG_MR ? (int)(m - i) : FG_MR;
            stream(mr, g, a + i * lda, lda, w + j * panel_bytes, gap * panel_bytes, steps, c + i * ldc, ldc, cgap);
        }
        if (!direct)
            for (int gi = 0; gi < g; gi++) {
                const int64_t jg = j + gi * gap, cols = n - jg * FG_NR < FG_NR ? n - jg * FG_NR : FG_NR;
                for (int64_t i = 0; i < m; i++) {
                    const float *src = scratch + i * ldc + gi * FG_NR;
                    if (y16 != NULL)
                        fg_round_row_bf16(src, cols, y16 + i * n + jg * FG_NR);
                    else
                        memcpy(y + i * n + jg * FG_NR, src, cols * sizeof(float));
                }
            }
        if (spread) {
            done++;
            j = done < part ? j + 1 : j0 + gmax * part;
        } else {
            j += g;
        }
    }
}

/* How many contiguous runs the panels are cut into, inside a parallel region: per_thread per thread
 * (handed out dynamically, so a late thread's run is taken by another), at most one per panel. */
static inline int64_t fg_run_count(int64_t panels, int64_t per_thread) {
#ifdef _OPENMP
    const int64_t threads = omp_get_num_threads();
#else
    const int64_t threads = 1;
#endif
    return panels < threads * per_thread ? panels : threads * per_thread;
}

/* y (float32) or y16 (bf16) = x @ W^T with x already in the steps' format at a (row stride lda = steps *
 * a_step). */
static void fg_gemm(int type, const uint8_t *a, int64_t m, int64_t steps, const uint8_t *w, int64_t n, float *y,
                    uint16_t *y16) {
    const int64_t a_step = FG_A_STEP(type), lda = steps * a_step;
    const int64_t panels = (n + FG_NR - 1) / FG_NR, panel_bytes = steps * FG_STEP;
    if (m <= FG_SMALL_M) {
        fg_stream_fn stream = type == FG_F32 ? fg_stream_f32 : fg_stream_bf16;
        /* Each thread streams a contiguous run of panels (FG_CHUNKS runs per thread, handed out
         * dynamically: a late thread's run is taken by the other). Tiny weights are not worth waking
         * the other threads for. */
        _Pragma("omp parallel if (panels * panel_bytes >= 65536)") {
            const int64_t runs = fg_run_count(panels, FG_CHUNKS);
            _Pragma("omp for schedule(dynamic, 1)")
            for (int64_t r = 0; r < runs; r++)
                fg_stream_run(stream, a, lda, m, steps, w, panels * r / runs, panels * (r + 1) / runs, n, y, y16);
        }
    } else {
        fg_tile_fn tile = type == FG_F32 ? fg_tile_f32_block : fg_tile_bf16_block;
        const int64_t blocks = (m + FG_MC - 1) / FG_MC;
        if (blocks == 1) {
            /* One block of rows (batch decode): each thread takes contiguous runs of panels, so the panel it
             * needs next is the one that follows in memory, which fg_block prefetches. */
            _Pragma("omp parallel if (panels * panel_bytes >= 65536)") {
                const int64_t runs = fg_run_count(panels, FG_TILE_RUNS);
                _Pragma("omp for schedule(dynamic, 1)")
                for (int64_t r = 0; r < runs; r++)
                    for (int64_t j = panels * r / runs; j < panels * (r + 1) / runs; j++)
                        fg_block(tile, 1, a, lda, a_step, m, steps, w + j * panel_bytes, j, n, y, y16, FG_TILE_PF);
            }
            return;
        }
        _Pragma("omp parallel for schedule(dynamic, 1) collapse(2)")
        for (int64_t ib = 0; ib < blocks; ib++)
            for (int64_t j = 0; j < panels; j++) {
                const int64_t i0 = ib * FG_MC, mc = m - i0 < FG_MC ? m - i0 : FG_MC;
                fg_block(tile, 1, a + i0 * lda, lda, a_step, mc, steps, w + j * panel_bytes, j, n, y ? y + i0 * n : NULL,
                         y16 ? y16 + i0 * n : NULL, 0);
            }
    }
}

static void *fg_alloc(size_t bytes) {
    void *p = malloc(bytes + 64);
    if (p == NULL) abort();
    return p;
}

void fgemm_matmul_f32(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y) {
    fg_gemm(FG_F32, (const uint8_t *)x, m, k, w, n, y, NULL);
}

void fgemm_matmul_bf16(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y) {
    const int64_t steps = (k + 1) / 2, a_step = FG_A_STEP(FG_BF16), lda = steps * a_step;
    uint8_t *a = fg_alloc((size_t)(m * lda)); /* x rounded, each row padded to whole pairs */
    _Pragma("omp parallel for schedule(static) if (m * k >= 65536)")
    for (int64_t i = 0; i < m; i++) {
        int64_t p = 0;
#if FG_NATIVE_BF16
        /* 16 at a time: the pairs are x's row in bf16, in order (nearest even, NaN kept quiet, as fg_to_bf16) */
        for (; 2 * p + 16 <= k; p += 8)
            _mm256_storeu_si256((__m256i *)(void *)(a + i * lda + p * a_step), fg_bf16x16(x + i * k + 2 * p));
#endif
        for (; p < steps; p++) fg_put_step(FG_BF16, x, k, i, p, a + i * lda + p * a_step);
    }
    fg_gemm(FG_BF16, a, m, steps, w, n, y, NULL);
    free(a);
}

/* The same with x and y in bfloat16 (a bf16 model's torch path: no conversion op around the call): x is
 * multiplied in place where its rows are whole pairs and vdpbf16ps is there; y is rounded once from the
 * float32 sums, as torch's bf16 linear rounds. */
void fgemm_matmul_bf16_io(const uint16_t *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, uint16_t *y) {
    const int64_t steps = (k + 1) / 2, a_step = FG_A_STEP(FG_BF16), lda = steps * a_step;
    uint8_t *a = NULL;
    if (!FG_NATIVE_BF16 || (k & 1)) {
        a = fg_alloc((size_t)(m * lda));
        for (int64_t i = 0; i < m; i++)
            for (int64_t p = 0; p < 2 * steps; p++) {
                const uint16_t v = p < k ? x[i * k + p] : 0;
                if (FG_NATIVE_BF16) {
                    memcpy(a + i * lda + 2 * p, &v, 2);
                } else {
                    const uint32_t bits = (uint32_t)v << 16;
                    memcpy(a + i * lda + 4 * p, &bits, 4);
                }
            }
    }
    fg_gemm(FG_BF16, a ? a : (const uint8_t *)x, m, steps, w, n, NULL, y);
    free(a);
}

/* Whether vdpbf16ps is compiled in (else bf16 runs widened to float32). */
int fgemm_native_bf16(void) { return FG_NATIVE_BF16; }

#endif
