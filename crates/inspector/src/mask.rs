//! Phone numbers as the inspector shows them: masked, but for their last four characters,
//! unless an operator reveals one (an audited action).

/// `address` with every character but its first (a `+`, or a channel prefix's first letter)
/// and last four replaced by `•`; a short address is masked whole.
pub(crate) fn mask(address: &str) -> String {
    let chars: Vec<char> = address.chars().collect();
    if chars.len() <= 6 {
        return "•".repeat(chars.len().max(4));
    }
    let keep_end = chars.len() - 4;
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i == 0 || i >= keep_end { *c } else { '•' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn a_number_shows_only_its_first_character_and_last_four_digits() {
        assert_eq!(mask("+15551234567"), "+•••••••4567");
        assert_eq!(mask("web:abcdef12"), "w•••••••ef12");
        assert_eq!(mask("+1234"), "•••••");
        assert_eq!(mask(""), "••••");
    }
}
