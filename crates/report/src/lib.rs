//! # digitlab-report
//!
//! Everything digitlab writes for people to read, from plain data (numbers, strings,
//! confusion-matrix counts, pixel buffers): no candle, no training.
//!
//! - [`plots`]: PNG charts (line charts, confusion matrices, image grids, weight
//!   templates, bar charts, heat maps, reliability diagrams), text laid out with ab_glyph metrics;
//! - [`table`]: titled tables as Markdown or aligned terminal text;
//! - [`compare`]: the many-runs comparison (Markdown, CSV, bar chart);
//! - [`summary`]: [`RunSummary`], the `summary.json` every run writes;
//! - [`interpretation`]: most-confused pairs, top losses and calibration as data;
//! - [`html`]: Markdown to self-contained HTML (escaping, anchors, embedded PNGs);
//! - [`tensorboard`]: TensorBoard event files (scalars, PNG images, HParams);
//! - [`format`]: number formatting ([`format::pct`]);
//! - [`io`]: the one crash-safe write (temporary file, fsync, rename).
//!
//! ```
//! use digitlab_report::plots::{line_chart, Series};
//! let dir = tempfile::tempdir()?;
//! let loss = [(1.0, 0.9), (2.0, 0.5), (3.0, 0.3)];
//! let png = dir.path().join("loss.png");
//! line_chart(&png, "Loss", "epoch", "loss", &[Series { label: "train", points: &loss }])?;
//! assert!(png.is_file());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
pub mod compare;
pub mod format;
pub mod html;
pub mod interpretation;
pub mod io;
pub mod plots;
pub mod summary;
pub mod table;
pub mod tensorboard;

pub use summary::RunSummary;
pub use table::Table;
