//! The HTML pages: the status page, a machine's page with its use as an
//! inline SVG chart, and the script that keeps the status page current.
//!
//! Everything the lab holds is escaped on its way into the page (see
//! [`escape`]): a machine named `<script>` is shown as text. The pages
//! are also served with a policy that runs no script but the server's own
//! file ([`SCRIPT`]).

use std::fmt::Write as _;

use crate::cli::render::MachineView;
use crate::model::event::Event;
use crate::serve::usage::Day;
use crate::text::local_time;

/// Text made safe for HTML, in text and in quoted attribute values; line
/// breaks as character references, so a rendered fragment's lines are the
/// page's own (the status updates travel as server-sent events, a line a
/// `data:` field).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// A machine's name in a URL path: every byte but unreserved characters
/// percent-encoded.
pub fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// One machine as the pages show it: the cells of `list`'s table.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    /// `free`, `busy`...: for the row's colour.
    pub state: &'static str,
    /// The State cell (`busy +2`, `blocked (rig1 in use by bob)`).
    pub state_cell: String,
    pub user: String,
    pub job: String,
    /// When the job was claimed.
    pub since: Option<i64>,
    /// The Reserved cell (`alice until 17:30`).
    pub reserved: String,
    pub note: Option<String>,
    pub power: String,
    pub online: Option<&'static str>,
    pub ip: String,
    /// Why it is out of service, by whom, since when.
    pub offline: Option<String>,
}

impl Row {
    pub fn of(view: &MachineView, now: i64) -> Row {
        let offline = view.offline_reason.as_ref().map(|reason| {
            let mut text = reason.clone();
            if let Some(since) = view.offline_since {
                let _ = write!(text, " (since {}", local_time(since));
                if let Some(by) = &view.offline_by {
                    let _ = write!(text, ", by {by}");
                }
                text.push(')');
            } else if let Some(by) = &view.offline_by {
                let _ = write!(text, " (by {by})");
            }
            text
        });
        Row {
            name: view.name.clone(),
            state: view.state,
            state_cell: view.state_cell(),
            user: view.user_cell(),
            job: view.job_cell(),
            since: view
                .job_timestamp
                .filter(|_| view.job.is_some() || view.job_pid.is_some()),
            reserved: view.reservation_cell(now),
            note: view.reservation_note.clone(),
            power: view.power_cell(),
            online: view.online,
            ip: view.ip_cell(),
            offline,
        }
    }
}

/// The style every page shares.
const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.3em}h1 small{font-weight:normal;color:#666}\
table{border-collapse:collapse}th,td{padding:.3em .7em;border-bottom:1px solid #ddd;\
text-align:left;vertical-align:top}th{background:#f4f4f4}\
tr.busy td.state{color:#a40}tr.stale td.state{color:#a0a}tr.reserved td.state{color:#06a}\
tr.offline td.state,tr.blocked td.state{color:#888}tr.free td.state{color:#080}\
tr.started td.state{color:#a60}.error{background:#fee;border:1px solid #c00;padding:.5em}\
.muted{color:#777;font-size:.9em}a{color:#05a}td.name,td.since{white-space:nowrap}";

/// The script of the pages. On the status page it takes each new table
/// the server sends and puts it in place; on a machine's page (its
/// `<body data-machine>`) it loads the page again when the machine's row
/// in a new table differs from the one before. The tables come from one
/// stream that every page of the server open in the browser shares, kept
/// by [`WORKER`] (a browser opens at most six connections to a server, and
/// each stream holds one): a seventh page would not load. Where the
/// browser has no shared workers, the page opens a stream of its own.
pub const SCRIPT: &str = "\"use strict\";\n\
const lab = document.getElementById(\"lab\");\n\
const link = document.getElementById(\"link\");\n\
const machine = document.body.dataset.machine;\n\
let shown = null;\n\
function show(data) {\n\
  if (link) link.textContent = \"live\";\n\
  if (lab) { lab.innerHTML = data; return; }\n\
  if (machine === undefined) return;\n\
  const table = document.createElement(\"template\");\n\
  table.innerHTML = data;\n\
  const row = Array.from(table.content.querySelectorAll(\"tr[data-machine]\"))\n\
    .find((r) => r.dataset.machine === machine);\n\
  const now = row ? row.outerHTML : \"\";\n\
  if (shown !== null && now !== shown) location.reload();\n\
  shown = now;\n\
}\n\
function lost() { if (link) link.textContent = \"reconnecting to the server...\"; }\n\
function listen() {\n\
  const events = new EventSource(\"/events\");\n\
  events.addEventListener(\"lab\", (e) => show(e.data));\n\
  events.onerror = () => {\n\
    lost();\n\
    // An answer that is not the stream (503: full; a proxy's 502 while\n\
    // the server restarts) ends it for good: listen again.\n\
    if (events.readyState === EventSource.CLOSED) setTimeout(listen, 2000);\n\
  };\n\
}\n\
if (window.SharedWorker) {\n\
  const worker = new SharedWorker(\"/worker.js\");\n\
  worker.port.onmessage = (m) => (m.data === null ? lost() : show(m.data));\n\
  addEventListener(\"pagehide\", () => worker.port.postMessage(\"gone\"));\n\
  addEventListener(\"pageshow\", (e) => { if (e.persisted) worker.port.postMessage(\"back\"); });\n\
} else {\n\
  listen();\n\
}\n";

/// The shared worker of the pages: one stream of the status tables for
/// every page of the server open in the browser; each new table goes to
/// every page (the last one to a page as it connects), and `null` when
/// the stream is lost.
pub const WORKER: &str = "\"use strict\";\n\
const pages = new Set();\n\
let last = null;\n\
function tell(message) { for (const page of pages) page.postMessage(message); }\n\
function listen() {\n\
  const events = new EventSource(\"/events\");\n\
  events.addEventListener(\"lab\", (e) => { last = e.data; tell(last); });\n\
  events.onerror = () => {\n\
    last = null;\n\
    tell(null);\n\
    // An answer that is not the stream (503: full; a proxy's 502 while\n\
    // the server restarts) ends it for good: listen again.\n\
    if (events.readyState === EventSource.CLOSED) setTimeout(listen, 2000);\n\
  };\n\
}\n\
onconnect = (e) => {\n\
  const page = e.ports[0];\n\
  pages.add(page);\n\
  page.onmessage = (m) => {\n\
    if (m.data === \"gone\") pages.delete(page);\n\
    if (m.data === \"back\") { pages.add(page); if (last !== null) page.postMessage(last); }\n\
  };\n\
  if (last !== null) page.postMessage(last);\n\
};\n\
listen();\n";

/// The page up to its body; `body` is the body tag's attributes.
fn head(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body{body}>\n",
        escape(title)
    )
}

/// The status page: the machines, kept current by [`SCRIPT`].
pub fn status_page(location: &str, fragment: &str) -> String {
    let mut page = head(&format!("mama: {location}"), "");
    let _ = write!(
        page,
        "<h1>mama <small>{}</small></h1>\n<div id=\"lab\">\n{fragment}</div>\n\
         <p class=\"muted\">Updates: <span id=\"link\">connecting...</span>. \
         <a href=\"/metrics\">metrics</a> · <a href=\"/api/machines\">machines as JSON</a> · \
         <a href=\"/api/events\">events as JSON</a></p>\n\
         <script src=\"/status.js\"></script>\n</body>\n</html>\n",
        escape(location)
    );
    page
}

/// The part of the status page that updates itself: what the watcher has
/// to say (the lab unreadable) and the machines' table.
pub fn status_fragment(rows: &[Row], error: Option<&str>, now: i64) -> String {
    let mut out = String::with_capacity(512 + rows.len() * 400);
    if let Some(error) = error {
        let _ = writeln!(
            out,
            "<p class=\"error\" id=\"error\">The lab cannot be read now: {}. \
             Shown as it was when last read.</p>",
            escape(error)
        );
    }
    let _ = writeln!(
        out,
        "<p class=\"muted\">{} machine{}, as of {}.</p>",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        escape(&local_time(now))
    );
    out.push_str(
        "<table id=\"machines\">\n<thead><tr><th>Name</th><th>State</th><th>User</th><th>Job</th>\
         <th>Since</th><th>Reserved</th><th>IP</th><th>Online</th><th>Power</th>\
         <th>Out of service</th></tr></thead>\n<tbody>\n",
    );
    for row in rows {
        let _ = writeln!(
            out,
            "<tr class=\"{}\" data-machine=\"{}\"><td class=\"name\"><a href=\"/machine/{}\">{}</a></td>\
             <td class=\"state\">{}</td><td class=\"user\">{}</td><td class=\"job\">{}</td>\
             <td class=\"since\">{}</td><td class=\"reserved\"{}>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"offline\">{}</td></tr>",
            row.state,
            escape(&row.name),
            path_segment(&row.name),
            escape(&row.name),
            escape(&row.state_cell),
            escape(&row.user),
            escape(&row.job),
            row.since
                .map(|t| escape(&local_time(t)))
                .unwrap_or_default(),
            row.note
                .as_ref()
                .map(|n| format!(" title=\"{}\"", escape(n)))
                .unwrap_or_default(),
            escape(&row.reserved),
            escape(&row.ip),
            row.online.unwrap_or(""),
            escape(&row.power),
            row.offline.as_deref().map(escape).unwrap_or_default(),
        );
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// The chart of a machine's use: a bar a day, its height the busy share.
pub fn usage_chart(days: &[Day]) -> String {
    const W: usize = 18;
    const H: f64 = 120.0;
    let width = days.len() * W + 40;
    let mut svg = format!(
        "<svg id=\"usage\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"160\" \
         role=\"img\" aria-label=\"busy share per day\">\n\
         <line x1=\"30\" y1=\"130\" x2=\"{width}\" y2=\"130\" stroke=\"#999\"/>\n\
         <text x=\"0\" y=\"14\" font-size=\"10\">100%</text>\
         <text x=\"0\" y=\"130\" font-size=\"10\">0%</text>\n"
    );
    for (i, day) in days.iter().enumerate() {
        let height = (day.busy * H).round();
        let x = 34 + i * W;
        let _ = writeln!(
            svg,
            "<rect class=\"day\" x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{height}\" fill=\"#c73\" \
             data-date=\"{}\" data-busy=\"{}\"><title>{}: {:.0}% busy</title></rect>",
            130.0 - height,
            W - 4,
            day.date,
            day.busy,
            day.date,
            day.busy * 100.0
        );
        if i % 7 == 0 || i + 1 == days.len() {
            let _ = writeln!(
                svg,
                "<text x=\"{x}\" y=\"150\" font-size=\"10\">{}</text>",
                day.date.format("%m-%d")
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// A machine's page: its row, its use over the last days and its recent
/// events.
pub fn machine_page(location: &str, row: &Row, days: &[Day], recent: &[&Event]) -> String {
    let mut page = head(
        &format!("mama: {}", row.name),
        &format!(" data-machine=\"{}\"", escape(&row.name)),
    );
    let _ = write!(
        page,
        "<h1>{} <small>{}</small></h1>\n<p><a href=\"/\">all machines</a></p>\n\
         <p>State: <b id=\"state\">{}</b>",
        escape(&row.name),
        escape(location),
        escape(&row.state_cell)
    );
    if !row.job.is_empty() {
        let _ = write!(page, "; job {} of {}", escape(&row.job), escape(&row.user));
        if let Some(since) = row.since {
            let _ = write!(page, " since {}", escape(&local_time(since)));
        }
    }
    if !row.reserved.is_empty() {
        let _ = write!(page, "; reserved by {}", escape(&row.reserved));
    }
    if let Some(offline) = &row.offline {
        let _ = write!(page, "; out of service: {}", escape(offline));
    }
    let _ = writeln!(
        page,
        ".</p>\n<h2>Use over the last {} days</h2>",
        days.len()
    );
    page.push_str(&usage_chart(days));
    page.push_str(
        "<h2>Recent events</h2>\n<table id=\"events\">\n<thead><tr><th>#</th><th>Time</th>\
         <th>Event</th><th>User</th><th>Job</th><th>Detail</th></tr></thead>\n<tbody>\n",
    );
    for e in recent.iter().rev() {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}@{}</td><td>{}</td><td>{}</td></tr>",
            e.seq,
            escape(&local_time(e.time)),
            e.event.as_str(),
            escape(&e.user),
            escape(&e.host),
            escape(e.job.as_deref().unwrap_or("")),
            escape(e.detail.as_deref().unwrap_or(""))
        );
    }
    page.push_str(
        "</tbody>\n</table>\n<p class=\"muted\">Updates: <span id=\"link\">connecting...</span>.</p>\n\
         <script src=\"/status.js\"></script>\n</body>\n</html>\n",
    );
    page
}

/// A page that says what went wrong.
pub fn message_page(title: &str, text: &str) -> String {
    let mut page = head(title, "");
    let _ = writeln!(
        page,
        "<h1>{}</h1>\n<p>{}</p>\n<p><a href=\"/\">all machines</a></p>\n</body>\n</html>",
        escape(title),
        escape(text)
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_s_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('1')</script> & \"x\"\n"),
            "&lt;script&gt;alert(&#39;1&#39;)&lt;/script&gt; &amp; &quot;x&quot;&#10;"
        );
        assert_eq!(path_segment("a b/<c>é"), "a%20b%2F%3Cc%3E%C3%A9");
    }
}
