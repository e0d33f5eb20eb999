//! Every file in `tests/bad/` is refused with the diagnostic its first line announces, and the
//! example topologies load.
//!
//! A bad file starts with `# expect: <text>`, where `<text>` is part of one diagnostic's display
//! from the position on, e.g. `:14:12: error: links[0].namespaces[0]: link ...`.

use std::path::{Path, PathBuf};

use ferry_topology::{LoadError, Severity, load_topology, parse_topology};

const EXPECT: &str = "# expect: ";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bad_files() -> Vec<PathBuf> {
    let dir = manifest_dir().join("tests/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display())).path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn expectation(path: &Path) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let first = text.lines().next().unwrap_or_default();
    let expected = first
        .strip_prefix(EXPECT)
        .unwrap_or_else(|| panic!("{}: first line must be `{EXPECT}<text>`", path.display()));
    assert!(
        expected.starts_with(':'),
        "{}: the expectation should start at `:LINE:COL:`, got {expected:?}",
        path.display()
    );
    expected.to_owned()
}

#[test]
fn bad_files_are_refused_with_the_expected_diagnostic() {
    let files = bad_files();
    assert!(
        files.len() >= 25,
        "expected at least 25 bad topology files in tests/bad, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let expected = expectation(path);
        match load_topology(path) {
            Err(LoadError::Invalid(invalid)) => {
                let found = invalid.diagnostics.iter().any(|d| d.to_string().contains(&expected));
                if !found {
                    failures.push(format!(
                        "{}: no diagnostic contains\n    {expected}\n  diagnostics:\n    {}",
                        path.display(),
                        invalid.to_string().replace('\n', "\n    ")
                    ));
                }
            }
            Err(other) => failures.push(format!(
                "{}: expected an invalid topology, got another error: {other}",
                path.display()
            )),
            Ok(validated) => failures.push(format!(
                "{}: expected an invalid topology, but it loaded (warnings: {:?})",
                path.display(),
                validated.warnings.iter().map(ToString::to_string).collect::<Vec<_>>()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn examples_load_without_warnings() {
    for name in ["two-sites.toml", "three-sites-chain.toml"] {
        let path = manifest_dir().join("../examples").join(name);
        let validated = match load_topology(&path) {
            Ok(validated) => validated,
            Err(error) => panic!("{} should load:\n{error}", path.display()),
        };
        let warnings: Vec<String> = validated.warnings.iter().map(ToString::to_string).collect();
        assert!(
            warnings.is_empty(),
            "{} should raise no warning, got:\n{}",
            path.display(),
            warnings.join("\n")
        );
    }
}

#[test]
fn a_two_node_site_is_valid_but_warned_about() {
    let text = r#"
name = "small"

[[sites]]
name = "solo"
src-id = 7
role = "active"

[[sites.nodes]]
id = "solo-a"
rack-id = 1
client = "127.0.0.1:3000"
fabric = "127.0.0.1:3001"
xdr = "127.0.0.1:3002"
admin = "127.0.0.1:3003"

[[sites.nodes]]
id = "solo-b"
rack-id = 2
client = "127.0.0.1:3010"
fabric = "127.0.0.1:3011"
xdr = "127.0.0.1:3012"
admin = "127.0.0.1:3013"

[[sites.namespaces]]
name = "test"
replication-factor = 2
"#;
    let validated = match parse_topology("small.toml", text) {
        Ok(validated) => validated,
        Err(invalid) => panic!("the two-node topology should be valid:\n{invalid}"),
    };
    let warnings: Vec<String> = validated.warnings.iter().map(ToString::to_string).collect();
    let warning = validated
        .warnings
        .iter()
        .find(|w| w.message.contains("fewer than 3"))
        .unwrap_or_else(|| panic!("no 'fewer than 3' warning among:\n{}", warnings.join("\n")));
    assert_eq!(warning.severity, Severity::Warning);
    assert_eq!(warning.field, "sites[0].nodes");
    assert!(warning.message.contains("site 'solo' has 2 node(s)"), "unexpected message: {warning}");
}
