//! Integration tests: one test binary (ripgrep-style) so the suite links once.
//! Everything runs on loopback; processes the tests start are stopped by PID.

mod support;

mod certs;
mod codecs;
mod ga4;
mod delivery;
mod delivery_crash;
mod headers;
mod limits;
mod packaging;
mod process;
mod relay;
mod reload;
mod rule_props;
mod rules;
mod scripts;
mod security;
