//! The data-plane side of Strait's control plane: how a sidecar, an
//! east-west gateway or a DNS server follows its cluster's controller.
//!
//! Every role subscribes the same way ([`follow`]): one mTLS gRPC stream to
//! the controller (`strait.config.v1.ConfigDiscovery`), authenticated with
//! the role's own live certificate, expecting the controller's SPIFFE ID;
//! each pushed snapshot is checked (`Snapshot::validate`), handed to the
//! role's `apply`, and ACKed, or NACKed when either refuses it, in which
//! case the role keeps what it had. When the controller is unreachable the
//! stream is retried with jittered exponential back-off and the role keeps
//! its last good config.
//!
//! What it is not: it decides nothing about routing and holds no catalog;
//! it only carries what the controller says to the role that asked.

mod follow;
pub mod subscribe;
pub mod trace;

pub use follow::{ControllerRef, Role, ScopeConfig, Target, deregister, follow, follow_owner};
pub use subscribe::{AcceptFn, Options, Subscription, subscribe};
