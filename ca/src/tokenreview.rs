//! Workload identity on Kubernetes: a sidecar asks for its first
//! certificate with its projected ServiceAccount token (audience
//! [`AUDIENCE`]) in place of a bootstrap token; the CA asks the API server
//! who the token belongs to (a `TokenReview`, through a [`TokenReviewer`])
//! and signs only `spiffe://<td>/ns/<ns>/sa/<sa>` for exactly that
//! namespace and service account.
//!
//! [`decide`] is the pure decision from the review's answer; the reviewer
//! that talks to the API server lives with the Kubernetes code
//! (`strait_k8s::tokenreview`), so this crate needs no Kubernetes client.
//!
//! What it is not: the CA does not verify the token's signature itself
//! (the API server does, in the review), and a token is not bound to a
//! pod here (the API server's review checks a bound token's pod still
//! exists).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use strait_api::SpiffeId;
use strait_api::proto::ca::SignRequest;

/// The audience Strait's projected tokens are issued for.
pub const AUDIENCE: &str = "strait";

/// The part of a `TokenReview`'s `status` the decision reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewStatus {
    pub authenticated: bool,
    /// `system:serviceaccount:<ns>:<sa>` for a service account token.
    pub username: String,
    /// The requested audiences the token is valid for.
    pub audiences: Vec<String>,
    /// The API server's reason when not authenticated.
    pub error: String,
}

/// Why a token does not get the certificate it asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewError {
    #[error("service account token refused: the token review failed: {0}")]
    ReviewFailed(String),
    #[error("service account token refused: expired ({0})")]
    Expired(String),
    #[error("service account token refused: not issued for audience {AUDIENCE:?} ({0})")]
    WrongAudience(String),
    #[error("service account token refused: not authenticated by the api server ({0})")]
    NotAuthenticated(String),
    #[error("service account token refused: {0:?} is not a service account")]
    NotServiceAccount(String),
    #[error(
        "service account token is for ns/{namespace}/sa/{service_account}, not for {requested}"
    )]
    WrongIdentity {
        namespace: String,
        service_account: String,
        requested: String,
    },
}

impl ReviewError {
    /// A stable label for metrics and the `strait-reason` metadata.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ReviewFailed(_) => "token_review_failed",
            Self::Expired(_) => "token_expired",
            Self::WrongAudience(_) => "token_wrong_audience",
            Self::NotAuthenticated(_) => "token_not_authenticated",
            Self::NotServiceAccount(_) => "token_not_service_account",
            Self::WrongIdentity { .. } => "token_wrong_identity",
        }
    }

    /// Whether the caller is refused for what it asked (as opposed to
    /// not being authenticated at all).
    pub fn is_permission(&self) -> bool {
        matches!(self, Self::WrongIdentity { .. })
    }
}

/// Asks the API server about a token (a `TokenReview` with
/// `spec.audiences: [AUDIENCE]`).
pub trait TokenReviewer: Send + Sync + std::fmt::Debug {
    fn review<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ReviewStatus, String>> + Send + 'a>>;
}

impl From<ReviewError> for tonic::Status {
    fn from(e: ReviewError) -> Self {
        let code = match e {
            ReviewError::WrongIdentity { .. } => tonic::Code::PermissionDenied,
            ReviewError::ReviewFailed(_) => tonic::Code::Unavailable,
            _ => tonic::Code::Unauthenticated,
        };
        crate::server::refuse(code, e.reason(), e.to_string())
    }
}

impl crate::server::CaService {
    /// Checks service account tokens with `reviewer` from now on.
    pub fn with_token_review(mut self, reviewer: Arc<dyn TokenReviewer>) -> Self {
        self.reviewer = Some(reviewer);
        self
    }
}

/// For a request carrying a service account token (and a CA with a
/// reviewer): the identity the review grants, or the refusal. `None`:
/// not a token review request (bootstrap token or renewal).
pub(crate) async fn review(
    reviewer: Option<&dyn TokenReviewer>,
    td: &strait_api::TrustDomain,
    req: &SignRequest,
) -> Option<Result<SpiffeId, tonic::Status>> {
    let reviewer = reviewer?;
    if !is_jwt(&req.bootstrap_token) {
        return None;
    }
    let checked = match crate::csr::check(&req.csr_der, td) {
        Ok(c) => c,
        Err(e) => return Some(Err(e.into())),
    };
    let answer = reviewer.review(&req.bootstrap_token).await;
    let decided = decide(answer.as_ref().map_err(String::as_str), &checked.id);
    Some(match decided {
        Ok((ns, sa)) => {
            tracing::info!(namespace = %ns, service_account = %sa, "service account token reviewed");
            Ok(checked.id)
        }
        Err(e) => Err(e.into()),
    })
}

/// Whether a credential is a JWT (a projected service account token)
/// rather than a Strait bootstrap token (`strait-bt-...`).
pub fn is_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

/// The namespace and service account of a review, if it authenticated a
/// service account for [`AUDIENCE`]; `requested` must be exactly that
/// workload's identity.
pub fn decide(
    review: Result<&ReviewStatus, &str>,
    requested: &SpiffeId,
) -> Result<(String, String), ReviewError> {
    let status = review.map_err(|e| ReviewError::ReviewFailed(e.to_owned()))?;
    if !status.authenticated {
        let why = if status.error.is_empty() {
            "no reason given".to_owned()
        } else {
            status.error.clone()
        };
        let lower = why.to_ascii_lowercase();
        return Err(if lower.contains("expired") {
            ReviewError::Expired(why)
        } else if lower.contains("audience") {
            ReviewError::WrongAudience(why)
        } else {
            ReviewError::NotAuthenticated(why)
        });
    }
    if !status.audiences.iter().any(|a| a == AUDIENCE) {
        return Err(ReviewError::WrongAudience(format!(
            "the review answered audiences {:?}",
            status.audiences
        )));
    }
    let sa = status
        .username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'));
    let Some((ns, sa)) = sa else {
        return Err(ReviewError::NotServiceAccount(status.username.clone()));
    };
    let expected = format!("/ns/{ns}/sa/{sa}");
    if requested.path() != expected {
        return Err(ReviewError::WrongIdentity {
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
            requested: requested.to_string(),
        });
    }
    Ok((ns.to_owned(), sa.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(user: &str) -> ReviewStatus {
        ReviewStatus {
            authenticated: true,
            username: user.into(),
            audiences: vec![AUDIENCE.into()],
            error: String::new(),
        }
    }

    fn refused(error: &str) -> ReviewStatus {
        ReviewStatus {
            error: error.into(),
            ..ReviewStatus::default()
        }
    }

    #[test]
    fn a_review_grants_exactly_its_namespace_and_service_account() {
        let web: SpiffeId = "spiffe://strait.local/ns/shop/sa/web".parse().unwrap();
        let sa = "system:serviceaccount:shop:web";
        let other_aud = ReviewStatus {
            audiences: vec!["https://kubernetes.default.svc".into()],
            ..ok(sa)
        };
        // (the review's answer, the reason refused or Ok)
        type Row<'a> = (Result<ReviewStatus, &'a str>, Result<(), &'a str>);
        let table: Vec<Row<'_>> = vec![
            (Ok(ok(sa)), Ok(())),
            (
                Ok(ok("system:serviceaccount:shop:db")),
                Err("token_wrong_identity"),
            ),
            (
                Ok(ok("system:serviceaccount:other:web")),
                Err("token_wrong_identity"),
            ),
            (Ok(ok("alice")), Err("token_not_service_account")),
            (
                Ok(ok("system:serviceaccount:shop")),
                Err("token_not_service_account"),
            ),
            (Ok(other_aud), Err("token_wrong_audience")),
            (
                Ok(refused(
                    "[invalid bearer token, service account token has expired]",
                )),
                Err("token_expired"),
            ),
            (
                Ok(refused(
                    "[invalid bearer token, token audiences [\"vault\"] is invalid for the target audiences [\"strait\"]]",
                )),
                Err("token_wrong_audience"),
            ),
            (
                Ok(refused("invalid bearer token")),
                Err("token_not_authenticated"),
            ),
            (Ok(refused("")), Err("token_not_authenticated")),
            (Err("api server answered 500"), Err("token_review_failed")),
        ];
        for (review, want) in table {
            let got = decide(review.as_ref().map_err(|e| *e), &web);
            match (got, want) {
                (Ok((ns, sa)), Ok(())) => assert_eq!((ns.as_str(), sa.as_str()), ("shop", "web")),
                (Err(e), Err(reason)) => {
                    assert_eq!(e.reason(), reason, "{review:?}: {e}");
                    assert!(e.to_string().contains("token"), "{e}");
                }
                (got, want) => panic!("{review:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn jwts_are_told_from_bootstrap_tokens() {
        assert!(is_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!is_jwt("strait-bt-0123456789abcdef"));
        assert!(!is_jwt("eyJonlyonepart"));
    }
}
