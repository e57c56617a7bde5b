//! The README's `check-config` examples are what the binary prints: each TOML file shown under
//! a `<!-- check-config: NAME -->` marker is written out and checked, and the output must be
//! the block under `<!-- check-config: NAME prints -->`, character for character.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::path::Path;
use std::process::Command;

/// The fenced block that follows the line `marker` in `text`.
fn block_after<'a>(text: &'a str, marker: &str) -> &'a str {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("the README has no {marker}"));
    let rest = &text[start + marker.len()..];
    let open = rest.find("```").unwrap();
    let body = &rest[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    &body[..body.find("```").unwrap()]
}

/// What `check-config --config FILE` prints for the README's file `name`, with nothing from
/// this process's environment, and its exit status.
fn check(readme: &str, name: &str) -> (Option<i32>, String) {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join(name);
    std::fs::write(
        &file,
        block_after(readme, &format!("<!-- check-config: {name} -->")),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sms-gateway"))
        .env_clear()
        .current_dir(dir.path())
        .args(["check-config", "--config", name])
        .output()
        .unwrap();
    let printed = if output.status.success() {
        output.stdout
    } else {
        output.stderr
    };
    (output.status.code(), String::from_utf8(printed).unwrap())
}

#[test]
fn the_readme_shows_what_check_config_prints() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    for (name, status) in [("good.toml", 0), ("bad.toml", 2)] {
        let (code, printed) = check(&readme, name);
        assert_eq!(code, Some(status), "{name}:\n{printed}");
        let shown = block_after(&readme, &format!("<!-- check-config: {name} prints -->"));
        assert_eq!(
            shown, printed,
            "the README's output for {name} is not what the binary prints; it prints:\n{printed}"
        );
    }
}
