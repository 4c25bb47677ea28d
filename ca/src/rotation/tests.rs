use std::time::Duration;

use rustls_pki_types::UnixTime;
use strait_api::{ClusterName, TrustDomain};

use super::*;
use crate::{CertStore, SharedBundle};

struct Fixture {
    _tmp: tempfile::TempDir,
    ca: CaDir,
    dirs: Vec<PathBuf>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("strait.local").unwrap();
    let ca = CaDir::init(&tmp.path().join("ca"), &td, Duration::from_secs(86400)).unwrap();
    let mut dirs = Vec::new();
    for c in ["east", "west"] {
        let name = ClusterName::new(c).unwrap();
        ca.new_intermediate(&name, Duration::from_secs(86400))
            .unwrap();
        for (tag, ns, sa) in [
            ("controller", "strait-system", format!("controller-{c}")),
            ("web-0", "demo", "web".to_owned()),
        ] {
            let out = tmp.path().join("certs").join(c).join(tag);
            let id = td.workload_id(ns, &sa).unwrap();
            ca.issue(&name, &id, Duration::from_secs(7200), &out)
                .unwrap();
            dirs.push(out);
        }
    }
    Fixture {
        _tmp: tmp,
        ca,
        dirs,
    }
}

fn report(dir: &Path, td: &TrustDomain) -> TrustReport {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let certs = CertStore::from_pem(&read("chain.pem"), &read("key.pem")).unwrap();
    let bundle = TrustBundle::from_pem(td.clone(), &read("bundle.pem")).unwrap();
    TrustReport::of(&certs, &SharedBundle::new(bundle))
}

fn out_of_order(r: Result<Expect, RotationError>) -> (Stage, String) {
    match r {
        Err(e @ RotationError::OutOfOrder { next, .. }) => (next, e.to_string()),
        other => panic!("expected an out-of-order refusal, got {other:?}"),
    }
}

#[test]
fn stages_run_in_order_and_leave_only_the_new_root() {
    let f = fixture();
    let td = f.ca.trust_domain().clone();
    let rot = Rotation::new(f.ca.clone());
    let old_root = fingerprint(&f.ca.bundle().unwrap().roots()[0]);
    let old_chain = std::fs::read(f.dirs[0].join("chain.pem")).unwrap();
    assert_eq!(next_stage(rot.state().unwrap().as_ref()), Stage::Add);
    let (next, msg) = out_of_order(rot.run(Stage::Drop, &f.dirs));
    assert_eq!(next, Stage::Add);
    assert!(msg.contains("no root rotation is in progress"), "{msg}");
    assert!(msg.contains("run `strait ca rotate add`"), "{msg}");

    // add: every bundle holds both roots; certificates are untouched.
    let expect = rot.run(Stage::Add, &f.dirs).unwrap();
    assert_eq!(expect.old_roots, std::slice::from_ref(&old_root));
    assert_ne!(expect.new_root, old_root);
    for d in &f.dirs {
        let r = report(d, &td);
        assert!(expect.met_by(&r), "{:?}", expect.shortfall(&r));
        assert_eq!(r.presented_root.as_deref(), Some(old_root.as_str()));
    }
    assert_eq!(f.ca.bundle().unwrap().roots().len(), 2);
    assert_eq!(
        std::fs::read(f.dirs[0].join("chain.pem")).unwrap(),
        old_chain
    );
    let (next, msg) = out_of_order(rot.run(Stage::Reissue, &f.dirs));
    assert_eq!(next, Stage::Add, "add is not confirmed: {msg}");
    assert!(msg.contains("not confirmed yet"), "{msg}");
    // Running add again resumes it: same new root.
    assert_eq!(rot.run(Stage::Add, &f.dirs).unwrap(), expect);
    assert_eq!(f.ca.bundle().unwrap().roots().len(), 2);
    rot.confirm(Stage::Add).unwrap();
    let (next, msg) = out_of_order(rot.run(Stage::Drop, &f.dirs));
    assert_eq!(next, Stage::Reissue, "{msg}");

    // A directory left out of reissue keeps its old certificate.
    let straggler = f.ca.path().parent().unwrap().join("late");
    std::fs::create_dir_all(&straggler).unwrap();
    for name in ["chain.pem", "key.pem", "bundle.pem"] {
        std::fs::copy(f.dirs[0].join(name), straggler.join(name)).unwrap();
    }

    // reissue: same identities and paths, chains under the new root.
    let before: Vec<CertDir> = f.dirs.iter().map(|d| CertDir::read(d).unwrap()).collect();
    let expect = rot.run(Stage::Reissue, &f.dirs).unwrap();
    let new_only = TrustBundle::new(
        td.clone(),
        pem::certs(&std::fs::read_to_string(f.ca.path().join("next/root.pem")).unwrap()),
    )
    .unwrap();
    for (d, old) in f.dirs.iter().zip(&before) {
        let now = CertDir::read(d).unwrap();
        assert_eq!((&now.id, &now.cluster), (&old.id, &old.cluster));
        assert_eq!(now.lifetime, old.lifetime);
        assert_ne!(now.chain, old.chain);
        new_only
            .verify(&now.chain, UnixTime::now(), Usage::Client)
            .unwrap();
        let r = report(d, &td);
        assert!(expect.met_by(&r), "{:?}", expect.shortfall(&r));
    }
    let kept = f.ca.path().join("retired").join(short(&old_root));
    assert!(kept.join("clusters/east/intermediate.key").exists());
    // An old certificate no longer meets the stage.
    let mut stale = report(&f.dirs[0], &td);
    stale.presented_root = Some(old_root.clone());
    assert!(expect.shortfall(&stale).unwrap().contains(short(&old_root)));
    rot.confirm(Stage::Reissue).unwrap();

    // drop refuses while a directory still holds an old certificate.
    let mut with_late = f.dirs.clone();
    with_late.push(straggler.clone());
    let err = rot.run(Stage::Drop, &with_late).unwrap_err().to_string();
    assert!(err.contains("late") && err.contains("reissue"), "{err}");

    let expect = rot.run(Stage::Drop, &f.dirs).unwrap();
    for d in &f.dirs {
        let r = report(d, &td);
        assert!(expect.met_by(&r), "{:?}", expect.shortfall(&r));
        assert_eq!(r.roots, std::slice::from_ref(&expect.new_root));
    }
    let ca = CaDir::open(f.ca.path()).unwrap();
    assert_eq!(fingerprint(ca.root().unwrap().cert()), expect.new_root);
    assert_eq!(ca.bundle().unwrap().roots().len(), 1);
    assert!(!ca.path().join("next").exists());
    assert!(kept.join("root.key").exists() && kept.join("root.pem").exists());
    // The CA directory keeps issuing, under the new root.
    let issued = ca
        .issue(
            &ClusterName::new("west").unwrap(),
            &td.workload_id("demo", "new").unwrap(),
            Duration::from_secs(3600),
            &f.ca.path().parent().unwrap().join("new"),
        )
        .unwrap();
    let chain = pem::certs(&std::fs::read_to_string(issued.chain).unwrap());
    ca.bundle()
        .unwrap()
        .verify(&chain, UnixTime::now(), Usage::Server)
        .unwrap();
    // Drop again is refused until it is confirmed and a new rotation starts.
    rot.confirm(Stage::Drop).unwrap();
    let (next, msg) = out_of_order(rot.run(Stage::Drop, &f.dirs));
    assert_eq!(next, Stage::Add);
    assert!(msg.contains("finished"), "{msg}");
}

#[test]
fn add_refuses_a_directory_it_could_not_reissue_and_changes_nothing() {
    let f = fixture();
    let bundle_before = std::fs::read(f.ca.bundle_path()).unwrap();
    let mut dirs = f.dirs.clone();
    let bad = f.ca.path().parent().unwrap().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("chain.pem"), "not pem").unwrap();
    dirs.push(bad);
    let err = Rotation::new(f.ca.clone())
        .run(Stage::Add, &dirs)
        .unwrap_err();
    assert!(matches!(err, RotationError::CertDir { .. }), "{err}");
    assert_eq!(std::fs::read(f.ca.bundle_path()).unwrap(), bundle_before);
    assert!(Rotation::new(f.ca.clone()).state().unwrap().is_none());
}

#[test]
fn shortfalls_name_what_is_missing() {
    let e = Expect {
        stage: Stage::Add,
        old_roots: vec!["a".repeat(64)],
        new_root: "b".repeat(64),
    };
    let r = |roots: &[&str], presented: Option<&str>| {
        let fp = |s: &str| s.repeat(64);
        TrustReport::of_fingerprints(roots.iter().map(|s| fp(s)).collect(), presented.map(fp))
    };
    assert!(
        e.shortfall(&r(&["a"], None))
            .unwrap()
            .contains("not the new one")
    );
    assert!(e.shortfall(&r(&["b"], None)).unwrap().contains("old root"));
    assert!(e.met_by(&r(&["a", "b"], None)));
    let e = Expect {
        stage: Stage::Drop,
        ..e
    };
    assert!(
        e.shortfall(&r(&["a", "b"], Some("b")))
            .unwrap()
            .contains("2 root(s)")
    );
    assert!(e.met_by(&r(&["b"], Some("b"))));
    let e = Expect {
        stage: Stage::Reissue,
        ..e
    };
    assert!(e.shortfall(&r(&["a", "b"], None)).is_some());
    assert!(e.met_by(&r(&["a", "b"], Some("b"))));
}
