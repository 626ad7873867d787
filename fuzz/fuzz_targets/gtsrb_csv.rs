#![no_main]
//! GTSRB annotation CSVs: every row's image must stay inside the dataset folder.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let dir = std::path::Path::new("/gtsrb/Final_Training/Images/00000");
    let _ = fineprune::data::gtsrb::parse_csv(std::path::Path::new("GT-00000.csv"), &text, dir);
});
