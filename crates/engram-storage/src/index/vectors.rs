//! Where an index reads vectors from: rows of equal dimension, addressed by row number. A
//! sealed [`Segment`] serves them zero-copy from its mapped embedding column; [`FlatVectors`]
//! serves a flat `f32` slice (tests, in-memory data).

use std::borrow::Cow;

use crate::error::{Result, StorageError};
use crate::segment::Segment;

/// Rows of `dimension()` f32 each. Stored embeddings are L2-normalised, so similarity is the
/// dot product.
pub trait Vectors {
    /// Number of rows.
    fn len(&self) -> usize;
    fn dimension(&self) -> usize;
    /// Row `row`, `dimension()` long.
    ///
    /// # Panics
    /// If `row >= len()` (a caller bug: indexes only hold row numbers below their row count).
    fn vector(&self, row: u32) -> &[f32];
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Vectors for Segment {
    fn len(&self) -> usize {
        self.rows()
    }

    fn dimension(&self) -> usize {
        self.info().dimension
    }

    #[inline]
    fn vector(&self, row: u32) -> &[f32] {
        self.embedding(row as usize)
    }
}

/// Rows stored back to back in one `f32` slice, owned or borrowed.
#[derive(Debug, Clone)]
pub struct FlatVectors<'a> {
    data: Cow<'a, [f32]>,
    dimension: usize,
}

impl<'a> FlatVectors<'a> {
    /// `data.len()` must be a multiple of `dimension`, which must be at least 1.
    pub fn new(data: impl Into<Cow<'a, [f32]>>, dimension: usize) -> Result<FlatVectors<'a>> {
        let data = data.into();
        if dimension == 0 || !data.len().is_multiple_of(dimension) {
            return Err(StorageError::Invalid(format!(
                "{} floats do not make rows of dimension {dimension}",
                data.len()
            )));
        }
        Ok(FlatVectors { data, dimension })
    }

    /// The rows, back to back.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
}

impl Vectors for FlatVectors<'_> {
    fn len(&self) -> usize {
        self.data.len() / self.dimension
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    #[inline]
    fn vector(&self, row: u32) -> &[f32] {
        let at = row as usize * self.dimension;
        &self.data[at..at + self.dimension]
    }
}

impl<V: Vectors + ?Sized> Vectors for &V {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn dimension(&self) -> usize {
        (**self).dimension()
    }
    #[inline]
    fn vector(&self, row: u32) -> &[f32] {
        (**self).vector(row)
    }
}
