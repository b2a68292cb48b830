/// A confidence in `[0, 1]`. Constructing one clamps; NaN becomes 0.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Confidence(f32);

/// `High` (> 0.7), `Medium` (> 0.4) or `Low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfidenceCategory {
    High,
    Medium,
    Low,
}

impl Confidence {
    pub const DEFAULT: f32 = 0.7;

    pub fn new(value: f32) -> Self {
        if value.is_nan() {
            Self(0.0)
        } else {
            Self(value.clamp(0.0, 1.0))
        }
    }

    pub fn value(self) -> f32 {
        self.0
    }

    pub fn category(self) -> ConfidenceCategory {
        if self.0 > 0.7 {
            ConfidenceCategory::High
        } else if self.0 > 0.4 {
            ConfidenceCategory::Medium
        } else {
            ConfidenceCategory::Low
        }
    }
}

impl Default for Confidence {
    fn default() -> Self {
        Self(Self::DEFAULT)
    }
}

impl ConfidenceCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "High",
            Self::Medium => "Medium",
            Self::Low => "Low",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_and_categorises() {
        assert_eq!(Confidence::new(1.5).value(), 1.0);
        assert_eq!(Confidence::new(-1.0).value(), 0.0);
        assert_eq!(Confidence::new(f32::NAN).value(), 0.0);
        assert_eq!(Confidence::new(0.71).category(), ConfidenceCategory::High);
        assert_eq!(Confidence::new(0.7).category(), ConfidenceCategory::Medium);
        assert_eq!(Confidence::new(0.41).category(), ConfidenceCategory::Medium);
        assert_eq!(Confidence::new(0.4).category(), ConfidenceCategory::Low);
    }
}
