//! How answers are shown: aligned tables, `key: value` lines, human sizes
//! and times. Pure functions; the commands decide what goes in.

use serde_json::Value;

/// Bytes in binary units with one decimal (`10.0 GiB`); plain bytes below
/// 1 KiB.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Round first so 1023.97 KiB shows as 1.0 MiB rather than 1024.0 KiB.
    while (v * 10.0).round() / 10.0 >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Unix seconds as a UTC date and time; `-` for 0 (not recorded).
pub fn time(secs: u64) -> String {
    if secs == 0 {
        return "-".into();
    }
    let (y, m, d) = civil(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Unix milliseconds as an RFC 3339 UTC timestamp with milliseconds.
pub fn time_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `done` of `total` as a percentage; `-` while the total is not known.
pub fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return "-".into();
    }
    format!("{:.1}%", done as f64 * 100.0 / total as f64)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Align {
    Left,
    Right,
}

/// A table with a header row, columns two spaces apart and padded to the
/// widest cell; no trailing spaces.
pub struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns whose header is given as `>NAME` are right-aligned (sizes,
    /// counts).
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers
                .iter()
                .map(|h| match h.strip_prefix('>') {
                    Some(h) => (h.to_string(), Align::Right),
                    None => (h.to_string(), Align::Left),
                })
                .collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let ncol = self.headers.len();
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|(h, _)| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().take(ncol).enumerate() {
                widths[i] = widths[i].max(width(c));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (_, align)) in self.headers.iter().enumerate() {
                let c = cells.get(i).map_or("", String::as_str);
                let pad = " ".repeat(widths[i].saturating_sub(width(c)));
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Left => {
                        line.push_str(c);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(c);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned.
pub fn kv(pairs: &[(&str, String)]) -> String {
    let w = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let pad = " ".repeat(w - k.chars().count());
        out.push_str(format!("{k}:{pad} {v}").trim_end());
        out.push('\n');
    }
    out
}

/// A string field, or `-` when missing or empty.
pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Null => "-".into(),
        Value::String(_) => "-".into(),
        other => other.to_string(),
    }
}

/// A number field (0 when missing).
pub fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A size field in human units, `-` when missing.
pub fn sz(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".into(), size)
}

/// An array field's strings joined with `, `, `-` when empty.
pub fn list(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_are_binary_with_one_decimal() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(64 << 10), "64.0 KiB");
        assert_eq!(size(128 << 20), "128.0 MiB");
        assert_eq!(size(10 << 30), "10.0 GiB");
        assert_eq!(size((1 << 40) + (1 << 39)), "1.5 TiB");
        // Just under a unit rounds up into it rather than showing 1024.0.
        assert_eq!(size((1 << 20) - 1), "1.0 MiB");
        assert_eq!(size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1), "1970-01-01 00:00:01");
        assert_eq!(time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(time(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(time_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(0, 0), "-");
        assert_eq!(percent(1, 4), "25.0%");
        assert_eq!(percent(4, 4), "100.0%");
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["ID", "NAME", ">SIZE"]);
        t.row(vec!["a1".into(), "db".into(), "10.0 GiB".into()]);
        t.row(vec!["b22222".into(), "web café".into(), "512 B".into()]);
        assert_eq!(
            t.render(),
            "ID      NAME          SIZE\n\
             a1      db        10.0 GiB\n\
             b22222  web café     512 B\n"
        );
    }

    #[test]
    fn tables_tolerate_short_rows_and_drop_trailing_spaces() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["long value".into()]);
        assert_eq!(t.render(), "A           B\nlong value\n");
        assert!(!t.is_empty());
        assert!(Table::new(&["A"]).is_empty());
    }

    #[test]
    fn key_value_lines() {
        assert_eq!(
            kv(&[
                ("id", "v1".into()),
                ("size", "1.0 GiB".into()),
                ("nbd", "".into())
            ]),
            "id:   v1\nsize: 1.0 GiB\nnbd:\n"
        );
    }

    #[test]
    fn fields() {
        let v = json!({"a": "x", "e": "", "n": 5, "l": ["p", "q"], "z": []});
        assert_eq!(s(&v["a"]), "x");
        assert_eq!(s(&v["e"]), "-");
        assert_eq!(s(&v["missing"]), "-");
        assert_eq!(s(&v["n"]), "5");
        assert_eq!(n(&v["n"]), 5);
        assert_eq!(n(&v["missing"]), 0);
        assert_eq!(sz(&v["missing"]), "-");
        assert_eq!(list(&v["l"]), "p, q");
        assert_eq!(list(&v["z"]), "-");
    }
}
