//! `strait demo`, `strait scenario run|list` and `strait status`: the
//! commands built on the in-process mesh of `strait-scenarios`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use strait_scenarios::demo;
use strait_scenarios::{runner, spec::Scenario};

use crate::output::{Format, emit};

/// Run a three-cluster mesh on this machine (no Kubernetes, no root).
///
/// Starts east, west and central on loopback addresses: one root CA, a
/// controller, an east-west gateway and DNS per cluster, echo.demo exported
/// from west and central, and links between all three. Prints how to try
/// it and runs until Ctrl-C.
///
///   strait demo
///   strait demo --dir /tmp/strait-demo
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DemoArgs {
    /// Where the demo keeps its CA, state and `demo.json`.
    #[arg(long, default_value = "strait-demo")]
    dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Run a scenario file and print its report (exit 1 when an assertion fails).
    ///
    ///   strait scenario run scenarios/failover-cross-cluster.yaml
    #[command(verbatim_doc_comment)]
    Run {
        file: PathBuf,
        /// Second octet of the scenario's loopback range (127.N.0.0/16 ...).
        #[arg(long, default_value_t = 20)]
        octet: u8,
    },
    /// List the scenarios in a directory with their descriptions.
    List {
        #[arg(default_value = "scenarios")]
        dir: PathBuf,
    },
}

fn progress(line: &str) {
    eprintln!("==> {line}");
}

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (mesh, state) = demo::start(&args.dir, &progress).await?;
        println!("{}", demo::banner(&mesh, &state));
        crate::signal::wait_for_shutdown().await;
        progress("stopping every component");
        mesh.shutdown().await;
        let _ = std::fs::remove_file(demo::state_file(&args.dir));
        progress("stopped");
        anyhow::Ok(())
    })
}

pub fn scenario(cmd: ScenarioCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        ScenarioCommand::Run { file, octet } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            let s = Scenario::from_yaml(&text).with_context(|| file.display().to_string())?;
            let dir = tempfile::tempdir()?;
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(runner::run(&s, dir.path(), octet, &progress))?;
            emit(format, &report, |r| r.render())?;
            if !report.passed {
                std::process::exit(1);
            }
            Ok(())
        }
        ScenarioCommand::List { dir } => {
            #[derive(Serialize)]
            struct Item {
                name: String,
                file: PathBuf,
                description: String,
            }
            let mut items = Vec::new();
            for e in std::fs::read_dir(&dir)
                .with_context(|| dir.display().to_string())?
                .flatten()
            {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "yaml") {
                    let s = Scenario::from_yaml(&std::fs::read_to_string(&p)?)
                        .with_context(|| p.display().to_string())?;
                    items.push(Item {
                        name: s.name,
                        file: p,
                        description: s.description.trim().to_owned(),
                    });
                }
            }
            items.sort_by(|a, b| a.name.cmp(&b.name));
            emit(format, &items, |items| {
                items
                    .iter()
                    .map(|i| {
                        format!(
                            "{:<30} {}\n",
                            i.name,
                            i.description.split(". ").next().unwrap_or("")
                        )
                    })
                    .collect()
            })
        }
    }
}
