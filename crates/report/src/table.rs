//! A small titled table of strings, rendered as GitHub-flavoured Markdown or as
//! aligned plain text for the terminal.

/// A small table of results.
///
/// ```
/// use digitlab_report::Table;
/// let mut t = Table::new("Accuracy", &["model", "test"]);
/// t.push(vec!["mlp".into(), "97.1%".into()]);
/// assert!(t.to_markdown().contains("| mlp | 97.1% |"));
/// assert!(t.to_text().contains("mlp    97.1%"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// Escapes `|` inside a Markdown table cell.
pub fn markdown_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (must have one cell per header).
    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.headers.len(), "table `{}`: row width", self.title);
        self.rows.push(row);
    }

    /// GitHub-flavoured Markdown, with the title in bold above.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| markdown_cell(s);
        let mut out = format!("**{}**\n\n", self.title);
        out += &format!(
            "| {} |\n",
            self.headers.iter().map(|h| esc(h)).collect::<Vec<_>>().join(" | ")
        );
        out += &format!("|{}\n", "---|".repeat(self.headers.len()));
        for r in &self.rows {
            out += &format!("| {} |\n", r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | "));
        }
        out
    }

    /// Plain text with aligned columns, for the terminal.
    pub fn to_text(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut w: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(width(c));
                }
            }
        }
        let line = |cells: &[String]| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    format!(
                        "{c}{}",
                        " ".repeat(w.get(i).copied().unwrap_or(0).saturating_sub(width(c)))
                    )
                })
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = format!("{}\n", self.title);
        out += &line(&self.headers);
        out.push('\n');
        out += &w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>().join("  ");
        out.push('\n');
        for r in &self.rows {
            out += &line(r);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_in_both_forms() {
        let mut t = Table::new("T", &["a", "long header"]);
        t.push(vec!["1|2".into(), "x".into()]);
        let md = t.to_markdown();
        assert!(md.contains("| a | long header |") && md.contains("1\\|2"), "{md}");
        let txt = t.to_text();
        assert!(txt.contains("a    long header"), "{txt}");
    }
}
