//! Integration tests of the DNS server over real sockets on loopback.

mod dig;
mod fuzz;
mod packets;
mod resolver;
mod support;
