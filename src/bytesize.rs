//! Byte counts written the way operators write them: `80GiB`, `24 GB`, `512MiB`, `1048576`.
//!
//! Binary (`KiB`, `MiB`, `GiB`, `TiB`) and decimal (`KB`, `MB`, `GB`, `TB`) units are both
//! accepted, because NVML reports binary sizes and GPU vendors advertise decimal ones.

use std::fmt;
use std::str::FromStr;

/// A number of bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Why a byte count could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ByteSizeError {
    #[error("empty byte size: write a number with a unit, such as 24GiB")]
    Empty,
    #[error("`{0}` is not a byte size: write a number with a unit, such as 24GiB or 512MiB")]
    Invalid(String),
    #[error("unknown unit `{unit}` in `{text}`: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")]
    Unit { text: String, unit: String },
    #[error("`{0}` is too large: at most 16 EiB")]
    Overflow(String),
}

const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("kb", 1_000),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("mb", 1_000_000),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("gb", 1_000_000_000),
    ("t", 1 << 40),
    ("tib", 1 << 40),
    ("tb", 1_000_000_000_000),
];

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ByteSizeError::Empty);
        }
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        if number.is_empty() {
            return Err(ByteSizeError::Invalid(text.to_string()));
        }
        let unit = unit.trim().to_ascii_lowercase();
        let factor = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, factor)| *factor)
            .ok_or_else(|| ByteSizeError::Unit {
                text: text.to_string(),
                unit: unit.clone(),
            })?;
        if let Ok(whole) = number.parse::<u64>() {
            return whole
                .checked_mul(factor)
                .map(ByteSize)
                .ok_or_else(|| ByteSizeError::Overflow(text.to_string()));
        }
        let value: f64 = number
            .parse()
            .map_err(|_| ByteSizeError::Invalid(text.to_string()))?;
        let bytes = value * factor as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(ByteSizeError::Overflow(text.to_string()));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

/// The binary units sizes are written in, largest first.
const WRITTEN_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

impl fmt::Display for ByteSize {
    /// The largest binary unit that keeps at least one whole unit, two decimals at most.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, size) in WRITTEN_UNITS {
            if self.0 >= *size {
                let value = self.0 as f64 / *size as f64;
                let text = format!("{value:.2}");
                let text = text.trim_end_matches('0').trim_end_matches('.');
                return write!(f, "{text}{name}");
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl From<u64> for ByteSize {
    fn from(bytes: u64) -> Self {
        ByteSize(bytes)
    }
}

impl ByteSize {
    /// The exact form: the largest binary unit that divides the size (`2GiB`, `640MiB`),
    /// else plain bytes. What files are written with, since the human form rounds.
    pub fn exact(&self) -> String {
        for (name, size) in WRITTEN_UNITS {
            if self.0 >= *size && self.0.is_multiple_of(*size) {
                return format!("{}{name}", self.0 / size);
            }
        }
        format!("{}B", self.0)
    }
}

impl serde::Serialize for ByteSize {
    /// Exact, so that a file written and read back holds the same size (the human form
    /// rounds to two decimals).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.exact())
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as \"24GiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a byte size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!("80GiB".parse(), Ok(ByteSize(80 << 30)));
        assert_eq!("24 GB".parse(), Ok(ByteSize(24_000_000_000)));
        assert_eq!("512mib".parse(), Ok(ByteSize(512 << 20)));
        assert_eq!("1.5GiB".parse(), Ok(ByteSize(3 << 29)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        assert_eq!("".parse::<ByteSize>(), Err(ByteSizeError::Empty));
        assert!(matches!(
            "12 parsecs".parse::<ByteSize>(),
            Err(ByteSizeError::Unit { .. })
        ));
        assert!(matches!(
            "GiB".parse::<ByteSize>(),
            Err(ByteSizeError::Invalid(_))
        ));
        assert!(matches!(
            "-3GiB".parse::<ByteSize>(),
            Err(ByteSizeError::Invalid(_))
        ));
        assert!(matches!(
            "99999999TiB".parse::<ByteSize>(),
            Err(ByteSizeError::Overflow(_))
        ));
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(ByteSize(80 << 30).to_string(), "80GiB");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert_eq!(ByteSize(612 << 20).to_string(), "612MiB");
    }

    #[test]
    fn files_get_the_exact_size_and_read_it_back() {
        for bytes in [0, 1, 1023, 168_064, 640 << 20, 3 << 30, 13_889_188_352] {
            let size = ByteSize(bytes);
            assert_eq!(
                size.exact().parse::<ByteSize>().unwrap(),
                size,
                "{}",
                size.exact()
            );
        }
        assert_eq!(ByteSize(640 << 20).exact(), "640MiB");
        assert_eq!(ByteSize(168_064).exact(), "168064B");
    }
}
