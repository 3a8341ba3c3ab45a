//! `sipguard classify LINE [--intl-prefix P ...]`: how a request line is parsed and normalised,
//! with the parser the kernel runs (no kernel needed).

use anyhow::Result;
use guard_common::{Domain, Parsed, parse_payload};

use crate::model::settings::Settings;

pub fn run(line: &str, intl_prefixes: Vec<String>) -> Result<()> {
    println!("{}", classify(line, intl_prefixes)?);
    Ok(())
}

/// What the filter makes of the request line `line`.
pub fn classify(line: &str, intl_prefixes: Vec<String>) -> Result<String> {
    let mut settings = Settings::default();
    if !intl_prefixes.is_empty() {
        settings.intl_prefixes = intl_prefixes;
    }
    let config = settings.to_config()?;
    let payload = format!("{line}\r\n");
    Ok(match parse_payload(payload.as_bytes()) {
        Parsed::NotInvite => "not an INVITE: passes".into(),
        Parsed::UnparsableUri => "INVITE with an unparsable Request-URI: passes (counted)".into(),
        Parsed::NoNumber => "INVITE without a dialled number: passes".into(),
        Parsed::Unresolved { number } => format!(
            "INVITE whose number could not be read to its end (read: {}; a phone-context may \
             follow): incomplete_action ({}) decides",
            number.display(Domain::National),
            settings.incomplete_action
        ),
        Parsed::Number { number, complete } => {
            let (domain, n) = config.intl_prefixes.normalize(&number);
            let kind = match domain {
                Domain::International => "international",
                Domain::National => "national",
            };
            let note = if complete {
                String::new()
            } else {
                format!(
                    " (read in part: a rule among these digits decides, else incomplete_action \
                     ({}))",
                    settings.incomplete_action
                )
            };
            format!("INVITE to {} ({kind}){note}", n.display(domain))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn request_lines_are_classified_as_the_kernel_parses_them() {
        let c = |line: &str| classify(line, Vec::new()).unwrap();
        assert_eq!(
            c("INVITE sip:0023276123456@pbx SIP/2.0"),
            "INVITE to +23276123456 (international)"
        );
        assert_eq!(
            c("INVITE tel:+1-876-555-0100 SIP/2.0"),
            "INVITE to +18765550100 (international)"
        );
        assert_eq!(
            c("INVITE sip:0990123@pbx SIP/2.0"),
            "INVITE to 0990123 (national)"
        );
        assert_eq!(c("OPTIONS sip:pbx SIP/2.0"), "not an INVITE: passes");
        assert_eq!(
            c("INVITE sip:alice@pbx SIP/2.0"),
            "INVITE without a dialled number: passes"
        );
        assert_eq!(
            c("INVITE http://x SIP/2.0"),
            "INVITE with an unparsable Request-URI: passes (counted)"
        );
        assert_eq!(
            classify("INVITE sip:01023276123456@pbx SIP/2.0", vec!["010".into()]).unwrap(),
            "INVITE to +23276123456 (international)"
        );
        assert_eq!(
            c("INVITE sip:76123456;phone-context=+232@gw;user=phone SIP/2.0"),
            "INVITE to +23276123456 (international)"
        );
        assert_eq!(
            c(&format!(
                "INVITE tel:76123456;{}phone-context=+232 SIP/2.0",
                "isub=1;".repeat(200)
            )),
            "INVITE whose number could not be read to its end (read: 76123456; a phone-context \
             may follow): incomplete_action (monitor) decides"
        );
        let e = classify("INVITE sip:1@x SIP/2.0", vec!["0a".into()]).unwrap_err();
        assert!(e.to_string().contains("international prefix `0a`"), "{e}");
    }
}
