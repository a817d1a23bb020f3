/* glibc's vector expf (libmvec, linked through libm), which math.h declares only under -ffast-math
 * (__FAST_MATH__): declared here so the softmax's exps stay vectorized without -ffast-math, whose
 * finite-math assumption the kernels' -INFINITY starts would break. Same function, same results.
 * Include after <math.h>. */
#ifndef VLLM_CLI_VECTOR_EXPF_H
#define VLLM_CLI_VECTOR_EXPF_H
#if defined(__GLIBC__) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__FAST_MATH__)
__attribute__((__simd__("notinbranch"))) extern float expf(float);
#endif
#endif
