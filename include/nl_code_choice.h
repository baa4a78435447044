/*
 * nl_code_choice.h — which compressed code a collection should navigate by, estimated
 * from its own data before the build (issue 17).
 *
 * The recall a disk search reaches at list size L is bounded by how well the code ranks
 * the points near a query: a true neighbour that the code does not rank among the L
 * best of the neighbourhood is never read. So the estimate is: take held-out sample
 * queries (rows of the data, left out of their own answers), find their exact 4.8 L
 * nearest rows over the data (all of it up to max_rows; an even sample of chunks
 * beyond), and for each candidate code count the true 10 nearest that the code ranks in
 * the top 0.6 L of those. The 0.6 is the margin for what the estimate leaves out: the
 * graph's own losses, and real queries that sit farther from the data than its rows do
 * (docs/benchmarks.md compares estimate and search).
 *
 * Candidates: RaBitQ at 1..8 bits per dimension (up to 2,048 dimensions), cheapest
 * first, and PQ at the largest size the budget allows when no RaBitQ code in budget
 * reaches the target. The choice is the smallest code in budget that reaches the
 * target; when none does, the best in budget, with a warning naming what would.
 */
#ifndef NL_CODE_CHOICE_H
#define NL_CODE_CHOICE_H

#include "nl_dataset.h"
#include "nl_quant.h"

#define NL_CODE_CHOICE_MAX 16

/* The default PQ code size for a dimension. */
uint32_t nl_code_default_pq_m(uint32_t dim);
/* The default code of a new collection (nl_collection_config.code, NL_COLL_CODE_*) for a
 * dimension: the most RaBitQ bits that fit the default PQ size plus 8 bytes, else PQ. */
uint32_t nl_code_default(uint32_t dim);

typedef struct {
    double target;     /* recall@10 to reach; 0 = 0.95 */
    uint32_t L;        /* list size the estimate is for; 0 = 50 */
    uint32_t budget;   /* code bytes per point allowed; 0 = unlimited */
    uint32_t queries;  /* held-out sample queries; 0 = 200 */
    uint64_t max_rows; /* rows scanned for the exact neighbours; 0 = 2,000,000 */
    uint64_t seed;
    unsigned threads;  /* 0 = all CPUs */
    nl_dataset *sample_queries; /* optional: representative queries (not rows of the data)
                                 * instead of held-out rows; the first `queries` are used */
    int evaluate_all;  /* every candidate (RaBitQ 1..8, PQ at the budget and at the default
                        * size) is estimated and listed; the choice is made as usual */
    const nl_code_spec *only; /* with nonly > 0: estimate exactly these (listed in order);
                               * the choice is the smallest of them reaching the target */
    uint32_t nonly;
} nl_code_choice_params;

typedef struct {
    nl_code_spec spec;
    uint32_t bytes;    /* per point */
    double recall;     /* estimated recall@10 at L */
} nl_code_candidate;

typedef struct {
    nl_code_spec chosen;
    uint32_t chosen_bytes;
    double chosen_recall;
    int meets_target;           /* 0: nothing in budget reaches the target */
    nl_code_candidate cand[NL_CODE_CHOICE_MAX];
    uint32_t ncand;             /* candidates evaluated, in the order tried */
    double target;
    uint32_t L, budget, queries;
    int queries_given;          /* the queries were sample_queries, not held-out rows */
    uint64_t rows_scanned;
    double seconds;
    char warning[512];          /* "" when the target is met */
} nl_code_choice;

/* Reads ds (any number of passes); metric as the collection's. 0 or a negative code. */
int nl_code_choose(nl_dataset *ds, nl_metric metric, const nl_code_choice_params *p, nl_code_choice *out);

/* The choice as a JSON object (jansson), for the import summary and inspect. */
struct json_t;
struct json_t *nl_code_choice_json(const nl_code_choice *c);

#endif
