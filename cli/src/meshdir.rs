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
