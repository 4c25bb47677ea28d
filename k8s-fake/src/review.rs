//! `POST /apis/authentication.k8s.io/v1/tokenreviews`, answered as
//! kube-apiserver answers a projected service account token: from the
//! tokens the test registered ([`crate::FakeApi::add_token`]).

use std::time::{SystemTime, UNIX_EPOCH};

use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::serve::{Body, json_response, status};
use crate::{Inner, TokenFacts};

/// The review's `status` for `token` asked with `audiences` at `now`.
pub(crate) fn review(facts: Option<&TokenFacts>, audiences: &[String], now: u64) -> Value {
    let refused = |why: &str| json!({"authenticated": false, "error": why});
    let Some(f) = facts else {
        return refused("invalid bearer token");
    };
    if now >= f.expires {
        return refused("[invalid bearer token, service account token has expired]");
    }
    // Without audiences in the request, the API server's own audiences
    // apply (here: "https://kubernetes.default.svc").
    let wanted: Vec<String> = if audiences.is_empty() {
        vec!["https://kubernetes.default.svc".to_owned()]
    } else {
        audiences.to_vec()
    };
    let common: Vec<&String> = wanted.iter().filter(|a| f.audiences.contains(a)).collect();
    if common.is_empty() {
        return refused(&format!(
            "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
            f.audiences, wanted
        ));
    }
    let ns = &f.namespace;
    json!({
        "authenticated": true,
        "user": {
            "username": format!("system:serviceaccount:{ns}:{}", f.service_account),
            "uid": format!("uid-sa-{ns}-{}", f.service_account),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
        },
        "audiences": common,
    })
}

pub(crate) fn token_review(inner: &Inner, body: &Value) -> Response<Body> {
    if body["kind"] != "TokenReview" || body["apiVersion"] != "authentication.k8s.io/v1" {
        return json_response(
            StatusCode::BAD_REQUEST,
            &status(
                400,
                "BadRequest",
                "expected a TokenReview of authentication.k8s.io/v1",
            ),
        );
    }
    let s = inner.lock();
    if s.token_review_fails {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &status(
                500,
                "InternalError",
                "Internal error occurred: token review is failing (fault injected)",
            ),
        );
    }
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let audiences: Vec<String> = body["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = body.clone();
    out["metadata"] = json!({"creationTimestamp": null});
    out["status"] = review(s.tokens.get(token), &audiences, now);
    json_response(StatusCode::CREATED, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> TokenFacts {
        TokenFacts {
            namespace: "shop".into(),
            service_account: "web".into(),
            audiences: vec!["strait".into()],
            expires: 1000,
        }
    }

    #[test]
    fn reviews_answer_like_kube_apiserver() {
        let strait = vec!["strait".to_owned()];
        let ok = review(Some(&facts()), &strait, 10);
        assert_eq!(ok["authenticated"], true);
        assert_eq!(ok["user"]["username"], "system:serviceaccount:shop:web");
        assert_eq!(ok["audiences"], json!(["strait"]));
        let table = [
            (None, strait.clone(), 10, "invalid bearer token"),
            (Some(facts()), strait.clone(), 1000, "expired"),
            (
                Some(facts()),
                vec!["vault".to_owned()],
                10,
                "is invalid for the target audiences",
            ),
            (
                Some(facts()),
                vec![],
                10,
                "is invalid for the target audiences",
            ),
        ];
        for (f, aud, now, why) in table {
            let r = review(f.as_ref(), &aud, now);
            assert_eq!(r["authenticated"], false, "{why}");
            assert!(r["error"].as_str().unwrap().contains(why), "{r}");
        }
    }
}
