/* Convolutions that max-pooling follows, for m agents at once. Two kernels (in
 * conv_pool_impl.h, compiled once for float and once for double): the backward pass of
 * any such convolution from the pooled gradient (nettrain_pooled_conv_backward, see its
 * comment), and the first layer fused, forward and backward, described here:
 * convolution (stride 1, zero padding), 2x2 max-pooling with stride 2, optional ReLU.
 *
 *   z[a,b,o,h,w] = bias[a,o] + sum_{c,i,j} w[a,o,c,i,j] x[a,b,c,h+i-ph,w+j-pw]
 *   y[a,b,o,u,v] = relu(max_{s<4} z[a,b,o,2u+s/2,2v+s%2]),  arg = the first maximal s
 *
 * and the gradient of the weights and biases from dy (the input is data: no gradient):
 *
 *   g = dy [y > 0] (with ReLU),  db[a,o] = sum g,
 *   dw[a,o,c,i,j] = sum_{b,u,v} g[a,b,o,u,v] x[a,b,c,2u+arg/2+i-ph,2v+arg%2+j-pw].
 *
 * Layouts (the caller's, nettrain/problem/native.py): x (m, B, C, H, W); weights packed
 * (m, K, Op) with K = C kh kw taps and Op = O rounded up to a multiple of VL (zeros);
 * bias (m, Op); y, dy and arg (B, H2, W2, m O), the channels-last layout of the next
 * layer's (B, m O, H2, W2) images; dw (m, K, Op), db (m, Op).
 *
 * Each output element's sum runs in one fixed order, and the gradient of agent a is
 * summed by one thread, sample after sample, each sample's in a fixed order: the results
 * depend neither on the number of threads nor on which other agents are in the call. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VL 8 /* channels a vector */

#define T float
#define I int32_t
#define VEC vec_f32
#define MASK mask_f32
#define NAME(f) f##_f32
#include "conv_pool_impl.h"
#undef T
#undef I
#undef VEC
#undef MASK
#undef NAME

#define T double
#define I int64_t
#define VEC vec_f64
#define MASK mask_f64
#define NAME(f) f##_f64
#include "conv_pool_impl.h"
