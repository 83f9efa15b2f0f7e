/* gpt2kit.inference._decode: one decode step of GPT-2 for a few rows, in C, on the CPU.

A decode step reads every weight once per token; in Python each of its ~200 small torch ops costs
a dispatch, which at batch 1 is as much time as the weights themselves. This file runs the whole
step (embedding, 12 blocks, head) in one call, on a pool of its own threads, with the weights and
the paged KV cache the torch model and engine already hold (raw pointers; nothing is copied).

The model it computes is model.py's, token for token: pre-LN blocks, tanh GELU, attention over
each row's blocks of the pool (inference/kv.py's layout). Linear weights come in four formats:
fp32 and bf16 (N, K) row-major, int8 (N, K) with one fp32 scale per row, and int4 (N, K/2) bytes
(quantize.pack_nibbles: per block of 128 inputs, byte j holds input j in its low nibble and input
j + 64 in its high one; inputs past the last block by groups of 32, byte j holding j and j + 16)
with a bf16 (scale, min) pair per group of 32: w = q * scale + min. Activations are fp32, except that
int8 and int4 weights meet int8-rounded activations on CPUs with AVX512-VNNI (quantize_rows), and
fp32 and bf16 weights have their own AVX-512 kernels there (rows_dense_avx512).

The loops are plain C written for the compiler's vectorizer (#pragma omp simd, built with
-fopenmp-simd, no OpenMP runtime); on x86-64 each kernel is compiled for AVX-512, AVX2 and the
baseline, picked at load by the CPU (target_clones). The reference is the torch model:
tests/test_native.py checks equal logits, and the engine falls back to torch without this module.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { F32 = 0, BF16 = 1, Q8 = 2, Q4 = 3 };
#define Q4_GROUP 32
#define MAX_THREADS 64
#define MAX_INT8_K 32768 /* inputs of a linear on int8 activations (gpt2-xl's widest: 6400) */
#define SPIN 4000 /* pauses (~40 ns each) a worker waits for work before it sleeps */
#define CHUNK 64  /* output rows a thread takes at a time (a multiple of 4, the fp32 kernel's rows per x load) */

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KERNEL
#endif

/* int8 x int8 dot products (VNNI: vpdpbusd) for the int8 and int4 weights; picked at run time */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define VNNI_KERNELS 1
#define VNNI __attribute__((target("avx2,fma,avx512f,avx512vl,avx512bw,avx512vnni")))
#endif

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() ((void)0)
#endif

static inline float bf16_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_bf16(float f) { /* round to nearest even, as torch's .to(torch.bfloat16) */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

/* -- the model, as pointers into the torch tensors -------------------------------------------- */
typedef struct {
    int fmt, N, K;
    const void *w;         /* f32 / bf16 / int8 (N, K); int4: uint8 (N, K / 2) */
    const float *scale;    /* int8: (N,) */
    const uint16_t *sm;    /* int4: bf16 (N, K / 32, 2): scale, min */
    const float *bias;     /* (N,) or NULL */
} Linear;

typedef struct { const float *w, *b; } Norm;
typedef struct { Norm ln_1, ln_2; Linear c_attn, attn_proj, c_fc, mlp_proj; } Layer;

typedef struct {
    int n_layer, n_head, C, V, block_len, block_size, emb_bf16, kv_bf16;
    long num_blocks;
    const void *wte, *wpe; /* (V, C), (block_size, C): fp32, or bf16 when emb_bf16 */
    Layer *h;
    Norm ln_f;
    Linear head;
    void *k, *v;           /* pools (n_layer, num_blocks, block_len, n_head, C / n_head) */
    float eps;
    int cap_rows;          /* scratch below holds this many rows */
    int int8_acts;         /* int8 and int4 linears take int8 activations (VNNI kernels; see quantize_rows) */
    float *x, *xn, *qkv, *att, *mlp, *tmp, *xsum, *scores;
    float *xd;             /* (R, 4C / 32) each group's activation scale */
    int8_t *qx;            /* (R, 4C) the activations as int8 codes */
} Model;

/* -- a pool of threads: run(fn) calls fn(arg, tid, nth) on nth threads and waits for all --------- */
typedef void (*task_fn)(void *arg, int tid, int nth);
static struct {
    int nworkers;
    pthread_t th[MAX_THREADS];
    _Atomic uint64_t gen;  /* (run counter << 8) | threads of that run */
    uint64_t born[MAX_THREADS + 1]; /* gen when each worker was made: runs after it are its to join */
    _Atomic int pending, sleeping;
    task_fn fn;
    void *arg;
    pthread_mutex_t mu, step;
    pthread_cond_t cv;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .step = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void *worker(void *p) {
    int tid = (int)(intptr_t)p;
    uint64_t seen = P.born[tid]; /* not a fresh read: the first run may already have started */
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&P.gen, memory_order_acquire)) == seen) {
            if (++spins < SPIN) { cpu_relax(); continue; }
            pthread_mutex_lock(&P.mu); /* sleep; run() wakes sleepers after it bumps gen */
            atomic_fetch_add(&P.sleeping, 1);
            while (atomic_load(&P.gen) == seen) pthread_cond_wait(&P.cv, &P.mu);
            atomic_fetch_sub(&P.sleeping, 1);
            pthread_mutex_unlock(&P.mu);
        }
        seen = g;
        int nth = (int)(g & 0xff);
        if (tid < nth) {
            P.fn(P.arg, tid, nth);
            atomic_fetch_sub_explicit(&P.pending, 1, memory_order_release);
        }
    }
    return NULL;
}

static void after_fork_child(void) { /* the workers did not survive the fork: start afresh */
    P.nworkers = 0;
    atomic_store(&P.sleeping, 0);
    pthread_mutex_init(&P.mu, NULL);
    pthread_mutex_init(&P.step, NULL);
    pthread_cond_init(&P.cv, NULL);
}

static int ensure_workers(int n) {
    while (P.nworkers < n) {
        P.born[P.nworkers + 1] = atomic_load(&P.gen);
        if (pthread_create(&P.th[P.nworkers], NULL, worker, (void *)(intptr_t)(P.nworkers + 1))) return -1;
        pthread_detach(P.th[P.nworkers]);
        P.nworkers++;
    }
    return 0;
}

static int nthreads; /* of the step now running */

static void run(task_fn fn, void *arg) {
    int nth = nthreads;
    if (nth <= 1) { fn(arg, 0, 1); return; }
    P.fn = fn;
    P.arg = arg;
    atomic_store(&P.pending, nth - 1);
    uint64_t g = atomic_load(&P.gen);
    atomic_store(&P.gen, (((g >> 8) + 1) << 8) | (uint64_t)nth);
    if (atomic_load(&P.sleeping)) {
        pthread_mutex_lock(&P.mu);
        pthread_cond_broadcast(&P.cv);
        pthread_mutex_unlock(&P.mu);
    }
    fn(arg, 0, nth);
    /* wait for the workers; past a short spin, give the core away: on a busy machine the worker we
       wait for may be queued behind us on this very core */
    for (int spins = 0; atomic_load_explicit(&P.pending, memory_order_acquire); spins++)
        if (spins < SPIN) cpu_relax();
        else sched_yield();
}

static void split(int n, int align, int tid, int nth, int *lo, int *hi) {
    int chunk = ((n + nth - 1) / nth + align - 1) / align * align;
    *lo = tid * chunk < n ? tid * chunk : n;
    *hi = *lo + chunk < n ? *lo + chunk : n;
}

/* -- matrix-vector kernels: y[r, n] = W[n] . x[r] for n in [n0, n1), every row r ------------------ */
static inline __attribute__((always_inline)) float weight(int fmt, const void *W, long i) {
    switch (fmt) {
    case BF16: return bf16_f32(((const uint16_t *)W)[i]);
    case Q8: return (float)((const int8_t *)W)[i];
    default: return ((const float *)W)[i];
    }
}

/* fp32, bf16 and int8 (N, K) weights; each caller below passes a constant fmt, so the compiler makes
   one loop per format with its load folded in. int8 rows are scaled after the dot product. */
static inline __attribute__((always_inline)) void rows_dense(int fmt, const Linear *L, int n0, int n1, const float *x, int R,
                                                              float *y, int ldy) {
    const void *W = L->w;
    long K = L->K;
    int n = n0;
    for (; n + 4 <= n1; n += 4) { /* four weight rows share each load of x */
        for (int r = 0; r < R; r++) {
            const float *xr = x + r * K;
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
            for (long k = 0; k < K; k++) {
                float xv = xr[k];
                a0 += weight(fmt, W, n * K + k) * xv; a1 += weight(fmt, W, (n + 1) * K + k) * xv;
                a2 += weight(fmt, W, (n + 2) * K + k) * xv; a3 += weight(fmt, W, (n + 3) * K + k) * xv;
            }
            float *yr = y + (long)r * ldy + n;
            yr[0] = a0; yr[1] = a1; yr[2] = a2; yr[3] = a3;
        }
    }
    for (; n < n1; n++)
        for (int r = 0; r < R; r++) {
            const float *xr = x + r * K;
            float a0 = 0;
#pragma omp simd reduction(+ : a0)
            for (long k = 0; k < K; k++) a0 += weight(fmt, W, n * K + k) * xr[k];
            y[(long)r * ldy + n] = a0;
        }
    if (fmt == Q8)
        for (int r = 0; r < R; r++)
            for (n = n0; n < n1; n++) y[(long)r * ldy + n] *= L->scale[n];
}

KERNEL static void rows_f32(const Linear *L, int n0, int n1, const float *x, int R, float *y, int ldy) { rows_dense(F32, L, n0, n1, x, R, y, ldy); }
KERNEL static void rows_bf16(const Linear *L, int n0, int n1, const float *x, int R, float *y, int ldy) { rows_dense(BF16, L, n0, n1, x, R, y, ldy); }
KERNEL static void rows_q8(const Linear *L, int n0, int n1, const float *x, int R, float *y, int ldy) { rows_dense(Q8, L, n0, n1, x, R, y, ldy); }

/* int4: sum_g scale_g * (q_g . x_g) + sum_g min_g * sum(x_g); xsum (R, K / 32) holds the sums of x */
/* one int4 weight row's products with fp32 activations x, in pack_nibbles' layout */
static inline __attribute__((always_inline)) float row_q4(const uint8_t *b, const uint16_t *sm, const float *x, const float *xs, int G) {
    float acc[16] = {0}, mins = 0;
    int g = 0;
    for (; g + 4 <= G; g += 4, b += 64) { /* a block of 128 inputs: groups g .. g + 3 */
        const float *xg = x + g * Q4_GROUP;
        float s0 = bf16_f32(sm[2 * g]), s1 = bf16_f32(sm[2 * g + 2]), s2 = bf16_f32(sm[2 * g + 4]), s3 = bf16_f32(sm[2 * g + 6]);
#pragma omp simd
        for (int j = 0; j < 16; j++)
            acc[j] += s0 * ((float)(b[j] & 15) * xg[j] + (float)(b[j + 16] & 15) * xg[j + 16])
                      + s1 * ((float)(b[j + 32] & 15) * xg[j + 32] + (float)(b[j + 48] & 15) * xg[j + 48])
                      + s2 * ((float)(b[j] >> 4) * xg[j + 64] + (float)(b[j + 16] >> 4) * xg[j + 80])
                      + s3 * ((float)(b[j + 32] >> 4) * xg[j + 96] + (float)(b[j + 48] >> 4) * xg[j + 112]);
    }
    for (; g < G; g++, b += 16) { /* the groups after the last block */
        const float *xg = x + g * Q4_GROUP;
        float s = bf16_f32(sm[2 * g]);
#pragma omp simd
        for (int j = 0; j < 16; j++) acc[j] += s * ((float)(b[j] & 15) * xg[j] + (float)(b[j] >> 4) * xg[j + 16]);
    }
    for (g = 0; g < G; g++) mins += bf16_f32(sm[2 * g + 1]) * xs[g];
    for (int j = 0; j < 16; j++) mins += acc[j];
    return mins;
}

KERNEL static void rows_q4(const Linear *L, int n0, int n1, const float *x, int R, float *y, int ldy, const float *xsum) {
    int K = L->K, G = K / Q4_GROUP;
    for (int n = n0; n < n1; n++)
        for (int r = 0; r < R; r++)
            y[(long)r * ldy + n] = row_q4((const uint8_t *)L->w + (long)n * (K / 2), L->sm + (long)n * G * 2, x + (long)r * K, xsum + (long)r * G, G);
}

/* -- the same with int8 activations ----------------------------------------------------------------
   As ggml's q8_0: each group of 32 inputs of a row becomes int8 codes and one scale (x ~ qx * xd),
   so a group's dot product is one vpdpbusd (unsigned bytes times signed bytes, summed in int32)
   and one fp32 multiply-add. The cost is activation rounding (|error| <= xd / 2 per input);
   tests/test_native.py states the logit tolerance; bench/step_quality.py measures the perplexity. */

#ifdef VNNI_KERNELS
VNNI static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* one group's 32 products as 8 int32 sums. int8 weights: |x| as the unsigned side, the weight with x's sign as the
   signed side. int4: the codes (0..15) are the unsigned side; the group's 16 bytes unpack to its 32 codes in input order */
VNNI static inline __m256i q8_group(const int8_t *w, const int8_t *xq) {
    __m256i x = _mm256_loadu_si256((const __m256i *)xq), wv = _mm256_loadu_si256((const __m256i *)w);
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(x, x), _mm256_sign_epi8(wv, x));
}

VNNI static inline __m256i q4_group(const uint8_t *q, const int8_t *xq) {
    __m128i b = _mm_loadu_si128((const __m128i *)q);
    __m256i codes = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(15));
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, _mm256_loadu_si256((const __m256i *)xq));
}

/* two groups (64 inputs) in one 512-bit vpdpbusd: lanes 0-7 hold the first group's sums, 8-15 the second's */
VNNI static inline __m512i q8_pair(const int8_t *w, const int8_t *xq) {
    __m512i x = _mm512_loadu_si512(xq), wv = _mm512_loadu_si512(w);
    __m512i ws = _mm512_mask_sub_epi8(wv, _mm512_movepi8_mask(x), _mm512_setzero_si512(), wv); /* w with x's sign */
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(x), ws);
}

VNNI static inline __m512i q4_pair(const uint8_t *q, const int8_t *xq) {
    __m256i b = _mm256_loadu_si256((const __m256i *)q), hi = _mm256_srli_epi16(b, 4);
    __m512i codes = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_permute2x128_si256(b, hi, 0x20)), _mm256_permute2x128_si256(b, hi, 0x31), 1);
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(codes, _mm512_set1_epi8(15)), _mm512_loadu_si512(xq));
}

/* a pair of groups' scales s[i], s[i + 1] spread as q8_pair's lanes */
VNNI static inline __m512 pair_scales(const float *s) {
    const __m512i two = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(two, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd((const double *)s))));
}

/* sum_g s[g] * (w_g . qx_g) over one int8 weight row, two groups per step in two chains so the multiply-adds
   do not wait on each other */
VNNI static inline float row_dot_q8(const int8_t *w, const int8_t *xq, const float *s, int G) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int g = 0;
    for (; g + 4 <= G; g += 4) {
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q8_pair(w + g * 32, xq + g * 32)), pair_scales(s + g), a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q8_pair(w + g * 32 + 64, xq + g * 32 + 64)), pair_scales(s + g + 2), a1);
    }
    for (; g + 2 <= G; g += 2) a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q8_pair(w + g * 32, xq + g * 32)), pair_scales(s + g), a0);
    float t = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    if (g < G) t += hsum8(_mm256_mul_ps(_mm256_cvtepi32_ps(q8_group(w + g * 32, xq + g * 32)), _mm256_set1_ps(s[g]))); /* an odd group count */
    return t;
}

/* the same for an int4 row in pack_nibbles' layout: each 128-input block is one 64-byte load, whose low nibbles
   (inputs 0-63) and high nibbles (64-127) each meet their activations in one vpdpbusd, with no shuffles (the
   per-group layout needed four per 64 inputs; this one reads the weights at the memory's pace) */
VNNI static inline float row_dot_q4(const uint8_t *w, const int8_t *xq, const float *s, int G) {
    const __m512i m = _mm512_set1_epi8(15);
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int g = 0;
    for (; g + 4 <= G; g += 4, w += 64) {
        __m512i b = _mm512_loadu_si512(w);
        __m512i lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(b, m), _mm512_loadu_si512(xq + g * 32));
        __m512i hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(_mm512_srli_epi16(b, 4), m), _mm512_loadu_si512(xq + g * 32 + 64));
        a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), pair_scales(s + g), a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), pair_scales(s + g + 2), a1);
    }
    if (g + 2 <= G) { a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q4_pair(w, xq + g * 32)), pair_scales(s + g), a0); g += 2; w += 32; }
    float t = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    if (g < G) t += hsum8(_mm256_mul_ps(_mm256_cvtepi32_ps(q4_group(w, xq + g * 32)), _mm256_set1_ps(s[g])));
    return t;
}

/* int4 groups' bf16 (scale, min) pairs of one weight row: sd[g] = scale_g * xd[g], and sum_g min_g * xsum[g] */
VNNI static float q4_scales(const uint16_t *sm, const float *xd, const float *xsum, int G, float *sd) {
    __m512 mins = _mm512_setzero_ps();
    for (int g = 0; g < G; g += 16) {
        __mmask16 k = G - g >= 16 ? 0xffff : (__mmask16)((1u << (G - g)) - 1);
        __m512i u = _mm512_maskz_loadu_epi32(k, sm + 2 * g); /* each lane: min << 16 | scale, as bf16 bits */
        __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(u, 16)), mn = _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xffff0000)));
        _mm512_mask_storeu_ps(sd + g, k, _mm512_mul_ps(scale, _mm512_maskz_loadu_ps(k, xd + g)));
        mins = _mm512_fmadd_ps(mn, _mm512_maskz_loadu_ps(k, xsum + g), mins);
    }
    return _mm512_reduce_add_ps(mins);
}

/* fp32 and bf16 weights on AVX-512: one weight row after another, so the weights stream in memory order
   (the portable rows_dense reads four rows at once: 20-25% slower at batch 1 here); each 16-weight
   piece of a weight row meets up to four activation rows while it is in a register. fmt is a
   constant at every call, so each format gets its own loops. */
VNNI static inline __attribute__((always_inline)) __m512 load16(int fmt, const void *w, long k) {
    if (fmt == BF16) /* bf16 is the top half of an fp32: widen and shift, exactly */
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k))), 16));
    return _mm512_loadu_ps((const float *)w + k);
}

VNNI static inline __attribute__((always_inline)) void dot4(int fmt, const void *w, const float *x, long K, int nr, float *y, int ldy) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    long k = 0;
    if (nr == 1) /* four chains over one activation row, so the multiply-adds do not wait on each other */
        for (; k + 64 <= K; k += 64) {
            a0 = _mm512_fmadd_ps(load16(fmt, w, k), _mm512_loadu_ps(x + k), a0);
            a1 = _mm512_fmadd_ps(load16(fmt, w, k + 16), _mm512_loadu_ps(x + k + 16), a1);
            a2 = _mm512_fmadd_ps(load16(fmt, w, k + 32), _mm512_loadu_ps(x + k + 32), a2);
            a3 = _mm512_fmadd_ps(load16(fmt, w, k + 48), _mm512_loadu_ps(x + k + 48), a3);
        }
    for (; k + 16 <= K; k += 16) {
        __m512 wv = load16(fmt, w, k);
        a0 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + k), a0);
        if (nr > 1) a1 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + K + k), a1);
        if (nr > 2) a2 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + 2 * K + k), a2);
        if (nr > 3) a3 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + 3 * K + k), a3);
    }
    __m512 acc[4] = {a0, a1, a2, a3};
    if (nr == 1) acc[0] = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    for (int r = 0; r < nr; r++) {
        float t = _mm512_reduce_add_ps(acc[r]);
        for (long j = k; j < K; j++) t += weight(fmt, w, j) * x[r * K + j];
        y[(long)r * ldy] = t;
    }
}

/* four weight rows times four activation rows, 16 accumulators: half a load per multiply-add, for
   batches, where the products and not the weight bytes bound the time (K a multiple of 16) */
VNNI static inline __attribute__((always_inline)) void dot_4x4(int fmt, const void *w, const float *x, long K, float *y, int ldy) {
    __m512 acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int r = 0; r < 4; r++) acc[i][r] = _mm512_setzero_ps();
    for (long k = 0; k < K; k += 16) {
        __m512 xv[4];
        for (int r = 0; r < 4; r++) xv[r] = _mm512_loadu_ps(x + r * K + k);
        for (int i = 0; i < 4; i++) {
            __m512 wv = load16(fmt, w, i * K + k);
            for (int r = 0; r < 4; r++) acc[i][r] = _mm512_fmadd_ps(wv, xv[r], acc[i][r]);
        }
    }
    for (int i = 0; i < 4; i++)
        for (int r = 0; r < 4; r++) y[(long)r * ldy + i] = _mm512_reduce_add_ps(acc[i][r]);
}

VNNI static inline __attribute__((always_inline)) void rows_dense_avx512(int fmt, const Linear *L, int n0, int n1, const float *x, int R,
                                                                         float *y, int ldy) {
    long K = L->K, esize = fmt == BF16 ? 2 : 4;
    const char *W = L->w;
    int n = n0;
    if (R >= 4 && K % 16 == 0) /* batches: blocks of 4 x 4, then the rows left over below */
        for (; n + 4 <= n1; n += 4) {
            int r = 0;
            for (; r + 4 <= R; r += 4) dot_4x4(fmt, W + n * K * esize, x + r * K, K, y + (long)r * ldy + n, ldy);
            for (int i = 0; i < 4 && r < R; i++) dot4(fmt, W + (n + i) * K * esize, x + r * K, K, R - r, y + (long)r * ldy + n + i, ldy);
        }
    for (; n < n1; n++)
        for (int r = 0; r < R; r += 4) {
            const void *w = W + n * K * esize;
            const float *xr = x + r * K;
            float *yr = y + (long)r * ldy + n;
            switch (R - r) { /* a constant nr in each call: the branches on it fold away */
            case 1: dot4(fmt, w, xr, K, 1, yr, ldy); break;
            case 2: dot4(fmt, w, xr, K, 2, yr, ldy); break;
            case 3: dot4(fmt, w, xr, K, 3, yr, ldy); break;
            default: dot4(fmt, w, xr, K, 4, yr, ldy); break;
            }
        }
}

VNNI static void rows_f32_avx512(const Linear *L, int n0, int n1, const float *x, int R, float *y, int ldy) { rows_dense_avx512(F32, L, n0, n1, x, R, y, ldy); }
VNNI static void rows_bf16_avx512(const Linear *L, int n0, int n1, const float *x, int R, float *y, int ldy) { rows_dense_avx512(BF16, L, n0, n1, x, R, y, ldy); }

/* GELU (tanh form) on 16 lanes: tanh(u) = (1 - t) / (1 + t) with t = exp(-2|u|), the sign put back; exp as
   Cephes' expf (a degree-6 polynomial after range reduction), within a few fp32 ulps. libm's tanhf, one value
   at a time, was 9% of a batch-8 int8 step. */
VNNI static inline __m512 exp512(__m512 x) { /* x <= 0 here */
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

VNNI static void gelu_rows(const float *o, const float *bias, float *y, int n0, int n1) {
    int n = n0;
    for (; n + 16 <= n1; n += 16) {
        __m512 v = _mm512_loadu_ps(o + n);
        if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + n));
        __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f), _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), v), _mm512_mul_ps(v, v), v));
        __m512 au = _mm512_abs_ps(u), t = exp512(_mm512_mul_ps(_mm512_set1_ps(-2.0f), au));
        __m512 th = _mm512_div_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), t), _mm512_add_ps(_mm512_set1_ps(1.0f), t));
        th = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(th), _mm512_and_si512(_mm512_castps_si512(u), _mm512_set1_epi32((int)0x80000000))));
        _mm512_storeu_ps(y + n, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.0f), th)));
    }
    for (; n < n1; n++) {
        float v = o[n] + (bias ? bias[n] : 0.0f);
        y[n] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
}

/* 32 inputs at a time: the code is x * 127 / max|x| rounded to nearest even (cvtps, as lrintf), so |code| <= 127.
   It runs on the main thread before each int8 Linear, so it is vectorized: libm's fmaxf one value at a time was
   ~0.25 ms of a batch-1 step */
VNNI static void quantize_rows(const float *x, int R, int K, int8_t *qx, float *xd) {
    for (long i = 0; i < (long)R * K / Q4_GROUP; i++) {
        __m512 a = _mm512_loadu_ps(x + i * Q4_GROUP), b = _mm512_loadu_ps(x + i * Q4_GROUP + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        __m512 id = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
        _mm_storeu_si128((__m128i *)(qx + i * Q4_GROUP), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(a, id))));
        _mm_storeu_si128((__m128i *)(qx + i * Q4_GROUP + 16), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(b, id))));
        xd[i] = amax / 127.0f;
    }
}

/* int8 (N, K) weights, one fp32 scale per row */
VNNI static void rows_q8_x8(const Linear *L, int n0, int n1, const int8_t *qx, const float *xd, int R, float *y, int ldy) {
    int K = L->K, G = K / Q4_GROUP;
    for (int n = n0; n < n1; n++)
        for (int r = 0; r < R; r++)
            y[(long)r * ldy + n] = row_dot_q8((const int8_t *)L->w + (long)n * K, qx + (long)r * K, xd + (long)r * G, G) * L->scale[n];
}

/* int4: sum_g scale_g * xd_g * (q_g . qx_g) + sum_g min_g * sum(x_g); the minimum term stays on the exact inputs */
VNNI static void rows_q4_x8(const Linear *L, int n0, int n1, const int8_t *qx, const float *xd, const float *xsum, int R,
                            float *y, int ldy) {
    int K = L->K, G = K / Q4_GROUP;
    float sd[MAX_INT8_K / Q4_GROUP + 16]; /* scale_g * xd_g of one (weight row, row) pair; K <= MAX_INT8_K (checked at load) */
    for (int n = n0; n < n1; n++)
        for (int r = 0; r < R; r++) {
            float mins = q4_scales(L->sm + (long)n * G * 2, xd + (long)r * G, xsum + (long)r * G, G, sd);
            y[(long)r * ldy + n] = row_dot_q4((const uint8_t *)L->w + (long)n * (K / 2), qx + (long)r * K, sd, G) + mins;
        }
}
#endif

static int vnni; /* the AVX-512/VNNI kernels run: the CPU has them (set at module load; avx512() can turn them off) */

static int vnni_supported(void) {
#ifdef VNNI_KERNELS
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx512f")
           && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

/* -- one Linear over the rows, split by output rows across the threads ------------------------ */
enum { STORE = 0, ADD = 1, GELU = 2 };
typedef struct { const Linear *L; const float *x, *xsum; int R; float *y; int ldy, mode; float *tmp; const int8_t *qx; const float *xd; _Atomic int next[MAX_THREADS]; } MatVec;

static inline float gelu(float v) { return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v))); }

/* the rows [n0, n1) of one Linear: the products, then bias and GELU, or the residual add */
static void matvec_rows(const MatVec *m, int n0, int n1) {
    const Linear *L = m->L;
    float *out = m->mode == ADD ? m->tmp : m->y; /* ADD: y is the residual stream, the products go beside it */
#ifdef VNNI_KERNELS
    if (m->qx && L->fmt == Q8) rows_q8_x8(L, n0, n1, m->qx, m->xd, m->R, out, m->ldy);
    else if (m->qx) rows_q4_x8(L, n0, n1, m->qx, m->xd, m->xsum, m->R, out, m->ldy);
    else
#endif
    switch (L->fmt) {
    case F32:
#ifdef VNNI_KERNELS
        if (vnni) { rows_f32_avx512(L, n0, n1, m->x, m->R, out, m->ldy); break; }
#endif
        rows_f32(L, n0, n1, m->x, m->R, out, m->ldy); break;
    case BF16:
#ifdef VNNI_KERNELS
        if (vnni) { rows_bf16_avx512(L, n0, n1, m->x, m->R, out, m->ldy); break; }
#endif
        rows_bf16(L, n0, n1, m->x, m->R, out, m->ldy); break;
    case Q8: rows_q8(L, n0, n1, m->x, m->R, out, m->ldy); break;
    default: rows_q4(L, n0, n1, m->x, m->R, out, m->ldy, m->xsum); break;
    }
    for (int r = 0; r < m->R; r++) {
        float *o = out + (long)r * m->ldy, *y = m->y + (long)r * m->ldy;
#ifdef VNNI_KERNELS
        if (m->mode == GELU && vnni) { gelu_rows(o, L->bias, y, n0, n1); continue; }
#endif
        for (int n = n0; n < n1; n++) {
            float v = o[n] + (L->bias ? L->bias[n] : 0.0f);
            if (m->mode == GELU) y[n] = gelu(v);
            else if (m->mode == ADD) y[n] += v; /* the residual stream */
            else y[n] = v;
        }
    }
}

/* each thread owns an equal share of the rows and works through it in chunks of CHUNK, in memory order (one
   sequential stream per thread: chunks dealt out in turn made each thread's reads jump every chunk, and int8 steps
   ~15% slower); a thread done with its share takes the chunks still untaken in the others', so a thread the
   scheduler holds up (a busy neighbour, a VM's stalls) does less of the work instead of making the others wait */
static void matvec_task(void *arg, int tid, int nth) {
    MatVec *m = arg;
    int N = m->L->N, per = ((N + nth - 1) / nth + CHUNK - 1) / CHUNK; /* chunks in each thread's share */
    for (int i = 0; i < nth; i++) {
        int t = (tid + i) % nth;
        for (int c; (c = atomic_fetch_add_explicit(&m->next[t], 1, memory_order_relaxed)) < per && (t * per + c) * CHUNK < N;) {
            int n0 = (t * per + c) * CHUNK;
            matvec_rows(m, n0, n0 + CHUNK < N ? n0 + CHUNK : N);
        }
    }
}

KERNEL static void group_sums(const float *x, int R, int K, float *xsum) {
    for (int r = 0; r < R; r++)
        for (int g = 0; g < K / Q4_GROUP; g++) {
            float s = 0;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j < Q4_GROUP; j++) s += x[(long)r * K + g * Q4_GROUP + j];
            xsum[(long)r * (K / Q4_GROUP) + g] = s;
        }
}

/* y (R, ldy) = x (R, K) W^T + b, then GELU (mode GELU) or added into y (mode ADD, N <= C) */
static void linear(Model *M, const Linear *L, const float *x, int R, float *y, int ldy, int mode) {
    int q8 = M->int8_acts && (L->fmt == Q8 || L->fmt == Q4);
    if (L->fmt == Q4) group_sums(x, R, L->K, M->xsum);
#ifdef VNNI_KERNELS
    if (q8) quantize_rows(x, R, L->K, M->qx, M->xd); /* q8 needs vnni */
#endif
    MatVec m = {L, x, M->xsum, R, y, ldy, mode, M->tmp, q8 ? M->qx : NULL, M->xd, {0}};
    run(matvec_task, &m);
}

/* the sums run in vector lanes (omp simd): in order, each of the 2 x 25 per token was a chain of C dependent adds
   on the main thread while the workers wait */
KERNEL static void layer_norm(const Norm *nm, const float *x, float *y, int R, int C, float eps) {
    for (int r = 0; r < R; r++) {
        const float *xr = x + (long)r * C;
        float mean = 0, var = 0;
#pragma omp simd reduction(+ : mean)
        for (int c = 0; c < C; c++) mean += xr[c];
        mean /= C;
#pragma omp simd reduction(+ : var)
        for (int c = 0; c < C; c++) var += (xr[c] - mean) * (xr[c] - mean);
        float inv = 1.0f / sqrtf(var / C + eps);
        for (int c = 0; c < C; c++) y[(long)r * C + c] = (xr[c] - mean) * inv * nm->w[c] + (nm->b ? nm->b[c] : 0.0f);
    }
}

/* -- attention of each row's new token over its blocks of the pool ------------------------------ */
typedef struct { Model *M; int layer, R; const int64_t *pos, *table; int nb; } Attend;

static long slot(const Model *M, int layer, long block, int off) { /* element index of (layer, block, off, head 0, 0) */
    return ((layer * M->num_blocks + block) * M->block_len + off) * (long)M->C;
}

/* heads [h0, h1) of row r. Positions run outermost, so each step reads one position's keys (then values) for these
   heads as one contiguous piece of the pool: a loop per head would stride a whole position's C floats per
   read, which the prefetchers do not follow (batch 8 at position 150: a third of the step). scores: (n_head, block_size) */
KERNEL static void attend_heads(Model *M, const Attend *a, int r, int h0, int h1, float *scores) {
    int C = M->C, hs = C / M->n_head, bl = M->block_len, p = (int)a->pos[r], S = M->block_size;
    const float *q = M->qkv + (long)r * 3 * C;
    const int64_t *tab = a->table + (long)r * a->nb;
    float scale = 1.0f / sqrtf((float)hs), mx[h1 - h0], sum[h1 - h0];
    for (int h = h0; h < h1; h++) mx[h - h0] = -INFINITY, sum[h - h0] = 0;
    for (int t = 0; t <= p; t++) {
        long i = slot(M, a->layer, tab[t / bl], t % bl);
        for (int h = h0; h < h1; h++) {
            const float *qh = q + h * hs;
            float s = 0;
            if (M->kv_bf16) {
                const uint16_t *k = (const uint16_t *)M->k + i + h * hs;
#pragma omp simd reduction(+ : s)
                for (int d = 0; d < hs; d++) s += qh[d] * bf16_f32(k[d]);
            } else {
                const float *k = (const float *)M->k + i + h * hs;
#pragma omp simd reduction(+ : s)
                for (int d = 0; d < hs; d++) s += qh[d] * k[d];
            }
            scores[h * S + t] = s * scale;
            mx[h - h0] = s * scale > mx[h - h0] ? s * scale : mx[h - h0];
        }
    }
    for (int h = h0; h < h1; h++) {
        float *sc = scores + h * S;
        for (int t = 0; t <= p; t++) sum[h - h0] += sc[t] = expf(sc[t] - mx[h - h0]);
    }
    float *out = M->att + (long)r * C;
    for (int d = h0 * hs; d < h1 * hs; d++) out[d] = 0;
    for (int t = 0; t <= p; t++) {
        long i = slot(M, a->layer, tab[t / bl], t % bl);
        for (int h = h0; h < h1; h++) {
            float w = scores[h * S + t] / sum[h - h0], *o = out + h * hs;
            if (M->kv_bf16) { /* one loop per pool type, so each vectorizes */
                const uint16_t *v = (const uint16_t *)M->v + i + h * hs;
#pragma omp simd
                for (int d = 0; d < hs; d++) o[d] += w * bf16_f32(v[d]);
            } else {
                const float *v = (const float *)M->v + i + h * hs;
#pragma omp simd
                for (int d = 0; d < hs; d++) o[d] += w * v[d];
            }
        }
    }
}

/* units of (row, a run of heads): whole rows when there are enough for the threads, else each row's heads in parts */
static void attend_task(void *arg, int tid, int nth) {
    Attend *a = arg;
    Model *M = a->M;
    int H = M->n_head, parts = a->R >= 2 * nth ? 1 : (2 * nth + a->R - 1) / a->R, lo, hi;
    if (parts > H) parts = H;
    int per = (H + parts - 1) / parts;
    split(a->R * parts, 1, tid, nth, &lo, &hi);
    for (int i = lo; i < hi; i++) {
        int r = i / parts, h0 = i % parts * per, h1 = h0 + per < H ? h0 + per : H;
        if (h0 < h1) attend_heads(M, a, r, h0, h1, M->scores + (long)tid * H * M->block_size);
    }
}

static void store_kv(Model *M, int layer, int R, const int64_t *pos, const int64_t *table, int nb) {
    int C = M->C;
    for (int r = 0; r < R; r++) {
        int p = (int)pos[r];
        long i = slot(M, layer, table[(long)r * nb + p / M->block_len], p % M->block_len);
        const float *k = M->qkv + (long)r * 3 * C + C, *v = k + C;
        if (M->kv_bf16)
            for (int c = 0; c < C; c++) { ((uint16_t *)M->k)[i + c] = f32_bf16(k[c]); ((uint16_t *)M->v)[i + c] = f32_bf16(v[c]); }
        else {
            memcpy((float *)M->k + i, k, C * sizeof(float));
            memcpy((float *)M->v + i, v, C * sizeof(float));
        }
    }
}

/* -- the step ---------------------------------------------------------------------------------- */
static void embed(Model *M, int R, const int64_t *tokens, const int64_t *pos) {
    int C = M->C;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            long t = tokens[r] * C + c, q = pos[r] * C + c;
            M->x[(long)r * C + c] = M->emb_bf16 ? bf16_f32(((const uint16_t *)M->wte)[t]) + bf16_f32(((const uint16_t *)M->wpe)[q])
                                                : ((const float *)M->wte)[t] + ((const float *)M->wpe)[q];
        }
}

static void step(Model *M, int R, const int64_t *tokens, const int64_t *pos, const int64_t *table, int nb, float *logits) {
    int C = M->C;
    embed(M, R, tokens, pos);
    for (int l = 0; l < M->n_layer; l++) {
        Layer *L = &M->h[l];
        layer_norm(&L->ln_1, M->x, M->xn, R, C, M->eps);
        linear(M, &L->c_attn, M->xn, R, M->qkv, 3 * C, STORE);
        store_kv(M, l, R, pos, table, nb);
        Attend a = {M, l, R, pos, table, nb};
        run(attend_task, &a);
        linear(M, &L->attn_proj, M->att, R, M->x, C, ADD);
        layer_norm(&L->ln_2, M->x, M->xn, R, C, M->eps);
        linear(M, &L->c_fc, M->xn, R, M->mlp, 4 * C, GELU);
        linear(M, &L->mlp_proj, M->mlp, R, M->x, C, ADD);
    }
    layer_norm(&M->ln_f, M->x, M->xn, R, C, M->eps);
    linear(M, &M->head, M->xn, R, logits, M->V, STORE);
}

static int reserve(Model *M, int R) {
    if (R <= M->cap_rows) return 0;
    int C = M->C;
    float **bufs[] = {&M->x, &M->xn, &M->qkv, &M->att, &M->mlp, &M->tmp, &M->xsum, &M->xd};
    long sizes[] = {(long)R * C, (long)R * C, (long)R * 3 * C, (long)R * C, (long)R * 4 * C, (long)R * C, (long)R * 4 * C / Q4_GROUP + 1,
                    (long)R * 4 * C / Q4_GROUP + 1};
    for (int i = 0; i < 8; i++) {
        free(*bufs[i]);
        if (!(*bufs[i] = calloc(sizes[i], sizeof(float)))) return -1;
    }
    free(M->qx);
    if (!(M->qx = calloc((long)R * 4 * C, 1))) return -1;
    M->cap_rows = R;
    return 0;
}

/* -- Python ------------------------------------------------------------------------------------ */
static void model_free(PyObject *cap) {
    Model *M = PyCapsule_GetPointer(cap, "gpt2kit.decode.Model");
    if (!M) return;
    free(M->x); free(M->xn); free(M->qkv); free(M->att); free(M->mlp); free(M->tmp); free(M->xsum); free(M->xd); free(M->qx); free(M->scores);
    free(M->h);
    free(M);
}

static int parse_linear(PyObject *t, Linear *L) {
    unsigned long long w, scale, sm, bias;
    if (!PyArg_ParseTuple(t, "iiiKKKK", &L->fmt, &L->N, &L->K, &w, &scale, &sm, &bias)) return -1;
    if (L->fmt < F32 || L->fmt > Q4 || (L->fmt == Q4 && L->K % Q4_GROUP)) {
        PyErr_SetString(PyExc_ValueError, "bad linear format");
        return -1;
    }
    L->w = (const void *)(uintptr_t)w;
    L->scale = (const float *)(uintptr_t)scale;
    L->sm = (const uint16_t *)(uintptr_t)sm;
    L->bias = (const float *)(uintptr_t)bias;
    return 0;
}

static int parse_norm(PyObject *t, Norm *n) {
    unsigned long long w, b;
    if (!PyArg_ParseTuple(t, "KK", &w, &b)) return -1;
    n->w = (const float *)(uintptr_t)w;
    n->b = (const float *)(uintptr_t)b;
    return 0;
}

static int is_int(const Linear *L) { return L->fmt == Q8 || L->fmt == Q4; }

static int fits_int8(const Linear *L) { return !is_int(L) || (L->K % Q4_GROUP == 0 && L->K <= MAX_INT8_K); }

/* whether the model has int8/int4 linears and the int8-activation kernels take every one of them */
static int int8_ready(const Model *M) {
    int any = is_int(&M->head), ok = fits_int8(&M->head);
    for (int l = 0; l < M->n_layer; l++) {
        const Layer *h = &M->h[l];
        const Linear *L[] = {&h->c_attn, &h->attn_proj, &h->c_fc, &h->mlp_proj};
        for (int i = 0; i < 4; i++) {
            any |= is_int(L[i]);
            ok &= fits_int8(L[i]);
        }
    }
    return any && ok;
}

/* Model(dims, embeddings, layers, ln_f, head, kv, int8_activations): see native.py for the tuples */
static PyObject *py_model(PyObject *self, PyObject *args) {
    PyObject *layers, *lnf, *head;
    unsigned long long wte, wpe, k, v;
    int int8_acts;
    Model *M = calloc(1, sizeof(Model));
    if (!M) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(args, "(iiiiiifl)(iKK)O!OO(iKK)p", &M->n_layer, &M->n_head, &M->C, &M->V, &M->block_len, &M->block_size,
                          &M->eps, &M->num_blocks, &M->emb_bf16, &wte, &wpe, &PyList_Type, &layers, &lnf, &head, &M->kv_bf16, &k, &v,
                          &int8_acts)
        || PyList_GET_SIZE(layers) != M->n_layer) {
        free(M);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "layers do not match n_layer");
        return NULL;
    }
    M->wte = (const void *)(uintptr_t)wte; M->wpe = (const void *)(uintptr_t)wpe;
    M->k = (void *)(uintptr_t)k; M->v = (void *)(uintptr_t)v;
    M->h = calloc(M->n_layer, sizeof(Layer));
    M->scores = malloc(sizeof(float) * MAX_THREADS * M->n_head * M->block_size);
    PyObject *cap = PyCapsule_New(M, "gpt2kit.decode.Model", model_free);
    if (!cap) { free(M->h); free(M->scores); free(M); return NULL; }
    if (!M->h || !M->scores) { Py_DECREF(cap); return PyErr_NoMemory(); }
    for (int l = 0; l < M->n_layer; l++) {
        PyObject *n1, *n2, *a, *ap, *f, *fp;
        Layer *L = &M->h[l];
        if (!PyArg_ParseTuple(PyList_GET_ITEM(layers, l), "OOOOOO", &n1, &a, &ap, &n2, &f, &fp) || parse_norm(n1, &L->ln_1)
            || parse_linear(a, &L->c_attn) || parse_linear(ap, &L->attn_proj) || parse_norm(n2, &L->ln_2)
            || parse_linear(f, &L->c_fc) || parse_linear(fp, &L->mlp_proj)) {
            Py_DECREF(cap);
            return NULL;
        }
    }
    if (parse_norm(lnf, &M->ln_f) || parse_linear(head, &M->head)) { Py_DECREF(cap); return NULL; }
    M->int8_acts = int8_acts && vnni && int8_ready(M);
    return cap;
}

static PyObject *py_int8_activations(PyObject *self, PyObject *cap) {
    Model *M = PyCapsule_GetPointer(cap, "gpt2kit.decode.Model");
    if (!M) return NULL;
    return PyBool_FromLong(M->int8_acts);
}

/* step(model, threads, rows, tokens, positions, tables, blocks_per_row, logits): pointers to int64 (rows,),
   int64 (rows,), int64 (rows, blocks_per_row) and fp32 (rows, V) */
static PyObject *py_step(PyObject *self, PyObject *args) {
    PyObject *cap;
    int nth, R, nb;
    unsigned long long tok, pos, tab, out;
    if (!PyArg_ParseTuple(args, "OiiKKKiK", &cap, &nth, &R, &tok, &pos, &tab, &nb, &out)) return NULL;
    Model *M = PyCapsule_GetPointer(cap, "gpt2kit.decode.Model");
    if (!M) return NULL;
    if (R < 1 || nth < 1) { PyErr_SetString(PyExc_ValueError, "rows and threads must be >= 1"); return NULL; }
    nth = nth > MAX_THREADS ? MAX_THREADS : nth;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&P.step); /* one step at a time in the process: the pool and the scratch are shared */
    if (reserve(M, R) || ensure_workers(nth - 1)) err = 1;
    else {
        nthreads = nth;
        step(M, R, (const int64_t *)(uintptr_t)tok, (const int64_t *)(uintptr_t)pos, (const int64_t *)(uintptr_t)tab, nb,
             (float *)(uintptr_t)out);
    }
    pthread_mutex_unlock(&P.step);
    Py_END_ALLOW_THREADS
    if (err) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* avx512([on]): whether the AVX-512/VNNI kernels run; on=False makes every step (and every model made after, for
   int8 activations) use the portable loops, so tests check those too on a CPU that has the fast ones */
static PyObject *py_avx512(PyObject *self, PyObject *args) {
    int on = -1;
    if (!PyArg_ParseTuple(args, "|p", &on)) return NULL;
    if (on != -1) vnni = on && vnni_supported();
    return PyBool_FromLong(vnni);
}

static PyMethodDef methods[] = {
    {"avx512", py_avx512, METH_VARARGS, "Whether the AVX-512/VNNI kernels run; avx512(False) makes the portable loops run."},
    {"model", py_model, METH_VARARGS, "Wrap a model's weights and KV pool (pointers) for step()."},
    {"step", py_step, METH_VARARGS, "One decode step for every row: writes their logits and their keys/values."},
    {"int8_activations", py_int8_activations, METH_O, "Whether the model's int8/int4 linears run on int8 activations (VNNI)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_decode", "GPT-2 decode steps in C (see native.py).", -1, methods};

PyMODINIT_FUNC PyInit__decode(void) {
    pthread_atfork(NULL, NULL, after_fork_child);
    vnni = vnni_supported();
    return PyModule_Create(&module);
}
