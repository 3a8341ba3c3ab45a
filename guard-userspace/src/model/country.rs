//! Countries: expands an ISO 3166-1 alpha-2 code (`country = "SL"` in a rule) into the
//! international calling-code prefixes that reach that country, and labels a prefix for display.
//!
//! The data comes from the `phonenumber` crate (Google libphonenumber metadata) and the English
//! names from `isocountry`; nothing here is hand-typed. Prefixes are digit strings without `+`.
//!
//! - A country whose calling code no other region uses gets the bare code (`SL` → `232`).
//! - A country sharing its code (NANP `+1`, `+7`, `+44`, `+39`, ...) gets the code followed by
//!   the expansion of its metadata's leading-digits pattern (`JM` → `1658`, `1876`). The pattern
//!   is parsed by `regex-syntax` (Unicode off) and expanded only when it matches a finite set of
//!   digit strings (digits, classes, `\d`, groups, `|`, bounded counts `{n}`/`{n,m}`; no
//!   anchors, `*`/`+`, or other characters), at most [`MAX_PREFIXES`] prefixes, and the result
//!   must not overlap another region's expansion.
//! - A country sharing its code without leading digits (`US`, `CA`, `GB`, `IT`, ...) cannot be
//!   expressed safely: blocking the code would block the other regions too, so it is an error
//!   that tells the operator to write prefix rules instead.
//!
//! Where a region with leading digits shares its code with one without (`MA`/`EH`, `VA`/`IT`,
//! `RU`/`KZ` partly), numbers of the latter inside the expanded ranges are attributed to the
//! former, exactly as libphonenumber attributes them.
//!
//! The dataset is indexed once, on first use, and shared by every later call.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::OnceLock,
};

use guard_common::Domain;
use phonenumber::metadata::DATABASE;
use regex_syntax::{
    ParserBuilder,
    hir::{Class, Hir, HirKind, Literal},
};
use thiserror::Error;

use super::rules::Prefix;

/// Upper bound on the number of prefixes one leading-digits pattern may expand to (also bounds
/// every intermediate set while expanding).
pub const MAX_PREFIXES: usize = 1_000;

/// Deepest nesting (groups, repetitions, classes) the leading-digits parser accepts.
const MAX_NESTING: u32 = 32;

/// Longest digit string the leading-digits expander builds (E.164 numbers have at most 15).
const MAX_DIGITS: usize = 32;

/// Largest repetition count (`{n}`, `{n,m}`) the leading-digits expander accepts; E.164
/// numbers have at most 15 digits.
const MAX_REPEAT: u32 = 16;

/// Region id the metadata uses for non-geographic codes (`+800`, `+870`, `+881`, ...).
const NON_GEOGRAPHIC_ID: &str = "001";

/// A country expanded into the international prefixes that reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Country {
    /// ISO 3166-1 alpha-2 code, upper case (`SL`). A few metadata regions that are not
    /// ISO 3166-1 countries are accepted too: `AC` (Ascension), `TA` (Tristan da Cunha) and
    /// `XK` (Kosovo).
    pub alpha2: String,
    /// English short name from ISO 3166-1 (`Sierra Leone`); the alpha-2 code itself for a region
    /// that ISO 3166-1 does not name.
    pub name: String,
    /// The international calling code (`232`).
    pub calling_code: u16,
    /// International prefixes (digits, no `+`), sorted, deduplicated and minimal: none is a
    /// prefix of another, and no ten siblings `p0`..`p9` remain where `p` would do.
    pub prefixes: Vec<String>,
}

/// Why a country cannot be turned into prefixes.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CountryError {
    /// Not an ISO 3166-1 alpha-2 code: it must be exactly two ASCII letters.
    #[error(
        "country `{0}`: expected an ISO 3166-1 alpha-2 code of exactly two ASCII letters (e.g. `SL`)"
    )]
    Malformed(String),
    /// Two letters, but neither a country of ISO 3166-1 nor a region of the calling-code data.
    #[error("unknown country `{0}`: not an ISO 3166-1 alpha-2 code with a calling code")]
    Unknown(String),
    /// An ISO 3166-1 country that has no international calling code of its own (e.g. `AQ`).
    #[error("country `{alpha2}` ({name}) has no international calling code in the dataset")]
    NoCallingCode { alpha2: String, name: String },
    /// The country shares its calling code and the data cannot tell its numbers apart.
    #[error(
        "country `{alpha2}` ({name}) cannot be expressed safely: it shares calling code \
         +{calling_code} with {} and the dataset gives no leading digits to tell it apart; \
         blocking +{calling_code} would also hit those; write prefix rules instead",
        .others.join(", ")
    )]
    Shared {
        alpha2: String,
        name: String,
        calling_code: u16,
        /// The other regions using the code, alpha-2, sorted.
        others: Vec<String>,
    },
    /// The country's leading digits cannot be turned into a safe prefix set.
    #[error(
        "country `{alpha2}` ({name}) cannot be expressed safely as prefixes of \
         +{calling_code}: {reason}; write prefix rules instead"
    )]
    Unsupported {
        alpha2: String,
        name: String,
        calling_code: u16,
        reason: String,
    },
}

/// Expands an ISO 3166-1 alpha-2 code into its international prefixes.
///
/// The code must be exactly two ASCII letters; lower case is accepted and upper-cased (`sl` is
/// `SL`), nothing else is trimmed or corrected.
pub fn expand(alpha2: &str) -> Result<Country, CountryError> {
    if alpha2.len() != 2 || !alpha2.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(CountryError::Malformed(alpha2.to_string()));
    }
    let id = alpha2.to_ascii_uppercase();
    let index = index();
    let Some((group, region)) = index
        .by_alpha2
        .get(&id)
        .and_then(|code| index.groups.get(code))
        .and_then(|group| Some((group, group.regions.iter().find(|r| r.id == id)?)))
    else {
        return Err(match isocountry::CountryCode::for_alpha2(&id) {
            Ok(country) => CountryError::NoCallingCode {
                alpha2: id,
                name: country.name().to_string(),
            },
            Err(_) => CountryError::Unknown(alpha2.to_string()),
        });
    };

    let code = group.code;
    let others: Vec<&Region> = group.regions.iter().filter(|r| r.id != id).collect();
    let country = |prefixes| Country {
        alpha2: id.clone(),
        name: region.name.clone(),
        calling_code: code,
        prefixes,
    };
    let unsupported = |reason| CountryError::Unsupported {
        alpha2: id.clone(),
        name: region.name.clone(),
        calling_code: code,
        reason,
    };

    if others.is_empty() {
        return Ok(country(vec![code.to_string()]));
    }
    let national = match &region.leading {
        None => {
            let mut others: Vec<String> = others.iter().map(|r| r.id.clone()).collect();
            others.sort();
            return Err(CountryError::Shared {
                alpha2: id.clone(),
                name: region.name.clone(),
                calling_code: code,
                others,
            });
        }
        Some(Err(reason)) => return Err(unsupported(reason.to_string())),
        Some(Ok(national)) => national,
    };
    for other in &others {
        match &other.leading {
            // A region without leading digits takes what the others do not claim.
            None => {}
            Some(Err(theirs)) => {
                return Err(unsupported(format!(
                    "cannot check that its prefixes miss those of `{}`, whose {theirs}",
                    other.id
                )));
            }
            Some(Ok(theirs)) => {
                if let Some((ours, theirs)) = overlap(national, theirs) {
                    return Err(unsupported(format!(
                        "its prefix +{code}{ours} overlaps +{code}{theirs} of `{}`",
                        other.id
                    )));
                }
            }
        }
    }
    Ok(country(
        national.iter().map(|n| format!("{code}{n}")).collect(),
    ))
}

/// The label of a rule prefix: its country (or network) name, `all international` for `+`,
/// `national dial string` for a prefix without `+`.
pub fn prefix_label(p: &Prefix) -> String {
    match p.domain {
        Domain::International if !p.digits.is_empty() => {
            label_for_prefix(&p.digit_string()).unwrap_or_default()
        }
        Domain::International => "all international".into(),
        Domain::National => "national dial string".into(),
    }
}

/// The country label of a rule: the name of the country it was written for (`country = "JM"`),
/// else its prefix's label. Every view (stats, rules list, metrics) shows this one.
pub fn rule_label(country: Option<&str>, p: &Prefix) -> String {
    country
        .map(|cc| expand(cc).map_or(cc.to_string(), |c| c.name))
        .unwrap_or_else(|| prefix_label(p))
}

/// A display label for international prefix digits (no `+`; a single leading `+` is tolerated).
///
/// - the country name when one country covers the prefix (`23276` → `Sierra Leone`,
///   `1876555` → `Jamaica`);
/// - for a shared code where the digits do not pick one region, the code and the candidates,
///   main region first (`1` → `NANP (+1: US, AG, AI, ...)`, `44` → `shared code (+44: GB, GG,
///   IM, JE)`);
/// - `international network +881` for a non-geographic code;
/// - `None` for an empty or non-digit input, or digits that start no calling code (`0`, `23`,
///   `999`).
pub fn label_for_prefix(digits: &str) -> Option<String> {
    let digits = digits.strip_prefix('+').unwrap_or(digits);
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index = index();
    // Calling codes are prefix-free (E.164), so the first code that is a prefix is the one.
    (1..=3).find_map(|len| {
        let code: u16 = digits.get(..len)?.parse().ok()?;
        let rest = digits.get(len..)?;
        index.groups.get(&code).map(|group| group.label(rest))
    })
}

/// One metadata region under a calling code.
#[derive(Debug)]
struct Region {
    /// Metadata id: alpha-2, or `001` for a non-geographic code.
    id: String,
    name: String,
    /// The national leading digits expanded into minimal prefixes (without the calling code);
    /// the reason when they cannot be; `None` when the metadata has none.
    leading: Option<Result<Vec<String>, PatternError>>,
}

impl Region {
    /// Whether `rest` (national digits) lies inside one of this region's leading prefixes.
    fn claims(&self, rest: &str) -> bool {
        matches!(&self.leading, Some(Ok(prefixes)) if prefixes.iter().any(|p| rest.starts_with(p.as_str())))
    }

    /// Whether a number starting with `rest` may belong to this region.
    fn may_hold(&self, rest: &str) -> bool {
        match &self.leading {
            Some(Ok(prefixes)) => prefixes
                .iter()
                .any(|p| p.starts_with(rest) || rest.starts_with(p.as_str())),
            // No (usable) leading digits: the region may hold any number of the code.
            None | Some(Err(_)) => true,
        }
    }
}

/// All regions of one calling code, the main region first and the rest by id.
#[derive(Debug)]
struct Group {
    code: u16,
    regions: Vec<Region>,
}

impl Group {
    /// See [`label_for_prefix`]; `rest` is the digits after the calling code.
    fn label(&self, rest: &str) -> String {
        if let [only] = self.regions.as_slice() {
            return only.name.clone();
        }
        if let [one] = self.pick(|r| r.claims(rest)).as_slice() {
            return one.name.clone();
        }
        let mut candidates = self.pick(|r| r.may_hold(rest));
        if let [one] = candidates.as_slice() {
            return one.name.clone();
        }
        if candidates.is_empty() {
            candidates = self.regions.iter().collect();
        }
        let ids: Vec<&str> = candidates.iter().map(|r| r.id.as_str()).collect();
        let kind = if self.code == 1 {
            "NANP"
        } else {
            "shared code"
        };
        format!("{kind} (+{}: {})", self.code, ids.join(", "))
    }

    fn pick(&self, keep: impl Fn(&Region) -> bool) -> Vec<&Region> {
        self.regions.iter().filter(|r| keep(r)).collect()
    }
}

/// The dataset, indexed by calling code and by alpha-2.
#[derive(Debug)]
struct Index {
    groups: BTreeMap<u16, Group>,
    by_alpha2: HashMap<String, u16>,
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(build_index)
}

fn build_index() -> Index {
    let db = &*DATABASE;
    // `Database::iter` yields one entry per region id, so it keeps only one of the many `001`
    // (non-geographic) entries; probing every possible E.164 code finds them all.
    let codes: BTreeSet<u16> = (1..=999)
        .chain(db.iter().map(|m| m.country_code()))
        .collect();
    let mut groups = BTreeMap::new();
    let mut by_alpha2 = HashMap::new();
    for code in codes {
        let Some(metas) = db.by_code(&code) else {
            continue;
        };
        let mut regions: Vec<(bool, Region)> = metas
            .iter()
            .map(|meta| {
                let id = meta.id().to_string();
                let name = if id == NON_GEOGRAPHIC_ID {
                    format!("international network +{code}")
                } else {
                    isocountry::CountryCode::for_alpha2(&id)
                        .map(|c| c.name().to_string())
                        .unwrap_or_else(|_| id.clone())
                };
                let leading = meta.leading_digits().map(|re| expand_pattern(re.as_str()));
                let main = meta.is_main_country_for_code();
                (main, Region { id, name, leading })
            })
            .collect();
        if regions.is_empty() {
            continue;
        }
        regions.sort_by(|(a_main, a), (b_main, b)| b_main.cmp(a_main).then(a.id.cmp(&b.id)));
        for (_, region) in &regions {
            if region.id.len() == 2 && region.id.bytes().all(|b| b.is_ascii_uppercase()) {
                by_alpha2.insert(region.id.clone(), code);
            }
        }
        let regions = regions.into_iter().map(|(_, r)| r).collect();
        groups.insert(code, Group { code, regions });
    }
    Index { groups, by_alpha2 }
}

/// The first pair `(a, b)` where one is a prefix of the other.
fn overlap<'a>(ours: &'a [String], theirs: &'a [String]) -> Option<(&'a str, &'a str)> {
    ours.iter().find_map(|a| {
        theirs
            .iter()
            .find(|b| a.starts_with(b.as_str()) || b.starts_with(a.as_str()))
            .map(|b| (a.as_str(), b.as_str()))
    })
}

/// Expands a leading-digits pattern into the minimal set of digit prefixes it matches at the
/// start of a national number. The pattern is parsed as the metadata crate compiles it
/// (ignore-whitespace mode), with Unicode off so that `\d` is `[0-9]`; its language must be a
/// finite set of digit strings.
fn expand_pattern(pattern: &str) -> Result<Vec<String>, PatternError> {
    let error = |kind| PatternError {
        pattern: pattern.to_string(),
        kind,
    };
    let hir = ParserBuilder::new()
        .unicode(false)
        .ignore_whitespace(true)
        .nest_limit(MAX_NESTING)
        .build()
        .parse(pattern)
        .map_err(|e| error(PatternErrorKind::Syntax(syntax_error(&e))))?;
    let prefixes = minimize(digit_strings(&hir).map_err(error)?);
    match prefixes.as_slice() {
        [] => Err(error(PatternErrorKind::MatchesNothing)),
        [only] if only.is_empty() => Err(error(PatternErrorKind::MatchesEverything)),
        _ => Ok(prefixes),
    }
}

/// Why a leading-digits pattern cannot be expanded.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("leading-digits pattern `{pattern}`: {kind}")]
struct PatternError {
    pattern: String,
    kind: PatternErrorKind,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
enum PatternErrorKind {
    #[error("{0}")]
    Syntax(String),
    #[error("`{0}` matches something other than the digits 0-9")]
    NotDigits(String),
    #[error("`{0}` is an anchor or a boundary; only digits can be expanded into prefixes")]
    Look(String),
    #[error("`{0}` repeats without a bound or more than {MAX_REPEAT} times")]
    Unbounded(String),
    #[error("it expands to more than {MAX_PREFIXES} prefixes")]
    TooMany,
    #[error("it matches digit strings longer than {MAX_DIGITS}")]
    TooLong,
    #[error("it matches every number of the calling code")]
    MatchesEverything,
    #[error("it matches no number")]
    MatchesNothing,
}

/// One line for a syntax error (the crate's own rendering spans several).
fn syntax_error(error: &regex_syntax::Error) -> String {
    match error {
        regex_syntax::Error::Parse(e) => {
            format!("{} at offset {}", e.kind(), e.span().start.offset)
        }
        regex_syntax::Error::Translate(e) => {
            format!("{} at offset {}", e.kind(), e.span().start.offset)
        }
        e => e.to_string(),
    }
}

/// The set of digit strings `hir` matches, each intermediate set at most [`MAX_PREFIXES`] long.
fn digit_strings(hir: &Hir) -> Result<BTreeSet<String>, PatternErrorKind> {
    let not_digits = || PatternErrorKind::NotDigits(hir.to_string());
    match hir.kind() {
        HirKind::Empty => Ok(BTreeSet::from([String::new()])),
        HirKind::Literal(Literal(bytes)) => match std::str::from_utf8(bytes) {
            Ok(s) if s.bytes().all(|b| b.is_ascii_digit()) => {
                bound(s.len(), MAX_DIGITS, PatternErrorKind::TooLong)?;
                Ok(BTreeSet::from([s.to_string()]))
            }
            _ => Err(not_digits()),
        },
        HirKind::Class(class) => {
            let ranges: Vec<(u32, u32)> = match class {
                Class::Unicode(c) => c
                    .iter()
                    .map(|r| (r.start().into(), r.end().into()))
                    .collect(),
                Class::Bytes(c) => c
                    .iter()
                    .map(|r| (r.start().into(), r.end().into()))
                    .collect(),
            };
            // Ranges are sorted: a non-digit stops the walk after at most ten digits.
            (ranges.into_iter().flat_map(|(lo, hi)| lo..=hi))
                .map(|c| {
                    char::from_u32(c)
                        .filter(char::is_ascii_digit)
                        .ok_or_else(not_digits)
                })
                .map(|c| c.map(String::from))
                .collect()
        }
        HirKind::Look(_) => Err(PatternErrorKind::Look(hir.to_string())),
        HirKind::Repetition(rep) => {
            let max = rep
                .max
                .filter(|&max| max <= MAX_REPEAT)
                .ok_or_else(|| PatternErrorKind::Unbounded(hir.to_string()))?;
            let sub = digit_strings(&rep.sub)?;
            // `sub` repeated `min` times, then each further count up to `max` added.
            let mut power = BTreeSet::from([String::new()]);
            for _ in 0..rep.min {
                power = product(&power, &sub)?;
            }
            let mut all = power.clone();
            for _ in rep.min..max {
                power = product(&power, &sub)?;
                all.extend(power.iter().cloned());
                check_size(all.len())?;
            }
            Ok(all)
        }
        HirKind::Capture(capture) => digit_strings(&capture.sub),
        HirKind::Concat(subs) => subs
            .iter()
            .try_fold(BTreeSet::from([String::new()]), |set, sub| {
                product(&set, &digit_strings(sub)?)
            }),
        HirKind::Alternation(subs) => subs.iter().try_fold(BTreeSet::new(), |mut set, sub| {
            set.extend(digit_strings(sub)?);
            check_size(set.len()).map(|()| set)
        }),
    }
}

/// Every `head` followed by every `tail`.
fn product(
    heads: &BTreeSet<String>,
    tails: &BTreeSet<String>,
) -> Result<BTreeSet<String>, PatternErrorKind> {
    check_size(heads.len().saturating_mul(tails.len()))?;
    let longest = |set: &BTreeSet<String>| set.iter().map(String::len).max().unwrap_or(0);
    bound(
        longest(heads) + longest(tails),
        MAX_DIGITS,
        PatternErrorKind::TooLong,
    )?;
    Ok(heads
        .iter()
        .flat_map(|head| tails.iter().map(move |tail| format!("{head}{tail}")))
        .collect())
}

fn check_size(len: usize) -> Result<(), PatternErrorKind> {
    bound(len, MAX_PREFIXES, PatternErrorKind::TooMany)
}

fn bound(len: usize, max: usize, error: PatternErrorKind) -> Result<(), PatternErrorKind> {
    if len > max { Err(error) } else { Ok(()) }
}

/// Sorted minimal prefix set: drops a prefix that another one covers, and replaces ten
/// siblings `p0`..`p9` by `p` (repeatedly). All ten digits collapse to the empty prefix.
fn minimize(mut set: BTreeSet<String>) -> Vec<String> {
    loop {
        // In sorted order, anything a kept prefix covers comes right after it.
        let mut kept: Vec<String> = Vec::with_capacity(set.len());
        for s in set {
            if !kept.last().is_some_and(|k| s.starts_with(k.as_str())) {
                kept.push(s);
            }
        }
        let mut children: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &kept {
            if let Some(parent) = s.get(..s.len().saturating_sub(1))
                && !s.is_empty()
            {
                *children.entry(parent).or_default() += 1;
            }
        }
        let full: BTreeSet<String> = children
            .into_iter()
            .filter(|&(_, n)| n == 10)
            .map(|(p, _)| p.to_string())
            .collect();
        if full.is_empty() {
            return kept;
        }
        set = kept
            .into_iter()
            .map(|s| match s.get(..s.len().saturating_sub(1)) {
                Some(parent) if !s.is_empty() && full.contains(parent) => parent.to_string(),
                _ => s,
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(alpha2: &str) -> Vec<String> {
        match expand(alpha2) {
            Ok(country) => country.prefixes,
            Err(e) => panic!("{alpha2}: {e}"),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sierra_leone_is_its_whole_code() {
        assert_eq!(
            expand("SL"),
            Ok(Country {
                alpha2: "SL".into(),
                name: "Sierra Leone".into(),
                calling_code: 232,
                prefixes: strings(&["232"]),
            })
        );
    }

    #[test]
    fn lower_case_is_upper_cased() {
        assert_eq!(expand("sl"), expand("SL"));
        assert_eq!(expand("jM").map(|c| c.alpha2), Ok("JM".to_string()));
    }

    #[test]
    fn jamaica_expands_its_leading_digits() {
        let jm = prefixes("JM");
        assert!(jm.contains(&"1876".to_string()), "{jm:?}");
        assert!(!jm.contains(&"1".to_string()), "{jm:?}");
        assert!(
            jm.iter().all(|p| p.starts_with('1') && p.len() > 1),
            "{jm:?}"
        );
    }

    #[test]
    fn dominican_republic_expands_character_classes() {
        let dr = prefixes("DO");
        assert!(dr.len() > 1, "{dr:?}");
        assert!(dr.contains(&"1809".to_string()), "{dr:?}");
        assert!(dr.contains(&"1829".to_string()), "{dr:?}");
        assert!(dr.contains(&"1849".to_string()), "{dr:?}");
        assert!(!dr.iter().any(|p| p.contains('[')), "{dr:?}");
    }

    #[test]
    fn plus_seven_splits_by_leading_digits() {
        let kz = prefixes("KZ");
        let ru = prefixes("RU");
        assert!(
            kz.iter().all(|p| p.starts_with('7') && p.len() > 1),
            "{kz:?}"
        );
        assert!(
            ru.iter().all(|p| p.starts_with('7') && p.len() > 1),
            "{ru:?}"
        );
        assert_eq!(overlap(&kz, &ru), None);
    }

    #[test]
    fn small_territories_are_carved_out() {
        assert!(
            prefixes("VA")
                .iter()
                .all(|p| p.starts_with("39") && p.len() > 2)
        );
        assert!(
            prefixes("IM")
                .iter()
                .all(|p| p.starts_with("44") && p.len() > 2)
        );
    }

    #[test]
    fn shared_codes_without_leading_digits_are_errors() {
        for (alpha2, code, other) in [
            ("US", 1, "CA"),
            ("CA", 1, "US"),
            ("GB", 44, "JE"),
            ("IT", 39, "VA"),
        ] {
            let err = expand(alpha2).unwrap_err();
            let CountryError::Shared {
                calling_code,
                ref others,
                ..
            } = err
            else {
                panic!("{alpha2}: expected Shared, got {err:?}");
            };
            assert_eq!(calling_code, code);
            assert!(others.is_sorted(), "{others:?}");
            assert!(others.iter().any(|o| o == other), "{others:?}");
            assert!(!others.iter().any(|o| o == alpha2), "{others:?}");
            let text = err.to_string();
            assert!(text.contains(&format!("`{alpha2}`")), "{text}");
            assert!(text.contains(&format!("+{code}")), "{text}");
            assert!(text.contains(other), "{text}");
            assert!(text.contains("prefix rules"), "{text}");
        }
        let us = expand("US").unwrap_err().to_string();
        assert!(us.contains("United States"), "{us}");
        assert!(us.contains("JM"), "{us}");
    }

    #[test]
    fn russia_follows_the_dataset() {
        // RU shares +7 with KZ but, unlike US/CA/GB, its metadata has leading digits
        // (`[3489]`), so it expands like any other region with them and leaves KZ's `77` alone.
        let ru = prefixes("RU");
        assert!(
            ru.iter().all(|p| p.starts_with('7') && p.len() > 1),
            "{ru:?}"
        );
        assert!(
            !ru.iter()
                .any(|p| "77".starts_with(p.as_str()) || p.starts_with("77")),
            "{ru:?}"
        );
        assert_eq!(label_for_prefix("77").as_deref(), Some("Kazakhstan"));
    }

    #[test]
    fn bad_input_is_rejected_with_context() {
        for bad in ["", "S", "sl1", "SLE", "001", "S1", "ÅX", " S", "S "] {
            let err = expand(bad).unwrap_err();
            assert_eq!(err, CountryError::Malformed(bad.to_string()));
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
        for unknown in ["XX", "xx", "QQ", "ZZ"] {
            let err = expand(unknown).unwrap_err();
            assert_eq!(err, CountryError::Unknown(unknown.to_string()));
            assert!(err.to_string().contains(unknown), "{err}");
        }
    }

    #[test]
    fn iso_country_without_a_calling_code() {
        let err = expand("AQ").unwrap_err();
        assert!(
            matches!(&err, CountryError::NoCallingCode { alpha2, .. } if alpha2 == "AQ"),
            "{err:?}"
        );
        assert!(err.to_string().contains("Antarctica"), "{err}");
    }

    #[test]
    fn every_region_expands_or_explains() {
        let ids: BTreeSet<String> = DATABASE
            .iter()
            .map(|m| m.id().to_string())
            .chain(isocountry::CountryCode::iter().map(|c| c.alpha2().to_string()))
            .collect();
        let mut expanded = 0;
        for id in &ids {
            match expand(id) {
                Ok(country) => {
                    expanded += 1;
                    assert_eq!(&country.alpha2, id);
                    let code = country.calling_code.to_string();
                    assert!(!country.prefixes.is_empty(), "{id}");
                    assert!(country.prefixes.len() <= MAX_PREFIXES, "{id}");
                    assert!(country.prefixes.is_sorted(), "{id}");
                    for (i, p) in country.prefixes.iter().enumerate() {
                        assert!(p.bytes().all(|b| b.is_ascii_digit()), "{id}: {p}");
                        assert!(p.starts_with(&code), "{id}: {p}");
                        for (j, q) in country.prefixes.iter().enumerate() {
                            assert!(i == j || !q.starts_with(p.as_str()), "{id}: {p} covers {q}");
                        }
                        // Reverse lookup finds the country again.
                        assert_eq!(
                            label_for_prefix(p).as_ref(),
                            Some(&country.name),
                            "{id}: {p}"
                        );
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.contains(id.as_str()), "{id}: {text}");
                }
            }
        }
        assert!(
            expanded > 200,
            "only {expanded} of {} regions expand",
            ids.len()
        );
    }

    /// Every region's expansion, one line each: what `expand` gives for every metadata id and
    /// every ISO 3166-1 code (prefixes, or the error kind), then the leading-digits expansion of
    /// every region under every calling code (what `label_for_prefix` works from).
    fn expansion_dump() -> String {
        use std::fmt::Write;
        let ids: BTreeSet<String> = DATABASE
            .iter()
            .map(|m| m.id().to_string())
            .chain(isocountry::CountryCode::iter().map(|c| c.alpha2().to_string()))
            .collect();
        let mut out = String::from("# expand(id)\n");
        for id in &ids {
            let line = match expand(id) {
                Ok(c) => format!("ok +{} {}", c.calling_code, c.prefixes.join(" ")),
                Err(CountryError::Malformed(_)) => "err Malformed".to_string(),
                Err(CountryError::Unknown(_)) => "err Unknown".to_string(),
                Err(CountryError::NoCallingCode { .. }) => "err NoCallingCode".to_string(),
                Err(CountryError::Shared { others, .. }) => {
                    format!("err Shared {}", others.join(" "))
                }
                Err(CountryError::Unsupported { .. }) => "err Unsupported".to_string(),
            };
            writeln!(out, "{id} {line}").unwrap();
        }
        out.push_str("# leading digits by calling code\n");
        for group in index().groups.values() {
            for region in &group.regions {
                let line = match &region.leading {
                    None => "none".to_string(),
                    Some(Ok(prefixes)) => format!("ok {}", prefixes.join(" ")),
                    Some(Err(_)) => "err".to_string(),
                };
                writeln!(out, "+{} {} {line}", group.code, region.id).unwrap();
            }
        }
        out
    }

    /// The expansion of every region is pinned: a change of the expander (or of the metadata
    /// crate) that moves any prefix shows here. `SIPGUARD_BLESS=1` rewrites the golden file.
    #[test]
    fn expansions_match_golden_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/country_expansions.txt"
        );
        let dump = expansion_dump();
        if std::env::var_os("SIPGUARD_BLESS").is_some() {
            std::fs::write(path, &dump).unwrap();
        }
        let golden = std::fs::read_to_string(path).unwrap();
        for (line, (got, want)) in dump.lines().zip(golden.lines()).enumerate() {
            assert_eq!(got, want, "line {}", line + 1);
        }
        assert_eq!(dump.lines().count(), golden.lines().count());
    }

    #[test]
    fn label_names_a_single_country() {
        assert_eq!(label_for_prefix("232").as_deref(), Some("Sierra Leone"));
        assert_eq!(label_for_prefix("23276").as_deref(), Some("Sierra Leone"));
        assert_eq!(label_for_prefix("+23276").as_deref(), Some("Sierra Leone"));
        let jm = label_for_prefix("18765551234").unwrap_or_default();
        assert!(jm.contains("Jamaica"), "{jm}");
        let im = label_for_prefix("441624").unwrap_or_default();
        assert!(im.contains("Isle of Man"), "{im}");
    }

    #[test]
    fn label_lists_a_shared_code() {
        let nanp = label_for_prefix("1").unwrap_or_default();
        assert!(nanp.starts_with("NANP (+1: US, "), "{nanp}");
        assert!(nanp.contains("CA") && nanp.contains("JM"), "{nanp}");
        let uk = label_for_prefix("44").unwrap_or_default();
        assert!(
            uk.contains("+44") && uk.contains("GB") && uk.contains("IM"),
            "{uk}"
        );
        // US/CA area codes carry no leading digits: the label narrows to the candidates.
        let ny = label_for_prefix("1212").unwrap_or_default();
        assert!(
            ny.contains("US") && ny.contains("CA") && !ny.contains("JM"),
            "{ny}"
        );
    }

    #[test]
    fn label_for_non_geographic_codes() {
        for code in [
            "800", "808", "870", "878", "881", "882", "883", "888", "979",
        ] {
            let label = label_for_prefix(code).unwrap_or_default();
            assert!(label.contains(&format!("+{code}")), "{code}: {label}");
            let longer = label_for_prefix(&format!("{code}1")).unwrap_or_default();
            assert_eq!(label, longer);
        }
    }

    #[test]
    fn label_for_nothing() {
        for none in [
            "",
            "+",
            "0",
            "00",
            "011",
            "23",
            "999",
            "abc",
            "23a",
            "+-1",
            "２３２",
        ] {
            assert_eq!(label_for_prefix(none), None, "{none:?}");
        }
    }

    #[test]
    fn pattern_subset_is_expanded() {
        assert_eq!(
            expand_pattern("8001|8[024]9"),
            Ok(strings(&["8001", "809", "829", "849"]))
        );
        assert_eq!(
            expand_pattern("74576|(?:16|7[56])24"),
            Ok(strings(&["1624", "74576", "7524", "7624"]))
        );
        assert_eq!(
            expand_pattern("1[03-79]|[2-9]"),
            Ok(strings(&[
                "10", "13", "14", "15", "16", "17", "19", "2", "3", "4", "5", "6", "7", "8", "9"
            ]))
        );
        assert_eq!(
            expand_pattern(" (6 5)8 |\n876 "),
            Ok(strings(&["658", "876"]))
        );
    }

    #[test]
    fn expansion_is_minimal() {
        assert_eq!(expand_pattern("87|876|8765|87"), Ok(strings(&["87"])));
        assert_eq!(
            expand_pattern("[2-9]\\d"),
            Ok(strings(&["2", "3", "4", "5", "6", "7", "8", "9"]))
        );
        assert_eq!(
            expand_pattern("1\\d\\d|2[0-4]"),
            Ok(strings(&["1", "20", "21", "22", "23", "24"]))
        );
    }

    #[test]
    fn unsupported_patterns_are_rejected() {
        for bad in [
            "",
            "7|",
            "\\d",
            "[0-9]",
            "7*",
            "7+",
            "7?",
            "^7",
            "7$",
            ".",
            "(?=7)",
            "(?!7)",
            "\\w",
            "\\",
            "[",
            "[]",
            "[^7]",
            "[9-2]",
            "[2-]",
            "[a]",
            "(7",
            "7)",
            "(?",
            "a",
            "\\d\\d\\d\\d",
            "7{2,}",
            "7{17}",
            "\\b7",
            "7\\z",
            "7(?:^|8)",
            "\\D",
            "7[0-9a]",
            "7\\s",
            "(?-u:[^\\x00-\\xFF])",
            "\\d{4}",
            "(?:7{16}){3}",
        ] {
            let err = expand_pattern(bad).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("leading-digits pattern `{bad}`: ")),
                "{bad}: {err}"
            );
        }
        let deep = format!("{}7{}", "(".repeat(100), ")".repeat(100));
        assert!(expand_pattern(&deep).is_err());
        // Nested counts that would build huge strings stop at the length bound, not in memory.
        let long = format!("{}7{}", "(?:".repeat(8), "){16}".repeat(8));
        assert_eq!(
            expand_pattern(&long).map_err(|e| e.kind),
            Err(PatternErrorKind::TooLong)
        );
    }

    #[test]
    fn rejections_say_why() {
        for (bad, why) in [
            ("7*", "without a bound"),
            ("7{17}", "more than 16 times"),
            ("^7", "anchor"),
            ("7a", "other than the digits"),
            ("\\w", "other than the digits"),
            ("\\d{4}", "more than 1000 prefixes"),
            ("7?", "every number"),
            ("(7", "offset 0"),
            ("(?=7)", "look-around"),
        ] {
            let err = expand_pattern(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn bounded_counts_and_other_syntax_follow_the_language() {
        assert_eq!(expand_pattern("7{2}"), Ok(strings(&["77"])));
        assert_eq!(
            expand_pattern("(?:1|2){2}"),
            Ok(strings(&["11", "12", "21", "22"]))
        );
        assert_eq!(expand_pattern("7{0,1}8"), Ok(strings(&["78", "8"])));
        assert_eq!(
            expand_pattern("8[0-2]{1,3}"),
            Ok(strings(&["80", "81", "82"]))
        );
        // Only the matched language counts: names, flags and empty groups change nothing.
        assert_eq!(expand_pattern("(?<a>7)"), Ok(strings(&["7"])));
        assert_eq!(expand_pattern("(?i)7"), Ok(strings(&["7"])));
        assert_eq!(expand_pattern("7()8"), Ok(strings(&["78"])));
        // The metadata crate compiles the patterns in ignore-whitespace mode: `#` starts a comment.
        assert_eq!(expand_pattern("7#x"), Ok(strings(&["7"])));
    }
}
