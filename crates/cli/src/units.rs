//! Parsing of human sizes (`64KiB`, `1MiB`, `4096`) and durations (`5s`, `500ms`).

use std::time::Duration;

/// Parse a byte size: a number with an optional unit (B, K/KB/KiB, M/MB/MiB, G/GB/GiB;
/// all binary multiples, as memory sizes are).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size: use e.g. 4096, 64KiB, 1MiB"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit '{other}': use B, KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Parse a duration: a number with a unit (ms, s, m, h); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: use e.g. 500ms, 5s, 2m"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}': use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration '{s}' is out of range"))
}

/// Parse `COUNTxSIZE` (`1024x4KiB`): a number of buffers and the size of each.
pub fn parse_count_x_size(s: &str) -> Result<(u16, u32), String> {
    let bad = || format!("'{s}' is not COUNTxSIZE: use e.g. 1024x4KiB");
    let (count, size) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let count: u16 = count.trim().parse().map_err(|_| bad())?;
    let size = parse_size(size)?;
    let size = u32::try_from(size).map_err(|_| format!("buffer size '{s}' is too large"))?;
    Ok((count, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn counts_times_sizes() {
        assert_eq!(parse_count_x_size("1024x4KiB"), Ok((1024, 4096)));
        assert_eq!(parse_count_x_size("16X64"), Ok((16, 64)));
        assert!(parse_count_x_size("1024").is_err());
        assert!(parse_count_x_size("99999x4KiB").is_err());
        assert!(parse_count_x_size("4x8GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
