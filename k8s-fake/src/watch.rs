//! Watch streams: replay from the history after the requested version,
//! then live events, bookmarks and the faults the tests drive.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::select::{Selector, metadata_only};
use crate::serve::{Body, status};
use crate::{Inner, Live, Resource, kinds};

fn line(v: &Value) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(format!("{v}\n"))))
}

pub(crate) fn watch(
    inner: &Arc<Inner>,
    resource: Resource,
    namespace: Option<String>,
    selector: Selector,
    from: u64,
    partial: bool,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1024);
    let mut live = inner.live.subscribe();
    let matches = move |o: &Value| selector.matches(o, namespace.as_deref());
    let shape = move |o: Value| if partial { metadata_only(&o) } else { o };
    let (replay, gone) = {
        let mut s = inner.lock();
        s.watch_versions
            .entry(resource.clone())
            .or_default()
            .push(from);
        let gone = from < s.floor;
        let replay: Vec<_> = s
            .history
            .iter()
            .filter(|(rv, r, _, o)| *rv > from && *r == resource && matches(o))
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
                .send(line(&json!({"type": kind, "object": shape(object)})))
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
                    if rv <= last || r != resource || !matches(&object) {
                        continue;
                    }
                    last = rv;
                    json!({"type": kind, "object": shape(object)})
                }
                Ok(Live::Bookmark) => {
                    let s = inner.lock();
                    let (api, kind) = if partial {
                        (
                            "meta.k8s.io/v1".to_owned(),
                            "PartialObjectMetadata".to_owned(),
                        )
                    } else {
                        kinds::type_of(&s.kinds, &resource).unwrap_or_else(|| guess(&s, &resource))
                    };
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

/// `(apiVersion, kind)` of a resource not in the table, from a stored
/// object of it.
fn guess(s: &crate::State, resource: &str) -> (String, String) {
    let o = s.objects.get(resource).and_then(|m| m.values().next());
    let f = |k: &str| o.and_then(|o| o[k].as_str()).unwrap_or_default().to_owned();
    (f("apiVersion"), f("kind"))
}
