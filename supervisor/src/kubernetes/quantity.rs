//! Kubernetes quantities (`8Gi`, `500M`, `1.5Gi`, `1e9`) as bytes, and bytes as quantities.
//!
//! A claim's consumed capacity arrives as a quantity string; the ResourceSlice's capacity
//! goes out as one. Fractions of a byte round up, as the API server's `Value()` does.

/// Why a quantity is not a number of bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a quantity of bytes: write it like 8Gi, 512Mi or 2000000000")]
pub struct BadQuantity(pub String);

/// The bytes a quantity names.
pub fn bytes(text: &str) -> Result<u64, BadQuantity> {
    let bad = || BadQuantity(arbiter::echo::echo(text));
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.is_empty() || number.matches('.').count() > 1 || number == "." {
        return Err(bad());
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    // value = digits * 10^-len(fraction) * multiplier, in exact integers.
    let digits: u128 = format!("{whole}{fraction}").parse().map_err(|_| bad())?;
    let (numerator, denominator): (u128, u128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: u32 = exponent[1..].parse().map_err(|_| bad())?;
            (10u128.checked_pow(power).ok_or_else(bad)?, 1)
        }
        _ => return Err(bad()),
    };
    let scale = 10u128.checked_pow(fraction.len() as u32).ok_or_else(bad)?;
    let top = digits.checked_mul(numerator).ok_or_else(bad)?;
    let bottom = scale * denominator;
    let value = top.div_ceil(bottom);
    u64::try_from(value).map_err(|_| bad())
}

/// `bytes` in the largest binary unit that divides it (`24Gi`, `1536Mi`, `1000`).
pub fn quantity(bytes: u64) -> String {
    for (suffix, unit) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes != 0 && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_forms_kubernetes_writes() {
        assert_eq!(bytes("8Gi"), Ok(8 << 30));
        assert_eq!(bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(bytes("500M"), Ok(500_000_000));
        assert_eq!(bytes("2000000000"), Ok(2_000_000_000));
        assert_eq!(bytes("1e9"), Ok(1_000_000_000));
        assert_eq!(bytes("+4Ki"), Ok(4096));
        assert_eq!(bytes("1500m"), Ok(2), "fractions of a byte round up");
        assert_eq!(bytes("0"), Ok(0));
    }

    #[test]
    fn nonsense_is_refused_saying_how_to_write_it() {
        for text in [
            "",
            "Gi",
            "-1Gi",
            "1.2.3",
            "8GB",
            "8 Gi",
            "1e99",
            "99999999999Ei",
        ] {
            let err = bytes(text).unwrap_err();
            assert!(err.to_string().contains("8Gi"), "{text}: {err}");
        }
    }

    #[test]
    fn quantities_are_written_in_the_largest_unit() {
        assert_eq!(quantity(24 << 30), "24Gi");
        assert_eq!(quantity(1536 << 20), "1536Mi");
        assert_eq!(quantity(1000), "1000");
        assert_eq!(quantity(0), "0");
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back(n in any::<u64>()) {
            prop_assert_eq!(bytes(&quantity(n)), Ok(n));
        }

        #[test]
        fn no_input_panics(text in ".{0,24}") {
            let _ = bytes(&text);
        }
    }
}
