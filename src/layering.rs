//! The layering rule of `lib.rs`, checked against the source: every `crate::NAME` path
//! in a module must name a module on a lower layer (or its own). The table is read
//! from `lib.rs`'s docs, so the documented rule and the checked rule are one text.
//! Test code (`tests.rs` files and `mod tests` blocks) is not scanned.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module name → layer, from the `LAYERS` … `END` block of `lib.rs`.
fn layers() -> HashMap<String, u32> {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut inside = false;
    let mut out = HashMap::new();
    for line in lib.lines() {
        let line = line.trim_start_matches("//!").trim();
        match line {
            "LAYERS" => inside = true,
            "END" => inside = false,
            _ if inside => {
                let (n, names) = line.split_once(' ').unwrap();
                let n: u32 = n.parse().unwrap();
                for name in names.split('|') {
                    out.insert(name.trim().to_owned(), n);
                }
            }
            _ => {}
        }
    }
    assert!(out.len() > 10, "no layer table in lib.rs");
    out
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::NAME` paths of `code`, outside test modules.
fn crate_paths(code: &str) -> Vec<String> {
    let code = code.split("#[cfg(test)]\nmod tests {").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.push(name);
    }
    out
}

/// Every (file, module, imported module) that breaks the rule.
fn violations() -> Vec<String> {
    let layers = layers();
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut bad = Vec::new();
    for path in all {
        let rel = path.strip_prefix(src()).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = top.trim_end_matches(".rs").to_owned();
        if ["lib", "main", "layering"].contains(&module.as_str())
            || path.file_name().is_some_and(|f| f == "tests.rs")
        {
            continue;
        }
        let own = *layers
            .get(&module)
            .unwrap_or_else(|| panic!("module {module} is not in lib.rs's layer table"));
        for name in crate_paths(&fs::read_to_string(&path).unwrap()) {
            if name == module {
                continue;
            }
            match layers.get(&name) {
                Some(&l) if l < own => {}
                Some(&l) => bad.push(format!(
                    "{}: {module} (layer {own}) imports {name} (layer {l})",
                    rel.display()
                )),
                None => bad.push(format!("{}: unknown module crate::{name}", rel.display())),
            }
        }
    }
    bad
}

#[test]
fn every_import_points_down_the_layers() {
    let bad = violations();
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn the_scan_sees_an_upward_import() {
    assert_eq!(
        crate_paths("use crate::xmpp::LinkStatus;\nfn f() { crate::store::x(); }"),
        ["xmpp", "store"]
    );
    assert!(crate_paths("#[cfg(test)]\nmod tests {\n use crate::app::App;\n}").is_empty());
}
