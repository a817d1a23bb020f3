/* The decode step of a Llama-family model in one call (issue 19: the fixed cost of a decode step).
 *
 * A step where every sequence has one new token runs all decoder layers here, as llama.cpp does,
 * instead of per layer four linears, four ctypes calls and the nn.Module calls around them in
 * Python. Per layer, in the order and with the kernels of the torch path
 * (LlamaForCausalLM.run_layers, vLLM's residual stream):
 *
 *   normed   = RMSNorm(residual)                  (layer 0: rms_norm_f32; later: add_rms_norm_f32,
 *                                                  which first adds the previous MLP output)
 *   qkv      = qkv_proj(normed) [+ bias]          each part through its own kernel (function pointer)
 *   attn     = decode_qkv_attention(qkv)          rotary + KV write + paged attention (cpu_ops.c)
 *   o        = o_proj(attn)
 *   normed   = RMSNorm(residual += o)             add_rms_norm_f32
 *   act      = silu_and_mul(gate_up_proj(normed))
 *   mlp      = down_proj(act)                     added into the residual by the next layer's norm
 *
 * and after the last layer residual += mlp: `hidden` holds what run_layers returns. Activations
 * are float32; a bfloat16 model's KV cache is bf16, so q/k/v are rounded to bf16 for its attention
 * kernel and its output widened again.
 *
 * Every linear part has the ABI of gguf_matmul_<type> (model_executor/layers/kernel_parts.py):
 *   void fn(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y)
 * decode_matmul_f32 / _bf16 below are that ABI for plain row-major float weights.
 *
 * The per-layer descriptors (weights, function pointers, norms, caches) are one int64 array built
 * once after load (kernels/decode_loop.py documents the layout; decode_layer_words() lets it check
 * its constants against these); a step passes only its own data.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "bf16.h"
typedef void (*decode_matmul_fn)(const float *x, int64_t m, int64_t k, const uint8_t *w, int64_t n, float *y);

/* cpu_ops.c (the same library) */
void rms_norm_f32(int64_t rows, int64_t N, const float *x, int64_t x_stride, const float *weight, float eps,
                  float *out, int64_t out_stride);
void add_rms_norm_f32(int64_t rows, int64_t N, const float *x, int64_t x_stride, float *residual,
                      int64_t res_stride, const float *weight, float eps, float *out, int64_t out_stride);
void silu_and_mul_f32(int64_t rows, int64_t N, const float *x, int64_t x_stride, float *out, int64_t out_stride);
void decode_qkv_attention_f32(int64_t S, int64_t H, int64_t KVH, int64_t D, int64_t rot, float *qkv,
                              int64_t qkv_stride, const float *cos, const float *sin, const int64_t *slots,
                              float *k_cache, float *v_cache, const int32_t *block_tables, int64_t bt_stride,
                              const int32_t *context_lens, int64_t block_size, int64_t chunk, float scale,
                              const float *alibi_slopes, int64_t window, float *out, int64_t out_stride);
void decode_qkv_attention_bf16(int64_t S, int64_t H, int64_t KVH, int64_t D, int64_t rot, bf16_t *qkv,
                               int64_t qkv_stride, const bf16_t *cos, const bf16_t *sin,
                               const int64_t *slots, bf16_t *k_cache, bf16_t *v_cache,
                               const int32_t *block_tables, int64_t bt_stride, const int32_t *context_lens,
                               int64_t block_size, int64_t chunk, float scale, const float *alibi_slopes,
                               int64_t window, bf16_t *out, int64_t out_stride);

/* Descriptor layout (int64 words). A linear: [number of parts, out_features, float32 bias or 0,
 * then per part: fn, weight, rows, in_features, first output column]. A layer: the two norms'
 * float32 weights, its K and V caches, its sliding window (0: none), then qkv, o, gate_up, down. */
#define DECODE_MAX_PARTS 4
#define DECODE_PART_WORDS 5
#define DECODE_LINEAR_WORDS (3 + DECODE_PART_WORDS * DECODE_MAX_PARTS)
enum {
    DECODE_INPUT_NORM,
    DECODE_POST_NORM,
    DECODE_K_CACHE,
    DECODE_V_CACHE,
    DECODE_WINDOW,
    DECODE_QKV,
    DECODE_O = DECODE_QKV + DECODE_LINEAR_WORDS,
    DECODE_GATE_UP = DECODE_O + DECODE_LINEAR_WORDS,
    DECODE_DOWN = DECODE_GATE_UP + DECODE_LINEAR_WORDS,
    DECODE_LAYER_WORDS = DECODE_DOWN + DECODE_LINEAR_WORDS,
};

int64_t decode_layer_words(void) { return DECODE_LAYER_WORDS; }
int64_t decode_linear_words(void) { return DECODE_LINEAR_WORDS; }
int64_t decode_max_parts(void) { return DECODE_MAX_PARTS; }

#define PTR(T, word) ((T)(intptr_t)(word))


/* y [m, k] @ w[n, k]^T for plain row-major float weights: the kernel ABI above (a float part of a
 * quantized layer, a float model's linear). Threads split the output features when the weight is
 * large enough to pay for the parallel region. */
#define DEFINE_FLOAT_MATMUL(NAME, T, LOAD)                                                          \
void decode_matmul_##NAME(const float *x, int64_t m, int64_t k, const uint8_t *w8, int64_t n, float *y) { \
    const T *w = (const T *)w8;                                                                     \
    _Pragma("omp parallel for schedule(static) if (n * k >= 65536)")                                \
    for (int64_t j = 0; j < n; j++) {                                                               \
        const T *wj = w + j * k;                                                                    \
        for (int64_t i = 0; i < m; i++) {                                                           \
            const float *xi = x + i * k;                                                            \
            float sum = 0.f;                                                                        \
            for (int64_t t = 0; t < k; t++) sum += xi[t] * LOAD(wj[t]);                             \
            y[i * n + j] = sum;                                                                     \
        }                                                                                           \
    }                                                                                               \
}

#define DECODE_LOAD_F32(v) (v)
DEFINE_FLOAT_MATMUL(f32, float, DECODE_LOAD_F32)
DEFINE_FLOAT_MATMUL(bf16, bf16_t, bf16_to_f32)

/* One linear over m rows of x into y [m, out_features]: each part writes its columns (through a
 * [m, rows] scratch when m > 1 and the part is not the whole output, as the torch path's copy
 * does), then the bias. */
static void decode_linear(const int64_t *lin, const float *x, int64_t m, float *y, float *tmp) {
    const int64_t parts = lin[0], n = lin[1];
    const float *bias = PTR(const float *, lin[2]);
    for (int64_t p = 0; p < parts; p++) {
        const int64_t *part = lin + 3 + DECODE_PART_WORDS * p;
        const decode_matmul_fn fn = PTR(decode_matmul_fn, part[0]);
        const uint8_t *w = PTR(const uint8_t *, part[1]);
        const int64_t rows = part[2], k = part[3], first = part[4];
        if (rows == n || m == 1) {
            fn(x, m, k, w, rows, y + first);
        } else {
            fn(x, m, k, w, rows, tmp);
            for (int64_t r = 0; r < m; r++) memcpy(y + r * n + first, tmp + r * rows, sizeof(float) * (size_t)rows);
        }
    }
    if (bias != NULL)
        for (int64_t r = 0; r < m; r++)
            for (int64_t j = 0; j < n; j++) y[r * n + j] += bias[j];
}

/* The widest linear output of a layer: the row width of the per-part scratch. */
static int64_t decode_widest(int64_t qkv_width, int64_t intermediate_size, int64_t hidden_size) {
    const int64_t widest = qkv_width > 2 * intermediate_size ? qkv_width : 2 * intermediate_size;
    return widest > hidden_size ? widest : hidden_size;
}

/* Floats of scratch decode_layers needs for S sequences (its layout is at the top of decode_layers). */
int64_t decode_scratch_floats(int64_t S, int64_t hidden_size, int64_t num_heads, int64_t num_kv_heads,
                              int64_t head_dim, int64_t intermediate_size) {
    const int64_t q = num_heads * head_dim, qkv = q + 2 * num_kv_heads * head_dim;
    const int64_t widest = decode_widest(qkv, intermediate_size, hidden_size);
    /* normed, qkv, attn, gate_up, act, out, a part's tmp, and bf16 copies of qkv and attn */
    return S * (2 * hidden_size + qkv + q + 3 * intermediate_size + widest + qkv + q);
}

void decode_layers(int64_t num_layers, const int64_t *layers, int64_t S, int64_t hidden_size, int64_t num_heads,
                   int64_t num_kv_heads, int64_t head_dim, int64_t rotary_dim, int64_t intermediate_size,
                   float eps, float scale, int64_t block_size, int64_t chunk, int64_t cache_bf16, float *hidden,
                   const void *cos, const void *sin, const int64_t *slots, const int32_t *block_tables,
                   int64_t bt_stride, const int32_t *context_lens, float *scratch) {
    const int64_t Hd = hidden_size, I = intermediate_size, q_size = num_heads * head_dim;
    const int64_t qkv_width = q_size + 2 * num_kv_heads * head_dim;
    const int64_t widest = decode_widest(qkv_width, I, Hd);
    float *normed = scratch, *qkv = normed + S * Hd, *attn = qkv + S * qkv_width, *gate_up = attn + S * q_size;
    float *act = gate_up + S * 2 * I, *out = act + S * I, *tmp = out + S * Hd;
    bf16_t *qkv16 = (bf16_t *)(tmp + S * widest), *attn16 = qkv16 + S * qkv_width;
    float *residual = hidden;
    for (int64_t l = 0; l < num_layers; l++) {
        const int64_t *layer = layers + l * DECODE_LAYER_WORDS;
        const float *input_norm = PTR(const float *, layer[DECODE_INPUT_NORM]);
        if (l == 0)
            rms_norm_f32(S, Hd, residual, Hd, input_norm, eps, normed, Hd);
        else
            add_rms_norm_f32(S, Hd, out, Hd, residual, Hd, input_norm, eps, normed, Hd);
        decode_linear(layer + DECODE_QKV, normed, S, qkv, tmp);
        if (!cache_bf16) {
            decode_qkv_attention_f32(S, num_heads, num_kv_heads, head_dim, rotary_dim, qkv, qkv_width, cos, sin,
                                     slots, PTR(float *, layer[DECODE_K_CACHE]), PTR(float *, layer[DECODE_V_CACHE]),
                                     block_tables, bt_stride, context_lens, block_size, chunk, scale, NULL,
                                     layer[DECODE_WINDOW], attn, q_size);
        } else {
            for (int64_t i = 0; i < S * qkv_width; i++) qkv16[i] = f32_to_bf16(qkv[i]);
            decode_qkv_attention_bf16(S, num_heads, num_kv_heads, head_dim, rotary_dim, qkv16, qkv_width, cos, sin,
                                      slots, PTR(bf16_t *, layer[DECODE_K_CACHE]),
                                      PTR(bf16_t *, layer[DECODE_V_CACHE]), block_tables, bt_stride,
                                      context_lens, block_size, chunk, scale, NULL, layer[DECODE_WINDOW], attn16,
                                      q_size);
            for (int64_t i = 0; i < S * q_size; i++) attn[i] = bf16_to_f32(attn16[i]);
        }
        decode_linear(layer + DECODE_O, attn, S, out, tmp);
        add_rms_norm_f32(S, Hd, out, Hd, residual, Hd, PTR(const float *, layer[DECODE_POST_NORM]), eps, normed, Hd);
        decode_linear(layer + DECODE_GATE_UP, normed, S, gate_up, tmp);
        silu_and_mul_f32(S, I, gate_up, 2 * I, act, I);
        decode_linear(layer + DECODE_DOWN, act, S, out, tmp);
    }
    if (num_layers > 0)
        for (int64_t i = 0; i < S * Hd; i++) residual[i] += out[i];
}
