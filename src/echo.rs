//! Input echoed back in an error message, cut to a short prefix.
//!
//! Errors name what the caller sent (`unknown GPU `x``), which is what makes them useful;
//! but a caller may send a megabyte where an id belongs, and echoing it whole makes the
//! reply larger than common clients accept in a header (grpcio: 16 KiB), so they see a
//! transport error instead of the answer. Everything echoed goes through [`echo`].

/// How many characters of an input an error repeats.
pub const ECHO_CHARS: usize = 64;

/// `input` as an error message may repeat it: at most [`ECHO_CHARS`] characters, control
/// characters escaped, and when cut, how long the whole was.
pub fn echo(input: &str) -> String {
    let mut out = String::new();
    for (kept, c) in input.chars().enumerate() {
        if kept == ECHO_CHARS {
            out.push_str(&format!("… ({} bytes in all)", input.len()));
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The longest status message a server sends: far under every client's header limit.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// `message` cut to [`MAX_MESSAGE_BYTES`] at a character boundary: the last guard, for a
/// message that echoes something [`echo`] did not see.
pub fn cap_message(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES - 32;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (message cut at {end} bytes)", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_input_is_echoed_whole_and_long_input_is_cut() {
        assert_eq!(echo("lease-1"), "lease-1");
        let long = "x".repeat(1 << 20);
        let echoed = echo(&long);
        assert!(echoed.starts_with(&"x".repeat(ECHO_CHARS)));
        assert!(echoed.ends_with("(1048576 bytes in all)"), "{echoed}");
        assert!(echoed.len() < 128);
        assert_eq!(echo("a\nb"), "a\\nb");
    }

    proptest! {
        #[test]
        fn an_echo_is_short_and_a_capped_message_fits(input in ".{0,300}") {
            prop_assert!(echo(&input).chars().count() <= ECHO_CHARS * 4 + 40);
            let message = input.repeat(20);
            prop_assert!(cap_message(message).len() <= MAX_MESSAGE_BYTES);
        }
    }
}
