//! Durations as operators type them: `5`, `1.5s`, `500ms`, `250us`, `2m`.

use std::time::Duration;

/// Parses a non-negative duration; a bare number means `default_unit`.
pub fn parse(text: &str, default_unit: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = if unit.is_empty() { default_unit } else { unit };
    let bad = || format!("invalid duration '{text}' (examples: 5s, 1.5s, 500ms, 250us, 2m)");
    if t.starts_with('-') {
        return Err(format!("invalid duration '{text}': it must be positive"));
    }
    if num.is_empty() || num.starts_with('.') && num.len() == 1 {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

/// For clap: a duration that must be greater than zero (intervals).
pub fn positive_secs(text: &str) -> Result<Duration, String> {
    let d = parse(text, "s")?;
    if d.is_zero() {
        return Err(format!("'{text}' must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("5", "s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("1s", "s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("1.5s", "s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("500ms", "s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("250us", "s"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("2m", "s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h", "s"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("10", "ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse("0", "s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["", "abc", "-1s", "1x", "s", ".", "1.2.3s", "5 s s"] {
            assert!(parse(bad, "s").is_err(), "{bad:?} accepted");
        }
        assert!(positive_secs("0").is_err());
        assert!(positive_secs("0ms").is_err());
        assert_eq!(positive_secs("1"), Ok(Duration::from_secs(1)));
    }
}
