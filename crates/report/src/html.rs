//! Markdown to self-contained HTML: escaping, GitHub-style heading anchors, PNGs
//! embedded as data URIs, and the page around them.
use base64::Engine;
use std::path::Path;

/// Escapes `&`, `<` and `>` for HTML text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes.
///
/// ```
/// assert_eq!(digitlab_report::html::slug("1. CE vs MSE"), "1-ce-vs-mse");
/// ```
pub fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Renders Markdown (tables and raw HTML included) with pulldown-cmark.
///
/// ```
/// let html = digitlab_report::html::markdown_to_html("| a |\n| --- |\n| 1 |\n");
/// assert!(html.contains("<td>1</td>"));
/// ```
pub fn markdown_to_html(md: &str) -> String {
    use pulldown_cmark::{html, Options, Parser};
    let mut out = String::new();
    html::push_html(&mut out, Parser::new_ext(md, Options::ENABLE_TABLES));
    out
}

/// A `<figure>` with the PNG at `path` embedded as a data URI, or `None` when the file
/// cannot be read.
pub fn embedded_figure(path: &Path, caption: &str) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    Some(format!(
        "<figure><img alt=\"{caption}\" src=\"data:image/png;base64,{b64}\"><figcaption>{caption}</figcaption></figure>"
    ))
}

const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}\
th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:90%}\
pre{background:#f6f6f6;padding:1em;overflow:auto}h2{border-bottom:1px solid #ddd;padding-top:1em}";

/// Records on <body> how many images failed to load (read by the browser test).
const CHECK_IMAGES: &str = "window.addEventListener('load',function(){var imgs=document.images,b=0;\
for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0)b++;}\
document.body.setAttribute('data-images',imgs.length);document.body.setAttribute('data-broken-images',b);});";

/// A complete HTML page around `body` (already HTML): the report's style sheet and a
/// script that records broken images on `<body>` (`data-images`, `data-broken-images`).
pub fn page(title: &str, body: &str) -> String {
    let title = escape(title);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>{CSS}</style></head>\n\
         <body>\n{body}\n<script>{CHECK_IMAGES}</script>\n</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_renders_tables_code_and_links() {
        let h = markdown_to_html(
            "# T\n\n| a | b |\n| --- | --- |\n| **x** | `y` |\n\n```toml\nk = 1 < 2\n```\npara [l](#x)\n",
        );
        assert!(h.contains("<h1>T</h1>"));
        assert!(h.contains("<th>a</th><th>b</th>"), "{h}");
        assert!(h.contains("<td><strong>x</strong></td><td><code>y</code></td>"), "{h}");
        assert!(h.contains("k = 1 &lt; 2"));
        assert!(h.contains("<a href=\"#x\">l</a>"));
        assert!(!h.contains("---"));
    }

    #[test]
    fn slugs_match_github_anchors() {
        assert_eq!(
            slug("1. CE vs MSE for logistic regression"),
            "1-ce-vs-mse-for-logistic-regression"
        );
        assert_eq!(
            slug("6. Gradient of L2-regularised logistic regression"),
            "6-gradient-of-l2-regularised-logistic-regression"
        );
    }

    #[test]
    fn figures_embed_the_file_and_pages_escape_the_title() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.png");
        std::fs::write(&p, b"png").unwrap();
        let fig = embedded_figure(&p, "cap").unwrap();
        assert!(
            fig.contains("base64,cG5n") && fig.contains("<figcaption>cap</figcaption>"),
            "{fig}"
        );
        assert!(embedded_figure(&dir.path().join("missing.png"), "x").is_none());
        let html = page("a <b>", "<p>x</p>");
        assert!(html.contains("<title>a &lt;b&gt;</title>") && html.contains("data-broken-images"));
    }
}
