//! Least-privilege RBAC: ServiceAccounts for every role, and rules only
//! for what the controller watches and stores and what the CA checks.
//! No rule names `*`; the gateway, DNS server and injector need no API
//! access at all (their pods do not mount a token).

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};

use super::common::meta;
use super::{InstallError, Manifest};

pub const CONTROLLER_SA: &str = "strait-controller";
pub const GATEWAY_SA: &str = "strait-gateway";
pub const DNS_SA: &str = "strait-dns";
pub const INJECTOR_SA: &str = "strait-injector";
/// The CA signing service's (`install::ca`): it checks ServiceAccount
/// tokens with TokenReviews.
pub const CA_SA: &str = "strait-ca";

const READ: &[&str] = &["get", "list", "watch"];

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    }
}

/// What the controller reads cluster-wide: the catalog sources (nodes
/// for their topology labels, read as metadata only).
pub fn controller_cluster_rules() -> Vec<PolicyRule> {
    vec![
        rule("", &["services", "pods", "nodes"], READ),
        rule("discovery.k8s.io", &["endpointslices"], READ),
        rule("multicluster.x-k8s.io", &["serviceexports"], READ),
        rule("strait.io", &["globalservices", "trafficpolicies"], READ),
    ]
}

/// What the controller keeps in its own namespace: the leader-election
/// Lease, its links (`StraitLink`) and the Secret of pending peering
/// secrets. Secrets: only `strait-peering` may be read or replaced
/// (`create` cannot be limited by name in RBAC).
pub fn controller_namespace_rules() -> Vec<PolicyRule> {
    let write = &[
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let mut peering = rule("", &["secrets"], &["get", "update"]);
    peering.resource_names = Some(vec![
        strait_federation::kube::links::PEERING_SECRET.to_owned(),
    ]);
    vec![
        rule("coordination.k8s.io", &["leases"], write),
        rule(
            "strait.io",
            &["straitlinks"],
            &["get", "list", "create", "update", "delete"],
        ),
        rule("strait.io", &["straitlinks/status"], &["patch"]),
        peering,
        rule("", &["secrets"], &["create"]),
    ]
}

pub fn ca_cluster_rules() -> Vec<PolicyRule> {
    vec![rule(
        "authentication.k8s.io",
        &["tokenreviews"],
        &["create"],
    )]
}

fn subject(sa: &str, ns: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: sa.into(),
        namespace: Some(ns.into()),
        api_group: None,
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: name.into(),
    }
}

pub fn objects(ns: &str) -> Result<Vec<Manifest>, InstallError> {
    let mut out = Vec::new();
    for (sa, automount) in [
        (CONTROLLER_SA, true),
        (GATEWAY_SA, false),
        (DNS_SA, false),
        (INJECTOR_SA, false),
        (CA_SA, true),
    ] {
        out.push(Manifest::new(&ServiceAccount {
            metadata: meta(sa, Some(ns), sa),
            automount_service_account_token: Some(automount),
            ..Default::default()
        })?);
    }
    // Cluster roles are named after the namespace so two installs (two
    // clusters' controllers in one test cluster) do not collide.
    for (sa, rules) in [
        (CONTROLLER_SA, controller_cluster_rules()),
        (CA_SA, ca_cluster_rules()),
    ] {
        let name = format!("{ns}:{sa}");
        out.push(Manifest::new(&ClusterRole {
            metadata: meta(&name, None, sa),
            rules: Some(rules),
            ..Default::default()
        })?);
        out.push(Manifest::new(&ClusterRoleBinding {
            metadata: meta(&name, None, sa),
            role_ref: role_ref("ClusterRole", &name),
            subjects: Some(vec![subject(sa, ns)]),
        })?);
    }
    out.push(Manifest::new(&Role {
        metadata: meta(CONTROLLER_SA, Some(ns), CONTROLLER_SA),
        rules: Some(controller_namespace_rules()),
    })?);
    out.push(Manifest::new(&RoleBinding {
        metadata: meta(CONTROLLER_SA, Some(ns), CONTROLLER_SA),
        role_ref: role_ref("Role", CONTROLLER_SA),
        subjects: Some(vec![subject(CONTROLLER_SA, ns)]),
    })?);
    Ok(out)
}
