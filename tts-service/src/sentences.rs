//! Splits plain text into sentences, so the service can synthesize and stream audio one
//! sentence at a time (the first chunk goes out before the rest of the text is spoken).
//!
//! The rule is deliberately simple: a sentence ends at a run of `.`, `!` or `?` (with any
//! closing quotes or brackets right after it) that is followed by whitespace or the end of
//! the text. A `.` does not end a sentence after a common abbreviation (`Dr.`, `Mr.`, `e.g.`
//! ...) or a single letter (an initial: `J. Smith`). Line breaks alone do not split. Every
//! returned sentence is trimmed and non-empty; text without terminal punctuation is one
//! sentence.

/// Words that end in `.` without ending a sentence (compared case-insensitively, without the
/// final dot).
const ABBREVIATIONS: &[&str] = &[
    "dr", "mr", "mrs", "ms", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "fig",
    "no", "vol", "approx", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul",
    "aug", "sep", "sept", "oct", "nov", "dec",
];

/// The sentences of `text`, in order, trimmed; empty when the text is only whitespace.
pub fn split(text: &str) -> Vec<&str> {
    let mut sentences = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let (_, c) = chars[i];
        if !matches!(c, '.' | '!' | '?') {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut only_dots = true;
        while j < chars.len() && matches!(chars[j].1, '.' | '!' | '?') {
            only_dots &= chars[j].1 == '.';
            j += 1;
        }
        while j < chars.len() && matches!(chars[j].1, '"' | '\'' | ')' | ']' | '”' | '’' | '»')
        {
            j += 1;
        }
        let at_break = j == chars.len() || chars[j].1.is_whitespace();
        let end = chars.get(j).map_or(text.len(), |&(at, _)| at);
        if at_break && !(only_dots && j == i + 1 && is_abbreviation(&text[start..chars[i].0])) {
            push(&mut sentences, &text[start..end]);
            start = end;
        }
        i = j.max(i + 1);
    }
    push(&mut sentences, &text[start..]);
    sentences
}

fn push<'a>(sentences: &mut Vec<&'a str>, piece: &'a str) {
    let piece = piece.trim();
    if !piece.is_empty() {
        sentences.push(piece);
    }
}

/// Whether the word just before a `.` at the end of `before` is an abbreviation or initial.
fn is_abbreviation(before: &str) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("");
    let mut letters = word.chars();
    if let (Some(c), None) = (letters.next(), letters.next()) {
        return c.is_alphabetic() && c.is_uppercase();
    }
    ABBREVIATIONS.iter().any(|a| a.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_on_terminal_punctuation() {
        assert_eq!(
            split("Hello world. This is Arbiter."),
            ["Hello world.", "This is Arbiter."]
        );
        assert_eq!(split("Really?! Yes! No."), ["Really?!", "Yes!", "No."]);
        assert_eq!(split("One.\nTwo.  Three"), ["One.", "Two.", "Three"]);
    }

    #[test]
    fn keeps_abbreviations_numbers_and_initials() {
        assert_eq!(
            split("Dr. Smith is in. Mr. J. Doe left."),
            ["Dr. Smith is in.", "Mr. J. Doe left."]
        );
        assert_eq!(split("Pi is 3.14 today. Ok."), ["Pi is 3.14 today.", "Ok."]);
        assert_eq!(
            split("Bring fruit, e.g. apples. Then go."),
            ["Bring fruit, e.g. apples.", "Then go."]
        );
        assert_eq!(split("Wait... what?"), ["Wait...", "what?"]);
    }

    #[test]
    fn quotes_and_edges() {
        assert_eq!(
            split("He said \"Go.\" She went."),
            ["He said \"Go.\"", "She went."]
        );
        assert!(split("").is_empty());
        assert!(split("   \n ").is_empty());
        assert_eq!(split("no punctuation"), ["no punctuation"]);
        assert_eq!(split("Ünïcødé! ok."), ["Ünïcødé!", "ok."]);
    }
}
