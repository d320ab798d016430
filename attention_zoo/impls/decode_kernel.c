/* Flash-decoding on the CPU: a few query rows per key/value head against a KV cache, the cache read once.
 *
 * A decode step is memory-bound: each cached key and value is read once and used by a handful of query rows
 * (the G query heads of a group times the T new tokens), a GEMM with N = G*T columns, which BLAS runs at a
 * fraction of the memory bandwidth. This kernel streams the cache in chunks of CHUNK keys: the scores of every
 * row against the chunk (each key row held in L1 while blocks of four query rows take their dot products together), FlashAttention's
 * online softmax (running max and sum per row), and the exp-weighted
 * values accumulated in registers; the next chunk is prefetched while one is computed. The keys are split across
 * threads (split-K) when there are fewer (batch, head) units than threads, and the splits' partials are combined
 * by log-sum-exp, as flash-decoding combines them on a GPU. bfloat16 and float16 caches are widened chunk by chunk.
 *
 * q (units, rows, D) float32, scaled by 1/sqrt(D), rows = G*T ordered g*T + t; k and v: `keys` rows of D
 * elements per unit, unit u starting at u * unit_stride elements; the last T keys are the step's own, and new
 * query t sees keys 0 .. keys - T + t. out (units, rows, D) float32. Built by attention_zoo/impls/decode_kernel.py.
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

/* Keys per chunk; the next chunk's keys and values are prefetched into L2 (prefetcht1), one cache line per
 * vector of work, while one is computed. Measured on a 2-core AMD EPYC VM (32k keys, D = 128, one thread): without
 * software prefetch 37-44 ms (its hardware prefetch does not keep up), prefetching into L2 one chunk ahead 18-25 ms,
 * into L1 or two chunks ahead slower; chunks of 32-256 keys within noise of each other. */
#define CHUNK 64
#define PREFETCH_L2 2
#define MIN_SPLIT_KEYS 1024 /* a thread's split of one unit's keys is at least this long */
#define ROW_BLOCK 4
#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif

#define UNROLLED _Pragma("GCC unroll 16")

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

typedef struct {
    const float *q; /* (units, rows, dim) */
    const void *k, *v;
    int dtype; /* 0 float32, 1 bfloat16, 2 float16 */
    int64_t units, rows, keys, dim, steps, unit_stride, splits;
    float *max, *sum, *acc; /* per (unit, split): rows, rows, rows * dim */
    int64_t first_item, item_step;
} Job;

static inline vec load(const float *p) {
    vec x;
    memcpy(&x, p, sizeof x);
    return x;
}

static inline void store(float *p, vec x) { memcpy(p, &x, sizeof x); }

/* count bfloat16 (dtype 1) or float16 (dtype 2) elements from src + index, as float32 */
static void widen(const void *base, int dtype, int64_t index, int64_t count, float *restrict dst) {
    if (dtype == 1) {
        const uint16_t *src = (const uint16_t *)base + index;
        uint32_t *bits = (uint32_t *)dst;
        for (int64_t i = 0; i < count; i++) bits[i] = (uint32_t)src[i] << 16;
        return;
    }
    const _Float16 *src = (const _Float16 *)base + index;
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < count; i++) dst[i] = (float)src[i];
}

/* scores[r * CHUNK + j] = q_r . key_j for the chunk's `width` keys; rows is a multiple of ROW_BLOCK, whose dot
 * products are taken together (independent FMA chains, the key's lanes loaded once). The next chunk's keys
 * (`ahead`; NULL: none) are prefetched on the way. */
static void chunk_scores(const float *restrict q, const float *restrict keys, int64_t rows, int64_t dim,
                         int64_t width, float *restrict scores, const float *ahead) {
    const int64_t whole = dim / LANES * LANES;
    for (int64_t j = 0; j < width; j++) {
        const float *key = keys + j * dim;
        for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
            vec a[ROW_BLOCK] = {{0}};
            for (int64_t d = 0; d < whole; d += LANES) {
                if (ahead && r0 == 0) __builtin_prefetch(ahead + j * dim + d, 0, PREFETCH_L2);
                const vec x = load(key + d);
                UNROLLED for (int rr = 0; rr < ROW_BLOCK; rr++) a[rr] += load(q + (r0 + rr) * dim + d) * x;
            }
            UNROLLED for (int rr = 0; rr < ROW_BLOCK; rr++) {
                const float *qr = q + (r0 + rr) * dim;
                float total = 0.0f;
                for (int i = 0; i < LANES; i++) total += a[rr][i];
                for (int64_t d = whole; d < dim; d++) total += qr[d] * key[d];
                scores[(r0 + rr) * CHUNK + j] = total;
            }
        }
    }
}

/* acc[r] += sum_j p[r * CHUNK + j] value_j: the accumulators of ROW_BLOCK rows for one vector of lanes held in
 * registers while the chunk's values stream past; the next chunk's values (`ahead`; NULL: none) are prefetched. */
static void chunk_values(const float *restrict p, const float *restrict values, int64_t rows, int64_t dim,
                         int64_t width, float *restrict acc, const float *ahead) {
    const int64_t whole = dim / LANES * LANES;
    for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
        for (int64_t d = 0; d < whole; d += LANES) {
            vec a[ROW_BLOCK];
            UNROLLED for (int rr = 0; rr < ROW_BLOCK; rr++) a[rr] = load(acc + (r0 + rr) * dim + d);
            for (int64_t j = 0; j < width; j++) {
                if (ahead && r0 == 0) __builtin_prefetch(ahead + j * dim + d, 0, PREFETCH_L2);
                const vec x = load(values + j * dim + d);
                UNROLLED for (int rr = 0; rr < ROW_BLOCK; rr++) a[rr] += p[(r0 + rr) * CHUNK + j] * x;
            }
            UNROLLED for (int rr = 0; rr < ROW_BLOCK; rr++) store(acc + (r0 + rr) * dim + d, a[rr]);
        }
        for (int64_t d = whole; d < dim; d++)
            for (int64_t rr = r0; rr < r0 + ROW_BLOCK; rr++)
                for (int64_t j = 0; j < width; j++) acc[rr * dim + d] += p[rr * CHUNK + j] * values[j * dim + d];
    }
}

/* One unit's keys begin .. end-1: each row's running max, sum of exp and exp-weighted values (rows of `rows`;
 * the block-padding rows past it attend nothing and are dropped). */
static int partial(const Job *job, int64_t unit, int64_t begin, int64_t end, float *max, float *sum, float *acc) {
    const int64_t rows = job->rows, dim = job->dim, steps = job->steps;
    const int64_t padded = (rows + ROW_BLOCK - 1) / ROW_BLOCK * ROW_BLOCK, base = unit * job->unit_stride;
    float *q = calloc(padded * dim, sizeof(float)), *scores = calloc(padded * CHUNK, sizeof(float));
    float *sums = calloc(padded * dim, sizeof(float)), *wide = job->dtype ? malloc(sizeof(float) * CHUNK * dim) : NULL;
    if (!q || !scores || !sums || (job->dtype && !wide)) {
        free(q), free(scores), free(sums), free(wide);
        return -1;
    }
    memcpy(q, job->q + unit * rows * dim, sizeof(float) * rows * dim);
    for (int64_t r = 0; r < rows; r++) max[r] = -FLT_MAX, sum[r] = 0.0f;
    for (int64_t start = begin; start < end; start += CHUNK) {
        const int64_t width = end - start < CHUNK ? end - start : CHUNK;
        const float *keys = (const float *)job->k + base + start * dim;
        const int ahead = !wide && start + 2 * CHUNK <= end;
        if (wide) widen(job->k, job->dtype, base + start * dim, width * dim, wide), keys = wide;
        chunk_scores(q, keys, padded, dim, width, scores, ahead ? keys + CHUNK * dim : NULL);
        for (int64_t r = 0; r < rows; r++) {
            /* new query t sees the keys before the step and the step's own keys up to its own */
            const int64_t allowed = job->keys - steps + (r % steps) + 1;
            const int64_t seen = allowed <= start ? 0 : (allowed - start < width ? allowed - start : width);
            float *s = scores + r * CHUNK;
            float chunk_max = -FLT_MAX, chunk_sum = 0.0f;
            for (int64_t j = 0; j < seen; j++) chunk_max = s[j] > chunk_max ? s[j] : chunk_max;
            const float new_max = chunk_max > max[r] ? chunk_max : max[r];
            const float rescale = sum[r] > 0.0f ? expf(max[r] - new_max) : 0.0f;
            for (int64_t j = 0; j < seen; j++) s[j] = expf(s[j] - new_max), chunk_sum += s[j];
            for (int64_t j = seen; j < width; j++) s[j] = 0.0f;
            if (seen) {
                for (int64_t d = 0; d < dim; d++) sums[r * dim + d] *= rescale;
                sum[r] = sum[r] * rescale + chunk_sum, max[r] = new_max;
            }
        }
        const float *values = (const float *)job->v + base + start * dim;
        if (wide) widen(job->v, job->dtype, base + start * dim, width * dim, wide), values = wide;
        chunk_values(scores, values, padded, dim, width, sums, ahead ? values + CHUNK * dim : NULL);
    }
    memcpy(acc, sums, sizeof(float) * rows * dim);
    free(q), free(scores), free(sums), free(wide);
    return 0;
}

typedef struct {
    const Job *job;
    int status;
} Worker;

static void *work(void *arg) {
    Worker *worker = arg;
    const Job *job = worker->job;
    const int64_t items = job->units * job->splits, per_split = (job->keys + job->splits - 1) / job->splits;
    for (int64_t item = job->first_item; item < items && worker->status == 0; item += job->item_step) {
        const int64_t unit = item / job->splits, begin = item % job->splits * per_split;
        const int64_t end = begin + per_split < job->keys ? begin + per_split : job->keys;
        worker->status = partial(job, unit, begin, end, job->max + item * job->rows, job->sum + item * job->rows,
                                 job->acc + item * job->rows * job->dim);
    }
    return NULL;
}

/* The splits' partials of each row combined by log-sum-exp into out. */
static void combine(const Job *job, float *out) {
    const int64_t rows = job->rows, dim = job->dim, splits = job->splits;
    for (int64_t unit = 0; unit < job->units; unit++) {
        for (int64_t r = 0; r < rows; r++) {
            float top = -FLT_MAX, total = 0.0f;
            for (int64_t s = 0; s < splits; s++) {
                const int64_t at = (unit * splits + s) * rows + r;
                if (job->sum[at] > 0.0f && job->max[at] > top) top = job->max[at];
            }
            float *o = out + (unit * rows + r) * dim;
            memset(o, 0, sizeof(float) * dim);
            for (int64_t s = 0; s < splits; s++) {
                const int64_t at = (unit * splits + s) * rows + r;
                if (job->sum[at] <= 0.0f) continue; /* a split wholly after this row's keys */
                const float weight = expf(job->max[at] - top);
                total += weight * job->sum[at];
                for (int64_t d = 0; d < dim; d++) o[d] += weight * job->acc[at * dim + d];
            }
            for (int64_t d = 0; d < dim; d++) o[d] /= total;
        }
    }
}

/* Returns 0, or -1 where memory or a thread could not be had (out is then undefined). */
int az_decode_step(const float *q, const void *k, const void *v, float *out, int dtype, int64_t units, int64_t rows,
                   int64_t keys, int64_t dim, int64_t steps, int64_t unit_stride, int64_t threads) {
    int64_t splits = threads <= units ? 1 : (threads + units - 1) / units;
    if (splits > keys / MIN_SPLIT_KEYS) splits = keys / MIN_SPLIT_KEYS > 1 ? keys / MIN_SPLIT_KEYS : 1;
    const int64_t items = units * splits;
    threads = threads < 1 ? 1 : (threads > items ? items : threads);
    float *max = malloc(sizeof(float) * items * rows), *sum = malloc(sizeof(float) * items * rows);
    float *acc = malloc(sizeof(float) * items * rows * dim);
    Job *jobs = malloc(sizeof(Job) * threads);
    Worker *workers = malloc(sizeof(Worker) * threads);
    pthread_t *handles = malloc(sizeof(pthread_t) * threads);
    int status = max && sum && acc && jobs && workers && handles ? 0 : -1;
    int64_t started = 0;
    for (int64_t t = 0; status == 0 && t < threads; t++) {
        jobs[t] = (Job){q, k, v, dtype, units, rows, keys, dim, steps, unit_stride, splits, max, sum, acc, t, threads};
        workers[t] = (Worker){&jobs[t], 0};
        if (t == threads - 1) work(&workers[t]); /* the calling thread takes the last share */
        else if (pthread_create(&handles[t], NULL, work, &workers[t]) != 0) status = -1;
        else started++;
    }
    for (int64_t t = 0; t < started; t++) pthread_join(handles[t], NULL);
    for (int64_t t = 0; status == 0 && t < threads; t++) status = workers[t].status;
    if (status == 0) combine(&jobs[0], out);
    free(handles), free(workers), free(jobs), free(acc), free(sum), free(max);
    return status;
}
