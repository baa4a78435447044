/* replay_main.c — runs a libFuzzer target without libFuzzer, for the ASan+UBSan test build
 * (gcc, no -fsanitize=fuzzer): every file of the corpus directories given, then seeded
 * mutations of them (bit flips, byte overwrites, truncations, insertions, splices of two
 * inputs) for the given number of seconds. A crash or a sanitizer report fails the test;
 * `make fuzz` runs the same targets under libFuzzer's coverage-guided search.
 * Usage: TARGET --seconds S --seed N DIR... */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    uint8_t *p;
    size_t n;
} input;

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int load(const char *path, input *in)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    in->p = malloc(n > 0 ? (size_t)n : 1);
    in->n = n > 0 && in->p && fread(in->p, 1, (size_t)n, f) == (size_t)n ? (size_t)n : 0;
    fclose(f);
    return in->p ? 0 : -1;
}

int main(int argc, char **argv)
{
    double seconds = 10;
    rng_state = 0x9e3779b97f4a7c15ull;
    input *ins = NULL;
    size_t nin = 0, cap = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
            continue;
        }
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            rng_state = strtoull(argv[++i], NULL, 10) * 2654435761ull + 1;
            continue;
        }
        DIR *d = opendir(argv[i]);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            char p[4096];
            struct stat st;
            snprintf(p, sizeof p, "%s/%s", argv[i], e->d_name);
            if (stat(p, &st) != 0 || !S_ISREG(st.st_mode))
                continue;
            if (nin == cap) {
                cap = cap ? cap * 2 : 64;
                input *ni = realloc(ins, cap * sizeof *ins);
                if (!ni)
                    return 2;
                ins = ni;
            }
            if (load(p, &ins[nin]) == 0)
                LLVMFuzzerTestOneInput(ins[nin].p, ins[nin].n), nin++;
        }
        if (d)
            closedir(d);
    }
    if (nin == 0) {
        fprintf(stderr, "replay: no corpus input\n");
        return 2;
    }
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned long runs = 0;
    uint8_t *buf = malloc(1 << 20);
    if (!buf)
        return 2;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 >= seconds)
            break;
        const input *a = &ins[rnd() % nin];
        size_t n = a->n < (1u << 20) ? a->n : (1u << 20);
        memcpy(buf, a->p, n);
        for (int m = 0, k = 1 + (int)(rnd() % 4); m < k; m++) {
            switch (rnd() % 5) {
            case 0: if (n) buf[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8)); break;
            case 1: if (n) buf[rnd() % n] = (uint8_t)rnd(); break;
            case 2: if (n) n = rnd() % n + 1; break;
            case 3:
                if (n + 8 < (1u << 20)) {
                    size_t at = n ? rnd() % n : 0;
                    memmove(buf + at + 8, buf + at, n - at);
                    for (int j = 0; j < 8; j++) buf[at + j] = (uint8_t)rnd();
                    n += 8;
                }
                break;
            default: {
                const input *b = &ins[rnd() % nin];
                size_t at = n ? rnd() % n : 0, take = b->n ? rnd() % b->n : 0;
                if (at + take <= (1u << 20) && b->n) {
                    memcpy(buf + at, b->p + (b->n - take), take);
                    if (at + take > n) n = at + take;
                }
            }
            }
        }
        if (n && rnd() % 4 == 0) /* keep the selector byte of the original: the same reader */
            buf[0] = a->n ? a->p[0] : buf[0];
        LLVMFuzzerTestOneInput(buf, n);
        runs++;
    }
    printf("replay: %zu corpus inputs, %lu mutations in %.0f s, no crash\n", nin, runs, seconds);
    free(buf);
    for (size_t i = 0; i < nin; i++)
        free(ins[i].p);
    free(ins);
    return 0;
}
