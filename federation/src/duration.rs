//! Durations as operators write them on command lines and in configuration: `90s`, `30m`,
//! `24h`, `7d`, `250ms`, or a number of seconds.

use std::time::Duration;

/// Why a duration argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration such as 90s, 30m or 24h")]
    NotANumber(String),
    #[error("{text:?}: unknown unit {unit:?}; use ms, s, m, h or d")]
    Unit { text: String, unit: String },
    #[error("{0:?} must be positive")]
    NotPositive(String),
    #[error("{0:?} is too long")]
    TooLong(String),
}

/// Parses `90s`, `30m`, `24h`, `7d` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| DurationError::NotANumber(text.to_owned()))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(DurationError::Unit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(DurationError::NotPositive(text.to_owned()));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| DurationError::TooLong(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(
            parse_duration("5y").unwrap_err().to_string(),
            "\"5y\": unknown unit \"y\"; use ms, s, m, h or d"
        );
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("99999999999999999999999d").is_err());
    }
}
