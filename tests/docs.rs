//! The measured tables in docs/ and the README are generated from the committed JSON in
//! docs/results/ by the table scripts; this checks that what is committed is what that JSON gives,
//! so a table edited by hand, or JSON re-measured without regenerating, fails here.

use std::process::Command;

#[test]
fn committed_tables_match_the_committed_json() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg("scripts/check_generated.py")
        .current_dir(root)
        .output()
        .expect("python3 runs scripts/check_generated.py (standard library only); .ci/run installs it");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
