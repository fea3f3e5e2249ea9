//! tagway: a first-party tracking gateway. A reverse proxy on a tracking subdomain that takes
//! the requests analytics tags send, applies the site's rules, and relays them to the vendors.
//!
//! # Layout
//! Modules follow the path of a request; data flows one way:
//!
//! ```text
//! listen ──► route ──► (decode ─► rules ─► encode) ──► deliver ──► respond
//!   │          │                                         │            │
//!   conn       ruleset (compiled snapshot, ArcSwap)      client       Reject → status
//! ```
//!
//! - [`listen`]: sockets, TLS, connection limits, header/idle timeouts, graceful shutdown.
//! - [`proxy`]: calls the stages in order for one request.
//! - [`route`]: host + method + path → route. [`headers`] / [`clientip`]: what may leave.
//! - [`deliver`]: the upstream client, and background delivery of queued routes from the
//!   durable [`spool`]. [`respond`]: every answer the gateway makes itself.
//! - Around the path: [`config`] (rule files → [`ruleset::RuleSet`]), [`certs`],
//!   [`watch`] (hot reload), [`admin`] (metrics, health), [`gateway`] (shared state).
//! - [`scripts`]: script routes answered from a shared cache of the vendor's rewritten script.

pub mod admin;
pub mod alloc;
pub mod certs;
pub mod clientip;
pub mod config;
pub mod decode;
pub mod deliver;
pub mod encode;
pub mod explain;
pub mod gateway;
pub mod headers;
pub mod inspect;
pub mod listen;
pub mod metrics;
pub mod proxy;
pub mod respond;
pub mod route;
pub mod rules;
pub mod ruleset;
pub mod ruletest;
pub mod scripts;
pub mod spool;
pub mod transform;
pub mod watch;

pub use gateway::{Gateway, Settings};
pub use listen::{Listeners, run};
