/* kernelcert._argmax_c: the DPA pass of `voting.argmax_plurality_margin` for float32 scores with
 * 8 <= K <= 16 classes, compiled at install time (setup.py, optional extension; without it, or on a
 * CPU without AVX2 and FMA, kernelcert runs the numba kernel `voting._argmax_margin_fixed`, which
 * is also the test oracle together with numpy's argmax).
 *
 * argmax_margin_f32(scores, t, M, K, counts, prediction, radius) -> bool
 *   scores      C-contiguous float32 (t, M, K), read once (any object with the buffer protocol)
 *   counts      C-contiguous int64 (t, K), written: votes per class (overwritten, not accumulated);
 *               or None: not stored (no (t, K) output to allocate and fault in)
 *   prediction  int64 (t,), written: the plurality winner p (ties to the smaller class index)
 *   radius      int64 (t,), written: (n_p - max_{c != p}(n_c + [c < p])) // 2, the DPA radius
 *   returns True if a score is NaN or +-inf (then the outputs are unspecified), else False.
 *
 * Each model votes for the FIRST maximiser of its K scores (smallest class index among the equal
 * maxima, -0.0 == +0.0, as numpy.argmax and the numba kernel's strict `>` scan). Per model: two
 * overlapping 8-lane loads, floats [0, 8) and [K - 8, K), their lane-wise max, the horizontal max
 * broadcast to every lane, the lanes equal to it as two bit masks combined into one K-bit mask
 * (bit c = score c is a maximum), and its lowest set bit; two consecutive models share the
 * reduction across the register. NaN cannot slip through the max (a NaN anywhere is detected
 * separately): finiteness is x * 0 (NaN iff x is NaN or infinite) added into accumulators (fused
 * multiply-add), NaN at the end iff one score was not finite. The votes of
 * one test point are stored as bytes (one store per model: counting in place, a load-add-store
 * per vote, cost as much as the argmax), counted per class 32 at a time (compare, bit mask,
 * popcount), then the plurality margin of that row. The GIL is released during the pass.
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
/* out[c] = number of c in the votes v[0..M) (bytes; v has room for M rounded up to 32, padded here) */
__attribute__((target("avx2,popcnt")))
static inline void count_votes(uint8_t *v, Py_ssize_t M, int K, int64_t *out)
{
    Py_ssize_t blocks = (M + 31) / 32;
    memset(v + M, 0xFF, (size_t)(blocks * 32 - M));  /* no class is 255 */
    for (int c = 0; c < K; c++) {
        const __m256i cc = _mm256_set1_epi8((char)c);
        int64_t n = 0;
        for (Py_ssize_t j = 0; j < blocks; j++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(v + 32 * j));
            n += __builtin_popcount((unsigned)_mm256_movemask_epi8(_mm256_cmpeq_epi8(x, cc)));
        }
        out[c] = n;
    }
}

/* the vote of one model from its two loads a (classes 0..7), b (classes K-8..K-1) and x, their max
   in every lane: bit c of the mask is set iff score c equals the max, the lowest is the first
   maximiser (bit 16: only reached when x is NaN, i.e. a non-finite score, reported by the caller;
   it keeps the vote < 16) */
__attribute__((target("avx2,bmi")))
static inline uint8_t first_max(__m256 a, __m256 b, __m256 x, int shift)
{
    unsigned ea = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(a, x, _CMP_EQ_OQ));
    unsigned eb = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(b, x, _CMP_EQ_OQ));
    return (uint8_t)(__builtin_ctz(ea | (eb << shift) | (1u << 16)) & 15);
}

__attribute__((target("avx2,fma,bmi,popcnt")))
static int argmax_margin_avx2(const float *s, Py_ssize_t t, Py_ssize_t M, int K, uint8_t *votes, int64_t *counts,
                              int64_t *prediction, int64_t *radius)
{
    const __m256 zero = _mm256_setzero_ps();
    /* finiteness: f += x * 0 (NaN iff x is NaN or infinite, then NaN for good), 4 independent sums */
    __m256 f0 = zero, f1 = zero, f2 = zero, f3 = zero;
    const int shift = K - 8;
    for (Py_ssize_t i = 0; i < t; i++) {
        const float *p = s + (size_t)i * (size_t)M * (size_t)K;
        Py_ssize_t m = 0;
        for (; m + 2 <= M; m += 2, p += 2 * K) {  /* two models share the reduction across the register */
            __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + shift);
            __m256 c = _mm256_loadu_ps(p + K), d = _mm256_loadu_ps(p + K + shift);
            f0 = _mm256_fmadd_ps(a, zero, f0);
            f1 = _mm256_fmadd_ps(b, zero, f1);
            f2 = _mm256_fmadd_ps(c, zero, f2);
            f3 = _mm256_fmadd_ps(d, zero, f3);
            __m256 x = _mm256_max_ps(a, b), y = _mm256_max_ps(c, d);
            /* [max of x's halves | max of y's halves], then within each 128-bit half */
            __m256 z = _mm256_max_ps(_mm256_permute2f128_ps(x, y, 0x20), _mm256_permute2f128_ps(x, y, 0x31));
            z = _mm256_max_ps(z, _mm256_shuffle_ps(z, z, 0x4E));
            z = _mm256_max_ps(z, _mm256_shuffle_ps(z, z, 0xB1));
            votes[m] = first_max(a, b, _mm256_permute2f128_ps(z, z, 0x00), shift);
            votes[m + 1] = first_max(c, d, _mm256_permute2f128_ps(z, z, 0x11), shift);
        }
        if (m < M) {  /* the last model of an odd M */
            __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + shift);
            f0 = _mm256_fmadd_ps(a, zero, f0);
            f1 = _mm256_fmadd_ps(b, zero, f1);
            __m256 x = _mm256_max_ps(a, b);
            x = _mm256_max_ps(x, _mm256_permute2f128_ps(x, x, 1));
            x = _mm256_max_ps(x, _mm256_shuffle_ps(x, x, 0x4E));
            x = _mm256_max_ps(x, _mm256_shuffle_ps(x, x, 0xB1));
            votes[m] = first_max(a, b, x, shift);
        }
        int64_t row[16];
        int64_t *n = counts != NULL ? counts + (size_t)i * (size_t)K : row;
        count_votes(votes, M, K, n);
        int pw = 0;
        int64_t top = n[0];
        for (int c = 1; c < K; c++)
            if (n[c] > top) { pw = c; top = n[c]; }
        int64_t rival = INT64_MIN;
        for (int c = 0; c < K; c++) {
            if (c == pw) continue;
            int64_t v = n[c] + (c < pw ? 1 : 0);
            if (v > rival) rival = v;
        }
        prediction[i] = pw;
        radius[i] = (top - rival) / 2;  /* top >= rival: n_c < n_p for c < p, n_c <= n_p for c > p */
    }
    __m256 f = _mm256_add_ps(_mm256_add_ps(f0, f1), _mm256_add_ps(f2, f3));  /* NaN iff a score was not finite */
    return _mm256_movemask_ps(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)) != 0;
}
#endif

static int have_avx2(void)
{
#if KC_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi")
           && __builtin_cpu_supports("popcnt");
#else
    return 0;
#endif
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
    if (keep_counts && PyObject_GetBuffer(counts_obj, &cb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&sb);
        PyBuffer_Release(&pb);
        PyBuffer_Release(&rb);
        return NULL;
    }
    int bad = 0, ok = 1;
    if (K < 8 || K > 16 || t < 0 || M < 1) {
        PyErr_SetString(PyExc_ValueError, "argmax_margin_f32 needs 8 <= K <= 16, t >= 0, M >= 1");
        ok = 0;
    } else if (!have_avx2()) {
        PyErr_SetString(PyExc_RuntimeError, "argmax_margin_f32 needs a CPU with AVX2 and FMA");
        ok = 0;
    } else if (check_buffer(&sb, t * M * K * 4, "scores")
               || (keep_counts && check_buffer(&cb, t * K * 8, "counts"))
               || check_buffer(&pb, t * 8, "prediction") || check_buffer(&rb, t * 8, "radius")) {
        ok = 0;
    }
#if KC_X86
    uint8_t *votes = ok ? (uint8_t *)PyMem_Malloc((size_t)((M + 31) / 32 * 32)) : NULL;
    if (ok && votes == NULL) {
        PyErr_NoMemory();
        ok = 0;
    }
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        bad = argmax_margin_avx2((const float *)sb.buf, t, M, (int)K, votes, keep_counts ? (int64_t *)cb.buf : NULL, (int64_t *)pb.buf,
                                 (int64_t *)rb.buf);
        Py_END_ALLOW_THREADS
    }
    PyMem_Free(votes);
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
     "scores (t, M, K), 8 <= K <= 16 (counts: int64 (t, K) or None; see the module source); True if a score "
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
