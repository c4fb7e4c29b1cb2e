/* kernelcert._argmax_c: the DPA pass of `voting.argmax_plurality_margin` for float32 scores with
 * 8 <= K <= 16 classes, compiled at install time (setup.py, optional extension; without it, or on a
 * CPU without AVX2 and FMA, kernelcert runs the numba kernel `voting._argmax_margin_fixed`, which
 * is also the test oracle together with numpy's argmax).
 *
 * argmax_margin_f32(scores, t, M, K, counts, prediction, radius) -> bool
 *   scores      C-contiguous float32 (t, M, K), read once (any object with the buffer protocol)
 *   counts      C-contiguous (t, K) of int64, int32, uint16 or uint8 (M must fit), written: votes per class
 *               (overwritten, not accumulated); or None: not stored (no (t, K) output to allocate and
 *               fault in)
 *   prediction  int64 (t,), written: the plurality winner p (ties to the smaller class index)
 *   radius      int64 (t,), written: (n_p - max_{c != p}(n_c + [c < p])) // 2, the DPA radius
 *   returns True if a score is NaN or +-inf (then the outputs are unspecified), else False.
 *
 * Each model votes for the FIRST maximiser of its K scores (smallest class index among the equal
 * maxima, -0.0 == +0.0, as numpy.argmax and the numba kernel's strict `>` scan).
 *
 * Two consecutive models (a pair) share every register: the scores are read in NC = ceil(K / 4)
 * chunks of 4 classes, one register per chunk holding [chunk of the first model | same chunk of the
 * second]; chunk j < NC - 1 holds classes 4j..4j+3, the last one classes K-4..K-1 (overlapping the
 * one before when K is not a multiple of 4: nothing is read past a model's scores). The lane-wise
 * max of the chunks, then of the 4 lanes within each half, is each model's maximum in every lane of
 * its half; the chunks' lane-wise "== maximum" masks packed to bytes give, per half, 16 bytes at
 * "positions" 4j + l (0xFF iff that score is a maximum). The first maximiser of a model is its first
 * 0xFF byte: within each 64-bit word x & -x keeps only the lowest set bit (byte value 1 there), and
 * the word of positions 8..15 counts only where positions 0..7 hold no maximum; adding those bytes
 * to a register of byte counters counts both models' votes without a branch. The byte counters hold
 * at most 255 pairs; then they are widened into the row's 16 int32 counts per position, and the
 * positions of the last chunk are moved to their classes (duplicates of the chunk before dropped).
 * The plurality winner (first maximum of the counts) and the rival count are found with compares
 * and horizontal maxima, no branches. The last model of an odd M is voted alone: two overlapping
 * 8-lane loads (classes [0, 8) and [K - 8, K)), their horizontal max, the lowest set bit of the
 * "== max" mask.
 *
 * The pass prefetches 4 KiB ahead of the pair it votes (software prefetch).
 *
 * NaN cannot slip through: finiteness is x * 0 (NaN iff x is NaN or infinite) added into
 * accumulators (fused multiply-add) over every score read, NaN at the end iff one score was not
 * finite. The GIL is released during the pass.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KC_X86 1
#else
#define KC_X86 0
#endif

#if KC_X86
/* the vote of one model from its two loads a (classes 0..7), b (classes K-8..K-1) and x, their max
   in every lane: bit c of the mask is set iff score c equals the max, the lowest is the first
   maximiser (bit 16: only reached when x is NaN, i.e. a non-finite score, reported by the caller;
   it keeps the vote < 16) */
__attribute__((target("avx2,bmi")))
static inline int first_max(__m256 a, __m256 b, __m256 x, int shift)
{
    unsigned ea = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(a, x, _CMP_EQ_OQ));
    unsigned eb = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(b, x, _CMP_EQ_OQ));
    return __builtin_ctz(ea | (eb << shift) | (1u << 16)) & 15;
}

/* the vote of the model at p (K scores), one model alone; f: its finiteness accumulator */
__attribute__((target("avx2,fma,bmi")))
static inline int single_vote(const float *p, int K, __m256 *f)
{
    const int shift = K - 8;
    __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + shift);
    *f = _mm256_fmadd_ps(a, _mm256_setzero_ps(), *f);
    *f = _mm256_fmadd_ps(b, _mm256_setzero_ps(), *f);
    __m256 x = _mm256_max_ps(a, b);
    x = _mm256_max_ps(x, _mm256_permute2f128_ps(x, x, 1));
    x = _mm256_max_ps(x, _mm256_shuffle_ps(x, x, 0x4E));
    x = _mm256_max_ps(x, _mm256_shuffle_ps(x, x, 0xB1));
    return first_max(a, b, x, shift);
}

/* [4 floats at p | 4 floats at q] */
__attribute__((target("avx2")))
static inline __m256 load_pair(const float *p, const float *q)
{
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p)), _mm_loadu_ps(q), 1);
}

/* software prefetch distance of the pass, chosen among 1, 2, 4 and 8 KiB by timing the pass alone on
   this machine (20 MB and 480 MB of logits); `python -m benchmarks.published` reports the pass it
   gives as *kernelcert again / read* */
#define PREFETCH_BYTES 4096

/* offset of chunk j (of NC) in a model's K scores: 4j, the last one K - 4 */
static inline int chunk_at(int j, int K, int NC)
{
    return j == NC - 1 ? K - 4 : 4 * j;
}

/* the votes of the models at p and p + K (NC = ceil(K / 4) chunks) added into the byte counters acc
   ([first model's positions | second's], position 4j + l = lane l of chunk j); f: finiteness
   accumulators */
__attribute__((target("avx2,fma")))
static inline __m256i pair_votes(const float *p, int K, int NC, __m256i acc, __m256 *f)
{
    const __m256 zero = _mm256_setzero_ps();
    __m256 v0 = load_pair(p, p + K);
    __m256 v1 = load_pair(p + chunk_at(1, K, NC), p + K + chunk_at(1, K, NC));
    __m256 v2 = NC > 2 ? load_pair(p + chunk_at(2, K, NC), p + K + chunk_at(2, K, NC)) : zero;
    __m256 v3 = NC > 3 ? load_pair(p + chunk_at(3, K, NC), p + K + chunk_at(3, K, NC)) : zero;
    f[0] = _mm256_fmadd_ps(v0, zero, f[0]);
    f[1] = _mm256_fmadd_ps(v1, zero, f[1]);
    if (NC > 2)
        f[2] = _mm256_fmadd_ps(v2, zero, f[2]);
    if (NC > 3)
        f[3] = _mm256_fmadd_ps(v3, zero, f[3]);
    __m256 x = _mm256_max_ps(v0, v1);
    if (NC > 2)
        x = _mm256_max_ps(x, v2);
    if (NC > 3)
        x = _mm256_max_ps(x, v3);
    x = _mm256_max_ps(x, _mm256_permute_ps(x, 0x4E));  /* each half's maximum in its 4 lanes */
    x = _mm256_max_ps(x, _mm256_permute_ps(x, 0xB1));
    __m256i e0 = _mm256_castps_si256(_mm256_cmp_ps(v0, x, _CMP_EQ_OQ));
    __m256i e1 = _mm256_castps_si256(_mm256_cmp_ps(v1, x, _CMP_EQ_OQ));
    __m256i e2 = NC > 2 ? _mm256_castps_si256(_mm256_cmp_ps(v2, x, _CMP_EQ_OQ)) : _mm256_setzero_si256();
    __m256i e3 = NC > 3 ? _mm256_castps_si256(_mm256_cmp_ps(v3, x, _CMP_EQ_OQ)) : _mm256_setzero_si256();
    /* per half, bytes [chunk 0 | chunk 1 | chunk 2 | chunk 3]: 0xFF at each maximum */
    __m256i e = _mm256_packs_epi16(_mm256_packs_epi32(e0, e1), _mm256_packs_epi32(e2, e3));
    __m256i first = _mm256_and_si256(e, _mm256_sub_epi64(_mm256_setzero_si256(), e));  /* x & -x per word */
    if (NC > 2)  /* positions 8..15 vote only where 0..7 hold no maximum */
        first = _mm256_and_si256(first, _mm256_unpacklo_epi64(_mm256_set1_epi32(-1),
                                                              _mm256_cmpeq_epi64(e, _mm256_setzero_si256())));
    return _mm256_add_epi8(acc, first);
}

/* the maximum of the 8 int32 lanes of x, in every lane */
__attribute__((target("avx2")))
static inline __m256i hmax_epi32(__m256i x)
{
    x = _mm256_max_epi32(x, _mm256_permute2x128_si256(x, x, 1));
    x = _mm256_max_epi32(x, _mm256_shuffle_epi32(x, 0x4E));
    return _mm256_max_epi32(x, _mm256_shuffle_epi32(x, 0xB1));
}

/* the pass for one chunk count NC (a compile-time constant after inlining) */
__attribute__((target("avx2,fma,bmi")))
static inline int dpa_pass(const float *s, Py_ssize_t t, Py_ssize_t M, int K, int NC, void *counts,
                           int counts_size, int64_t *prediction, int64_t *radius)
{
    __m256 f[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    /* counts per position -> per class: positions 8..15 (chunks 2, 3) to classes, duplicates dropped */
    const int last = 4 * (NC - 1), dup = 4 * NC - K;  /* the last chunk's first `dup` positions repeat classes */
    int32_t from[8], keep[8];
    for (int c = 8; c < 16; c++) {
        const int at = c < last ? c : c + dup;  /* position holding class c */
        from[c - 8] = at < 16 ? at - 8 : 7;
        keep[c - 8] = c < K ? -1 : 0;
    }
    const __m256i from_hi = _mm256_loadu_si256((const __m256i *)from);
    const __m256i keep_hi = _mm256_loadu_si256((const __m256i *)keep);
    const __m256i class_lo = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i class_hi = _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15);
    for (Py_ssize_t i = 0; i < t; i++) {
        const float *p = s + (size_t)i * (size_t)M * (size_t)K;
        __m256i n_lo = _mm256_setzero_si256(), n_hi = n_lo;  /* votes of classes 0..7 and 8..15 */
        const Py_ssize_t pairs_end = M - 1;  /* pairs (m, m + 1) while m < M - 1 */
        Py_ssize_t m = 0;
        while (m < pairs_end) {
            __m256i acc = _mm256_setzero_si256();  /* byte counters: at most 255 pairs */
            const Py_ssize_t stop = pairs_end - m > 2 * 255 ? m + 2 * 255 : pairs_end;
            for (; m < stop; m += 2, p += 2 * K) {
                /* a hint PREFETCH_BYTES ahead (never faults, also past the end) */
                _mm_prefetch((const char *)((uintptr_t)p + PREFETCH_BYTES), _MM_HINT_T0);
                acc = pair_votes(p, K, NC, acc, f);
            }
            __m256i h = _mm256_add_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(acc)),
                                         _mm256_cvtepu8_epi16(_mm256_extracti128_si256(acc, 1)));
            n_lo = _mm256_add_epi32(n_lo, _mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)));
            n_hi = _mm256_add_epi32(n_hi, _mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)));
        }
        if (NC > 2)
            n_hi = _mm256_and_si256(_mm256_permutevar8x32_epi32(n_hi, from_hi), keep_hi);
        if (m < M) {  /* the last model of an odd M */
            int32_t alone[16] = {0};
            for (; m < M; m++, p += K)
                alone[single_vote(p, K, &f[0])]++;
            n_lo = _mm256_add_epi32(n_lo, _mm256_loadu_si256((const __m256i *)alone));
            n_hi = _mm256_add_epi32(n_hi, _mm256_loadu_si256((const __m256i *)(alone + 8)));
        }
        /* classes >= K hold 0 votes: below the maximum (M >= 1 votes) and never above a rival (>= 0) */
        const __m256i top = hmax_epi32(_mm256_max_epi32(n_lo, n_hi));
        const unsigned at = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(n_lo, top)))
                            | (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(n_hi, top))) << 8;
        const int winner = __builtin_ctz(at);
        const __m256i w = _mm256_set1_epi32(winner);
        /* rivals n_c + [c < p] (cmpgt is -1 where c < p), the winner's own lane set to 0 */
        __m256i r_lo = _mm256_andnot_si256(_mm256_cmpeq_epi32(w, class_lo),
                                           _mm256_sub_epi32(n_lo, _mm256_cmpgt_epi32(w, class_lo)));
        __m256i r_hi = _mm256_andnot_si256(_mm256_cmpeq_epi32(w, class_hi),
                                           _mm256_sub_epi32(n_hi, _mm256_cmpgt_epi32(w, class_hi)));
        const __m256i rival = hmax_epi32(_mm256_max_epi32(r_lo, r_hi));
        prediction[i] = winner;
        /* top >= rival: n_c < n_p for c < p, n_c <= n_p for c > p */
        radius[i] = ((int64_t)_mm256_cvtsi256_si32(top) - (int64_t)_mm256_cvtsi256_si32(rival)) / 2;
        if (counts != NULL) {
            int32_t n[16];
            _mm256_storeu_si256((__m256i *)n, n_lo);
            _mm256_storeu_si256((__m256i *)(n + 8), n_hi);
            const size_t at_row = (size_t)i * (size_t)K;
            if (counts_size == 8)
                for (int c = 0; c < K; c++)
                    ((int64_t *)counts)[at_row + c] = n[c];
            else if (counts_size == 4)
                for (int c = 0; c < K; c++)
                    ((int32_t *)counts)[at_row + c] = n[c];
            else if (counts_size == 2)
                for (int c = 0; c < K; c++)
                    ((uint16_t *)counts)[at_row + c] = (uint16_t)n[c];
            else
                for (int c = 0; c < K; c++)
                    ((uint8_t *)counts)[at_row + c] = (uint8_t)n[c];
        }
    }
    __m256 g = _mm256_add_ps(_mm256_add_ps(f[0], f[1]), _mm256_add_ps(f[2], f[3]));  /* NaN iff not finite */
    return _mm256_movemask_ps(_mm256_cmp_ps(g, g, _CMP_UNORD_Q)) != 0;
}

__attribute__((target("avx2,fma,bmi")))
static int argmax_margin_avx2(const float *s, Py_ssize_t t, Py_ssize_t M, int K, void *counts, int counts_size,
                              int64_t *prediction, int64_t *radius)
{
    switch ((K + 3) / 4) {
    case 2:
        return dpa_pass(s, t, M, K, 2, counts, counts_size, prediction, radius);
    case 3:
        return dpa_pass(s, t, M, K, 3, counts, counts_size, prediction, radius);
    default:
        return dpa_pass(s, t, M, K, 4, counts, counts_size, prediction, radius);
    }
}
#endif

static int have_avx2(void)
{
#if KC_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi");
#else
    return 0;
#endif
}

/* the item size of a counts buffer of int64, int32, uint16 or uint8 (native struct format codes), else 0 */
static int counts_dtype_size(const Py_buffer *b)
{
    const char *f = b->format == NULL ? "B" : b->format;
    if (*f == '=' || *f == '@')
        f++;
    if (f[0] == 0 || f[1] != 0)
        return 0;
    if ((f[0] == 'q' || f[0] == 'l') && b->itemsize == 8)
        return 8;
    if ((f[0] == 'i' || f[0] == 'l') && b->itemsize == 4)
        return 4;
    if (f[0] == 'H' && b->itemsize == 2)
        return 2;
    if (f[0] == 'B' && b->itemsize == 1)
        return 1;
    return 0;
}

static int check_buffer(Py_buffer *b, Py_ssize_t bytes, const char *name)
{
    if (b->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd bytes, got %zd", name, bytes, b->len);
        return -1;
    }
    return 0;
}

static PyObject *argmax_margin_f32(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer sb, cb, pb, rb;
    Py_ssize_t t, M, K;
    PyObject *counts_obj;
    if (!PyArg_ParseTuple(args, "y*nnnOw*w*", &sb, &t, &M, &K, &counts_obj, &pb, &rb))
        return NULL;
    const int keep_counts = counts_obj != Py_None;
    if (keep_counts && PyObject_GetBuffer(counts_obj, &cb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&sb);
        PyBuffer_Release(&pb);
        PyBuffer_Release(&rb);
        return NULL;
    }
    int bad = 0, ok = 1;
    const int counts_size = keep_counts ? counts_dtype_size(&cb) : 0;
    if (K < 8 || K > 16 || t < 0 || M < 1 || M > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "argmax_margin_f32 needs 8 <= K <= 16, t >= 0, 1 <= M < 2**31");
        ok = 0;
    } else if (keep_counts && (counts_size == 0 || (counts_size == 2 && M > 65535) || (counts_size == 1 && M > 255))) {
        PyErr_SetString(PyExc_ValueError,
                        "counts must be int64, int32, uint16 (then M <= 65535) or uint8 (M <= 255), or None");
        ok = 0;
    } else if (!have_avx2()) {
        PyErr_SetString(PyExc_RuntimeError, "argmax_margin_f32 needs a CPU with AVX2 and FMA");
        ok = 0;
    } else if (check_buffer(&sb, t * M * K * 4, "scores")
               || (keep_counts && check_buffer(&cb, t * K * counts_size, "counts"))
               || check_buffer(&pb, t * 8, "prediction") || check_buffer(&rb, t * 8, "radius")) {
        ok = 0;
    }
#if KC_X86
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        bad = argmax_margin_avx2((const float *)sb.buf, t, M, (int)K, keep_counts ? cb.buf : NULL, counts_size,
                                 (int64_t *)pb.buf, (int64_t *)rb.buf);
        Py_END_ALLOW_THREADS
    }
#endif
    PyBuffer_Release(&sb);
    if (keep_counts)
        PyBuffer_Release(&cb);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&rb);
    if (!ok)
        return NULL;
    return PyBool_FromLong(bad);
}

static PyMethodDef methods[] = {
    {"argmax_margin_f32", argmax_margin_f32, METH_VARARGS,
     "argmax_margin_f32(scores, t, M, K, counts, prediction, radius) -> bool: the DPA pass over float32 "
     "scores (t, M, K), 8 <= K <= 16 (counts: int64, int32, uint16 or uint8 (t, K), or None; see the module "
     "source); "
     "True if a score "
     "is NaN or infinite."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kernelcert._argmax_c",
                                    "Compiled DPA pass over float32 scores (see kernelcert/_argmax_c.c).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__argmax_c(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "AVAILABLE", have_avx2()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
