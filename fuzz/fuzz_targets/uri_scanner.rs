//! The request-line scanner on arbitrary bytes: `parse_payload` and `parse` over the whole input
//! never panic; stepping `Scanner::step` by hand (as the kernel's `bpf_loop` does, without the
//! `fast` path) ends within `MAX_STEPS` steps on a window and agrees with `parse`; every number
//! is well formed.
#![no_main]

use guard_common::{MAX_STEPS, Parsed, Scanner, WINDOW, parse, parse_payload};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// Steps a fresh scanner over `src` as `parse` does, but without the fast path: `(result,
/// whether step said it was done within the budget)`.
fn stepped(src: &[u8]) -> (Parsed, bool) {
    let mut s = Scanner::new();
    let mut calls = 0u32;
    let finished = loop {
        if calls == MAX_STEPS {
            break false;
        }
        calls += 1;
        if !s.step(src) {
            break true;
        }
    };
    let got = s.finish();
    if finished {
        // Done is final: more steps change nothing.
        assert!(!s.step(src), "step after done said go on");
        assert_eq!(s.finish(), got, "step after done changed the result");
    }
    (got, finished)
}

fn check(p: &Parsed) {
    if let Parsed::Number { number, complete } = p {
        common::check_read_number(number);
        // Without digits, only a `+` cut by the end of the input: an international number whose
        // digits were not read, matched as a true prefix (`+` rules), as the README's decision
        // table says for numbers not read to their end.
        assert!(
            number.len > 0 || (number.plus && !complete),
            "a Number result without digits: {p:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let window = &data[..data.len().min(WINDOW)];

    let payload = parse_payload(data);
    assert_eq!(
        payload,
        parse(window),
        "parse_payload is parse over the window"
    );
    check(&payload);

    // The kernel's view: a window, stepped; it always ends within the budget.
    let (by_steps, finished) = stepped(window);
    assert!(
        finished,
        "no result within MAX_STEPS = {MAX_STEPS} steps on {} bytes",
        window.len()
    );
    assert_eq!(
        by_steps, payload,
        "stepping disagrees with parse (fast path)"
    );

    // The whole input, past the window: the budget may run out, but both ways agree.
    if data.len() > WINDOW {
        let whole = parse(data);
        check(&whole);
        let (by_steps, _) = stepped(data);
        assert_eq!(
            by_steps, whole,
            "stepping disagrees with parse on the whole input"
        );
    }
});
