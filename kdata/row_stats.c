/* Per-row teacher/student statistics over float32 logits, AVX-512: the native backend of
 * kdata/stats.py (contract and formulas there; built and loaded by kdata/native.py).
 *
 * Per row, two passes over the row (the second one from L1, while the next row is prefetched):
 *   1. lane maxima of z = logits (16 lanes): the row maximum, and a lower bound for the k-th
 *      largest value (the k-th largest lane maximum: k lanes are k distinct elements above it);
 *   2. d = z/T - max/T floored at -1e4 (see kdata/stats.py), e = exp(d) by Cody-Waite reduction
 *      and a degree-5 polynomial scaled with vscalefps (underflows to 0, no clamp), six weighted sums,
 *      and the few elements at or above the bound collected as top-k candidates.
 * The top-k (value descending, index ascending, as a stable argsort) gives the prediction (first
 * maximum, as argmax), the runner-up for the margin (ties give margin 0) and the soft labels. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#ifndef __AVX512F__
#error "kdata native statistics need AVX-512F"
#endif

#define KD_MAXK 16
#define KD_CAP 64

typedef struct { float v; int32_t i; } kd_cand;

static inline __m512 kd_exp(__m512 x) {
    /* x = n ln2 + r, |r| <= ln2/2; n by the 1.5*2^23 rounding trick; exp(r) by the polynomial of
       kdata.stats._EXP_POLY (relative error 1e-7); 2^n by vscalefps. */
    const __m512 rnd = _mm512_set1_ps(12582912.0f);
    const __m512 y = _mm512_fmadd_ps(x, _mm512_set1_ps(1.4426950408889634f), rnd);
    const __m512 n = _mm512_sub_ps(y, rnd);
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.6931471805599453f), x);
    __m512 p = _mm512_set1_ps(0.008261531003507957f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.041898732028908404f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.16668114265113446f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.499991410332394f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.9999995316748534f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
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

#define KD_PUSH(BUF, NB, MASK, Z, J, TH, K)                                                  \
    do {                                                                                     \
        __mmask16 m_ = (MASK);                                                               \
        __attribute__((aligned(64))) float zz_[16];                                          \
        _mm512_store_ps(zz_, (Z));                                                           \
        while (m_) {                                                                         \
            int b_ = __builtin_ctz(m_);                                                      \
            m_ &= m_ - 1;                                                                    \
            if (!(zz_[b_] >= (TH))) continue;                                                \
            (BUF)[(NB)].v = zz_[b_];                                                         \
            (BUF)[(NB)++].i = (int32_t)((J) + b_);                                           \
            if ((NB) == KD_CAP) { (NB) = kd_compact((BUF), (NB), (K)); (TH) = (BUF)[(K) - 1].v; } \
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
    const int64_t cv = c & ~(int64_t)15;
    const __mmask16 tail = (__mmask16)((1u << (c - cv)) - 1u);
    const __m512 ninf = _mm512_set1_ps(-INFINITY), lo = _mm512_set1_ps(-1e4f), vinv = _mm512_set1_ps(inv);
    kd_cand bt[KD_CAP], bs[KD_CAP];
    __attribute__((aligned(64))) float lane[16];
    for (int64_t i = 0; i < n; ++i) {
        const float* t = T + i * ld;
        const float* s = S + i * ld;
        __m512 mt0 = ninf, ms0 = ninf, mt1 = ninf, ms1 = ninf;
        int64_t j = 0;
        for (; j + 32 <= cv; j += 32) {
            mt0 = _mm512_max_ps(mt0, _mm512_loadu_ps(t + j));
            ms0 = _mm512_max_ps(ms0, _mm512_loadu_ps(s + j));
            mt1 = _mm512_max_ps(mt1, _mm512_loadu_ps(t + j + 16));
            ms1 = _mm512_max_ps(ms1, _mm512_loadu_ps(s + j + 16));
        }
        for (; j < cv; j += 16) {
            mt0 = _mm512_max_ps(mt0, _mm512_loadu_ps(t + j));
            ms0 = _mm512_max_ps(ms0, _mm512_loadu_ps(s + j));
        }
        if (tail) {
            mt1 = _mm512_max_ps(mt1, _mm512_mask_loadu_ps(ninf, tail, t + cv));
            ms1 = _mm512_max_ps(ms1, _mm512_mask_loadu_ps(ninf, tail, s + cv));
        }
        float xt, xs;
        _mm512_store_ps(lane, _mm512_max_ps(mt0, mt1));
        float tht = kd_kth(lane, kk, &xt);
        _mm512_store_ps(lane, _mm512_max_ps(ms0, ms1));
        float ths = kd_kth(lane, kk, &xs);
        const float mtr = xt * inv, msr = xs * inv;
        const __m512 mt = _mm512_set1_ps(mtr), ms = _mm512_set1_ps(msr);
        __m512 St = _mm512_setzero_ps(), Ss = St, A = St, B = St, Cc = St, D = St;
        __m512 vtht = _mm512_set1_ps(tht), vths = _mm512_set1_ps(ths);
        int nbt = 0, nbs = 0;
        const int pf = i + 1 < n;
#define KD_STEP(J, M, FULL)                                                                       \
    do {                                                                                          \
        __m512 zt = FULL ? _mm512_loadu_ps(t + (J)) : _mm512_maskz_loadu_ps(M, t + (J));          \
        __m512 zs = FULL ? _mm512_loadu_ps(s + (J)) : _mm512_maskz_loadu_ps(M, s + (J));          \
        if (FULL && pf) {                                                                         \
            _mm_prefetch((const char*)(t + ld + (J)), _MM_HINT_T0);                               \
            _mm_prefetch((const char*)(s + ld + (J)), _MM_HINT_T0);                               \
        }                                                                                         \
        __mmask16 ct = _mm512_mask_cmp_ps_mask(M, zt, vtht, _CMP_GE_OQ);                          \
        __mmask16 cs = _mm512_mask_cmp_ps_mask(M, zs, vths, _CMP_GE_OQ);                          \
        if (__builtin_expect(ct != 0, 0)) { KD_PUSH(bt, nbt, ct, zt, J, tht, kk); vtht = _mm512_set1_ps(tht); } \
        if (__builtin_expect(cs != 0, 0)) { KD_PUSH(bs, nbs, cs, zs, J, ths, kk); vths = _mm512_set1_ps(ths); } \
        __m512 ut = scale ? _mm512_mul_ps(zt, vinv) : zt, us = scale ? _mm512_mul_ps(zs, vinv) : zs; \
        __m512 dt = _mm512_max_ps(lo, _mm512_sub_ps(ut, mt)); /* NaN stays NaN */                 \
        __m512 ds = _mm512_max_ps(lo, _mm512_sub_ps(us, ms));                                     \
        __m512 et = kd_exp(dt), es = kd_exp(ds);                                                  \
        if (!FULL) { et = _mm512_maskz_mov_ps(M, et); es = _mm512_maskz_mov_ps(M, es); }          \
        St = _mm512_add_ps(St, et); Ss = _mm512_add_ps(Ss, es);                                   \
        A = _mm512_fmadd_ps(et, dt, A); B = _mm512_fmadd_ps(et, ds, B);                           \
        Cc = _mm512_fmadd_ps(es, ds, Cc); D = _mm512_fmadd_ps(es, dt, D);                         \
    } while (0)
        for (j = 0; j + 32 <= cv; j += 32) {
            KD_STEP(j, (__mmask16)0xFFFF, 1);
            KD_STEP(j + 16, (__mmask16)0xFFFF, 1);
        }
        for (; j < cv; j += 16) KD_STEP(j, (__mmask16)0xFFFF, 1);
        if (tail) KD_STEP(cv, tail, 0);
#undef KD_STEP
        nbt = kd_compact(bt, nbt, kk);
        nbs = kd_compact(bs, nbs, kk);
        const float st = _mm512_reduce_add_ps(St), ss = _mm512_reduce_add_ps(Ss);
        const float a = _mm512_reduce_add_ps(A), b = _mm512_reduce_add_ps(B);
        const float cc = _mm512_reduce_add_ps(Cc), d = _mm512_reduce_add_ps(D);
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
