//! Phonemes to visemes: the mouth shapes an avatar renderer shows in step with the audio.
//!
//! The 15 visemes are the Oculus (Meta) Lipsync set, itself derived from MPEG-4 facial
//! animation visemes; a renderer indexes its mouth shapes by [`Viseme::id`]:
//!
//! | id | name | mouth shape, as in            | eSpeak NG phonemes (English mnemonics)        |
//! |----|------|-------------------------------|-----------------------------------------------|
//! |  0 | sil  | rest, closed or neutral       | pauses `_` `_:` `_!` `_^_` `;`, anything unknown |
//! |  1 | PP   | lips pressed: **p**ut, **b**e, **m**e | `p` `b` `m`                           |
//! |  2 | FF   | lip on teeth: **f**ee, **v**an | `f` `v`                                      |
//! |  3 | TH   | tongue on teeth: **th**ink, **th**at | `T` `D`                                |
//! |  4 | DD   | tongue on ridge: **t**ip, **d**og | `t` `d` `t#` `d#` `?` (glottal stop)      |
//! |  5 | kk   | back of tongue: **c**at, **g**o, si**ng** | `k` `g` `N` `x`                   |
//! |  6 | CH   | lips forward: **ch**in, **j**am, **sh**e, mea**s**ure | `tS` `dZ` `S` `Z`     |
//! |  7 | SS   | teeth together: **s**ir, **z**oo | `s` `z`                                    |
//! |  8 | nn   | tongue up, lips apart: **n**o, **l**et | `n` `l` `@L` `n-` `l/`               |
//! |  9 | RR   | lips slightly rounded: **r**ed | `r` `r-` `R` `3` (r-coloured schwa)          |
//! | 10 | aa   | jaw open: f**a**ther, c**a**t, c**u**p | `a` `A:` `A` `a#` `V` `aI` `aU` `A@` `h` |
//! | 11 | E    | mid open: b**e**d, **a**bout, b**ir**d | `e` `E` `@` `eI` `e@` `3:`          |
//! | 12 | ih   | spread: s**i**t, s**ee**, **y**es | `I` `i` `i:` `I2` `I@` `i@` `j`           |
//! | 13 | oh   | rounded open: th**ou**ght, g**o** | `0` `O` `O:` `o` `OI` `oU` `O@` `o@`     |
//! | 14 | ou   | rounded tight: p**u**t, f**oo**d, **w**e | `U` `u` `u:` `U@` `w`              |
//!
//! Diphthongs take the shape of their first, more open part. `h` has no shape of its own; it
//! takes an open jaw. A symbol not in the table is looked up by its first character (so `l/2`
//! is `l`, `r/` is `r`), and failing that is `sil`.

use crate::espeak::Phoneme;

/// The viseme names, indexed by id.
pub const NAMES: [&str; 15] = [
    "sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou",
];

/// eSpeak NG phoneme mnemonic → viseme id (see the module docs).
pub const TABLE: &[(&str, u8)] = &[
    // sil
    ("_", 0),
    ("_:", 0),
    ("_!", 0),
    ("_^_", 0),
    (";", 0),
    // PP
    ("p", 1),
    ("b", 1),
    ("m", 1),
    // FF
    ("f", 2),
    ("v", 2),
    // TH
    ("T", 3),
    ("D", 3),
    // DD
    ("t", 4),
    ("d", 4),
    ("t#", 4),
    ("d#", 4),
    ("?", 4),
    // kk
    ("k", 5),
    ("g", 5),
    ("N", 5),
    ("x", 5),
    // CH
    ("tS", 6),
    ("dZ", 6),
    ("S", 6),
    ("Z", 6),
    // SS
    ("s", 7),
    ("z", 7),
    // nn
    ("n", 8),
    ("l", 8),
    ("@L", 8),
    ("n-", 8),
    ("l/", 8),
    // RR
    ("r", 9),
    ("r-", 9),
    ("R", 9),
    ("3", 9),
    // aa
    ("a", 10),
    ("A:", 10),
    ("A", 10),
    ("a#", 10),
    ("V", 10),
    ("aI", 10),
    ("aU", 10),
    ("A@", 10),
    ("h", 10),
    // E
    ("e", 11),
    ("E", 11),
    ("@", 11),
    ("eI", 11),
    ("e@", 11),
    ("3:", 11),
    // ih
    ("I", 12),
    ("i", 12),
    ("i:", 12),
    ("I2", 12),
    ("I@", 12),
    ("i@", 12),
    ("j", 12),
    // oh
    ("0", 13),
    ("O", 13),
    ("O:", 13),
    ("o", 13),
    ("OI", 13),
    ("oU", 13),
    ("O@", 13),
    ("o@", 13),
    // ou
    ("U", 14),
    ("u", 14),
    ("u:", 14),
    ("U@", 14),
    ("w", 14),
];

/// The silent, resting viseme.
pub const SIL: u8 = 0;

/// One stretch of the viseme timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viseme {
    /// Index into [`NAMES`], 0..15.
    pub id: u8,
    pub name: &'static str,
    pub start_ms: u32,
    pub duration_ms: u32,
}

/// The viseme id of an eSpeak NG phoneme mnemonic: exact match, else by its first character,
/// else [`SIL`].
pub fn viseme_of(symbol: &str) -> u8 {
    if let Some(&(_, id)) = TABLE.iter().find(|(s, _)| *s == symbol) {
        return id;
    }
    let mut utf8 = [0; 4];
    symbol
        .chars()
        .next()
        .and_then(|c| {
            let first: &str = c.encode_utf8(&mut utf8);
            TABLE.iter().find(|(s, _)| *s == first)
        })
        .map_or(SIL, |&(_, id)| id)
}

/// The viseme timeline of `phonemes` (in time order): from 0 ms to the end of the last
/// phoneme, contiguous, with no overlaps, consecutive equal visemes merged. Time before the
/// first phoneme, or in a gap between two, is `sil`; a phoneme that starts before the previous
/// one ends is cut to start there.
pub fn visemes(phonemes: &[Phoneme]) -> Vec<Viseme> {
    let mut out: Vec<Viseme> = Vec::new();
    let mut cursor = 0u32;
    let push = |out: &mut Vec<Viseme>, id: u8, start: u32, end: u32| {
        if end <= start {
            return;
        }
        match out.last_mut() {
            Some(last) if last.id == id => last.duration_ms = end - last.start_ms,
            _ => out.push(Viseme {
                id,
                name: NAMES[usize::from(id)],
                start_ms: start,
                duration_ms: end - start,
            }),
        }
    };
    for p in phonemes {
        let end = p.start_ms.saturating_add(p.duration_ms);
        if p.start_ms > cursor {
            push(&mut out, SIL, cursor, p.start_ms);
            cursor = p.start_ms;
        }
        if end > cursor {
            push(&mut out, viseme_of(&p.symbol), cursor, end);
            cursor = end;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::espeak::{DEFAULT_VOICE, Espeak, RATE_WPM_DEFAULT};

    fn name(symbol: &str) -> &'static str {
        NAMES[usize::from(viseme_of(symbol))]
    }

    #[test]
    fn table_maps_the_classes() {
        for (symbols, expected) in [
            (&["p", "b", "m"][..], "PP"),
            (&["f", "v"], "FF"),
            (&["T", "D"], "TH"),
            (&["t", "d"], "DD"),
            (&["k", "g"], "kk"),
            (&["tS", "dZ", "S", "Z"], "CH"),
            (&["s", "z"], "SS"),
            (&["n", "l"], "nn"),
            (&["r"], "RR"),
            (&["a", "A:", "aI", "aU", "V"], "aa"),
            (&["e", "E", "@", "eI", "e@", "3:"], "E"),
            (&["I", "i:", "I@", "j"], "ih"),
            (&["0", "O:", "OI", "oU"], "oh"),
            (&["U", "u:", "U@", "w"], "ou"),
            (&["_", "_:", ""], "sil"),
        ] {
            for s in symbols {
                assert_eq!(name(s), expected, "{s:?}");
            }
        }
    }

    #[test]
    fn unknown_symbols_fall_back() {
        assert_eq!(name("l/2"), "nn");
        assert_eq!(name("r/"), "RR");
        assert_eq!(name("%%"), "sil");
        assert_eq!(name("é"), "sil");
    }

    #[test]
    fn table_is_consistent() {
        for (i, (s, id)) in TABLE.iter().enumerate() {
            assert!(usize::from(*id) < NAMES.len());
            assert!(TABLE[..i].iter().all(|(t, _)| t != s), "{s} twice");
        }
    }

    fn ph(symbol: &str, start_ms: u32, duration_ms: u32) -> Phoneme {
        Phoneme {
            symbol: symbol.into(),
            start_ms,
            duration_ms,
        }
    }

    #[test]
    fn timeline_fills_gaps_merges_and_clips() {
        let v = visemes(&[
            ph("m", 10, 50),
            ph("b", 60, 40),
            ph("a", 120, 100),
            ph("s", 200, 50),
        ]);
        let spans: Vec<_> = v
            .iter()
            .map(|v| (v.name, v.start_ms, v.duration_ms))
            .collect();
        assert_eq!(
            spans,
            [
                ("sil", 0, 10),
                ("PP", 10, 90),
                ("sil", 100, 20),
                ("aa", 120, 100),
                ("SS", 220, 30)
            ]
        );
        assert!(visemes(&[]).is_empty());
    }

    #[test]
    fn real_speech_is_covered() {
        let speech = Espeak::get()
            .unwrap()
            .synthesize(
                "Hello world. This is Arbiter.",
                DEFAULT_VOICE,
                RATE_WPM_DEFAULT,
            )
            .unwrap();
        let v = visemes(&speech.phonemes);
        assert!(v.len() > 5, "{v:?}");
        let mut cursor = 0;
        for w in &v {
            assert_eq!(w.start_ms, cursor, "{v:?}");
            assert!(w.duration_ms > 0);
            cursor += w.duration_ms;
        }
        assert_eq!(cursor, speech.duration_ms());
        assert!(v.windows(2).all(|w| w[0].id != w[1].id));
        assert!(v.iter().any(|w| w.name != "sil"));
    }
}
