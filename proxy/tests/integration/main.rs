//! Sidecar integration tests: real sockets on loopback, real mTLS with
//! certificates from a real CA directory, real HTTP/1.1, HTTP/2, gRPC and
//! TCP clients and echo apps.

mod badinput;
mod crosscluster;
mod limits;
mod protocols;
mod resilience;
mod support;
mod upgrade;
