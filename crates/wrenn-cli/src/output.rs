//! How the CLI prints: aligned tables, human ages and sizes, colour only on a terminal.

use std::io::IsTerminal;

use chrono::{DateTime, Utc};

/// A table printed with columns padded to their widest cell.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

/// One cell: its text and an optional colour (an ANSI SGR code) used on a terminal.
#[derive(Debug, Clone)]
pub struct Cell {
    text: String,
    colour: Option<&'static str>,
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self { text, colour: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        text.to_owned().into()
    }
}

impl Cell {
    /// A coloured cell.
    pub fn coloured(text: impl Into<String>, colour: Option<&'static str>) -> Self {
        Self {
            text: text.into(),
            colour,
        }
    }
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table as text; `colour` adds ANSI colours.
    pub fn render(&self, colour: bool) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.text.chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<Cell> = self.header.iter().map(|h| Cell::from(*h)).collect();
        for (n, row) in std::iter::once(&header).chain(&self.rows).enumerate() {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate() {
                let last = i + 1 == row.len();
                let pad = if last {
                    0
                } else {
                    widths[i].saturating_sub(c.text.chars().count()) + 3
                };
                let code = if n == 0 { Some("1") } else { c.colour };
                match code {
                    Some(code) if colour => {
                        line.push_str(&format!("\x1b[{code}m{}\x1b[0m", c.text))
                    }
                    _ => line.push_str(&c.text),
                }
                line.push_str(&" ".repeat(pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table to stdout, coloured when stdout is a terminal.
    pub fn print(&self) {
        print!("{}", self.render(stdout_colour()));
    }
}

/// How a `ls` command prints: a table (default), JSON, or ids/names only.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ListFormat {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print ids or names only.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Whether stdout gets colours: a terminal, and `NO_COLOR` unset.
pub fn stdout_colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Whether stderr gets colours.
pub fn stderr_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// `5s`, `3m`, `2h`, `4d` since `t`.
pub fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `512 B`, `1.5 KiB`, `20.0 MiB`, `3.2 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// Memory given in MiB: `512 MiB`, `2 GiB`.
pub fn memory_mb(mb: u32) -> String {
    if mb >= 1024 && mb & 1023 == 0 {
        format!("{} GiB", mb / 1024)
    } else {
        format!("{mb} MiB")
    }
}

/// The colour of a capsule status on a terminal.
pub fn status_colour(status: wrenn_client::CapsuleStatus) -> Option<&'static str> {
    use wrenn_client::CapsuleStatus as S;
    match status {
        S::Running => Some("32"),
        S::Paused | S::Pausing | S::Resuming | S::Starting | S::Snapshotting => Some("33"),
        S::Error | S::Missing => Some("31"),
        S::Stopped | S::Stopping | S::Pending | S::Hibernated => Some("2"),
    }
}

/// Prints `v` as indented JSON.
pub fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_and_colour_only_when_asked() {
        let mut t = Table::new(vec!["ID", "STATUS"]);
        t.row(vec!["cl-1".into(), Cell::coloured("running", Some("32"))]);
        t.row(vec!["cl-22222".into(), "paused".into()]);
        assert_eq!(
            t.render(false),
            "ID         STATUS\ncl-1       running\ncl-22222   paused\n"
        );
        assert!(t.render(true).contains("\x1b[32mrunning\x1b[0m"));
    }

    #[test]
    fn ages_and_sizes_read_like_docker() {
        let now = Utc::now();
        assert_eq!(age(now - chrono::Duration::seconds(5), now), "5s");
        assert_eq!(age(now - chrono::Duration::minutes(3), now), "3m");
        assert_eq!(age(now - chrono::Duration::hours(49), now), "2d");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(memory_mb(512), "512 MiB");
        assert_eq!(memory_mb(2048), "2 GiB");
    }
}
