//! `--web.config.file`: TLS, client certificates and basic auth, in the format of
//! the Prometheus exporter toolkit's web configuration file, so one file serves
//! node_exporter and this agent:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # relative paths: from this file's directory
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
//!   client_ca_file: ca.crt
//!   min_version: TLS12             # TLS12 or TLS13
//! http_server_config:
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! basic_auth_users:
//!   prometheus: $2y$10$...         # bcrypt hash
//! ```
//!
//! Unknown keys and what the agent cannot honour (TLS 1.0/1.1, client
//! certificates accepted without verification) are errors naming the key.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use hyper::header::{HeaderName, HeaderValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::sync::LockExt;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: ClientAuth,
    client_ca_file: Option<PathBuf>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ClientAuth {
    #[default]
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
enum TlsVersion {
    TLS12,
    TLS13,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// Accepted for compatibility; the agent serves HTTP/1.1 only.
    #[serde(default)]
    #[allow(dead_code)]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Response headers the exporter toolkit lets a web config set.
const ALLOWED_HEADERS: &[&str] = &[
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

/// Successful credentials kept to spare a bcrypt run per scrape (bounded).
const AUTH_CACHE: usize = 256;

/// A loaded web config. The default serves plain HTTP without auth.
#[derive(Default)]
pub struct WebConfigFile {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    users: BTreeMap<String, String>,
    /// A hash of the users' cost, checked for unknown users so that timing does
    /// not tell which users exist.
    dummy: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    verified: Mutex<HashSet<(String, String)>>,
}

impl std::fmt::Debug for WebConfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfigFile")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn invalid(path: &Path, message: String) -> ConfigError {
    ConfigError::Invalid { path: path.to_owned(), message }
}

impl WebConfigFile {
    /// The config `web.config_file` names, or plain HTTP without auth when none.
    pub fn from_file(file: Option<&Path>) -> Result<WebConfigFile, ConfigError> {
        file.map(WebConfigFile::load).unwrap_or_else(|| Ok(WebConfigFile::default()))
    }

    pub fn load(path: &Path) -> Result<WebConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let file: File = crate::config::parse_yaml(path, &text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = match &file.tls_server_config {
            Some(t) => Some(Arc::new(tls_config(path, dir, t)?)),
            None => None,
        };
        // The dummy hash for unknown users gets the users' highest cost.
        let mut cost = None;
        for (user, hash) in &file.basic_auth_users {
            let parts = hash
                .parse::<bcrypt::HashParts>()
                .map_err(|_| invalid(path, format!("basic_auth_users.{user}: not a bcrypt hash")))?;
            cost = cost.max(Some(parts.get_cost()));
        }
        let mut headers = Vec::new();
        for (name, value) in file.http_server_config.map(|h| h.headers).unwrap_or_default() {
            if !ALLOWED_HEADERS.iter().any(|a| a.eq_ignore_ascii_case(&name)) {
                return Err(invalid(
                    path,
                    format!(
                        "http_server_config.headers.{name}: not settable (allowed: {})",
                        ALLOWED_HEADERS.join(", ")
                    ),
                ));
            }
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| invalid(path, format!("http_server_config.headers.{name}: {e}")))?;
            let v = HeaderValue::from_str(&value)
                .map_err(|e| invalid(path, format!("http_server_config.headers.{name}: {e}")))?;
            headers.push((n, v));
        }
        let dummy = match cost {
            None => String::new(),
            // At most 16: bounds the start-up cost of an absurd config.
            Some(c) => bcrypt::hash("overlay-agent: no such user", c.min(16))
                .map_err(|e| invalid(path, format!("basic_auth_users: {e}")))?,
        };
        Ok(WebConfigFile { tls, users: file.basic_auth_users, dummy, headers, verified: Mutex::default() })
    }

    pub fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// The answer without bcrypt, when there is one: no users, no or malformed
    /// credentials, or credentials that already passed. None: a bcrypt check is needed.
    pub fn authorized_cached(&self, header: Option<&HeaderValue>) -> Option<bool> {
        if self.users.is_empty() {
            return Some(true);
        }
        let Some(key) = header.and_then(parse_basic) else { return Some(false) };
        self.verified.locked().contains(&key).then_some(true)
    }

    /// Checks an `Authorization` header against basic_auth_users. Slow (bcrypt)
    /// on a first use of a credential: call off the async threads.
    pub fn authorized(&self, header: Option<&HeaderValue>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = header.and_then(parse_basic) else { return false };
        let key = (user, password);
        if self.verified.locked().contains(&key) {
            return true;
        }
        // An unknown user costs a bcrypt run too, so timing does not tell users apart.
        let (hash, known) = match self.users.get(&key.0) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let ok = bcrypt::verify(&key.1, hash).unwrap_or(false) && known;
        if ok {
            let mut cache = self.verified.locked();
            if cache.len() >= AUTH_CACHE {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }
}

/// `Basic base64(user:password)` -> (user, password).
fn parse_basic(h: &HeaderValue) -> Option<(String, String)> {
    let s = h.to_str().ok()?;
    let (scheme, b64) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn tls_config(path: &Path, dir: &Path, t: &TlsFile) -> Result<rustls::ServerConfig, ConfigError> {
    let key_err = |key: &str, e: String| invalid(path, format!("tls_server_config.{key}: {e}"));
    let resolve = |p: &Path| if p.is_absolute() { p.to_owned() } else { dir.join(p) };
    let cert_path = resolve(&t.cert_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| key_err("cert_file", format!("{}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(key_err("cert_file", format!("{}: no certificate", cert_path.display())));
    }
    let key_path = resolve(&t.key_file);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| key_err("key_file", format!("{}: {e}", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let min = t.min_version.unwrap_or(TlsVersion::TLS12);
    let max = t.max_version.unwrap_or(TlsVersion::TLS13);
    if min > max {
        return Err(key_err("min_version", "is above max_version".into()));
    }
    let mut versions = Vec::new();
    if min <= TlsVersion::TLS12 && max >= TlsVersion::TLS12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::TLS13 {
        versions.push(&rustls::version::TLS13);
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| key_err("min_version", e.to_string()))?;
    let builder = match t.client_auth_type {
        ClientAuth::NoClientCert => builder.with_no_client_auth(),
        auth => {
            let Some(ca) = &t.client_ca_file else {
                return Err(key_err("client_ca_file", format!("required with client_auth_type {auth:?}")));
            };
            let ca = resolve(ca);
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(&ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| key_err("client_ca_file", format!("{}: {e}", ca.display())))?;
            for c in cas {
                roots.add(c).map_err(|e| key_err("client_ca_file", format!("{}: {e}", ca.display())))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if auth == ClientAuth::VerifyClientCertIfGiven { v.allow_unauthenticated() } else { v };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| key_err("client_ca_file", e.to_string()))?)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| key_err("key_file", e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebConfigFile, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let p = dir.path().join("web.yml");
        std::fs::write(&p, text).map_err(|e| e.to_string())?;
        WebConfigFile::load(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn basic_auth_with_bcrypt_and_a_cache() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let w = load(&format!("basic_auth_users:\n  prom: '{hash}'\n")).expect("valid");
        let basic = |u: &str, p: &str| {
            let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            HeaderValue::from_str(&format!("Basic {v}")).expect("header")
        };
        assert!(w.requires_auth());
        assert_eq!(w.authorized_cached(Some(&basic("prom", "s3cret"))), None, "needs bcrypt");
        assert_eq!(w.authorized_cached(None), Some(false), "no credentials: no bcrypt");
        assert!(w.authorized(Some(&basic("prom", "s3cret"))));
        assert_eq!(w.authorized_cached(Some(&basic("prom", "s3cret"))), Some(true));
        assert_eq!(w.authorized_cached(Some(&basic("prom", "wrong"))), None);
        assert!(w.authorized(Some(&basic("prom", "s3cret"))), "cached");
        assert!(!w.authorized(Some(&basic("prom", "wrong"))));
        assert!(!w.authorized(Some(&basic("nobody", "s3cret"))));
        let dummy: bcrypt::HashParts = w.dummy.parse().expect("the unknown-user hash is a bcrypt hash");
        assert_eq!(dummy.get_cost(), 4, "same cost as the configured users");
        assert!(!w.authorized(None));
        assert!(!w.authorized(Some(&HeaderValue::from_static("Bearer abc"))));
        assert!(!w.authorized(Some(&HeaderValue::from_static("Basic !!!"))));
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("basic_auth_users:\n  prom: plaintext\n").expect_err("not bcrypt");
        assert!(e.contains("basic_auth_users.prom: not a bcrypt hash"), "{e}");
        let e = load("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n")
            .expect_err("unknown");
        assert!(e.contains("web.yml:4:") && e.contains("cipher_suites"), "{e}");
        let e =
            load("tls_server_config:\n  cert_file: missing.crt\n  key_file: k\n").expect_err("missing file");
        assert!(e.contains("tls_server_config.cert_file") && e.contains("missing.crt"), "{e}");
        let e = load(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
        )
        .expect_err("unverified client certs");
        assert!(e.contains("client_auth_type"), "{e}");
        let e = load("http_server_config:\n  headers:\n    Set-Cookie: a\n").expect_err("header");
        assert!(e.contains("http_server_config.headers.Set-Cookie: not settable"), "{e}");
        let w = load("# nothing\n").expect("empty is plain HTTP");
        assert!(w.tls.is_none() && !w.requires_auth());
        let w =
            load("http_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n").expect("ok");
        assert_eq!(w.headers.len(), 1);
    }
}
