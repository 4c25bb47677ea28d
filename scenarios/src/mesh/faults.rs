//! The faults a scenario injects: apps killed, paused and restarted,
//! gateways and controllers killed and restarted, partitions.

use super::*;

impl Mesh {
    /// Stops every replica's app (the sidecars stay, like a crashed app).
    pub fn kill_workload(&mut self, cluster: &str, service: &str) -> anyhow::Result<()> {
        let w = self.cluster_mut(cluster)?.workload_mut(service)?;
        for r in &mut w.replicas {
            r.app = None;
        }
        Ok(())
    }

    /// Freezes (or thaws) every app replica of a workload: connections are
    /// accepted, nothing is answered (a hung process, not a dead one).
    pub fn pause_workload(&mut self, cluster: &str, service: &str, on: bool) -> anyhow::Result<()> {
        let w = self.cluster_mut(cluster)?.workload_mut(service)?;
        for r in &w.replicas {
            if let Some(app) = &r.app {
                app.pause(on);
            }
        }
        Ok(())
    }

    pub async fn restart_workload(&mut self, cluster: &str, service: &str) -> anyhow::Result<()> {
        let c = self.cluster_mut(cluster)?;
        let (net_cluster, w) = (c.name.clone(), c.workload_mut(service)?);
        let spec = w.spec.clone();
        for (r, rep) in w.replicas.iter_mut().enumerate() {
            if rep.app.is_none() {
                rep.app = Some(start_app(&spec, net_cluster.as_str(), r, rep.ip).await?);
            }
        }
        Ok(())
    }

    pub fn kill_gateway(&mut self, cluster: &str, replica: usize) -> anyhow::Result<()> {
        let c = self.cluster_mut(cluster)?;
        let g = c
            .gateways
            .get_mut(replica)
            .ok_or_else(|| anyhow!("cluster {cluster} has no gateway {replica}"))?;
        if let Some(h) = g.take() {
            h.kill();
        }
        Ok(())
    }

    pub async fn restart_gateway(&mut self, cluster: &str, replica: usize) -> anyhow::Result<()> {
        let (name, net, grpc) = {
            let c = self.cluster(cluster)?;
            (c.name.clone(), c.net, c.controller_grpc())
        };
        let mut h = None;
        for _ in 0..50 {
            match self.start_gateway(&name, net, replica, grpc).await {
                Ok(g) => {
                    h = Some(g);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let h = h.ok_or_else(|| anyhow!("gateway {replica} of {cluster} did not restart"))?;
        self.cluster_mut(cluster)?.gateways[replica] = Some(h);
        Ok(())
    }

    pub async fn kill_controller(&mut self, cluster: &str) -> anyhow::Result<()> {
        if let Some(h) = self.cluster_mut(cluster)?.controller.take() {
            h.shutdown().await;
        }
        Ok(())
    }

    pub async fn restart_controller(&mut self, cluster: &str) -> anyhow::Result<()> {
        let (name, net, vip_octet, loc, certs, bundle, relay, ngw) = {
            let c = self.cluster(cluster)?;
            (
                c.name.clone(),
                c.net,
                c.vip_octet,
                c.locality.clone(),
                c.certs.clone(),
                c.bundle.clone(),
                c.relay.addr,
                c.gateways.len(),
            )
        };
        let gws: Vec<SocketAddr> = (0..ngw)
            .map(|i| sock(ip(net, 0, 10 + i as u8), 15443))
            .collect();
        let h = self
            .start_controller(&name, net, vip_octet, &loc, &gws, certs, bundle, relay)
            .await?;
        self.cluster_mut(cluster)?.controller = Some(h);
        Ok(())
    }

    /// Cuts the named clusters' controllers off from their peers.
    pub fn partition(&self, clusters: &[String]) -> anyhow::Result<()> {
        for c in clusters {
            self.cluster(c)?.relay.cut();
        }
        Ok(())
    }

    pub fn heal(&self, clusters: &[String]) -> anyhow::Result<()> {
        for c in clusters {
            self.cluster(c)?.relay.heal();
        }
        Ok(())
    }
}
