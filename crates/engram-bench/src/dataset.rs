//! Embeddings shaped like real ones, for the recall suite.
//!
//! Isotropic Gaussian vectors in 768 dimensions are unlike any real embedding set (every pair is
//! nearly orthogonal, and no index can beat a scan on them). Real sentence embeddings cluster by
//! topic, and within a topic vary along a few directions. So: `clusters` centres (random unit
//! vectors); each cluster owns `subspace` random directions; a point is its centre plus a
//! Gaussian combination of its cluster's directions plus small isotropic noise, normalised.
//! Queries are stored points moved by a little more noise, so each has true near neighbours.

use rand::rngs::SmallRng;
use rand::Rng;

/// The shape of a generated set.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub dimension: usize,
    pub clusters: usize,
    /// Directions of variation per cluster.
    pub subspace: usize,
    /// Spread along the cluster's directions, relative to the centre's unit length.
    pub spread: f32,
    /// Isotropic noise per component, relative to a unit vector's typical component.
    pub noise: f32,
}

impl Shape {
    /// What the recall suite uses: a few hundred clusters over ~32-dimensional subspaces.
    pub fn realistic(dimension: usize) -> Self {
        Self {
            dimension,
            clusters: 300,
            subspace: 32,
            spread: 0.6,
            noise: 0.15,
        }
    }
}

/// A standard normal sample (Box-Muller).
pub fn gaussian(rng: &mut SmallRng) -> f32 {
    loop {
        let u: f32 = rng.gen();
        if u > f32::MIN_POSITIVE {
            let v: f32 = rng.gen();
            return (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos();
        }
    }
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        for x in &mut v {
            *x /= n;
        }
    }
    v
}

fn gaussian_unit(rng: &mut SmallRng, dim: usize) -> Vec<f32> {
    normalized((0..dim).map(|_| gaussian(rng)).collect())
}

/// The clusters of a generated set: centres and their directions.
pub struct Clusters {
    shape: Shape,
    centres: Vec<Vec<f32>>,
    /// `clusters * subspace` unit directions, cluster-major.
    directions: Vec<Vec<f32>>,
}

impl Clusters {
    pub fn new(rng: &mut SmallRng, shape: Shape) -> Self {
        let centres = (0..shape.clusters)
            .map(|_| gaussian_unit(rng, shape.dimension))
            .collect();
        let directions = (0..shape.clusters * shape.subspace)
            .map(|_| gaussian_unit(rng, shape.dimension))
            .collect();
        Self {
            shape,
            centres,
            directions,
        }
    }

    /// One point of a random cluster, unit length.
    pub fn point(&self, rng: &mut SmallRng) -> Vec<f32> {
        let s = self.shape;
        let c = rng.gen_range(0..s.clusters);
        let mut v = self.centres[c].clone();
        let scale = s.spread / (s.subspace as f32).sqrt();
        for d in &self.directions[c * s.subspace..(c + 1) * s.subspace] {
            let g = gaussian(rng) * scale;
            for (x, y) in v.iter_mut().zip(d) {
                *x += g * y;
            }
        }
        let noise = s.noise / (s.dimension as f32).sqrt();
        for x in &mut v {
            *x += gaussian(rng) * noise;
        }
        normalized(v)
    }

    /// A query near `point`: moved by isotropic noise of relative size `amount`, unit length.
    pub fn near(&self, rng: &mut SmallRng, point: &[f32], amount: f32) -> Vec<f32> {
        let noise = amount / (self.shape.dimension as f32).sqrt();
        normalized(point.iter().map(|x| x + gaussian(rng) * noise).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn points_are_unit_and_clustered() {
        let mut rng = crate::util::rng(7);
        let shape = Shape {
            clusters: 4,
            ..Shape::realistic(64)
        };
        let c = Clusters::new(&mut rng, shape);
        let pts: Vec<Vec<f32>> = (0..200).map(|_| c.point(&mut rng)).collect();
        for p in &pts {
            assert!((dot(p, p) - 1.0).abs() < 1e-4);
        }
        // With 4 clusters, each point's best other point is far more similar than a random
        // pair of independent unit vectors in 64-d (about 0.12 in magnitude).
        let mean_best: f32 = pts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                pts.iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, q)| dot(p, q))
                    .fold(f32::MIN, f32::max)
            })
            .sum::<f32>()
            / pts.len() as f32;
        assert!(mean_best > 0.5, "mean best similarity {mean_best}");
        let q = c.near(&mut rng, &pts[0], 0.1);
        assert!(dot(&q, &pts[0]) > 0.95);
    }
}
