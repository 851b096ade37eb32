//! Terminal output: aligned tables, colours (only on a terminal, never with `NO_COLOR`:
//! `console` decides), a spinner on stderr (only when stderr is a terminal) and JSON.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use console::{measure_text_width, pad_str, Alignment, Style};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::model::Status;

/// Print `message` on stderr as the command's error.
pub fn error(message: &str) {
    let prefix = Style::new().red().bold().for_stderr().apply_to("error:");
    eprintln!("vulcan: {prefix} {message}");
}

/// Print a note for the human on stderr (never mixed into stdout output).
pub fn note(message: &str) {
    eprintln!("{}", Style::new().dim().for_stderr().apply_to(message));
}

/// Whether stdout is a terminal (human formatting choices such as pretty JSON).
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// Print a JSON value on stdout: pretty on a terminal, one line otherwise.
pub fn json(value: &Value) {
    let text = if stdout_is_tty() {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    // Serialising a `Value` cannot fail (keys are strings).
    println!("{}", text.unwrap_or_default());
}

/// Print a workload's output for a human: a string as it is (it is the program's text),
/// anything else as JSON; nothing for `null`.
pub fn workload_output(output: Option<&Value>) {
    match output {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(s.as_bytes());
            if !s.ends_with('\n') {
                let _ = out.write_all(b"\n");
            }
        }
        Some(v) => json(v),
    }
}

/// A status word, coloured by outcome on a terminal.
pub fn status(s: Status) -> String {
    let style = match s {
        Status::Completed => Style::new().green(),
        Status::Failed => Style::new().red(),
        Status::Killed => Style::new().yellow(),
        Status::Running => Style::new().cyan(),
        Status::Pending => Style::new().dim(),
    };
    style.apply_to(s.as_str()).to_string()
}

/// A health word (`healthy`, `unavailable`, `failed`), coloured on a terminal.
pub fn health(s: &str) -> String {
    let style = match s {
        "healthy" => Style::new().green(),
        "failed" => Style::new().red(),
        _ => Style::new().yellow(),
    };
    style.apply_to(s).to_string()
}

/// Bold on a terminal (table headers, labels).
pub fn bold(s: &str) -> String {
    Style::new().bold().apply_to(s).to_string()
}

/// Milliseconds for a human (`3 ms`, `1.25 s`); `-` when unknown.
pub fn millis(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms >= 1000.0 => format!("{:.2} s", ms / 1000.0),
        Some(ms) if ms.fract() == 0.0 => format!("{ms:.0} ms"),
        Some(ms) => format!("{ms:.1} ms"),
    }
}

/// A table printed with its columns aligned (widths measured without colour codes).
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// A table with these column titles; columns whose title is in `right_aligned`
    /// (numbers) are aligned right.
    pub fn new(header: &[&str], right_aligned: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| bold(h)).collect(),
            right: header.iter().map(|h| right_aligned.contains(h)).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row (missing cells are blank, extra cells are dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, two spaces between columns, no trailing
    /// blanks.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| measure_text_width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(measure_text_width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let align = if self.right[i] {
                    Alignment::Right
                } else {
                    Alignment::Left
                };
                line.push_str(&pad_str(cell, widths[i], align, None));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Print the table on stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// A spinner on stderr while waiting; invisible when stderr is not a terminal.
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    /// Start spinning with `message` (only if stderr is a terminal).
    pub fn start(message: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed:.dim}") {
            bar.set_style(style);
        }
        bar.set_message(message.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        Self(Some(bar))
    }

    /// Run `f` (which prints) with the spinner hidden, so lines never interleave with it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.0 {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Remove the spinner.
    pub fn stop(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_numbers_right() {
        console::set_colors_enabled(false);
        let mut t = Table::new(&["ID", "STATUS", "MS"], &["MS"]);
        t.row(vec!["a".into(), "completed".into(), "3".into()]);
        t.row(vec!["bbbb".into(), "failed".into(), "1200".into()]);
        assert_eq!(
            t.render(),
            "ID    STATUS       MS\na     completed     3\nbbbb  failed     1200\n"
        );
    }

    #[test]
    fn coloured_cells_are_measured_without_their_escape_codes() {
        let mut t = Table::new(&["S", "X"], &[]);
        t.row(vec!["\u{1b}[32mok\u{1b}[0m".into(), "y".into()]);
        let text = t.render();
        let last = text.lines().last().expect("row");
        assert_eq!(console::strip_ansi_codes(last), "ok  y");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(millis(None), "-");
        assert_eq!(millis(Some(3.0)), "3 ms");
        assert_eq!(millis(Some(2.5)), "2.5 ms");
        assert_eq!(millis(Some(1250.0)), "1.25 s");
    }
}
