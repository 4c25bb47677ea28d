//! Certificate and root rotation on a running mesh, through the same files
//! operators would change: every component (sidecars, gateways and
//! controllers) watches its certificate and bundle files.
//!
//! Root rotation is `strait_ca::rotation`, the same staged logic as
//! `strait ca rotate`: (1) every component trusts old + new root, (2) every
//! certificate is re-issued under the new root, (3) the old root is
//! dropped. Each stage waits until every component confirms it (its
//! trusted roots, or the root its certificate chains to).

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use strait_ca::pem;
use strait_ca::rotation::{Expect, Rotation, Stage};

use crate::mesh::Mesh;

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

    /// Staged root rotation across the mesh; returns the number of
    /// components that confirmed every stage.
    pub async fn rotate_root(&self) -> anyhow::Result<usize> {
        let rotation = Rotation::new(self.ca.clone());
        let dirs = strait_ca::rotation::find(&self.spec.dir.join("certs"));
        for stage in Stage::ALL {
            let expect = rotation
                .run(stage, &dirs)
                .with_context(|| format!("stage {stage}"))?;
            self.confirmed(&expect)
                .await
                .with_context(|| format!("stage {stage} ({})", stage.goal()))?;
            rotation.confirm(stage)?;
        }
        Ok(self.clusters.iter().map(|c| c.trust().len()).sum())
    }

    /// Waits until every component meets `expect`; on timeout names those
    /// that do not, and why.
    async fn confirmed(&self, expect: &Expect) -> anyhow::Result<()> {
        let pending = || -> Vec<String> {
            self.clusters
                .iter()
                .flat_map(|c| c.trust())
                .filter_map(|(who, r)| expect.shortfall(&r).map(|why| format!("{who}: {why}")))
                .collect()
        };
        let result = wait_until(
            &format!("every component to {}", expect.stage.goal()),
            Duration::from_secs(10),
            || pending().is_empty(),
        )
        .await;
        result.map_err(|e| anyhow!("{e}; not confirmed: {}", pending().join("; ")))
    }
}

/// Swaps a controller's certificate and bundle when its files change, as
/// `strait controller` does.
pub(crate) async fn reload_files(
    files: strait_proxy::config::IdentitySource,
    td: strait_api::TrustDomain,
    id: strait_api::SpiffeId,
    certs: strait_ca::CertStore,
    bundle: strait_ca::SharedBundle,
) {
    if let strait_proxy::config::IdentitySource::Files {
        chain,
        key,
        bundle: b,
    } = files
    {
        let files = strait_ca::reload::IdentityFiles::new(chain, key, b, td).expecting(id);
        strait_ca::reload::watch(files, certs, bundle).await;
    }
}
