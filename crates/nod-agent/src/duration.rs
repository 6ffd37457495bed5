//! Durations as people write them in `nod` commands and config: `90`, `90s`, `10m`, `8h`, `1d`.

use std::time::Duration;

/// `90`, `90s`, `10m`, `8h`, `1d`: a duration in whole units.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 30s, 10m, 8h or 1d"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?} is not a duration; use e.g. 30s, 10m, 8h or 1d"))?;
    Ok(Duration::from_secs(secs))
}

/// The largest whole unit that divides `d`: `10m`, `8h`, `45s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
