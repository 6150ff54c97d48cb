//! The module layout keeps its layers: nothing below the engine imports the
//! engine (docs/ARCHITECTURE.md, "Layers"). The parts the engine is built
//! from (tiers, stores, policy, entries, keys, coalescing, breakers,
//! counters, what a request records) must be testable and changeable
//! without it.

use std::path::{Path, PathBuf};

/// Modules below the engine, as paths under `src/`.
const BELOW_ENGINE: &[&str] = &[
    "body.rs",
    "breaker.rs",
    "clock.rs",
    "coalesce.rs",
    "entry.rs",
    "error.rs",
    "hot.rs",
    "key.rs",
    "reads.rs",
    "sample.rs",
    "stats.rs",
    "status.rs",
    "sync.rs",
    "tiers.rs",
    "observe",
    "policy",
    "store",
];

/// The engine and what sits above it: the names a lower module must not
/// use.
const ENGINE_AND_ABOVE: &[&str] = &[
    "crate::cache",
    "crate::builder",
    "crate::flow",
    "crate::service",
    "crate::layer",
    "crate::future",
    "crate::reqwest",
    "crate::admin",
    "crate::warm",
    "crate::export",
    "crate::values",
    "crate::ValueCache",
    "crate::Cache",
    "crate::CacheBuilder",
    "crate::CacheLayer",
    "crate::CacheService",
];

fn files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .expect("read src dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for e in entries {
            files(&e, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The code of a file a lower module compiles into the library: comments
/// dropped, and everything from its `#[cfg(test)]` module on (tests may
/// drive the whole engine).
fn library_code(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|(_, next)| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        // `crate::{Cache, ...}` lists are checked name by name.
        out.push((n + 1, line.replace("crate::{", "crate::{ ")));
    }
    out
}

fn uses(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(i, _)| {
        let after = code[i + name.len()..].chars().next();
        !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

fn braced_uses(code: &str) -> Vec<String> {
    // `use crate::{a, b::c, Cache}`: each item as `crate::item`.
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::{") {
        let list = &rest[i + "crate::{".len()..];
        let end = list.find('}').unwrap_or(list.len());
        for item in list[..end].split(',') {
            let item = item.trim();
            if !item.is_empty() {
                found.push(format!("crate::{item}"));
            }
        }
        rest = &list[end..];
    }
    found
}

#[test]
fn no_module_below_the_engine_imports_the_engine() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    let mut violations = Vec::new();
    for lower in BELOW_ENGINE {
        let mut paths = Vec::new();
        files(&src.join(lower), &mut paths);
        assert!(!paths.is_empty(), "{lower}: no such module in src/");
        for path in paths {
            let text = std::fs::read_to_string(&path).expect("read source");
            checked += 1;
            for (n, code) in library_code(&text) {
                let mut names: Vec<String> = braced_uses(&code);
                names.push(code.clone());
                for name in ENGINE_AND_ABOVE {
                    if names.iter().any(|c| uses(c, name)) {
                        violations.push(format!(
                            "{}:{n}: uses `{name}`: {}",
                            path.strip_prefix(&src).unwrap_or(&path).display(),
                            code.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} files checked");
    assert!(
        violations.is_empty(),
        "modules below the engine import it:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_check_catches_an_import_of_the_engine() {
    // The detector itself: each form a lower module could use.
    for code in [
        "use crate::cache::Shared;",
        "use crate::{Cache, CacheLayer};",
        "let x = crate::Cache::builder();",
        "use crate::export::info::Info;",
    ] {
        let mut names = braced_uses(code);
        names.push(code.to_owned());
        assert!(
            ENGINE_AND_ABOVE
                .iter()
                .any(|n| names.iter().any(|c| uses(c, n))),
            "not caught: {code}"
        );
    }
    // Comments and tests do not count; similar names do not either.
    let text = "/// see [`Cache`](crate::Cache)\nuse crate::clock::Clock;\nlet c = crate::CacheBody::empty();\n#[cfg(test)]\nmod tests {\n    use crate::Cache;\n}\n";
    let code = library_code(text);
    assert!(code.iter().all(|(_, c)| ENGINE_AND_ABOVE
        .iter()
        .all(|n| !uses(c, n) && braced_uses(c).iter().all(|b| !uses(b, n)))));
}
