//! Reading a demo directory (`demo.json`) for the operator verbs that take
//! `--dir` instead of addresses.

use std::path::{Path, PathBuf};

use anyhow::Context;
use strait_api::meshdir::{DEMO_STATE_FILE, DemoState};

/// `demo.json` in `dir`.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join(DEMO_STATE_FILE)
}

/// Reads a running demo's `demo.json`; `otherwise` names the flags that
/// work without a demo, for the error message.
pub fn read_state(dir: &Path, otherwise: &str) -> anyhow::Result<DemoState> {
    let path = state_file(dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no running demo at {} (start one with `strait demo --dir {}`, or pass {otherwise})",
            path.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| path.display().to_string())
}

/// The mesh directory every operator verb takes: `--dir` (or `STRAIT_DIR`),
/// whichever of `strait demo` and `strait cluster up` made it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DirFlag {
    /// The mesh directory (made by `strait cluster up` or `strait demo`)
    /// [default: ./strait-mesh if it exists, else ./strait-demo].
    #[arg(long, env = "STRAIT_DIR")]
    pub dir: Option<PathBuf>,
    /// The old spelling of --dir (deprecated; still works).
    #[arg(long, hide = true)]
    pub demo_dir: Option<PathBuf>,
}

/// Where verbs look when no directory is given.
pub const DEFAULT_DIRS: [&str; 2] = ["strait-mesh", "strait-demo"];

impl DirFlag {
    /// The directory to use (a deprecation note on stderr for `--dir`).
    pub fn resolve(&self) -> PathBuf {
        if let Some(d) = &self.demo_dir {
            eprintln!("note: --demo-dir is deprecated; use --dir (or STRAIT_DIR)");
            return d.clone();
        }
        self.dir.clone().unwrap_or_else(|| {
            DEFAULT_DIRS
                .iter()
                .map(PathBuf::from)
                .find(|d| d.is_dir())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DIRS[0]))
        })
    }
}
