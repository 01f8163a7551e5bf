//! Category databases on disk: UT1/Shallalist directories (`<category>/domains`,
//! `<category>/urls`), directories of plain lists, single domain lists and hosts files.

use std::fs;
use std::path::{Path, PathBuf};

use crate::domain::parse_category_line;
use crate::glob::PathPattern;

/// One file to read into one category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CategoryFile {
    pub category: String,
    pub path: PathBuf,
}

/// Files that UT1 and Shallalist put in a category directory.
const LAYOUT_FILES: [&str; 2] = ["domains", "urls"];

/// Lists the files behind a `load` entry, in a stable order.
pub(crate) fn discover(path: &Path, name: Option<&str>) -> Result<Vec<CategoryFile>, String> {
    let meta = fs::metadata(path)
        .map_err(|e| format!("cannot read category source {}: {e}", path.display()))?;
    if meta.is_file() {
        let category = match name {
            Some(n) => n.to_string(),
            None => file_stem(path),
        };
        return Ok(vec![CategoryFile {
            category,
            path: path.to_path_buf(),
        }]);
    }
    if name.is_some() {
        return Err(format!(
            "{} is a directory: `name` applies to single files (directory entries are named after their sub-directories and files)",
            path.display()
        ));
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .map_err(|e| format!("cannot list {}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for entry in entries {
        let base = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if base.starts_with('.') {
            continue;
        }
        if entry.is_dir() {
            let category = base.to_string();
            for f in LAYOUT_FILES {
                let p = entry.join(f);
                if p.is_file() {
                    out.push(CategoryFile {
                        category: category.clone(),
                        path: p,
                    });
                }
            }
        } else if entry.is_file() && !is_metadata_file(base) {
            out.push(CategoryFile {
                category: file_stem(&entry),
                path: entry,
            });
        }
    }
    if out.is_empty() {
        return Err(format!(
            "{} holds no category files (expected <category>/domains, <category>/urls or plain list files)",
            path.display()
        ));
    }
    Ok(out)
}

fn is_metadata_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("readme")
        || lower.starts_with("license")
        || lower.starts_with("copying")
        || lower.ends_with(".md")
        || lower.ends_with(".toml")
        || lower == "global_usage"
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("unnamed")
        .to_string()
}

/// Invalid lines skipped while reading a category file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Skipped {
    pub count: usize,
    pub first_line: usize,
    pub first_reason: String,
}

/// Reads a category file, calling `add(host, path)` per entry. Returns the raw bytes'
/// length for revision hashing via `feed` and a report of skipped lines.
pub(crate) fn read_entries(
    path: &Path,
    mut feed: impl FnMut(&[u8]),
    mut add: impl FnMut(&str, Option<PathPattern>),
) -> Result<Skipped, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    feed(&bytes);
    let text = String::from_utf8_lossy(&bytes);
    let mut skipped = Skipped::default();
    for (n, line) in text.lines().enumerate() {
        match parse_category_line(line) {
            Ok(Some((host, p))) => add(&host, p),
            Ok(None) => {}
            Err(reason) => {
                if skipped.count == 0 {
                    skipped.first_line = n + 1;
                    skipped.first_reason = reason;
                }
                skipped.count += 1;
            }
        }
    }
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ut1_directory_yields_domains_and_urls_per_category_in_order() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("news")).unwrap();
        fs::create_dir_all(dir.path().join("adult")).unwrap();
        fs::write(dir.path().join("news/domains"), "news.example\n").unwrap();
        fs::write(dir.path().join("news/urls"), "paper.example/politics\n").unwrap();
        fs::write(dir.path().join("adult/domains"), "x.example\n").unwrap();
        fs::write(dir.path().join("README"), "about\n").unwrap();
        let files = discover(dir.path(), None).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.category.as_str()).collect();
        assert_eq!(names, ["adult", "news", "news"]);
    }

    #[test]
    fn single_file_is_named_by_stem_or_explicit_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ads.hosts");
        fs::write(&p, "0.0.0.0 ads.example\n").unwrap();
        assert_eq!(discover(&p, None).unwrap()[0].category, "ads");
        assert_eq!(
            discover(&p, Some("tracking")).unwrap()[0].category,
            "tracking"
        );
    }

    #[test]
    fn missing_source_is_an_error_naming_the_path() {
        let err = discover(Path::new("/nonexistent/rampart-cats"), None).unwrap_err();
        assert!(err.contains("/nonexistent/rampart-cats"));
    }

    #[test]
    fn read_entries_reports_the_first_invalid_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("list");
        fs::write(&p, "# comment\nok.example\nb@d.example\nalso!bad\n").unwrap();
        let mut hosts = Vec::new();
        let skipped = read_entries(&p, |_| {}, |h, _| hosts.push(h.to_string())).unwrap();
        assert_eq!(hosts, ["ok.example"]);
        assert_eq!((skipped.count, skipped.first_line), (2, 3));
    }
}
