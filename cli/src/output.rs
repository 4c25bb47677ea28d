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

/// Parses a duration flag with the grammar of every config file
/// (`strait_api::snapshot::duration_str`: `500ms`, `90s`, `30m`, `24h`,
/// `7d`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = s
            .parse()
            .map_err(|_| format!("duration {s:?} is too large"))?;
        return Ok(std::time::Duration::from_secs(n));
    }
    strait_api::snapshot::duration_str::parse(s).ok_or_else(|| {
        format!("{s:?} is not a duration; use a number with ms, s, m, h or d, e.g. 500ms, 90s, 30m, 24h or 7d")
    })
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
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert!(
            parse_duration("5w")
                .unwrap_err()
                .contains("ms, s, m, h or d")
        );
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
