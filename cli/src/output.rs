//! Human and machine output.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Readable lines and tables.
    Human,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// Prints `value` as JSON/YAML, or calls `human` for the readable form.
pub fn emit<T: Serialize>(
    format: Format,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let text = match format {
        Format::Human => human(value),
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
        Format::Yaml => serde_yaml_ng::to_string(value)?,
    };
    print!("{text}");
    Ok(())
}

/// Parses `90s`, `30m`, `24h`, `7d` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 90s, 30m, 24h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {s:?}; use s, m, h or d"
            ));
        }
    };
    n.checked_mul(mult)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// `2026-11-26T11:00:00Z (in 23h 59m)`.
pub fn expiry(t: time::OffsetDateTime) -> String {
    let left = t - time::OffsetDateTime::now_utc();
    let stamp = t
        .replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string());
    let mins = left.whole_minutes().max(0);
    format!("{stamp} (in {}h {}m)", mins / 60, mins % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86400);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 604800);
        assert!(parse_duration("h").unwrap_err().contains("not a duration"));
        assert!(
            parse_duration("5w")
                .unwrap_err()
                .contains("unknown duration unit")
        );
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
