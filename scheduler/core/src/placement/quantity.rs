//! Kubernetes resource quantities as integers.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The quantity in thousandths of its unit (`"500m"` → 500, `"2"` → 2000,
/// `"1Gi"` → 1073741824000). `None` when it does not parse.
pub fn milli(q: &Quantity) -> Option<i128> {
    parse_milli(&q.0)
}

fn parse_milli(s: &str) -> Option<i128> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    // Decimal exponent form: 1e3, 1E3
    let (num, exp10): (&str, i32) = match suffix {
        s2 if (s2.starts_with('e') || s2.starts_with('E')) && s2.len() > 1 => (num, s2[1..].parse().ok()?),
        _ => (num, 0),
    };
    let mult: (i128, i32) = if exp10 != 0 {
        (1, exp10)
    } else {
        match suffix {
            "" => (1, 0),
            "m" => (1, -3),
            "k" => (1, 3),
            "M" => (1, 6),
            "G" => (1, 9),
            "T" => (1, 12),
            "P" => (1, 15),
            "E" => (1, 18),
            "Ki" => (1 << 10, 0),
            "Mi" => (1 << 20, 0),
            "Gi" => (1 << 30, 0),
            "Ti" => (1 << 40, 0),
            "Pi" => (1 << 50, 0),
            "Ei" => (1 << 60, 0),
            _ => return None,
        }
    };
    let neg = num.starts_with('-');
    let num = num.trim_start_matches(['-', '+']);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits: String = format!("{int}{frac}");
    let mut v: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    // value = v * 10^(-frac.len()) * mult.0 * 10^mult.1, in milli: * 10^3
    let mut e = mult.1 + 3 - frac.len() as i32;
    v = v.checked_mul(mult.0)?;
    while e > 0 {
        v = v.checked_mul(10)?;
        e -= 1;
    }
    while e < 0 {
        // round up, as Kubernetes does for requests
        v = (v + 9) / 10;
        e += 1;
    }
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        for (s, want) in [
            ("2", 2000),
            ("500m", 500),
            ("0.5", 500),
            ("1Ki", 1024 * 1000),
            ("2Ti", 2 * (1i128 << 40) * 1000),
            ("1G", 1_000_000_000_000),
            ("1e3", 1_000_000),
            ("1.5Gi", 3 * (1i128 << 29) * 1000),
        ] {
            assert_eq!(parse_milli(s), Some(want), "{s}");
        }
        assert_eq!(parse_milli("lots"), None);
        assert_eq!(parse_milli(""), None);
    }
}
