//! A fake Kubernetes API server on loopback for Strait's tests (a
//! dev-dependency only; never shipped). It serves real Kubernetes JSON:
//!
//! - plain HTTP without auth ([`FakeApi::start`]), or TLS with a CA of its
//!   own and bearer tokens ([`FakeApi::start_with`], [`Options`]), with a
//!   kubeconfig for it ([`FakeApi::kubeconfig`]) that the real `kubectl`
//!   and kube-rs both read;
//! - discovery (`/api`, `/apis`, `/api/v1`, `/apis/G/V`, `/version`), with
//!   the kinds of every `CustomResourceDefinition` applied to it (marked
//!   `Established`), and OpenAPI v3 documents that only declare each
//!   kind's PATCH with `fieldValidation` (no schemas: `kubectl` then
//!   leaves validation to the server, which here does none);
//! - `list` with a `resourceVersion`, `labelSelector` (`k=v`, `k!=v`, `k`,
//!   `!k`), metadata-only lists and watches (`Accept: ...;as=
//!   PartialObjectMetadataList`), and `watch=true` streams of `{"type":
//!   ..., "object": ...}` lines resumable from any version still in its
//!   history;
//! - get, create (POST), replace (PUT, optimistic concurrency on
//!   `metadata.resourceVersion`: 409 Conflict), delete, and PATCH as JSON
//!   merge patch, strategic merge patch (approximated as a merge patch:
//!   lists are replaced, not merged by key) and server-side apply
//!   (`application/apply-patch+yaml`, approximated the same way, creating
//!   the object when missing; no field managers, no conflicts);
//! - `TokenReview` (`authentication.k8s.io/v1`) answered from tokens the
//!   test registers ([`FakeApi::add_token`]).
//!
//! Faults the tests drive: [`FakeApi::bookmark`] (a BOOKMARK on every open
//! watch), [`FakeApi::end_watches`] (streams end; clients resume),
//! [`FakeApi::expire`] (history compacted, optionally with changes that
//! never reach a watch, and an ERROR 410 "Expired" on every open watch, so
//! only a re-list sees them), [`FakeApi::set_down`] (every connection is
//! dropped at once and open watches end) and [`FakeApi::set_missing`] (a
//! resource answers 404, like a CRD not installed).
//!
//! What it is not: no admission, no defaulting, no garbage collection, no
//! controllers (Deployments never get pods; tests write status
//! themselves), no authorization (any accepted token may do anything).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

pub mod kinds;
mod openapi;
mod review;
mod select;
mod serve;
mod tls;
mod watch;

use kinds::Kind;

/// `group/plural` (core group is empty), e.g. `/services`.
pub type Resource = String;

#[derive(Debug, Clone)]
pub(crate) enum Live {
    Event {
        rv: u64,
        resource: Resource,
        kind: &'static str,
        object: Value,
    },
    Bookmark,
    End,
    Expire,
}

/// What a TokenReview of a registered token answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFacts {
    pub namespace: String,
    pub service_account: String,
    /// The audiences the token was issued for.
    pub audiences: Vec<String>,
    /// Unix seconds after which the token is refused (`authenticated:
    /// false`, "token has expired").
    pub expires: u64,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub rv: u64,
    pub objects: BTreeMap<Resource, BTreeMap<(String, String), Value>>,
    pub history: Vec<(u64, Resource, &'static str, Value)>,
    /// Watches from a version below this get 410.
    pub floor: u64,
    pub lists: BTreeMap<Resource, usize>,
    pub watch_versions: BTreeMap<Resource, Vec<u64>>,
    pub kinds: Vec<Kind>,
    /// `METHOD path?query` of every request, in order.
    pub requests: Vec<String>,
    pub tokens: BTreeMap<String, TokenFacts>,
    /// Answer every TokenReview with HTTP 500 (the API server failing).
    pub token_review_fails: bool,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub state: Mutex<State>,
    pub live: broadcast::Sender<Live>,
    pub down: AtomicBool,
    /// Resources that answer 404 (a CRD not installed).
    pub missing: Mutex<Vec<Resource>>,
    /// Bearer tokens accepted; `None`: no authentication.
    pub bearer: Option<Vec<String>>,
    pub addr: SocketAddr,
}

/// How to start the fake.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen; port 0 picks one.
    pub bind: SocketAddr,
    /// Serve HTTPS with a CA of the fake's own.
    pub tls: bool,
    /// Bearer tokens accepted (`None`: every request is accepted).
    pub tokens: Option<Vec<String>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            tokens: None,
        }
    }
}

impl Options {
    /// TLS and one accepted bearer token, on `bind`.
    pub fn secure(bind: SocketAddr, token: &str) -> Self {
        Self {
            bind,
            tls: true,
            tokens: Some(vec![token.to_owned()]),
        }
    }
}

/// The server; dropping it stops accepting and ends open watches.
#[derive(Debug)]
pub struct FakeApi {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    tls: Option<tls::ServerTls>,
    task: tokio::task::JoinHandle<()>,
}

pub(crate) fn name_of(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&m["namespace"]), s(&m["name"]))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|n| {
            n.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates or replaces an object: a new version, a uid, a creation
    /// time, and an ADDED or MODIFIED event on open watches. A CRD adds
    /// its kinds to discovery and is marked established.
    pub(crate) fn put(&self, s: &mut State, resource: &str, obj: Value) -> (&'static str, Value) {
        let (ev, obj) = Self::store(s, resource, obj);
        self.publish(s, resource, ev, obj.clone());
        (ev, obj)
    }

    /// Stores an object without telling any watch.
    fn store(s: &mut State, resource: &str, mut obj: Value) -> (&'static str, Value) {
        s.rv += 1;
        let key = name_of(&obj);
        let old = s.objects.get(resource).and_then(|m| m.get(&key)).cloned();
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(s.rv.to_string());
        let keep = |field: &str, default: Value| {
            old.as_ref()
                .and_then(|o| o["metadata"].get(field).cloned())
                .unwrap_or(default)
        };
        meta["uid"] = keep("uid", json!(format!("uid-{}-{}-{}", key.0, key.1, s.rv)));
        meta["creationTimestamp"] = keep("creationTimestamp", json!(now_rfc3339()));
        if obj["kind"] == "CustomResourceDefinition" {
            for k in kinds::of_crd(&obj) {
                if !s.kinds.contains(&k) {
                    s.kinds.push(k);
                }
            }
            let t = now_rfc3339();
            obj["status"]["conditions"] = json!([
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "lastTransitionTime": t},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "lastTransitionTime": t},
            ]);
            obj["status"]["acceptedNames"] = obj["spec"]["names"].clone();
        }
        let m = s.objects.entry(resource.to_owned()).or_default();
        let ev = if m.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        m.insert(key, obj.clone());
        (ev, obj)
    }

    pub(crate) fn remove(
        &self,
        s: &mut State,
        resource: &str,
        key: &(String, String),
    ) -> Option<Value> {
        let mut old = s.objects.get_mut(resource)?.remove(key)?;
        s.rv += 1;
        old["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        self.publish(s, resource, "DELETED", old.clone());
        Some(old)
    }

    fn publish(&self, s: &mut State, resource: &str, kind: &'static str, object: Value) {
        s.history
            .push((s.rv, resource.to_owned(), kind, object.clone()));
        let _ = self.live.send(Live::Event {
            rv: s.rv,
            resource: resource.to_owned(),
            kind,
            object,
        });
    }
}

impl FakeApi {
    /// Plain HTTP on 127.0.0.1, no authentication.
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Panics when it cannot bind or make its certificates (test support).
    pub async fn start_with(opts: Options) -> Self {
        let listener = TcpListener::bind(opts.bind)
            .await
            .expect("bind the fake api server");
        let addr = listener.local_addr().expect("bound address");
        let tls = opts
            .tls
            .then(|| tls::ServerTls::generate(addr.ip()).expect("fake api server certificates"));
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                rv: 100,
                kinds: kinds::builtin(),
                ..State::default()
            }),
            live: broadcast::channel(4096).0,
            down: AtomicBool::new(false),
            missing: Mutex::new(Vec::new()),
            bearer: opts.tokens,
            addr,
        });
        let acceptor = tls.as_ref().map(tls::ServerTls::acceptor);
        let task = tokio::spawn(serve::accept_loop(listener, inner.clone(), acceptor));
        Self {
            addr,
            inner,
            tls,
            task,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM of the CA that signed the server certificate (TLS only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// A kubeconfig (JSON, which is YAML) for this server with `token`,
    /// context `fake`, default namespace `namespace`.
    pub fn kubeconfig(&self, token: &str, namespace: &str) -> String {
        tls::kubeconfig(&self.url(), self.ca_pem(), token, namespace)
    }

    /// Writes [`Self::kubeconfig`] to `path`.
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        token: &str,
        namespace: &str,
    ) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig(token, namespace))
    }

    /// Creates or replaces an object (ADDED or MODIFIED on open watches).
    pub fn apply(&self, obj: Value) -> Value {
        let mut s = self.inner.lock();
        let resource = kinds::resource_of(&s.kinds, &obj);
        self.inner.put(&mut s, &resource, obj).1
    }

    /// Deletes an object by its kind, namespace and name.
    pub fn delete(&self, obj: &Value) {
        let mut s = self.inner.lock();
        let resource = kinds::resource_of(&s.kinds, obj);
        self.inner.remove(&mut s, &resource, &name_of(obj));
    }

    /// One object by resource (`group/plural`), namespace ("" for cluster
    /// scoped) and name.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let s = self.inner.lock();
        let key = (namespace.to_owned(), name.to_owned());
        s.objects.get(resource)?.get(&key).cloned()
    }

    /// Every object of a resource.
    pub fn objects(&self, resource: &str) -> Vec<Value> {
        let s = self.inner.lock();
        s.objects
            .get(resource)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// `METHOD path?query` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().requests.clone()
    }

    /// Registers a service account token for TokenReview.
    pub fn add_token(&self, token: &str, facts: TokenFacts) {
        self.inner.lock().tokens.insert(token.to_owned(), facts);
    }

    /// Makes every TokenReview fail with HTTP 500.
    pub fn fail_token_reviews(&self, fail: bool) {
        self.inner.lock().token_review_fails = fail;
    }

    /// Sends a BOOKMARK with the current version on every open watch.
    pub fn bookmark(&self) {
        let _ = self.inner.live.send(Live::Bookmark);
    }

    /// Ends every open watch stream normally.
    pub fn end_watches(&self) {
        let _ = self.inner.live.send(Live::End);
    }

    /// Compacts the history up to now: watches from an older version get
    /// 410. `lost` objects are applied without any watch event, and every
    /// open watch receives ERROR 410 "Expired".
    pub fn expire(&self, lost: Vec<Value>) {
        let mut s = self.inner.lock();
        for obj in lost {
            let resource = kinds::resource_of(&s.kinds, &obj);
            Inner::store(&mut s, &resource, obj);
        }
        s.history.clear();
        s.floor = s.rv;
        let _ = self.inner.live.send(Live::Expire);
    }

    /// Raises the 410 floor to now without telling open watches, so the
    /// next resume from an older version is refused.
    pub fn compact(&self) {
        let mut s = self.inner.lock();
        s.history.clear();
        s.floor = s.rv;
    }

    /// Down: new connections are dropped and open watches end.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
        if down {
            self.end_watches();
        }
    }

    /// Makes a resource (`group/plural`) answer 404, like a missing CRD.
    pub fn set_missing(&self, resource: &str) {
        self.inner
            .missing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(resource.to_owned());
    }

    pub fn lists(&self, resource: &str) -> usize {
        self.inner.lock().lists.get(resource).copied().unwrap_or(0)
    }

    /// The `resourceVersion` of every watch request of a resource.
    pub fn watch_versions(&self, resource: &str) -> Vec<u64> {
        let s = self.inner.lock();
        s.watch_versions.get(resource).cloned().unwrap_or_default()
    }

    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
        self.end_watches();
    }
}
