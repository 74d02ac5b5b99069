//! How `status` and `show` print: aligned tables, state words coloured on a terminal, ages and run
//! times in a few characters.

use std::io::IsTerminal;

/// Prints rows in aligned columns; widths are measured without colour codes.
pub(crate) fn print_table(rows: &[Vec<String>], paint: Paint) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| paint.visible_len(&r[c]))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::from(" ");
        for (cell, width) in row.iter().zip(&widths) {
            line.push(' ');
            line.push_str(cell);
            line.push_str(&" ".repeat(width - paint.visible_len(cell)));
            line.push(' ');
        }
        println!("{}", line.trim_end());
    }
}

/// Colours state words, only on a terminal and only without `NO_COLOR`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paint {
    enabled: bool,
}

impl Paint {
    pub(crate) fn stdout() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            enabled: std::io::stdout().is_terminal() && !no_color,
        }
    }

    pub(crate) fn state(self, state: &str) -> String {
        let code = match state {
            "succeeded" => "32",
            "failed" | "timed_out" | "blocked:" => "31",
            "rejected" | "abandoned" | "cancelled" => "33",
            "queued" | "running" => "36",
            "fresh" => "32",
            "stale" => "33",
            _ => "2",
        };
        if self.enabled {
            format!("\x1b[{code}m{state}\x1b[0m")
        } else {
            state.to_owned()
        }
    }

    fn visible_len(self, text: &str) -> usize {
        if self.enabled {
            // Only `state` adds escapes: `ESC[NNm` before and `ESC[0m` after.
            let mut len = 0;
            let mut in_escape = false;
            for c in text.chars() {
                match (in_escape, c) {
                    (false, '\x1b') => in_escape = true,
                    (true, 'm') => in_escape = false,
                    (true, _) => {}
                    (false, _) => len += 1,
                }
            }
            len
        } else {
            text.chars().count()
        }
    }
}

/// A coarse age: `45s`, `3m 20s`, `2h 5m`, `3d 4h`.
pub(crate) fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// A handler's run time: `12ms`, `1.5s`, `3m 4s`.
pub(crate) fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}.{}s", ms / 1000, ms % 1000 / 100),
        _ => age(i64::try_from(ms / 1000).unwrap_or(i64::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_durations_read_coarsely() {
        assert_eq!(age(-5), "0s");
        assert_eq!(age(45), "45s");
        assert_eq!(age(200), "3m 20s");
        assert_eq!(age(7500), "2h 5m");
        assert_eq!(age(3 * 86400 + 4 * 3600 + 5), "3d 4h");
        assert_eq!(duration(12), "12ms");
        assert_eq!(duration(1500), "1.5s");
        assert_eq!(duration(184_000), "3m 4s");
    }

    #[test]
    fn colour_codes_do_not_count_towards_column_widths() {
        let on = Paint { enabled: true };
        let off = Paint { enabled: false };
        assert_eq!(on.state("failed"), "\x1b[31mfailed\x1b[0m");
        assert_eq!(on.visible_len(&on.state("failed")), 6);
        assert_eq!(off.state("failed"), "failed");
    }
}
