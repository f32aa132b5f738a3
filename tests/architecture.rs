//! The shape of the code, checked: the library's modules follow the data path (no module
//! imports from a later stage), module imports have no cycles, clap stays in the binary's
//! CLI layer, no library function runs past 80 lines (whatever its visibility or
//! qualifiers), no source file past 600 lines without a stated reason, and the library never
//! calls `unwrap()`/`expect()` (user data must fail with an error, not a panic).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The stages in data-path order; a module may import from its own stage or earlier ones.
const STAGES: &[&[&str]] = &[
    &[
        "error",
        "util",
        "device",
        "runtime",
        "progress",
        "backbone_store",
    ],
    &["data"],
    &["features"],
    &["head"],
    &["eval"],
    &["run", "model_file"],
    &["inspect", "export", "html", "audit"],
    &["workflow"],
];

fn stage(top: &str) -> Option<usize> {
    STAGES.iter().position(|s| s.contains(&top))
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Library files (not the binary's main.rs or cli/), as (module path, code without tests).
fn library() -> BTreeMap<String, String> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src()).unwrap().to_string_lossy().to_string();
        if rel == "main.rs" || rel.starts_with("cli/") || rel == "lib.rs" {
            continue;
        }
        let module = rel
            .trim_end_matches(".rs")
            .trim_end_matches("/mod")
            .replace('/', "::");
        let text = std::fs::read_to_string(&f).unwrap();
        let code = match text.find("#[cfg(test)]") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        out.insert(module, code);
    }
    out
}

/// Code lines only: comments and string literals cannot mention an import.
fn code_lines(code: &str) -> impl Iterator<Item = &str> {
    code.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with("///"))
}

/// Modules a file refers to: `crate::a::b…` resolved to the longest known module, and
/// `super::x` resolved against the file's own path.
fn references(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let is_mod_rs = known.iter().any(|k| k.starts_with(&format!("{module}::")));
    // `super::` names the parent module; a mod.rs's `use x::` names its own children.
    let parts: Vec<&str> = module.split("::").collect();
    let parent: Vec<&str> = parts[..parts.len() - 1].to_vec();
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|p| {
                p.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|p| !p.is_empty())
            .collect()
    };
    let resolve = |path: Vec<String>, out: &mut BTreeSet<String>| {
        for n in (1..=path.len()).rev() {
            let candidate = path[..n].join("::");
            if known.contains(&candidate) {
                out.insert(candidate);
                return;
            }
        }
    };
    for line in code_lines(code) {
        for (i, _) in line.match_indices("crate::") {
            resolve(ident(&line[i + 7..]), &mut out);
        }
        for (i, _) in line.match_indices("super::") {
            let mut path: Vec<String> = parent.iter().map(|s| s.to_string()).collect();
            path.extend(ident(&line[i + 7..]));
            resolve(path, &mut out);
        }
        // `pub mod x;` / `pub use x::…` inside a mod.rs refer to children.
        if is_mod_rs {
            if let Some(rest) = line
                .strip_prefix("pub use ")
                .or_else(|| line.strip_prefix("use "))
            {
                if !rest.starts_with("crate::") && !rest.starts_with("super::") {
                    let mut path: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
                    path.extend(ident(rest));
                    resolve(path, &mut out);
                }
            }
        }
    }
    out.remove(module);
    out
}

#[test]
fn no_module_imports_from_a_later_stage() {
    let lib = library();
    let known: BTreeSet<String> = lib.keys().cloned().collect();
    let mut wrong = Vec::new();
    for (module, code) in &lib {
        let top = module.split("::").next().unwrap();
        let own = stage(top).unwrap_or_else(|| panic!("module {module} is in no stage"));
        for r in references(module, code, &known) {
            let theirs = stage(r.split("::").next().unwrap()).unwrap();
            if theirs > own {
                wrong.push(format!(
                    "{module} (stage {own}) imports {r} (stage {theirs})"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the data path:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn module_imports_have_no_cycles() {
    let lib = library();
    let known: BTreeSet<String> = lib.keys().cloned().collect();
    let edges: BTreeMap<String, BTreeSet<String>> = lib
        .iter()
        .map(|(m, code)| (m.clone(), references(m, code, &known)))
        .collect();
    // A sanity check that the scan sees imports at all.
    assert!(edges["features::extract"].contains("features::backbone"));
    assert!(edges["workflow::train"].contains("run"));
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| s == m).unwrap();
                let mut cycle = stack[start..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn clap_stays_in_the_cli_layer() {
    for (module, code) in library() {
        assert!(
            !code_lines(&code).any(|l| l.contains("clap")),
            "{module} uses clap; parse flags in src/cli/ and pass plain settings"
        );
    }
    let lib_rs = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    assert!(
        !lib_rs.contains("mod cli"),
        "the library must not contain the CLI"
    );
}

/// Whether a (trimmed) line starts a function: any visibility (`pub`, `pub(crate)`,
/// `pub(super)`, `pub(in …)`), then `const`, `async`, `unsafe`, `extern "…"`, then `fn`.
fn declares_fn(line: &str) -> bool {
    let mut rest = line;
    if let Some(r) = rest.strip_prefix("pub") {
        rest = match r.strip_prefix('(') {
            Some(r) => match r.find(')') {
                Some(end) => &r[end + 1..],
                None => return false,
            },
            None => r,
        };
        rest = rest.trim_start();
    }
    loop {
        let before = rest;
        for q in ["const ", "async ", "unsafe "] {
            rest = rest.strip_prefix(q).unwrap_or(rest);
        }
        if let Some(r) = rest.strip_prefix("extern ") {
            rest = r.trim_start();
            if rest.starts_with('"') {
                rest = rest[1..]
                    .split_once('"')
                    .map(|x| x.1)
                    .unwrap_or("")
                    .trim_start();
            }
        }
        if rest == before {
            break;
        }
    }
    rest.starts_with("fn ")
}

#[test]
fn function_declarations_are_recognised_whatever_their_visibility() {
    let cases = [
        ("fn a() {", true),
        ("pub fn a() {", true),
        ("pub(crate) fn a() {", true),
        ("pub(super) fn a() {", true),
        ("pub(in crate::x) fn a() {", true),
        ("pub(super) unsafe fn horizontal(", true),
        ("pub const fn a() {", true),
        ("async fn a() {", true),
        ("pub(crate) unsafe extern \"C\" fn a() {", true),
        ("pub struct Fn {", false),
        ("let f = fn_name();", false),
        ("// fn commented()", false),
        ("pub(super) struct Context<'a> {", false),
    ];
    for (line, expected) in cases {
        assert_eq!(declares_fn(line), expected, "{line}");
    }
}

/// Longest a source file may be without saying why (a `//! Longer than 600 lines:` line).
const MAX_FILE_LINES: usize = 600;

#[test]
fn source_files_are_short_or_say_why() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let n = text.lines().count();
        let reason = text
            .lines()
            .any(|l| l.trim_start().starts_with("//! Longer than 600 lines:"));
        if n > MAX_FILE_LINES && !reason {
            long.push(format!("{}: {n} lines", f.display()));
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines without a `//! Longer than 600 lines:` reason:\n{}",
        long.join("\n")
    );
}

#[test]
fn library_functions_are_short_and_never_unwrap() {
    let mut long = Vec::new();
    let mut unwraps = Vec::new();
    for (module, code) in library() {
        let lines: Vec<&str> = code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if !t.starts_with("//") && (t.contains(".unwrap()") || t.contains(".expect(")) {
                unwraps.push(format!("{module}:{}: {}", i + 1, t));
            }
            if !declares_fn(t) {
                continue;
            }
            let (mut depth, mut started, mut end) = (0i32, false, i);
            for (j, l) in lines.iter().enumerate().skip(i) {
                depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                started |= l.contains('{');
                if started && depth <= 0 {
                    end = j;
                    break;
                }
            }
            if end + 1 - i > 80 {
                long.push(format!("{module}:{}: {} lines", i + 1, end + 1 - i));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over 80 lines:\n{}",
        long.join("\n")
    );
    assert!(
        unwraps.is_empty(),
        "unwrap/expect in the library:\n{}",
        unwraps.join("\n")
    );
}
