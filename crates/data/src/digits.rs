//! The embedded default dataset: UCI optical digits (1,797 8x8 images), so every
//! command works with no download at all. See `assets/ATTRIBUTION.md` (CC BY 4.0).
use crate::dataset::{Dataset, ImageShape};
use crate::error::{DataError, Result};
use std::io::Read;
use std::path::Path;

const DIGITS_CSV_GZ: &[u8] = include_bytes!("../assets/digits.csv.gz");
/// Number of images in the embedded set.
pub const DIGITS_LEN: usize = 1797;
/// Seed of the fixed stratified train/test split of the embedded set.
pub const DIGITS_SPLIT_SEED: u64 = 0;
/// Fraction of the embedded set held out as its test split.
pub const DIGITS_TEST_FRACTION: f64 = 0.2;
/// Attribution that must travel with the embedded data.
pub const DIGITS_ATTRIBUTION: &str =
    "UCI Optical Recognition of Handwritten Digits, E. Alpaydin and C. Kaynak (1998), CC BY 4.0";

/// All 1,797 embedded images (1x8x8, pixel values 0..16 scaled to 0..255).
pub fn load_digits() -> Result<Dataset> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|e| DataError::format("<embedded digits.csv.gz>", e.to_string()))?;
    parse_digits_csv(&text, Path::new("<embedded digits.csv.gz>"))
}

/// The embedded set's fixed split: a stratified 80/20 (seed 0) as `(train, test)`.
/// The UCI file has no official split; this one is stable across versions.
pub fn load_digits_split() -> Result<(Dataset, Dataset)> {
    let all = load_digits()?;
    let (train, test) = all.split(DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED, true)?;
    Ok((train.with_name("digits/train"), test.with_name("digits/test")))
}

/// Parses rows of 64 values in 0..=16 followed by a label 0..=9.
pub fn parse_digits_csv(text: &str, path: &Path) -> Result<Dataset> {
    let mut images = Vec::with_capacity(DIGITS_LEN * 64);
    let mut labels = Vec::with_capacity(DIGITS_LEN);
    for (line_no, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let values: Vec<&str> = line.split(',').collect();
        if values.len() != 65 {
            return Err(DataError::format(
                path,
                format!(
                    "line {}: expected 65 comma-separated values, found {}",
                    line_no + 1,
                    values.len()
                ),
            ));
        }
        for (col, v) in values.iter().enumerate() {
            let x: f64 = v.trim().parse().map_err(|_| {
                DataError::format(
                    path,
                    format!("line {}, column {}: `{v}` is not a number", line_no + 1, col + 1),
                )
            })?;
            let max = if col == 64 { 9.0 } else { 16.0 };
            if !(0.0..=max).contains(&x) || x.fract() != 0.0 {
                return Err(DataError::format(
                    path,
                    format!(
                        "line {}, column {}: expected an integer in 0..={max}, found {x}",
                        line_no + 1,
                        col + 1
                    ),
                ));
            }
            if col == 64 {
                labels.push(x as u8);
            } else {
                images.push((x * 255.0 / 16.0).round() as u8);
            }
        }
    }
    let names = (0..10).map(|d| d.to_string()).collect();
    Dataset::new("digits", ImageShape::new(1, 8, 8), images, labels, names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_digits_load_with_known_facts() {
        let d = load_digits().unwrap();
        assert_eq!(d.len(), DIGITS_LEN);
        assert_eq!(d.shape(), ImageShape::new(1, 8, 8));
        // First rows of the UCI test set are a 0 and a 1; every class has 174..=183 images.
        assert_eq!(&d.labels()[..2], &[0, 1]);
        assert!(
            d.class_counts().iter().all(|&c| (174..=183).contains(&c)),
            "{:?}",
            d.class_counts()
        );
        assert_eq!(d.image(0)[2], (5.0f64 * 255.0 / 16.0).round() as u8);
        let (train, test) = load_digits_split().unwrap();
        assert_eq!(train.len() + test.len(), DIGITS_LEN);
        assert_eq!(test.len(), 359); // per-class round(0.2 * count)
    }

    #[test]
    fn bad_csv_is_reported_with_line_and_column() {
        let e = parse_digits_csv("1,2,3\n", Path::new("x.csv")).unwrap_err().to_string();
        assert!(e.contains("x.csv") && e.contains("line 1") && e.contains("65"), "{e}");
        let mut row = vec!["0"; 64];
        row.push("11");
        let e = parse_digits_csv(&row.join(","), Path::new("y.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("column 65") && e.contains("0..=9"), "{e}");
    }
}
