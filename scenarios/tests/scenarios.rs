//! Every shipped scenario (`scenarios/*.yaml`) runs as a test: a whole mesh
//! on loopback, its faults and its assertions. The report is printed, so a
//! failing run shows which expectation missed and by how much.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use strait_scenarios::runner;
use strait_scenarios::spec::Scenario;

/// Each scenario gets its own 127.x.0.0/16 ranges (8 clusters max each).
static NEXT_OCTET: AtomicU8 = AtomicU8::new(20);

fn file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("{name}.yaml"))
}

async fn run(name: &str) {
    let text = std::fs::read_to_string(file(name)).unwrap();
    let scenario = Scenario::from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let octet = NEXT_OCTET.fetch_add(8, Ordering::SeqCst);
    let report = runner::run(&scenario, dir.path(), octet, &|line| {
        eprintln!("[{name}] {line}")
    })
    .await
    .unwrap_or_else(|e| panic!("{name} could not run: {e:#}"));
    let text = report.render();
    println!("{text}");
    assert!(report.passed, "{text}");
    assert!(
        !report.outcomes.is_empty(),
        "a scenario must check something"
    );
}

macro_rules! scenario_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                run($name).await;
            }
        )*

        #[test]
        fn every_scenario_file_is_tested_and_parses() {
            let tested = [$($name),*];
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
            let mut found = Vec::new();
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "yaml") {
                    let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                    Scenario::from_yaml(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(tested.contains(&name.as_str()), "scenario {name} has no test");
                    found.push(name);
                }
            }
            assert_eq!(found.len(), tested.len());
        }
    };
}

scenario_tests! {
    failover_cross_cluster => "failover-cross-cluster",
    locality_weighted => "locality-weighted",
    gateway_loss => "gateway-loss",
    controller_loss => "controller-loss",
    partition_and_heal => "partition-and-heal",
    cert_rotation => "cert-rotation",
    root_rotation => "root-rotation",
    authz_deny_cross_cluster => "authz-deny-cross-cluster",
    dns_failover_unmeshed_client => "dns-failover-unmeshed-client",
    workload_pause => "workload-pause",
}
