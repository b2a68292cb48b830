//! Similarity kernels. Stored embeddings are L2-normalised, so cosine similarity is the dot
//! product. The public functions pick the best implementation for the running CPU once
//! (runtime detection) and fall back to the scalar loop.
//!
//! The SIMD kernels are written with `std::arch` intrinsics, never left to auto-vectorisation:
//! AVX2 + FMA and AVX-512 on x86_64, NEON on aarch64. Each kernel is a [`Kernel`] value; the
//! top-level functions ([`dot`], [`dot_rows`], ...) use [`kernel()`], detected on first use and
//! cached, so the per-call cost of the dispatch is one relaxed atomic load and a jump.
//!
//! Loads are unaligned: the rows of a mapped embedding column are 64-byte aligned, but nothing
//! here relies on it. Kernels differ from the scalar loop only in the order of the additions
//! (and in FMA's single rounding), so results agree to a few ulps of the sum of the magnitudes
//! of the products, not bit for bit.

#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use std::sync::atomic::{AtomicU8, Ordering};

/// One implementation of the similarity kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kernel {
    /// Plain loops; runs everywhere.
    Scalar = 0,
    /// 256-bit AVX2 with fused multiply-add.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma = 1,
    /// 512-bit AVX-512F (masked loads for the tails).
    #[cfg(target_arch = "x86_64")]
    Avx512 = 2,
    /// 128-bit NEON (baseline on aarch64).
    #[cfg(target_arch = "aarch64")]
    Neon = 3,
}

/// Every kernel compiled for this architecture, worst to best.
const ALL: &[Kernel] = &[
    Kernel::Scalar,
    #[cfg(target_arch = "x86_64")]
    Kernel::Avx2Fma,
    #[cfg(target_arch = "x86_64")]
    Kernel::Avx512,
    #[cfg(target_arch = "aarch64")]
    Kernel::Neon,
];

impl Kernel {
    /// The best kernel the running CPU supports.
    pub fn detect() -> Kernel {
        ALL.iter()
            .rev()
            .copied()
            .find(|k| k.is_supported())
            .unwrap_or(Kernel::Scalar)
    }

    /// Every kernel the running CPU can run, worst to best; always starts with `Scalar`.
    pub fn available() -> Vec<Kernel> {
        ALL.iter().copied().filter(|k| k.is_supported()).collect()
    }

    /// Whether the running CPU can run this kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        }
    }

    /// A short lower-case name ("scalar", "avx2+fma", "avx512", "neon").
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => "avx2+fma",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => "avx512",
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => "neon",
        }
    }

    /// Dot product of two equal-length vectors with this kernel.
    ///
    /// # Panics
    /// If the lengths differ, or if the running CPU cannot run this kernel (see
    /// [`Kernel::available`]).
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
        self.assert_supported();
        // SAFETY: `assert_supported` just checked that the CPU has this kernel's features.
        unsafe { self.dot_unchecked(a, b) }
    }

    /// The flat-scan kernel: `out[i] = dot(query, row i)` for every `i < out.len()`, where row
    /// `i` is `rows[i * stride..i * stride + query.len()]`. The last row need not be padded to
    /// `stride`.
    ///
    /// # Panics
    /// If `stride < query.len()`, if `rows` is too short for `out.len()` rows, or if the running
    /// CPU cannot run this kernel.
    pub fn dot_rows(self, query: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        self.assert_supported();
        // SAFETY: `assert_supported` just checked that the CPU has this kernel's features.
        unsafe { self.dot_rows_unchecked(query, rows, stride, out) }
    }

    /// Dot product of two equal-length `i8` vectors (quantised embeddings), exact in `i32`.
    /// Vectors of up to 65,536 elements cannot overflow (each product is at most 2^14).
    ///
    /// # Panics
    /// If the lengths differ, or if the running CPU cannot run this kernel.
    pub fn dot_i8(self, a: &[i8], b: &[i8]) -> i32 {
        assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
        self.assert_supported();
        // SAFETY: `assert_supported` just checked that the CPU has this kernel's features.
        unsafe { self.dot_i8_unchecked(a, b) }
    }

    /// [`Kernel::dot_i8`] without the checks.
    ///
    /// # Safety
    /// The running CPU must support `self` ([`Kernel::is_supported`]).
    #[inline]
    unsafe fn dot_i8_unchecked(self, a: &[i8], b: &[i8]) -> i32 {
        match self {
            Kernel::Scalar => scalar::dot_i8(a, b),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller guarantees the CPU supports `self`, which includes AVX2.
            Kernel::Avx2Fma => unsafe { x86::dot_i8_avx2(a, b) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                if x86::has_vnni() {
                    // SAFETY: `has_vnni` checked AVX-512 BW and VNNI (F is the kernel's own).
                    unsafe { x86::dot_i8_vnni(a, b) }
                } else {
                    // SAFETY: every AVX-512F CPU has AVX2.
                    unsafe { x86::dot_i8_avx2(a, b) }
                }
            }
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above.
            Kernel::Neon => unsafe { arm::dot_i8_neon(a, b) },
        }
    }

    fn assert_supported(self) {
        assert!(
            self.is_supported(),
            "the {} similarity kernel needs CPU features this machine lacks",
            self.name()
        );
    }

    /// [`Kernel::dot`] without the checks.
    ///
    /// # Safety
    /// The running CPU must support `self` ([`Kernel::is_supported`]).
    #[inline]
    unsafe fn dot_unchecked(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Kernel::Scalar => scalar::dot(a, b),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller guarantees the CPU supports `self`, which is exactly the feature
            // set the called function is compiled for.
            Kernel::Avx2Fma => unsafe { x86::dot_avx2(a, b) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx512 => unsafe { x86::dot_avx512(a, b) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above.
            Kernel::Neon => unsafe { arm::dot_neon(a, b) },
        }
    }

    /// [`Kernel::dot_rows`] without the CPU check (the row geometry is still checked).
    ///
    /// # Safety
    /// The running CPU must support `self` ([`Kernel::is_supported`]).
    #[inline]
    unsafe fn dot_rows_unchecked(
        self,
        query: &[f32],
        rows: &[f32],
        stride: usize,
        out: &mut [f32],
    ) {
        match self {
            Kernel::Scalar => scalar::dot_rows(query, rows, stride, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller guarantees the CPU supports `self`, which is exactly the feature
            // set the called function is compiled for.
            Kernel::Avx2Fma => unsafe { x86::dot_rows_avx2(query, rows, stride, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx512 => unsafe { x86::dot_rows_avx512(query, rows, stride, out) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above.
            Kernel::Neon => unsafe { arm::dot_rows_neon(query, rows, stride, out) },
        }
    }

    fn from_u8(v: u8) -> Option<Kernel> {
        ALL.iter().copied().find(|k| *k as u8 == v)
    }
}

/// The detected kernel as its `u8` discriminant; `UNDETECTED` until the first call. Only ever
/// written with the result of [`Kernel::detect`] (idempotent, so racing first calls are fine).
static DETECTED: AtomicU8 = AtomicU8::new(UNDETECTED);
const UNDETECTED: u8 = u8::MAX;

/// The kernel the top-level functions use: the best this CPU supports, detected once.
#[inline]
pub fn kernel() -> Kernel {
    match DETECTED.load(Ordering::Relaxed) {
        0 => Kernel::Scalar,
        #[cfg(target_arch = "x86_64")]
        1 => Kernel::Avx2Fma,
        #[cfg(target_arch = "x86_64")]
        2 => Kernel::Avx512,
        #[cfg(target_arch = "aarch64")]
        3 => Kernel::Neon,
        _ => detect_and_cache(),
    }
}

#[cold]
#[inline(never)]
fn detect_and_cache() -> Kernel {
    let k = Kernel::detect();
    DETECTED.store(k as u8, Ordering::Relaxed);
    debug_assert_eq!(Kernel::from_u8(k as u8), Some(k));
    k
}

/// Dot product of two equal-length vectors.
///
/// # Panics
/// If the lengths differ (a caller bug, never data-dependent: dimensions are checked on input).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    // SAFETY: `kernel()` only returns what `Kernel::detect` found this CPU supports.
    unsafe { kernel().dot_unchecked(a, b) }
}

/// The flat scan: `out[i] = dot(query, row i)` for every `i < out.len()`, where row `i` is
/// `rows[i * stride..i * stride + query.len()]` (a contiguous column of rows `stride` apart;
/// the last one need not be padded).
///
/// # Panics
/// If `stride < query.len()` or `rows` is too short for `out.len()` rows (caller bugs).
#[inline]
pub fn dot_rows(query: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    // SAFETY: `kernel()` only returns what `Kernel::detect` found this CPU supports.
    unsafe { kernel().dot_rows_unchecked(query, rows, stride, out) }
}

/// Dot product of two equal-length `i8` vectors, exact (see [`Kernel::dot_i8`]).
///
/// # Panics
/// If the lengths differ.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    // SAFETY: `kernel()` only returns what `Kernel::detect` found this CPU supports.
    unsafe { kernel().dot_i8_unchecked(a, b) }
}

/// Squared L2 norm.
#[inline]
pub fn norm_sq(a: &[f32]) -> f32 {
    // SAFETY: `kernel()` only returns what `Kernel::detect` found this CPU supports.
    unsafe { kernel().dot_unchecked(a, a) }
}

/// Cosine similarity of two vectors of any norm; 0 when either is all zeros.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let d = dot(a, b);
    let n = (norm_sq(a) * norm_sq(b)).sqrt();
    if n > 0.0 {
        (d / n).clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

/// Scales `v` to unit length in place. Returns false (and leaves `v` alone) when it has no
/// direction: all zeros, or a norm that is not finite.
pub fn normalize(v: &mut [f32]) -> bool {
    let n = norm_sq(v).sqrt();
    if !(n.is_finite() && n > 0.0) {
        return false;
    }
    let inv = 1.0 / n;
    for x in v.iter_mut() {
        *x *= inv;
    }
    true
}

/// Checks that `rows` holds `n` rows of `dim` elements starting `stride` apart (the last one
/// possibly unpadded). Every `dot_rows` implementation calls it before touching the rows.
fn check_rows(dim: usize, rows_len: usize, stride: usize, n: usize) {
    assert!(
        stride >= dim,
        "dot_rows: stride {stride} is shorter than the query ({dim} elements)"
    );
    if n > 0 {
        let need = (n - 1)
            .checked_mul(stride)
            .and_then(|start| start.checked_add(dim));
        assert!(
            need.is_some_and(|need| need <= rows_len),
            "dot_rows: {n} rows of {dim} elements, stride {stride}, do not fit in {rows_len} elements"
        );
    }
}

/// The portable reference implementation, also the fallback.
pub mod scalar {
    /// Dot product, a plain loop (what the SIMD kernels are checked and measured against).
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut s = 0.0f32;
        for i in 0..a.len().min(b.len()) {
            s += a[i] * b[i];
        }
        s
    }

    /// Dot product of `i8` vectors in `i32`, a plain loop.
    pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        let mut s = 0i32;
        for i in 0..a.len().min(b.len()) {
            s += i32::from(a[i]) * i32::from(b[i]);
        }
        s
    }

    /// `dot_rows` with [`dot`] per row.
    pub(super) fn dot_rows(query: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let d = query.len();
        super::check_rows(d, rows.len(), stride, out.len());
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot(query, &rows[i * stride..][..d]);
        }
    }
}

/// x86_64 kernels. Each function is safe to call only where its target features are present,
/// which is what the `unsafe` at its call sites in [`Kernel`] asserts; memory safety inside does
/// not depend on the caller (every length is taken from the slices themselves).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::check_rows;
    use std::arch::x86_64::*;

    /// Sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Dot product over the common length: four 8-lane accumulators (32 elements per step) to
    /// hide the FMA latency, then single 8-lane steps, then a scalar tail.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut acc2 = _mm256_setzero_ps();
        let mut acc3 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n, which is at most the length of `a` and of `b`, so each 8-lane
            // unaligned load below reads inside its slice.
            unsafe {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                    acc1,
                );
                acc2 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 16)),
                    _mm256_loadu_ps(pb.add(i + 16)),
                    acc2,
                );
                acc3 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 24)),
                    _mm256_loadu_ps(pb.add(i + 24)),
                    acc3,
                );
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: i + 8 <= n <= a.len(), b.len().
            unsafe {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            }
            i += 8;
        }
        let acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
        let mut s = hsum256(acc);
        for (x, y) in a[i..n].iter().zip(&b[i..n]) {
            s += x * y;
        }
        s
    }

    /// One row after another with the single-vector kernel. A 4-rows-per-step variant
    /// (sharing each query load across rows) scanned a mapped 100,000 x 768 column at
    /// 14.7-16 GB/s against 24.8 GB/s for this on the bench machine (`engram-bench recall`,
    /// part `scan`): the scan is bound by memory, and one sequential stream prefetches best.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_rows_avx2(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let d = q.len();
        check_rows(d, rows.len(), stride, out.len());
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot_avx2(q, &rows[i * stride..][..d]);
        }
    }

    /// The mask of the first `rem` lanes, `rem < 16`.
    #[inline]
    /// `i8` dot product: 16 elements per step sign-extended to `i16` and multiplied
    /// pairwise into eight `i32` lanes (`vpmaddwd`), two accumulators, then a scalar tail.
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_si256();
        let mut acc1 = _mm256_setzero_si256();
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n <= a.len(), b.len(): the four 16-byte unaligned loads are
            // in bounds.
            unsafe {
                let x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pa.add(i).cast()));
                let y0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i).cast()));
                let x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pa.add(i + 16).cast()));
                let y1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i + 16).cast()));
                acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(x0, y0));
                acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(x1, y1));
            }
            i += 32;
        }
        let acc = _mm256_add_epi32(acc0, acc1);
        let lo = _mm256_castsi256_si128(acc);
        let hi = _mm256_extracti128_si256::<1>(acc);
        let v = _mm_add_epi32(lo, hi);
        let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
        let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
        let mut s = _mm_cvtsi128_si32(v);
        for (x, y) in a[i..n].iter().zip(&b[i..n]) {
            s += i32::from(*x) * i32::from(*y);
        }
        s
    }

    /// Whether the CPU has AVX-512 BW and VNNI (for [`dot_i8_vnni`]); detected once.
    pub(super) fn has_vnni() -> bool {
        use std::sync::atomic::{AtomicU8, Ordering};
        static VNNI: AtomicU8 = AtomicU8::new(0);
        match VNNI.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                let yes = std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni");
                VNNI.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
        }
    }

    /// `i8` dot product with AVX-512 VNNI, 64 elements per step. `vpdpbusd` multiplies
    /// unsigned by signed bytes, so `a` is shifted to `a + 128` (an xor of the sign bit) and
    /// `128 * sum(b)` (summed alongside, as `1 * b`) is taken off at the end. The tail is a
    /// masked load (zeros add nothing).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn dot_i8_vnni(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let flip = _mm512_set1_epi8(i8::MIN);
        let ones = _mm512_set1_epi8(1);
        let mut acc = _mm512_setzero_si512();
        let mut sum_b = _mm512_setzero_si512();
        let mut i = 0;
        while i < n {
            let rem = n - i;
            let mask: __mmask64 = if rem >= 64 { !0 } else { (1u64 << rem) - 1 };
            // SAFETY: the mask covers only elements i..min(i + 64, n), inside both slices;
            // masked-off bytes are not read.
            let (x, y) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(mask, pa.add(i)),
                    _mm512_maskz_loadu_epi8(mask, pb.add(i)),
                )
            };
            acc = _mm512_dpbusd_epi32(acc, _mm512_xor_si512(x, flip), y);
            sum_b = _mm512_dpbusd_epi32(sum_b, ones, y);
            i += 64;
        }
        _mm512_reduce_add_epi32(acc) - 128 * _mm512_reduce_add_epi32(sum_b)
    }

    fn tail_mask(rem: usize) -> __mmask16 {
        debug_assert!(rem < 16);
        (1u16 << rem) - 1
    }

    /// Dot product over the common length: four 16-lane accumulators (64 elements per step),
    /// then single 16-lane steps, then one masked step for the last `n % 16` elements.
    #[target_feature(enable = "avx512f")]
    pub(super) fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut acc2 = _mm512_setzero_ps();
        let mut acc3 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 64 <= n {
            // SAFETY: i + 64 <= n, which is at most the length of `a` and of `b`, so each
            // 16-lane unaligned load below reads inside its slice.
            unsafe {
                acc0 =
                    _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i + 16)),
                    _mm512_loadu_ps(pb.add(i + 16)),
                    acc1,
                );
                acc2 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i + 32)),
                    _mm512_loadu_ps(pb.add(i + 32)),
                    acc2,
                );
                acc3 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i + 48)),
                    _mm512_loadu_ps(pb.add(i + 48)),
                    acc3,
                );
            }
            i += 64;
        }
        while i + 16 <= n {
            // SAFETY: i + 16 <= n <= a.len(), b.len().
            unsafe {
                acc0 =
                    _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            }
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            // SAFETY: i < n, so pa.add(i) and pb.add(i) point inside their slices; the mask
            // enables exactly the n - i lanes that are inside them, and masked-off lanes of a
            // masked load are not accessed (no read, no fault) and read as zero.
            unsafe {
                acc1 = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(m, pa.add(i)),
                    _mm512_maskz_loadu_ps(m, pb.add(i)),
                    acc1,
                );
            }
        }
        let acc = _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3));
        _mm512_reduce_add_ps(acc)
    }

    /// One row after another, like [`dot_rows_avx2`].
    #[target_feature(enable = "avx512f")]
    pub(super) fn dot_rows_avx512(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let d = q.len();
        check_rows(d, rows.len(), stride, out.len());
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot_avx512(q, &rows[i * stride..][..d]);
        }
    }
}

/// aarch64 kernels (NEON, 4 lanes). Same structure and safety argument as the x86_64 ones.
#[cfg(target_arch = "aarch64")]
mod arm {
    use super::check_rows;
    use std::arch::aarch64::*;

    /// Dot product over the common length: four 4-lane accumulators (16 elements per step),
    /// then single 4-lane steps, then a scalar tail.
    #[target_feature(enable = "neon")]
    pub(super) fn dot_neon(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = vdupq_n_f32(0.0);
        let mut acc1 = vdupq_n_f32(0.0);
        let mut acc2 = vdupq_n_f32(0.0);
        let mut acc3 = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n, which is at most the length of `a` and of `b`, so each
            // 4-lane load below reads inside its slice (vld1q has no alignment requirement
            // beyond that of f32).
            unsafe {
                acc0 = vfmaq_f32(acc0, vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
                acc1 = vfmaq_f32(acc1, vld1q_f32(pa.add(i + 4)), vld1q_f32(pb.add(i + 4)));
                acc2 = vfmaq_f32(acc2, vld1q_f32(pa.add(i + 8)), vld1q_f32(pb.add(i + 8)));
                acc3 = vfmaq_f32(acc3, vld1q_f32(pa.add(i + 12)), vld1q_f32(pb.add(i + 12)));
            }
            i += 16;
        }
        while i + 4 <= n {
            // SAFETY: i + 4 <= n <= a.len(), b.len().
            unsafe {
                acc0 = vfmaq_f32(acc0, vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
            }
            i += 4;
        }
        let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
        for (x, y) in a[i..n].iter().zip(&b[i..n]) {
            s += x * y;
        }
        s
    }

    /// `i8` dot product: widening multiplies of 8 lanes into `i16`, pairwise-accumulated
    /// into four `i32` lanes (16 elements per step), then a scalar tail.
    #[target_feature(enable = "neon")]
    pub(super) fn dot_i8_neon(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = vdupq_n_s32(0);
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n <= a.len(), b.len(): both 16-byte loads are in bounds.
            unsafe {
                let x = vld1q_s8(pa.add(i));
                let y = vld1q_s8(pb.add(i));
                acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(x), vget_low_s8(y)));
                acc = vpadalq_s16(acc, vmull_high_s8(x, y));
            }
            i += 16;
        }
        let mut s = vaddvq_s32(acc);
        for (x, y) in a[i..n].iter().zip(&b[i..n]) {
            s += i32::from(*x) * i32::from(*y);
        }
        s
    }

    #[target_feature(enable = "neon")]
    pub(super) fn dot_rows_neon(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let d = q.len();
        check_rows(d, rows.len(), stride, out.len());
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot_neon(q, &rows[i * stride..][..d]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    /// Two vectors of the same random length in 0..=300.
    fn pair() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        (0usize..=300).prop_flat_map(|n| {
            (
                prop::collection::vec(-100.0f32..100.0, n),
                prop::collection::vec(-100.0f32..100.0, n),
            )
        })
    }

    /// `got` agrees with `want` (both dot products of `a` and `b`, summed in different orders)
    /// to a tolerance relative to the sum of the magnitudes of the products: the scale of the
    /// rounding error whatever the order, even when the products cancel.
    fn check_close(got: f32, want: f32, a: &[f32], b: &[f32]) -> Result<(), TestCaseError> {
        let magnitude: f32 = a.iter().zip(b).map(|(x, y)| (x * y).abs()).sum();
        let tol = 1e-5 * magnitude + f32::MIN_POSITIVE;
        prop_assert!(
            (got - want).abs() <= tol,
            "got {got}, want {want}, tolerance {tol} (n = {})",
            a.len()
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn every_kernel_matches_scalar_dot((a, b) in pair()) {
            let want = scalar::dot(&a, &b);
            for k in Kernel::available() {
                let got = k.dot(&a, &b);
                check_close(got, want, &a, &b)
                    .map_err(|e| TestCaseError::fail(format!("{}: {e}", k.name())))?;
            }
            check_close(dot(&a, &b), want, &a, &b)?;
            check_close(norm_sq(&a), scalar::dot(&a, &a), &a, &a)?;
        }

        #[test]
        fn dot_rows_equals_per_row_dot(
            (q, column, stride, n, offset) in (0usize..=300, 0usize..=17, 0usize..=9, 0usize..=3)
                .prop_flat_map(|(dim, pad, n, offset)| {
                    let stride = dim + pad;
                    // The last row is left unpadded; `offset` misaligns the column.
                    let len = offset + if n == 0 { 0 } else { (n - 1) * stride + dim };
                    (
                        prop::collection::vec(-10.0f32..10.0, dim),
                        prop::collection::vec(-10.0f32..10.0, len),
                        Just(stride),
                        Just(n),
                        Just(offset),
                    )
                })
        ) {
            let rows = &column[offset..];
            let d = q.len();
            for k in Kernel::available() {
                let mut out = vec![f32::NAN; n];
                k.dot_rows(&q, rows, stride, &mut out);
                for (i, got) in out.iter().enumerate() {
                    let row = &rows[i * stride..][..d];
                    check_close(*got, scalar::dot(&q, row), &q, row)
                        .map_err(|e| TestCaseError::fail(format!("{} row {i}: {e}", k.name())))?;
                }
            }
            let mut top = vec![f32::NAN; n];
            dot_rows(&q, rows, stride, &mut top);
            let mut detected = vec![f32::NAN; n];
            kernel().dot_rows(&q, rows, stride, &mut detected);
            prop_assert_eq!(top, detected);
        }

        #[test]
        fn normalize_gives_unit_norm(mut v in prop::collection::vec(-100.0f32..100.0, 1..=300)) {
            prop_assume!(v.iter().any(|x| *x != 0.0));
            let before = v.clone();
            prop_assert!(normalize(&mut v));
            prop_assert!((norm_sq(&v) - 1.0).abs() < 1e-5, "norm_sq {}", norm_sq(&v));
            // Same direction.
            prop_assert!((cosine(&v, &before) - 1.0).abs() < 1e-5);
        }

        #[test]
        fn cosine_of_parallel_vectors_is_one(
            v in prop::collection::vec(-100.0f32..100.0, 1..=300),
            scale in 0.01f32..100.0,
        ) {
            prop_assume!(v.iter().any(|x| x.abs() > 1e-3));
            let w: Vec<f32> = v.iter().map(|x| x * scale).collect();
            prop_assert!((cosine(&v, &w) - 1.0).abs() < 1e-5, "cosine {}", cosine(&v, &w));
            let neg: Vec<f32> = v.iter().map(|x| -x * scale).collect();
            prop_assert!((cosine(&v, &neg) + 1.0).abs() < 1e-5, "cosine {}", cosine(&v, &neg));
        }
    }

    #[test]
    fn normalize_refuses_vectors_without_direction() {
        for bad in [
            vec![],
            vec![0.0; 768],
            vec![1.0, f32::NAN, 0.5],
            vec![1.0, f32::INFINITY],
            vec![f32::NEG_INFINITY; 3],
            vec![1e30; 4], // the squared norm overflows
        ] {
            let mut v = bad.clone();
            assert!(!normalize(&mut v), "{bad:?}");
            assert_eq!(format!("{v:?}"), format!("{bad:?}"), "left alone");
        }
    }

    #[test]
    fn cosine_with_a_zero_vector_is_zero() {
        assert_eq!(cosine(&[0.0; 5], &[1.0, 2.0, 3.0, 4.0, 5.0]), 0.0);
        assert_eq!(cosine(&[], &[]), 0.0);
    }

    #[test]
    fn detection_is_consistent() {
        let available = Kernel::available();
        assert_eq!(available.first(), Some(&Kernel::Scalar));
        assert_eq!(available.last(), Some(&Kernel::detect()));
        assert_eq!(kernel(), Kernel::detect());
        assert_eq!(kernel(), kernel(), "cached");
        for k in &available {
            assert!(k.is_supported());
            assert_eq!(Kernel::from_u8(*k as u8), Some(*k));
        }
        let mut names: Vec<_> = ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        #[cfg(target_arch = "aarch64")]
        assert_eq!(kernel(), Kernel::Neon, "NEON is baseline on aarch64");
    }

    #[test]
    fn exact_on_small_integers() {
        // Integer-valued products and sums are exact in f32 whatever the order.
        let a: Vec<f32> = (0..300).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..300).map(|i| (i % 5) as f32 - 2.0).collect();
        for n in 0..=a.len() {
            let want = scalar::dot(&a[..n], &b[..n]);
            for k in Kernel::available() {
                assert_eq!(k.dot(&a[..n], &b[..n]), want, "{} n = {n}", k.name());
            }
        }
    }

    proptest! {
        #[test]
        fn every_kernel_matches_scalar_dot_i8(
            (a, b) in (0usize..=800).prop_flat_map(|n| (
                prop::collection::vec(any::<i8>(), n),
                prop::collection::vec(any::<i8>(), n),
            ))
        ) {
            let want = scalar::dot_i8(&a, &b);
            for k in Kernel::available() {
                prop_assert_eq!(k.dot_i8(&a, &b), want, "{}", k.name());
            }
            prop_assert_eq!(dot_i8(&a, &b), want);
        }
    }

    #[test]
    fn dot_i8_extremes_do_not_overflow() {
        let a = vec![i8::MIN; 4096];
        for k in Kernel::available() {
            assert_eq!(k.dot_i8(&a, &a), 4096 * 128 * 128, "{}", k.name());
        }
    }

    #[test]
    #[should_panic(expected = "different lengths")]
    fn dot_of_different_lengths_panics() {
        dot(&[1.0, 2.0], &[1.0]);
    }

    #[test]
    fn dot_rows_rejects_a_short_column() {
        for k in Kernel::available() {
            let q = [1.0f32; 8];
            let rows = [1.0f32; 8 * 3 - 1];
            let r = std::panic::catch_unwind(|| k.dot_rows(&q, &rows, 8, &mut [0.0; 3]));
            assert!(r.is_err(), "{}: short column accepted", k.name());
            let r = std::panic::catch_unwind(|| k.dot_rows(&q, &rows, 7, &mut [0.0; 2]));
            assert!(
                r.is_err(),
                "{}: stride shorter than the query accepted",
                k.name()
            );
            // The last row needs no padding: 2 rows of 8 at stride 15 fit in 23.
            let mut out = [0.0; 2];
            k.dot_rows(&q, &rows, 15, &mut out);
            assert_eq!(out, [8.0, 8.0]);
        }
    }
}
