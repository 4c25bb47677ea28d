//! Runs the fake API server by hand (for trying a client against it):
//! `cargo run -p strait-k8s-fake --example serve -- 127.178.9.1:0 DIR`
//! writes `DIR/kubeconfig` (token `dev`) and serves until Ctrl-C.

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let api = strait_k8s_fake::FakeApi::start_with(strait_k8s_fake::Options::secure(
        bind.parse().expect("an address"),
        "dev",
    ))
    .await;
    api.write_kubeconfig(&dir.join("kubeconfig"), "dev", "default")
        .expect("write the kubeconfig");
    eprintln!("fake api server on {}", api.url());
    let _ = tokio::signal::ctrl_c().await;
    for r in api.requests() {
        eprintln!("{r}");
    }
}
