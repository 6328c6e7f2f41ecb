//! How the command line shows times and tables.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The tag names in a JSON answer's `tags` list.
pub fn tag_names(tags: &serde_json::Value) -> Vec<&str> {
    tags.as_array().map(|t| t.iter().filter_map(serde_json::Value::as_str).collect()).unwrap_or_default()
}

/// Tags as the guide prints them: `tag:laptop, tag:eng`, or `(none)`.
pub fn tags_text(tags: &serde_json::Value) -> String {
    let names = tag_names(tags);
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

/// Parses an RFC 3339 time into Unix milliseconds.
pub fn parse_time(value: &serde_json::Value) -> Option<i64> {
    let text = value.as_str()?;
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn plural(n: i64, unit: &str) -> String {
    if n == 1 {
        format!("{n} {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// A duration as people say it: `45 min`, `1 hour`, `1 hour 30 min`, `7 days`.
pub fn duration_words(ms: i64) -> String {
    let minutes = (ms + 30_000) / 60_000;
    if ms < 60_000 {
        return plural((ms + 500) / 1000, "sec");
    }
    if minutes < 60 {
        return format!("{minutes} min");
    }
    let hours = minutes / 60;
    if hours < 24 {
        let rest = minutes % 60;
        return if rest == 0 || hours >= 10 {
            plural(hours, "hour")
        } else {
            format!("{} {rest} min", plural(hours, "hour"))
        };
    }
    plural((minutes + 720) / 1440, "day")
}

/// `in 45 min` or `expired 3 min ago`.
pub fn relative_expiry(expires_ms: i64, now_ms: i64) -> String {
    if expires_ms > now_ms {
        format!("in {}", duration_words(expires_ms - now_ms))
    } else {
        format!("expired {} ago", duration_words(now_ms - expires_ms))
    }
}

/// Prints rows as aligned columns, two spaces apart; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_guide() {
        assert_eq!(duration_words(3_600_000 - 40), "1 hour");
        assert_eq!(duration_words(45 * 60_000), "45 min");
        assert_eq!(duration_words(90 * 60_000), "1 hour 30 min");
        assert_eq!(duration_words(7 * 86_400_000), "7 days");
        assert_eq!(duration_words(5_000), "5 secs");
        assert_eq!(relative_expiry(0, 180_000), "expired 3 min ago");
    }

    #[test]
    fn tables_align() {
        let t = table(&["PREFIX", "USES"], &[vec!["tskey-auth-abc12…".into(), "87".into()]]);
        assert_eq!(t, "PREFIX             USES\ntskey-auth-abc12…  87");
    }
}
