/* Hand-vectorised AVX-512 Mandelbrot: the yardstick for the Numba block kernels.
 *
 * Same geometry and escape count as fractal_app (pixel (j, i) samples
 * re = cre + (i - (W-1)/2) * px, im = cim + ((H-1)/2 - j) * px, in double, then rounded to
 * the precision; count = completed iterations z <- z^2 + c before |z|^2 > 4 is seen, or
 * max_iter). NV vectors of 8 doubles (or 16 floats) iterate together to hide latency;
 * lanes that escaped are masked off and keep their count. Build with -ffp-contract=off so
 * the counts are exact (no FMA), like the Numba kernels.
 *
 * Two more float64 modes reproduce what a GPU's FMA contraction does, to measure how many
 * escape counts it changes (the explicit _mm512_fmadd_pd is exempt from -ffp-contract=off):
 *   f64fma  fuses y = 2x*y + ci as fma(2x, y, ci) and the pixel coordinate as
 *           fma(i - (W-1)/2, px, center): the usual way a kernel is written and contracted;
 *   f64nvvm fuses exactly what NVVM makes of fractal_app's core (xy + xy + ci becomes
 *           fma(x, y, x*y) + ci; coordinates come from the host): read off its PTX.
 *
 * usage: mandel_avx512 f64|f32|f64fma|f64nvvm W H center_re center_im view_width max_iter
 *        repeats [counts.bin]
 * prints: "iterations <total> seconds <best wall time> cpu_seconds <best CPU time, all threads>";
 * writes uint32 counts if asked. CPU time is the fair yardstick on a shared, busy machine.
 * Threads: OpenMP over rows (OMP_NUM_THREADS), dynamic schedule.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NV 6

static void row_f64(const double *cre, double ci, int w, int max_iter, int mode, uint32_t *out) {
    const __m512d four = _mm512_set1_pd(4.0);
    const __m512d civ = _mm512_set1_pd(ci);
    const __m512i one = _mm512_set1_epi64(1);
    for (int x0 = 0; x0 < w; x0 += 8 * NV) {
        __m512d cr[NV], zr[NV], zi[NV];
        __m512i n[NV];
        __mmask8 run[NV];
        for (int v = 0; v < NV; v++) {
            double tmp[8];
            for (int l = 0; l < 8; l++) {
                int x = x0 + 8 * v + l;
                tmp[l] = cre[x < w ? x : w - 1];
            }
            cr[v] = _mm512_loadu_pd(tmp);
            zr[v] = _mm512_setzero_pd();
            zi[v] = _mm512_setzero_pd();
            n[v] = _mm512_setzero_si512();
            run[v] = 0xff;
        }
        for (int it = 0; it < max_iter; it++) {
            int any = 0;
            __m512d rr[NV], ii[NV];
            for (int v = 0; v < NV; v++) {
                rr[v] = _mm512_mul_pd(zr[v], zr[v]);
                ii[v] = _mm512_mul_pd(zi[v], zi[v]);
                run[v] = _mm512_mask_cmp_pd_mask(run[v], _mm512_add_pd(rr[v], ii[v]), four, _CMP_LE_OQ);
                any |= run[v];
            }
            if (!any) break;
            for (int v = 0; v < NV; v++) {
                __m512d xy = _mm512_mul_pd(zr[v], zi[v]);
                __m512d new_zi;
                if (mode == 1)
                    new_zi = _mm512_fmadd_pd(_mm512_add_pd(zr[v], zr[v]), zi[v], civ);
                else if (mode == 2)
                    new_zi = _mm512_add_pd(_mm512_fmadd_pd(zr[v], zi[v], xy), civ);
                else
                    new_zi = _mm512_add_pd(_mm512_add_pd(xy, xy), civ);
                zi[v] = _mm512_mask_mov_pd(zi[v], run[v], new_zi);
                zr[v] = _mm512_mask_add_pd(zr[v], run[v], _mm512_sub_pd(rr[v], ii[v]), cr[v]);
                n[v] = _mm512_mask_add_epi64(n[v], run[v], n[v], one);
            }
        }
        for (int v = 0; v < NV; v++) {
            int64_t tmp[8];
            _mm512_storeu_si512(tmp, n[v]);
            for (int l = 0; l < 8; l++) {
                int x = x0 + 8 * v + l;
                if (x < w) out[x] = (uint32_t)tmp[l];
            }
        }
    }
}

static void row_f32(const float *cre, float ci, int w, int max_iter, uint32_t *out) {
    const __m512 four = _mm512_set1_ps(4.0f);
    const __m512 civ = _mm512_set1_ps(ci);
    const __m512i one = _mm512_set1_epi32(1);
    for (int x0 = 0; x0 < w; x0 += 16 * NV) {
        __m512 cr[NV], zr[NV], zi[NV];
        __m512i n[NV];
        __mmask16 run[NV];
        for (int v = 0; v < NV; v++) {
            float tmp[16];
            for (int l = 0; l < 16; l++) {
                int x = x0 + 16 * v + l;
                tmp[l] = cre[x < w ? x : w - 1];
            }
            cr[v] = _mm512_loadu_ps(tmp);
            zr[v] = _mm512_setzero_ps();
            zi[v] = _mm512_setzero_ps();
            n[v] = _mm512_setzero_si512();
            run[v] = 0xffff;
        }
        for (int it = 0; it < max_iter; it++) {
            int any = 0;
            __m512 rr[NV], ii[NV];
            for (int v = 0; v < NV; v++) {
                rr[v] = _mm512_mul_ps(zr[v], zr[v]);
                ii[v] = _mm512_mul_ps(zi[v], zi[v]);
                run[v] = _mm512_mask_cmp_ps_mask(run[v], _mm512_add_ps(rr[v], ii[v]), four, _CMP_LE_OQ);
                any |= run[v];
            }
            if (!any) break;
            for (int v = 0; v < NV; v++) {
                __m512 xy = _mm512_mul_ps(zr[v], zi[v]);
                zi[v] = _mm512_mask_add_ps(zi[v], run[v], _mm512_add_ps(xy, xy), civ);
                zr[v] = _mm512_mask_add_ps(zr[v], run[v], _mm512_sub_ps(rr[v], ii[v]), cr[v]);
                n[v] = _mm512_mask_add_epi32(n[v], run[v], n[v], one);
            }
        }
        for (int v = 0; v < NV; v++) {
            int32_t tmp[16];
            _mm512_storeu_si512(tmp, n[v]);
            for (int l = 0; l < 16; l++) {
                int x = x0 + 16 * v + l;
                if (x < w) out[x] = (uint32_t)tmp[l];
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 9) {
        fprintf(stderr, "usage: %s f64|f32|f64fma|f64nvvm W H center_re center_im view_width max_iter repeats [counts.bin]\n", argv[0]);
        return 2;
    }
    int f32 = strcmp(argv[1], "f32") == 0;
    int mode = strcmp(argv[1], "f64fma") == 0 ? 1 : strcmp(argv[1], "f64nvvm") == 0 ? 2 : 0;
    int w = atoi(argv[2]), h = atoi(argv[3]);
    double cre = atof(argv[4]), cim = atof(argv[5]), view = atof(argv[6]);
    int max_iter = atoi(argv[7]), repeats = atoi(argv[8]);
    double px = view / w;
    double *re = malloc(sizeof(double) * w);
    float *re32 = malloc(sizeof(float) * w);
    uint32_t *counts = malloc(sizeof(uint32_t) * (size_t)w * h);
    for (int i = 0; i < w; i++) {
        re[i] = mode == 1 ? fma(i - (w - 1) / 2.0, px, cre) : cre + (i - (w - 1) / 2.0) * px;
        re32[i] = (float)re[i];
    }
    double best = 1e30, best_cpu = 1e30;
    for (int r = 0; r < repeats; r++) {
        double t0 = omp_get_wtime();
        clock_t c0 = clock();
#pragma omp parallel for schedule(dynamic, 1)
        for (int j = 0; j < h; j++) {
            double ci = mode == 1 ? fma((h - 1) / 2.0 - j, px, cim) : cim + ((h - 1) / 2.0 - j) * px;
            if (f32)
                row_f32(re32, (float)ci, w, max_iter, counts + (size_t)j * w);
            else
                row_f64(re, ci, w, max_iter, mode, counts + (size_t)j * w);
        }
        double t = omp_get_wtime() - t0;
        double tc = (double)(clock() - c0) / CLOCKS_PER_SEC;
        if (t < best) best = t;
        if (tc < best_cpu) best_cpu = tc;
    }
    uint64_t total = 0;
    for (size_t k = 0; k < (size_t)w * h; k++) total += counts[k];
    printf("iterations %llu seconds %.6f cpu_seconds %.6f\n", (unsigned long long)total, best, best_cpu);
    if (argc > 9) {
        FILE *f = fopen(argv[9], "wb");
        if (!f || fwrite(counts, sizeof(uint32_t), (size_t)w * h, f) != (size_t)w * h) return 1;
        fclose(f);
    }
    return 0;
}
