//! Watch restarts: a stream that ends (resume from the last version, no
//! re-list), a bookmark moving the resume point, `410 Gone` (re-list and
//! converge, even on changes no watch ever carried), and an outage of the
//! API server (backoff, then converge).

use std::time::Duration;

use strait_federation::catalog::Export;

use crate::objects::*;
use crate::{Harness, addresses, key, seed};
use strait_k8s_fake::FakeApi;

const SERVICES: &str = "/services";

#[tokio::test]
async fn an_ended_watch_resumes_from_the_last_version_without_a_relist() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::start(api).await;
    let listed_at = h.api.resource_version();
    h.api.end_watches();
    // Changes made while the watches reconnect reach them through the
    // server's history.
    h.api.apply(service("ratings", &[("http", 8080, None)]));
    h.api.apply(pod("reviews-3", "reviews", "10.1.0.3", None));
    h.api.apply(slice(
        "reviews",
        9080,
        &[
            ("10.1.0.1", "reviews-1", true, None),
            ("10.1.0.3", "reviews-3", true, None),
        ],
    ));
    h.until("the changes after the restart", |c| {
        addresses(c, "reviews") == ["10.1.0.1:15006", "10.1.0.3:15006"]
            && c.services[&key("ratings")].ports[0].port == 8080
    })
    .await;
    assert_eq!(h.api.lists(SERVICES), 1, "resumed, not re-listed");
    let versions = h.api.watch_versions(SERVICES);
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(versions[0], versions[1], "resumed where it stopped");
    assert_eq!(versions[0], listed_at);
}

#[tokio::test]
async fn a_bookmark_moves_the_resume_point_past_compaction() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::start(api).await;
    let first = h.api.watch_versions(SERVICES)[0];
    // Pods change; the services watch sees nothing of it, except through
    // a bookmark.
    for i in 0..5 {
        h.api
            .apply(pod(&format!("other-{i}"), "other", "10.9.0.1", None));
    }
    h.api.bookmark();
    // Time for the watcher to read it (no way to observe that directly).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bookmarked = h.api.resource_version();
    h.api.compact();
    h.api.end_watches();
    h.api.apply(service("ratings", &[("http", 8081, None)]));
    h.until("the change after the restart", |c| {
        c.services[&key("ratings")].ports[0].port == 8081
    })
    .await;
    let versions = h.api.watch_versions(SERVICES);
    assert_eq!(versions, [first, bookmarked], "resumed from the bookmark");
    assert_eq!(h.api.lists(SERVICES), 1, "no 410, no re-list");
}

#[tokio::test]
async fn gone_410_forces_a_relist_that_sees_changes_no_watch_carried() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::start(api).await;
    h.api.delete(&service_export("reviews"));
    h.until("reviews unexported", |c| {
        c.services[&key("reviews")].export == Export::None
    })
    .await;
    // Lost changes: the history is compacted and they never reach a watch.
    h.api.expire(vec![
        service_export("reviews"),
        pod("reviews-3", "reviews", "10.1.0.3", None),
        slice(
            "reviews",
            9080,
            &[
                ("10.1.0.2", "reviews-2", true, None),
                ("10.1.0.3", "reviews-3", true, None),
            ],
        ),
        traffic_policy("reviews", &["central"], serde_json::json!([])),
    ]);
    h.until("the re-listed catalog", |c| {
        let r = &c.services[&key("reviews")];
        r.export.is_exported()
            && addresses(c, "reviews") == ["10.1.0.2:15006", "10.1.0.3:15006"]
            && c.policies[&key("reviews")].failover.len() == 1
    })
    .await;
    assert_eq!(h.api.lists(SERVICES), 2, "re-listed once after 410");
    assert!(h.api.lists("multicluster.x-k8s.io/serviceexports") >= 2);
    // And it keeps watching after the re-list.
    h.api.apply(service("ratings", &[("http", 8082, None)]));
    h.until("a change after the re-list", |c| {
        c.services[&key("ratings")].ports[0].port == 8082
    })
    .await;
}

#[tokio::test]
async fn the_source_rides_out_an_api_server_outage_and_converges() {
    let api = FakeApi::start().await;
    seed(&api);
    let h = Harness::start(api).await;
    let before = h.catalog();
    h.api.set_down(true);
    h.api.apply(pod("reviews-3", "reviews", "10.1.0.3", None));
    h.api.apply(slice(
        "reviews",
        9080,
        &[("10.1.0.3", "reviews-3", true, None)],
    ));
    h.api.delete(&service("ratings", &[]));
    // Several failed retries while down; the last catalog stays published.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(h.catalog(), before, "kept while the api server is down");
    assert!(h.source.is_synced());
    h.api.set_down(false);
    h.until("the catalog after the outage", |c| {
        addresses(c, "reviews") == ["10.1.0.3:15006"] && !c.services.contains_key(&key("ratings"))
    })
    .await;
    // A down spell followed by compaction still converges (410 -> re-list).
    h.api.set_down(true);
    h.api.apply(service_export("ratings"));
    h.api.apply(service("ratings", &[("http", 8083, None)]));
    h.api.compact();
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.api.set_down(false);
    h.until("the catalog after outage and compaction", |c| {
        c.services
            .get(&key("ratings"))
            .is_some_and(|r| r.export == Export::All && r.ports[0].port == 8083)
    })
    .await;
    assert_eq!(
        h.api.lists(SERVICES),
        2,
        "resumed after the first outage, re-listed after the 410"
    );
}
