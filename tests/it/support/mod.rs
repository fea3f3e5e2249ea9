//! Test harness: an in-process gateway on loopback, mock vendors (plain and TLS, with a CA made
//! at test time), HTTP/1.1 and HTTP/2 clients, and raw sockets for exact bytes.

pub mod certs;
pub mod client;
pub mod gateway;
pub mod mock;
pub mod raw;

pub use certs::TestCa;
pub use client::{Reply, get, send, send_plain};
pub use gateway::{Gw, GwOptions};
pub use mock::{Mock, MockReply};
