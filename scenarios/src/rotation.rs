//! Certificate and root rotation on a running mesh, through the same files
//! operators would change: sidecars and gateways watch their certificate
//! and bundle files; controllers hold their certificate and bundle in
//! memory and are updated in place.
//!
//! Root rotation is staged: (1) every component trusts old + new root,
//! (2) every certificate is re-issued under the new root, (3) the old root
//! is dropped. Each stage waits until every sidecar confirms it (its
//! trusted roots, or the certificate it presents).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use strait_ca::{CaDir, pem};

use crate::mesh::Mesh;

/// Every `bundle.pem` written for sidecars and gateways under `dir`.
fn bundle_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("certs")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "bundle.pem") {
                out.push(p);
            }
        }
    }
    out
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            return Err(anyhow!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

impl Mesh {
    /// Re-issues the certificate of every sidecar of `cluster` (same
    /// identities, new keys); returns how many were re-issued after each
    /// confirmed presenting its new certificate.
    pub async fn rotate_certs(&self, cluster: &str) -> anyhow::Result<usize> {
        let c = self.cluster(cluster)?;
        let mut expected = Vec::new();
        for (tag, id) in self.sidecar_identities(c)? {
            let out = self.spec.dir.join("certs").join(c.name.as_str()).join(&tag);
            let f = self
                .ca
                .issue(&c.name, &id, Duration::from_secs(86400), &out)?;
            expected.push(pem::certs(&std::fs::read_to_string(f.cert)?).remove(0));
        }
        let proxies = self.sidecars(c);
        wait_until(
            "sidecars to present their new certificates",
            Duration::from_secs(10),
            || {
                proxies
                    .iter()
                    .all(|p| p.certificate().is_some_and(|cert| expected.contains(&cert)))
            },
        )
        .await?;
        Ok(expected.len())
    }

    /// Staged root rotation across the mesh; returns the number of sidecars.
    pub async fn rotate_root(&mut self) -> anyhow::Result<usize> {
        let old_root = std::fs::read_to_string(self.ca.bundle_path())?;
        let n = self.rotations;
        self.rotations += 1;
        let next_dir = self.spec.dir.join(format!("ca-next-{n}"));
        let next = CaDir::init(&next_dir, &self.td, Duration::from_secs(365 * 86400))?;
        let new_root = std::fs::read_to_string(next.bundle_path())?;
        let both = format!("{old_root}{new_root}");

        // Stage 1: trust both roots everywhere.
        self.set_trust(&both, 2)
            .await
            .context("stage 1 (trust both roots)")?;
        // Stage 2: re-issue everything under the new root.
        std::fs::write(next.bundle_path(), &both)?;
        for c in &self.clusters {
            next.new_intermediate(&c.name, Duration::from_secs(30 * 86400))?;
        }
        self.ca = next;
        let mut count = 0;
        let names: Vec<String> = self.clusters.iter().map(|c| c.name.to_string()).collect();
        for name in &names {
            count += self.rotate_certs(name).await?;
            self.reissue_controller(name)?;
            for i in 0..self.cluster(name)?.gateways.len() {
                self.kill_gateway(name, i)?;
                self.restart_gateway(name, i).await?;
            }
        }
        // Stage 3: drop the old root.
        std::fs::write(self.ca.bundle_path(), &new_root)?;
        self.set_trust(&new_root, 1)
            .await
            .context("stage 3 (drop the old root)")?;
        Ok(count)
    }

    /// Writes `bundle_pem` to every bundle file and controller, then waits
    /// until every sidecar trusts exactly `roots` roots.
    async fn set_trust(&mut self, bundle_pem: &str, roots: usize) -> anyhow::Result<()> {
        for f in bundle_files(&self.spec.dir) {
            strait_ca::store::write_atomic(&f, bundle_pem.as_bytes(), 0o644)?;
        }
        let bundle = strait_ca::TrustBundle::from_pem(self.td.clone(), bundle_pem)?;
        for c in &self.clusters {
            c.set_bundle(bundle.clone());
        }
        let proxies: Vec<&strait_proxy::Proxy> = self
            .clusters
            .iter()
            .flat_map(|c| self.sidecars(c))
            .collect();
        wait_until(
            &format!("every sidecar to trust {roots} root(s)"),
            Duration::from_secs(10),
            || proxies.iter().all(|p| p.trusted_roots() == roots),
        )
        .await?;
        // Gateways read their bundle at start: restart them one at a time.
        let names: Vec<String> = self.clusters.iter().map(|c| c.name.to_string()).collect();
        for name in names {
            for i in 0..self.cluster(&name)?.gateways.len() {
                self.kill_gateway(&name, i)?;
                self.restart_gateway(&name, i).await?;
            }
        }
        Ok(())
    }
}
