//! The CA's [`TokenReviewer`] on Kubernetes: a `TokenReview`
//! (`authentication.k8s.io/v1`, `spec.audiences: ["strait"]`) against the
//! API server with the CA's own credentials (the `strait-ca` service
//! account, allowed `create tokenreviews` by `install`'s ClusterRole).
//! The decision on the answer is `strait_ca::tokenreview::decide`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use strait_ca::tokenreview::{AUDIENCE, ReviewStatus, TokenReviewer};

/// How long one review may take.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Reviews tokens with one API server.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    api: Api<TokenReview>,
}

impl std::fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTokenReviewer").finish_non_exhaustive()
    }
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
        }
    }

    async fn ask(&self, token: &str) -> Result<ReviewStatus, String> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let answer = tokio::time::timeout(
            REVIEW_TIMEOUT,
            self.api.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| {
            format!(
                "no answer from the api server within {}s",
                REVIEW_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| e.to_string())?;
        let status = answer
            .status
            .ok_or_else(|| "the api server answered a TokenReview without status".to_owned())?;
        Ok(ReviewStatus {
            authenticated: status.authenticated.unwrap_or(false),
            username: status.user.and_then(|u| u.username).unwrap_or_default(),
            audiences: status.audiences.unwrap_or_default(),
            error: status.error.unwrap_or_default(),
        })
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ReviewStatus, String>> + Send + 'a>> {
        Box::pin(self.ask(token))
    }
}
