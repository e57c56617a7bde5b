//! SMS encoding and segments, cutting replies to `MAX_REPLY_SEGMENTS`, and splitting long
//! replies into messages.
//!
//! A message whose every character is in the GSM 03.38 alphabet travels as GSM-7: 160 septets
//! in one segment, 153 per segment once split (the rest carries the concatenation header), the
//! extension-table characters (`{ } [ ] ~ \ | ^ €` and form feed) taking two septets. One
//! character outside it makes the whole message UCS-2: 70 UTF-16 code units, 67 per segment
//! when split. Segments cost money and arrive slowly: [`cut_reply`] cuts a reply to the
//! configured number of segments (as the soul speaks it, through `reply_limit`, before it is
//! stored), and [`split_reply`] enforces Twilio's hard limit of 1,600 characters per message.
//!
//! Only std is used here: the fuzz crate compiles the configuration, which counts segments,
//! from its source.

/// The longest body Twilio accepts in one message (longer gets error 21617).
pub(crate) const MAX_BODY_CHARS: usize = 1600;

/// The most segments `MAX_REPLY_SEGMENTS` may allow: ten segments are at most 1,530 GSM-7
/// characters, so a reply cut to them is always one message.
pub(crate) const MAX_REPLY_SEGMENTS_CEILING: u8 = 10;

/// Septets (GSM-7) in one segment of a multi-segment message; no segment holds more than 160.
const MOST_CHARS_PER_SEGMENT: usize = 160;

/// A reply cut to a number of segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cut {
    /// What is sent.
    pub(crate) text: String,
    /// The segments the whole reply would have taken.
    pub(crate) segments_before: usize,
    /// The segments `text` takes.
    pub(crate) segments_after: usize,
}

/// `body` followed by `ending`, cut to at most `max_segments` segments; `None` when it fits.
///
/// The body is cut at the end of its last sentence that fits (`.`, `!` or `?` before white
/// space, or a line break), with `ending` kept whole after it — or alone, when no sentence of
/// the body fits. When `ending` is too long by itself, or empty, the whole reply is cut at its
/// last sentence that fits, else at its last word, else at a character, as [`split_reply`]
/// splits. White space at a cut is dropped.
pub(crate) fn cut_reply(body: &str, ending: &str, max_segments: usize) -> Option<Cut> {
    let max_segments = max_segments.max(1);
    let whole = format!("{body}{ending}");
    let segments_before = segment_count(&whole);
    if segments_before <= max_segments {
        return None;
    }
    let ending_alone = ending.trim_start();
    let text = if !ending_alone.is_empty() && segment_count(ending_alone) <= max_segments {
        let limit = longest_fitting(body, ending, max_segments);
        match sentence_end(body, limit).map(|cut| body[..cut].trim_end()) {
            Some(kept) => format!("{kept}{ending}"),
            None => ending_alone.to_owned(),
        }
    } else {
        let limit = longest_fitting(&whole, "", max_segments);
        let cut = sentence_end(&whole, limit)
            .or_else(|| word_end(&whole, limit))
            .unwrap_or(limit);
        whole[..cut].trim_end().to_owned()
    };
    Some(Cut {
        segments_after: segment_count(&text),
        text,
        segments_before,
    })
}

/// The byte length of the longest beginning of `text` that, followed by `ending`, fits
/// `max_segments` segments.
fn longest_fitting(text: &str, ending: &str, max_segments: usize) -> usize {
    // No segment holds more than 160 characters, so only that many can matter.
    let most = max_segments.saturating_mul(MOST_CHARS_PER_SEGMENT);
    let bound = text.char_indices().nth(most).map_or(text.len(), |(i, _)| i);
    let ends: Vec<usize> = text[..bound]
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .collect();
    // A longer beginning never takes fewer segments (more units, or a switch to UCS-2), so
    // the beginnings that fit come first.
    let fitting = ends.partition_point(|&end| {
        segment_count(&format!("{}{ending}", &text[..end])) <= max_segments
    });
    fitting.checked_sub(1).map_or(0, |last| ends[last])
}

/// How a message is encoded on the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// The GSM 03.38 7-bit alphabet.
    Gsm7,
    /// UTF-16 (UCS-2 on older handsets).
    Ucs2,
}

/// The GSM 03.38 basic character set, in table order (the escape at 0x1B omitted).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                          ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The GSM 03.38 extension table: each costs an escape plus itself, two septets.
const GSM7_EXTENSION: &str = "\u{0C}^{}\\[~]|€";

/// Septets `c` takes in GSM-7, or `None` when it has no GSM-7 form.
fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The encoding `text` needs: GSM-7 when every character has a GSM-7 form.
pub(crate) fn encoding(text: &str) -> Encoding {
    if text.chars().all(|c| gsm7_septets(c).is_some()) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// How many segments `text` is sent as. An empty message still takes one.
///
/// Segments are filled greedily without splitting an escape pair or a surrogate pair, as
/// handsets reassemble them, so the count can exceed `ceil(units / 153)` by the odd unit.
pub(crate) fn segment_count(text: &str) -> usize {
    let (single, per_part, units): (usize, usize, Vec<usize>) = match encoding(text) {
        Encoding::Gsm7 => (
            160,
            153,
            text.chars().map(|c| gsm7_septets(c).unwrap_or(1)).collect(),
        ),
        Encoding::Ucs2 => (70, 67, text.chars().map(char::len_utf16).collect()),
    };
    let total: usize = units.iter().sum();
    if total <= single {
        return 1;
    }
    let mut segments = 1;
    let mut used = 0;
    for unit in units {
        if used + unit > per_part {
            segments += 1;
            used = 0;
        }
        used += unit;
    }
    segments
}

/// Splits `text` into messages of at most `max_chars` each, in order.
///
/// Lengths are counted in UTF-16 code units (an emoji counts two), which is at least the
/// character count, so no part exceeds the limit however Twilio counts. Parts end at the last
/// sentence end (`.`, `!` or `?` followed by whitespace) or line break that fits, else at the
/// last space, else at the last character that fits; the whitespace where a split happens is
/// dropped, as is whitespace around the whole text, and nothing else is lost or repeated.
/// Empty or blank text gives no parts. `max_chars` below 2 is taken as 2, so that any one
/// character fits. Only the last-resort character split can separate the characters of one
/// grapheme (a flag, a family emoji): text that long without a space is not a real reply.
pub(crate) fn split_reply(text: &str, max_chars: usize) -> Vec<String> {
    split_ranges(text, max_chars)
        .into_iter()
        .map(|range| text[range].to_owned())
        .collect()
}

/// The byte ranges of `text` that [`split_reply`] returns.
fn split_ranges(text: &str, max_chars: usize) -> Vec<std::ops::Range<usize>> {
    let max_units = max_chars.max(2);
    let mut parts = Vec::new();
    let mut start = skip_whitespace(text, 0);
    let end = start + text[start..].trim_end().len();
    while start < end {
        let rest = &text[start..end];
        let fits = longest_prefix(rest, max_units);
        let cut = if fits == rest.len() {
            fits
        } else {
            // The split point is a byte offset into `rest`, always > 0 so each part progresses.
            sentence_end(rest, fits)
                .or_else(|| word_end(rest, fits))
                .unwrap_or(fits)
        };
        let part_end = start + rest[..cut].trim_end().len();
        parts.push(start..part_end);
        start = skip_whitespace(text, start + cut);
    }
    parts
}

/// The byte length of the longest prefix of `text` within `max_units` UTF-16 code units;
/// never zero for non-empty text when `max_units >= 2`.
fn longest_prefix(text: &str, max_units: usize) -> usize {
    let mut units = 0;
    for (index, c) in text.char_indices() {
        units += c.len_utf16();
        if units > max_units {
            return index;
        }
    }
    text.len()
}

/// The end of the last sentence within `text[..limit]`: just after `.`, `!` or `?` followed by
/// whitespace (which may lie just past the limit), or just after a line break.
fn sentence_end(text: &str, limit: usize) -> Option<usize> {
    let mut best = None;
    let mut chars = text.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        let after = index + c.len_utf8();
        if after > limit {
            break;
        }
        let next_is_space = chars.peek().is_some_and(|(_, next)| next.is_whitespace());
        if (matches!(c, '.' | '!' | '?') && next_is_space) || c == '\n' {
            best = Some(after);
        }
    }
    // A line break at the very start would give an empty part; whitespace is skipped instead.
    best.filter(|&end| !text[..end].trim().is_empty())
}

/// The start of the last whitespace run within `text[..=limit]` that has text before it.
fn word_end(text: &str, limit: usize) -> Option<usize> {
    text[..limit]
        .char_indices()
        .chain(text[limit..].chars().next().map(|c| (limit, c)))
        .filter(|(_, c)| c.is_whitespace())
        .map(|(index, _)| index)
        .rfind(|&index| !text[..index].trim().is_empty())
}

fn skip_whitespace(text: &str, from: usize) -> usize {
    from + (text[from..].len() - text[from..].trim_start().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(text: &str) -> usize {
        text.encode_utf16().count()
    }

    #[test]
    fn detects_the_encoding() {
        assert_eq!(
            encoding("Hello, world! @£$¥ {ok} [x] ~|^€ \\"),
            Encoding::Gsm7
        );
        assert_eq!(
            encoding("ÄÖÑÜäöñüà ΔΦΓΛΩΠΨΣΘΞ ¡¿§ ÆæßÉ\r\n"),
            Encoding::Gsm7
        );
        assert_eq!(encoding(""), Encoding::Gsm7);
        for text in ["Hello 😀", "naïve", "`backtick`", "Ё", "“quotes”", "ç"] {
            assert_eq!(encoding(text), Encoding::Ucs2, "{text}");
        }
    }

    #[test]
    fn gsm7_alphabet_has_128_minus_escape() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        assert_eq!(GSM7_EXTENSION.chars().count(), 10);
    }

    #[test]
    fn counts_gsm7_segments() {
        assert_eq!(segment_count(""), 1);
        assert_eq!(segment_count(&"a".repeat(160)), 1);
        assert_eq!(segment_count(&"a".repeat(161)), 2);
        assert_eq!(segment_count(&"a".repeat(306)), 2);
        assert_eq!(segment_count(&"a".repeat(307)), 3);
        // Extension characters take two septets.
        assert_eq!(segment_count(&"€".repeat(80)), 1);
        assert_eq!(segment_count(&"€".repeat(81)), 2);
        // An escape pair is never split: 152 septets then '€' starts the second segment.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(10));
        assert_eq!(segment_count(&text), 2);
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(151));
        assert_eq!(segment_count(&text), 2);
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(segment_count(&text), 3);
    }

    #[test]
    fn counts_ucs2_segments() {
        assert_eq!(segment_count(&"ж".repeat(70)), 1);
        assert_eq!(segment_count(&"ж".repeat(71)), 2);
        assert_eq!(segment_count(&"ж".repeat(134)), 2);
        assert_eq!(segment_count(&"ж".repeat(135)), 3);
        // One non-GSM character makes every character count in UCS-2.
        assert_eq!(segment_count(&format!("{}ж", "a".repeat(69))), 1);
        assert_eq!(segment_count(&format!("{}ж", "a".repeat(70))), 2);
        // An emoji is two UTF-16 units and is not split across segments.
        assert_eq!(segment_count(&"😀".repeat(35)), 1);
        assert_eq!(segment_count(&"😀".repeat(36)), 2);
        let text = format!("{}😀", "ж".repeat(66));
        assert_eq!(segment_count(&format!("{text}{}", "ж".repeat(10))), 2);
    }

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split_reply("Hello there.", 1600), ["Hello there."]);
        assert_eq!(split_reply("  padded \n", 1600), ["padded"]);
        assert!(split_reply("", 1600).is_empty());
        assert!(split_reply(" \n\t ", 1600).is_empty());
    }

    #[test]
    fn splits_at_sentences_then_words_then_characters() {
        assert_eq!(
            split_reply("One two. Three four! Five six?", 20),
            ["One two. Three four!", "Five six?"]
        );
        assert_eq!(
            split_reply("First line\nsecond line here", 20),
            ["First line", "second line here"]
        );
        assert_eq!(
            split_reply("alpha beta gamma delta", 11),
            ["alpha beta", "gamma delta"]
        );
        assert_eq!(split_reply("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        // A decimal point is not a sentence end.
        assert_eq!(
            split_reply("Pi is 3.14 ok now", 12),
            ["Pi is 3.14", "ok now"]
        );
        // Emoji count two units and are never cut in half.
        assert_eq!(split_reply("😀😀😀", 5), ["😀😀", "😀"]);
    }

    #[test]
    fn sentence_end_beats_a_later_word_end() {
        assert_eq!(
            split_reply("One two. Three four five", 20),
            ["One two.", "Three four five"]
        );
    }

    #[test]
    fn the_limit_is_inclusive() {
        let exact = "a".repeat(1600);
        assert_eq!(split_reply(&exact, MAX_BODY_CHARS), vec![exact.as_str()]);
        let over = format!("{exact}b");
        let parts = split_reply(&over, MAX_BODY_CHARS);
        assert_eq!(parts, [exact, "b".to_owned()]);
    }

    #[test]
    fn tiny_limits_still_progress() {
        assert_eq!(split_reply("ab😀", 0), ["ab", "😀"]);
        assert_eq!(split_reply("a b", 1), ["a", "b"]);
    }

    #[test]
    fn a_reply_within_the_limit_is_not_cut() {
        assert_eq!(cut_reply(&"a".repeat(306), "", 2), None);
        assert_eq!(cut_reply("Hi.", "\n\nCall 988.", 1), None);
    }

    #[test]
    fn a_long_reply_is_cut_where_a_sentence_ends() {
        let sentence = "This sentence is here to take up some room in a reply. ";
        let text = sentence.repeat(100);
        let cut = cut_reply(text.trim_end(), "", 3).unwrap();
        assert!(cut.text.ends_with("reply."), "{:?}", cut.text);
        assert!(text.starts_with(&cut.text));
        assert_eq!(cut.segments_after, segment_count(&cut.text));
        assert!(cut.segments_after <= 3);
        // As many whole sentences as three segments hold: 459 septets, 55 characters each.
        assert_eq!(cut.text.len(), 8 * 55 - 1);
        assert_eq!(cut.segments_before, segment_count(text.trim_end()));
    }

    #[test]
    fn ucs2_replies_are_cut_by_their_own_segment_size() {
        // The curly apostrophe has no GSM-7 form: 67 characters a segment.
        let text = "C’est très bien, merci. ".repeat(40);
        let cut = cut_reply(text.trim_end(), "", 2).unwrap();
        assert_eq!(encoding(&cut.text), Encoding::Ucs2);
        assert!(cut.segments_after <= 2);
        assert_eq!(cut.text, "C’est très bien, merci. ".repeat(5).trim_end());
    }

    #[test]
    fn without_a_sentence_end_the_cut_is_at_a_word_then_a_character() {
        let words = "word ".repeat(200);
        let cut = cut_reply(words.trim_end(), "", 1).unwrap().text;
        assert!(cut.ends_with("word") && cut.len() <= 160, "{cut:?}");
        let letters = "x".repeat(1000);
        assert_eq!(cut_reply(&letters, "", 1).unwrap().text, "x".repeat(160));
    }

    #[test]
    fn the_ending_is_kept_whole_and_the_body_cut_at_a_sentence() {
        let body = "You matter to me. I am glad you said it. ".repeat(20);
        let ending = "\n\nIf you are in danger or thinking about hurting yourself, please call \
                      or text 988 (Suicide & Crisis Lifeline, US) or your local emergency number.";
        let cut = cut_reply(body.trim_end(), ending, 2).unwrap();
        assert!(cut.text.ends_with(ending), "{:?}", cut.text);
        let kept = cut.text.strip_suffix(ending).unwrap();
        assert!(
            kept.starts_with("You matter to me.") && kept.ends_with('.'),
            "{kept:?}"
        );
        assert!(cut.segments_after <= 2);
        // Room for a word of the body but no sentence: the ending alone, without its break.
        let cut = cut_reply(body.trim_end(), ending, 1).unwrap();
        assert_eq!(cut.text, ending.trim_start());
    }

    #[test]
    fn an_ending_too_long_alone_is_cut_with_the_rest() {
        let ending = format!("\n\n{}", "Call us. ".repeat(40));
        let cut = cut_reply("Hello there.", &ending, 1).unwrap();
        assert!(cut.text.starts_with("Hello there.\n\nCall us."));
        assert!(cut.segments_after <= 1);
    }

    #[test]
    fn megabytes_are_cut_to_a_few_segments() {
        let text = "Lorem ipsum dolor sit amet. ".repeat(200_000);
        let cut = cut_reply(&text, "", 5).unwrap();
        assert!(cut.segments_after <= 5);
        assert!(cut.segments_before > 30_000);
        assert_eq!(split_reply(&cut.text, MAX_BODY_CHARS).len(), 1);
    }

    /// Over generated text and every allowed limit: the cut fits, is a beginning of the text,
    /// and says something whenever the text does.
    #[test]
    fn cut_properties_hold_for_generated_text() {
        let mut rng = fastrand::Rng::with_seed(153);
        for round in 0..300 {
            let text = generated_text(&mut rng);
            let text = text.trim();
            let max = rng.usize(1..=usize::from(MAX_REPLY_SEGMENTS_CEILING));
            match cut_reply(text, "", max) {
                None => assert!(segment_count(text) <= max, "round {round}"),
                Some(cut) => {
                    assert!(cut.segments_after <= max, "round {round}");
                    assert!(text.starts_with(&cut.text), "round {round}");
                    assert!(!cut.text.trim().is_empty(), "round {round}: {text:?}");
                    assert!(cut.text.encode_utf16().count() <= MAX_BODY_CHARS);
                }
            }
        }
    }

    fn generated_text(rng: &mut fastrand::Rng) -> String {
        const PIECES: &[&str] = &[
            "word",
            "a",
            "longerword",
            " ",
            " ",
            "  ",
            ". ",
            "! ",
            "? ",
            ".",
            "\n",
            "\n\n",
            "é",
            "日本語",
            "😀",
            "👩‍👩‍👧",
            "€",
            "\t",
            "3.14",
            "x",
        ];
        let pieces = rng.usize(0..400);
        (0..pieces)
            .map(|_| PIECES[rng.usize(..PIECES.len())])
            .collect()
    }

    /// Over generated text: parts are in order, within the limit, non-empty, trimmed, and the
    /// text between and around them is whitespace only, so nothing is lost or repeated.
    #[test]
    fn split_properties_hold_for_generated_text() {
        let mut rng = fastrand::Rng::with_seed(1600);
        for round in 0..2000 {
            let text = generated_text(&mut rng);
            let limit = rng.usize(1..200);
            let ranges = split_ranges(&text, limit);
            let parts = split_reply(&text, limit);
            assert_eq!(parts.len(), ranges.len());
            let mut cursor = 0;
            for (range, part) in ranges.iter().zip(&parts) {
                assert!(range.start >= cursor, "round {round}: overlap");
                assert!(
                    text[cursor..range.start].trim().is_empty(),
                    "round {round}: lost {:?}",
                    &text[cursor..range.start]
                );
                assert_eq!(&text[range.clone()], part);
                assert!(!part.is_empty(), "round {round}: empty part");
                assert_eq!(part.trim(), part, "round {round}: untrimmed part");
                assert!(
                    units(part) <= limit.max(2),
                    "round {round}: {} units over {limit}",
                    units(part)
                );
                cursor = range.end;
            }
            assert!(text[cursor..].trim().is_empty(), "round {round}: lost tail");
            let rejoined: String = parts.concat();
            let visible = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            assert_eq!(visible(&rejoined), visible(&text), "round {round}");
        }
    }

    /// A part that could have ended at a sentence does.
    #[test]
    fn prefers_sentence_ends_when_one_fits() {
        let mut rng = fastrand::Rng::with_seed(42);
        for _ in 0..200 {
            let sentences: Vec<String> = (0..rng.usize(2..20))
                .map(|_| format!("{}.", "word ".repeat(rng.usize(1..8)).trim_end()))
                .collect();
            let text = sentences.join(" ");
            for part in split_reply(&text, 60) {
                assert!(part.ends_with('.'), "{part:?} in {text:?}");
            }
        }
    }
}
