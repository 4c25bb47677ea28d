//! A fake Kubernetes API server on loopback (plain HTTP, no auth) serving
//! real Kubernetes JSON: `list` with a `resourceVersion`, and `watch=true`
//! streams of `{"type": ..., "object": ...}` lines, resumable from any
//! version still in its history.
//!
//! Faults the tests drive: [`FakeApi::bookmark`] (a BOOKMARK on every open
//! watch), [`FakeApi::end_watches`] (streams end; clients resume),
//! [`FakeApi::expire`] (history compacted, optionally with changes that
//! never reach a watch, and an ERROR 410 "Expired" on every open watch, so
//! only a re-list sees them), and [`FakeApi::set_down`] (every connection
//! is dropped at once and open watches end).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

/// `group/plural` (core group is empty), e.g. `/services`.
pub type Resource = String;

#[derive(Debug, Clone)]
enum Live {
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

#[derive(Debug, Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Resource, BTreeMap<(String, String), Value>>,
    history: Vec<(u64, Resource, &'static str, Value)>,
    /// Watches from a version below this get 410.
    floor: u64,
    lists: BTreeMap<Resource, usize>,
    /// `(apiVersion, kind)` of each resource, for bookmarks.
    kinds: BTreeMap<Resource, (String, String)>,
    watch_versions: BTreeMap<Resource, Vec<u64>>,
}

/// The server; dropping it stops accepting.
#[derive(Debug)]
pub struct FakeApi {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    live: broadcast::Sender<Live>,
    down: AtomicBool,
    /// Resources that answer 404 (a CRD not installed).
    missing: Mutex<Vec<Resource>>,
}

fn resource_of(obj: &Value) -> Resource {
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    let group = api.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = obj["kind"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let plural = if kind.ends_with("policy") {
        format!("{}ies", kind.trim_end_matches('y'))
    } else {
        format!("{kind}s")
    };
    format!("{group}/{plural}")
}

fn name_of(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&m["namespace"]), s(&m["name"]))
}

impl FakeApi {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                rv: 100,
                ..State::default()
            }),
            live: broadcast::channel(4096).0,
            down: AtomicBool::new(false),
            missing: Mutex::new(Vec::new()),
        });
        let i = inner.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if i.down.load(Ordering::SeqCst) {
                    drop(tcp);
                    continue;
                }
                let i = i.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let i = i.clone();
                        async move {
                            if i.down.load(Ordering::SeqCst) {
                                // Closes this kept-alive connection too.
                                return Err(std::io::Error::other("api server is down"));
                            }
                            Ok(handle(&i, req))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { addr, inner, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces an object (ADDED or MODIFIED on open watches).
    pub fn apply(&self, obj: Value) {
        let mut s = self.inner.state.lock().unwrap();
        let (ev, obj) = put(&mut s, obj);
        self.publish(&mut s, ev, obj);
    }

    /// Deletes an object by its kind, namespace and name.
    pub fn delete(&self, obj: &Value) {
        let mut s = self.inner.state.lock().unwrap();
        let res = resource_of(obj);
        let removed = s
            .objects
            .get_mut(&res)
            .and_then(|m| m.remove(&name_of(obj)));
        if let Some(mut old) = removed {
            s.rv += 1;
            old["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            self.publish(&mut s, "DELETED", old);
        }
    }

    fn publish(&self, s: &mut State, kind: &'static str, object: Value) {
        let resource = resource_of(&object);
        s.history
            .push((s.rv, resource.clone(), kind, object.clone()));
        let _ = self.inner.live.send(Live::Event {
            rv: s.rv,
            resource,
            kind,
            object,
        });
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
        let mut s = self.inner.state.lock().unwrap();
        for obj in lost {
            put(&mut s, obj);
        }
        s.history.clear();
        s.floor = s.rv;
        let _ = self.inner.live.send(Live::Expire);
    }

    /// Raises the 410 floor to now without telling open watches, so the
    /// next resume from an older version is refused.
    pub fn compact(&self) {
        let mut s = self.inner.state.lock().unwrap();
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
        self.inner.missing.lock().unwrap().push(resource.to_owned());
    }

    pub fn lists(&self, resource: &str) -> usize {
        self.inner
            .state
            .lock()
            .unwrap()
            .lists
            .get(resource)
            .copied()
            .unwrap_or(0)
    }

    /// The `resourceVersion` of every watch request of a resource.
    pub fn watch_versions(&self, resource: &str) -> Vec<u64> {
        let s = self.inner.state.lock().unwrap();
        s.watch_versions.get(resource).cloned().unwrap_or_default()
    }

    pub fn resource_version(&self) -> u64 {
        self.inner.state.lock().unwrap().rv
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
        self.end_watches();
    }
}

fn put(s: &mut State, mut obj: Value) -> (&'static str, Value) {
    s.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
    let key = name_of(&obj);
    obj["metadata"]["uid"] = json!(format!("uid-{}-{}", key.0, key.1));
    let s_ = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let tm = (s_(&obj["apiVersion"]), s_(&obj["kind"]));
    s.kinds.insert(resource_of(&obj), tm);
    let m = s.objects.entry(resource_of(&obj)).or_default();
    let ev = if m.contains_key(&key) {
        "MODIFIED"
    } else {
        "ADDED"
    };
    m.insert(key, obj.clone());
    (ev, obj)
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Splits `/api/v1[/namespaces/NS]/PLURAL` or `/apis/G/V[/namespaces/NS]/PLURAL`.
fn route(path: &str) -> Option<(Resource, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => return None,
    };
    match rest {
        [plural] => Some((format!("{group}/{plural}"), None)),
        ["namespaces", ns, plural] => Some((format!("{group}/{plural}"), Some((*ns).to_owned()))),
        _ => None,
    }
}

fn handle(inner: &Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let Some((resource, ns)) = route(req.uri().path()) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "no such path"),
        );
    };
    if inner.missing.lock().unwrap().contains(&resource) {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    }
    let query: BTreeMap<&str, &str> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let in_ns = move |obj: &Value| {
        ns.as_deref()
            .is_none_or(|n| obj["metadata"]["namespace"] == n)
    };
    if query.get("watch") == Some(&"true") {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return watch(inner, resource, from, in_ns);
    }
    let mut s = inner.state.lock().unwrap();
    *s.lists.entry(resource.clone()).or_default() += 1;
    let items: Vec<Value> = s
        .objects
        .get(&resource)
        .map(|m| m.values().filter(|o| in_ns(o)).cloned().collect())
        .unwrap_or_default();
    let list = json!({"kind": "List", "apiVersion": "v1",
                      "metadata": {"resourceVersion": s.rv.to_string()}, "items": items});
    json_response(StatusCode::OK, &list)
}

fn line(v: &Value) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(format!("{v}\n"))))
}

fn watch(
    inner: &Arc<Inner>,
    resource: Resource,
    from: u64,
    in_ns: impl Fn(&Value) -> bool + Send + 'static,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1024);
    let mut live = inner.live.subscribe();
    let (replay, gone) = {
        let mut s = inner.state.lock().unwrap();
        s.watch_versions
            .entry(resource.clone())
            .or_default()
            .push(from);
        let gone = from < s.floor;
        let replay: Vec<_> = s
            .history
            .iter()
            .filter(|(rv, r, _, o)| *rv > from && *r == resource && in_ns(o))
            .map(|(rv, _, k, o)| (*rv, *k, o.clone()))
            .collect();
        (replay, gone)
    };
    let inner = inner.clone();
    tokio::spawn(async move {
        let expired = |rv: u64| {
            json!({"type": "ERROR", "object": status(410, "Expired",
            &format!("too old resource version: {rv}"))})
        };
        if gone {
            let _ = tx.send(line(&expired(from))).await;
            return;
        }
        let mut last = from;
        for (rv, kind, object) in replay {
            last = rv;
            if tx
                .send(line(&json!({"type": kind, "object": object})))
                .await
                .is_err()
            {
                return;
            }
        }
        loop {
            let msg = tokio::select! {
                m = live.recv() => m,
                () = tx.closed() => return,
            };
            let out = match msg {
                Ok(Live::Event {
                    rv,
                    resource: r,
                    kind,
                    object,
                }) => {
                    if rv <= last || r != resource || !in_ns(&object) {
                        continue;
                    }
                    last = rv;
                    json!({"type": kind, "object": object})
                }
                Ok(Live::Bookmark) => {
                    let s = inner.state.lock().unwrap();
                    let (api, kind) = s.kinds.get(&resource).cloned().unwrap_or_default();
                    json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api,
                           "metadata": {"resourceVersion": s.rv.to_string()}}})
                }
                Ok(Live::End) | Err(_) => return,
                Ok(Live::Expire) => {
                    let _ = tx.send(line(&expired(last))).await;
                    return;
                }
            };
            if tx.send(line(&out)).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
