/*
 * cmd_gen.c — `nearline gen`: a deterministic clustered dataset, queries from the same
 * distribution, and exact ground truth, so anyone can reproduce a run at any scale
 * without ../shared. Row i depends only on (seed, i), so the output is the same however
 * it is produced.
 *
 * Shape: like real embeddings, the data has a low intrinsic dimension. Each point is a
 * random cluster centre plus a `latent`-dimensional Gaussian (16 by default) mapped into
 * D dimensions by one fixed random matrix, plus a little isotropic noise.
 *
 * --hard: isotropic clusters of full intrinsic dimension (n/500 of them by default): each point is
 * its centre plus a Gaussian in all D dimensions. Nearest neighbours are then nearly as
 * far as the rest of the cluster, so a compressed code must resolve small differences in
 * every direction: 8-bit PQ at 1 byte per 4 dimensions stops ranking them (issue 17).
 */
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nl_dataset.h"
#include "nl_eval.h"
#include "nl_util.h"

typedef struct {
    uint32_t dim, clusters, latent;
    nl_dtype type;
    uint64_t seed;
    float *centres;
    float *proj;   /* dim x latent, entries N(0, 1/latent) */
    float sigma;   /* spread along the latent directions, per output dimension */
    float noise;   /* isotropic noise */
    int hard;      /* isotropic clusters: no latent part, noise is the whole spread */
} gen_spec;

static void gen_row(const gen_spec *g, uint64_t stream, uint64_t i, void *out)
{
    nl_rng r;
    nl_rng_seed(&r, g->seed ^ (stream * 0x9e3779b97f4a7c15ull) ^ (i * 0xd1b54a32d192ed03ull));
    const float *c = g->centres + (size_t)nl_rng_below(&r, g->clusters) * g->dim;
    float z[256];
    for (uint32_t l = 0; !g->hard && l < g->latent; l++)
        z[l] = (float)nl_rng_normal(&r);
    for (uint32_t j = 0; j < g->dim; j++) {
        const float *pj = g->proj + (size_t)j * g->latent;
        float v = 0.0f;
        for (uint32_t l = 0; !g->hard && l < g->latent; l++)
            v += pj[l] * z[l];
        v = c[j] + g->sigma * v + g->noise * (float)nl_rng_normal(&r);
        if (g->type == NL_DTYPE_U8) {
            v = roundf(v);
            ((uint8_t *)out)[j] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        } else {
            ((float *)out)[j] = v;
        }
    }
}

static int gen_help(FILE *f)
{
    fprintf(f,
            "usage: nearline gen --n N --dim D --out FILE [--type u8|f32] [--clusters C] [--seed S]\n"
            "                    [--queries Q --queries-out FILE] [--groundtruth-out FILE.ivecs]\n"
            "                    [--gt-k K] [--metric l2|ip|cosine] [--latent L] [--threads T] [--hard]\n"
            "Formats follow the extensions (fvecs, bvecs, fbin, u8bin).\n"
            "--hard: isotropic clusters of full intrinsic dimension (n/500 clusters unless --clusters),\n"
            "the data on which 8-bit PQ codes stop ranking neighbours.\n");
    return f == stdout ? 0 : 2;
}

int cmd_gen(int argc, char **argv)
{
    const char *C = "gen";
    uint64_t n = 0, seed = 1;
    uint32_t dim = 0, clusters = 0, nq = 1000, gtk = 100, threads = 0, latent = 16;
    int hard = 0;
    const char *out = NULL, *qout = NULL, *gtout = NULL, *type = "u8", *metric_s = "l2";
    static const struct option opts[] = {
        {"n", 1, 0, 'n'}, {"dim", 1, 0, 'd'}, {"type", 1, 0, 't'}, {"clusters", 1, 0, 'c'},
        {"seed", 1, 0, 's'}, {"out", 1, 0, 'o'}, {"queries", 1, 0, 'q'}, {"queries-out", 1, 0, 'Q'},
        {"groundtruth-out", 1, 0, 'g'}, {"gt-k", 1, 0, 'k'}, {"metric", 1, 0, 'm'},
        {"threads", 1, 0, 'T'}, {"latent", 1, 0, 'l'}, {"hard", 0, 0, 'H'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'n': if (cli_u64(C, "--n", optarg, 1, 2000000000ull, &n)) return 2; break;
        case 'd': if (cli_u32(C, "--dim", optarg, 1, 65536, &dim)) return 2; break;
        case 't': type = optarg; break;
        case 'c': if (cli_u32(C, "--clusters", optarg, 1, 1u << 20, &clusters)) return 2; break;
        case 's': if (cli_u64(C, "--seed", optarg, 0, UINT64_MAX, &seed)) return 2; break;
        case 'o': out = optarg; break;
        case 'q': if (cli_u32(C, "--queries", optarg, 1, 10000000, &nq)) return 2; break;
        case 'Q': qout = optarg; break;
        case 'g': gtout = optarg; break;
        case 'k': if (cli_u32(C, "--gt-k", optarg, 1, 10000, &gtk)) return 2; break;
        case 'm': metric_s = optarg; break;
        case 'T': if (cli_u32(C, "--threads", optarg, 0, 1024, &threads)) return 2; break;
        case 'l': if (cli_u32(C, "--latent", optarg, 1, 256, &latent)) return 2; break;
        case 'H': hard = 1; break;
        case 'h': return gen_help(stdout);
        default: return gen_help(stderr);
        }
    }
    if (!n || !dim || !out) {
        cli_error(C, 0, "--n, --dim and --out are required");
        return 2;
    }
    if (latent > dim)
        latent = dim;
    /* Hard data keeps about 500 points per cluster at every n (1M: 2,000 clusters, as the
     * failure in issue 17 was measured); fewer per cluster would make it easy again. */
    if (!clusters)
        clusters = hard ? (uint32_t)(n / 500 > 0 ? (n / 500 < (1u << 20) ? n / 500 : 1u << 20) : 1) : 64;
    gen_spec g = {.dim = dim, .clusters = clusters, .latent = latent, .seed = seed, .hard = hard};
    nl_metric metric;
    int rc;
    if ((rc = nl_dtype_parse(type, &g.type)) || (g.type != NL_DTYPE_U8 && g.type != NL_DTYPE_F32)) {
        cli_error(C, 0, "--type must be u8 or f32");
        return 2;
    }
    if ((rc = nl_metric_parse(metric_s, &metric))) {
        cli_error(C, rc, "--metric");
        return 2;
    }
    nl_format fmt;
    if ((rc = nl_format_from_path(out, &fmt))) {
        cli_error(C, rc, "--out");
        return 2;
    }
    int u8fmt = fmt == NL_FORMAT_BVECS || fmt == NL_FORMAT_U8BIN;
    int f32fmt = fmt == NL_FORMAT_FVECS || fmt == NL_FORMAT_FBIN;
    if ((g.type == NL_DTYPE_U8 && !u8fmt) || (g.type == NL_DTYPE_F32 && !f32fmt)) {
        cli_error(C, 0, "--out %s does not hold %s vectors (u8: .bvecs/.u8bin, f32: .fvecs/.fbin)",
                  out, nl_dtype_name(g.type));
        return 2;
    }
    /* Centres: u8 in the middle of the range so the noise rarely clips; f32 standard normal. */
    g.centres = malloc(sizeof(float) * clusters * dim);
    if (!g.centres) {
        cli_error(C, -12, "out of memory");
        return 1;
    }
    nl_rng r;
    nl_rng_seed(&r, seed);
    for (size_t i = 0; i < (size_t)clusters * dim; i++)
        g.centres[i] = g.type == NL_DTYPE_U8 ? (float)(40 + nl_rng_below(&r, 176)) : (float)nl_rng_normal(&r);
    g.proj = malloc(sizeof(float) * dim * latent);
    if (!g.proj) {
        cli_error(C, -12, "out of memory");
        free(g.centres);
        return 1;
    }
    for (size_t i = 0; i < (size_t)dim * latent; i++)
        g.proj[i] = (float)(nl_rng_normal(&r) / sqrt((double)latent));
    g.sigma = g.type == NL_DTYPE_U8 ? 18.0f : 0.35f;
    g.noise = g.type == NL_DTYPE_U8 ? 2.0f : 0.04f;
    if (hard) /* the spread of a cluster, in every dimension */
        g.noise = g.type == NL_DTYPE_U8 ? 20.0f : 0.35f;

    size_t esz = nl_dtype_size(g.type);
    size_t rowb = (size_t)dim * esz;
    void *base = malloc(rowb * n);
    if (!base) {
        cli_error(C, -12, "cannot hold %llu rows in memory", (unsigned long long)n);
        free(g.centres);
        free(g.proj);
        return 1;
    }
    for (uint64_t i = 0; i < n; i++)
        gen_row(&g, 0, i, (char *)base + i * rowb);
    rc = nl_dataset_write(out, fmt, base, n, dim);
    if (rc) {
        cli_error(C, rc, "writing %s", out);
        goto done;
    }
    if (qout) {
        nl_format qfmt;
        if ((rc = nl_format_from_path(qout, &qfmt))) {
            cli_error(C, rc, "--queries-out");
            goto done;
        }
        void *q = malloc(rowb * nq);
        float *qf = malloc(sizeof(float) * dim * nq);
        if (!q || !qf) {
            free(q);
            free(qf);
            rc = -12;
            cli_error(C, rc, "queries");
            goto done;
        }
        for (uint32_t i = 0; i < nq; i++)
            gen_row(&g, 1, i, (char *)q + i * rowb);
        nl_convert_to_f32(g.type, q, qf, (size_t)nq * dim);
        rc = nl_dataset_write(qout, qfmt, q, nq, dim);
        if (rc)
            cli_error(C, rc, "writing %s", qout);
        if (!rc && gtout) {
            if (gtk > n) gtk = (uint32_t)n;
            uint32_t *ids = malloc(sizeof(uint32_t) * gtk * nq);
            nl_vecset vs = {base, n, dim, g.type};
            rc = ids ? nl_groundtruth_exact(&vs, metric, qf, nq, gtk, threads, ids, NULL) : -12;
            if (!rc)
                rc = nl_dataset_write(gtout, NL_FORMAT_IVECS, ids, nq, gtk);
            if (rc)
                cli_error(C, rc, "ground truth");
            free(ids);
        }
        free(q);
        free(qf);
    }
    if (!rc)
        printf("{\"out\":\"%s\",\"n\":%llu,\"dim\":%u,\"type\":\"%s\",\"clusters\":%u,\"latent\":%u,\"seed\":%llu,"
               "\"queries\":%u,\"hard\":%s}\n",
               out, (unsigned long long)n, dim, nl_dtype_name(g.type), clusters, hard ? dim : latent,
               (unsigned long long)seed, qout ? nq : 0, hard ? "true" : "false");
done:
    free(base);
    free(g.centres);
    free(g.proj);
    return rc ? 1 : 0;
}
