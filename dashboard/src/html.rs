//! Small helpers for writing HTML by hand: escaping, the page frame, formatting.

use std::fmt::Write as _;

/// Escapes text for HTML element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Navigation entries: (path, label).
const NAV: [(&str, &str); 6] = [
    ("/", "Overview"),
    ("/jobs", "Jobs"),
    ("/upload", "Upload"),
    ("/workers", "Workers"),
    ("/workers/add", "Add a worker"),
    ("/pipelines", "Pipelines"),
];

/// A whole page. `fragment` is where the live script refetches `body` from.
pub fn page(title: &str, current: &str, csrf: &str, fragment: &str, refresh_ms: u32, body: &str) -> String {
    page_with_scripts(title, current, csrf, fragment, refresh_ms, body, &[])
}

/// A whole page that also loads `scripts` (embedded assets' paths) before the live script.
pub fn page_with_scripts(title: &str, current: &str, csrf: &str, fragment: &str, refresh_ms: u32, body: &str, scripts: &[&str]) -> String {
    let scripts: String = scripts.iter().map(|s| format!("<script src=\"{}\"></script>", esc(s))).collect();
    let mut nav = String::new();
    for (href, label) in NAV {
        let cls = if href == current { " class=\"current\"" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{cls}>{label}</a>");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · Drake</title><link rel=\"stylesheet\" href=\"/ui/app.css\"></head><body>\
<header><span class=\"brand\">Drake</span><nav>{nav}</nav>\
<form method=\"post\" action=\"/logout\" class=\"logout\">{csrf_field}<button>Sign out</button></form></header>\
<main id=\"live\" data-fragment=\"{fragment}\" data-refresh-ms=\"{refresh_ms}\">{body}</main>\
{scripts}<script src=\"/ui/app.js\"></script></body></html>",
        title = esc(title),
        csrf_field = csrf_input(csrf),
        fragment = esc(fragment),
    )
}

/// The hidden field every form carries.
pub fn csrf_input(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

/// A POST button in its own form.
pub fn action(path: &str, label: &str, csrf: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{}<button class=\"{class}\">{}</button></form>",
        esc(path),
        csrf_input(csrf),
        esc(label)
    )
}

/// A progress bar that the live script can move: `data-task` names the task. The
/// script sizes the fill from `data-progress` (the CSP allows no inline styles).
pub fn bar(task_id: &str, label: &str, progress: f64, state: &str) -> String {
    let pct = (progress.clamp(0.0, 1.0) * 100.0).round();
    format!(
        "<div class=\"bar state-{state}\" data-task=\"{id}\" data-state=\"{state}\" data-progress=\"{pct}\" title=\"{label}: {state}\">\
<div class=\"fill\"></div><span class=\"label\">{label}</span><span class=\"pct\">{pct}%</span></div>",
        id = esc(task_id),
        label = esc(label),
        state = esc(state),
    )
}

/// "3 s ago", "5 min ago", ...
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    let s = ((now_ms - then_ms) / 1000).max(0);
    match s {
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86400 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86400),
    }
}

/// A duration in ms as "850 ms", "12.3 s", "4.2 min".
pub fn duration(ms: f64) -> String {
    match ms {
        m if m < 1000.0 => format!("{m:.0} ms"),
        m if m < 120_000.0 => format!("{:.1} s", m / 1000.0),
        m => format!("{:.1} min", m / 60_000.0),
    }
}

pub fn bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n < 1024.0 => format!("{n:.0} B"),
        n if n < 1024.0 * 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n if n < 1024.0 * 1024.0 * 1024.0 => format!("{:.1} MiB", n / 1024.0 / 1024.0),
        n => format!("{:.2} GiB", n / 1024.0 / 1024.0 / 1024.0),
    }
}

/// UTC "2026-11-21 15:04:05" from unix ms.
pub fn timestamp(ms: i64) -> String {
    let (y, m, d, h, mi, s) = proto::time::utc(ms.div_euclid(1000));
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn formats() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_795_791_845_000), "2026-11-27 15:04:05");
        assert_eq!(ago(10_000, 4_000), "6 s ago");
        assert_eq!(duration(1500.0), "1.5 s");
        assert_eq!(bytes(2048), "2.0 KiB");
    }
}
