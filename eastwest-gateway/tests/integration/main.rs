//! Gateway integration tests: a real gateway on loopback, real mTLS with
//! certificates from a real CA directory, raw HTTP/2 CONNECT clients.

mod policy;
mod reload;
mod support;
mod tunnels;
