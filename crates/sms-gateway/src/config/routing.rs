//! Which soul a conversation gets: `LINES` maps the gateway's numbers and messaging services to
//! souls, and `SOUL` is the rule for a message to any other number — one soul, or a weighted
//! split of first contacts (`sage=90,pip=10`) for trying a new soul on some newcomers.
//!
//! The rule decides once, at a conversation's first contact; the store keeps the soul assigned
//! (`assigned_persona`), so later messages keep it whatever the rules say by then. A split is
//! decided by a hash of the person's number, so a webhook Twilio retries gets the same soul.

use std::collections::BTreeMap;

use soul_persistence::Line;

use super::reader::Reader;
use super::twilio::{is_sender_number, is_sid};

/// How a conversation's soul is chosen at its first contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Always this soul.
    Fixed(String),
    /// Each soul for a share of the numbers, by weight (in the order written; weights are
    /// positive).
    Split(Vec<(String, u32)>),
}

impl Rule {
    /// Every soul the rule names, in the order written.
    pub(crate) fn souls(&self) -> Vec<&str> {
        match self {
            Rule::Fixed(soul) => vec![soul.as_str()],
            Rule::Split(shares) => shares.iter().map(|(soul, _)| soul.as_str()).collect(),
        }
    }

    /// The soul for a first contact from `from`: the same for the same number, every time.
    pub(crate) fn pick(&self, from: &str) -> &str {
        match self {
            Rule::Fixed(soul) => soul,
            Rule::Split(shares) => {
                let total: u64 = shares.iter().map(|(_, weight)| u64::from(*weight)).sum();
                let mut point = fnv1a(from.as_bytes()) % total.max(1);
                for (soul, weight) in shares {
                    if point < u64::from(*weight) {
                        return soul;
                    }
                    point -= u64::from(*weight);
                }
                // Unreachable with positive weights: the point is below their sum.
                &shares[0].0
            }
        }
    }

    /// How a person reads the rule.
    pub(crate) fn describe(&self) -> String {
        match self {
            Rule::Fixed(soul) => soul.clone(),
            Rule::Split(shares) => {
                let total: u32 = shares.iter().map(|(_, weight)| weight).sum();
                let parts: Vec<String> = shares
                    .iter()
                    .map(|(soul, weight)| format!("{soul} {weight}/{total}"))
                    .collect();
                format!(
                    "{} of first contacts, by a hash of their number",
                    parts.join(", ")
                )
            }
        }
    }
}

/// FNV-1a (64 bits): a hash that is the same in every build and on every machine, unlike the
/// standard library's, so that two gateways, or one after an upgrade, split people alike.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which soul answers a message, by the line it was sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Routing {
    /// The gateway's lines (a number in E.164 form or a messaging service SID) and their souls.
    pub(crate) lines: BTreeMap<String, String>,
    /// The rule for a message to a number on no line (its conversation is on the default line);
    /// `None` refuses it. Unset `SOUL` means the default soul, unless `LINES` is set.
    pub(crate) default: Option<Rule>,
}

/// Where a message goes: its conversation's line, and the soul a first contact there gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    /// The line.
    pub(crate) line: Line,
    /// The soul for a first contact.
    pub(crate) soul: String,
}

impl Routing {
    /// The route of a message from `from` to the number `to`, through the messaging service
    /// `service` if any: the number's line, else the service's, else the default line under the
    /// default rule; `None` when nothing covers it.
    pub(crate) fn route(&self, from: &str, to: &str, service: Option<&str>) -> Option<Route> {
        let line = std::iter::once(to)
            .chain(service)
            .find_map(|line| self.lines.get_key_value(line));
        match line {
            Some((line, soul)) => Some(Route {
                line: Line::new(line.as_str()),
                soul: soul.clone(),
            }),
            None => self.default.as_ref().map(|rule| Route {
                line: Line::DEFAULT,
                soul: rule.pick(from).to_owned(),
            }),
        }
    }

    /// The default soul: the one new conversations of the terminal chat get, and the one that
    /// answers a conversation whose soul is no longer deployed. The default rule's first soul,
    /// else `fallback` (the build's default soul).
    pub(crate) fn default_soul<'a>(&'a self, fallback: &'a str) -> &'a str {
        self.default
            .as_ref()
            .and_then(|rule| rule.souls().first().copied())
            .unwrap_or(fallback)
    }

    /// Every soul the routing names, each once: the default soul first, then in order.
    pub(crate) fn souls<'a>(&'a self, fallback: &'a str) -> Vec<&'a str> {
        let mut souls = vec![self.default_soul(fallback)];
        let named = self
            .default
            .iter()
            .flat_map(Rule::souls)
            .chain(self.lines.values().map(String::as_str));
        for soul in named {
            if !souls.contains(&soul) {
                souls.push(soul);
            }
        }
        souls
    }
}

impl Reader<'_> {
    /// `SOUL` and `LINES`.
    pub(super) fn routing(&mut self, default_soul: &str) -> Routing {
        let lines = self
            .parsed(
                "LINES",
                "not a comma-separated list of line=soul, each line a number in E.164 form or a \
                 messaging service SID (MG and 32 hex digits)",
                parse_lines,
            )
            .unwrap_or_default();
        let default = self.parsed(
            "SOUL",
            "not a soul's name, or a comma-separated split such as sage=90,pip=10 (positive \
             whole weights)",
            parse_rule,
        );
        let default = match default {
            Some(rule) => Some(rule),
            None if lines.is_empty() => Some(Rule::Fixed(default_soul.to_owned())),
            None => None,
        };
        Routing { lines, default }
    }
}

/// `sage`, or `sage=90,pip=10`.
pub(crate) fn parse_rule(text: &str) -> Option<Rule> {
    if !text.contains('=') {
        return is_soul_name(text).then(|| Rule::Fixed(text.to_owned()));
    }
    let mut shares: Vec<(String, u32)> = Vec::new();
    for part in text.split(',') {
        let (soul, weight) = part.split_once('=')?;
        let (soul, weight) = (soul.trim(), weight.trim().parse::<u32>().ok()?);
        if !is_soul_name(soul) || weight == 0 || shares.iter().any(|(known, _)| known == soul) {
            return None;
        }
        shares.push((soul.to_owned(), weight));
    }
    // The weights are summed as u32 where they are shown.
    shares
        .iter()
        .try_fold(0_u32, |sum, (_, weight)| sum.checked_add(*weight))?;
    Some(Rule::Split(shares))
}

/// `+15550001111=sage, MG…=pip`.
pub(crate) fn parse_lines(text: &str) -> Option<BTreeMap<String, String>> {
    let mut lines = BTreeMap::new();
    for part in text.split(',') {
        let (line, soul) = part.split_once('=')?;
        let (line, soul) = (line.trim(), soul.trim());
        let line_ok = is_sender_number(line) || is_sid(line, "MG");
        if !line_ok
            || !is_soul_name(soul)
            || lines.insert(line.to_owned(), soul.to_owned()).is_some()
        {
            return None;
        }
    }
    Some(lines)
}

/// A soul's name as the registry spells them (whether this build has it is checked apart).
fn is_soul_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Rule {
        parse_rule(text).unwrap()
    }

    #[test]
    fn a_split_gives_each_number_one_soul_and_each_soul_its_share() {
        let rule = split("sage=90,pip=10");
        let numbers: Vec<String> = (0..2000).map(|n| format!("+1555{n:07}")).collect();
        let pip = numbers
            .iter()
            .filter(|number| rule.pick(number) == "pip")
            .count();
        // 10% of 2000 is 200; FNV-1a spreads consecutive numbers well within this band.
        assert!((140..=260).contains(&pip), "{pip} of 2000 got pip");
        for number in &numbers[..50] {
            assert_eq!(rule.pick(number), rule.pick(number));
        }
    }

    #[test]
    fn rules_and_lines_that_cannot_be_read_are_refused() {
        assert_eq!(parse_rule("pip"), Some(Rule::Fixed("pip".to_owned())));
        for bad in [
            "",
            "sage=0,pip=1",
            "sage=1,sage=2",
            "sage=x",
            "sa ge",
            "sage=1,",
        ] {
            assert_eq!(parse_rule(bad), None, "{bad:?}");
        }
        assert!(parse_lines("+15550001111=sage, MG0123456789abcdef0123456789abcdef=pip").is_some());
        for bad in [
            "15550001111=sage",
            "+15550001111",
            "+15550001111=sage,+15550001111=pip",
        ] {
            assert_eq!(parse_lines(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_message_is_routed_by_its_number_then_its_service_then_the_default_rule() {
        let service = "MG0123456789abcdef0123456789abcdef";
        let routing = Routing {
            lines: BTreeMap::from([
                ("+15550001111".to_owned(), "sage".to_owned()),
                (service.to_owned(), "pip".to_owned()),
            ]),
            default: None,
        };
        let route = routing.route("+14155550100", "+15550001111", Some(service));
        assert_eq!(
            route.map(|r| (r.line, r.soul)),
            Some((Line::new("+15550001111"), "sage".into()))
        );
        let route = routing.route("+14155550100", "+15550009999", Some(service));
        assert_eq!(
            route.map(|r| (r.line, r.soul)),
            Some((Line::new(service), "pip".into()))
        );
        assert_eq!(routing.route("+14155550100", "+15550009999", None), None);
        let routing = Routing {
            default: Some(Rule::Fixed("pip".to_owned())),
            ..routing
        };
        let route = routing.route("+14155550100", "+15550009999", None).unwrap();
        assert_eq!((route.line, route.soul.as_str()), (Line::DEFAULT, "pip"));
        assert_eq!(routing.souls("sage"), vec!["pip", "sage"]);
    }
}
