//! Number formatting shared by every table and report.

/// `fraction` (0.8433) as a percentage with `decimals` decimals (`"84.33%"`), or `"-"`
/// when there is no value or it is not finite.
///
/// ```
/// use digitlab_report::format::pct;
/// assert_eq!(pct(Some(0.8433), 2), "84.33%");
/// assert_eq!(pct(Some(0.5), 1), "50.0%");
/// assert_eq!(pct(None, 2), "-");
/// ```
pub fn pct(fraction: Option<f64>, decimals: usize) -> String {
    match fraction.filter(|v| v.is_finite()) {
        Some(v) => format!("{:.decimals$}%", 100.0 * v),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        assert_eq!(pct(Some(1.0), 2), "100.00%");
        assert_eq!(pct(Some(0.0), 0), "0%");
        assert_eq!(pct(Some(f64::NAN), 2), "-");
    }
}
