//! Integration tests of the CA: certificates on disk, the gRPC service over
//! real TLS sockets, verification and rotation.

mod csr;
mod fixture;
mod follow;
mod grpc;
mod manager;
mod metrics;
mod mtls;
mod verify;
