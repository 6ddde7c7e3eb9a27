//! Kubernetes resource quantities as exact integers of nano-units, enough for
//! comparing and summing capacities and counters without floating point.

use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A parsed quantity in units of 10⁻⁹. Values below one nano-unit round up,
/// as Kubernetes does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub i128);

const NANO: i128 = 1_000_000_000;
/// Beyond this magnitude (10³⁰ nano-units) a quantity is clamped; real capacities are far below.
const LIMIT: i128 = 1_000_000_000_000_000_000_000_000_000_000;

impl Nanos {
    /// Zero.
    pub const ZERO: Nanos = Nanos(0);

    /// Parses the Kubernetes quantity syntax: `<signed decimal><suffix>` where the suffix
    /// is a binary SI suffix (Ki … Ei), a decimal SI suffix (n u m "" k M G T P E) or a
    /// decimal exponent (e3, E-2).
    pub fn parse(s: &str) -> Option<Nanos> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        let (neg, rest) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, suffix) = rest.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        // (multiplier as numerator, power of ten) applied to the decimal number
        let (mul, exp10): (i128, i32) = match suffix {
            "" => (1, 0),
            "n" => (1, -9),
            "u" => (1, -6),
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
            e if e.starts_with(['e', 'E']) => {
                let v: i32 = e[1..].parse().ok()?;
                if !(-40..=40).contains(&v) {
                    return None;
                }
                (1, v)
            }
            _ => return None,
        };
        // digits as an integer D with scale: value = D * 10^-(frac len) * mul * 10^exp10 * 10^9 nanos
        let digits: String = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 30 {
            return Some(Nanos(if neg { -LIMIT } else { LIMIT }));
        }
        let d: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
        let scale = 9 + exp10 - frac_part.len() as i32;
        let mut v = d.checked_mul(mul)?;
        if scale >= 0 {
            for _ in 0..scale {
                v = v.saturating_mul(10);
                if v > LIMIT {
                    v = LIMIT;
                    break;
                }
            }
        } else {
            let div = 10i128.checked_pow((-scale) as u32);
            v = match div {
                Some(div) => (v + div - 1) / div,
                None => i128::from(v > 0),
            };
        }
        let v = v.min(LIMIT);
        Some(Nanos(if neg { -v } else { v }))
    }

    /// Parses a k8s-openapi quantity.
    pub fn of(q: &Quantity) -> Option<Nanos> {
        Nanos::parse(&q.0)
    }

    /// The value rounded up to an integer, like `Quantity.Value()`.
    pub fn value_ceil(self) -> i128 {
        let q = self.0.div_euclid(NANO);
        if self.0.rem_euclid(NANO) != 0 { q + 1 } else { q }
    }

    /// An integer quantity.
    pub fn from_int(v: i128) -> Nanos {
        Nanos(v.saturating_mul(NANO).clamp(-LIMIT, LIMIT))
    }

    /// Sum, clamped.
    pub fn plus(self, o: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(o.0).clamp(-LIMIT, LIMIT))
    }

    /// Difference, clamped.
    pub fn minus(self, o: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(o.0).clamp(-LIMIT, LIMIT))
    }

    /// The quantity as a k8s-openapi value in canonical-enough form (plain decimal).
    pub fn to_quantity(self) -> Quantity {
        Quantity(self.to_string())
    }
}

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (sign, a) = if self.0 < 0 { ("-", -self.0) } else { ("", self.0) };
        let int = a / NANO;
        let frac = a % NANO;
        if frac == 0 {
            write!(f, "{sign}{int}")
        } else if frac % 1_000_000 == 0 {
            write!(f, "{sign}{}m", int * 1000 + frac / 1_000_000)
        } else if frac % 1000 == 0 {
            write!(f, "{sign}{}u", int * 1_000_000 + frac / 1000)
        } else {
            write!(f, "{sign}{}n", a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(Nanos::parse("1"), Some(Nanos(NANO)));
        assert_eq!(Nanos::parse("1Ki"), Some(Nanos(1024 * NANO)));
        assert_eq!(Nanos::parse("1.5Gi"), Some(Nanos(1_610_612_736 * NANO)));
        assert_eq!(Nanos::parse("100m"), Some(Nanos(NANO / 10)));
        assert_eq!(Nanos::parse("1e3"), Some(Nanos(1000 * NANO)));
        assert_eq!(Nanos::parse("2k"), Nanos::parse("2000"));
        assert_eq!(Nanos::parse("-3"), Some(Nanos(-3 * NANO)));
        assert_eq!(Nanos::parse("0.1n"), Some(Nanos(1)));
        assert_eq!(Nanos::parse("1x"), None);
        assert_eq!(Nanos::parse(""), None);
        assert_eq!(Nanos::parse("."), None);
    }

    #[test]
    fn rounds_up_to_integer_value() {
        assert_eq!(Nanos::parse("1500m").unwrap().value_ceil(), 2);
        assert_eq!(Nanos::parse("2").unwrap().value_ceil(), 2);
        assert_eq!(Nanos::parse("1500m").unwrap().to_string(), "1500m");
    }
}
