//! `strait peering token|establish|revoke|set`: links between clusters
//! made, refused and tuned from one side.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use strait_api::ClusterName;
use strait_federation::controller::admin_api::{
    EstablishBody, LinkSettings, RevokeAnswer, RevokeRequest, TokenAnswer, TokenRequest,
};
use strait_federation::peering::{FailMode, Link};

use super::{ConnArgs, block_on, parse_fail_mode};
use crate::output::{Format, emit, parse_duration};

#[derive(Debug, Subcommand)]
pub enum PeeringCommand {
    /// Print a one-time peering token of this cluster (give it to the other side).
    ///
    ///   strait peering token --cluster west --ttl 15m
    #[command(verbatim_doc_comment)]
    Token {
        /// How long the token can be used (once).
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Link this cluster with the one that issued TOKEN.
    ///
    ///   strait peering establish "$TOKEN" --cluster east --lease 45s
    #[command(verbatim_doc_comment)]
    Establish {
        token: String,
        /// What happens to the peer's endpoints when its lease ends.
        #[arg(long, default_value = "fail-static", value_parser = parse_fail_mode)]
        fail_mode: FailMode,
        /// How long the peer's data stays fresh without a message
        /// (default: the controller's sync lease, 30s).
        #[arg(long, value_parser = parse_duration)]
        lease: Option<Duration>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Revoke an unused peering token of this cluster (or every one with
    /// --all): a peer presenting it is refused from now on.
    ///
    ///   strait peering revoke "$TOKEN" --cluster west
    ///   strait peering revoke --all --cluster west
    #[command(verbatim_doc_comment)]
    Revoke {
        /// The token as `peering token` printed it.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        token: Option<String>,
        /// Every token of this cluster not used yet.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Change how this side treats a linked peer's data: its lease and what
    /// happens when the lease ends.
    ///
    ///   strait peering set --peer west --lease 45s --fail-mode fail-closed --cluster east
    #[command(verbatim_doc_comment)]
    Set {
        /// The linked cluster.
        #[arg(long)]
        peer: String,
        /// How long the peer's data stays fresh without a message.
        #[arg(long, value_parser = parse_duration, required_unless_present = "fail_mode")]
        lease: Option<Duration>,
        /// fail-static (keep the last endpoints, marked stale) or fail-closed.
        #[arg(long, value_parser = parse_fail_mode)]
        fail_mode: Option<FailMode>,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

pub fn link_line(l: &Link) -> String {
    let lease = l
        .lease_secs
        .map_or_else(|| "default lease".to_owned(), |s| format!("lease {s}s"));
    format!(
        "linked with {} (controller {}, identity {}, {} gateway(s), {:?}, {lease})\n",
        l.peer,
        l.controller,
        l.peer_identity,
        l.gateways.len(),
        l.fail_mode
    )
}

pub fn peering(cmd: PeeringCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        PeeringCommand::Token { ttl, conn } => {
            let ctl = conn.resolve()?;
            let req = TokenRequest {
                ttl_secs: ttl.as_secs(),
            };
            let t: TokenAnswer = block_on(ctl.post("/v1/peering/token", &req))?;
            emit(format, &t, |t| t.token.clone() + "\n")
        }
        PeeringCommand::Establish {
            token,
            fail_mode,
            lease,
            conn,
        } => {
            let ctl = conn.resolve()?;
            let req = EstablishBody {
                token,
                fail_mode,
                lease_secs: lease.map(|l| l.as_secs()),
            };
            let link: Link = block_on(ctl.post("/v1/peering/establish", &req))?;
            emit(format, &link, link_line)
        }
        PeeringCommand::Revoke { token, all, conn } => {
            let ctl = conn.resolve()?;
            let req = RevokeRequest { token, all };
            let a: RevokeAnswer = block_on(ctl.post("/v1/peering/revoke", &req))?;
            emit(format, &a, |a| match (a.revoked, all) {
                (0, false) => format!(
                    "nothing to revoke: the token was already used, had expired or was revoked ({} unused token(s) left)\n",
                    a.pending
                ),
                (n, _) => format!("revoked {n} token(s); {} unused token(s) left\n", a.pending),
            })
        }
        PeeringCommand::Set {
            peer,
            lease,
            fail_mode,
            conn,
        } => {
            let peer = ClusterName::new(&peer)
                .with_context(|| format!("--peer: bad cluster name {peer:?}"))?;
            let ctl = conn.resolve()?;
            let req = LinkSettings {
                peer,
                fail_mode,
                lease_secs: lease.map(|l| l.as_secs()),
            };
            let link: Link = block_on(ctl.post("/v1/link/settings", &req))?;
            emit(format, &link, link_line)
        }
    }
}
