/*
 * distance.c — run-time selection of distance kernels. CPU features are read once
 * (GCC's __builtin_cpu_supports also checks that the OS saves the wider registers);
 * NEARLINE_ISA may lower, never raise, the choice.
 */
#include <cpuid.h>
#include "distance_impl.h"

#include <stdlib.h>
#include <string.h>

/* F16C by cpuid (leaf 1, ECX bit 29): clang's __builtin_cpu_supports does not know it. */
static int has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && ((c >> 29) & 1);
}

int nl_isa_supported(nl_isa isa)
{
    __builtin_cpu_init();
    switch (isa) {
    case NL_ISA_SCALAR: return 1;
    case NL_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    case NL_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && nl_isa_supported(NL_ISA_AVX2);
    }
    return 0;
}

const char *nl_isa_name(nl_isa isa)
{
    switch (isa) {
    case NL_ISA_SCALAR: return "scalar";
    case NL_ISA_AVX2: return "avx2";
    case NL_ISA_AVX512: return "avx512";
    }
    return "?";
}

nl_isa nl_isa_best(void)
{
    static int cached = -1;
    if (cached >= 0)
        return (nl_isa)cached;
    nl_isa best = NL_ISA_SCALAR;
    if (nl_isa_supported(NL_ISA_AVX512)) best = NL_ISA_AVX512;
    else if (nl_isa_supported(NL_ISA_AVX2)) best = NL_ISA_AVX2;
    const char *cap = getenv("NEARLINE_ISA");
    if (cap) {
        nl_isa c = best;
        if (strcmp(cap, "scalar") == 0) c = NL_ISA_SCALAR;
        else if (strcmp(cap, "avx2") == 0) c = NL_ISA_AVX2;
        if (c < best) best = c;
    }
    cached = (int)best; /* a benign race: every thread computes the same value */
    return best;
}

nl_dist_fn nl_distance_kernel(nl_metric m, nl_dtype t, nl_isa isa)
{
    if ((unsigned)m > 2 || (unsigned)t > 3 || !nl_isa_supported(isa))
        return NULL;
    switch (isa) {
    case NL_ISA_SCALAR: return nl_kernels_scalar[m][t];
    case NL_ISA_AVX2: return nl_kernels_avx2[m][t];
    case NL_ISA_AVX512: return nl_kernels_avx512[m][t];
    }
    return NULL;
}

nl_dist_fn nl_distance_fn(nl_metric m, nl_dtype t)
{
    return nl_distance_kernel(m, t, nl_isa_best());
}
