//! The timestamp format of every text time column in the session DBs and the central DB.
//!
//! Fixed width, UTC, millisecond precision (`2026-11-21T10:17:03.042Z`), so that text comparison
//! in SQL (`process_after <= :now`) orders the same way as time.

use chrono::{DateTime, SecondsFormat, Utc};

/// Formats `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (24 bytes, UTC).
pub fn format_ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The current time in the format of [`format_ts`].
pub fn now_ts() -> String {
    format_ts(Utc::now())
}

/// Parses a timestamp written by [`format_ts`] (or any RFC 3339 time with an offset).
///
/// Errors with the chrono parse error when `s` is not RFC 3339.
pub fn parse_ts(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn format_is_fixed_width_and_orders_as_text() {
        let a = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let b = a + chrono::Duration::milliseconds(7);
        let (fa, fb) = (format_ts(a), format_ts(b));
        assert_eq!(fa, "2026-01-02T03:04:05.000Z");
        assert_eq!(fa.len(), fb.len());
        assert!(fa < fb);
        assert_eq!(parse_ts(&fb).unwrap(), b);
    }
}
