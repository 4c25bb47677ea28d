//! The CustomResourceDefinitions an install carries: Strait's own
//! (`GlobalService`, `TrafficPolicy`, from `strait_federation::kube::crd`;
//! `StraitLink`, the controller's links, from `strait_federation::kube::links`)
//! and the Multi-Cluster Services `ServiceExport`
//! (`multicluster.x-k8s.io/v1alpha1`), written here as a typed object
//! with an OpenAPI schema following the MCS API's definition (an empty
//! spec; status conditions).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresourceStatus, CustomResourceSubresources,
    CustomResourceValidation, JSON, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResourceExt;
use strait_federation::kube::{GlobalService, StraitLink, TrafficPolicy};

fn typed(t: &str) -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some(t.into()),
        ..Default::default()
    }
}

fn described(t: &str, d: &str) -> JSONSchemaProps {
    JSONSchemaProps {
        description: Some(d.into()),
        ..typed(t)
    }
}

/// One condition of `status.conditions`, as the MCS API defines it.
fn condition() -> JSONSchemaProps {
    let mut status = described("string", "True, False or Unknown.");
    status.enum_ = Some(
        ["True", "False", "Unknown"]
            .map(|s| JSON(serde_json::Value::String(s.into())))
            .to_vec(),
    );
    let mut time = typed("string");
    time.format = Some("date-time".into());
    JSONSchemaProps {
        type_: Some("object".into()),
        required: Some(vec!["type".into(), "status".into()]),
        properties: Some(BTreeMap::from([
            ("type".to_owned(), described("string", "Valid or Conflict.")),
            ("status".to_owned(), status),
            ("lastTransitionTime".to_owned(), time),
            ("reason".to_owned(), typed("string")),
            ("message".to_owned(), typed("string")),
        ])),
        ..Default::default()
    }
}

/// The MCS `ServiceExport` CRD: its existence exports the Service of the
/// same name and namespace.
pub fn service_export() -> CustomResourceDefinition {
    let mut conditions = described("array", "The export's state, set by the controller.");
    conditions.items = Some(JSONSchemaPropsOrArray::Schema(Box::new(condition())));
    conditions.x_kubernetes_list_type = Some("map".into());
    conditions.x_kubernetes_list_map_keys = Some(vec!["type".into()]);
    let schema = JSONSchemaProps {
        type_: Some("object".into()),
        description: Some(
            "ServiceExport declares that the Service with the same name and namespace as this export should be consumable from other clusters.".into(),
        ),
        properties: Some(BTreeMap::from([
            ("apiVersion".to_owned(), typed("string")),
            ("kind".to_owned(), typed("string")),
            ("metadata".to_owned(), typed("object")),
            (
                "spec".to_owned(),
                described("object", "Empty: the export carries no options (Strait's GlobalService does)."),
            ),
            (
                "status".to_owned(),
                JSONSchemaProps {
                    type_: Some("object".into()),
                    properties: Some(BTreeMap::from([("conditions".to_owned(), conditions)])),
                    ..Default::default()
                },
            ),
        ])),
        ..Default::default()
    };
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some("serviceexports.multicluster.x-k8s.io".into()),
            labels: Some(BTreeMap::from([(
                "multicluster.x-k8s.io/crd-schema-version".to_owned(),
                "v0.1.0".to_owned(),
            )])),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: "multicluster.x-k8s.io".into(),
            names: CustomResourceDefinitionNames {
                kind: "ServiceExport".into(),
                list_kind: Some("ServiceExportList".into()),
                plural: "serviceexports".into(),
                singular: Some("serviceexport".into()),
                short_names: Some(vec!["svcex".into()]),
                categories: None,
            },
            scope: "Namespaced".into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: "v1alpha1".into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(schema),
                }),
                subresources: Some(CustomResourceSubresources {
                    status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
                    scale: None,
                }),
                ..Default::default()
            }],
            conversion: None,
            preserve_unknown_fields: None,
        },
        status: None,
    }
}

/// Every CRD of an install, Strait's first.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        GlobalService::crd(),
        TrafficPolicy::crd(),
        StraitLink::crd(),
        service_export(),
    ]
}
