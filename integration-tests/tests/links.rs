//! The repository stands on its own: no file links outside it, and every
//! relative link in README.md and docs/ leads to a file (and heading) that
//! exists, so what a user reads after `pip install` or a clone is complete.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The repository's files as git sees them: tracked, plus new files not
/// ignored (so a page not yet added is checked too, and venvs, build output
/// and other ignored folders are not).
fn repo_files(root: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output();
    match out {
        Ok(o) if o.status.success() => o
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
            .filter(|p| p.is_file())
            .collect(),
        // Not a git checkout (a source archive): every file but the usual
        // build output and environments.
        _ => {
            let mut paths = Vec::new();
            walk(root, &mut paths);
            paths
        }
    }
}

const SKIP_DIRS: &[&str] = &[".git", "target", "node_modules", "__pycache__"];

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            let hidden_env = name.to_string_lossy().starts_with(".venv");
            if !hidden_env && !SKIP_DIRS.iter().any(|s| name == *s) {
                walk(&path, out);
            }
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

/// Text files of the repository (a NUL in the first 8 KiB means binary).
fn text_files() -> Vec<(PathBuf, String)> {
    let mut paths = repo_files(&root());
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let bytes = std::fs::read(&p).ok()?;
            if bytes.iter().take(8192).any(|b| *b == 0) {
                return None;
            }
            Some((p, String::from_utf8_lossy(&bytes).into_owned()))
        })
        .collect()
}

/// Markdown text without fenced code blocks and inline code spans, where
/// `[x](y)` is not a link.
fn prose(md: &str) -> String {
    let mut out = String::new();
    let mut fence: Option<&str> = None;
    for line in md.lines() {
        let t = line.trim_start();
        match fence {
            Some(f) if t.starts_with(f) => fence = None,
            Some(_) => {}
            None if t.starts_with("```") => fence = Some("```"),
            None if t.starts_with("~~~") => fence = Some("~~~"),
            None => {
                // Drop `code` spans (odd backtick runs pair up per line).
                let mut in_code = false;
                for c in line.chars() {
                    if c == '`' {
                        in_code = !in_code;
                    } else if !in_code {
                        out.push(c);
                    }
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Targets of `[text](target)`, `[id]: target`, `href="…"` and `src="…"`.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find("](") {
        let start = i + off + 2;
        let mut depth = 0usize;
        let mut end = start;
        while end < bytes.len() {
            match bytes[end] {
                b'(' => depth += 1,
                b')' if depth == 0 => break,
                b')' => depth -= 1,
                b'\n' => break,
                _ => {}
            }
            end += 1;
        }
        let inner = text[start..end].trim();
        // `(path "title")`
        let target = inner.split_whitespace().next().unwrap_or("");
        out.push(target.trim_matches(['<', '>']).to_string());
        i = end.max(start);
    }
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix('[') {
            if let Some((_, after)) = rest.split_once("]:") {
                if let Some(target) = after.split_whitespace().next() {
                    out.push(target.trim_matches(['<', '>']).to_string());
                }
            }
        }
        for attr in ["href=\"", "src=\""] {
            let mut rest = line;
            while let Some(p) = rest.find(attr) {
                rest = &rest[p + attr.len()..];
                if let Some(q) = rest.find('"') {
                    out.push(rest[..q].to_string());
                    rest = &rest[q..];
                }
            }
        }
    }
    out
}

fn is_relative(target: &str) -> bool {
    !target.is_empty()
        && !target.starts_with('#')
        && !target.starts_with("//")
        // scheme: http:, https:, mailto:, …
        && !target
            .split_once(':')
            .is_some_and(|(s, _)| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)))
}

/// `base/rel` with `.` and `..` resolved by hand (the target need not exist);
/// `None` when `..` climbs above `root`.
fn resolve(root: &Path, base: &Path, rel: &str) -> Option<PathBuf> {
    let joined = if rel.starts_with('/') {
        root.join(rel.trim_start_matches('/'))
    } else {
        base.join(rel)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() || !out.starts_with(root) {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.starts_with(root).then_some(out)
}

/// GitHub's heading anchors: lower case, punctuation dropped, spaces to `-`,
/// repeats numbered `-1`, `-2`…
fn anchors(md: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    let mut fence = false;
    for line in md.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fence = !fence;
            continue;
        }
        if fence || !t.starts_with('#') {
            continue;
        }
        let title = t.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.push(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Problems with one file's links: escapes everywhere; missing files and
/// headings in `must_resolve` files.
fn check_file(root: &Path, path: &Path, text: &str, must_resolve: bool) -> Vec<String> {
    let rel_name = path
        .strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string();
    let is_md = path.extension().is_some_and(|e| e == "md");
    let scanned = if is_md { prose(text) } else { text.to_string() };
    let base = path.parent().unwrap_or(root);
    let mut problems = Vec::new();
    for target in link_targets(&scanned) {
        if target.starts_with('#') && must_resolve {
            let want = percent_decode(&target[1..]).to_lowercase();
            if !anchors(text).contains(&want) {
                problems.push(format!("{rel_name}: no heading for `{target}`"));
            }
            continue;
        }
        if !is_relative(&target) {
            continue;
        }
        let (file, fragment) = match target.split_once('#') {
            Some((f, frag)) => (f, Some(frag)),
            None => (target.as_str(), None),
        };
        let file = file.split('?').next().unwrap_or(file);
        let Some(resolved) = resolve(root, base, &percent_decode(file)) else {
            problems.push(format!(
                "{rel_name}: `{target}` points outside the repository"
            ));
            continue;
        };
        if !must_resolve {
            continue;
        }
        if !resolved.exists() {
            problems.push(format!("{rel_name}: `{target}` does not exist"));
            continue;
        }
        if let (Some(frag), true) = (fragment, resolved.extension().is_some_and(|e| e == "md")) {
            let linked = std::fs::read_to_string(&resolved).unwrap_or_default();
            let want = percent_decode(frag).to_lowercase();
            if !anchors(&linked).contains(&want) {
                problems.push(format!("{rel_name}: `{target}`: no such heading"));
            }
        }
    }
    problems
}

#[test]
fn no_file_links_outside_the_repository_and_docs_links_resolve() {
    let root = root();
    assert!(root.join("README.md").is_file(), "{}", root.display());
    // Built, not written as one literal, so this file does not match itself.
    let sibling = format!("..{}shared", '/');
    let docs = root.join("docs");
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, text) in text_files() {
        let rel_name = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if text.contains(&sibling) {
            problems.push(format!(
                "{rel_name}: names `{sibling}`, outside the repository"
            ));
        }
        let is_md = path.extension().is_some_and(|e| e == "md");
        let must_resolve = is_md && (path == root.join("README.md") || path.starts_with(&docs));
        checked += usize::from(must_resolve);
        problems.extend(check_file(&root, &path, &text, must_resolve));
    }
    assert!(checked >= 2, "README.md and docs/ were not found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_escapes_and_missing_targets() {
    let root = root();
    let readme = root.join("README.md");
    let bad = "[d](../x/design.md) [m](docs/missing.md) [h](#no-such-heading) \
               `[c](../code)` [ok](https://example.com) [a](#top)\n# Top\n";
    let problems = check_file(&root, &readme, bad, true);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("outside the repository"));
    assert!(problems[1].contains("does not exist"));
    assert!(problems[2].contains("no heading"));
    // Elsewhere, only escapes count.
    let other = root.join("NOTES.md");
    assert_eq!(check_file(&root, &other, bad, false).len(), 1);
    assert_eq!(
        anchors("# A b\n## A b\n### Über `x`, y!\n"),
        ["a-b", "a-b-1", "über-x-y"]
    );
}
