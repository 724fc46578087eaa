//! PNG plots for training reports: learning curves, confusion matrices, image grids,
//! weight templates, bar charts and loss-landscape heat maps.
//!
//! Everything is rendered in memory with plotters' bitmap backend, encoded with the
//! `image` crate and written with [`crate::io::write_atomic`] (readers never see a
//! half-written plot). Missing parent directories are created.
//!
//! Text uses the DejaVu Sans font embedded in the binary (crate `dejavu`), so no system
//! fonts or fontconfig are needed.
//!
//! Non-finite numbers (NaN, ±inf) never panic: they are skipped in line charts and bar
//! charts, and drawn as grey "no value" cells in heat maps.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One named line of a [`line_chart`].
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// Legend text; an empty label gets no legend entry.
    pub label: &'a str,
    /// `(x, y)` points in drawing order; non-finite points are skipped (the line breaks there).
    pub points: &'a [(f64, f64)],
}

/// One image of an [`image_grid`].
#[derive(Debug, Clone)]
pub struct GridImage<'a> {
    /// CHW pixel values. Values in `[0, 1]` are used as is; if any value exceeds 1 the
    /// image is taken to be on the u8 scale `0..=255` and divided by 255. Values outside
    /// the range are clamped, NaN is drawn as 0.
    pub pixels: &'a [f32],
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Caption line drawn under the image, e.g. `"true 3 pred 6 (0.97)"`.
    pub caption: String,
}

/// Errors from the plotting functions; every message names the destination path.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot plot {}: no data", path.display())]
    NoData { path: PathBuf },
    #[error("cannot plot {}: {reason}", path.display())]
    InvalidInput { path: PathBuf, reason: String },
    #[error("cannot plot {}: failed to register the embedded DejaVu font", path.display())]
    Font { path: PathBuf },
    #[error("failed to draw {}: {message}", path.display())]
    Draw { path: PathBuf, message: String },
    #[error("failed to encode PNG {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("failed to write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

// ---------------------------------------------------------------------------------------
// Sizes, colours, fonts
// ---------------------------------------------------------------------------------------

/// Size of line and bar charts.
const CHART_SIZE: (u32, u32) = (800, 500);
/// Size of confusion-matrix plots.
const CONFUSION_SIZE: (u32, u32) = (760, 720);
/// Size of heat maps.
const HEATMAP_SIZE: (u32, u32) = (800, 600);
/// Largest width or height we are willing to allocate for grids.
const MAX_SIDE: u32 = 16_384;

const FAMILY: &str = "sans-serif";

const INK: RGBColor = RGBColor(33, 33, 33);
const MUTED: RGBColor = RGBColor(110, 110, 110);
const FRAME: RGBColor = RGBColor(170, 170, 170);
const NO_VALUE: RGBColor = RGBColor(190, 190, 190);

/// Matplotlib's "tab10" palette: distinct, colour-blind friendlier than pure RGB.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn palette(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Lines of the second, fourth, ... round through the palette are dashed so that more
/// than ten series stay distinguishable.
fn dashed(i: usize) -> bool {
    (i / PALETTE.len()) % 2 == 1
}

static FONT_INIT: Once = Once::new();
static FONT_OK: AtomicBool = AtomicBool::new(false);

/// Registers the embedded DejaVu Sans (regular and bold) as plotters' "sans-serif" family.
///
/// With the `ab_glyph` feature plotters has no access to system fonts; it keeps one
/// process-wide font table, and text drawing fails until a font is registered there. The
/// font bytes are `'static` (compiled into the binary), registration is idempotent and
/// the table is shared by every thread, so registering once per process (guarded by a
/// `Once`) is enough and cannot interfere with other users of plotters in the process:
/// they would register the same family for the same purpose.
fn ensure_fonts(path: &Path) -> Result<(), PlotError> {
    FONT_INIT.call_once(|| {
        let ok = plotters::style::register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FAMILY, FontStyle::Bold, dejavu::sans::bold()).is_ok();
        FONT_OK.store(ok, Ordering::Release);
    });
    if FONT_OK.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(PlotError::Font {
            path: path.to_path_buf(),
        })
    }
}

/// Piecewise-linear colour map through `stops` (positions ascending in `[0, 1]`).
fn lerp_stops(stops: &[(f64, [u8; 3])], t: f64) -> RGBColor {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    for w in stops.windows(2) {
        let (t0, c0) = w[0];
        let (t1, c1) = w[1];
        if t <= t1 {
            let f = if t1 > t0 { (t - t0) / (t1 - t0) } else { 0.0 };
            let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
            return RGBColor(mix(c0[0], c1[0]), mix(c0[1], c1[1]), mix(c0[2], c1[2]));
        }
    }
    let c = stops[stops.len() - 1].1;
    RGBColor(c[0], c[1], c[2])
}

/// Sequential white-to-dark-blue map (matplotlib "Blues"), `t` in `[0, 1]`.
fn blues(t: f64) -> RGBColor {
    lerp_stops(
        &[
            (0.0, [247, 251, 255]),
            (0.25, [198, 219, 239]),
            (0.5, [107, 174, 214]),
            (0.75, [33, 113, 181]),
            (1.0, [8, 48, 107]),
        ],
        t,
    )
}

/// Perceptually uniform "viridis" map, `t` in `[0, 1]`.
fn viridis(t: f64) -> RGBColor {
    lerp_stops(
        &[
            (0.0, [68, 1, 84]),
            (0.125, [71, 44, 122]),
            (0.25, [59, 81, 139]),
            (0.375, [44, 113, 142]),
            (0.5, [33, 144, 141]),
            (0.625, [39, 173, 129]),
            (0.75, [92, 200, 99]),
            (0.875, [170, 220, 50]),
            (1.0, [253, 231, 37]),
        ],
        t,
    )
}

/// Diverging map for `s` in `[-1, 1]`: blue for negative, white at 0, red for positive
/// (the inner part of ColorBrewer "RdBu").
fn diverging(s: f64) -> RGBColor {
    let s = if s.is_nan() { 0.0 } else { s.clamp(-1.0, 1.0) };
    lerp_stops(
        &[
            (0.0, [33, 102, 172]),
            (0.25, [146, 197, 222]),
            (0.5, [255, 255, 255]),
            (0.75, [244, 165, 130]),
            (1.0, [178, 24, 43]),
        ],
        (s + 1.0) / 2.0,
    )
}

/// Black or white, whichever reads better on `bg`.
fn text_on(bg: RGBColor) -> RGBColor {
    let l = 0.299 * bg.0 as f64 + 0.587 * bg.1 as f64 + 0.114 * bg.2 as f64;
    if l < 140.0 {
        WHITE
    } else {
        INK
    }
}

// ---------------------------------------------------------------------------------------
// Number formatting
// ---------------------------------------------------------------------------------------

/// Short human-readable number with about four significant digits (for value labels).
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    let a = v.abs();
    if a == 0.0 {
        return "0".to_string();
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.2e}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    trim_zeros(format!("{v:.decimals$}"))
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') && !s.contains('e') {
        let t = s.trim_end_matches('0').trim_end_matches('.');
        if t == "-0" {
            "0".to_string()
        } else {
            t.to_string()
        }
    } else {
        s
    }
}

/// "Nice" ticks (steps of 1, 2 or 5 times a power of ten) inside `[lo, hi]`, at most
/// about `target` of them; integer axes (epochs) never get fractional steps.
fn nice_ticks(lo: f64, hi: f64, target: usize, integer: bool) -> (Vec<f64>, f64) {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return (vec![lo], 1.0);
    }
    // The smallest 1-2-5 step that gives at most `target` intervals.
    let target = target.max(1) as f64;
    let mag = 10f64.powf((span / target).log10().floor());
    let mult = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| span / (m * mag) <= target * 1.1)
        .unwrap_or(10.0);
    let mut step = mag * mult;
    if integer {
        step = step.max(1.0).round();
    }
    let mut ticks = Vec::new();
    let mut k = (lo / step - 1e-9).ceil();
    while k * step <= hi + step * 1e-9 && ticks.len() <= 50 {
        // Snap so that 0.30000000000000004 prints as 0.3.
        ticks.push(k * step);
        k += 1.0;
    }
    (ticks, step)
}

/// Tick label with just enough decimals for the tick step.
fn tick_label(v: f64, step: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    let decimals = (-(step.log10() + 1e-9).floor()).max(0.0) as usize;
    if v.abs() >= 1e6 || decimals > 6 {
        return format!("{v:.2e}");
    }
    let s = format!("{v:.decimals$}");
    // Avoid "-0" / "-0.0".
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------
// Rendering infrastructure
// ---------------------------------------------------------------------------------------

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = Result<(), String>;

fn de<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn no_data(path: &Path) -> PlotError {
    PlotError::NoData {
        path: path.to_path_buf(),
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> PlotError {
    PlotError::InvalidInput {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn check_path(path: &Path) -> Result<(), PlotError> {
    match path.file_name() {
        Some(_) => Ok(()),
        None => Err(invalid(path, "the path has no file name")),
    }
}

fn check_size(path: &Path, (w, h): (u32, u32)) -> Result<(), PlotError> {
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(invalid(
            path,
            format!("the plot would be {w}x{h} pixels (each side must be 1..={MAX_SIDE})"),
        ));
    }
    Ok(())
}

/// Renders `size` pixels with `draw` on a white canvas and writes the PNG atomically.
fn render<F>(path: &Path, size: (u32, u32), draw: F) -> Result<(), PlotError>
where
    F: for<'a> FnOnce(&Area<'a>) -> DrawResult,
{
    check_path(path)?;
    check_size(path, size)?;
    ensure_fonts(path)?;
    let (w, h) = size;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        let drawn = root
            .fill(&WHITE)
            .map_err(de)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(de));
        drawn.map_err(|message| PlotError::Draw {
            path: path.to_path_buf(),
            message,
        })?;
    }
    write_png_atomically(path, buf, w, h)
}

/// Encodes the RGB buffer as PNG in memory, then writes it with [`crate::io::write_atomic`].
fn write_png_atomically(path: &Path, rgb: Vec<u8>, w: u32, h: u32) -> Result<(), PlotError> {
    let img = image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| PlotError::Draw {
        path: path.to_path_buf(),
        message: format!("pixel buffer does not match {w}x{h}"),
    })?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|source| PlotError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    crate::io::write_atomic(path, &png).map_err(|e| PlotError::Io {
        path: e.path,
        source: e.source,
    })
}

// ---------------------------------------------------------------------------------------
// Text helpers
// ---------------------------------------------------------------------------------------

fn font(size: f64, bold: bool) -> FontDesc<'static> {
    let style = if bold { FontStyle::Bold } else { FontStyle::Normal };
    FontDesc::new(FontFamily::SansSerif, size, style)
}

// plotters' ab_glyph renderer draws every glyph at the pen position without its
// left-side bearing (it drops the whole-pixel part of the glyph's bounding-box offset),
// so letters with a large bearing ('n', 'i', 'r', ...) collide with their left neighbour
// and strings look like "o ne", "fi ve". We therefore lay strings out ourselves from the
// font's own metrics (advance, side bearing and kerning, read by ab_glyph from the same
// font plotters draws with) and hand plotters one glyph at a time, shifted by the
// bearing it drops.

/// The embedded DejaVu Sans face used for text metrics.
fn face(bold: bool) -> Option<&'static FontRef<'static>> {
    static REGULAR: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    static BOLD: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    let (cell, bytes) = if bold {
        (&BOLD, dejavu::sans::bold())
    } else {
        (&REGULAR, dejavu::sans::regular())
    };
    cell.get_or_init(|| FontRef::try_from_slice(bytes).ok()).as_ref()
}

/// Per-glyph pixel offsets at which plotters must draw each character (alone) so the
/// string comes out correctly spaced, and the string's advance width. `size` is the
/// pixel height plotters uses (ascent - descent), which is ab_glyph's `PxScale`.
fn layout(font: &FontRef<'_>, s: &str, size: f64) -> (Vec<(char, i32)>, f64) {
    let scaled = font.as_scaled(PxScale::from(size as f32));
    let mut pen = 0.0f64;
    let mut prev: Option<GlyphId> = None;
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        let gid = font.glyph_id(c);
        if let Some(p) = prev {
            pen += scaled.kern(p, gid) as f64;
        }
        let bearing = scaled.h_side_bearing(gid) as f64;
        out.push((c, pen.round() as i32 + bearing.floor() as i32));
        pen += scaled.h_advance(gid) as f64;
        prev = Some(gid);
    }
    (out, pen)
}

fn text_width(area: &Area<'_>, s: &str, size: f64, bold: bool) -> Result<i32, String> {
    if s.is_empty() {
        return Ok(0);
    }
    if let Some(f) = face(bold) {
        return Ok(layout(f, s, size).1.ceil() as i32);
    }
    let style = font(size, bold).color(&INK);
    area.estimate_text_size(s, &style).map(|(w, _)| w as i32).map_err(de)
}

/// `s`, shortened with "…" if needed so that it is at most `max_w` pixels wide.
fn fit_text(area: &Area<'_>, s: &str, size: f64, bold: bool, max_w: i32) -> Result<String, String> {
    if text_width(area, s, size, bold)? <= max_w {
        return Ok(s.to_string());
    }
    let chars: Vec<char> = s.chars().collect();
    for keep in (0..chars.len()).rev() {
        let t: String = chars[..keep].iter().collect::<String>() + "…";
        if text_width(area, &t, size, bold)? <= max_w {
            return Ok(t);
        }
    }
    Ok("…".to_string())
}

/// Draws `s` starting at `start` (the pen position along the text; top-anchor position
/// across it), horizontally or reading bottom-to-top (`up`).
#[allow(clippy::too_many_arguments)]
fn draw_string(
    area: &Area<'_>,
    s: &str,
    start: (i32, i32),
    size: f64,
    bold: bool,
    color: RGBColor,
    up: bool,
) -> DrawResult {
    let mut style = font(size, bold).color(&color).pos(Pos::new(HPos::Left, VPos::Top));
    if up {
        style = style.transform(FontTransform::Rotate270);
    }
    let Some(f) = face(bold) else {
        // Fallback: plotters' own layout (slightly uneven spacing, see above).
        return area.draw_text(s, &style, start).map_err(de);
    };
    let mut buf = [0u8; 4];
    for (c, offset) in layout(f, s, size).0 {
        if c.is_whitespace() {
            continue;
        }
        let pos = if up {
            (start.0, start.1 - offset)
        } else {
            (start.0 + offset, start.1)
        };
        area.draw_text(c.encode_utf8(&mut buf), &style, pos).map_err(de)?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum VAlign {
    /// `y` is the top of capital letters / digits.
    Top,
    /// `y` is the vertical middle of capital letters / digits.
    Middle,
    /// `y` is the bottom of descenders.
    Bottom,
}

/// Offset along the text for a horizontal anchor.
fn h_offset(area: &Area<'_>, s: &str, size: f64, bold: bool, h: HPos) -> Result<i32, String> {
    Ok(match h {
        HPos::Left => 0,
        HPos::Center => text_width(area, s, size, bold)? / 2,
        HPos::Right => text_width(area, s, size, bold)?,
    })
}

/// Horizontal text with explicit vertical placement.
///
/// plotters' ab_glyph renderer puts the baseline `size / 2` below a top anchor;
/// DejaVu digits/capitals are about `0.63 * size` tall and descenders reach `0.2 * size`
/// below the baseline. The offsets below turn that into placements that look right.
#[allow(clippy::too_many_arguments)]
fn put_text(
    area: &Area<'_>,
    s: &str,
    (x, y): (i32, i32),
    size: f64,
    bold: bool,
    color: RGBColor,
    h: HPos,
    v: VAlign,
) -> DrawResult {
    if s.is_empty() {
        return Ok(());
    }
    let dy = match v {
        VAlign::Top => 0.15 * size,
        VAlign::Middle => -0.185 * size,
        VAlign::Bottom => -0.72 * size,
    };
    let dx = h_offset(area, s, size, bold, h)?;
    draw_string(area, s, (x - dx, y + dy.round() as i32), size, bold, color, false)
}

/// Vertical text reading bottom-to-top, its letters centred on column `x`.
/// `h` anchors along the text: `Center` centres it on `y`, `Right` ends it at `y`
/// (text hangs below `y`), `Left` starts it at `y` (text rises above `y`).
#[allow(clippy::too_many_arguments)]
fn put_text_up(
    area: &Area<'_>,
    s: &str,
    (x, y): (i32, i32),
    size: f64,
    bold: bool,
    color: RGBColor,
    h: HPos,
) -> DrawResult {
    if s.is_empty() {
        return Ok(());
    }
    let dy = h_offset(area, s, size, bold, h)?;
    draw_string(
        area,
        s,
        (x - (0.185 * size).round() as i32, y + dy),
        size,
        bold,
        color,
        true,
    )
}

/// Title centred at the top, shrunk until it fits. Returns the y below it.
fn draw_title(area: &Area<'_>, title: &str, width: i32) -> Result<i32, String> {
    let mut size = 22.0;
    while size > 12.0 && text_width(area, title, size, true)? > width - 24 {
        size -= 1.0;
    }
    put_text(area, title, (width / 2, 14), size, true, INK, HPos::Center, VAlign::Top)?;
    Ok(46)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Swatch {
    Line,
    Dashed,
    Box,
}

struct LegendItem {
    label: String,
    color: RGBColor,
    swatch: Swatch,
}

const LEGEND_FONT: f64 = 16.0;
const LEGEND_ROW: i32 = 24;

/// Splits the legend into centred rows no wider than `max_width`.
fn legend_rows(area: &Area<'_>, items: &[LegendItem], max_width: i32) -> Result<Vec<Vec<(usize, i32)>>, String> {
    let mut rows: Vec<Vec<(usize, i32)>> = Vec::new();
    let mut row_w = 0;
    for (i, item) in items.iter().enumerate() {
        let w = 28 + 6 + text_width(area, &item.label, LEGEND_FONT, false)?;
        let gap = if rows.last().is_some_and(|r| !r.is_empty()) {
            26
        } else {
            0
        };
        match rows.last_mut() {
            Some(row) if row_w + gap + w <= max_width => {
                row.push((i, w));
                row_w += gap + w;
            }
            _ => {
                rows.push(vec![(i, w)]);
                row_w = w;
            }
        }
    }
    Ok(rows)
}

/// Draws a horizontal (wrapped) legend starting at `y`; returns the y below it.
fn draw_legend(area: &Area<'_>, items: &[LegendItem], y: i32, width: i32) -> Result<i32, String> {
    let rows = legend_rows(area, items, width - 40)?;
    let mut y = y;
    for row in rows {
        let total: i32 = row.iter().map(|(_, w)| w).sum::<i32>() + 26 * (row.len() as i32 - 1);
        let mut x = (width - total) / 2;
        let cy = y + LEGEND_ROW / 2;
        for (i, w) in row {
            let item = &items[i];
            match item.swatch {
                Swatch::Line => {
                    area.draw(&PathElement::new(
                        vec![(x, cy), (x + 28, cy)],
                        item.color.stroke_width(3),
                    ))
                    .map_err(de)?;
                    area.draw(&Circle::new((x + 14, cy), 4, item.color.filled()))
                        .map_err(de)?;
                }
                Swatch::Dashed => {
                    for (a, b) in [(0, 8), (11, 17), (20, 28)] {
                        area.draw(&PathElement::new(
                            vec![(x + a, cy), (x + b, cy)],
                            item.color.stroke_width(3),
                        ))
                        .map_err(de)?;
                    }
                }
                Swatch::Box => {
                    area.draw(&Rectangle::new(
                        [(x + 7, cy - 7), (x + 21, cy + 7)],
                        item.color.filled(),
                    ))
                    .map_err(de)?;
                }
            }
            put_text(
                area,
                &item.label,
                (x + 34, cy),
                LEGEND_FONT,
                false,
                INK,
                HPos::Left,
                VAlign::Middle,
            )?;
            x += w + 26;
        }
        y += LEGEND_ROW;
    }
    Ok(y)
}

fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// A non-empty range around a single value.
fn widen_degenerate(v: f64, integer: bool) -> (f64, f64) {
    let d = if integer || v == 0.0 { 1.0 } else { v.abs() * 0.1 };
    (v - d, v + d)
}

// ---------------------------------------------------------------------------------------
// Axes (drawn by hand so tick labels use the same text layout as everything else)
// ---------------------------------------------------------------------------------------

const TICK_FONT: f64 = 15.0;
const AXIS_FONT: f64 = 17.0;
const GRID: RGBColor = RGBColor(228, 228, 228);
const AXIS_LINE: RGBColor = RGBColor(80, 80, 80);

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// One chart axis: tick positions, their labels and the axis title.
struct Axis {
    ticks: Vec<f64>,
    labels: Vec<String>,
    title: String,
}

impl Axis {
    fn new(lo: f64, hi: f64, target: usize, integer: bool, title: &str) -> Self {
        let (ticks, step) = nice_ticks(lo, hi, target, integer);
        let labels = ticks.iter().map(|&t| tick_label(t, step)).collect();
        Self {
            ticks,
            labels,
            title: title.to_string(),
        }
    }

    fn max_label_width(&self, area: &Area<'_>) -> Result<i32, String> {
        let mut w = 0;
        for l in &self.labels {
            w = w.max(text_width(area, l, TICK_FONT, false)?);
        }
        Ok(w)
    }

    /// Room needed left of the plot: tick marks, labels and the vertical title.
    fn y_area(&self, area: &Area<'_>) -> Result<i32, String> {
        let title = if self.title.is_empty() { 6 } else { 12 + 20 + 6 };
        Ok(5 + 6 + self.max_label_width(area)? + title)
    }

    /// Room needed below the plot: tick marks, labels and the title.
    fn x_area(&self) -> i32 {
        5 + 6 + 16 + if self.title.is_empty() { 8 } else { 14 + 20 + 6 }
    }
}

/// Pixel bounds (left, top, right, bottom) of the chart's plotting area.
fn plot_rect(chart: &Chart<'_, '_>) -> (i32, i32, i32, i32) {
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    (xr.start, yr.start, xr.end - 1, yr.end - 1)
}

/// Light grid lines at the ticks (draw before the data).
fn draw_grid(root: &Area<'_>, chart: &Chart<'_, '_>, x: Option<&Axis>, y: &Axis) -> DrawResult {
    let (l, t, r, b) = plot_rect(chart);
    let (x0, y0) = (chart.x_range().start, chart.y_range().start);
    for &v in &y.ticks {
        let py = chart.backend_coord(&(x0, v)).1;
        root.draw(&PathElement::new(vec![(l, py), (r, py)], GRID.stroke_width(1)))
            .map_err(de)?;
    }
    if let Some(x) = x {
        for &v in &x.ticks {
            let px = chart.backend_coord(&(v, y0)).0;
            root.draw(&PathElement::new(vec![(px, t), (px, b)], GRID.stroke_width(1)))
                .map_err(de)?;
        }
    }
    Ok(())
}

/// The frame of an x-y chart on `body` over `xs` × `ys`: margins, room for the
/// axes' labels (measured on `root`) and the grid lines.
fn xy_chart<'a, 'b>(
    root: &Area<'_>,
    body: &'a Area<'b>,
    x: &Axis,
    y: &Axis,
    xs: std::ops::Range<f64>,
    ys: std::ops::Range<f64>,
) -> Result<Chart<'a, 'b>, String> {
    let chart = ChartBuilder::on(body)
        .margin_left(12)
        .margin_right(30)
        .margin_top(8)
        .margin_bottom(6)
        .x_label_area_size(x.x_area())
        .y_label_area_size(y.y_area(root)?)
        .build_cartesian_2d(xs, ys)
        .map_err(de)?;
    draw_grid(root, &chart, Some(x), y)?;
    Ok(chart)
}

/// Left and bottom axis lines, tick marks, tick labels and axis titles (draw after the
/// data). Without `x` only the bottom line is drawn (category axes label themselves).
fn draw_axes(root: &Area<'_>, chart: &Chart<'_, '_>, x: Option<&Axis>, y: &Axis) -> DrawResult {
    let (l, t, r, b) = plot_rect(chart);
    let (x0, y0) = (chart.x_range().start, chart.y_range().start);
    let axis = AXIS_LINE.stroke_width(1);
    root.draw(&PathElement::new(vec![(l, t), (l, b), (r, b)], axis))
        .map_err(de)?;
    for (&v, label) in y.ticks.iter().zip(&y.labels) {
        let py = chart.backend_coord(&(x0, v)).1;
        root.draw(&PathElement::new(vec![(l - 5, py), (l, py)], axis))
            .map_err(de)?;
        put_text(
            root,
            label,
            (l - 9, py),
            TICK_FONT,
            false,
            INK,
            HPos::Right,
            VAlign::Middle,
        )?;
    }
    let label_w = y.max_label_width(root)?;
    put_text_up(
        root,
        &y.title,
        (l - 9 - label_w - 14 - 8, (t + b) / 2),
        AXIS_FONT,
        false,
        INK,
        HPos::Center,
    )?;
    if let Some(x) = x {
        for (&v, label) in x.ticks.iter().zip(&x.labels) {
            let px = chart.backend_coord(&(v, y0)).0;
            root.draw(&PathElement::new(vec![(px, b), (px, b + 5)], axis))
                .map_err(de)?;
            put_text(
                root,
                label,
                (px, b + 10),
                TICK_FONT,
                false,
                INK,
                HPos::Center,
                VAlign::Top,
            )?;
        }
        put_text(
            root,
            &x.title,
            ((l + r) / 2, b + 10 + 16 + 14),
            AXIS_FONT,
            false,
            INK,
            HPos::Center,
            VAlign::Top,
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Line chart
// ---------------------------------------------------------------------------------------

/// Line chart (e.g. loss vs epoch for train and val), 800x500.
///
/// The y range is fitted to the data with an 8% margin; a single point (or a constant
/// series) gets a sensible non-empty range. Non-finite points are skipped and break the
/// line. Points are marked with dots when a series is short. Series labels form a legend
/// under the title (outside the plot so it never hides data).
/// Errors with "no data" when there is no finite point at all.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<(), PlotError> {
    check_path(path)?;
    let finite = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (Some((xmin, xmax)), Some((ymin, ymax))) = (min_max(finite().map(|p| p.0)), min_max(finite().map(|p| p.1)))
    else {
        return Err(no_data(path));
    };
    let x_int = finite().all(|(x, _)| x.fract() == 0.0);
    let (x0, x1) = if xmax > xmin {
        // A little room so markers at the ends are not cut by the axes.
        let m = (xmax - xmin) * 0.02;
        (xmin - m, xmax + m)
    } else {
        widen_degenerate(xmin, x_int)
    };
    let (y0, y1) = if ymax > ymin {
        let m = (ymax - ymin) * 0.08;
        (ymin - m, ymax + m)
    } else {
        widen_degenerate(ymin, false)
    };
    if !(x1 - x0).is_finite() || !(y1 - y0).is_finite() {
        return Err(invalid(path, "data range is too large to plot"));
    }

    // Runs of consecutive finite points per series.
    let runs: Vec<Vec<Vec<(f64, f64)>>> = series
        .iter()
        .map(|s| {
            let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for &(x, y) in s.points {
                if x.is_finite() && y.is_finite() {
                    out.last_mut().expect("non-empty").push((x, y));
                } else if !out.last().expect("non-empty").is_empty() {
                    out.push(Vec::new());
                }
            }
            out.retain(|r| !r.is_empty());
            out
        })
        .collect();

    let legend: Vec<LegendItem> = series
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.label.is_empty())
        .map(|(i, s)| LegendItem {
            label: s.label.to_string(),
            color: palette(i),
            swatch: if dashed(i) { Swatch::Dashed } else { Swatch::Line },
        })
        .collect();

    render(path, CHART_SIZE, |root| {
        let width = CHART_SIZE.0 as i32;
        let mut top = draw_title(root, title, width)?;
        if !legend.is_empty() {
            top = draw_legend(root, &legend, top - 4, width)? + 2;
        }
        let (_, body) = root.split_vertically(top);
        let x_axis = Axis::new(x0, x1, 10, x_int, x_label);
        let y_axis = Axis::new(y0, y1, 7, false, y_label);
        let mut chart = xy_chart(root, &body, &x_axis, &y_axis, x0..x1, y0..y1)?;
        for (i, series_runs) in runs.iter().enumerate() {
            let color = palette(i);
            let n_points: usize = series_runs.iter().map(Vec::len).sum();
            for run in series_runs {
                if run.len() > 1 {
                    if dashed(i) {
                        chart
                            .draw_series(DashedLineSeries::new(run.iter().copied(), 8, 5, color.stroke_width(2)))
                            .map_err(de)?;
                    } else {
                        chart
                            .draw_series(LineSeries::new(run.iter().copied(), color.stroke_width(2)))
                            .map_err(de)?;
                    }
                }
                if run.len() == 1 || n_points <= 40 {
                    chart
                        .draw_series(run.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(de)?;
                }
            }
        }
        draw_axes(root, &chart, Some(&x_axis), &y_axis)
    })
}

// ---------------------------------------------------------------------------------------
// Confusion matrix
// ---------------------------------------------------------------------------------------

/// Confusion matrix heat map, 760x720: rows = true class, columns = predicted class,
/// counts written in the cells, colour = row-normalised value (fraction of the true
/// class), with a colour bar. `matrix` must be square with one row per class name.
pub fn confusion_matrix(
    path: &Path,
    title: &str,
    matrix: &[Vec<u64>],
    class_names: &[String],
) -> Result<(), PlotError> {
    check_path(path)?;
    let n = matrix.len();
    if n == 0 {
        return Err(no_data(path));
    }
    if class_names.len() != n {
        return Err(invalid(
            path,
            format!(
                "confusion matrix has {n} rows but {} class names were given",
                class_names.len()
            ),
        ));
    }
    if let Some((i, row)) = matrix.iter().enumerate().find(|(_, r)| r.len() != n) {
        return Err(invalid(
            path,
            format!(
                "confusion matrix row {i} has {} entries, expected {n} (the matrix must be square)",
                row.len()
            ),
        ));
    }
    let fractions: Vec<Vec<f64>> = matrix
        .iter()
        .map(|row| {
            let total: f64 = row.iter().map(|&c| c as f64).sum();
            row.iter()
                .map(|&c| if total > 0.0 { c as f64 / total } else { 0.0 })
                .collect()
        })
        .collect();

    render(path, CONFUSION_SIZE, |root| {
        let (width, height) = (CONFUSION_SIZE.0 as i32, CONFUSION_SIZE.1 as i32);
        let top = draw_title(root, title, width)? + 8;
        let name_size = 16.0;
        let axis_size = 16.0;
        let mut names = Vec::with_capacity(n);
        let mut name_w = 0;
        for name in class_names {
            let fitted = fit_text(root, name, name_size, false, 150)?;
            name_w = name_w.max(text_width(root, &fitted, name_size, false)?);
            names.push(fitted);
        }
        let left = 16 + 24 + name_w + 10; // axis title, names, gap
        let right = 110; // colour bar and its labels
        let avail_w = width - left - right;
        let cell_for = |bottom: i32| ((avail_w).min(height - top - bottom) / n as i32).max(1);
        let mut bottom = 8 + 22 + 10 + 30; // gap, names, gap, axis title
        let mut cell = cell_for(bottom);
        let rotate = name_w > cell - 4;
        if rotate {
            bottom = 8 + name_w + 10 + 30;
            cell = cell_for(bottom);
        }
        let grid = cell * n as i32;
        let gx = left + (avail_w - grid) / 2;
        let gy = top;

        // Cells.
        let mut count_size = (cell as f64 * 0.34).min(18.0);
        let widest = matrix.iter().flatten().copied().max().unwrap_or(0).to_string();
        while count_size >= 7.0 && text_width(root, &widest, count_size, false)? > cell - 6 {
            count_size -= 1.0;
        }
        for (i, row) in matrix.iter().enumerate() {
            for (j, &count) in row.iter().enumerate() {
                let x = gx + j as i32 * cell;
                let y = gy + i as i32 * cell;
                let bg = blues(fractions[i][j]);
                root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], bg.filled()))
                    .map_err(de)?;
                if count_size >= 7.0 {
                    put_text(
                        root,
                        &count.to_string(),
                        (x + cell / 2, y + cell / 2),
                        count_size,
                        i == j,
                        text_on(bg),
                        HPos::Center,
                        VAlign::Middle,
                    )?;
                }
            }
        }
        if cell >= 6 {
            // Thin white separators between cells.
            for k in 1..n as i32 {
                let p = k * cell;
                root.draw(&Rectangle::new([(gx + p, gy), (gx + p + 1, gy + grid)], WHITE.filled()))
                    .map_err(de)?;
                root.draw(&Rectangle::new([(gx, gy + p), (gx + grid, gy + p + 1)], WHITE.filled()))
                    .map_err(de)?;
            }
        }
        root.draw(&Rectangle::new(
            [(gx, gy), (gx + grid, gy + grid)],
            FRAME.stroke_width(1),
        ))
        .map_err(de)?;

        // Class names.
        let name_size = if cell < 16 {
            (cell as f64 * 0.9).max(6.0)
        } else {
            name_size
        };
        for (k, name) in names.iter().enumerate() {
            let c = k as i32 * cell + cell / 2;
            put_text(
                root,
                name,
                (gx - 8, gy + c),
                name_size,
                false,
                INK,
                HPos::Right,
                VAlign::Middle,
            )?;
            if rotate {
                put_text_up(root, name, (gx + c, gy + grid + 8), name_size, false, INK, HPos::Right)?;
            } else {
                put_text(
                    root,
                    name,
                    (gx + c, gy + grid + 8),
                    name_size,
                    false,
                    INK,
                    HPos::Center,
                    VAlign::Top,
                )?;
            }
        }
        let names_h = if rotate { name_w } else { 22 };
        put_text(
            root,
            "Predicted class",
            (gx + grid / 2, gy + grid + 8 + names_h + 10),
            axis_size,
            true,
            INK,
            HPos::Center,
            VAlign::Top,
        )?;
        put_text_up(
            root,
            "True class",
            (gx - 8 - name_w - 10 - 14, gy + grid / 2),
            axis_size,
            true,
            INK,
            HPos::Center,
        )?;

        // Colour bar (row-normalised fraction).
        let bx = gx + grid + 24;
        let bw = 18;
        for py in 0..grid.max(1) {
            let t = 1.0 - py as f64 / (grid.max(2) - 1) as f64;
            root.draw(&Rectangle::new(
                [(bx, gy + py), (bx + bw, gy + py + 1)],
                blues(t).filled(),
            ))
            .map_err(de)?;
        }
        root.draw(&Rectangle::new([(bx, gy), (bx + bw, gy + grid)], FRAME.stroke_width(1)))
            .map_err(de)?;
        for k in 0..=4 {
            let t = k as f64 / 4.0;
            let y = gy + ((1.0 - t) * grid as f64).round() as i32;
            root.draw(&PathElement::new(
                vec![(bx + bw, y), (bx + bw + 5, y)],
                INK.stroke_width(1),
            ))
            .map_err(de)?;
            put_text(
                root,
                &format!("{}%", (t * 100.0).round()),
                (bx + bw + 8, y),
                14.0,
                false,
                INK,
                HPos::Left,
                VAlign::Middle,
            )?;
        }
        put_text_up(
            root,
            "share of true class",
            (bx + bw + 64, gy + grid / 2),
            14.0,
            false,
            MUTED,
            HPos::Center,
        )?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Panels of small images (shared by image_grid and weight_templates)
// ---------------------------------------------------------------------------------------

/// Integer upscale factor so the largest side is about `target` pixels
/// (8x8 digits become blocks of 12 or 16 pixels, 28x28 become 3-5x).
fn upscale(height: usize, width: usize, target: usize, max_scale: usize) -> usize {
    let side = height.max(width).max(1);
    ((target as f64 / side as f64).round() as usize).clamp(1, max_scale)
}

/// Geometry of a grid of equally sized panels under a title.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PanelLayout {
    size: (u32, u32),
    cols: usize,
    rows: usize,
    /// Top-left corner of the first panel's picture.
    origin: (i32, i32),
    /// Distance between panel pictures.
    step: (i32, i32),
    /// Picture size in pixels after upscaling.
    pic: (i32, i32),
    scale: usize,
}

impl PanelLayout {
    fn pic_origin(&self, index: usize) -> (i32, i32) {
        let (r, c) = (index / self.cols, index % self.cols);
        (
            self.origin.0 + c as i32 * self.step.0,
            self.origin.1 + r as i32 * self.step.1,
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn panel_layout(
    count: usize,
    cols: usize,
    pic_h: usize,
    pic_w: usize,
    scale: usize,
    caption_w: i32,
    caption_h: i32,
    title_w: i32,
    footer_h: i32,
) -> PanelLayout {
    let cols = cols.clamp(1, count.max(1));
    let rows = count.div_ceil(cols);
    let pic = ((pic_w * scale) as i32, (pic_h * scale) as i32);
    let cell_w = pic.0.max(caption_w) + 18;
    let cell_h = pic.1 + 8 + caption_h + 14;
    let grid_w = cols as i32 * cell_w;
    let width = (grid_w + 32).max(title_w + 48).max(footer_h.min(1) * 420).max(240);
    let top = 54;
    let height = top + rows as i32 * cell_h + footer_h + 8;
    let x0 = (width - grid_w) / 2 + (cell_w - pic.0) / 2;
    PanelLayout {
        size: (width.max(1) as u32, height.max(1) as u32),
        cols,
        rows,
        origin: (x0, top),
        step: (cell_w, cell_h),
        pic,
        scale,
    }
}

/// Draws a `h x w` picture of solid `scale`-sized blocks with colours from `color_at(y, x)`.
fn draw_blocks(
    area: &Area<'_>,
    (ox, oy): (i32, i32),
    (h, w): (usize, usize),
    scale: usize,
    color_at: impl Fn(usize, usize) -> RGBColor,
) -> DrawResult {
    let s = scale as i32;
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (ox + x as i32 * s, oy + y as i32 * s);
            area.draw(&Rectangle::new([(px, py), (px + s, py + s)], color_at(y, x).filled()))
                .map_err(de)?;
        }
    }
    // Frame just outside the picture so dark or white borders stay visible.
    area.draw(&Rectangle::new(
        [(ox - 1, oy - 1), (ox + w as i32 * s, oy + h as i32 * s)],
        FRAME.stroke_width(1),
    ))
    .map_err(de)
}

// ---------------------------------------------------------------------------------------
// Image grid
// ---------------------------------------------------------------------------------------

const CAPTION_FONT: f64 = 15.0;

/// Grid of grayscale or RGB images with a caption under each, `cols` per row.
///
/// Small images are upscaled by an integer factor with nearest-neighbour blocks (8x8
/// digits are drawn 12x larger, 28x28 images 3x). Images of different sizes are allowed:
/// cells are sized for the largest, and smaller images are scaled up to fill them. The canvas size follows from the
/// number of images, `cols` and the captions.
pub fn image_grid(path: &Path, title: &str, images: &[GridImage], cols: usize) -> Result<(), PlotError> {
    check_path(path)?;
    if images.is_empty() {
        return Err(no_data(path));
    }
    if cols == 0 {
        return Err(invalid(path, "image grid needs at least one column (cols = 0)"));
    }
    for (i, im) in images.iter().enumerate() {
        if im.channels != 1 && im.channels != 3 {
            return Err(invalid(
                path,
                format!(
                    "image {i} has {} channels; only 1 (grayscale) or 3 (RGB) are supported",
                    im.channels
                ),
            ));
        }
        if im.height == 0 || im.width == 0 {
            return Err(invalid(
                path,
                format!("image {i} is empty ({}x{})", im.height, im.width),
            ));
        }
        let expected = im.channels.checked_mul(im.height).and_then(|v| v.checked_mul(im.width));
        if expected != Some(im.pixels.len()) {
            return Err(invalid(
                path,
                format!(
                    "image {i} has {} pixel values but channels*height*width = {}*{}*{} = {}",
                    im.pixels.len(),
                    im.channels,
                    im.height,
                    im.width,
                    expected.map_or_else(|| "overflow".to_string(), |e| e.to_string())
                ),
            ));
        }
        if im.height > MAX_SIDE as usize || im.width > MAX_SIDE as usize {
            return Err(invalid(
                path,
                format!("image {i} is too large ({}x{})", im.height, im.width),
            ));
        }
    }
    ensure_fonts(path)?;
    let layout = image_grid_layout(title, images, cols).map_err(|message| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    })?;
    check_size(path, layout.size)?;

    render(path, layout.size, |root| {
        let width = layout.size.0 as i32;
        draw_title(root, title, width)?;
        for (k, im) in images.iter().enumerate() {
            let (cx, cy) = layout.pic_origin(k);
            // Smaller images get their own (larger) integer scale and are centred.
            let scale = ((layout.pic.0 / im.width as i32).min(layout.pic.1 / im.height as i32)).max(1);
            let ox = cx + (layout.pic.0 - im.width as i32 * scale) / 2;
            let oy = cy + (layout.pic.1 - im.height as i32 * scale) / 2;
            let u8_scale = im.pixels.iter().any(|&v| v > 1.0);
            let norm = |v: f32| -> u8 {
                let v = if v.is_nan() { 0.0 } else { v };
                let v = if u8_scale { v / 255.0 } else { v };
                (v.clamp(0.0, 1.0) * 255.0).round() as u8
            };
            let plane = im.height * im.width;
            draw_blocks(root, (ox, oy), (im.height, im.width), scale as usize, |y, x| {
                let idx = y * im.width + x;
                if im.channels == 1 {
                    let g = norm(im.pixels[idx]);
                    RGBColor(g, g, g)
                } else {
                    RGBColor(
                        norm(im.pixels[idx]),
                        norm(im.pixels[plane + idx]),
                        norm(im.pixels[2 * plane + idx]),
                    )
                }
            })?;
            put_text(
                root,
                &im.caption,
                (cx + layout.pic.0 / 2, cy + layout.pic.1 + 8),
                CAPTION_FONT,
                false,
                INK,
                HPos::Center,
                VAlign::Top,
            )?;
        }
        Ok(())
    })
}

fn image_grid_layout(title: &str, images: &[GridImage], cols: usize) -> Result<PanelLayout, String> {
    let max_h = images.iter().map(|i| i.height).max().unwrap_or(1);
    let max_w = images.iter().map(|i| i.width).max().unwrap_or(1);
    let scale = upscale(max_h, max_w, 96, 16);
    let mut caption_w = 0;
    let mut title_w = 0;
    with_scratch_area(|area| {
        for im in images {
            caption_w = caption_w.max(text_width(area, &im.caption, CAPTION_FONT, false)?);
        }
        title_w = text_width(area, title, 22.0, true)?;
        Ok(())
    })?;
    Ok(panel_layout(
        images.len(),
        cols,
        max_h,
        max_w,
        scale,
        caption_w,
        18,
        title_w,
        0,
    ))
}

/// A tiny drawing area used only to measure text before the canvas size is known.
fn with_scratch_area<T>(f: impl for<'a> FnOnce(&Area<'a>) -> Result<T, String>) -> Result<T, String> {
    let mut buf = vec![255u8; 3];
    let area = BitMapBackend::with_buffer(&mut buf, (1, 1)).into_drawing_area();
    f(&area)
}

// ---------------------------------------------------------------------------------------
// Weight templates
// ---------------------------------------------------------------------------------------

/// Weight templates (e.g. the rows of a linear classifier reshaped to images): one panel
/// per class, drawn with a diverging colour map (blue negative, white 0, red positive)
/// on a symmetric range per panel (`±max|w|` of that panel, printed under the class
/// name). Up to 5 panels per row; a colour key sits at the bottom. Every template must
/// hold `height * width` weights.
pub fn weight_templates(
    path: &Path,
    title: &str,
    templates: &[(String, Vec<f32>)],
    height: usize,
    width: usize,
) -> Result<(), PlotError> {
    check_path(path)?;
    if templates.is_empty() {
        return Err(no_data(path));
    }
    if height == 0 || width == 0 {
        return Err(invalid(path, format!("template size {height}x{width} is empty")));
    }
    if height > MAX_SIDE as usize || width > MAX_SIDE as usize {
        return Err(invalid(path, format!("template size {height}x{width} is too large")));
    }
    for (name, w) in templates {
        if w.len() != height * width {
            return Err(invalid(
                path,
                format!(
                    "template '{name}' has {} weights, expected height*width = {height}*{width} = {}",
                    w.len(),
                    height * width
                ),
            ));
        }
    }
    ensure_fonts(path)?;
    let layout = weight_layout(title, templates, height, width).map_err(|message| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    })?;
    check_size(path, layout.size)?;

    render(path, layout.size, |root| {
        let (cw, ch) = (layout.size.0 as i32, layout.size.1 as i32);
        draw_title(root, title, cw)?;
        for (k, (name, w)) in templates.iter().enumerate() {
            let origin = layout.pic_origin(k);
            let m = w.iter().filter(|v| v.is_finite()).fold(0.0f32, |a, v| a.max(v.abs()));
            draw_blocks(root, origin, (height, width), layout.scale, |y, x| {
                let v = w[y * width + x];
                if !v.is_finite() {
                    NO_VALUE
                } else if m > 0.0 {
                    diverging((v / m) as f64)
                } else {
                    WHITE
                }
            })?;
            let cx = origin.0 + layout.pic.0 / 2;
            let cy = origin.1 + layout.pic.1 + 8;
            put_text(root, name, (cx, cy), 15.0, true, INK, HPos::Center, VAlign::Top)?;
            put_text(
                root,
                &format!("±{}", fmt_num(m as f64)),
                (cx, cy + 20),
                13.0,
                false,
                MUTED,
                HPos::Center,
                VAlign::Top,
            )?;
        }

        // Colour key.
        let key_w = 240;
        let kx = (cw - key_w) / 2;
        let ky = ch - WEIGHT_FOOTER + 10;
        for px in 0..key_w {
            let s = px as f64 / (key_w - 1) as f64 * 2.0 - 1.0;
            root.draw(&Rectangle::new(
                [(kx + px, ky), (kx + px + 1, ky + 14)],
                diverging(s).filled(),
            ))
            .map_err(de)?;
        }
        root.draw(&Rectangle::new(
            [(kx, ky), (kx + key_w, ky + 14)],
            FRAME.stroke_width(1),
        ))
        .map_err(de)?;
        let ty = ky + 20;
        put_text(root, "−max|w|", (kx, ty), 13.0, false, INK, HPos::Center, VAlign::Top)?;
        put_text(
            root,
            "0",
            (kx + key_w / 2, ty),
            13.0,
            false,
            INK,
            HPos::Center,
            VAlign::Top,
        )?;
        put_text(
            root,
            "+max|w|",
            (kx + key_w, ty),
            13.0,
            false,
            INK,
            HPos::Center,
            VAlign::Top,
        )?;
        put_text(
            root,
            "colour scale is symmetric per panel",
            (cw / 2, ty + 18),
            13.0,
            false,
            MUTED,
            HPos::Center,
            VAlign::Top,
        )?;
        Ok(())
    })
}

const WEIGHT_FOOTER: i32 = 70;

fn weight_layout(
    title: &str,
    templates: &[(String, Vec<f32>)],
    height: usize,
    width: usize,
) -> Result<PanelLayout, String> {
    let scale = upscale(height, width, 128, 20);
    let mut caption_w = 0;
    let mut title_w = 0;
    with_scratch_area(|area| {
        for (name, _) in templates {
            caption_w = caption_w.max(text_width(area, name, 15.0, true)?);
        }
        // "±0.1234" under the name.
        caption_w = caption_w.max(text_width(area, "±0.0000", 13.0, false)?);
        title_w = text_width(area, title, 22.0, true)?;
        Ok(())
    })?;
    let cols = templates.len().min(5);
    Ok(panel_layout(
        templates.len(),
        cols,
        height,
        width,
        scale,
        caption_w,
        36,
        title_w,
        WEIGHT_FOOTER,
    ))
}

// ---------------------------------------------------------------------------------------
// Bar chart
// ---------------------------------------------------------------------------------------

/// Grouped bar chart of named values, 800x500: one group per label, one bar per series
/// (e.g. "this run" and "reported in coursework"), each value printed above its bar.
/// Every series must have one value per label; non-finite values are left out.
/// Long labels are written vertically.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    labels: &[String],
    series: &[(&str, Vec<f64>)],
) -> Result<(), PlotError> {
    check_path(path)?;
    if labels.is_empty() || series.is_empty() {
        return Err(no_data(path));
    }
    if let Some((name, values)) = series.iter().find(|(_, v)| v.len() != labels.len()) {
        return Err(invalid(
            path,
            format!(
                "bar series '{name}' has {} values but there are {} labels",
                values.len(),
                labels.len()
            ),
        ));
    }
    let Some((vmin, vmax)) = min_max(series.iter().flat_map(|(_, v)| v.iter().copied())) else {
        return Err(no_data(path));
    };
    ensure_fonts(path)?;

    let n = labels.len();
    let k = series.len();
    let (width, height) = (CHART_SIZE.0 as i32, CHART_SIZE.1 as i32);
    let value_font = 14.0;
    let label_font = TICK_FONT;

    // Measure text to decide orientation and margins before building the chart.
    // Category labels longer than this (written vertically) are shortened with "…".
    let max_label_px = CHART_SIZE.1 as i32 * 2 / 5 - 16;
    let (labels, label_w, value_w) = with_scratch_area(|area| {
        let mut fitted = Vec::with_capacity(labels.len());
        let mut lw = 0;
        for l in labels {
            let f = fit_text(area, l, label_font, false, max_label_px)?;
            lw = lw.max(text_width(area, &f, label_font, false)?);
            fitted.push(f);
        }
        let mut vw = 0;
        for (_, values) in series {
            for &v in values.iter().filter(|v| v.is_finite()) {
                vw = vw.max(text_width(area, &fmt_num(v), value_font, false)?);
            }
        }
        Ok((fitted, lw, vw))
    })
    .map_err(|message| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    })?;

    let legend: Vec<LegendItem> = series
        .iter()
        .enumerate()
        .filter(|(_, (name, _))| !name.is_empty())
        .map(|(i, (name, _))| LegendItem {
            label: name.to_string(),
            color: palette(i),
            swatch: Swatch::Box,
        })
        .collect();

    // Rough plot width (the y tick labels are only known once the range is).
    let plot_w = (width - 12 - 30 - if y_label.is_empty() { 60 } else { 90 }).max(1);
    let group_px = plot_w as f64 / n as f64;
    let bar_px = group_px * 0.8 / k as f64;
    let rotate_labels = label_w as f64 > group_px - 6.0;
    let x_area = if rotate_labels { label_w + 16 } else { 34 };
    let vertical_values = value_w as f64 > bar_px + 8.0;

    render(path, CHART_SIZE, |root| {
        let mut top = draw_title(root, title, width)?;
        if !legend.is_empty() {
            top = draw_legend(root, &legend, top - 4, width)? + 2;
        }
        // Head-room for the value labels: a fraction of the plot height.
        let plot_h = (height - top - 8 - 10 - x_area).max(1) as f64;
        let label_px = if vertical_values { value_w as f64 + 10.0 } else { 22.0 };
        let frac = (label_px / plot_h).min(0.6);
        let lo0 = vmin.min(0.0);
        let hi0 = vmax.max(0.0);
        let span0 = if hi0 > lo0 { hi0 - lo0 } else { 1.0 };
        // Extend so that `frac` of the final span is free above the top (and below the bottom).
        let ext = span0 * frac / (1.0 - frac);
        let y1 = if hi0 > 0.0 || lo0 == 0.0 {
            hi0 + ext
        } else {
            hi0 + span0 * 0.05
        };
        let y0 = if lo0 < 0.0 { lo0 - ext } else { 0.0 };

        let (_, body) = root.split_vertically(top);
        let y_axis = Axis::new(y0, y1, 7, false, y_label);
        let mut chart = ChartBuilder::on(&body)
            .margin_left(12)
            .margin_right(30)
            .margin_top(8)
            .margin_bottom(10)
            .x_label_area_size(x_area)
            .y_label_area_size(y_axis.y_area(root)?)
            .build_cartesian_2d(-0.5..(n as f64 - 0.5), y0..y1)
            .map_err(de)?;
        draw_grid(root, &chart, None, &y_axis)?;

        let bar_w = 0.8 / k as f64;
        for (j, (_, values)) in series.iter().enumerate() {
            let color = palette(j);
            for (i, &v) in values.iter().enumerate() {
                if !v.is_finite() {
                    continue;
                }
                let xl = i as f64 - 0.4 + j as f64 * bar_w + bar_w * 0.06;
                let xr = i as f64 - 0.4 + (j + 1) as f64 * bar_w - bar_w * 0.06;
                chart
                    .draw_series(std::iter::once(Rectangle::new([(xl, 0.0), (xr, v)], color.filled())))
                    .map_err(de)?;
                let (px, py) = chart.backend_coord(&((xl + xr) / 2.0, v));
                let text = fmt_num(v);
                let up = v >= 0.0;
                if vertical_values {
                    let (y, h) = if up {
                        (py - 5, HPos::Left)
                    } else {
                        (py + 5, HPos::Right)
                    };
                    put_text_up(root, &text, (px, y), value_font, false, INK, h)?;
                } else {
                    let (y, va) = if up {
                        (py - 5, VAlign::Bottom)
                    } else {
                        (py + 5, VAlign::Top)
                    };
                    put_text(root, &text, (px, y), value_font, false, INK, HPos::Center, va)?;
                }
            }
        }
        if y0 < 0.0 {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(-0.5, 0.0), (n as f64 - 0.5, 0.0)],
                    INK.stroke_width(1),
                )))
                .map_err(de)?;
        }
        draw_axes(root, &chart, None, &y_axis)?;
        // Category labels under the axis.
        for (i, l) in labels.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64, y0));
            if rotate_labels {
                put_text_up(root, l, (px, py + 8), label_font, false, INK, HPos::Right)?;
            } else {
                put_text(root, l, (px, py + 9), label_font, false, INK, HPos::Center, VAlign::Top)?;
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Heat map
// ---------------------------------------------------------------------------------------

/// Heat map of a scalar function on a regular grid (e.g. a loss landscape over `(w, b)`),
/// 800x600, viridis colours with a colour bar, ten iso-value contour lines and the
/// grid minimum marked (and reported under the title).
///
/// `values[row][col]`: the rectangle `x_range x y_range` is divided into
/// `cols x rows` equal cells; column 0 is at `x_range.0` (left) and row 0 at
/// `y_range.0` (bottom). Non-finite values are drawn grey.
pub fn heatmap(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_range: (f64, f64),
    y_range: (f64, f64),
    values: &[Vec<f64>],
) -> Result<(), PlotError> {
    check_path(path)?;
    let rows = values.len();
    if rows == 0 || values[0].is_empty() {
        return Err(no_data(path));
    }
    let cols = values[0].len();
    if let Some((i, r)) = values.iter().enumerate().find(|(_, r)| r.len() != cols) {
        return Err(invalid(
            path,
            format!(
                "heat map row {i} has {} values but row 0 has {cols} (rows must be equally long)",
                r.len()
            ),
        ));
    }
    for (name, (lo, hi)) in [("x", x_range), ("y", y_range)] {
        if !(lo.is_finite() && hi.is_finite() && lo < hi && (hi - lo).is_finite()) {
            return Err(invalid(
                path,
                format!("{name} range ({lo}, {hi}) must be finite and increasing"),
            ));
        }
    }
    let Some((vmin, vmax)) = min_max(values.iter().flatten().copied()) else {
        return Err(no_data(path));
    };
    let (mut best_r, mut best_c) = (0, 0);
    for (r, row) in values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            if v == vmin {
                (best_r, best_c) = (r, c);
            }
        }
    }
    let (x0, x1) = x_range;
    let (y0, y1) = y_range;
    let dx = (x1 - x0) / cols as f64;
    let dy = (y1 - y0) / rows as f64;
    let t_of = |v: f64| {
        if vmax > vmin {
            (v - vmin) / (vmax - vmin)
        } else {
            0.5
        }
    };
    let min_x = x0 + (best_c as f64 + 0.5) * dx;
    let min_y = y0 + (best_r as f64 + 0.5) * dy;

    render(path, HEATMAP_SIZE, |root| {
        let width = HEATMAP_SIZE.0 as i32;
        let top = draw_title(root, title, width)?;
        let xn = if x_label.is_empty() { "x" } else { x_label };
        let yn = if y_label.is_empty() { "y" } else { y_label };
        put_text(
            root,
            &format!(
                "minimum {} at {xn} = {}, {yn} = {}",
                fmt_num(vmin),
                fmt_num(min_x),
                fmt_num(min_y)
            ),
            (width / 2, top - 6),
            15.0,
            false,
            MUTED,
            HPos::Center,
            VAlign::Top,
        )?;
        let top = top + 18;
        let (_, body) = root.split_vertically(top);
        let (main, _bar_area) = body.split_horizontally(width - 120);
        let x_axis = Axis::new(x0, x1, 8, false, x_label);
        let y_axis = Axis::new(y0, y1, 7, false, y_label);
        let mut chart = ChartBuilder::on(&main)
            .margin_left(12)
            .margin_right(16)
            .margin_top(8)
            .margin_bottom(6)
            .x_label_area_size(x_axis.x_area())
            .y_label_area_size(y_axis.y_area(root)?)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(de)?;

        // Cells, in data coordinates (row 0 at the bottom).
        chart
            .draw_series(values.iter().enumerate().flat_map(|(r, row)| {
                row.iter().enumerate().map(move |(c, &v)| {
                    let color = if v.is_finite() { viridis(t_of(v)) } else { NO_VALUE };
                    let xa = x0 + c as f64 * dx;
                    let ya = y0 + r as f64 * dy;
                    Rectangle::new([(xa, ya + dy), (xa + dx, ya)], color.filled())
                })
            }))
            .map_err(de)?;

        // Contours through cell centres.
        if vmax > vmin && rows >= 2 && cols >= 2 {
            let levels: Vec<f64> = (1..=10).map(|k| vmin + (vmax - vmin) * k as f64 / 11.0).collect();
            let centre = |r: usize, c: usize| (x0 + (c as f64 + 0.5) * dx, y0 + (r as f64 + 0.5) * dy);
            for level in levels {
                // Opaque, lightened map colour: translucent lines would darken where
                // neighbouring segments overlap and look dotted.
                let c = viridis(t_of(level));
                let light = |v: u8| (v as f64 + (255.0 - v as f64) * 0.6).round() as u8;
                let style = RGBColor(light(c.0), light(c.1), light(c.2)).stroke_width(1);
                let segments = contour_segments(values, &[level], centre);
                chart
                    .draw_series(segments.into_iter().map(|(a, b)| PathElement::new(vec![a, b], style)))
                    .map_err(de)?;
            }
        }

        // Minimum marker.
        chart
            .draw_series([
                Circle::new((min_x, min_y), 6, WHITE.filled()),
                Circle::new((min_x, min_y), 6, INK.stroke_width(2)),
            ])
            .map_err(de)?;
        root.draw(&Rectangle::new(
            {
                let (l, t, r, b) = plot_rect(&chart);
                [(l, t), (r, b)]
            },
            AXIS_LINE.stroke_width(1),
        ))
        .map_err(de)?;
        draw_axes(root, &chart, Some(&x_axis), &y_axis)?;

        // Colour bar aligned with the plotting area.
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let bx = xr.end + 30;
        let bw = 18;
        let (by0, by1) = (yr.start, yr.end - 1);
        let bh = (by1 - by0).max(1);
        for py in by0..=by1 {
            let t = 1.0 - (py - by0) as f64 / bh as f64;
            root.draw(&Rectangle::new([(bx, py), (bx + bw, py + 1)], viridis(t).filled()))
                .map_err(de)?;
        }
        root.draw(&Rectangle::new([(bx, by0), (bx + bw, by1 + 1)], FRAME.stroke_width(1)))
            .map_err(de)?;
        let bar_ticks: Vec<(f64, String)> = if vmax > vmin {
            let (ticks, step) = nice_ticks(vmin, vmax, 7, false);
            if ticks.len() >= 2 {
                ticks.into_iter().map(|t| (t, tick_label(t, step))).collect()
            } else {
                vec![(vmin, fmt_num(vmin)), (vmax, fmt_num(vmax))]
            }
        } else {
            vec![(vmin, fmt_num(vmin))]
        };
        for (v, label) in bar_ticks {
            let t = if vmax > vmin { t_of(v) } else { 0.5 };
            let y = by0 + ((1.0 - t) * bh as f64).round() as i32;
            root.draw(&PathElement::new(
                vec![(bx + bw, y), (bx + bw + 5, y)],
                INK.stroke_width(1),
            ))
            .map_err(de)?;
            put_text(
                root,
                &label,
                (bx + bw + 8, y),
                TICK_FONT,
                false,
                INK,
                HPos::Left,
                VAlign::Middle,
            )?;
        }
        Ok(())
    })
}

/// Marching squares over the grid of cell centres: line segments where the field
/// crosses each level. Cells with a non-finite corner are skipped.
fn contour_segments(
    values: &[Vec<f64>],
    levels: &[f64],
    centre: impl Fn(usize, usize) -> (f64, f64),
) -> Vec<((f64, f64), (f64, f64))> {
    let mut out = Vec::new();
    let rows = values.len();
    let cols = values.first().map_or(0, Vec::len);
    for r in 0..rows.saturating_sub(1) {
        for c in 0..cols.saturating_sub(1) {
            // Corners counter-clockwise: (r,c), (r,c+1), (r+1,c+1), (r+1,c).
            let corners = [(r, c), (r, c + 1), (r + 1, c + 1), (r + 1, c)];
            let v: Vec<f64> = corners.iter().map(|&(i, j)| values[i][j]).collect();
            if v.iter().any(|x| !x.is_finite()) {
                continue;
            }
            for &level in levels {
                let mut pts = Vec::with_capacity(4);
                for e in 0..4 {
                    let (a, b) = (e, (e + 1) % 4);
                    let (va, vb) = (v[a], v[b]);
                    if (va < level) != (vb < level) {
                        let t = (level - va) / (vb - va);
                        let pa = centre(corners[a].0, corners[a].1);
                        let pb = centre(corners[b].0, corners[b].1);
                        pts.push((pa.0 + (pb.0 - pa.0) * t, pa.1 + (pb.1 - pa.1) * t));
                    }
                }
                match pts.len() {
                    2 => out.push((pts[0], pts[1])),
                    4 => {
                        // Saddle: resolve with the centre value.
                        let mid = v.iter().sum::<f64>() / 4.0;
                        if (mid < level) == (v[0] < level) {
                            out.push((pts[0], pts[1]));
                            out.push((pts[2], pts[3]));
                        } else {
                            out.push((pts[0], pts[3]));
                            out.push((pts[1], pts[2]));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// Reliability diagram
// ---------------------------------------------------------------------------------------

/// Reliability diagram, 800x500: per confidence bin, a bar of the accuracy of its
/// images, the gap to the bin's mean confidence shaded red, and the diagonal of
/// perfect calibration. The title should carry the ECE. Empty bins draw nothing;
/// errors with "no data" when every bin is empty.
pub fn reliability_diagram(
    path: &Path,
    title: &str,
    calibration: &crate::interpretation::Calibration,
) -> Result<(), PlotError> {
    check_path(path)?;
    let bins: Vec<_> = calibration
        .bins
        .iter()
        .filter(|b| {
            b.count > 0
                && [b.lower, b.upper, b.accuracy, b.confidence]
                    .iter()
                    .all(|v| v.is_finite())
        })
        .collect();
    if bins.is_empty() {
        return Err(no_data(path));
    }
    let legend = [
        LegendItem {
            label: "accuracy of the bin".into(),
            color: palette(0),
            swatch: Swatch::Box,
        },
        LegendItem {
            label: "gap to mean confidence".into(),
            color: palette(3),
            swatch: Swatch::Box,
        },
        LegendItem {
            label: "perfect calibration".into(),
            color: MUTED,
            swatch: Swatch::Dashed,
        },
    ];
    render(path, CHART_SIZE, |root| {
        let width = CHART_SIZE.0 as i32;
        let top = draw_title(root, title, width)?;
        let top = draw_legend(root, &legend, top - 4, width)? + 2;
        let (_, body) = root.split_vertically(top);
        let x_axis = Axis::new(0.0, 1.0, 10, false, "confidence (probability of the predicted class)");
        let y_axis = Axis::new(0.0, 1.0, 5, false, "accuracy");
        let mut chart = xy_chart(root, &body, &x_axis, &y_axis, 0.0..1.0, 0.0..1.0)?;
        for b in &bins {
            let (acc, conf) = (b.accuracy.clamp(0.0, 1.0), b.confidence.clamp(0.0, 1.0));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(b.lower, 0.0), (b.upper, acc)],
                    palette(0).mix(0.75).filled(),
                )))
                .map_err(de)?;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(b.lower, acc), (b.upper, conf)],
                    palette(3).mix(0.35).filled(),
                )))
                .map_err(de)?;
        }
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                8,
                5,
                MUTED.stroke_width(2),
            ))
            .map_err(de)?;
        draw_axes(root, &chart, Some(&x_axis), &y_axis)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::fs;

    fn load(path: &Path) -> image::RgbImage {
        assert!(path.exists(), "{} was not written", path.display());
        image::open(path).expect("PNG decodes").to_rgb8()
    }

    /// Number of distinct colours; a real plot has many (text anti-aliasing, lines, fills).
    fn distinct_colours(img: &image::RgbImage) -> usize {
        img.pixels().map(|p| p.0).collect::<HashSet<_>>().len()
    }

    fn assert_plot(path: &Path, size: (u32, u32)) -> image::RgbImage {
        let img = load(path);
        assert_eq!(img.dimensions(), size, "{}", path.display());
        let n = distinct_colours(&img);
        assert!(n > 20, "{} looks flat: only {n} distinct colours", path.display());
        // The background is white.
        assert_eq!(img.get_pixel(1, 1).0, [255, 255, 255]);
        // No temp files left behind.
        let dir = path.parent().unwrap();
        let leftovers: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
        img
    }

    fn digit_names() -> Vec<String> {
        (0..10).map(|d| d.to_string()).collect()
    }

    fn curve(n: usize, scale: f64, offset: f64) -> Vec<(f64, f64)> {
        (1..=n)
            .map(|e| (e as f64, offset + scale / (e as f64).sqrt()))
            .collect()
    }

    #[test]
    fn line_chart_writes_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let train = curve(20, 2.0, 0.05);
        let val = curve(20, 2.2, 0.15);
        line_chart(
            &path,
            "Loss",
            "epoch",
            "cross-entropy",
            &[
                Series {
                    label: "train",
                    points: &train,
                },
                Series {
                    label: "val",
                    points: &val,
                },
            ],
        )
        .unwrap();
        let img = assert_plot(&path, CHART_SIZE);
        // Both series colours appear.
        let has = |c: RGBColor| img.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(palette(0)) && has(palette(1)));
    }

    #[test]
    fn line_chart_single_point_and_nan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.png");
        line_chart(
            &path,
            "One point",
            "epoch",
            "loss",
            &[Series {
                label: "train",
                points: &[(1.0, 0.5)],
            }],
        )
        .unwrap();
        assert_plot(&path, CHART_SIZE);

        let path = dir.path().join("nan.png");
        let pts = [
            (1.0, 1.0),
            (2.0, f64::NAN),
            (3.0, 0.5),
            (4.0, f64::INFINITY),
            (5.0, 0.25),
        ];
        line_chart(
            &path,
            "With gaps",
            "epoch",
            "loss",
            &[Series {
                label: "",
                points: &pts,
            }],
        )
        .unwrap();
        assert_plot(&path, CHART_SIZE);
    }

    #[test]
    fn line_chart_no_data_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        let err = line_chart(&path, "t", "x", "y", &[]).unwrap_err();
        assert!(matches!(err, PlotError::NoData { .. }));
        let msg = err.to_string();
        assert!(msg.contains("no data") && msg.contains("empty.png"), "{msg}");
        let err = line_chart(
            &path,
            "t",
            "x",
            "y",
            &[Series {
                label: "a",
                points: &[],
            }],
        )
        .unwrap_err();
        assert!(err.to_string().contains("no data"));
        let err = line_chart(
            &path,
            "t",
            "x",
            "y",
            &[Series {
                label: "a",
                points: &[(f64::NAN, 1.0)],
            }],
        )
        .unwrap_err();
        assert!(err.to_string().contains("no data"));
        assert!(!path.exists());
    }

    #[test]
    fn confusion_matrix_writes_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cm.png");
        let m: Vec<Vec<u64>> = (0..10)
            .map(|i| {
                (0..10)
                    .map(|j| {
                        if i == j {
                            170 + i as u64
                        } else {
                            ((i * 7 + j * 3) % 5) as u64
                        }
                    })
                    .collect()
            })
            .collect();
        confusion_matrix(&path, "Confusion matrix", &m, &digit_names()).unwrap();
        assert_plot(&path, CONFUSION_SIZE);
    }

    #[test]
    fn confusion_matrix_size_mismatch_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cm.png");
        let m = vec![vec![1, 2], vec![3, 4]];
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let err = confusion_matrix(&path, "t", &m, &names).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("2 rows") && msg.contains("3 class names") && msg.contains("cm.png"),
            "{msg}"
        );
        let ragged = vec![vec![1, 2], vec![3]];
        let err = confusion_matrix(&path, "t", &ragged, &names[..2]).unwrap_err();
        assert!(err.to_string().contains("square"), "{err}");
        let err = confusion_matrix(&path, "t", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("no data"));
        assert!(!path.exists());
    }

    fn digit_pixels(seed: usize) -> Vec<f32> {
        (0..64).map(|i| ((i * 7 + seed * 13) % 17) as f32 / 16.0).collect()
    }

    #[test]
    fn image_grid_writes_png_and_upscales() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let pix: Vec<Vec<f32>> = (0..6).map(digit_pixels).collect();
        let rgb: Vec<f32> = (0..3 * 64).map(|i| if i < 64 { 1.0 } else { 0.0 }).collect(); // pure red
        let mut images: Vec<GridImage> = pix
            .iter()
            .enumerate()
            .map(|(k, p)| GridImage {
                pixels: p,
                channels: 1,
                height: 8,
                width: 8,
                caption: format!("true {k} pred {} (0.97)", (k + 3) % 10),
            })
            .collect();
        images.push(GridImage {
            pixels: &rgb,
            channels: 3,
            height: 8,
            width: 8,
            caption: "rgb".into(),
        });
        image_grid(&path, "Misclassified", &images, 4).unwrap();
        let layout = image_grid_layout("Misclassified", &images, 4).unwrap();
        assert_eq!((layout.rows, layout.cols), (2, 4));
        assert!(layout.scale >= 8, "8x8 images should be upscaled, got {}", layout.scale);
        let img = assert_plot(&path, layout.size);
        // Nearest-neighbour blocks: the whole first block of image 0 has pixel (0,0)'s value.
        let (ox, oy) = layout.pic_origin(0);
        let g = (digit_pixels(0)[0] * 255.0).round() as u8;
        for dy in 0..layout.scale as u32 {
            for dx in 0..layout.scale as u32 {
                assert_eq!(img.get_pixel(ox as u32 + dx, oy as u32 + dy).0, [g, g, g]);
            }
        }
        // The RGB image is red.
        let (rx, ry) = layout.pic_origin(6);
        assert_eq!(img.get_pixel(rx as u32 + 20, ry as u32 + 20).0, [255, 0, 0]);
    }

    #[test]
    fn image_grid_u8_scale_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u8.png");
        let p: Vec<f32> = (0..16).map(|i| (i * 16) as f32).collect();
        let images = [GridImage {
            pixels: &p,
            channels: 1,
            height: 4,
            width: 4,
            caption: "u8".into(),
        }];
        image_grid(&path, "u8", &images, 1).unwrap();
        let layout = image_grid_layout("u8", &images, 1).unwrap();
        let img = load(&path);
        let (ox, oy) = layout.pic_origin(0);
        let s = layout.scale as u32;
        // Pixel (3, 3) = 240 / 255.
        assert_eq!(img.get_pixel(ox as u32 + 3 * s, oy as u32 + 3 * s).0, [240, 240, 240]);
    }

    #[test]
    fn image_grid_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let p = vec![0.5f32; 63];
        let images = [GridImage {
            pixels: &p,
            channels: 1,
            height: 8,
            width: 8,
            caption: "x".into(),
        }];
        let err = image_grid(&path, "t", &images, 3).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("63") && msg.contains("64") && msg.contains("bad.png"),
            "{msg}"
        );
        let p = vec![0.5f32; 128];
        let images = [GridImage {
            pixels: &p,
            channels: 2,
            height: 8,
            width: 8,
            caption: "x".into(),
        }];
        assert!(image_grid(&path, "t", &images, 3)
            .unwrap_err()
            .to_string()
            .contains("channels"));
        let err = image_grid(&path, "t", &[], 3).unwrap_err();
        assert!(err.to_string().contains("no data"));
        let p = vec![0.5f32; 64];
        let images = [GridImage {
            pixels: &p,
            channels: 1,
            height: 8,
            width: 8,
            caption: "x".into(),
        }];
        assert!(image_grid(&path, "t", &images, 0)
            .unwrap_err()
            .to_string()
            .contains("column"));
        assert!(!path.exists());
    }

    fn templates() -> Vec<(String, Vec<f32>)> {
        (0..10)
            .map(|d| {
                let w = (0..64)
                    .map(|i| {
                        let (y, x) = ((i / 8) as f32, (i % 8) as f32);
                        ((x - 3.5) * (d as f32 + 1.0) * 0.1 + (y - 3.5) * 0.05).sin()
                    })
                    .collect();
                (format!("digit {d}"), w)
            })
            .collect()
    }

    #[test]
    fn weight_templates_diverging_colours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.png");
        // Left half negative, right half positive.
        let w: Vec<f32> = (0..64)
            .map(|i| if i % 8 < 4 { -0.5 } else { 0.25 + (i % 8) as f32 * 0.1 })
            .collect();
        let t = vec![("split".to_string(), w)];
        weight_templates(&path, "Weights", &t, 8, 8).unwrap();
        let layout = weight_layout("Weights", &t, 8, 8).unwrap();
        let img = assert_plot(&path, layout.size);
        let (ox, oy) = layout.pic_origin(0);
        let s = layout.scale as i32;
        let at = |x: i32, y: i32| {
            img.get_pixel((ox + x * s + s / 2) as u32, (oy + y * s + s / 2) as u32)
                .0
        };
        // Right half (positive): red.
        let [r, g, b] = at(7, 4);
        assert!(
            r > 150 && r as i32 - b as i32 > 80 && g < 100,
            "positive weight drawn as {:?}",
            [r, g, b]
        );
        // Left half (negative): blue.
        let [r, _, b] = at(1, 4);
        assert!(b as i32 - r as i32 > 60, "negative weight drawn as {:?}", at(1, 4));

        let path = dir.path().join("w10.png");
        let t = templates();
        weight_templates(&path, "Templates", &t, 8, 8).unwrap();
        let layout = weight_layout("Templates", &t, 8, 8).unwrap();
        assert_eq!((layout.rows, layout.cols), (2, 5));
        assert_plot(&path, layout.size);
    }

    #[test]
    fn weight_templates_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.png");
        let t = vec![("three".to_string(), vec![0.0f32; 63])];
        let msg = weight_templates(&path, "t", &t, 8, 8).unwrap_err().to_string();
        assert!(
            msg.contains("'three'") && msg.contains("64") && msg.contains("w.png"),
            "{msg}"
        );
        assert!(weight_templates(&path, "t", &[], 8, 8)
            .unwrap_err()
            .to_string()
            .contains("no data"));
        // All-zero weights are fine (drawn white).
        let t = vec![("zero".to_string(), vec![0.0f32; 64])];
        weight_templates(&path, "t", &t, 8, 8).unwrap();
    }

    #[test]
    fn bar_chart_writes_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.png");
        let labels: Vec<String> = ["logreg", "mlp", "cnn"].iter().map(|s| s.to_string()).collect();
        bar_chart(
            &path,
            "Test accuracy",
            "accuracy",
            &labels,
            &[
                ("this run", vec![0.912, 0.963, 0.987]),
                ("reported", vec![0.92, 0.96, f64::NAN]),
            ],
        )
        .unwrap();
        assert_plot(&path, CHART_SIZE);

        // Negative values and many long labels.
        let path = dir.path().join("bars2.png");
        let labels: Vec<String> = (0..12).map(|i| format!("experiment-{i}-long-name")).collect();
        let vals: Vec<f64> = (0..12).map(|i| (i as f64 - 4.0) * 1.37).collect();
        bar_chart(&path, "Deltas", "", &labels, &[("", vals)]).unwrap();
        assert_plot(&path, CHART_SIZE);
    }

    #[test]
    fn bar_chart_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.png");
        let labels = vec!["a".to_string(), "b".to_string()];
        let msg = bar_chart(&path, "t", "y", &labels, &[("s", vec![1.0])])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("'s'") && msg.contains("1 values") && msg.contains("2 labels"),
            "{msg}"
        );
        assert!(bar_chart(&path, "t", "y", &[], &[])
            .unwrap_err()
            .to_string()
            .contains("no data"));
        let msg = bar_chart(&path, "t", "y", &labels, &[("s", vec![f64::NAN, f64::NAN])]).unwrap_err();
        assert!(msg.to_string().contains("no data"));
    }

    fn landscape(rows: usize, cols: usize) -> Vec<Vec<f64>> {
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| {
                        let w = -2.0 + 4.0 * (c as f64 + 0.5) / cols as f64;
                        let b = -1.0 + 2.0 * (r as f64 + 0.5) / rows as f64;
                        (w - 0.7).powi(2) + 3.0 * (b + 0.3).powi(2) + 0.1
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn heatmap_writes_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("landscape.png");
        let v = landscape(40, 60);
        heatmap(&path, "Loss landscape", "w", "b", (-2.0, 2.0), (-1.0, 1.0), &v).unwrap();
        let img = assert_plot(&path, HEATMAP_SIZE);
        // Both ends of the colour map are present.
        let near = |c: RGBColor| {
            img.pixels().any(|p| {
                (p.0[0] as i32 - c.0 as i32).abs() < 12
                    && (p.0[1] as i32 - c.1 as i32).abs() < 12
                    && (p.0[2] as i32 - c.2 as i32).abs() < 12
            })
        };
        assert!(near(viridis(0.0)) && near(viridis(1.0)));

        // Constant and 1x1 inputs do not panic.
        let path = dir.path().join("flat.png");
        heatmap(&path, "flat", "w", "b", (0.0, 1.0), (0.0, 1.0), &[vec![2.0]]).unwrap();
        assert!(path.exists());
    }

    #[test]
    fn heatmap_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.png");
        assert!(heatmap(&path, "t", "x", "y", (0.0, 1.0), (0.0, 1.0), &[])
            .unwrap_err()
            .to_string()
            .contains("no data"));
        let ragged = vec![vec![1.0, 2.0], vec![3.0]];
        let msg = heatmap(&path, "t", "x", "y", (0.0, 1.0), (0.0, 1.0), &ragged)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("row 1") && msg.contains("h.png"), "{msg}");
        let ok = vec![vec![1.0, 2.0]];
        let msg = heatmap(&path, "t", "x", "y", (1.0, 1.0), (0.0, 1.0), &ok)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("x range"), "{msg}");
        let nan = vec![vec![f64::NAN]];
        assert!(heatmap(&path, "t", "x", "y", (0.0, 1.0), (0.0, 1.0), &nan)
            .unwrap_err()
            .to_string()
            .contains("no data"));
    }

    #[test]
    fn write_is_atomic_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("p.png");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"old").unwrap();
        line_chart(
            &path,
            "t",
            "x",
            "y",
            &[Series {
                label: "a",
                points: &[(0.0, 1.0), (1.0, 2.0)],
            }],
        )
        .unwrap();
        load(&path);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_num(0.9733), "0.9733");
        assert_eq!(fmt_num(97.33), "97.33");
        assert_eq!(fmt_num(97.30), "97.3");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1234.0), "1234");
        assert_eq!(fmt_num(-0.05), "-0.05");
        assert_eq!(fmt_num(f64::NAN), "n/a");
        let (t, step) = nice_ticks(1.0, 30.0, 10, true);
        assert_eq!(step, 5.0);
        assert_eq!(t, vec![5.0, 10.0, 15.0, 20.0, 25.0, 30.0]);
        let (t, step) = nice_ticks(1.0, 4.0, 10, true);
        assert_eq!((t.len(), step), (4, 1.0));
        let (t, step) = nice_ticks(0.3, 2.6, 7, false);
        assert_eq!(
            t.iter().map(|&v| tick_label(v, step)).collect::<Vec<_>>(),
            ["0.5", "1.0", "1.5", "2.0", "2.5"]
        );
        assert_eq!(tick_label(-1e-17, 0.2), "0.0");
        assert_eq!(tick_label(3.0, 1.0), "3");
    }

    /// Writes one of each plot to /tmp/plots-demo for a human to look at.
    #[test]
    #[ignore = "writes demo PNGs for visual review"]
    fn demo_pngs() {
        let out = Path::new("/tmp/plots-demo");
        let train = curve(30, 2.0, 0.05);
        let val: Vec<(f64, f64)> = curve(30, 2.2, 0.15)
            .into_iter()
            .map(|(x, y)| (x, y + 0.002 * x * x / 10.0))
            .collect();
        line_chart(
            &out.join("line.png"),
            "Logistic regression on 8x8 digits: loss",
            "epoch",
            "cross-entropy loss",
            &[
                Series {
                    label: "train",
                    points: &train,
                },
                Series {
                    label: "validation",
                    points: &val,
                },
            ],
        )
        .unwrap();
        let acc: Vec<(f64, f64)> = (1..=12).map(|e| (e as f64, 1.0 - 0.5 / (e as f64))).collect();
        line_chart(
            &out.join("line_acc.png"),
            "Accuracy",
            "epoch",
            "accuracy",
            &[Series {
                label: "val",
                points: &acc,
            }],
        )
        .unwrap();
        line_chart(
            &out.join("line_single.png"),
            "Single point",
            "epoch",
            "loss",
            &[Series {
                label: "train",
                points: &[(1.0, 0.42)],
            }],
        )
        .unwrap();

        let m: Vec<Vec<u64>> = (0..10)
            .map(|i| {
                (0..10)
                    .map(|j| {
                        if i == j {
                            160 + (i as u64 * 3)
                        } else {
                            ((i * 7 + j * 3) % 6) as u64
                        }
                    })
                    .collect()
            })
            .collect();
        confusion_matrix(
            &out.join("confusion.png"),
            "Confusion matrix (test set)",
            &m,
            &digit_names(),
        )
        .unwrap();
        let names: Vec<String> = [
            "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        confusion_matrix(
            &out.join("confusion_names.png"),
            "Confusion matrix, named classes",
            &m,
            &names,
        )
        .unwrap();

        let pix: Vec<Vec<f32>> = (0..10).map(digit_pixels).collect();
        let images: Vec<GridImage> = pix
            .iter()
            .enumerate()
            .map(|(k, p)| GridImage {
                pixels: p,
                channels: 1,
                height: 8,
                width: 8,
                caption: format!("true {k} pred {} ({:.2})", (k + 3) % 10, 0.5 + k as f64 * 0.05),
            })
            .collect();
        image_grid(&out.join("grid.png"), "Misclassified test digits", &images, 5).unwrap();
        let mnist: Vec<f32> = (0..784)
            .map(|i| {
                let (y, x) = ((i / 28) as f32 - 14.0, (i % 28) as f32 - 14.0);
                let r = (x * x + y * y).sqrt();
                if (r - 8.0).abs() < 2.5 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let rgb: Vec<f32> = (0..3 * 32 * 32)
            .map(|i| ((i % 32) as f32 / 31.0) * if i / 1024 == 1 { 0.3 } else { 1.0 })
            .collect();
        let mixed = vec![
            GridImage {
                pixels: &mnist,
                channels: 1,
                height: 28,
                width: 28,
                caption: "true 0 pred 0 (0.99)".into(),
            },
            GridImage {
                pixels: &rgb,
                channels: 3,
                height: 32,
                width: 32,
                caption: "rgb 32x32".into(),
            },
            GridImage {
                pixels: &pix[0],
                channels: 1,
                height: 8,
                width: 8,
                caption: "8x8".into(),
            },
        ];
        image_grid(&out.join("grid_mixed.png"), "Mixed sizes", &mixed, 3).unwrap();

        weight_templates(
            &out.join("weights.png"),
            "Logistic regression weight templates",
            &templates(),
            8,
            8,
        )
        .unwrap();

        let labels: Vec<String> = ["logreg", "mlp-64", "mlp-256", "cnn-small", "cnn-bn"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        bar_chart(
            &out.join("bars.png"),
            "Test accuracy per run",
            "accuracy",
            &labels,
            &[
                ("this run", vec![0.9611, 0.9744, 0.9789, 0.9861, 0.9889]),
                ("reported in coursework", vec![0.96, 0.97, 0.98, 0.985, f64::NAN]),
            ],
        )
        .unwrap();
        let mut labels: Vec<String> = (0..12).map(|i| format!("experiment-{i}-long-name")).collect();
        labels[3] = "an-extremely-long-experiment-name-that-cannot-fit".to_string();
        let vals: Vec<f64> = (0..12).map(|i| (i as f64 - 4.0) * 1.37).collect();
        bar_chart(
            &out.join("bars_neg.png"),
            "Improvement over baseline",
            "Δ accuracy (pp)",
            &labels,
            &[("", vals)],
        )
        .unwrap();

        // Edge cases worth a look.
        confusion_matrix(
            &out.join("confusion_2.png"),
            "Binary",
            &[vec![123_456, 789], vec![4_321, 98_765]],
            &["negative".to_string(), "positive".to_string()],
        )
        .unwrap();
        let m40: Vec<Vec<u64>> = (0..40)
            .map(|i| {
                (0..40)
                    .map(|j| if i == j { 90 } else { ((i + j) % 3) as u64 })
                    .collect()
            })
            .collect();
        let n40: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        confusion_matrix(&out.join("confusion_40.png"), "Forty classes", &m40, &n40).unwrap();
        let many: Vec<Vec<(f64, f64)>> = (0..12)
            .map(|k| curve(50, 1.0 + k as f64 * 0.2, 0.01 * k as f64))
            .collect();
        let names: Vec<String> = (0..12)
            .map(|k| {
                format!(
                    "run {k}: lr = {:.0e}",
                    10f64.powi(-(k / 2) - 1) * if k % 2 == 0 { 1.0 } else { 3.0 }
                )
            })
            .collect();
        let series: Vec<Series> = many
            .iter()
            .zip(&names)
            .map(|(p, n)| Series { label: n, points: p })
            .collect();
        line_chart(
            &out.join("line_many.png"),
            "Learning-rate sweep",
            "epoch",
            "validation loss",
            &series,
        )
        .unwrap();
        let mut holes = landscape(20, 30);
        holes[5][7] = f64::NAN;
        holes[12][20] = f64::INFINITY;
        heatmap(
            &out.join("heatmap_holes.png"),
            "With holes",
            "",
            "",
            (0.0, 3.0),
            (-1e-3, 1e-3),
            &holes,
        )
        .unwrap();
        heatmap(
            &out.join("heatmap.png"),
            "Loss landscape over (w, b)",
            "w",
            "b",
            (-2.0, 2.0),
            (-1.0, 1.0),
            &landscape(50, 80),
        )
        .unwrap();
    }

    #[test]
    fn reliability_diagram_writes_png_and_needs_a_bin() {
        use crate::interpretation::{Calibration, CalibrationBin};
        let dir = tempfile::tempdir().unwrap();
        let bin = |lower: f64, count: usize, confidence: f64, accuracy: f64| CalibrationBin {
            lower,
            upper: lower + 0.5,
            count,
            confidence,
            accuracy,
        };
        let c = Calibration {
            ece: 0.1,
            max_gap: 0.2,
            bins: vec![bin(0.0, 3, 0.4, 0.2), bin(0.5, 7, 0.9, 0.95)],
        };
        let p = dir.path().join("reliability.png");
        reliability_diagram(&p, "ECE 0.100", &c).unwrap();
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), CHART_SIZE);
        let empty = Calibration {
            bins: vec![bin(0.0, 0, 0.0, 0.0)],
            ..c
        };
        assert!(matches!(
            reliability_diagram(&dir.path().join("e.png"), "t", &empty),
            Err(PlotError::NoData { .. })
        ));
    }
}
