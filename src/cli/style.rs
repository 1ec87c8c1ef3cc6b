//! Colour, in one place: on only when the output goes to a terminal and
//! `NO_COLOR` is unset or empty (<https://no-color.org/>).

use std::io::IsTerminal;

/// Where a text is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a coloured text means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// The `mama:` prefix of an error.
    Error,
    /// A stale job, or the `stale` state.
    Stale,
    /// The `busy` and `blocked` states.
    Busy,
    /// The `free` state.
    Free,
}

/// Whether text printed on `stream` may be coloured.
pub fn enabled(stream: Stream) -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color
        && match stream {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        }
}

/// How a table is laid out where it is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// For a terminal: drawn in boxes, fitted to `width` columns (long
    /// cells cut short with `…`), or as wide as it needs (`None`).
    Terminal { width: Option<u16> },
    /// For a pipe or a file: plain text in aligned columns, one row a
    /// line, nothing drawn.
    Plain,
}

impl Layout {
    /// The layout for stdout; `wide` keeps every cell whole.
    pub fn of_stdout(wide: bool) -> Layout {
        if !std::io::stdout().is_terminal() {
            return Layout::Plain;
        }
        if wide {
            return Layout::Terminal { width: None };
        }
        Layout::Terminal {
            width: terminal_width(),
        }
    }
}

/// The width of the terminal on stdout: `COLUMNS` where set, else what
/// the terminal says.
fn terminal_width() -> Option<u16> {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<u16>().ok())
        .filter(|&c| c > 0)
    {
        return Some(columns);
    }
    // SAFETY: winsize is plain data, filled in by the ioctl on stdout.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointer given.
    let asked = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (asked == 0 && size.ws_col > 0).then_some(size.ws_col)
}

impl Tone {
    /// The tone of a machine state (`free`, `busy`, `stale`, ...), if any.
    pub fn of_state(state: &str) -> Option<Tone> {
        match state {
            "stale" | "offline" => Some(Tone::Stale),
            "busy" | "blocked" => Some(Tone::Busy),
            "free" => Some(Tone::Free),
            _ => None,
        }
    }

    /// The SGR parameters of this tone.
    fn sgr(self) -> &'static str {
        match self {
            Tone::Error => "1;31",
            Tone::Stale => "1;31",
            Tone::Busy => "33",
            Tone::Free => "32",
        }
    }

    /// The same colour for a table cell.
    pub fn cell(self, cell: comfy_table::Cell) -> comfy_table::Cell {
        use comfy_table::{Attribute, Color};
        match self {
            Tone::Error | Tone::Stale => cell.fg(Color::DarkRed).add_attribute(Attribute::Bold),
            Tone::Busy => cell.fg(Color::DarkYellow),
            Tone::Free => cell.fg(Color::DarkGreen),
        }
    }
}

/// `text` in `tone` when `on`, else `text` unchanged.
pub fn paint(text: &str, tone: Option<Tone>, on: bool) -> String {
    match tone {
        Some(tone) if on => format!("\x1b[{}m{text}\x1b[0m", tone.sgr()),
        _ => text.to_string(),
    }
}

/// The prefix of an error message on stderr: `mama:`, red on a terminal.
pub fn error_prefix() -> String {
    paint("mama:", Some(Tone::Error), enabled(Stream::Stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paint_only_when_on() {
        assert_eq!(paint("stale", Some(Tone::Stale), false), "stale");
        assert_eq!(paint("rig", None, true), "rig");
        assert_eq!(paint("busy", Some(Tone::Busy), true), "\x1b[33mbusy\x1b[0m");
    }
}
