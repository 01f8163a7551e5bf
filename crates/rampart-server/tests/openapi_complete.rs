//! docs/openapi.yaml stays complete: every path the server routes (`.route("PATH", ...)`
//! in rampart-server and rampart-events, and the agent endpoints of the tunnel
//! listener) is a key under `paths:`, and every method routed on an `/api/` path is
//! documented under it. The file must also be well-formed YAML (checked with
//! python3-yaml, the parser CI installs).
//!
//! The YAML is read with a line scan of `paths:` (two-space path keys, four-space
//! method keys), which the YAML parser's own list of paths cross-checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const HTTP_METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn openapi_path() -> PathBuf {
    manifest_dir().join("../../docs/openapi.yaml")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading directory {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The index just past the `)` that closes the `(` at `open`, skipping string
/// literals (route paths and handler arguments never hold raw strings or char
/// literals with parentheses).
fn closing_paren(text: &str, open: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = open;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// The HTTP method routers (`get(`, `post(`, ...) called in a `.route(...)` call's
/// arguments, as lower-case method names.
fn routed_methods(arguments: &str) -> BTreeSet<String> {
    let bytes = arguments.as_bytes();
    let mut methods = BTreeSet::new();
    for method in HTTP_METHODS {
        let call = format!("{method}(");
        let mut from = 0;
        while let Some(found) = arguments[from..].find(&call) {
            let at = from + found;
            let starts_word = at == 0 || {
                let before = bytes[at - 1];
                !(before.is_ascii_alphanumeric() || before == b'_')
            };
            if starts_word {
                methods.insert(method.to_string());
            }
            from = at + call.len();
        }
    }
    methods
}

/// `path -> methods` for every `.route("PATH", ...)` in `file`.
fn routes_in(file: &Path, routes: &mut BTreeMap<String, (BTreeSet<String>, PathBuf)>) {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    const MARK: &str = ".route(\"";
    let mut from = 0;
    while let Some(found) = text[from..].find(MARK) {
        let open = from + found + ".route".len();
        let path_start = from + found + MARK.len();
        let path_end = path_start
            + text[path_start..]
                .find('"')
                .unwrap_or_else(|| panic!("unterminated route path in {}", file.display()));
        let path = text[path_start..path_end].to_string();
        let close = closing_paren(&text, open)
            .unwrap_or_else(|| panic!("unbalanced .route({path:?} ...) in {}", file.display()));
        let methods = routed_methods(&text[path_end + 1..close]);
        assert!(
            !methods.is_empty(),
            "{}: .route({path:?}, ...) routes no method this test recognises ({HTTP_METHODS:?})",
            file.display()
        );
        routes
            .entry(path)
            .or_insert_with(|| (BTreeSet::new(), file.to_path_buf()))
            .0
            .extend(methods);
        from = close;
    }
}

/// The agent endpoints of the tunnel listener: `pub const *_PATH: &str = "/api/v1/agent/..."`.
fn agent_paths() -> Vec<String> {
    let file = manifest_dir().join("src/devices/agent_api.rs");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    text.lines()
        .filter(|l| l.trim_start().starts_with("pub const ") && l.contains("_PATH: &str"))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|p| p.starts_with("/api/v1/agent/"))
        .map(str::to_string)
        .collect()
}

/// `paths:` of the OpenAPI file by line scan: path key -> documented methods.
fn documented_paths(yaml: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut paths = BTreeMap::new();
    let mut in_paths = false;
    let mut current: Option<String> = None;
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_paths = line.trim_end() == "paths:";
            current = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(key) = line.strip_prefix("  /") {
            let key = format!("/{}", key.trim_end().trim_end_matches(':'));
            paths.insert(key.clone(), BTreeSet::new());
            current = Some(key);
        } else if let (Some(path), Some(key)) = (&current, line.strip_prefix("    ")) {
            if let Some(method) = key.trim_end().strip_suffix(':') {
                if HTTP_METHODS.contains(&method) {
                    paths
                        .get_mut(path)
                        .map(|m: &mut BTreeSet<String>| m.insert(method.to_string()));
                }
            }
        }
    }
    paths
}

/// Parses the file with python3-yaml; returns the keys of `paths` it sees.
fn yaml_parser_paths(file: &Path) -> BTreeSet<String> {
    let script = "import sys, yaml\n\
                  doc = yaml.safe_load(open(sys.argv[1]))\n\
                  assert isinstance(doc, dict) and isinstance(doc.get('paths'), dict), 'no paths mapping'\n\
                  print('\\n'.join(doc['paths']))\n";
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!("running python3 to validate the YAML failed: {e}; install python3 and python3-yaml")
        });
    assert!(
        output.status.success(),
        "{} is not well-formed YAML (or python3-yaml is missing: apt-get install -y python3-yaml):\n{}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn openapi_documents_every_routed_endpoint() {
    let mut files = Vec::new();
    for dir in ["src", "../rampart-events/src"] {
        rust_files(&manifest_dir().join(dir), &mut files);
    }
    let mut routes = BTreeMap::new();
    for file in &files {
        routes_in(file, &mut routes);
    }
    // A scanner that finds nothing would pass vacuously: the server routes dozens.
    assert!(
        routes.len() >= 30
            && routes.contains_key("/healthz")
            && routes.contains_key("/api/v1/events"),
        "the route scan found too little ({} paths): {routes:?}",
        routes.len()
    );

    let openapi = openapi_path();
    let yaml = std::fs::read_to_string(&openapi)
        .unwrap_or_else(|e| panic!("reading {}: {e}", openapi.display()));
    let documented = documented_paths(&yaml);

    let parsed = yaml_parser_paths(&openapi);
    let scanned: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(
        scanned, parsed,
        "the line scan of `paths:` disagrees with the YAML parser: keep path keys at two spaces and methods at four"
    );

    let mut missing = Vec::new();
    for (path, (methods, file)) in &routes {
        match documented.get(path) {
            None => missing.push(format!(
                "{path} ({}) routed in {} is not under `paths:`",
                methods.iter().cloned().collect::<Vec<_>>().join(", "),
                file.display()
            )),
            Some(documented_methods) if path.starts_with("/api/") => {
                for method in methods.difference(documented_methods) {
                    missing.push(format!(
                        "{} {path} routed in {} is not documented under `{path}:`",
                        method.to_uppercase(),
                        file.display()
                    ));
                }
            }
            Some(_) => {}
        }
    }
    let agent = agent_paths();
    assert!(
        agent.len() >= 3,
        "found only {agent:?} as agent endpoints in src/devices/agent_api.rs"
    );
    for path in agent {
        if !documented.contains_key(&path) {
            missing.push(format!(
                "{path} (agent tunnel listener, src/devices/agent_api.rs) is not under `paths:`"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/openapi.yaml is missing endpoints:\n  {}",
        missing.join("\n  ")
    );
}
