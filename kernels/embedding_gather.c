/* Embedding rows read from a tied LM head's packed weight (CpuLinear's "fgemm" kind, kernels/float_gemm.c's
 * layout), so that a model whose LM head is tied to its token embedding holds the vocabulary matrix once:
 *
 *   embed_rows_fgemm_f32(ids, count, w, rows, k, out):  out[t][c] = W[ids[t]][c], float32
 *   embed_rows_fgemm_bf16(ids, count, w, rows, k, out): the same for bfloat16 (as raw 16-bit values)
 *
 * The layout (float_gemm.c's header): W's rows in panels of 32; float32 panel[p][j] = W[32 * panel + j][p];
 * bfloat16 panel[p][j] = the pair (W[.][2p], W[.][2p + 1]), ceil(k / 2) steps, the odd k's last pair padded.
 * So row r is column r % 32 of panel r / 32: one value every 128 bytes (a cache line per value; a decode
 * step's one row costs k lines, ~2 us for k = 2048, against the LM head's own read of the whole matrix).
 * ids are int64 (torch's); out is [count, k] contiguous. Returns -1, or the index of the first id outside
 * [0, rows), in which case nothing is written (the caller raises, as torch's embedding does).
 * Threads: many tokens (a prefill) split over torch's OpenMP threads, as cpu_ops.c.
 */
#include <stdint.h>

#define EMBED_PANEL 32
/* below this many values a gather stays on the calling thread (an OpenMP region costs more) */
#define EMBED_PARALLEL_MIN (1 << 16)

static int64_t embed_check(const int64_t *ids, int64_t count, int64_t rows)
{
    for (int64_t t = 0; t < count; t++)
        if (ids[t] < 0 || ids[t] >= rows)
            return t;
    return -1;
}

int64_t embed_rows_fgemm_f32(const int64_t *ids, int64_t count, const float *w, int64_t rows, int64_t k, float *out)
{
    int64_t bad = embed_check(ids, count, rows);
    if (bad >= 0)
        return bad;
#pragma omp parallel for schedule(static) if (count * k >= EMBED_PARALLEL_MIN)
    for (int64_t t = 0; t < count; t++) {
        const int64_t r = ids[t];
        const float *src = w + (r / EMBED_PANEL) * k * EMBED_PANEL + r % EMBED_PANEL;
        float *dst = out + t * k;
        for (int64_t c = 0; c < k; c++)
            dst[c] = src[c * EMBED_PANEL];
    }
    return -1;
}

int64_t embed_rows_fgemm_bf16(const int64_t *ids, int64_t count, const uint16_t *w, int64_t rows, int64_t k,
                              uint16_t *out)
{
    int64_t bad = embed_check(ids, count, rows);
    if (bad >= 0)
        return bad;
    const int64_t steps = (k + 1) / 2;
#pragma omp parallel for schedule(static) if (count * k >= EMBED_PARALLEL_MIN)
    for (int64_t t = 0; t < count; t++) {
        const int64_t r = ids[t];
        /* a step is 32 pairs of 16-bit values: 64 per step, this row's pair at 2 * (r % 32) */
        const uint16_t *src = w + ((r / EMBED_PANEL) * steps * EMBED_PANEL + r % EMBED_PANEL) * 2;
        uint16_t *dst = out + t * k;
        for (int64_t p = 0; p < k / 2; p++) {
            dst[2 * p] = src[p * 2 * EMBED_PANEL];
            dst[2 * p + 1] = src[p * 2 * EMBED_PANEL + 1];
        }
        if (k % 2)
            dst[k - 1] = src[(k / 2) * 2 * EMBED_PANEL];
    }
    return -1;
}
