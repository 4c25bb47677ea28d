//! Staged root rotation of a CA directory and the certificate directories
//! it issued. Three stages, each a set of file changes followed by a
//! confirmation from every component (its [`TrustReport`]):
//!
//! 1. `add`: make the next root; every `bundle.pem` holds old + new root.
//!    Confirmed when every component trusts both.
//! 2. `reissue`: a new intermediate per cluster under the new root, and
//!    every certificate re-issued in place (same SPIFFE ID, same lifetime,
//!    same paths). Confirmed when every component presents a certificate
//!    under the new root.
//! 3. `drop`: every `bundle.pem` holds only the new root, which becomes
//!    the CA directory's root. Confirmed when every component trusts only it.
//!
//! ```text
//! DIR/rotation.json      the stage, whether it is confirmed, both roots' fingerprints
//! DIR/next/root.pem, root.key (0600)        the next root, from `add` to `drop`
//! DIR/next/clusters/<name>/intermediate.*   new intermediates before they are installed
//! DIR/retired/<old root fingerprint>/       the old root and intermediates, kept
//! ```
//!
//! A stage runs only after the one before it is confirmed; running the
//! current stage again resumes it (every step is idempotent). This module
//! only changes files; waiting for confirmations is the caller's (the CLI
//! asks admin ports, the scenario mesh asks its in-process components).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::UnixTime;
use serde::{Deserialize, Serialize};
use strait_api::ClusterName;

use crate::authority::{Authority, DEFAULT_INTERMEDIATE_TTL, DEFAULT_ROOT_TTL};
use crate::store::write_atomic;
use crate::trust::{TrustReport, fingerprint};
use crate::verify::{TrustBundle, Usage};
use crate::{CaDir, CaError, pem};

pub mod certs;

pub use certs::{CertDir, find};

const STATE: &str = "rotation.json";
const NEXT: &str = "next";
const RETIRED: &str = "retired";

/// A stage of a root rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Add,
    Reissue,
    Drop,
}

impl Stage {
    pub const ALL: [Self; 3] = [Self::Add, Self::Reissue, Self::Drop];

    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Reissue => "reissue",
            Self::Drop => "drop",
        }
    }

    /// What every component must report once the stage is done.
    pub fn goal(self) -> &'static str {
        match self {
            Self::Add => "trust both the old and the new root",
            Self::Reissue => "present a certificate under the new root",
            Self::Drop => "trust only the new root",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `DIR/rotation.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub stage: Stage,
    /// Every component confirmed the stage.
    pub confirmed: bool,
    /// Fingerprints of the roots trusted before the rotation.
    pub old_roots: Vec<String>,
    pub new_root: String,
    /// Clusters whose new intermediate is installed.
    #[serde(default)]
    pub intermediates: BTreeSet<String>,
}

impl State {
    /// What every component must report for this stage.
    pub fn expect(&self) -> Expect {
        Expect {
            stage: self.stage,
            old_roots: self.old_roots.clone(),
            new_root: self.new_root.clone(),
        }
    }
}

/// The stage to run next after `state` (`None`: no rotation yet).
pub fn next_stage(state: Option<&State>) -> Stage {
    match state {
        None => Stage::Add,
        Some(s) if !s.confirmed => s.stage,
        Some(s) => match s.stage {
            Stage::Add => Stage::Reissue,
            Stage::Reissue => Stage::Drop,
            Stage::Drop => Stage::Add,
        },
    }
}

/// Why a stage did not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    #[error("`{asked}` cannot run now: {why}; run `strait ca rotate {next}`")]
    OutOfOrder {
        asked: Stage,
        next: Stage,
        why: String,
    },
    #[error("{path}: {reason}")]
    CertDir { path: PathBuf, reason: String },
    #[error(
        "not re-issued under the new root: {}; run `strait ca rotate reissue` again (with these directories)",
        .0.join(", ")
    )]
    NotReissued(Vec<String>),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// What every component must report when a stage is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expect {
    pub stage: Stage,
    pub old_roots: Vec<String>,
    pub new_root: String,
}

/// The first 16 hex digits of a fingerprint, for humans.
pub fn short(fp: &str) -> &str {
    fp.get(..16).unwrap_or(fp)
}

impl Expect {
    pub fn met_by(&self, r: &TrustReport) -> bool {
        self.shortfall(r).is_none()
    }

    /// Why `r` does not meet the stage yet (`None`: it does).
    pub fn shortfall(&self, r: &TrustReport) -> Option<String> {
        let new = &self.new_root;
        match self.stage {
            Stage::Add if !r.trusts(new) => Some(format!(
                "trusts {} root(s), not the new one {}",
                r.trusted_roots,
                short(new)
            )),
            Stage::Add => self
                .old_roots
                .iter()
                .find(|o| !r.trusts(o))
                .map(|o| format!("no longer trusts the old root {}", short(o))),
            Stage::Reissue => match &r.presented_root {
                Some(p) if p == new => None,
                Some(p) => Some(format!("presents a certificate under {}", short(p))),
                None => Some("presents no certificate under a root it trusts".into()),
            },
            Stage::Drop => (r.roots != std::slice::from_ref(new)).then(|| {
                format!(
                    "trusts {} root(s) ({})",
                    r.trusted_roots,
                    r.roots
                        .iter()
                        .map(|f| short(f))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
        }
    }
}

/// Root rotation of one CA directory.
#[derive(Debug, Clone)]
pub struct Rotation {
    ca: CaDir,
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(CaError::io(path))
}

fn bad(path: &Path, reason: impl Into<String>) -> CaError {
    CaError::BadFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

impl Rotation {
    pub fn new(ca: CaDir) -> Self {
        Self { ca }
    }

    pub fn ca(&self) -> &CaDir {
        &self.ca
    }

    fn dir(&self) -> &Path {
        self.ca.path()
    }

    /// The recorded state (`None`: no rotation ever ran).
    pub fn state(&self) -> Result<Option<State>, RotationError> {
        let path = self.dir().join(STATE);
        match std::fs::read(&path) {
            Ok(raw) => Ok(Some(
                serde_json::from_slice(&raw).map_err(|e| bad(&path, e.to_string()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CaError::io(&path)(e).into()),
        }
    }

    fn save(&self, state: &State) -> Result<(), RotationError> {
        let json = serde_json::to_vec_pretty(state).map_err(|e| bad(self.dir(), e.to_string()))?;
        write_atomic(&self.dir().join(STATE), &json, 0o644)?;
        Ok(())
    }

    /// Checks that `asked` may run now; returns the state to run it from.
    fn admit(&self, asked: Stage) -> Result<Option<State>, RotationError> {
        let state = self.state()?;
        let next = next_stage(state.as_ref());
        let rerun = state
            .as_ref()
            .is_some_and(|s| s.stage == asked && asked != Stage::Drop);
        if asked == next || rerun {
            return Ok(state);
        }
        let why = match &state {
            None => "no root rotation is in progress".to_owned(),
            Some(s) if !s.confirmed => format!(
                "stage `{}` is not confirmed yet (it resumes and waits for every component when run again)",
                s.stage
            ),
            Some(s) if s.stage == Stage::Drop => "the last rotation is finished".to_owned(),
            Some(s) => format!("stage `{}` is done and `{next}` comes next", s.stage),
        };
        Err(RotationError::OutOfOrder { asked, next, why })
    }

    /// Runs the file changes of `stage` over the certificate directories
    /// `dirs`; returns what every component must then report. The stage is
    /// recorded unconfirmed: call [`Rotation::confirm`] once they do.
    pub fn run(&self, stage: Stage, dirs: &[PathBuf]) -> Result<Expect, RotationError> {
        let state = self.admit(stage)?;
        let issued = dirs
            .iter()
            .map(|d| CertDir::read(d))
            .collect::<Result<Vec<_>, _>>()?;
        let state = match stage {
            Stage::Add => self.add(state, &issued)?,
            Stage::Reissue => self.reissue(state, &issued)?,
            Stage::Drop => self.drop_old(state, &issued)?,
        };
        Ok(state.expect())
    }

    /// Records that every component confirmed `stage`.
    pub fn confirm(&self, stage: Stage) -> Result<(), RotationError> {
        let Some(mut s) = self.state()?.filter(|s| s.stage == stage) else {
            return Err(RotationError::OutOfOrder {
                asked: stage,
                next: next_stage(self.state()?.as_ref()),
                why: format!("stage `{stage}` is not the current stage"),
            });
        };
        s.confirmed = true;
        self.save(&s)
    }

    fn next_paths(&self) -> (PathBuf, PathBuf) {
        let d = self.dir().join(NEXT);
        (d.join("root.pem"), d.join("root.key"))
    }

    fn retired(&self, state: &State) -> PathBuf {
        let old = state.old_roots.first().map_or("unknown", |f| short(f));
        self.dir().join(RETIRED).join(old)
    }

    fn write_bundles(&self, bundle_pem: &str, issued: &[CertDir]) -> Result<(), RotationError> {
        for d in issued {
            write_atomic(&d.dir.join("bundle.pem"), bundle_pem.as_bytes(), 0o644)?;
        }
        write_atomic(&self.ca.bundle_path(), bundle_pem.as_bytes(), 0o644)?;
        Ok(())
    }

    fn add(&self, state: Option<State>, issued: &[CertDir]) -> Result<State, RotationError> {
        for d in issued {
            self.ca.intermediate(&d.cluster)?;
        }
        let bundle_path = self.ca.bundle_path();
        let current = pem::certs(&read(&bundle_path)?);
        let (cert_path, key_path) = self.next_paths();
        let state = match state.filter(|s| s.stage == Stage::Add) {
            Some(s) => s,
            None => {
                if !cert_path.exists() {
                    let ttl = lifetime(current.first()).unwrap_or(DEFAULT_ROOT_TTL);
                    let (_, made) = Authority::new_root(self.ca.trust_domain(), ttl)?;
                    let dir = self.dir().join(NEXT);
                    std::fs::create_dir_all(&dir).map_err(CaError::io(&dir))?;
                    write_atomic(&key_path, made.key.as_bytes(), 0o600)?;
                    write_atomic(&cert_path, made.cert.as_bytes(), 0o644)?;
                }
                let new = self.ca.load_authority(&cert_path, &key_path)?;
                State {
                    stage: Stage::Add,
                    confirmed: false,
                    old_roots: current.iter().map(|r| fingerprint(r)).collect(),
                    new_root: fingerprint(new.cert()),
                    intermediates: BTreeSet::new(),
                }
            }
        };
        self.save(&state)?;
        let new_root = pem::certs(&read(&cert_path)?);
        let mut roots: Vec<_> = current
            .into_iter()
            .filter(|r| state.old_roots.contains(&fingerprint(r)))
            .collect();
        roots.extend(new_root);
        self.write_bundles(&pem::encode_certs(&roots), issued)?;
        Ok(state)
    }

    fn reissue(&self, state: Option<State>, issued: &[CertDir]) -> Result<State, RotationError> {
        let mut state = state.ok_or_else(|| not_started(Stage::Reissue))?;
        state.stage = Stage::Reissue;
        state.confirmed = false;
        self.save(&state)?;
        let (cert_path, key_path) = self.next_paths();
        let root = self.ca.load_authority(&cert_path, &key_path)?;
        let mut clusters: BTreeSet<ClusterName> =
            issued.iter().map(|d| d.cluster.clone()).collect();
        if let Ok(rd) = std::fs::read_dir(self.dir().join("clusters")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Ok(c) = ClusterName::new(&name) {
                    if self.ca.cluster_dir(&c).join("intermediate.pem").exists() {
                        clusters.insert(c);
                    }
                }
            }
        }
        for c in clusters {
            if state.intermediates.contains(c.as_str()) {
                continue;
            }
            self.install_intermediate(&root, &state, &c)?;
            state.intermediates.insert(c.to_string());
            self.save(&state)?;
        }
        for d in issued {
            self.ca.issue(&d.cluster, &d.id, d.lifetime, &d.dir)?;
        }
        Ok(state)
    }

    /// Signs `cluster`'s new intermediate (staged under `next/`), keeps
    /// the old one under `retired/`, and installs the new one.
    fn install_intermediate(
        &self,
        root: &Authority,
        state: &State,
        cluster: &ClusterName,
    ) -> Result<(), RotationError> {
        let staged = self
            .dir()
            .join(NEXT)
            .join("clusters")
            .join(cluster.as_str());
        let (s_cert, s_key) = (
            staged.join("intermediate.pem"),
            staged.join("intermediate.key"),
        );
        if !s_cert.exists() {
            let (_, made) = root.new_intermediate(cluster, DEFAULT_INTERMEDIATE_TTL)?;
            std::fs::create_dir_all(&staged).map_err(CaError::io(&staged))?;
            write_atomic(&s_key, made.key.as_bytes(), 0o600)?;
            write_atomic(&s_cert, made.cert.as_bytes(), 0o644)?;
        }
        let live = self.ca.cluster_dir(cluster);
        let keep = self.retired(state).join("clusters").join(cluster.as_str());
        for (name, mode) in [("intermediate.key", 0o600), ("intermediate.pem", 0o644)] {
            let from = live.join(name);
            if from.exists() && !keep.join(name).exists() {
                std::fs::create_dir_all(&keep).map_err(CaError::io(&keep))?;
                let bytes = std::fs::read(&from).map_err(CaError::io(&from))?;
                write_atomic(&keep.join(name), &bytes, mode)?;
            }
        }
        std::fs::create_dir_all(&live).map_err(CaError::io(&live))?;
        write_atomic(
            &live.join("intermediate.key"),
            read(&s_key)?.as_bytes(),
            0o600,
        )?;
        write_atomic(
            &live.join("intermediate.pem"),
            read(&s_cert)?.as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    fn drop_old(&self, state: Option<State>, issued: &[CertDir]) -> Result<State, RotationError> {
        let mut state = state.ok_or_else(|| not_started(Stage::Drop))?;
        let (next_cert, next_key) = self.next_paths();
        let (root_cert, root_key) = self.ca.root_paths();
        let swapped = !next_cert.exists();
        let new_pem = read(if swapped { &root_cert } else { &next_cert })?;
        let new_root = pem::certs(&new_pem);
        if new_root.first().map(|r| fingerprint(r)).as_ref() != Some(&state.new_root) {
            return Err(bad(&next_cert, "is not the root `add` made").into());
        }
        let only_new = TrustBundle::new(self.ca.trust_domain().clone(), new_root.clone())
            .map_err(|e| bad(&next_cert, e.to_string()))?;
        let now = UnixTime::now();
        let stale: Vec<String> = issued
            .iter()
            .filter(|d| only_new.verify(&d.chain, now, Usage::Server).is_err())
            .map(|d| d.dir.display().to_string())
            .collect();
        if !stale.is_empty() {
            return Err(RotationError::NotReissued(stale));
        }
        state.stage = Stage::Drop;
        state.confirmed = false;
        self.save(&state)?;
        let bundle_pem = pem::encode_certs(&new_root);
        self.write_bundles(&bundle_pem, issued)?;
        if !swapped {
            let keep = self.retired(&state);
            std::fs::create_dir_all(&keep).map_err(CaError::io(&keep))?;
            for (from, name, mode) in [
                (&root_key, "root.key", 0o600),
                (&root_cert, "root.pem", 0o644),
            ] {
                if from.exists() && !keep.join(name).exists() {
                    let bytes = std::fs::read(from).map_err(CaError::io(from))?;
                    write_atomic(&keep.join(name), &bytes, mode)?;
                }
            }
            write_atomic(&root_key, read(&next_key)?.as_bytes(), 0o600)?;
            write_atomic(&root_cert, new_pem.as_bytes(), 0o644)?;
            let next = self.dir().join(NEXT);
            std::fs::remove_dir_all(&next).map_err(CaError::io(&next))?;
        }
        Ok(state)
    }
}

fn not_started(asked: Stage) -> RotationError {
    RotationError::OutOfOrder {
        asked,
        next: Stage::Add,
        why: "no root rotation is in progress".into(),
    }
}

/// The validity period of a certificate.
fn lifetime(cert: Option<&rustls_pki_types::CertificateDer<'_>>) -> Option<Duration> {
    let (_, x) = x509_parser::parse_x509_certificate(cert?).ok()?;
    let v = x.validity();
    let secs = v.not_after.timestamp() - v.not_before.timestamp();
    u64::try_from(secs)
        .ok()
        .map(Duration::from_secs)
        .filter(|d| *d >= Duration::from_secs(3600))
}

#[cfg(test)]
mod tests;
