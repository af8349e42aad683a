//! Sets `ASGI_GATE_COMMIT` for `asgi-gate --version`: the short commit of
//! the checkout being built, or "unknown" where there is none (a wheel's
//! sdist, a crates.io download, no `git` installed). `ASGI_GATE_COMMIT` in
//! the environment wins, for builds from a copy without `.git`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ASGI_GATE_COMMIT");
    let commit = match std::env::var("ASGI_GATE_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => git_commit().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=ASGI_GATE_COMMIT={commit}");
}

/// `git` run in this crate's directory; `None` when it is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn git_commit() -> Option<String> {
    // Only our own checkout: an sdist unpacked inside some other repository
    // would otherwise report that repository's commit.
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let workspace = manifest.parent()?.canonicalize().ok()?;
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != workspace {
        return None;
    }
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it names
    // (a commit), packed-refs (a gc). In a worktree HEAD lives in its own git
    // dir and the branch in the common one. Only existing files: cargo
    // reruns the script on every build for a path that does not exist.
    let git_dir = absolute(&manifest, git(&["rev-parse", "--git-dir"])?);
    let common = git(&["rev-parse", "--git-common-dir"])
        .map(|d| absolute(&manifest, d))
        .unwrap_or_else(|| git_dir.clone());
    let mut watch = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(common.join(head_ref));
    }
    for path in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Some(commit)
}

/// git prints some paths relative to the directory it ran in.
fn absolute(dir: &Path, p: String) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        dir.join(p)
    }
}
