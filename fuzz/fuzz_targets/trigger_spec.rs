#![no_main]
//! `--trigger` strings: a spec that parses prints back to a spec that parses to the same.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(t) = fineprune::trigger::spec::parse(s) {
        let printed = fineprune::trigger::spec::to_spec(&t);
        let again = fineprune::trigger::spec::parse(&printed).expect("a printed spec parses");
        assert_eq!(fineprune::trigger::spec::to_spec(&again), printed);
    }
});
