//! Integration tests of the federation controller over loopback sockets.

mod authz;
mod cluster;
mod controller;
mod deltas;
mod fixture;
mod mesh;
mod push;
mod refusals;
mod routes;
mod scale;
