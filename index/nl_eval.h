/*
 * nl_eval.h — exact k-NN ground truth and recall@k: the library's own yardstick, used by
 * tests, benchmarks and `nearline search --groundtruth`. Returns numbers; prints nothing.
 */
#ifndef NL_EVAL_H
#define NL_EVAL_H

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Brute force: for each of nq queries (f32, base->dim each) the k nearest rows of base
 * under metric, nearest first, ties to the lower id. ids: nq*k; dists (optional): nq*k.
 * Needs k <= base->n. */
int nl_groundtruth_exact(const nl_vecset *base, nl_metric metric, const float *queries,
                         size_t nq, uint32_t k, unsigned threads, uint32_t *ids, float *dists);

/* Mean over queries of |first k results ∩ first k truth| / k. results rows are
 * res_stride apart, truth rows gt_stride apart (both >= k). UINT32_MAX in results
 * means "no result" and never matches. */
double nl_recall_at_k(const uint32_t *results, size_t nq, uint32_t res_stride,
                      const uint32_t *truth, uint32_t gt_stride, uint32_t k);

#ifdef __cplusplus
}
#endif
#endif
