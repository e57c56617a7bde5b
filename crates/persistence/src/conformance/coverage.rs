//! Every case runs on every backend. The list in [`conformance_suite!`](crate::conformance_suite)
//! is kept by hand, so these tests read the sources: every `pub async fn` under
//! `src/conformance/` is a case and must be listed, and each backend's test file must invoke the
//! macro, where nothing can leave it out.

use std::path::{Path, PathBuf};

/// The backends' test files, each with the store it runs the suite on.
const BACKENDS: [(&str, &str); 3] = [
    ("tests/postgres.rs", "PgStore"),
    ("tests/sqlite.rs", "SqliteStore"),
    ("tests/supabase.rs", "SupabaseStore"),
];

/// The invocation a backend's test file makes, at the start of a line: outside any module,
/// which could be compiled out.
const INVOCATION: &str = "soul_persistence::conformance_suite!(";

fn crate_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The Rust sources under `dir`, at any depth.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
    found
}

/// Every case of the suite, sorted: the `pub async fn`s of its sources.
fn cases() -> Vec<String> {
    let mut cases: Vec<String> = sources(&crate_path("src/conformance"))
        .iter()
        .flat_map(|path| {
            read(path)
                .lines()
                .filter_map(|line| line.trim_start().strip_prefix("pub async fn "))
                .map(|rest| {
                    rest.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect()
                })
                .collect::<Vec<String>>()
        })
        .collect();
    cases.sort();
    cases
}

/// The names `conformance_suite!` makes a test of, sorted, repeats kept.
fn listed() -> Vec<String> {
    let source = read(&crate_path("src/conformance/mod.rs"));
    let (_, list) = source
        .split_once("macro_rules! conformance_suite")
        .and_then(|(_, macro_text)| macro_text.split_once("(@tests $harness;"))
        .expect("conformance_suite! passes its list of cases on to its @tests arm");
    let (list, _) = list.split_once(')').expect("the list ends");
    let mut names: Vec<String> = list
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

#[test]
fn every_case_is_in_the_suites_list() {
    let cases = cases();
    let listed = listed();
    assert!(!cases.is_empty() && !listed.is_empty(), "nothing was read");
    let unlisted: Vec<&String> = cases.iter().filter(|case| !listed.contains(case)).collect();
    assert!(
        unlisted.is_empty(),
        "no backend runs these cases: add them to conformance_suite!'s list: {unlisted:?}"
    );
    assert_eq!(
        cases, listed,
        "the list names each case once, and only cases"
    );
}

#[test]
fn every_backend_runs_the_whole_suite() {
    let manifest = read(&crate_path("Cargo.toml"));
    assert!(
        !manifest.contains("[[test]]") && !manifest.contains("autotests"),
        "every file in tests/ is built as its own test target"
    );
    for (file, store) in BACKENDS {
        let text = read(&crate_path(file));
        assert!(text.contains(store), "{file} runs the suite on {store}");
        assert!(
            !text.contains("#![cfg"),
            "{file} is compiled unconditionally"
        );
        let lines: Vec<&str> = text.lines().collect();
        let invocations: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with(INVOCATION))
            .collect();
        assert_eq!(
            invocations.len(),
            1,
            "{file} invokes the whole suite once, outside any module"
        );
        let attribute = lines[..invocations[0]]
            .iter()
            .map(|line| line.trim())
            .rev()
            .find(|line| !line.is_empty() && !line.starts_with("//"))
            .is_some_and(|line| line.starts_with("#["));
        assert!(!attribute, "{file} invokes the suite with no attribute");
    }
}
