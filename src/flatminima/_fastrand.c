/* flatminima._fastrand: counter-based Gaussian noise added in place to a float32 / float64 buffer.
 *
 * add_normal(address, numel, dtype, scale, key, counter, offset=0, isa=-1) adds scale * N(0, 1) to the
 * numel contiguous elements at address (dtype 0: float32, 1: float64). The noise is a pure function of
 * (key, counter, offset + i): reproducible, splittable, and its whole state is two integers.
 *
 * sgld_step(entries, lr, weight_decay, gamma, weight, scale, key, counter, isa=-1) runs Entropy-SGD's whole
 * inner (SGLD) step in the same pass, per element of parameters p, gradients g, anchor x and mean mu:
 * d = g + weight_decay p + gamma (p - x), p <- p - lr d + scale xi, mu <- lerp(mu, p, weight), where xi
 * is the value add_normal would add at that (key, counter, position), added with the same rounding (so a
 * fused and an unfused run draw the same noise); scale 0 draws nothing. One pass reads g, x, p, mu and
 * writes p, mu, where the multi-tensor sequence makes five passes over the parameters (see "fused SGLD
 * step" below for the exact operations).
 *
 * Generator. SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
 * OOPSLA 2014; the generator of java.util.SplittableRandom): a Weyl sequence x_j = seed + j * gamma
 * (gamma odd) passed through the splitmix64 finalizer mix64 (Stafford's "Mix13"). Each (key, counter)
 * has its own stream, split off the key the way SplittableRandom.split() does:
 *     b     = mix64(key)      (float64: mix64(key ^ 0xD1B54A32D192ED03), a separate family of streams)
 *     seed  = mix64(b + (2 counter + 1) * G)          G = 0x9E3779B97F4A7C15 (golden ratio)
 *     gamma = mixGamma(b + (2 counter + 2) * G)       (odd, at least 24 bit transitions)
 * Streams differ in gamma (not only in their start), so two streams never overlap as shifted copies of
 * one Weyl sequence, however many counters are used.
 *
 * Gaussians. Box-Muller, branch free. Elements come in groups of 32: group g holds pairs
 * j = 16 g + l (l = 0..15); element 32 g + l is r_j cos t_j, element 32 g + 16 + l is r_j sin t_j.
 *   float32: one 64-bit output z = mix64(x_j) per pair. u1 = (a + 1) / 2^24 with a = z >> 40 (24 bits), in
 *     (0, 1] so that ln u1 is finite; r = sqrt(-2 ln u1) <= sqrt(48 ln 2) = 5.768, so |N| is cut off at
 *     5.768 (a mass of 8.0e-9 lies beyond), as in torch's CPU normal_ (24-bit uniforms). The angle comes
 *     from c = the low 32 bits of z: t = 2 pi (c >> 28) / 16 + d, d = 2 pi s / 2^36, s = the low 28 bits
 *     of c as a signed number times 16 (so |d| <= pi / 16): a uniform grid of 2^32 angles, up to the
 *     rounding of s to float.
 *   float64: two outputs per pair, z1 = mix64(x_2j), z2 = mix64(x_2j+1): u1 = 1 - (z1 >> 12) / 2^52 in
 *     (0, 1], t = 2 pi (z2 >> 12) / 2^52; |N| <= sqrt(104 ln 2) = 8.49 (2.1e-17 of the mass beyond).
 * Elementary functions are our own, accurate to a few units in the last place (tests measure them
 * against numpy on dense grids):
 *   ln u: exponent / mantissa split (mantissa m in [sqrt(1/2), sqrt(2)), f = m - 1 exact), then
 *     float32: ln(1 + f) = f - f^2/2 + f^3 P(f), P a degree-6 least-squares (relative error) fit;
 *     float64: s = f / (2 + f), ln(1 + f) = f - (f^2/2 - s (f^2/2 + R(s^2))), R the atanh Taylor series
 *     to s^18 (truncation < 2^-60 relative).
 *   sin/cos t: float32: cos, sin of 2 pi k / 16 from a 16-entry table (exact 0 and +-1 where they should
 *     be; multiplied by scale once per call), polynomials in d (sin: Taylor to d^5; cos: minimax
 *     1 + c2 d^2 + c4 d^4; errors < 3.1e-9), angle addition with fused multiply-adds. float64: quadrant q = round(4 t / 2 pi), d = t - q pi/2 with
 *     |d| <= pi/4, Taylor polynomials to d^17 / d^16, rotation by q quarter turns (exact).
 *   The float32 result is sqrt(-2 ln u1) * (scale cos t) added with one rounding (FMA) to the buffer.
 * Dispatch. One float32 kernel body, written over a small vector abstraction and compiled three times:
 * AVX-512 (F + DQ, 16 pairs a step), AVX2 + FMA (8 pairs a step) and portable scalar C (fmaf) selected at
 * import from what the CPU reports (__builtin_cpu_supports). Every path performs the same IEEE-754
 * operations in the same order (fused multiply-adds are explicit, contraction is otherwise off), so all
 * paths give bit-identical results. The float64 body is plain C (no FMA) compiled per target and
 * auto-vectorised, also bit-identical across paths. Nothing needs -march=native: the extension runs on
 * any CPU of the architecture it was built for and uses the wider paths where the CPU has them.
 * The "auto" choice in flatminima.optim._noise uses the kernel only where a SIMD path exists: the portable
 * path calls fmaf from libm on CPUs without FMA and is slower than torch's generator there.
 * Build flags (setup.py): -O3 -fno-math-errno -ffp-contract=off; the last one is what keeps the float64
 * paths bit-identical (the float32 paths have explicit FMAs and no products that could be contracted).
 * Measured on a Sapphire Rapids core (2.9 GHz), 269,322 float32 numbers: AVX-512 0.14 ms, AVX2 0.24 ms,
 * portable 6 ms (torch's normal_: 0.93 ms); float64: 0.64 / 0.96 / 2.8 ms (torch: 5.4 ms).
 * sgld_step on as many parameters (the 784-256-256-10 MLP's, float32, with gradient, anchor and mean; same
 * machine, loaded): AVX-512 0.18 ms with noise, 0.155 ms without; AVX2 0.29 / 0.16 ms; the multi-tensor
 * sequence it replaces (torch._foreach_* ops + add_normal) 0.46 ms. float64: AVX-512 0.82 / 0.32 ms,
 * AVX2 1.06 / 0.32 ms (multi-tensor + add_normal 1.4 ms). Without noise the pass is memory bound.
 * The GIL is released while the kernels run. The caller vouches for the addresses and lengths.
 */

#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(FASTRAND_GENERIC_ONLY)
#define FR_X86 1
#include <immintrin.h>
#else
#define FR_X86 0
#endif

#if defined(__GNUC__)
#define FR_INLINE static inline __attribute__((always_inline))
#define FR_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define FR_INLINE static __forceinline
#define FR_RESTRICT __restrict
#else
#define FR_INLINE static inline
#define FR_RESTRICT
#endif

#define FASTRAND_VERSION 2 /* bump when the streams or the API change (2: sgld_step) */
#define FR_GOLDEN 0x9E3779B97F4A7C15ULL
#define FR_GROUP 32 /* elements per group: 16 pairs */

enum { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
static const char *const isa_names[] = {"generic", "avx2", "avx512"};

/* ------------------------------------------------------------------------------------------ hashing */
FR_INLINE uint64_t mix64(uint64_t z) { /* splitmix64 finalizer (Stafford Mix13) */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static int popcount64(uint64_t x) {
    int n = 0;
    while (x) {
        x &= x - 1;
        n++;
    }
    return n;
}

static uint64_t mix_gamma(uint64_t z) { /* java.util.SplittableRandom.mixGamma */
    z = (z ^ (z >> 33)) * 0xFF51AFD7ED558CCDULL;
    z = (z ^ (z >> 33)) * 0xC4CEB9FE1A85EC53ULL;
    z = (z ^ (z >> 33)) | 1ULL;
    return popcount64(z ^ (z >> 1)) < 24 ? z ^ 0xAAAAAAAAAAAAAAAAULL : z;
}

typedef struct {
    uint64_t seed, gamma;
} stream_t;

static stream_t make_stream(uint64_t key, uint64_t counter, int dtype) {
    uint64_t b = mix64(dtype ? key ^ 0xD1B54A32D192ED03ULL : key); /* float64 streams are split off another root */
    stream_t s;
    s.seed = mix64(b + (2 * counter + 1) * FR_GOLDEN);
    s.gamma = mix_gamma(b + (2 * counter + 2) * FR_GOLDEN);
    return s;
}

/* ------------------------------------------------------------------------------------------ constants */
/* float32 ln: -2 ln(1 + f) = -2 f + f^2 + f^3 P2(f), P2 = -2 P (P fitted to (ln(1+f) - f + f^2/2) / f^3) */
#define LP0 -0.666678249835968f
#define LP1 0.5000261664390564f
#define LP2 -0.3992598354816437f
#define LP3 0.33156824111938477f
#define LP4 -0.2983227074146271f
#define LP5 0.2852320969104767f
#define LP6 -0.1737910658121109f
#define LN2X2 1.3862943611198906f        /* 2 ln 2 */
#define TWOPI_2M36 9.1432383475097751e-11f /* 2 pi / 2^36 */
#define S3 -0.16666666666666666f /* sin d = d + S3 d^3 + S5 d^5 (Taylor, truncation < 2.3e-9 |d|) */
#define S5 0.008333333333333333f
#define C2 -0.49999910593032837f   /* cos d = 1 + C2 d^2 + C4 d^4 (minimax on |d| <= pi/16, error 3.1e-9) */
#define C4 0.04159221425652504f

static const float cos16[16] = {1.0f, 0.9238795042037964f, 0.7071067690849304f, 0.3826834261417389f,
                                0.0f, -0.3826834261417389f, -0.7071067690849304f, -0.9238795042037964f,
                                -1.0f, -0.9238795042037964f, -0.7071067690849304f, -0.3826834261417389f,
                                0.0f, 0.3826834261417389f, 0.7071067690849304f, 0.9238795042037964f};
static const float sin16[16] = {0.0f, 0.3826834261417389f, 0.7071067690849304f, 0.9238795042037964f,
                                1.0f, 0.9238795042037964f, 0.7071067690849304f, 0.3826834261417389f,
                                0.0f, -0.3826834261417389f, -0.7071067690849304f, -0.9238795042037964f,
                                -1.0f, -0.9238795042037964f, -0.7071067690849304f, -0.3826834261417389f};

/* ------------------------------------------------------------------------------------------ float32 body
 * Written once over the operations below (V: float lanes, I: int32 lanes, Q: uint64 lanes, one per pair),
 * expanded for each backend by F32_BODY(P) where P is the backend's prefix. */

/* L = -2 ln u1 for u1 = (a + 1) / 2^24: with a + 1 = 2^k m, m in [sqrt(1/2), sqrt(2)), f = m - 1,
 * L = K 2 ln 2 - 2 ln(1 + f) with K = 24 - k, and -2 ln(1 + f) = -2 f + (f^2 + f^3 P2(f)). The rounding of
 * 2 ln 2 to float (relative 2.7e-9) costs L under 0.1 ulp: no hi/lo split of the constant is needed. */
#define F32_MINUS2LOG(P, a, L)                                                                            \
    P##V L;                                                                                               \
    {                                                                                                     \
        P##V u_ = P##i_to_f(P##i_add(a, P##i_set1(1)));                                                   \
        P##I k_ = P##i_srl(P##i_sub(P##f_bits(u_), P##i_set1(0x3f3504f3)), 23);                           \
        P##V f_ = P##f_sub(P##f_from_bits(P##i_sub(P##f_bits(u_), P##i_sll(k_, 23))), P##f_set1(1.0f));   \
        P##V K_ = P##i_to_f(P##i_sub(P##i_set1(24), k_));                                                 \
        P##V p_ = P##f_fma(P##f_set1(LP6), f_, P##f_set1(LP5));                                           \
        p_ = P##f_fma(p_, f_, P##f_set1(LP4));                                                            \
        p_ = P##f_fma(p_, f_, P##f_set1(LP3));                                                            \
        p_ = P##f_fma(p_, f_, P##f_set1(LP2));                                                            \
        p_ = P##f_fma(p_, f_, P##f_set1(LP1));                                                            \
        p_ = P##f_fma(p_, f_, P##f_set1(LP0));                                                            \
        P##V f2_ = P##f_mul(f_, f_);                                                                      \
        P##V l_ = P##f_fma(P##f_set1(-2.0f), f_, P##f_fma(P##f_mul(f2_, f_), p_, f2_));                   \
        L = P##f_fma(K_, P##f_set1(LN2X2), l_);                                                           \
    }

/* scale cos t, scale sin t for the 32-bit angle word c: t = 2 pi idx / 16 + d, idx = c >> 28 (top 4 bits),
 * d = 2 pi rem / 2^36 with rem = the low 28 bits of c as a signed number times 16 (|d| <= pi / 16; rem is
 * rounded to float, so t lies on a grid of 2^32 angles up to that rounding). The tables hold scale cos,
 * scale sin of 2 pi idx / 16. */
#define F32_SINCOS(P, c, ct, st)                                                                          \
    P##V ct, st;                                                                                          \
    {                                                                                                     \
        P##I idx_ = P##i_srl(c, 28);                                                                      \
        P##V d_ = P##f_mul(P##i_to_f(P##i_sll(c, 4)), P##f_set1(TWOPI_2M36));                             \
        P##V d2_ = P##f_mul(d_, d_);                                                                      \
        P##V sd_ = P##f_fma(P##f_mul(d_, d2_), P##f_fma(d2_, P##f_set1(S5), P##f_set1(S3)), d_);          \
        P##V cd_ = P##f_fma(P##f_fma(d2_, P##f_set1(C4), P##f_set1(C2)), d2_, P##f_set1(1.0f));           \
        P##V ca_ = P##f_lookup16(tab_cos, idx_), sa_ = P##f_lookup16(tab_sin, idx_);                      \
        ct = P##f_fms(ca_, cd_, P##f_mul(sa_, sd_));                                                      \
        st = P##f_fma(sa_, cd_, P##f_mul(ca_, sd_));                                                      \
    }

/* The next P##W pairs of the stream whose state x (x_j = seed + j gamma, one lane per pair) advances by
 * step: r = sqrt(-2 ln u1) and the scaled cos t, sin t (declared here). */
#define F32_NEXT_PAIRS(P, r, ct, st)                                                                      \
    P##V r, ct, st;                                                                                       \
    {                                                                                                     \
        P##Q z = x; /* splitmix64 output of x_j = seed + j gamma */                                       \
        x = P##q_add(x, step);                                                                            \
        z = P##q_mul(P##q_xorshr(z, 30), 0xBF58476D1CE4E5B9ULL);                                          \
        z = P##q_mul(P##q_xorshr(z, 27), 0x94D049BB133111EBULL);                                          \
        z = P##q_xorshr(z, 31);                                                                           \
        P##I a = P##i_srl(P##q_hi32(z), 8); /* bits 40..63 */                                             \
        P##I c = P##q_lo32(z);              /* bits 0..31 */                                              \
        F32_MINUS2LOG(P, a, L)                                                                            \
        F32_SINCOS(P, c, ct_, st_)                                                                        \
        r = P##f_sqrt(L);                                                                                 \
        ct = ct_;                                                                                         \
        st = st_;                                                                                         \
    }

#define F32_BODY(P)                                                                                       \
    {                                                                                                     \
        P##Q x = P##q_iota(seed + first_pair * gamma, gamma);                                             \
        const P##Q step = P##q_set1(gamma * (uint64_t)P##W);                                              \
        for (int64_t g = 0; g < ngroups; g++) {                                                          \
            float *qg = q + g * FR_GROUP;                                                                 \
            for (int h = 0; h < 16; h += P##W) {                                                          \
                F32_NEXT_PAIRS(P, r, ct, st)                                                              \
                P##f_store(qg + h, P##f_fma(r, ct, P##f_load(qg + h)));                                   \
                P##f_store(qg + 16 + h, P##f_fma(r, st, P##f_load(qg + 16 + h)));                         \
            }                                                                                             \
        }                                                                                                 \
    }

/* ---- fused SGLD step (Entropy-SGD's inner step), float32 body: on ngroups whole groups of p (parameters),
 * gr (gradients, read only), xa (anchor, read only) and mu (running mean), per element
 *     d = g + wd p + gam (p - x)      as  d = fma(wd, p, g), d = fma(gam, p - x, d)   (a term whose
 *                                     coefficient is 0 is skipped, as the multi-tensor path skips it)
 *     p = p - lr d + xi               as  p = fma(-lr, d, p), then p = fma(r, scale cos t, p) exactly as
 *                                     add_normal adds the stream's value to p (same bits of noise)
 *     mu = lerp(mu, p, w)             as  torch.lerp's vector formula: fma(coef, p - mu, base) with
 *                                     (coef, base) = (w, mu) for |w| < 1/2, else (w - 1, p)
 * one pass that reads g, x, p, mu and writes p and mu. Without noise (noise = 0) no stream is drawn. */
typedef struct {
    float nlr, wd, gam, coef;        /* -lr, wd, gam, coef: rounded to float, as torch's float32 opmath */
    int has_wd, has_gam, small, noise;
    const float *tab_cos, *tab_sin;  /* scale cos, scale sin of 2 pi k / 16 (as for add_normal) */
} sgld32_t;

#define F32_SGLD_NEW_P(P, o, p1)                                                                          \
    P##V p1;                                                                                              \
    {                                                                                                     \
        P##V p_ = P##f_load(pp + (o)), d_ = P##f_load(gp + (o));                                          \
        if (has_wd) d_ = P##f_fma(vwd, p_, d_);                                                           \
        if (has_gam) d_ = P##f_fma(vgam, P##f_sub(p_, P##f_load(xp + (o))), d_);                          \
        p1 = P##f_fma(vnlr, d_, p_);                                                                      \
    }

#define F32_SGLD_STORE(P, o, pn)                                                                          \
    {                                                                                                     \
        P##V m_ = P##f_load(mp + (o)), pn_ = (pn);                                                        \
        P##f_store(pp + (o), pn_);                                                                        \
        P##f_store(mp + (o), P##f_fma(vcoef, P##f_sub(pn_, m_), small ? m_ : pn_));                       \
    }

#define F32_SGLD_BODY(P)                                                                                  \
    {                                                                                                     \
        const P##V vnlr = P##f_set1(cf->nlr), vwd = P##f_set1(cf->wd), vgam = P##f_set1(cf->gam);         \
        const P##V vcoef = P##f_set1(cf->coef);                                                           \
        const int has_wd = cf->has_wd, has_gam = cf->has_gam, small = cf->small;                          \
        if (cf->noise) {                                                                                  \
            const float *tab_cos = cf->tab_cos, *tab_sin = cf->tab_sin;                                   \
            P##Q x = P##q_iota(seed + first_pair * gamma, gamma);                                         \
            const P##Q step = P##q_set1(gamma * (uint64_t)P##W);                                          \
            for (int64_t g = 0; g < ngroups; g++) {                                                      \
                float *pp = p + g * FR_GROUP, *mp = mu + g * FR_GROUP;                                    \
                const float *gp = gr + g * FR_GROUP, *xp = xa + g * FR_GROUP;                             \
                for (int h = 0; h < 16; h += P##W) {                                                      \
                    F32_NEXT_PAIRS(P, r, ct, st)                                                          \
                    F32_SGLD_NEW_P(P, h, pc)                                                              \
                    F32_SGLD_NEW_P(P, 16 + h, ps)                                                         \
                    F32_SGLD_STORE(P, h, P##f_fma(r, ct, pc))                                             \
                    F32_SGLD_STORE(P, 16 + h, P##f_fma(r, st, ps))                                        \
                }                                                                                         \
            }                                                                                             \
        } else {                                                                                          \
            for (int64_t g = 0; g < ngroups; g++) {                                                      \
                float *pp = p + g * FR_GROUP, *mp = mu + g * FR_GROUP;                                    \
                const float *gp = gr + g * FR_GROUP, *xp = xa + g * FR_GROUP;                             \
                for (int h = 0; h < FR_GROUP; h += P##W) {                                                \
                    F32_SGLD_NEW_P(P, h, pn)                                                              \
                    F32_SGLD_STORE(P, h, pn)                                                              \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }

#define SGLD32_ARGS                                                                                       \
    float *FR_RESTRICT p, const float *FR_RESTRICT gr, const float *FR_RESTRICT xa, float *FR_RESTRICT mu,  \
        int64_t ngroups, uint64_t first_pair, const sgld32_t *cf, uint64_t seed, uint64_t gamma

/* ---- generic backend: one pair at a time, scalar C (fmaf is correctly rounded, as the SIMD FMAs) */
#define gen_W 1
typedef uint64_t gen_Q;
typedef uint32_t gen_I;
typedef float gen_V;
FR_INLINE gen_Q gen_q_iota(uint64_t x0, uint64_t gamma) { (void)gamma; return x0; }
FR_INLINE gen_Q gen_q_set1(uint64_t v) { return v; }
FR_INLINE gen_Q gen_q_add(gen_Q a, gen_Q b) { return a + b; }
FR_INLINE gen_Q gen_q_mul(gen_Q a, uint64_t c) { return a * c; }
FR_INLINE gen_Q gen_q_xorshr(gen_Q a, int s) { return a ^ (a >> s); }
FR_INLINE gen_I gen_q_hi32(gen_Q a) { return (uint32_t)(a >> 32); }
FR_INLINE gen_I gen_q_lo32(gen_Q a) { return (uint32_t)a; }
FR_INLINE gen_I gen_i_set1(int32_t v) { return (uint32_t)v; }
FR_INLINE gen_I gen_i_add(gen_I a, gen_I b) { return a + b; }
FR_INLINE gen_I gen_i_sub(gen_I a, gen_I b) { return a - b; }
FR_INLINE gen_I gen_i_and(gen_I a, gen_I b) { return a & b; }
FR_INLINE gen_I gen_i_srl(gen_I a, int s) { return a >> s; }
FR_INLINE gen_I gen_i_sll(gen_I a, int s) { return a << s; }
FR_INLINE gen_V gen_i_to_f(gen_I a) { return (float)(int32_t)a; }
FR_INLINE gen_I gen_f_bits(gen_V a) { uint32_t b; memcpy(&b, &a, 4); return b; }
FR_INLINE gen_V gen_f_from_bits(gen_I b) { float a; memcpy(&a, &b, 4); return a; }
FR_INLINE gen_V gen_f_set1(float v) { return v; }
FR_INLINE gen_V gen_f_add(gen_V a, gen_V b) { return a + b; }
FR_INLINE gen_V gen_f_sub(gen_V a, gen_V b) { return a - b; }
FR_INLINE gen_V gen_f_mul(gen_V a, gen_V b) { return a * b; }
FR_INLINE gen_V gen_f_fma(gen_V a, gen_V b, gen_V c) { return fmaf(a, b, c); }
FR_INLINE gen_V gen_f_fms(gen_V a, gen_V b, gen_V c) { return fmaf(a, b, -c); }
FR_INLINE gen_V gen_f_sqrt(gen_V a) { return sqrtf(a); }
FR_INLINE gen_V gen_f_load(const float *p) { return *p; }
FR_INLINE void gen_f_store(float *p, gen_V v) { *p = v; }
FR_INLINE gen_V gen_f_lookup16(const float *tab, gen_I idx) { return tab[idx & 15]; }

static void add_f32_generic(float *FR_RESTRICT q, int64_t ngroups, uint64_t first_pair, const float *tab_cos,
                            const float *tab_sin, uint64_t seed, uint64_t gamma) F32_BODY(gen_)
static void sgld_f32_generic(SGLD32_ARGS) F32_SGLD_BODY(gen_)

#if FR_X86
/* ---- AVX2 + FMA backend: 8 pairs a step. A Q is 8 uint64 in two registers, laid out so that the
 * high / low halves gather into one register in pair order with one shuffle_ps: lo = pairs (0,1,4,5),
 * hi = pairs (2,3,6,7). */
#define AVX2_ATTR __attribute__((target("avx2,fma")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))
#define a2_W 8
typedef struct {
    __m256i lo, hi;
} a2_Q;
typedef __m256i a2_I;
typedef __m256 a2_V;
AVX2_INLINE a2_Q a2_q_iota(uint64_t x0, uint64_t g) {
    a2_Q r;
    r.lo = _mm256_set_epi64x((long long)(x0 + 5 * g), (long long)(x0 + 4 * g), (long long)(x0 + g), (long long)x0);
    r.hi = _mm256_set_epi64x((long long)(x0 + 7 * g), (long long)(x0 + 6 * g), (long long)(x0 + 3 * g),
                             (long long)(x0 + 2 * g));
    return r;
}
AVX2_INLINE a2_Q a2_q_set1(uint64_t v) {
    a2_Q r;
    r.lo = r.hi = _mm256_set1_epi64x((long long)v);
    return r;
}
AVX2_INLINE a2_Q a2_q_add(a2_Q a, a2_Q b) {
    a.lo = _mm256_add_epi64(a.lo, b.lo);
    a.hi = _mm256_add_epi64(a.hi, b.hi);
    return a;
}
AVX2_INLINE __m256i a2_mul64(__m256i a, uint64_t c) { /* low 64 bits of a * c, per lane */
    const __m256i cl = _mm256_set1_epi64x((long long)(c & 0xFFFFFFFFULL));
    const __m256i ch = _mm256_set1_epi64x((long long)(c >> 32));
    __m256i ll = _mm256_mul_epu32(a, cl);
    __m256i hl = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), cl);
    __m256i lh = _mm256_mul_epu32(a, ch);
    return _mm256_add_epi64(ll, _mm256_slli_epi64(_mm256_add_epi64(hl, lh), 32));
}
AVX2_INLINE a2_Q a2_q_mul(a2_Q a, uint64_t c) {
    a.lo = a2_mul64(a.lo, c);
    a.hi = a2_mul64(a.hi, c);
    return a;
}
AVX2_INLINE a2_Q a2_q_xorshr(a2_Q a, int s) {
    a.lo = _mm256_xor_si256(a.lo, _mm256_srli_epi64(a.lo, s));
    a.hi = _mm256_xor_si256(a.hi, _mm256_srli_epi64(a.hi, s));
    return a;
}
AVX2_INLINE a2_I a2_q_hi32(a2_Q a) {
    return _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(a.lo), _mm256_castsi256_ps(a.hi), 0xDD));
}
AVX2_INLINE a2_I a2_q_lo32(a2_Q a) {
    return _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(a.lo), _mm256_castsi256_ps(a.hi), 0x88));
}
AVX2_INLINE a2_I a2_i_set1(int32_t v) { return _mm256_set1_epi32(v); }
AVX2_INLINE a2_I a2_i_add(a2_I a, a2_I b) { return _mm256_add_epi32(a, b); }
AVX2_INLINE a2_I a2_i_sub(a2_I a, a2_I b) { return _mm256_sub_epi32(a, b); }
AVX2_INLINE a2_I a2_i_and(a2_I a, a2_I b) { return _mm256_and_si256(a, b); }
AVX2_INLINE a2_I a2_i_srl(a2_I a, int s) { return _mm256_srli_epi32(a, s); }
AVX2_INLINE a2_I a2_i_sll(a2_I a, int s) { return _mm256_slli_epi32(a, s); }
AVX2_INLINE a2_V a2_i_to_f(a2_I a) { return _mm256_cvtepi32_ps(a); }
AVX2_INLINE a2_I a2_f_bits(a2_V a) { return _mm256_castps_si256(a); }
AVX2_INLINE a2_V a2_f_from_bits(a2_I a) { return _mm256_castsi256_ps(a); }
AVX2_INLINE a2_V a2_f_set1(float v) { return _mm256_set1_ps(v); }
AVX2_INLINE a2_V a2_f_add(a2_V a, a2_V b) { return _mm256_add_ps(a, b); }
AVX2_INLINE a2_V a2_f_sub(a2_V a, a2_V b) { return _mm256_sub_ps(a, b); }
AVX2_INLINE a2_V a2_f_mul(a2_V a, a2_V b) { return _mm256_mul_ps(a, b); }
AVX2_INLINE a2_V a2_f_fma(a2_V a, a2_V b, a2_V c) { return _mm256_fmadd_ps(a, b, c); }
AVX2_INLINE a2_V a2_f_fms(a2_V a, a2_V b, a2_V c) { return _mm256_fmsub_ps(a, b, c); }
AVX2_INLINE a2_V a2_f_sqrt(a2_V a) { return _mm256_sqrt_ps(a); }
AVX2_INLINE a2_V a2_f_load(const float *p) { return _mm256_loadu_ps(p); }
AVX2_INLINE void a2_f_store(float *p, a2_V v) { _mm256_storeu_ps(p, v); }
AVX2_INLINE a2_V a2_f_lookup16(const float *tab, a2_I idx) { /* tab[idx & 15]: two 8-entry permutes */
    __m256 t0 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(tab), idx);
    __m256 t1 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(tab + 8), idx);
    return _mm256_blendv_ps(t0, t1, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

static AVX2_ATTR void add_f32_avx2(float *FR_RESTRICT q, int64_t ngroups, uint64_t first_pair, const float *tab_cos,
                                   const float *tab_sin, uint64_t seed, uint64_t gamma) F32_BODY(a2_)
static AVX2_ATTR void sgld_f32_avx2(SGLD32_ARGS) F32_SGLD_BODY(a2_)

/* ---- AVX-512 backend: 16 pairs a step (one group). A Q is 16 uint64 in two registers (pairs 0-7, 8-15). */
#define AVX512_ATTR __attribute__((target("avx512f,avx512dq")))
#define AVX512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512dq")))
#define z_W 16
typedef struct {
    __m512i lo, hi;
} z_Q;
typedef __m512i z_I;
typedef __m512 z_V;
AVX512_INLINE z_Q z_q_iota(uint64_t x0, uint64_t g) {
    const __m512i j = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    z_Q r;
    r.lo = _mm512_add_epi64(_mm512_set1_epi64((long long)x0), _mm512_mullo_epi64(j, _mm512_set1_epi64((long long)g)));
    r.hi = _mm512_add_epi64(r.lo, _mm512_set1_epi64((long long)(8 * g)));
    return r;
}
AVX512_INLINE z_Q z_q_set1(uint64_t v) {
    z_Q r;
    r.lo = r.hi = _mm512_set1_epi64((long long)v);
    return r;
}
AVX512_INLINE z_Q z_q_add(z_Q a, z_Q b) {
    a.lo = _mm512_add_epi64(a.lo, b.lo);
    a.hi = _mm512_add_epi64(a.hi, b.hi);
    return a;
}
AVX512_INLINE z_Q z_q_mul(z_Q a, uint64_t c) {
    const __m512i cc = _mm512_set1_epi64((long long)c);
    a.lo = _mm512_mullo_epi64(a.lo, cc);
    a.hi = _mm512_mullo_epi64(a.hi, cc);
    return a;
}
AVX512_INLINE z_Q z_q_xorshr(z_Q a, int s) {
    a.lo = _mm512_xor_si512(a.lo, _mm512_srli_epi64(a.lo, s));
    a.hi = _mm512_xor_si512(a.hi, _mm512_srli_epi64(a.hi, s));
    return a;
}
AVX512_INLINE z_I z_q_hi32(z_Q a) {
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_permutex2var_epi32(a.lo, odd, a.hi);
}
AVX512_INLINE z_I z_q_lo32(z_Q a) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_permutex2var_epi32(a.lo, even, a.hi);
}
AVX512_INLINE z_I z_i_set1(int32_t v) { return _mm512_set1_epi32(v); }
AVX512_INLINE z_I z_i_add(z_I a, z_I b) { return _mm512_add_epi32(a, b); }
AVX512_INLINE z_I z_i_sub(z_I a, z_I b) { return _mm512_sub_epi32(a, b); }
AVX512_INLINE z_I z_i_and(z_I a, z_I b) { return _mm512_and_si512(a, b); }
AVX512_INLINE z_I z_i_srl(z_I a, int s) { return _mm512_srli_epi32(a, s); }
AVX512_INLINE z_I z_i_sll(z_I a, int s) { return _mm512_slli_epi32(a, s); }
AVX512_INLINE z_V z_i_to_f(z_I a) { return _mm512_cvtepi32_ps(a); }
AVX512_INLINE z_I z_f_bits(z_V a) { return _mm512_castps_si512(a); }
AVX512_INLINE z_V z_f_from_bits(z_I a) { return _mm512_castsi512_ps(a); }
AVX512_INLINE z_V z_f_set1(float v) { return _mm512_set1_ps(v); }
AVX512_INLINE z_V z_f_add(z_V a, z_V b) { return _mm512_add_ps(a, b); }
AVX512_INLINE z_V z_f_sub(z_V a, z_V b) { return _mm512_sub_ps(a, b); }
AVX512_INLINE z_V z_f_mul(z_V a, z_V b) { return _mm512_mul_ps(a, b); }
AVX512_INLINE z_V z_f_fma(z_V a, z_V b, z_V c) { return _mm512_fmadd_ps(a, b, c); }
AVX512_INLINE z_V z_f_fms(z_V a, z_V b, z_V c) { return _mm512_fmsub_ps(a, b, c); }
AVX512_INLINE z_V z_f_sqrt(z_V a) { return _mm512_sqrt_ps(a); }
AVX512_INLINE z_V z_f_load(const float *p) { return _mm512_loadu_ps(p); }
AVX512_INLINE void z_f_store(float *p, z_V v) { _mm512_storeu_ps(p, v); }
AVX512_INLINE z_V z_f_lookup16(const float *tab, z_I idx) { return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(tab)); }

static AVX512_ATTR void add_f32_avx512(float *FR_RESTRICT q, int64_t ngroups, uint64_t first_pair,
                                       const float *tab_cos, const float *tab_sin, uint64_t seed, uint64_t gamma)
    F32_BODY(z_)
static AVX512_ATTR void sgld_f32_avx512(SGLD32_ARGS) F32_SGLD_BODY(z_)
#endif /* FR_X86 */

/* ------------------------------------------------------------------------------------------ float64 body
 * Plain C, auto-vectorised per target; no FMA (contraction off), so every target gives the same bits. */
FR_INLINE double d_from_bits(uint64_t b) { double d; memcpy(&d, &b, 8); return d; }
FR_INLINE uint64_t d_bits(double d) { uint64_t b; memcpy(&b, &d, 8); return b; }
FR_INLINE double d_exact_int(int64_t v) { /* (double) v for |v| < 2^51, without an int64 conversion */
    return d_from_bits((uint64_t)v + 0x4338000000000000ULL) - 6755399441055744.0;
}

/* -2 ln u for u in (0, 1] (u a multiple of 2^-52) */
FR_INLINE double minus2_log_f64(double u) {
    uint64_t ix = d_bits(u) - 0x3FE6A09E667F3BCDULL; /* - bits of sqrt(1/2) */
    int64_t k = (int64_t)ix >> 52;                    /* u = 2^k m, m in [sqrt(1/2), sqrt(2)) */
    double m = d_from_bits(d_bits(u) - ((uint64_t)k << 52));
    double f = m - 1.0;
    double s = f / (2.0 + f);
    double z = s * s;
    double R = 0.10526315789473684;                   /* 2/19 */
    R = R * z + 0.11764705882352941;                  /* 2/17 */
    R = R * z + 0.13333333333333333;                  /* 2/15 */
    R = R * z + 0.15384615384615385;                  /* 2/13 */
    R = R * z + 0.18181818181818182;                  /* 2/11 */
    R = R * z + 0.2222222222222222;                   /* 2/9 */
    R = R * z + 0.2857142857142857;                   /* 2/7 */
    R = R * z + 0.4;                                  /* 2/5 */
    R = R * z + 0.6666666666666666;                   /* 2/3 */
    R = R * z;
    double hfsq = 0.5 * f * f;
    double log1pf = f - (hfsq - s * (hfsq + R));
    double kd = d_exact_int(k);
    /* ln u = k ln2_hi + (k ln2_lo + ln(1 + f)); k ln2_hi is exact for |k| < 2^20 */
    double lnu = kd * 6.93147180369123816490e-01 + (kd * 1.90821492927058770002e-10 + log1pf);
    return -2.0 * lnu;
}

FR_INLINE void pair_f64(uint64_t z1, uint64_t z2, double scale, double *zc, double *zs) {
    double u1 = 2.0 - d_from_bits(0x3FF0000000000000ULL | (z1 >> 12)); /* (0, 1] */
    double rs = sqrt(minus2_log_f64(u1)) * scale;
    uint64_t cc = (z2 >> 12) + (1ULL << 49); /* t = 2 pi c / 2^52 = q pi/2 + d */
    uint64_t qd = (cc >> 50) & 3;
    int64_t rem = (int64_t)(cc & ((1ULL << 50) - 1)) - (int64_t)(1ULL << 49);
    double d = d_exact_int(rem) * 1.3951473992034527e-15; /* 2 pi / 2^52 */
    double d2 = d * d;
    double s = 2.8114572543455206e-15;                    /* 1/17! */
    s = s * d2 + -7.647163731819816e-13;
    s = s * d2 + 1.6059043836821613e-10;
    s = s * d2 + -2.505210838544172e-08;
    s = s * d2 + 2.7557319223985893e-06;
    s = s * d2 + -0.0001984126984126984;
    s = s * d2 + 0.008333333333333333;
    s = s * d2 + -0.16666666666666666;
    s = d + d * d2 * s;
    double c = 4.779477332387385e-14;                     /* 1/16! */
    c = c * d2 + -1.1470745597729725e-11;
    c = c * d2 + 2.08767569878681e-09;
    c = c * d2 + -2.755731922398589e-07;
    c = c * d2 + 2.48015873015873e-05;
    c = c * d2 + -0.001388888888888889;
    c = c * d2 + 0.041666666666666664;
    c = (1.0 - 0.5 * d2) + d2 * d2 * c;
    double ct = (qd & 1) ? s : c; /* rotate (c, s) by q quarter turns */
    double st = (qd & 1) ? c : s;
    uint64_t sgc = (((qd + 1) >> 1) & 1) << 63, sgs = ((qd >> 1) & 1) << 63;
    *zc = d_from_bits(d_bits(ct) ^ sgc) * rs;
    *zs = d_from_bits(d_bits(st) ^ sgs) * rs;
}

#define F64_BODY                                                                                          \
    {                                                                                                     \
        for (int64_t g = 0; g < ngroups; g++) {                                                          \
            double *qg = q + g * FR_GROUP;                                                                \
            uint64_t xb = seed + 2 * (first_pair + 16 * (uint64_t)g) * gamma;                            \
            for (int l = 0; l < 16; l++) {                                                                \
                double zc, zs;                                                                            \
                uint64_t x1 = xb + (uint64_t)(2 * l) * gamma;                                             \
                pair_f64(mix64(x1), mix64(x1 + gamma), scale, &zc, &zs);                                  \
                qg[l] += zc;                                                                              \
                qg[16 + l] += zs;                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }

static void add_f64_generic(double *FR_RESTRICT q, int64_t ngroups, uint64_t first_pair, double scale,
                            uint64_t seed, uint64_t gamma) F64_BODY
#if FR_X86
static AVX2_ATTR void add_f64_avx2(double *FR_RESTRICT q, int64_t ngroups, uint64_t first_pair, double scale,
                                   uint64_t seed, uint64_t gamma) F64_BODY
static AVX512_ATTR void add_f64_avx512(double *FR_RESTRICT q, int64_t ngroups, uint64_t first_pair,
                                       double scale, uint64_t seed, uint64_t gamma) F64_BODY
#endif

/* ---- fused SGLD step, float64 body: the float32 step's formulas in plain C (no FMA: every target rounds
 * the same way), d = g + wd p + gam (p - x), p = p + (-lr) d, then p = p + scale xi exactly as add_normal
 * adds it, mu = base + coef (p - mu). */
typedef struct {
    double nlr, wd, gam, coef, scale;
    int has_wd, has_gam, small, noise;
} sgld64_t;

#define F64_SGLD_ELEM(i, NOISE)                                                                           \
    {                                                                                                     \
        double p_ = pp[i], d_ = gp[i];                                                                    \
        if (has_wd) d_ = d_ + wd * p_;                                                                    \
        if (has_gam) d_ = d_ + gam * (p_ - xp[i]);                                                        \
        p_ = p_ + nlr * d_;                                                                               \
        p_ = p_ NOISE;                                                                                    \
        double m_ = mp[i];                                                                                \
        pp[i] = p_;                                                                                       \
        mp[i] = (small ? m_ : p_) + coef * (p_ - m_);                                                     \
    }

#define F64_SGLD_BODY                                                                                     \
    {                                                                                                     \
        const double nlr = cf->nlr, wd = cf->wd, gam = cf->gam, coef = cf->coef, scale = cf->scale;       \
        const int has_wd = cf->has_wd, has_gam = cf->has_gam, small = cf->small;                          \
        if (cf->noise) {                                                                                  \
            for (int64_t g = 0; g < ngroups; g++) {                                                      \
                double *pp = p + g * FR_GROUP, *mp = mu + g * FR_GROUP;                                   \
                const double *gp = gr + g * FR_GROUP, *xp = xa + g * FR_GROUP;                            \
                uint64_t xb = seed + 2 * (first_pair + 16 * (uint64_t)g) * gamma;                        \
                double z[FR_GROUP]; /* the group's noise first (add_normal's loop), then the update */    \
                for (int l = 0; l < 16; l++) {                                                            \
                    uint64_t x1 = xb + (uint64_t)(2 * l) * gamma;                                         \
                    pair_f64(mix64(x1), mix64(x1 + gamma), scale, &z[l], &z[16 + l]);                     \
                }                                                                                         \
                for (int i = 0; i < FR_GROUP; i++) F64_SGLD_ELEM(i, + z[i])                               \
            }                                                                                             \
        } else {                                                                                          \
            double *pp = p, *mp = mu;                                                                     \
            const double *gp = gr, *xp = xa;                                                             \
            (void)first_pair, (void)seed, (void)gamma, (void)scale;                                       \
            for (int64_t i = 0; i < ngroups * FR_GROUP; i++) F64_SGLD_ELEM(i, )                           \
        }                                                                                                 \
    }

#define SGLD64_ARGS                                                                                       \
    double *FR_RESTRICT p, const double *FR_RESTRICT gr, const double *FR_RESTRICT xa,                    \
        double *FR_RESTRICT mu, int64_t ngroups, uint64_t first_pair, const sgld64_t *cf, uint64_t seed,    \
        uint64_t gamma

static void sgld_f64_generic(SGLD64_ARGS) F64_SGLD_BODY
#if FR_X86
static AVX2_ATTR void sgld_f64_avx2(SGLD64_ARGS) F64_SGLD_BODY
static AVX512_ATTR void sgld_f64_avx512(SGLD64_ARGS) F64_SGLD_BODY
#endif

/* ------------------------------------------------------------------------------------------ driver */
typedef void (*f32_kernel)(float *FR_RESTRICT, int64_t, uint64_t, const float *, const float *, uint64_t, uint64_t);
typedef void (*f64_kernel)(double *FR_RESTRICT, int64_t, uint64_t, double, uint64_t, uint64_t);

typedef void (*sgld32_kernel)(SGLD32_ARGS);
typedef void (*sgld64_kernel)(SGLD64_ARGS);

static int best_isa(void) {
#if FR_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
#endif
    return ISA_GENERIC;
}

/* The kernels of each instruction set, indexed by ISA_GENERIC / ISA_AVX2 / ISA_AVX512 (the x86 builds
 * exist only on x86: elsewhere every entry is the portable build). */
static const struct {
    f32_kernel add32;
    f64_kernel add64;
    sgld32_kernel sgld32;
    sgld64_kernel sgld64;
} KERNELS[3] = {
    {add_f32_generic, add_f64_generic, sgld_f32_generic, sgld_f64_generic},
#if FR_X86
    {add_f32_avx2, add_f64_avx2, sgld_f32_avx2, sgld_f64_avx2},
    {add_f32_avx512, add_f64_avx512, sgld_f32_avx512, sgld_f64_avx512},
#else
    {add_f32_generic, add_f64_generic, sgld_f32_generic, sgld_f64_generic},
    {add_f32_generic, add_f64_generic, sgld_f32_generic, sgld_f64_generic},
#endif
};

/* Add scale * N(0, 1) to buf[0 .. n), whose first element is element `offset` of stream (key, counter).
 * Whole groups go straight through the kernel; a group cut by either end goes through a 32-element copy
 * (so the arithmetic, and the bits, are the same as in place). KCALL(dst, ngroups, first_pair) runs it. */
#define WALK_GROUPS(T, KCALL)                                                                             \
    {                                                                                                     \
        int64_t e = offset, end = offset + n;                                                             \
        while (e < end) {                                                                                 \
            int64_t g = e / FR_GROUP, lo = e - g * FR_GROUP;                                              \
            if (lo == 0 && end - e >= FR_GROUP) {                                                         \
                int64_t ng = (end - e) / FR_GROUP;                                                        \
                KCALL(buf + (e - offset), ng, (uint64_t)g * 16);                                          \
                e += ng * FR_GROUP;                                                                       \
            } else {                                                                                      \
                T tmp[FR_GROUP];                                                                          \
                int64_t hi = end - g * FR_GROUP < FR_GROUP ? end - g * FR_GROUP : FR_GROUP;               \
                memset(tmp, 0, sizeof tmp);                                                               \
                memcpy(tmp + lo, buf + (e - offset), (size_t)(hi - lo) * sizeof(T));                      \
                KCALL(tmp, 1, (uint64_t)g * 16);                                                          \
                memcpy(buf + (e - offset), tmp + lo, (size_t)(hi - lo) * sizeof(T));                      \
                e = g * FR_GROUP + hi;                                                                    \
            }                                                                                             \
        }                                                                                                 \
    }

static void scaled_tables(float scale, float *tc, float *ts) {
    for (int i = 0; i < 16; i++) {
        tc[i] = scale * cos16[i];
        ts[i] = scale * sin16[i];
    }
}

static void add_normal_f32(float *buf, int64_t n, int64_t offset, float scale, uint64_t key, uint64_t counter,
                           int isa) {
    f32_kernel kern = KERNELS[isa].add32;
    stream_t st = make_stream(key, counter, 0);
    float tc[16], ts[16];
    if (n <= 0) return;
    scaled_tables(scale, tc, ts);
#define KCALL32(dst, ng, pair0) kern(dst, ng, pair0, tc, ts, st.seed, st.gamma)
    WALK_GROUPS(float, KCALL32)
#undef KCALL32
}

static void add_normal_f64(double *buf, int64_t n, int64_t offset, double scale, uint64_t key, uint64_t counter,
                           int isa) {
    f64_kernel kern = KERNELS[isa].add64;
    stream_t st = make_stream(key, counter, 1);
    if (n <= 0) return;
#define KCALL64(dst, ng, pair0) kern(dst, ng, pair0, scale, st.seed, st.gamma)
    WALK_GROUPS(double, KCALL64)
#undef KCALL64
}

/* One fused SGLD step on the n elements of (p, gr, xa, mu), whose first element is element `offset` of the
 * stream (key, counter). Whole groups go straight through the kernel; a group cut by either end goes
 * through 32-element copies of the four arrays (zeros elsewhere), as in WALK_GROUPS, so the bits are the
 * same as in place. */
typedef struct {
    double lr, wd, gam, w, scale;
    uint64_t key, counter;
} sgld_args_t;

#define SGLD_WALK(T, KCALL)                                                                               \
    {                                                                                                     \
        int64_t e = offset, end = offset + n;                                                             \
        while (e < end) {                                                                                 \
            int64_t g = e / FR_GROUP, lo = e - g * FR_GROUP, k = e - offset;                              \
            if (lo == 0 && end - e >= FR_GROUP) {                                                         \
                int64_t ng = (end - e) / FR_GROUP;                                                        \
                KCALL(p + k, gr + k, xa + k, mu + k, ng, (uint64_t)g * 16);                               \
                e += ng * FR_GROUP;                                                                       \
            } else {                                                                                      \
                T tp[FR_GROUP], tg[FR_GROUP], tx[FR_GROUP], tm[FR_GROUP];                                 \
                int64_t hi = end - g * FR_GROUP < FR_GROUP ? end - g * FR_GROUP : FR_GROUP;               \
                size_t nb = (size_t)(hi - lo) * sizeof(T);                                                \
                memset(tp, 0, sizeof tp);                                                                 \
                memset(tg, 0, sizeof tg);                                                                 \
                memset(tx, 0, sizeof tx);                                                                 \
                memset(tm, 0, sizeof tm);                                                                 \
                memcpy(tp + lo, p + k, nb);                                                               \
                memcpy(tg + lo, gr + k, nb);                                                              \
                memcpy(tx + lo, xa + k, nb);                                                              \
                memcpy(tm + lo, mu + k, nb);                                                              \
                KCALL(tp, tg, tx, tm, 1, (uint64_t)g * 16);                                               \
                memcpy(p + k, tp + lo, nb);                                                               \
                memcpy(mu + k, tm + lo, nb);                                                              \
                e = g * FR_GROUP + hi;                                                                    \
            }                                                                                             \
        }                                                                                                 \
    }

static void sgld_step_f32(float *p, const float *gr, const float *xa, float *mu, int64_t n, int64_t offset,
                          const sgld_args_t *a, int isa) {
    sgld32_kernel kern = KERNELS[isa].sgld32;
    stream_t st = make_stream(a->key, a->counter, 0);
    float tc[16], ts[16], w = (float)a->w;
    sgld32_t cf;
    if (n <= 0) return;
    cf.nlr = (float)-a->lr;
    cf.wd = (float)a->wd;
    cf.gam = (float)a->gam;
    cf.small = fabsf(w) < 0.5f; /* torch's is_lerp_weight_small */
    cf.coef = cf.small ? w : w - 1.0f;
    cf.has_wd = a->wd != 0.0;
    cf.has_gam = a->gam != 0.0;
    cf.noise = a->scale != 0.0;
    scaled_tables((float)a->scale, tc, ts);
    cf.tab_cos = tc;
    cf.tab_sin = ts;
#define KCALL_S32(dp, dg, dx, dm, ng, pair0) kern(dp, dg, dx, dm, ng, pair0, &cf, st.seed, st.gamma)
    SGLD_WALK(float, KCALL_S32)
#undef KCALL_S32
}

static void sgld_step_f64(double *p, const double *gr, const double *xa, double *mu, int64_t n, int64_t offset,
                          const sgld_args_t *a, int isa) {
    sgld64_kernel kern = KERNELS[isa].sgld64;
    stream_t st = make_stream(a->key, a->counter, 1);
    sgld64_t cf;
    if (n <= 0) return;
    cf.nlr = -a->lr;
    cf.wd = a->wd;
    cf.gam = a->gam;
    cf.small = fabs(a->w) < 0.5;
    cf.coef = cf.small ? a->w : a->w - 1.0;
    cf.scale = a->scale;
    cf.has_wd = a->wd != 0.0;
    cf.has_gam = a->gam != 0.0;
    cf.noise = a->scale != 0.0;
#define KCALL_S64(dp, dg, dx, dm, ng, pair0) kern(dp, dg, dx, dm, ng, pair0, &cf, st.seed, st.gamma)
    SGLD_WALK(double, KCALL_S64)
#undef KCALL_S64
}

/* Probe for the tests: -2 ln u1, cos t, sin t of the float32 path (scale 1) for given a (u1 = (a + 1) / 2^24)
 * and angle words c, through the scalar backend, which every SIMD path matches bit for bit. */
static void probe_f32(const uint32_t *a, const uint32_t *c, float *L_out, float *ct_out, float *st_out, int64_t n) {
    const float *tab_cos = cos16, *tab_sin = sin16;
    for (int64_t i = 0; i < n; i++) {
        gen_I ai = a[i], ci = c[i];
        F32_MINUS2LOG(gen_, ai, L)
        F32_SINCOS(gen_, ci, ct, st)
        L_out[i] = L;
        ct_out[i] = ct;
        st_out[i] = st;
    }
}

#ifndef FASTRAND_NO_PYTHON
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static int g_best_isa = ISA_GENERIC;

static int parse_u64(PyObject *o, const char *what, uint64_t *out) {
    unsigned long long v;
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", what);
        return -1;
    }
    v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be an int in [0, 2**64)", what);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static int resolve_isa(int isa) {
    if (isa < 0) return g_best_isa;
    if (isa > g_best_isa) {
        PyErr_Format(PyExc_ValueError, "isa %d is not available on this CPU (best: %d, %s)", isa, g_best_isa,
                     isa_names[g_best_isa]);
        return -1;
    }
    return isa;
}

PyDoc_STRVAR(add_normal_doc,
"add_normal(address, numel, dtype, scale, key, counter, offset=0, isa=-1)\n--\n\n"
"Add scale * N(0, 1) in place to numel contiguous elements at address (dtype 0: float32, 1: float64).\n"
"The element at address is element `offset` of the stream (key, counter) (key, counter: ints in\n"
"[0, 2**64)); the values depend only on (key, counter, offset + i) and the dtype. isa: -1 for the best\n"
"available, or 0 (generic), 1 (avx2), 2 (avx512); all give the same bits. The GIL is released.");

static PyObject *py_add_normal(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"address", "numel", "dtype", "scale", "key", "counter", "offset", "isa", NULL};
    PyObject *addr_o, *key_o, *counter_o;
    Py_ssize_t numel, offset = 0;
    int dtype, isa = -1;
    double scale;
    uint64_t key, counter;
    void *addr;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OnidOO|ni:add_normal", kwlist, &addr_o, &numel, &dtype, &scale,
                                     &key_o, &counter_o, &offset, &isa))
        return NULL;
    if (numel < 0 || offset < 0) {
        PyErr_SetString(PyExc_ValueError, "numel and offset must be >= 0");
        return NULL;
    }
    if (dtype != 0 && dtype != 1) {
        PyErr_SetString(PyExc_ValueError, "dtype must be 0 (float32) or 1 (float64)");
        return NULL;
    }
    if (parse_u64(key_o, "key", &key) || parse_u64(counter_o, "counter", &counter)) return NULL;
    if ((isa = resolve_isa(isa)) < 0) return NULL;
    addr = PyLong_AsVoidPtr(addr_o);
    if (addr == NULL && PyErr_Occurred()) return NULL;
    if (numel == 0) Py_RETURN_NONE;
    if (addr == NULL) {
        PyErr_SetString(PyExc_ValueError, "address is NULL");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (dtype == 0)
        add_normal_f32((float *)addr, numel, offset, (float)scale, key, counter, isa);
    else
        add_normal_f64((double *)addr, numel, offset, scale, key, counter, isa);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sgld_step_doc,
"sgld_step(entries, lr, weight_decay, gamma, weight, scale, key, counter, isa=-1)\n--\n\n"
"Entropy-SGD's inner (SGLD) step fused with the noise, in one pass over each entry. entries: a sequence\n"
"of tuples (dtype, numel, offset, p, g, x, mu): dtype 0 (float32) or 1 (float64), numel contiguous\n"
"elements at each of the addresses p (parameters), g (gradient, read only), x (anchor, read only) and mu\n"
"(running mean), p's first element being element `offset` of the stream (key, counter). Per element:\n"
"    d = g + weight_decay p + gamma (p - x)   (terms with a zero coefficient skipped)\n"
"    p <- p - lr d + scale xi                 (xi: the value add_normal adds for (key, counter, offset + i))\n"
"    mu <- lerp(mu, p, weight)                (torch.lerp's formula)\n"
"scale 0 draws no noise. All isa paths give the same bits. The GIL is released.");

typedef struct {
    int dtype;
    Py_ssize_t numel, offset;
    void *p, *g, *x, *mu;
} sgld_entry_t;

static PyObject *py_sgld_step(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"entries", "lr", "weight_decay", "gamma", "weight", "scale", "key", "counter", "isa",
                             NULL};
    PyObject *entries_o, *seq, *key_o, *counter_o;
    sgld_args_t a;
    int isa = -1;
    Py_ssize_t m;
    sgld_entry_t *ent;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OdddddOO|i:sgld_step", kwlist, &entries_o, &a.lr, &a.wd, &a.gam,
                                     &a.w, &a.scale, &key_o, &counter_o, &isa))
        return NULL;
    if (parse_u64(key_o, "key", &a.key) || parse_u64(counter_o, "counter", &a.counter)) return NULL;
    if ((isa = resolve_isa(isa)) < 0) return NULL;
    seq = PySequence_Fast(entries_o, "entries must be a sequence of (dtype, numel, offset, p, g, x, mu) tuples");
    if (seq == NULL) return NULL;
    m = PySequence_Fast_GET_SIZE(seq);
    ent = PyMem_Malloc((size_t)(m > 0 ? m : 1) * sizeof *ent);
    if (ent == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i), *o[4];
        sgld_entry_t *e = &ent[i];
        void **dst[4] = {&e->p, &e->g, &e->x, &e->mu};
        if (!PyTuple_Check(it)) {
            PyErr_SetString(PyExc_TypeError, "entries must be (dtype, numel, offset, p, g, x, mu) tuples");
            goto fail;
        }
        if (!PyArg_ParseTuple(it, "innOOOO:sgld_step entry", &e->dtype, &e->numel, &e->offset, &o[0], &o[1], &o[2],
                              &o[3]))
            goto fail;
        if (e->dtype != 0 && e->dtype != 1) {
            PyErr_SetString(PyExc_ValueError, "dtype must be 0 (float32) or 1 (float64)");
            goto fail;
        }
        if (e->numel < 0 || e->offset < 0) {
            PyErr_SetString(PyExc_ValueError, "numel and offset must be >= 0");
            goto fail;
        }
        for (int j = 0; j < 4; j++) {
            void *ptr = PyLong_AsVoidPtr(o[j]);
            if (ptr == NULL && PyErr_Occurred()) goto fail;
            if (ptr == NULL && e->numel > 0) {
                PyErr_SetString(PyExc_ValueError, "address is NULL");
                goto fail;
            }
            *dst[j] = ptr;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < m; i++) {
        const sgld_entry_t *e = &ent[i];
        if (e->dtype == 0)
            sgld_step_f32((float *)e->p, (const float *)e->g, (const float *)e->x, (float *)e->mu, e->numel,
                          e->offset, &a, isa);
        else
            sgld_step_f64((double *)e->p, (const double *)e->g, (const double *)e->x, (double *)e->mu, e->numel,
                          e->offset, &a, isa);
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(ent);
    Py_DECREF(seq);
    Py_RETURN_NONE;
fail:
    PyMem_Free(ent);
    Py_DECREF(seq);
    return NULL;
}

PyDoc_STRVAR(probe_doc,
"_probe_f32(a_address, c_address, L_address, cos_address, sin_address, n)\n--\n\n"
"For tests: from n uint32 inputs a (below 2**24: u1 = (a + 1) / 2**24) and c (the angle word), write the\n"
"float32 path's -2 ln u1, cos t and sin t (scale 1).");

static PyObject *py_probe(PyObject *self, PyObject *args) {
    PyObject *o[5];
    void *p[5];
    Py_ssize_t n;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOn:_probe_f32", &o[0], &o[1], &o[2], &o[3], &o[4], &n)) return NULL;
    for (int i = 0; i < 5; i++) {
        p[i] = PyLong_AsVoidPtr(o[i]);
        if (p[i] == NULL) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "address is NULL");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (((const uint32_t *)p[0])[i] >= (1u << 24)) {
            PyErr_SetString(PyExc_ValueError, "a must be below 2**24");
            return NULL;
        }
    }
    probe_f32((const uint32_t *)p[0], (const uint32_t *)p[1], (float *)p[2], (float *)p[3], (float *)p[4], n);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(stream_doc,
"_stream(key, counter, dtype=0)\n--\n\nFor tests: the (seed, gamma) of the SplitMix64 stream of (key, counter).");

static PyObject *py_stream(PyObject *self, PyObject *args) {
    PyObject *ko, *co;
    uint64_t key, counter;
    int dtype = 0;
    stream_t st;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO|i:_stream", &ko, &co, &dtype)) return NULL;
    if (parse_u64(ko, "key", &key) || parse_u64(co, "counter", &counter)) return NULL;
    st = make_stream(key, counter, dtype != 0);
    return Py_BuildValue("(KK)", (unsigned long long)st.seed, (unsigned long long)st.gamma);
}

static PyMethodDef methods[] = {
    {"add_normal", (PyCFunction)(void (*)(void))py_add_normal, METH_VARARGS | METH_KEYWORDS, add_normal_doc},
    {"sgld_step", (PyCFunction)(void (*)(void))py_sgld_step, METH_VARARGS | METH_KEYWORDS, sgld_step_doc},
    {"_probe_f32", py_probe, METH_VARARGS, probe_doc},
    {"_stream", py_stream, METH_VARARGS, stream_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "flatminima._fastrand",
    "Counter-based Gaussian noise (SplitMix64 + Box-Muller) added in place (add_normal), alone or fused\n"
    "into Entropy-SGD's inner SGLD step (sgld_step).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastrand(void) {
    PyObject *m = PyModule_Create(&module), *isas;
    if (m == NULL) return NULL;
    g_best_isa = best_isa();
    isas = PyTuple_New(g_best_isa + 1);
    if (isas == NULL) goto fail;
    for (int i = 0; i <= g_best_isa; i++) PyTuple_SET_ITEM(isas, i, PyUnicode_FromString(isa_names[i]));
    if (PyModule_AddObject(m, "ISAS", isas) < 0) {
        Py_DECREF(isas);
        goto fail;
    }
    if (PyModule_AddStringConstant(m, "ISA", isa_names[g_best_isa]) < 0) goto fail;
    if (PyModule_AddIntConstant(m, "GROUP", FR_GROUP) < 0) goto fail;
    if (PyModule_AddIntConstant(m, "VERSION", FASTRAND_VERSION) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
#endif /* FASTRAND_NO_PYTHON */
