//! CA throughput: CSR to signed chain, and chain verification.
//!
//! `cargo bench -p strait-ca` prints per-operation times; criterion's
//! throughput setting turns them into operations per second.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls::pki_types::UnixTime;
use strait_api::{ClusterName, SpiffeId, TrustDomain};
use strait_ca::CaDir;
use strait_ca::verify::Usage;

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let td = TrustDomain::new("strait.local").expect("td");
    let ca = CaDir::init(
        &tmp.path().join("ca"),
        &td,
        Duration::from_secs(86400 * 365),
    )
    .expect("init");
    let east = ClusterName::new("east").expect("name");
    ca.new_intermediate(&east, Duration::from_secs(86400 * 30))
        .expect("intermediate");
    let authority = ca.intermediate(&east).expect("load");
    let id = SpiffeId::parse("spiffe://strait.local/ns/default/sa/web").expect("id");

    // A CSR as a workload would send it (key generated once, outside the loop).
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        id.as_str().to_owned().try_into().expect("ia5"),
    )];
    let csr = params.serialize_request(&key).expect("csr").der().to_vec();

    let mut g = c.benchmark_group("ca");
    g.throughput(Throughput::Elements(1));
    g.bench_function("csr_to_signed_chain", |b| {
        b.iter(|| {
            let checked = strait_ca::csr::check(&csr, &td).expect("check");
            authority
                .issue_for_csr(checked, Duration::from_secs(86400))
                .expect("issue")
        })
    });

    let out = tmp.path().join("web");
    let files = ca
        .issue(&east, &id, Duration::from_secs(86400), &out)
        .expect("issue");
    let chain = strait_ca::pem::certs(&std::fs::read_to_string(files.chain).expect("chain"));
    let bundle = ca.bundle().expect("bundle");
    g.bench_function("verify_chain", |b| {
        b.iter(|| {
            bundle
                .verify(&chain, UnixTime::now(), Usage::Client)
                .expect("verify")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
