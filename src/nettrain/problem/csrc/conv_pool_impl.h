/* The kernels of conv_pool.c for one element type: included once per type with T (the
 * element), I (the integer of T's width), VEC and MASK (the names of their vector types)
 * and NAME(f) (f with the type's suffix) defined. */

typedef T VEC __attribute__((vector_size(VL * sizeof(T))));
typedef I MASK __attribute__((vector_size(VL * sizeof(T))));

/* One sample's channels c of x (H, W) into xp (Hp, Wp) with a zero border. */
static void NAME(pad)(const T *x, T *xp, int C, int H, int W, int ph, int pw) {
  const int Hp = H + 2 * ph, Wp = W + 2 * pw;
  memset(xp, 0, sizeof(T) * C * Hp * Wp);
  for (int c = 0; c < C; c++)
    for (int h = 0; h < H; h++)
      memcpy(xp + ((long)c * Hp + h + ph) * Wp + pw, x + ((long)c * H + h) * W,
             sizeof(T) * W);
}

/* The pooled outputs of VL channels (the first n stored) of one padded sample xp:
 * w points at the block's column of the packed weights (rows of Op). Inlined with
 * constant kh, kw and n for the common 3x3 layer, so that the four accumulators stay
 * in registers and the stores are whole vectors. */
static inline __attribute__((always_inline)) void NAME(forward_block)(
    const T *xp, const T *w, VEC b0, T *y, uint8_t *arg, int n, int C, int Hp, int Wp,
    int H2, int W2, int kh, int kw, int Op, long row, int relu) {
  for (int u = 0; u < H2; u++)
    for (int v = 0; v < W2; v++) {
      VEC z0 = b0, z1 = b0, z2 = b0, z3 = b0; /* the window's four pixels */
      const T *wj = w;
      for (int c = 0; c < C; c++)
        for (int i = 0; i < kh; i++) {
          const T *xr = xp + ((long)c * Hp + 2 * u + i) * Wp + 2 * v;
          for (int j = 0; j < kw; j++, wj += Op) {
            VEC wv;
            memcpy(&wv, wj, sizeof wv);
            z0 += xr[j] * wv;
            z1 += xr[j + 1] * wv;
            z2 += xr[j + Wp] * wv;
            z3 += xr[j + Wp + 1] * wv;
          }
        }
      /* max with the first maximal pixel kept, NaN winning (as torch's max-pooling) */
      VEC best = z0, z[3] = {z1, z2, z3};
      MASK s_of = {0};
      for (int s = 1; s < 4; s++) {
        MASK take = (z[s - 1] > best) | (z[s - 1] != z[s - 1]);
        best = (VEC)(((MASK)z[s - 1] & take) | ((MASK)best & ~take));
        s_of = (s & take) | (s_of & ~take);
      }
      if (relu) best = (VEC)((MASK)best & ~(best < 0)); /* NaN stays NaN */
      const long at = ((long)u * W2 + v) * row;
      T out[VL];
      memcpy(out, &best, sizeof out);
      memcpy(y + at, out, sizeof(T) * n);
      for (int o = 0; o < n; o++) arg[at + o] = (uint8_t)s_of[o];
    }
}

void NAME(nettrain_conv_pool_forward)(const T *x, const T *w, const T *bias, T *y,
                                      uint8_t *arg, int m, int B, int C, int H, int W,
                                      int O, int kh, int kw, int ph, int pw, int relu,
                                      int threads) {
  const int Hp = H + 2 * ph, Wp = W + 2 * pw, H2 = (Hp - kh + 1) / 2,
            W2 = (Wp - kw + 1) / 2, K = C * kh * kw, Op = (O + VL - 1) / VL * VL;
  const long row = (long)m * O;
#pragma omp parallel num_threads(threads)
  {
    T *xp = malloc(sizeof(T) * C * Hp * Wp);
#pragma omp for schedule(static)
    for (long ba = 0; ba < (long)B * m; ba++) { /* a thread's samples: whole rows of y */
      const int b = ba / m, a = ba % m;
      NAME(pad)(x + ((long)a * B + b) * C * H * W, xp, C, H, W, ph, pw);
      for (int o0 = 0; o0 < O; o0 += VL) {
        const int n = O - o0 < VL ? O - o0 : VL;
        const T *wa = w + (long)a * K * Op + o0;
        const long at = (long)b * H2 * W2 * row + (long)a * O + o0;
        VEC b0;
        memcpy(&b0, bias + (long)a * Op + o0, sizeof b0);
        if (C == 1 && kh == 3 && kw == 3 && n == VL)
          NAME(forward_block)(xp, wa, b0, y + at, arg + at, VL, 1, Hp, Wp, H2, W2, 3, 3,
                              Op, row, relu);
        else
          NAME(forward_block)(xp, wa, b0, y + at, arg + at, n, C, Hp, Wp, H2, W2, kh, kw,
                              Op, row, relu);
      }
    }
    free(xp);
  }
}

/* dw and db of one agent: for each sample and block of VL channels, first the pooled
 * gradient g (zero where ReLU cut) routed to its winning pixel, gs[(u, v), s] = g where
 * arg = s, else 0; then each tap's sum over (u, v) in four accumulators, one a pixel of
 * the window, added in that order into dw. */
void NAME(nettrain_conv_pool_backward)(const T *x, const T *dy, const T *y,
                                       const uint8_t *arg, T *dw, T *db, int m, int B,
                                       int C, int H, int W, int O, int kh, int kw,
                                       int ph, int pw, int relu, int threads) {
  const int Hp = H + 2 * ph, Wp = W + 2 * pw, H2 = (Hp - kh + 1) / 2,
            W2 = (Wp - kw + 1) / 2, K = C * kh * kw, Op = (O + VL - 1) / VL * VL;
  const long row = (long)m * O;
#pragma omp parallel num_threads(threads)
  {
    T *xp = malloc(sizeof(T) * C * Hp * Wp);
    VEC *gs = aligned_alloc(sizeof(VEC), sizeof(VEC) * 4 * (H2 * W2 + 1)); /* gs[4 p + s] */
#pragma omp for schedule(static)
    for (int a = 0; a < m; a++) {
      T *dwa = dw + (long)a * K * Op, *dba = db + (long)a * Op;
      memset(dwa, 0, sizeof(T) * K * Op);
      memset(dba, 0, sizeof(T) * Op);
      for (int b = 0; b < B; b++) {
        NAME(pad)(x + ((long)a * B + b) * C * H * W, xp, C, H, W, ph, pw);
        for (int o0 = 0; o0 < O; o0 += VL) {
          const int n = O - o0 < VL ? O - o0 : VL;
          VEC gb;
          memcpy(&gb, dba + o0, sizeof gb);
          for (int p = 0; p < H2 * W2; p++) {
            const long at = ((long)b * H2 * W2 + p) * row + (long)a * O + o0;
            VEC g = {0};
            MASK s_of = {0};
            if (n == VL) {
              VEC yv;
              uint8_t s8[VL];
              memcpy(&g, dy + at, sizeof g);
              memcpy(&yv, y + at, sizeof yv);
              memcpy(s8, arg + at, sizeof s8);
              if (relu) g = (VEC)((MASK)g & (yv > 0));
              for (int o = 0; o < VL; o++) s_of[o] = s8[o];
            } else {
              for (int o = 0; o < n; o++) {
                g[o] = relu && !(y[at + o] > 0) ? 0 : dy[at + o];
                s_of[o] = arg[at + o];
              }
            }
            gb += g;
            for (int s = 0; s < 4; s++) gs[4 * p + s] = (VEC)((MASK)g & (s_of == s));
          }
          memcpy(dba + o0, &gb, sizeof gb);
          T *wj = dwa + o0;
          for (int c = 0; c < C; c++)
            for (int i = 0; i < kh; i++)
              for (int j = 0; j < kw; j++, wj += Op) {
                VEC acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0}, sum;
                const VEC *gp = gs;
                for (int u = 0; u < H2; u++) {
                  const T *xr = xp + ((long)c * Hp + 2 * u + i) * Wp + j;
                  for (int v = 0; v < W2; v++, gp += 4) {
                    acc0 += xr[2 * v] * gp[0];
                    acc1 += xr[2 * v + 1] * gp[1];
                    acc2 += xr[2 * v + Wp] * gp[2];
                    acc3 += xr[2 * v + Wp + 1] * gp[3];
                  }
                }
                memcpy(&sum, wj, sizeof sum);
                sum += acc0;
                sum += acc1;
                sum += acc2;
                sum += acc3;
                memcpy(wj, &sum, sizeof sum);
              }
        }
      }
    }
    free(xp);
    free(gs);
  }
}

/* The gradient of a convolution of any layer whose output is max-pooled by any window:
 * torch's pooling indices say which output pixel (ho, wo) each pooled value came from, so
 * only those pixels carry a gradient. From the pooled gradient g (ReLU's cut applied):
 *
 *   dx[a,b,c,ho sh + i dh - ph, wo sw + j dw - pw] += g w[a,o,c,i,j]  (if dx is not NULL)
 *   dw[a,o,c,i,j] += g x[a,b,c,ho sh + i dh - ph, wo sw + j dw - pw],   db[a,o] += g
 *
 * over every nonzero pooled value g of (a, b, o) and its pixel. Layouts: x and dx
 * (B, H, W, m C), channels last; weights and dw packed (m, O, K, Cp), K = kh kw taps,
 * Cp = C rounded up to VL (zeros); g and idx (B, P, m O), P = pooled pixels; db (m, O).
 * One thread does an agent: for each sample, each channel's nonzero values are listed
 * (the pixel, the value), then each tap runs down the list, summing into four
 * accumulators (dw) or adding into the pixels (dx). Fixed order throughout. */
void NAME(nettrain_pooled_conv_backward)(const T *x, const T *w, const T *g,
                                         const int64_t *idx, T *dx, T *dw, T *db, int m,
                                         int B, int C, int H, int W, int O, int kh, int kw,
                                         int sh, int sw, int ph, int pw, int dh, int dwl,
                                         int Ho, int Wo, int P, int threads) {
  const int Hp = H + 2 * ph, Wp = W + 2 * pw, K = kh * kw, Cp = (C + VL - 1) / VL * VL;
  const long row = (long)m * O, pixels = (long)Hp * Wp;
  int *start = malloc(sizeof(int) * Ho * Wo), *tap = malloc(sizeof(int) * K);
  for (int q = 0; q < Ho * Wo; q++) start[q] = (q / Wo * sh * Wp + q % Wo * sw) * Cp;
  for (int t = 0; t < K; t++) tap[t] = (t / kw * dh * Wp + t % kw * dwl) * Cp;
#pragma omp parallel num_threads(threads)
  {
    T *xp = aligned_alloc(sizeof(VEC), sizeof(T) * pixels * Cp);
    T *dxp = aligned_alloc(sizeof(VEC), sizeof(T) * pixels * Cp);
    int *at = malloc(sizeof(int) * ((long)O * P + 1));
    T *gl = malloc(sizeof(T) * ((long)O * P + 1));
    int *count = malloc(sizeof(int) * O);
#pragma omp for schedule(static)
    for (int a = 0; a < m; a++) {
      T *acc = dw + (long)a * O * K * Cp, *dba = db + (long)a * O;
      memset(acc, 0, sizeof(T) * O * K * Cp);
      memset(dba, 0, sizeof(T) * O);
      for (int b = 0; b < B; b++) {
        memset(xp, 0, sizeof(T) * pixels * Cp);
        for (int h = 0; h < H; h++)
          for (int v = 0; v < W; v++)
            memcpy(xp + ((long)(h + ph) * Wp + v + pw) * Cp,
                   x + (((long)b * H + h) * W + v) * m * C + (long)a * C, sizeof(T) * C);
        memset(count, 0, sizeof(int) * O);
        for (int p = 0; p < P; p++) {
          const long base = ((long)b * P + p) * row + (long)a * O;
          for (int o = 0; o < O; o++) { /* without a branch: half the values are 0 */
            const T gv = g[base + o];
            dba[o] += gv;
            at[o * P + count[o]] = start[idx[base + o]];
            gl[o * P + count[o]] = gv;
            count[o] += gv != 0;
          }
        }
        for (int o = 0; o < O; o++) {
          const int n = count[o], *ao = at + (long)o * P;
          const T *go = gl + (long)o * P;
          for (int t = 0; t < K; t++)
            for (int c0 = 0; c0 < Cp; c0 += VL) {
              const T *xs = xp + tap[t] + c0;
              VEC s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, xv, sum;
              int k = 0;
              for (; k + 3 < n; k += 4) {
                memcpy(&xv, xs + ao[k], sizeof xv);
                s0 += go[k] * xv;
                memcpy(&xv, xs + ao[k + 1], sizeof xv);
                s1 += go[k + 1] * xv;
                memcpy(&xv, xs + ao[k + 2], sizeof xv);
                s2 += go[k + 2] * xv;
                memcpy(&xv, xs + ao[k + 3], sizeof xv);
                s3 += go[k + 3] * xv;
              }
              for (; k < n; k++) {
                memcpy(&xv, xs + ao[k], sizeof xv);
                s0 += go[k] * xv;
              }
              T *d = acc + ((long)o * K + t) * Cp + c0;
              memcpy(&sum, d, sizeof sum);
              sum += (s0 + s1) + (s2 + s3);
              memcpy(d, &sum, sizeof sum);
            }
        }
        if (!dx) continue;
        memset(dxp, 0, sizeof(T) * pixels * Cp);
        for (int o = 0; o < O; o++) {
          const int n = count[o], *ao = at + (long)o * P;
          const T *go = gl + (long)o * P, *wo_ = w + ((long)a * O + o) * K * Cp;
          for (int t = 0; t < K; t++)
            for (int c0 = 0; c0 < Cp; c0 += VL) {
              T *ds = dxp + tap[t] + c0;
              VEC wv, dv;
              memcpy(&wv, wo_ + t * Cp + c0, sizeof wv);
              for (int k = 0; k < n; k++) {
                memcpy(&dv, ds + ao[k], sizeof dv);
                dv += go[k] * wv;
                memcpy(ds + ao[k], &dv, sizeof dv);
              }
            }
        }
        for (int h = 0; h < H; h++)
          for (int v = 0; v < W; v++)
            memcpy(dx + (((long)b * H + h) * W + v) * m * C + (long)a * C,
                   dxp + ((long)(h + ph) * Wp + v + pw) * Cp, sizeof(T) * C);
      }
    }
    free(xp);
    free(dxp);
    free(at);
    free(gl);
    free(count);
  }
  free(start);
  free(tap);
}
