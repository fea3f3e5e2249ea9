//! Certificates: the `certs/` folder → a name-indexed map served by SNI, swapped atomically on
//! change so new handshakes see new certificates while open connections keep theirs.
//!
//! Layout of the folder (one pair per host name):
//! - `metrics.shop.example.crt` + `metrics.shop.example.key` (PEM chain, PEM key);
//! - `_wildcard.shop.example.crt` + `.key` for `*.shop.example` (the mkcert convention);
//! - or a certbot-style folder `metrics.shop.example/fullchain.pem` + `privkey.pem`.
//!
//! Clients that send no server name (requests to an IP address) get the pair named `default`,
//! else the first pair in name order. A pair that fails to load is reported with its file and
//! reason; every other name keeps serving, and a name that loaded before keeps its last good
//! certificate. With no pair at all, a self-signed certificate for `localhost` is generated in
//! memory.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The certificates being served.
#[derive(Default)]
pub struct CertMap {
    /// Lower-case host name → pair.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Parent domain of a `*.parent` wildcard → pair.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients without SNI.
    default: Option<Arc<CertifiedKey>>,
    /// Served names in order, for logs; `generated` when it is the in-memory localhost pair.
    pub names: Vec<String>,
    pub generated: bool,
}

impl CertMap {
    fn find(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name else {
            return self.default.clone();
        };
        let name = name.to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

/// A problem with one pair; the rest still serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertProblem {
    pub file: String,
    pub reason: String,
}

impl std::fmt::Display for CertProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file, self.reason)
    }
}

/// The certificates folder cannot be used at all (start-up fails).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read the certificates folder {dir} (--certs): {source}")]
    Unreadable { dir: String, source: std::io::Error },
    #[error("cannot generate the self-signed localhost certificate: {0}")]
    Generate(String),
}

/// The live certificate map and where it comes from.
pub struct CertStore {
    dir: PathBuf,
    map: ArcSwap<CertMap>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("dir", &self.dir).finish()
    }
}

impl CertStore {
    /// Loads `dir`. A missing folder is fine (the generated localhost certificate serves);
    /// an unreadable one is an error.
    pub fn load(dir: &Path) -> Result<(Arc<CertStore>, Vec<CertProblem>), CertError> {
        let store = Arc::new(CertStore {
            dir: dir.to_path_buf(),
            map: ArcSwap::from_pointee(CertMap::default()),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        });
        let problems = store.reload()?;
        Ok((store, problems))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn current(&self) -> Arc<CertMap> {
        self.map.load_full()
    }

    /// Re-reads the folder and swaps the map in. Pairs that fail keep their previous
    /// certificate, if they had one.
    pub fn reload(&self) -> Result<Vec<CertProblem>, CertError> {
        let old = self.map.load_full();
        let mut problems = Vec::new();
        let pairs = if self.dir.exists() {
            scan(&self.dir, &mut problems)?
        } else {
            BTreeMap::new()
        };
        let mut map = CertMap::default();
        for (name, (cert_path, key_path)) in &pairs {
            let loaded = load_pair(name, cert_path, key_path, &self.provider);
            let ck = match loaded {
                Ok(ck) => Arc::new(ck),
                Err(reason) => {
                    let kept = old
                        .exact
                        .get(name)
                        .or_else(|| name.strip_prefix("*.").and_then(|p| old.wildcard.get(p)));
                    let suffix = if kept.is_some() {
                        "; still serving the previous certificate for this name"
                    } else {
                        ""
                    };
                    problems.push(CertProblem {
                        file: cert_path.display().to_string(),
                        reason: format!("{reason}{suffix}"),
                    });
                    match kept {
                        Some(k) => k.clone(),
                        None => continue,
                    }
                }
            };
            if name == "default" {
                map.default = Some(ck);
                map.names.push(name.clone());
                continue;
            }
            if map.default.is_none() {
                map.default = Some(ck.clone());
            }
            match name.strip_prefix("*.") {
                Some(parent) => map.wildcard.insert(parent.to_string(), ck),
                None => map.exact.insert(name.clone(), ck),
            };
            map.names.push(name.clone());
        }
        if map.names.is_empty() {
            map = generated_localhost(&self.provider)?;
        }
        self.map.store(Arc::new(map));
        Ok(problems)
    }

    /// A rustls server configuration that resolves certificates through this store, offering
    /// h2 and HTTP/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.map.load().find(hello.server_name())
    }
}

/// Finds the pairs in `dir`: name → (certificate file, key file).
fn scan(
    dir: &Path,
    problems: &mut Vec<CertProblem>,
) -> Result<BTreeMap<String, (PathBuf, PathBuf)>, CertError> {
    let unreadable = |source| CertError::Unreadable {
        dir: dir.display().to_string(),
        source,
    };
    let mut pairs = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let Some(file) = p.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if file.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            let (c, k) = (p.join("fullchain.pem"), p.join("privkey.pem"));
            if c.is_file() && k.is_file() {
                pairs.insert(host_of(file), (c, k));
            }
            continue;
        }
        if let Some(stem) = file.strip_suffix(".crt") {
            let key = p.with_file_name(format!("{stem}.key"));
            if key.is_file() {
                pairs.insert(host_of(stem), (p.clone(), key));
            } else {
                problems.push(CertProblem {
                    file: p.display().to_string(),
                    reason: format!("no key file {stem}.key beside it"),
                });
            }
        } else if let Some(stem) = file.strip_suffix(".key")
            && !p.with_file_name(format!("{stem}.crt")).exists()
        {
            problems.push(CertProblem {
                file: p.display().to_string(),
                reason: format!("no certificate {stem}.crt beside it"),
            });
        }
    }
    Ok(pairs)
}

/// File stem → served name: `_wildcard.shop.example` → `*.shop.example`.
fn host_of(stem: &str) -> String {
    let lower = stem.to_ascii_lowercase();
    match lower.strip_prefix("_wildcard.") {
        Some(parent) => format!("*.{parent}"),
        None => lower,
    }
}

fn load_pair(
    name: &str,
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("no PEM certificate in this file".into());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", key.display()))?;
    let ck = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        format!(
            "certificate and key {} do not belong together: {e}",
            key.display()
        )
    })?;
    if name != "default" {
        check_name(name, &ck.cert[0])?;
    }
    Ok(ck)
}

/// The certificate must be valid for the name its file claims; a wildcard is checked with a
/// probe label.
fn check_name(name: &str, cert: &CertificateDer<'_>) -> Result<(), String> {
    let probe = match name.strip_prefix("*.") {
        Some(parent) => format!("tagway-probe.{parent}"),
        None => name.to_string(),
    };
    let server_name = ServerName::try_from(probe.as_str())
        .map_err(|_| format!("{name:?} is not a host name or IP address"))?;
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("cannot parse the certificate: {e:?}"))?;
    ee.verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| format!("the certificate is not valid for {name} (its subject names differ from the file name)"))
}

fn generated_localhost(provider: &CryptoProvider) -> Result<CertMap, CertError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| CertError::Generate(e.to_string()))?;
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| CertError::Generate(e.to_string()))?;
    let ck = Arc::new(
        CertifiedKey::from_der(vec![generated.cert.der().clone()], key, provider)
            .map_err(|e| CertError::Generate(e.to_string()))?,
    );
    let mut map = CertMap {
        generated: true,
        default: Some(ck.clone()),
        ..CertMap::default()
    };
    for n in ["localhost", "127.0.0.1", "::1"] {
        map.exact.insert(n.to_string(), ck.clone());
    }
    map.names
        .push("localhost (self-signed, generated in memory)".into());
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_to_names() {
        assert_eq!(host_of("_wildcard.shop.example"), "*.shop.example");
        assert_eq!(host_of("Metrics.Shop.Example"), "metrics.shop.example");
    }
}
