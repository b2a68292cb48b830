//! Recall cues: what a recall asks for, and how far it may spread.
//!
//! A recall first finds the memories most similar to the cue (direct matches, at least
//! [`Cue::threshold`] cosine similarity). Those seed [spreading activation](crate::activation)
//! along links, which brings back associated memories too. [`RecallMode`] chooses which of the
//! two kinds a recall returns.

use std::fmt;
use std::str::FromStr;

use crate::activation::{SpreadParams, DEFAULT_MAX_NODES, DEFAULT_PRUNE};
use crate::limits::{MAX_CONTENT_LEN, MAX_DIMENSION};
use crate::CoreError;

/// Most results one recall may ask for.
pub const MAX_RESULTS: usize = 1000;
/// Most hops one recall may spread.
pub const MAX_HOPS: u32 = 10;
/// Narrowest search breadth (`ef`) a cue may ask of the ANN index.
pub const MIN_EF: usize = 10;
/// Widest search breadth (`ef`) a cue may ask of the ANN index.
pub const MAX_EF: usize = 4096;

const _: () = assert!(Cue::DEFAULT_MAX_RESULTS >= 1 && Cue::DEFAULT_MAX_RESULTS <= MAX_RESULTS);
const _: () = assert!(Cue::DEFAULT_MAX_HOPS <= MAX_HOPS);
const _: () = assert!(Cue::DEFAULT_DECAY > 0.0 && Cue::DEFAULT_DECAY <= 1.0);
const _: () = assert!(Cue::DEFAULT_THRESHOLD >= -1.0 && Cue::DEFAULT_THRESHOLD <= 1.0);
// Spreading can never be asked to activate more nodes than its bound allows to be returned.
const _: () = assert!(MAX_RESULTS <= DEFAULT_MAX_NODES);

/// What the recall is about: text (embedded by the space's embedder) or a vector (with the
/// space's dimension; the engine checks the dimension, the cue only what it can know alone).
#[derive(Debug, Clone, PartialEq)]
pub enum CueInput {
    Text(String),
    Vector(Vec<f32>),
}

/// Which memories a recall returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RecallMode {
    /// Direct matches only (hops 0). Nothing spreads.
    Similarity,
    /// Only memories reached by spreading from the direct matches (hops >= 1); the direct
    /// matches seed the spreading but are not returned themselves.
    Spreading,
    /// Both: the direct matches and the memories reached by spreading from them.
    #[default]
    Hybrid,
}

impl RecallMode {
    /// Every mode, in the order of [`RecallMode::ACCEPTED`].
    pub const ALL: [RecallMode; 3] = [Self::Similarity, Self::Spreading, Self::Hybrid];
    /// The names [`FromStr`] accepts.
    pub const ACCEPTED: &'static str = "similarity, spreading, hybrid";

    /// `"similarity"`, `"spreading"` or `"hybrid"`: the name used by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Similarity => "similarity",
            Self::Spreading => "spreading",
            Self::Hybrid => "hybrid",
        }
    }

    /// Whether activation spreads at all in this mode.
    pub fn spreads(self) -> bool {
        self != Self::Similarity
    }

    /// Whether a memory first activated at `hops` (0: a direct match) belongs in the result.
    pub fn includes(self, hops: u32) -> bool {
        match self {
            Self::Similarity => hops == 0,
            Self::Spreading => hops >= 1,
            Self::Hybrid => true,
        }
    }
}

impl fmt::Display for RecallMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecallMode {
    type Err = CoreError;

    /// Accepts exactly `similarity`, `spreading` or `hybrid` (lower case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                CoreError::InvalidCue(format!(
                    "mode {s:?} is not known: expected one of {}",
                    Self::ACCEPTED
                ))
            })
    }
}

/// How a recall finds its direct matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retrieval {
    /// By embedding similarity (the text embedded by the space's embedder, or the vector).
    Dense,
    /// By BM25 over the memories' content (text cues only).
    Lexical,
    /// Both, fused (the engine's fusion: a convex combination of the scores by default, or
    /// reciprocal rank; text cues only).
    Hybrid,
}

impl Retrieval {
    pub const ALL: [Retrieval; 3] = [Self::Dense, Self::Lexical, Self::Hybrid];
    pub const ACCEPTED: &'static str = "dense, lexical, hybrid";

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::Lexical => "lexical",
            Self::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for Retrieval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Retrieval {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                CoreError::InvalidCue(format!(
                    "retrieval {s:?} is not known: expected one of {}",
                    Self::ACCEPTED
                ))
            })
    }
}

/// A recall request, independent of where it came from (HTTP, command line, tests).
#[derive(Debug, Clone, PartialEq)]
pub struct Cue {
    pub input: CueInput,
    /// Least cosine similarity of a dense match, in `[-1, 1]`. Default 0.0. Lexical matches and
    /// memories reached by spreading are kept whatever their own similarity.
    pub threshold: f32,
    /// Most memories returned, direct and spread together: `1..=`[`MAX_RESULTS`]. Default 10.
    pub max_results: usize,
    /// Which memories are returned. Default [`RecallMode::Hybrid`].
    pub mode: RecallMode,
    /// How many hops activation spreads from the direct matches, at most [`MAX_HOPS`].
    /// Default 3. Ignored in [`RecallMode::Similarity`].
    pub max_hops: u32,
    /// Factor applied to activation at every hop, in `(0, 1]`. Default 0.5.
    pub decay: f32,
    /// How direct matches are found; `None`: [`Retrieval::Hybrid`] for text,
    /// [`Retrieval::Dense`] for a vector (which allows nothing else).
    pub retrieval: Option<Retrieval>,
    /// Search breadth of the ANN index (the HNSW beam width), [`MIN_EF`]`..=`[`MAX_EF`];
    /// `None`: the engine chooses it from `max_results`. Wider finds more of the true
    /// nearest neighbours and takes longer.
    pub ef: Option<usize>,
}

impl Cue {
    pub const DEFAULT_THRESHOLD: f32 = 0.0;
    pub const DEFAULT_MAX_RESULTS: usize = 10;
    pub const DEFAULT_MAX_HOPS: u32 = 3;
    pub const DEFAULT_DECAY: f32 = 0.5;

    /// A cue for `text` with every default.
    pub fn text(text: impl Into<String>) -> Self {
        Self::with_input(CueInput::Text(text.into()))
    }

    /// A cue for `vector` with every default.
    pub fn vector(vector: Vec<f32>) -> Self {
        Self::with_input(CueInput::Vector(vector))
    }

    fn with_input(input: CueInput) -> Self {
        Self {
            input,
            threshold: Self::DEFAULT_THRESHOLD,
            max_results: Self::DEFAULT_MAX_RESULTS,
            mode: RecallMode::default(),
            max_hops: Self::DEFAULT_MAX_HOPS,
            decay: Self::DEFAULT_DECAY,
            retrieval: None,
            ef: None,
        }
    }

    /// The retrieval this cue uses (see [`Cue::retrieval`]).
    pub fn effective_retrieval(&self) -> Retrieval {
        match (&self.input, self.retrieval) {
            (_, Some(r)) => r,
            (CueInput::Text(_), None) => Retrieval::Hybrid,
            (CueInput::Vector(_), None) => Retrieval::Dense,
        }
    }

    /// Checks every field. The error names the field, its value and what is expected.
    ///
    /// Text must not be empty or only whitespace, and at most [`MAX_CONTENT_LEN`] bytes. A vector
    /// must have 1 to [`MAX_DIMENSION`] values, all finite; whether its length is the space's
    /// dimension is checked where the space is known.
    pub fn validate(&self) -> Result<(), CoreError> {
        let bad = |m: String| Err(CoreError::InvalidCue(m));
        match &self.input {
            CueInput::Text(text) => {
                if text.trim().is_empty() {
                    return bad(if text.is_empty() {
                        "query text is empty: expected some text to recall by".into()
                    } else {
                        "query text is only whitespace: expected some text to recall by".into()
                    });
                }
                if text.len() > MAX_CONTENT_LEN {
                    return bad(format!(
                        "query text is {} bytes: the limit is {MAX_CONTENT_LEN}",
                        text.len()
                    ));
                }
            }
            CueInput::Vector(vector) => {
                if vector.is_empty() {
                    return bad(
                        "embedding is empty: expected the space's dimension of finite numbers"
                            .into(),
                    );
                }
                if vector.len() > MAX_DIMENSION {
                    return bad(format!(
                        "embedding has {} dimensions: the limit is {MAX_DIMENSION}",
                        vector.len()
                    ));
                }
                if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
                    return bad(format!(
                        "embedding[{i}] is {}: expected a finite number",
                        vector[i]
                    ));
                }
            }
        }
        if !(-1.0..=1.0).contains(&self.threshold) {
            return bad(format!(
                "threshold is {}: expected a number in [-1, 1]",
                self.threshold
            ));
        }
        if !(1..=MAX_RESULTS).contains(&self.max_results) {
            return bad(format!(
                "max_results is {}: expected 1 to {MAX_RESULTS}",
                self.max_results
            ));
        }
        if self.max_hops > MAX_HOPS {
            return bad(format!(
                "max_hops is {}: expected 0 to {MAX_HOPS}",
                self.max_hops
            ));
        }
        if matches!(self.input, CueInput::Vector(_))
            && matches!(self.retrieval, Some(Retrieval::Lexical | Retrieval::Hybrid))
        {
            return bad(format!(
                "retrieval {} needs a text query: a recall by embedding is dense",
                self.retrieval.map_or("", |r| r.as_str())
            ));
        }
        if let Some(ef) = self.ef {
            if !(MIN_EF..=MAX_EF).contains(&ef) {
                return bad(format!("ef is {ef}: expected {MIN_EF} to {MAX_EF}"));
            }
        }
        if !(self.decay > 0.0 && self.decay <= 1.0) {
            return bad(format!(
                "decay is {}: expected a number in (0, 1]",
                self.decay
            ));
        }
        Ok(())
    }

    /// The parameters to spread this cue's activation with: `max_hops` 0 in
    /// [`RecallMode::Similarity`], the cue's `max_hops` and `decay` otherwise, the default
    /// prune ([`DEFAULT_PRUNE`], the 0.01 least activation of the API) and bound on work.
    pub fn spread_params(&self) -> SpreadParams {
        SpreadParams {
            max_hops: if self.mode.spreads() {
                self.max_hops
            } else {
                0
            },
            decay: self.decay,
            prune: DEFAULT_PRUNE,
            max_nodes: DEFAULT_MAX_NODES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(cue: &Cue) -> String {
        match cue.validate() {
            Err(CoreError::InvalidCue(m)) => m,
            other => panic!("expected InvalidCue, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = Cue::text("coffee");
        assert_eq!(c.input, CueInput::Text("coffee".into()));
        assert_eq!(c.threshold, 0.0);
        assert_eq!(c.max_results, 10);
        assert_eq!(c.mode, RecallMode::Hybrid);
        assert_eq!(c.max_hops, 3);
        assert_eq!(c.decay, 0.5);
        assert_eq!(c.validate(), Ok(()));
        let v = Cue::vector(vec![0.1, 0.2]);
        assert_eq!(v.input, CueInput::Vector(vec![0.1, 0.2]));
        assert_eq!(
            (v.threshold, v.max_results, v.mode, v.max_hops, v.decay),
            (0.0, 10, RecallMode::Hybrid, 3, 0.5)
        );
        assert_eq!(v.validate(), Ok(()));
        assert_eq!(RecallMode::default(), RecallMode::Hybrid);
    }

    #[test]
    fn modes_round_trip_and_unknown_names_are_refused() {
        for m in RecallMode::ALL {
            assert_eq!(m.as_str().parse::<RecallMode>(), Ok(m));
            assert_eq!(m.to_string(), m.as_str());
        }
        assert_eq!("similarity".parse(), Ok(RecallMode::Similarity));
        assert_eq!("spreading".parse(), Ok(RecallMode::Spreading));
        assert_eq!("hybrid".parse(), Ok(RecallMode::Hybrid));
        for bad in ["", "Hybrid", "HYBRID", " hybrid", "spread", "semantic"] {
            let err = bad.parse::<RecallMode>().unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("invalid recall: "), "{text}");
            assert!(text.contains(&format!("{bad:?}")), "{text}");
            assert!(text.contains("similarity, spreading, hybrid"), "{text}");
        }
    }

    #[test]
    fn modes_say_what_they_include() {
        assert!(RecallMode::Similarity.includes(0));
        assert!(!RecallMode::Similarity.includes(1));
        assert!(!RecallMode::Spreading.includes(0));
        assert!(RecallMode::Spreading.includes(1));
        assert!(RecallMode::Hybrid.includes(0) && RecallMode::Hybrid.includes(3));
        assert!(!RecallMode::Similarity.spreads());
        assert!(RecallMode::Spreading.spreads() && RecallMode::Hybrid.spreads());
    }

    #[test]
    fn text_must_be_present() {
        assert!(message(&Cue::text("")).contains("query text is empty"));
        assert!(message(&Cue::text(" \n\t")).contains("only whitespace"));
        let long = Cue::text("x".repeat(MAX_CONTENT_LEN + 1));
        assert!(message(&long).contains("the limit is 102400"));
        assert_eq!(Cue::text("x".repeat(MAX_CONTENT_LEN)).validate(), Ok(()));
    }

    #[test]
    fn vector_must_be_present_and_finite() {
        assert!(message(&Cue::vector(vec![])).contains("embedding is empty"));
        let m = message(&Cue::vector(vec![0.0, f32::NAN]));
        assert!(m.contains("embedding[1] is NaN"), "{m}");
        let m = message(&Cue::vector(vec![f32::INFINITY]));
        assert!(m.contains("embedding[0] is inf"), "{m}");
        let m = message(&Cue::vector(vec![1.0, 2.0, f32::NEG_INFINITY]));
        assert!(m.contains("embedding[2]") && m.contains("finite"), "{m}");
        let m = message(&Cue::vector(vec![0.5; MAX_DIMENSION + 1]));
        assert!(m.contains("4097 dimensions") && m.contains("4096"), "{m}");
        assert_eq!(Cue::vector(vec![0.5; MAX_DIMENSION]).validate(), Ok(()));
    }

    #[test]
    fn threshold_in_range() {
        for ok in [-1.0, -0.3, 0.0, 0.99, 1.0] {
            let c = Cue {
                threshold: ok,
                ..Cue::text("a")
            };
            assert_eq!(c.validate(), Ok(()), "{ok}");
        }
        for bad in [-1.01, 1.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let c = Cue {
                threshold: bad,
                ..Cue::text("a")
            };
            let m = message(&c);
            assert!(m.starts_with("threshold is "), "{m}");
            assert!(m.contains("[-1, 1]"), "{m}");
        }
        let c = Cue {
            threshold: f32::NAN,
            ..Cue::text("a")
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid recall: threshold is NaN: expected a number in [-1, 1]"
        );
    }

    #[test]
    fn max_results_in_range() {
        for ok in [1, 10, MAX_RESULTS] {
            let c = Cue {
                max_results: ok,
                ..Cue::text("a")
            };
            assert_eq!(c.validate(), Ok(()));
        }
        for bad in [0, MAX_RESULTS + 1, usize::MAX] {
            let c = Cue {
                max_results: bad,
                ..Cue::text("a")
            };
            assert_eq!(
                message(&c),
                format!("max_results is {bad}: expected 1 to 1000")
            );
        }
    }

    #[test]
    fn max_hops_bounded() {
        for ok in [0, 3, MAX_HOPS] {
            let c = Cue {
                max_hops: ok,
                ..Cue::text("a")
            };
            assert_eq!(c.validate(), Ok(()));
        }
        for bad in [MAX_HOPS + 1, u32::MAX] {
            let c = Cue {
                max_hops: bad,
                ..Cue::text("a")
            };
            assert_eq!(message(&c), format!("max_hops is {bad}: expected 0 to 10"));
        }
    }

    #[test]
    fn decay_in_range() {
        for ok in [1e-6, 0.5, 1.0] {
            let c = Cue {
                decay: ok,
                ..Cue::text("a")
            };
            assert_eq!(c.validate(), Ok(()));
        }
        for bad in [0.0, -0.5, 1.01, f32::NAN, f32::INFINITY] {
            let c = Cue {
                decay: bad,
                ..Cue::text("a")
            };
            let m = message(&c);
            assert!(m.starts_with("decay is "), "{m}");
            assert!(m.contains("(0, 1]"), "{m}");
        }
    }

    #[test]
    fn input_is_checked_before_parameters() {
        let c = Cue {
            decay: 0.0,
            ..Cue::text("")
        };
        assert!(message(&c).contains("query text is empty"));
    }

    #[test]
    fn spread_params_follow_the_mode() {
        let mut c = Cue::text("a");
        c.max_hops = 5;
        c.decay = 0.7;
        let p = c.spread_params();
        assert_eq!((p.max_hops, p.decay, p.prune), (5, 0.7, 0.01));
        c.mode = RecallMode::Spreading;
        assert_eq!(c.spread_params().max_hops, 5);
        c.mode = RecallMode::Similarity;
        assert_eq!(c.spread_params().max_hops, 0);
    }
}
