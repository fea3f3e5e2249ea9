//! Integration tests: one test binary (ripgrep-style) so the suite links once.
//! Everything runs on loopback; processes the tests start are stopped by PID.

mod support;

mod browser;
mod certs;
mod codecs;
mod delivery;
mod delivery_crash;
mod ga4;
mod headers;
mod limits;
mod packaging;
mod preset_ids;
mod presets;
mod process;
mod relay;
mod reload;
mod rule_props;
mod rules;
mod scripts;
mod security;
