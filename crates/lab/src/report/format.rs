//! How numbers, names and lists print in the report.

/// `98123.4` as `98,123`.
pub fn group(v: f64) -> String {
    let n = v.round();
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

/// Microseconds: one decimal under 100, grouped above.
pub fn fmt_us(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.1}")
    } else {
        group(v)
    }
}

/// CPU per request, microseconds.
pub fn fmt_cpu(v: f64) -> String {
    format!("{v:.2}")
}

/// Bytes in B, KiB or MiB.
pub fn fmt_bytes(b: f64) -> String {
    if b.abs() >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", b / (1024.0 * 1024.0))
    } else if b.abs() >= 10.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{} B", group(b))
    }
}

/// A concurrency level.
pub fn fmt_conns(c: usize) -> String {
    group(c as f64)
}

/// `v` rounded up to a multiple of `step`: a bound printed never below itself.
pub fn ceil_to(v: f64, step: f64) -> f64 {
    (v / step).ceil() * step
}

/// A bound on bytes, printed rounded up.
pub fn fmt_bytes_bound(b: f64) -> String {
    if b >= 10.0 * 1024.0 {
        fmt_bytes(ceil_to(b, 102.4))
    } else {
        fmt_bytes(b.ceil())
    }
}

/// `a`, `a and b`, `a, b and c`.
pub fn list(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// `a`, `a or b`, `a, b or c`.
pub fn either(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} or {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// Names in backticks, listed.
pub fn quoted(names: &[&str]) -> String {
    list(&names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>())
}

/// Levels listed: "100 and 1,000".
pub fn levels(cs: &[usize]) -> String {
    list(&cs.iter().map(|&c| fmt_conns(c)).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(1000.0), "1,000");
        assert_eq!(group(98_123.4), "98,123");
        assert_eq!(group(1_234_567.0), "1,234,567");
        assert_eq!(group(-1234.0), "-1,234");
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(65536.0), "64.0 KiB");
        assert_eq!(fmt_bytes(1.5 * 1024.0 * 1024.0), "1.50 MiB");
        assert_eq!(list(&["a".into(), "b".into(), "c".into()]), "a, b and c");
        assert_eq!(either(&["a".into(), "b".into()]), "a or b");
        assert_eq!(fmt_bytes_bound(6553.6), "6,554 B");
        assert_eq!(fmt_bytes_bound(10.0 * 1024.0 + 1.0), "10.1 KiB");
        assert_eq!(levels(&[100, 1_000]), "100 and 1,000");
    }
}
