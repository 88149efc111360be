/* Per-row teacher/student statistics over float32 logits: the native backend of kdata/stats.py
 * (contract and formulas there; built and loaded by kdata/native.py). AVX-512 (16 lanes) or
 * AVX2 + FMA (8 lanes), whichever the compiler targets (-march=native); the code between the two
 * ISA blocks below is shared.
 *
 * Per row, two passes over the row (the second one from L1, while the next row is prefetched):
 *   1. lane maxima of z = logits: the row maximum, and a lower bound for the k-th largest value
 *      (the k-th largest of 16 lane maxima: k of them are k distinct elements at or above it);
 *   2. d = z/T - max/T floored at -1e4 (see kdata/stats.py), e = exp(d) by Cody-Waite reduction
 *      and a degree-5 polynomial, six weighted sums, and the few elements at or above the bound
 *      collected as top-k candidates.
 * The top-k (value descending, index ascending, as a stable argsort) gives the prediction (first
 * maximum, as argmax), the runner-up for the margin (ties give margin 0) and the soft labels. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define KD_MAXK 16 /* top-k the kernel collects; also the number of lane maxima */
#define KD_CAP 64  /* candidate buffer; compacted to the top k when full */

/* ---------------------------------------------------------------- ISA: AVX-512 */
#if defined(__AVX512F__) && !defined(KD_NO_AVX512)
#define KD_W 16
typedef __m512 kd_v;
typedef __mmask16 kd_m; /* lanes in use */
static inline kd_v v_set(float x) { return _mm512_set1_ps(x); }
static inline kd_v v_load(const float* p) { return _mm512_loadu_ps(p); }
static inline kd_v v_load_or(kd_m m, const float* p, kd_v fill) { return _mm512_mask_loadu_ps(fill, m, p); }
static inline kd_v v_add(kd_v a, kd_v b) { return _mm512_add_ps(a, b); }
static inline kd_v v_sub(kd_v a, kd_v b) { return _mm512_sub_ps(a, b); }
static inline kd_v v_mul(kd_v a, kd_v b) { return _mm512_mul_ps(a, b); }
static inline kd_v v_max(kd_v a, kd_v b) { return _mm512_max_ps(a, b); } /* b if either is NaN */
static inline kd_v v_fma(kd_v a, kd_v b, kd_v c) { return _mm512_fmadd_ps(a, b, c); }
static inline kd_v v_fnma(kd_v a, kd_v b, kd_v c) { return _mm512_fnmadd_ps(a, b, c); }
static inline kd_m v_tail(int64_t r) { return (kd_m)((1u << r) - 1u); }
static inline kd_v v_keep(kd_m m, kd_v a) { return _mm512_maskz_mov_ps(m, a); }
static inline unsigned v_ge(kd_v a, kd_v b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
static inline unsigned v_bits(kd_m m) { return m; }
static inline float v_sum(kd_v a) { return _mm512_reduce_add_ps(a); }
static inline void v_store(float* p, kd_v a) { _mm512_storeu_ps(p, a); }
/* p * 2^n, n = y - 1.5*2^23 (a float integer): vscalefps, which underflows to 0 by itself */
static inline kd_v v_scale2(kd_v p, kd_v n, kd_v y) { (void)y; return _mm512_scalef_ps(p, n); }
/* the 16 lane maxima of two accumulators */
static inline void v_lanes(float* lane, kd_v a, kd_v b) { _mm512_storeu_ps(lane, _mm512_max_ps(a, b)); }

/* ---------------------------------------------------------------- ISA: AVX2 + FMA */
#elif defined(__AVX2__) && defined(__FMA__)
#define KD_W 8
typedef __m256 kd_v;
typedef __m256i kd_m;
static inline kd_v v_set(float x) { return _mm256_set1_ps(x); }
static inline kd_v v_load(const float* p) { return _mm256_loadu_ps(p); }
static inline kd_v v_load_or(kd_m m, const float* p, kd_v fill) {
    return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}
static inline kd_v v_add(kd_v a, kd_v b) { return _mm256_add_ps(a, b); }
static inline kd_v v_sub(kd_v a, kd_v b) { return _mm256_sub_ps(a, b); }
static inline kd_v v_mul(kd_v a, kd_v b) { return _mm256_mul_ps(a, b); }
static inline kd_v v_max(kd_v a, kd_v b) { return _mm256_max_ps(a, b); } /* b if either is NaN */
static inline kd_v v_fma(kd_v a, kd_v b, kd_v c) { return _mm256_fmadd_ps(a, b, c); }
static inline kd_v v_fnma(kd_v a, kd_v b, kd_v c) { return _mm256_fnmadd_ps(a, b, c); }
static inline kd_m v_tail(int64_t r) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline kd_v v_keep(kd_m m, kd_v a) { return _mm256_and_ps(a, _mm256_castsi256_ps(m)); }
static inline unsigned v_ge(kd_v a, kd_v b) { return (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)); }
static inline unsigned v_bits(kd_m m) { return (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(m)); }
static inline float v_sum(kd_v a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline void v_store(float* p, kd_v a) { _mm256_storeu_ps(p, a); }
/* p * 2^n, with 2^n built in the exponent bits: y's low mantissa bits hold n (0x4B400000 + n),
   clamped at n = -126 (exp(-87) is nothing next to S >= 1); a product, so NaN stays NaN */
static inline kd_v v_scale2(kd_v p, kd_v n, kd_v y) {
    (void)n;
    const __m256i yn = _mm256_max_epi32(_mm256_castps_si256(y), _mm256_set1_epi32(0x4B400000 - 126));
    const __m256i e = _mm256_slli_epi32(_mm256_sub_epi32(yn, _mm256_set1_epi32(0x4B400000 - 127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
static inline void v_lanes(float* lane, kd_v a, kd_v b) { _mm256_storeu_ps(lane, a); _mm256_storeu_ps(lane + 8, b); }

#else
#error "kdata native statistics need AVX-512F or AVX2 with FMA"
#endif
/* ---------------------------------------------------------------- shared */

#define KD_FULL_BITS ((unsigned)((1u << KD_W) - 1u))

typedef struct { float v; int32_t i; } kd_cand;

static inline kd_v kd_exp(kd_v x) {
    /* x = n ln2 + r, |r| <= ln2/2; n by the 1.5*2^23 rounding trick; exp(r) by the polynomial of
       kdata.core.stats._EXP_POLY (relative error 1e-7); then p * 2^n. */
    const kd_v rnd = v_set(12582912.0f);
    const kd_v y = v_fma(x, v_set(1.4426950408889634f), rnd);
    const kd_v n = v_sub(y, rnd);
    const kd_v r = v_fnma(n, v_set(0.6931471805599453f), x);
    kd_v p = v_set(0.008261531003507957f);
    p = v_fma(p, r, v_set(0.041898732028908404f));
    p = v_fma(p, r, v_set(0.16668114265113446f));
    p = v_fma(p, r, v_set(0.499991410332394f));
    p = v_fma(p, r, v_set(0.9999995316748534f));
    p = v_fma(p, r, v_set(1.0f));
    return v_scale2(p, n, y);
}

static inline int kd_before(kd_cand a, kd_cand b) { return a.v > b.v || (a.v == b.v && a.i < b.i); }

/* sort the candidates (value descending, index ascending) and keep the first k */
static int kd_compact(kd_cand* b, int nb, int k) {
    for (int a = 1; a < nb; ++a) {
        kd_cand x = b[a];
        int j = a - 1;
        while (j >= 0 && kd_before(x, b[j])) { b[j + 1] = b[j]; --j; }
        b[j + 1] = x;
    }
    return nb < k ? nb : k;
}

/* k-th largest of the 16 lane maxima (NaN counted as -inf), and the largest: the row maximum */
static float kd_kth(const float* lane, int k, float* top) {
    float best[KD_MAXK];
    int nb = 0;
    for (int l = 0; l < 16; ++l) {
        const float v = lane[l] == lane[l] ? lane[l] : -INFINITY;
        int j;
        if (nb < k) j = nb++;
        else if (v > best[k - 1]) j = k - 1;
        else continue;
        while (j > 0 && best[j - 1] < v) { best[j] = best[j - 1]; --j; }
        best[j] = v;
    }
    *top = best[0];
    return nb < k ? -INFINITY : best[k - 1];
}

/* append the elements of Z flagged in BITS that are still >= TH to the candidates; once the
   buffer has been compacted TH is just above the k-th best, since a later equal value cannot enter */
#define KD_PUSH(BUF, NB, BITS, Z, J, TH, K)                                                  \
    do {                                                                                     \
        unsigned m_ = (BITS);                                                                \
        float zz_[KD_W];                                                                     \
        v_store(zz_, (Z));                                                                   \
        while (m_) {                                                                         \
            int b_ = __builtin_ctz(m_);                                                      \
            m_ &= m_ - 1;                                                                    \
            if (!(zz_[b_] >= (TH))) continue;                                                \
            (BUF)[(NB)].v = zz_[b_];                                                         \
            (BUF)[(NB)++].i = (int32_t)((J) + b_);                                           \
            if ((NB) == KD_CAP) { /* full: keep the top K; later ties lose to them (index order) */ \
                (NB) = kd_compact((BUF), (NB), (K));                                         \
                (TH) = nextafterf((BUF)[(K) - 1].v, INFINITY);                               \
            }                                                                                \
        }                                                                                    \
    } while (0)

/* Rows [0, n) of T and S (row stride ld floats). out: 12 arrays at stride ostride (teacher and
 * student confidence, margin, entropy; KL(t||s), KL(s||t); max z/T of both; log S of both);
 * pred: 2 arrays at stride ostride; ti/tv, si/sv: n x k top-k indices and raw values (k may be 0,
 * then they are not written). Returns 0, or -1 if k is out of range. */
int kd_row_stats(const float* T, const float* S, int64_t n, int64_t c, int64_t ld, float inv, int k,
                 float* out, int64_t ostride, int32_t* pred, int32_t* ti, float* tv, int32_t* si,
                 float* sv) {
    if (k < 0 || k > KD_MAXK || c < 1) return -1;
    int kk = k < 2 ? 2 : k; /* internal top-k: at least the runner-up */
    if (kk > c) kk = (int)c;
    const int scale = inv != 1.0f;
    const int64_t cv = c - c % KD_W;
    const kd_m tail = v_tail(c - cv);
    const kd_v ninf = v_set(-INFINITY), lo = v_set(-1e4f), vinv = v_set(inv);
    kd_cand bt[KD_CAP], bs[KD_CAP];
    float lane[16];
    for (int64_t i = 0; i < n; ++i) {
        const float* t = T + i * ld;
        const float* s = S + i * ld;
        kd_v mt0 = ninf, ms0 = ninf, mt1 = ninf, ms1 = ninf;
        int64_t j = 0;
        for (; j + 2 * KD_W <= cv; j += 2 * KD_W) {
            mt0 = v_max(mt0, v_load(t + j));
            ms0 = v_max(ms0, v_load(s + j));
            mt1 = v_max(mt1, v_load(t + j + KD_W));
            ms1 = v_max(ms1, v_load(s + j + KD_W));
        }
        for (; j < cv; j += KD_W) {
            mt0 = v_max(mt0, v_load(t + j));
            ms0 = v_max(ms0, v_load(s + j));
        }
        if (cv < c) {
            mt1 = v_max(mt1, v_load_or(tail, t + cv, ninf));
            ms1 = v_max(ms1, v_load_or(tail, s + cv, ninf));
        }
        float xt, xs;
        v_lanes(lane, mt0, mt1);
        float tht = kd_kth(lane, kk, &xt);
        v_lanes(lane, ms0, ms1);
        float ths = kd_kth(lane, kk, &xs);
        const float mtr = xt * inv, msr = xs * inv;
        const kd_v mt = v_set(mtr), ms = v_set(msr);
        kd_v St = v_set(0.0f), Ss = St, A = St, B = St, Cc = St, D = St;
        kd_v vtht = v_set(tht), vths = v_set(ths);
        int nbt = 0, nbs = 0;
        const int pf = i + 1 < n;
/* one vector of each side at J: exps and sums, then the rare candidates (FULL: no tail mask) */
#define KD_STEP(J, FULL, PF)                                                                        \
    do {                                                                                          \
        const kd_v zt = FULL ? v_load(t + (J)) : v_load_or(tail, t + (J), v_set(0.0f));           \
        const kd_v zs = FULL ? v_load(s + (J)) : v_load_or(tail, s + (J), v_set(0.0f));           \
        if ((PF) && pf) { /* the next row's line, into L1 for its first pass */                   \
            _mm_prefetch((const char*)(t + ld + (J)), _MM_HINT_T0);                               \
            _mm_prefetch((const char*)(s + ld + (J)), _MM_HINT_T0);                               \
        }                                                                                         \
        const unsigned use = FULL ? KD_FULL_BITS : v_bits(tail);                                  \
        const unsigned ct = v_ge(zt, vtht) & use, cs = v_ge(zs, vths) & use;                      \
        if (__builtin_expect(ct != 0, 0)) { KD_PUSH(bt, nbt, ct, zt, J, tht, kk); vtht = v_set(tht); } \
        if (__builtin_expect(cs != 0, 0)) { KD_PUSH(bs, nbs, cs, zs, J, ths, kk); vths = v_set(ths); } \
        const kd_v ut = scale ? v_mul(zt, vinv) : zt, us = scale ? v_mul(zs, vinv) : zs;          \
        const kd_v dt = v_max(lo, v_sub(ut, mt)); /* NaN stays NaN */                             \
        const kd_v ds = v_max(lo, v_sub(us, ms));                                                 \
        kd_v et = kd_exp(dt), es = kd_exp(ds);                                                    \
        if (!FULL) { et = v_keep(tail, et); es = v_keep(tail, es); }                              \
        St = v_add(St, et); Ss = v_add(Ss, es);                                                   \
        A = v_fma(et, dt, A); B = v_fma(et, ds, B);                                               \
        Cc = v_fma(es, ds, Cc); D = v_fma(es, dt, D);                                             \
    } while (0)
        for (j = 0; j + 2 * KD_W <= cv; j += 2 * KD_W) {
            KD_STEP(j, 1, 1);
            KD_STEP(j + KD_W, 1, KD_W == 16); /* one prefetch per 64-byte line */
        }
        for (; j < cv; j += KD_W) KD_STEP(j, 1, 1);
        if (cv < c) KD_STEP(cv, 0, 0);
#undef KD_STEP
        nbt = kd_compact(bt, nbt, kk);
        nbs = kd_compact(bs, nbs, kk);
        const float st = v_sum(St), ss = v_sum(Ss);
        const float a = v_sum(A), b = v_sum(B);
        const float cc = v_sum(Cc), d = v_sum(D);
        const float lst = logf(st), lss = logf(ss);
        const float e2t = nbt > 1 ? expf(bt[1].v * inv - mtr) : 0.0f;
        const float e2s = nbs > 1 ? expf(bs[1].v * inv - msr) : 0.0f;
        const float klts = (a - b) / st - lst + lss, klst = (cc - d) / ss - lss + lst;
        out[0 * ostride + i] = 1.0f / st;
        out[1 * ostride + i] = 1.0f / ss;
        out[2 * ostride + i] = (1.0f - e2t) / st;
        out[3 * ostride + i] = (1.0f - e2s) / ss;
        out[4 * ostride + i] = lst - a / st;
        out[5 * ostride + i] = lss - cc / ss;
        out[6 * ostride + i] = klts > 0.0f ? klts : (klts == klts ? 0.0f : klts);
        out[7 * ostride + i] = klst > 0.0f ? klst : (klst == klst ? 0.0f : klst);
        out[8 * ostride + i] = mtr;
        out[9 * ostride + i] = msr;
        out[10 * ostride + i] = lst;
        out[11 * ostride + i] = lss;
        pred[i] = nbt > 0 ? bt[0].i : 0;
        pred[ostride + i] = nbs > 0 ? bs[0].i : 0;
        for (int q = 0; q < k; ++q) { /* rows with fewer than k non-NaN values: NaN at index 0 */
            ti[i * k + q] = q < nbt ? bt[q].i : 0;
            tv[i * k + q] = q < nbt ? bt[q].v : NAN;
            si[i * k + q] = q < nbs ? bs[q].i : 0;
            sv[i * k + q] = q < nbs ? bs[q].v : NAN;
        }
    }
    return 0;
}

/* which instruction set this build uses, for kdata.core.native.status() */
const char* kd_isa(void) { return KD_W == 16 ? "AVX-512" : "AVX2"; }
