//! `strait link --from east --to west`: one operator who runs both
//! controllers takes a peering token from --to and establishes it on --from.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use strait_api::ClusterName;
use strait_federation::controller::admin_api::{
    ADMIN_TOKEN_FILE, EstablishBody, TokenAnswer, TokenRequest,
};
use strait_federation::peering::{FailMode, Link};

use super::{Controller, block_on, link_line, parse_fail_mode};
use crate::output::{Format, emit};

/// Link two clusters when you operate both (no token copying).
///
/// Takes a one-time peering token from the --to controller and establishes
/// it on the --from controller; afterwards the controllers talk only over
/// mTLS with their own identities. In a running demo the names are enough:
///
///   strait link --from east --to west
///   strait link --from east --to west --dir /tmp/strait-demo
///   strait link --from east --to west \
///       --from-controller 127.0.0.1:8611 --from-state-dir ./state/east \
///       --to-controller 10.0.0.9:8611 --to-state-dir ./state/west
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct LinkArgs {
    /// The cluster that establishes the link.
    #[arg(long)]
    from: String,
    /// The cluster that issues the token.
    #[arg(long)]
    to: String,
    #[arg(long, requires = "from_state_dir")]
    from_controller: Option<SocketAddr>,
    #[arg(long)]
    from_state_dir: Option<PathBuf>,
    #[arg(long, requires = "to_state_dir")]
    to_controller: Option<SocketAddr>,
    #[arg(long)]
    to_state_dir: Option<PathBuf>,
    /// The mesh directory (for a side without --*-controller).
    #[command(flatten)]
    dir: crate::meshdir::DirFlag,
    /// What --from does with --to's endpoints when its lease ends.
    #[arg(long, default_value = "fail-static", value_parser = parse_fail_mode)]
    fail_mode: FailMode,
    /// How long --from keeps --to's data fresh without a message (default:
    /// its controller's sync lease, 30s). Change it later with `strait
    /// peering set`.
    #[arg(long, value_parser = crate::output::parse_duration)]
    lease: Option<std::time::Duration>,
}

impl LinkArgs {
    fn side(
        &self,
        flag: &str,
        name: &str,
        admin: Option<SocketAddr>,
        state: Option<&PathBuf>,
    ) -> anyhow::Result<Controller> {
        ClusterName::new(name).with_context(|| format!("--{flag}: bad cluster name {name:?}"))?;
        match admin {
            Some(admin) => Ok(Controller {
                admin,
                token_file: state.map(|d| d.join(ADMIN_TOKEN_FILE)),
            }),
            None => Controller::from_demo(&self.dir.resolve(), name).with_context(|| {
                format!("--{flag} {name} (or pass --{flag}-controller ADDR --{flag}-state-dir DIR)")
            }),
        }
    }
}

pub fn run(args: LinkArgs, format: Format) -> anyhow::Result<()> {
    if args.from == args.to {
        bail!(
            "--from and --to are both {:?}: a cluster is not linked with itself",
            args.from
        );
    }
    let from = args.side(
        "from",
        &args.from,
        args.from_controller,
        args.from_state_dir.as_ref(),
    )?;
    let to = args.side(
        "to",
        &args.to,
        args.to_controller,
        args.to_state_dir.as_ref(),
    )?;
    let link: Link = block_on(async {
        let t: TokenAnswer = to
            .post("/v1/peering/token", &TokenRequest { ttl_secs: 300 })
            .await
            .with_context(|| format!("peering token from {}", args.to))?;
        let body = EstablishBody {
            token: t.token,
            fail_mode: args.fail_mode,
            lease_secs: args.lease.map(|l| l.as_secs()),
        };
        from.post("/v1/peering/establish", &body)
            .await
            .with_context(|| format!("establishing on {}", args.from))
    })?;
    if link.peer.as_str() != args.to {
        bail!(
            "linked {} with cluster {}, not {}: --to-controller points at another cluster (undo with `strait unlink --peer {}`)",
            args.from,
            link.peer,
            args.to,
            link.peer
        );
    }
    emit(format, &link, link_line)
}
