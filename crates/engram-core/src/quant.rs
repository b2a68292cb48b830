//! Scalar quantisation of embeddings to `i8`: each vector scaled so that its largest component
//! is ±127, with the scale kept beside the code. The similarity of two codes is
//! `dot_i8(a, b) · scale_a · scale_b`, within about 1e-3 of the exact cosine for unit vectors
//! of a few hundred dimensions; a quarter of the bytes of `f32`, and an integer dot product
//! (`simd::dot_i8`). Used where many similarities are computed to choose candidates that are
//! then scored exactly: the auto-link index, and the traversal of a segment's HNSW graph.

/// An `i8` code and its scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Code {
    pub bytes: Vec<i8>,
    pub scale: f32,
}

/// The code of `v`: a zero code with scale 0 for a vector without a finite, non-zero
/// component; a NaN component codes as 0.
pub fn quantize(v: &[f32]) -> Code {
    let mut bytes = vec![0i8; v.len()];
    let scale = quantize_into(v, &mut bytes);
    Code { bytes, scale }
}

/// Writes the code of `v` into `out` (of `v`'s length) and returns its scale (see
/// [`quantize`]).
///
/// # Panics
/// If the lengths differ.
pub fn quantize_into(v: &[f32], out: &mut [i8]) -> f32 {
    assert_eq!(v.len(), out.len(), "code length differs from the vector's");
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if !(max.is_finite() && max > 0.0) {
        out.fill(0);
        return 0.0;
    }
    let inv = 127.0 / max;
    for (o, x) in out.iter_mut().zip(v) {
        *o = (x * inv).round().clamp(-127.0, 127.0) as i8;
    }
    max / 127.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_approximate_the_dot_product() {
        let a: Vec<f32> = (0..384)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 400.0)
            .collect();
        let b: Vec<f32> = (0..384)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 390.0)
            .collect();
        let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let (qa, qb) = (quantize(&a), quantize(&b));
        let approx = crate::simd::dot_i8(&qa.bytes, &qb.bytes) as f32 * qa.scale * qb.scale;
        assert!(
            (approx - exact).abs() < 1e-2 * exact.abs().max(1.0),
            "{approx} vs {exact}"
        );
        let zero = quantize(&[0.0; 8]);
        assert_eq!((zero.bytes, zero.scale), (vec![0; 8], 0.0));
        // A NaN component (corrupt bytes) codes as 0; the rest keep their scale.
        let nan = quantize(&[f32::NAN, 1.0]);
        assert_eq!((nan.bytes, nan.scale), (vec![0, 127], 1.0 / 127.0));
        assert_eq!(quantize(&[f32::NAN]).scale, 0.0);
        let mut out = [0i8; 3];
        assert_eq!(quantize_into(&[0.5, -1.0, 0.25], &mut out), 1.0 / 127.0);
        assert_eq!(out, [64, -127, 32]);
    }
}
