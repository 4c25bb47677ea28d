//! The fake's HTTP side: connection handling (TLS or plain, bearer
//! tokens), discovery, and the verbs on objects.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::select::{Selector, metadata_only};
use crate::{Inner, Resource, kinds, name_of};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

const MAX_BODY: usize = 4 << 20;

pub(crate) async fn accept_loop(
    listener: TcpListener,
    inner: Arc<Inner>,
    tls: Option<TlsAcceptor>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        if inner.down.load(Ordering::SeqCst) {
            drop(tcp);
            continue;
        }
        let inner = inner.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let i = inner.clone();
                async move {
                    if i.down.load(Ordering::SeqCst) {
                        // Closes this kept-alive connection too.
                        return Err(std::io::Error::other("api server is down"));
                    }
                    Ok::<_, std::io::Error>(handle(&i, req).await)
                }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                }
            }
        });
    }
}

pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status(code, reason, message),
    )
}

/// A request's target: `/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]]` or
/// `/apis/G/V/...`.
#[derive(Debug)]
struct Target {
    resource: Resource,
    group: String,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn route(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        // The Namespace object itself.
        ["namespaces", ns] => (None, &["namespaces", ns][..]),
        ["namespaces", ns, rest @ ..] => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        // A subresource (status, scale) acts on the object itself.
        [plural, name] | [plural, name, _] => (*plural, Some((*name).to_owned())),
        _ => return None,
    };
    Some(Target {
        resource: format!("{group}/{plural}"),
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        name,
    })
}

fn authorized(inner: &Inner, req: &Request<Incoming>) -> bool {
    let Some(tokens) = &inner.bearer else {
        return true;
    };
    let got = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    got.is_some_and(|t| tokens.iter().any(|ok| ok == t))
}

async fn handle(inner: &Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query_text = req.uri().query().unwrap_or_default().to_owned();
    let partial = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    inner.lock().requests.push(format!(
        "{} {path}{}{query_text}{}",
        req.method(),
        if query_text.is_empty() { "" } else { "?" },
        if partial { " [metadata]" } else { "" }
    ));
    if !authorized(inner, &req) {
        return failure(401, "Unauthorized", "Unauthorized");
    }
    let query: BTreeMap<String, String> = form_urlencoded::parse(query_text.as_bytes())
        .into_owned()
        .collect();
    if req.method() == Method::GET {
        if let Some(doc) = discovery(inner, &path) {
            return doc;
        }
    }
    let Some(target) = route(&path) else {
        return failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let missing = inner
        .missing
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&target.resource);
    if missing {
        return failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    match (method, target.name.is_some()) {
        (Method::GET, true) => get(inner, &target),
        (Method::GET, false) => {
            let selector = match Selector::parse(&query) {
                Ok(s) => s,
                Err(why) => return failure(400, "BadRequest", &why),
            };
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let from = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                crate::watch::watch(
                    inner,
                    target.resource,
                    target.namespace,
                    selector,
                    from,
                    partial,
                )
            } else {
                list(inner, &target, &selector, partial)
            }
        }
        (Method::DELETE, true) => {
            let key = (
                target.namespace.clone().unwrap_or_default(),
                target.name.clone().unwrap_or_default(),
            );
            let mut s = inner.lock();
            match inner.remove(&mut s, &target.resource, &key) {
                Some(old) => json_response(StatusCode::OK, &old),
                None => not_found(&target),
            }
        }
        (m @ (Method::POST | Method::PUT | Method::PATCH), named) => {
            let body = match read_body(req.into_body()).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match (m, named) {
                (Method::POST, false)
                    if target.resource == "authentication.k8s.io/tokenreviews" =>
                {
                    crate::review::token_review(inner, &body)
                }
                (Method::POST, false) => write(inner, &target, body, Write::Create),
                (Method::PUT, true) => write(inner, &target, body, Write::Replace),
                (Method::PATCH, true) => patch(inner, &target, &content_type, body),
                _ => failure(405, "MethodNotAllowed", "method not allowed on this path"),
            }
        }
        _ => failure(405, "MethodNotAllowed", "method not allowed on this path"),
    }
}

fn discovery(inner: &Inner, path: &str) -> Option<Response<Body>> {
    let s = inner.lock();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let doc = match parts.as_slice() {
        ["version"] => json!({"major": "1", "minor": "31", "gitVersion": "v1.31.0-strait-fake",
                              "platform": "linux/amd64"}),
        ["api"] => kinds::core_versions(&inner.addr.to_string()),
        ["apis"] => kinds::groups(&s.kinds),
        ["api", v] => kinds::resources(&s.kinds, "", v)?,
        ["apis", g, v] => kinds::resources(&s.kinds, g, v)?,
        ["openapi", "v3"] => crate::openapi::root(&s.kinds),
        ["openapi", "v3", rest @ ..] => crate::openapi::group_version(&s.kinds, &rest.join("/"))?,
        _ => return None,
    };
    Some(json_response(StatusCode::OK, &doc))
}

#[allow(clippy::result_large_err)]
async fn read_body(body: Incoming) -> Result<Value, Response<Body>> {
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| failure(413, "RequestEntityTooLarge", &format!("request body: {e}")))?
        .to_bytes();
    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
        return Ok(v);
    }
    serde_yaml_ng::from_slice::<Value>(&bytes).map_err(|e| {
        failure(
            400,
            "BadRequest",
            &format!("the body is neither JSON nor YAML: {e}"),
        )
    })
}

fn not_found(t: &Target) -> Response<Body> {
    let plural = t.resource.rsplit_once('/').map_or("", |(_, p)| p);
    let gr = if t.group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{}", t.group)
    };
    failure(
        404,
        "NotFound",
        &format!(
            "{gr} \"{}\" not found",
            t.name.as_deref().unwrap_or_default()
        ),
    )
}

fn key_of(t: &Target) -> (String, String) {
    (
        t.namespace.clone().unwrap_or_default(),
        t.name.clone().unwrap_or_default(),
    )
}

fn get(inner: &Inner, t: &Target) -> Response<Body> {
    let s = inner.lock();
    match s.objects.get(&t.resource).and_then(|m| m.get(&key_of(t))) {
        Some(o) => json_response(StatusCode::OK, o),
        None => not_found(t),
    }
}

fn list(inner: &Inner, t: &Target, selector: &Selector, partial: bool) -> Response<Body> {
    let mut s = inner.lock();
    *s.lists.entry(t.resource.clone()).or_default() += 1;
    let items: Vec<Value> = s
        .objects
        .get(&t.resource)
        .map(|m| {
            m.values()
                .filter(|o| selector.matches(o, t.namespace.as_deref()))
                .map(|o| if partial { metadata_only(o) } else { o.clone() })
                .collect()
        })
        .unwrap_or_default();
    let (api, kind) = if partial {
        (
            "meta.k8s.io/v1".to_owned(),
            "PartialObjectMetadataList".to_owned(),
        )
    } else {
        let (api, kind) = kinds::type_of(&s.kinds, &t.resource)
            .unwrap_or_else(|| (format!("{}/{}", t.group, t.version), String::new()));
        (api, format!("{kind}List"))
    };
    let list = json!({"kind": kind, "apiVersion": api,
                      "metadata": {"resourceVersion": s.rv.to_string()}, "items": items});
    json_response(StatusCode::OK, &list)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Create,
    Replace,
}

/// Fills in what the path says and the body may leave out.
// The error is the response to send (test support; not a hot path).
#[allow(clippy::result_large_err)]
fn complete(s: &crate::State, t: &Target, obj: &mut Value) -> Result<(), Response<Body>> {
    if !obj.is_object() {
        return Err(failure(400, "BadRequest", "the body is not an object"));
    }
    if let Some(ns) = &t.namespace {
        match obj["metadata"]["namespace"].as_str() {
            None => obj["metadata"]["namespace"] = json!(ns),
            Some(n) if n != ns => {
                return Err(failure(
                    400,
                    "BadRequest",
                    &format!(
                        "the namespace of the object ({n}) does not match the namespace on the request ({ns})"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        match (&t.name, obj["metadata"]["generateName"].as_str()) {
            (Some(n), _) => obj["metadata"]["name"] = json!(n),
            (None, Some(prefix)) => {
                obj["metadata"]["name"] = json!(format!("{prefix}{}", s.rv + 1))
            }
            (None, None) => {
                return Err(failure(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        }
    }
    if let Some(n) = &t.name {
        if obj["metadata"]["name"] != json!(n) {
            return Err(failure(
                400,
                "BadRequest",
                "the name of the object does not match the name on the request",
            ));
        }
    }
    if let Some((api, kind)) = kinds::type_of(&s.kinds, &t.resource) {
        if obj["apiVersion"].is_null() {
            obj["apiVersion"] = json!(api);
        }
        if obj["kind"].is_null() {
            obj["kind"] = json!(kind);
        }
    }
    Ok(())
}

fn write(inner: &Inner, t: &Target, mut obj: Value, how: Write) -> Response<Body> {
    let mut s = inner.lock();
    if let Err(r) = complete(&s, t, &mut obj) {
        return r;
    }
    let key = name_of(&obj);
    let current = s
        .objects
        .get(&t.resource)
        .and_then(|m| m.get(&key))
        .cloned();
    match (how, current) {
        (Write::Create, Some(_)) => {
            return failure(
                409,
                "AlreadyExists",
                &format!("{} \"{}\" already exists", t.resource, key.1),
            );
        }
        (Write::Replace, None) => {
            return not_found(t);
        }
        (Write::Replace, Some(cur)) => {
            let want = obj["metadata"]["resourceVersion"].as_str();
            if want.is_some_and(|w| Some(w) != cur["metadata"]["resourceVersion"].as_str()) {
                return failure(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                        t.resource, key.1
                    ),
                );
            }
        }
        (Write::Create, None) => {}
    }
    let (ev, obj) = inner.put(&mut s, &t.resource.clone(), obj);
    let code = if ev == "ADDED" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_response(code, &obj)
}

fn patch(inner: &Inner, t: &Target, content_type: &str, body: Value) -> Response<Body> {
    let mut s = inner.lock();
    let key = key_of(t);
    let current = s
        .objects
        .get(&t.resource)
        .and_then(|m| m.get(&key))
        .cloned();
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    let mut obj = match (ct, current) {
        ("application/apply-patch+yaml", None) => body,
        (
            "application/apply-patch+yaml"
            | "application/merge-patch+json"
            | "application/strategic-merge-patch+json",
            Some(mut cur),
        ) => {
            json_patch::merge(&mut cur, &body);
            cur
        }
        ("application/json-patch+json", Some(mut cur)) => {
            let ops: json_patch::Patch = match serde_json::from_value(body) {
                Ok(p) => p,
                Err(e) => return failure(400, "BadRequest", &format!("json patch: {e}")),
            };
            if let Err(e) = json_patch::patch(&mut cur, &ops) {
                return failure(422, "Invalid", &format!("json patch: {e}"));
            }
            cur
        }
        (
            "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "application/json-patch+json",
            None,
        ) => {
            return not_found(t);
        }
        (other, _) => {
            return failure(
                415,
                "UnsupportedMediaType",
                &format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
            );
        }
    };
    if let Err(r) = complete(&s, t, &mut obj) {
        return r;
    }
    let (ev, obj) = inner.put(&mut s, &t.resource.clone(), obj);
    let code = if ev == "ADDED" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_response(code, &obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_namespaced_and_cluster_paths() {
        let t = route("/api/v1/namespaces/shop/services/web").unwrap();
        assert_eq!(
            (
                t.resource.as_str(),
                t.namespace.as_deref(),
                t.name.as_deref()
            ),
            ("/services", Some("shop"), Some("web"))
        );
        let t = route("/api/v1/namespaces/shop").unwrap();
        assert_eq!(
            (t.resource.as_str(), t.namespace, t.name.as_deref()),
            ("/namespaces", None, Some("shop"))
        );
        let t = route("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").unwrap();
        assert_eq!(
            (t.resource.as_str(), t.name),
            ("apiextensions.k8s.io/customresourcedefinitions", None)
        );
        let t = route("/apis/apps/v1/namespaces/a/deployments/d/status").unwrap();
        assert_eq!(t.name.as_deref(), Some("d"));
        assert!(route("/healthz").is_none());
    }
}
