//! Integration tests of the federation controller over loopback sockets.

mod authz;
mod cluster;
mod controller;
mod fixture;
mod mesh;
mod push;
mod refusals;
mod routes;
mod scale;
