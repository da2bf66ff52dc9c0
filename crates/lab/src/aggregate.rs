//! A cell's rounds as one figure: the median, and the min-max that says how far the
//! rounds of the same run disagreed. Two cells differ on a figure only when their
//! min-max ranges do not overlap; otherwise they are indistinguishable here.
//!
//! With one round there is no spread to go by: two cells then differ when they are
//! [`TIE`] or more apart (a shared machine's run-to-run noise).

use serde::Serialize;

/// With a single round, differences smaller than this factor are called a tie.
pub const TIE: f64 = 1.15;

/// The median of readings, each `(value, is an upper bound)`; it is a bound when a
/// reading it is taken from is one.
pub fn median(mut xs: Vec<(f64, bool)>) -> Option<(f64, bool)> {
    xs.retain(|(v, _)| v.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = xs.len();
    let (a, b) = (xs[(n - 1) / 2], xs[n / 2]);
    Some(((a.0 + b.0) / 2.0, a.1 || b.1))
}

/// A figure over rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// The median.
    pub median: f64,
    /// The smallest reading.
    pub min: f64,
    /// The largest reading.
    pub max: f64,
    /// The readings.
    pub n: usize,
}

impl Stat {
    /// The median, min and max of `values` (non-finite ones left out).
    pub fn of(values: &[f64]) -> Option<Stat> {
        let xs: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let (median, _) = median(xs.iter().map(|&v| (v, false)).collect())?;
        Some(Stat {
            median,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: xs.len(),
        })
    }

    /// Whether the two min-max ranges share a point.
    pub fn overlaps(&self, other: &Stat) -> bool {
        self.min <= other.max && other.min <= self.max
    }

    /// Whether `self` and `other` differ by more than this run can resolve: their
    /// ranges are apart, or, when either has a single reading (no spread measured),
    /// their medians are [`TIE`] or more apart.
    pub fn apart(&self, other: &Stat) -> bool {
        if self.n < 2 || other.n < 2 {
            let (lo, hi) = if self.median < other.median {
                (self.median, other.median)
            } else {
                (other.median, self.median)
            };
            return lo <= 0.0 || hi / lo >= TIE;
        }
        !self.overlaps(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_values_and_bounds() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![(3.0, false)]), Some((3.0, false)));
        let five = vec![
            (8.4, false),
            (9.0, false),
            (2.0, false),
            (9.5, false),
            (6.4, false),
        ];
        assert_eq!(median(five), Some((8.4, false)));
        assert_eq!(
            median(vec![(1.0, false), (4.0, false), (2.0, true), (9.0, false)]),
            Some((3.0, true))
        );
        assert_eq!(
            median(vec![(1.0, true), (4.0, false), (5.0, false)]),
            Some((4.0, false))
        );
    }

    #[test]
    fn median_min_and_max() {
        let s = Stat::of(&[30.0, 10.0, 20.0]).unwrap();
        assert_eq!(
            s,
            Stat {
                median: 20.0,
                min: 10.0,
                max: 30.0,
                n: 3
            }
        );
        let even = Stat::of(&[4.0, 1.0, f64::NAN, 2.0, 9.0]).unwrap();
        assert_eq!(
            (even.median, even.min, even.max, even.n),
            (3.0, 1.0, 9.0, 4)
        );
        assert_eq!(Stat::of(&[]), None);
    }

    #[test]
    fn overlapping_ranges_are_indistinguishable() {
        let a = Stat::of(&[100.0, 110.0, 120.0]).unwrap();
        let b = Stat::of(&[115.0, 130.0, 140.0]).unwrap();
        let c = Stat::of(&[121.0, 125.0, 122.0]).unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a) && !a.apart(&b));
        // Apart, however small the gap: the spread was measured in the same run.
        assert!(!a.overlaps(&c) && a.apart(&c) && c.apart(&a));
        // Touching ranges share a point.
        let d = Stat::of(&[120.0, 125.0]).unwrap();
        assert!(a.overlaps(&d) && !a.apart(&d));
    }

    #[test]
    fn a_single_round_falls_back_to_the_tie_factor() {
        let one = |v: f64| Stat::of(&[v]).unwrap();
        assert!(!one(100.0).apart(&one(114.0)));
        assert!(one(100.0).apart(&one(116.0)));
        assert!(one(116.0).apart(&one(100.0)));
        // One round against three: no spread on one side, so the factor decides.
        let three = Stat::of(&[100.0, 101.0, 102.0]).unwrap();
        assert!(!three.apart(&one(105.0)));
    }
}
