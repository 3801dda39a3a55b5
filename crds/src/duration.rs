//! Durations written as strings (`30s`, `5m`, `1h30m`, `250ms`) in the StreamJob.

use std::{borrow::Cow, fmt, str::FromStr, time};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The pattern the API server enforces; a subset of Go's `time.ParseDuration`, so CEL's
/// `duration()` reads the same strings.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// The longest duration a StreamJob may give, in the schema and when parsed: one year.
/// Every timer and deadline built from a duration stays far from overflowing.
pub const MAX_DURATION: &str = "8760h";
const MAX_SECONDS: u64 = 8760 * 3600;

/// A non-negative duration that keeps the text the user wrote, so that what the operator
/// copies into a ConfigMap is byte-for-byte what was applied.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Duration {
    text: String,
    value: time::Duration,
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseDurationError {
    /// Not a duration at all.
    #[error("invalid duration {0:?}: expected a number with a unit ms, s, m or h, like 30s, 5m or 1h30m")]
    Syntax(String),
    /// A duration, but longer than [`MAX_DURATION`].
    #[error("duration {0:?} is longer than the most allowed, {MAX_DURATION}")]
    TooLong(String),
}

impl Duration {
    /// The duration as a standard library value.
    pub fn get(&self) -> time::Duration {
        self.value
    }

    /// The text as written in the resource.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseDurationError::Syntax(text.to_owned());
        let too_long = || ParseDurationError::TooLong(text.to_owned());
        if text.is_empty() {
            return Err(error());
        }
        let mut total = time::Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(error)?;
            let (number, tail) = rest.split_at(number_len);
            let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let number: f64 = number.parse().map_err(|_| error())?;
            let seconds_per_unit = match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(error()),
            };
            let part = time::Duration::try_from_secs_f64(number * seconds_per_unit).map_err(|_| too_long())?;
            total = total.checked_add(part).filter(|t| t.as_secs_f64() <= MAX_SECONDS as f64).ok_or_else(too_long)?;
            rest = tail;
        }
        Ok(Self { text: text.to_owned(), value: total })
    }
}

impl From<time::Duration> for Duration {
    fn from(value: time::Duration) -> Self {
        // The largest unit that writes it whole: 1h, not 3600s.
        let millis = value.as_millis();
        let text = match [(3_600_000, "h"), (60_000, "m"), (1000, "s")]
            .into_iter()
            .find(|(unit, _)| millis > 0 && millis.is_multiple_of(*unit))
        {
            _ if millis == 0 => "0s".to_owned(),
            Some((unit, name)) => format!("{}{name}", millis / unit),
            None => format!("{millis}ms"),
        };
        Self { text, value }
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({})", self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": format!("duration(self) <= duration('{MAX_DURATION}')"),
                "message": format!("must be at most {MAX_DURATION}"),
            }],
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<time::Duration, ParseDurationError> {
        text.parse::<Duration>().map(|d| d.get())
    }

    #[test]
    fn parses_single_units() {
        assert_eq!(parse("250ms"), Ok(time::Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(time::Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(time::Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(time::Duration::from_secs(7200)));
    }

    #[test]
    fn parses_compound_and_fractional_durations() {
        assert_eq!(parse("1h30m"), Ok(time::Duration::from_secs(5400)));
        assert_eq!(parse("1.5s"), Ok(time::Duration::from_millis(1500)));
        assert_eq!(parse("0s"), Ok(time::Duration::ZERO));
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        for bad in ["", "30", "s", "5d", "-5s", "5 s", "1h-30m", "1..5s"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn refuses_durations_past_the_bound_without_overflowing() {
        assert_eq!(parse("8760h"), Ok(time::Duration::from_secs(MAX_SECONDS)));
        for long in ["8760h1ms", "9000h", "99999999999999999999h", "2562047788015215h2562047788015215h", "1e400s"] {
            assert!(parse(long).is_err(), "{long:?} should be refused");
        }
        assert!(matches!(parse("2562047788015215h2562047788015215h"), Err(ParseDurationError::TooLong(_))));
    }

    #[test]
    fn keeps_the_text_as_written() {
        let d: Duration = serde_json::from_str(r#""1h30m""#).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), r#""1h30m""#);
    }
}
