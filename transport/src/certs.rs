//! Development certificates: one CA per site, one certificate per node, signed by its site CA.
//!
//! [`init`] writes, under the output directory:
//!
//! ```text
//! <out>/<site>/ca.pem        site CA certificate (subject CN "ferry site CA <site>", OU <site>)
//! <out>/<site>/ca.key        site CA private key, mode 0600
//! <out>/<site>/<node>.pem    node certificate: SAN URI ferry://site/<site>/node/<node>,
//!                            DNS <node>.<site>.ferry, the node's IPs; server+client auth
//! <out>/<site>/<node>.key    node private key, mode 0600
//! ```
//!
//! Keys are ECDSA P-256. CAs are valid for [`CA_VALIDITY_DAYS`], node certificates for
//! [`NODE_VALIDITY_DAYS`]. Re-running [`init`] keeps existing CAs and reissues only node
//! certificates that are missing, unreadable, name another identity or expire within
//! [`RENEW_BEFORE_DAYS`]. [`show`] reads a directory back for `ferry certs show`.
//! [`TrustStore`] and [`NodeCredentials`] are what endpoints load.
//!
//! That directory is the operator's: it holds every site's CA key. A node gets its own
//! directory ([`export_node`]): every site's CA certificate and its own certificate and key,
//! nothing it could mint or borrow another identity with. A trust store refuses two sites that
//! present the same CA.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::identity::{NodeId, PeerIdentity, SiteName};

/// Validity of a site CA: 10 years.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of a node certificate: 397 days (the public-web maximum, a sane default).
pub const NODE_VALIDITY_DAYS: i64 = 397;
/// [`init`] reissues node certificates that expire within this many days.
pub const RENEW_BEFORE_DAYS: i64 = 30;

/// Why certificates could not be made, read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    /// Certificate generation failed.
    #[error("generate {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    /// A PEM file holds no usable certificate or key.
    #[error("parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    /// A directory has no site CAs at all.
    #[error("{0} holds no site CA (expected <dir>/<site>/ca.pem); run `ferry certs init`")]
    Empty(PathBuf),
    /// Two sites present the same CA: a node of one could pass as a node of the other.
    #[error("sites '{0}' and '{1}' present the same CA certificate; give each site its own CA")]
    SharedCa(SiteName, SiteName),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CertError {
    let path = path.to_path_buf();
    move |source| CertError::Io { action, path, source }
}

/// A validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: OffsetDateTime,
    /// Last instant the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From one hour ago (clock skew) to `days` from now.
    pub fn days_from_now(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - Duration::hours(1), not_after: now + Duration::days(days) }
    }
}

/// A site CA with its signing key.
#[derive(Debug)]
pub struct CertificateAuthority {
    site: SiteName,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    key_pem: String,
}

fn ca_params(site: &SiteName, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ferry");
    dn.push(DnType::OrganizationalUnitName, site.as_str());
    dn.push(DnType::CommonName, format!("ferry site CA {site}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(random_serial());
    params
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

impl CertificateAuthority {
    /// A new self-signed CA for `site`.
    pub fn generate(
        site: &SiteName,
        validity: Validity,
    ) -> Result<CertificateAuthority, CertError> {
        let generate =
            |source| CertError::Generate { what: format!("CA of site '{site}'"), source };
        let key = KeyPair::generate().map_err(generate)?;
        let params = ca_params(site, validity);
        let cert = params.self_signed(&key).map_err(generate)?;
        Ok(CertificateAuthority {
            site: site.clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
        })
    }

    /// Loads `<dir>/<site>/ca.pem` and `ca.key`.
    pub fn load(dir: &Path, site: &SiteName) -> Result<CertificateAuthority, CertError> {
        let cert_path = dir.join(site.as_str()).join("ca.pem");
        let key_path = dir.join(site.as_str()).join("ca.key");
        let cert = read_cert(&cert_path)?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err("read", &key_path))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| CertError::Parse { path: key_path.clone(), reason: e.to_string() })?;
        // The issuer's name and key identifier are rebuilt from the site name: the same inputs
        // `generate` used, so certificates issued now chain to the stored CA certificate. Check
        // that the stored certificate really is that CA, with this key.
        let params = ca_params(site, Validity::days_from_now(0));
        let parse_err = |reason: String| CertError::Parse { path: cert_path.clone(), reason };
        let (_, parsed) = X509Certificate::from_der(&cert).map_err(|e| parse_err(e.to_string()))?;
        let expected = params.self_signed(&key).map_err(|e| parse_err(e.to_string()))?;
        let (_, expected) =
            X509Certificate::from_der(expected.der()).map_err(|e| parse_err(e.to_string()))?;
        if parsed.subject().as_raw() != expected.subject().as_raw() {
            return Err(parse_err(format!(
                "subject '{}' is not the ferry CA subject of site '{site}' ('{}')",
                parsed.subject(),
                expected.subject()
            )));
        }
        if parsed.public_key().raw != expected.public_key().raw {
            return Err(parse_err(format!(
                "the certificate does not match the key in {}",
                key_path.display()
            )));
        }
        Ok(CertificateAuthority {
            site: site.clone(),
            issuer: Issuer::new(params, key),
            cert,
            key_pem,
        })
    }

    /// The site this CA certifies.
    pub fn site(&self) -> &SiteName {
        &self.site
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Issues a certificate for `node` of this CA's site, valid for `ips` as well.
    pub fn issue(
        &self,
        node: &NodeId,
        ips: &[IpAddr],
        validity: Validity,
    ) -> Result<NodeCredentials, CertError> {
        let identity = PeerIdentity::new(self.site.clone(), node.clone());
        let generate =
            |source| CertError::Generate { what: format!("certificate of {identity}"), source };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ferry");
        dn.push(DnType::OrganizationalUnitName, self.site.as_str());
        dn.push(DnType::CommonName, identity.dns_name());
        params.distinguished_name = dn;
        let uri = identity.uri().try_into().map_err(generate)?;
        let dns = identity.dns_name().try_into().map_err(generate)?;
        params.subject_alt_names = vec![SanType::URI(uri), SanType::DnsName(dns)];
        params.subject_alt_names.extend(ips.iter().copied().map(SanType::IpAddress));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(NodeCredentials {
            identity,
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }

    fn write(&self, site_dir: &Path) -> Result<(), CertError> {
        write_file(&site_dir.join("ca.key"), self.key_pem.as_bytes(), 0o600)?;
        write_file(&site_dir.join("ca.pem"), pem("CERTIFICATE", &self.cert).as_bytes(), 0o644)
    }
}

/// A node's certificate chain and private key: what its endpoint presents.
#[derive(Debug)]
pub struct NodeCredentials {
    /// Who the certificate names.
    pub identity: PeerIdentity,
    /// The node certificate (the site CA is not sent: every peer already trusts it).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The node's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for NodeCredentials {
    fn clone(&self) -> Self {
        NodeCredentials {
            identity: self.identity.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl NodeCredentials {
    /// Loads `<dir>/<site>/<node>.pem` and `.key`.
    pub fn load(dir: &Path, site: &SiteName, node: &NodeId) -> Result<NodeCredentials, CertError> {
        let cert_path = dir.join(site.as_str()).join(format!("{node}.pem"));
        let key_path = dir.join(site.as_str()).join(format!("{node}.key"));
        let cert = read_cert(&cert_path)?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| CertError::Parse { path: key_path.clone(), reason: e.to_string() })?;
        Ok(NodeCredentials {
            identity: PeerIdentity::new(site.clone(), node.clone()),
            cert_chain: vec![cert],
            key,
        })
    }

    fn write(&self, site_dir: &Path) -> Result<(), CertError> {
        let node = &self.identity.node;
        let key_pem = pem("PRIVATE KEY", self.key.secret_der());
        write_file(&site_dir.join(format!("{node}.key")), key_pem.as_bytes(), 0o600)?;
        let mut chain = String::new();
        for cert in &self.cert_chain {
            chain.push_str(&pem("CERTIFICATE", cert));
        }
        write_file(&site_dir.join(format!("{node}.pem")), chain.as_bytes(), 0o644)
    }
}

/// A site and its nodes, with the addresses each node's certificate must be valid for: what
/// [`init`] issues certificates for and what a [`TrustStore`] admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteMembers {
    pub site: SiteName,
    pub nodes: Vec<NodeMember>,
}

/// A node of a [`SiteMembers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMember {
    pub id: NodeId,
    /// Addresses the node's certificate names besides its identity.
    pub ips: Vec<IpAddr>,
}

/// The site CAs a node trusts and the nodes each site has, keyed by site.
#[derive(Debug, Clone)]
pub struct TrustStore {
    pub(crate) sites: BTreeMap<SiteName, TrustedSite>,
}

#[derive(Debug, Clone)]
pub(crate) struct TrustedSite {
    pub(crate) ca: CertificateDer<'static>,
    pub(crate) nodes: BTreeSet<NodeId>,
}

impl TrustStore {
    /// Trusts the given CA of each site, for that site's nodes; a site without a CA is not
    /// trusted.
    pub fn new(
        sites: &[SiteMembers],
        cas: impl IntoIterator<Item = (SiteName, CertificateDer<'static>)>,
    ) -> TrustStore {
        let cas: BTreeMap<_, _> = cas.into_iter().collect();
        let sites = sites
            .iter()
            .filter_map(|members| {
                let ca = cas.get(&members.site)?.clone();
                let nodes = members.nodes.iter().map(|n| n.id.clone()).collect();
                Some((members.site.clone(), TrustedSite { ca, nodes }))
            })
            .collect();
        TrustStore { sites }
    }

    /// Loads `<dir>/<site>/ca.pem` for every site of `sites`; refuses two sites with one CA.
    pub fn load(sites: &[SiteMembers], dir: &Path) -> Result<TrustStore, CertError> {
        let mut cas: Vec<(SiteName, CertificateDer<'static>)> = Vec::new();
        for members in sites {
            let path = dir.join(members.site.as_str()).join("ca.pem");
            let ca = read_cert(&path)?;
            if let Some((other, _)) = cas.iter().find(|(_, known)| *known == ca) {
                return Err(CertError::SharedCa(other.clone(), members.site.clone()));
            }
            cas.push((members.site.clone(), ca));
        }
        Ok(TrustStore::new(sites, cas))
    }

    /// The trusted sites.
    pub fn sites(&self) -> impl Iterator<Item = &SiteName> {
        self.sites.keys()
    }
}

/// Writes node `node` of `site` its own certificate directory `to` from the operator's
/// directory `from`: the CA certificate of each of `sites` (public), the node's certificate
/// and its key (mode 0600) — no CA key, no other node's key. Whatever `to` held before is
/// removed first.
pub fn export_node(
    from: &Path,
    site: &SiteName,
    node: &NodeId,
    sites: &[SiteName],
    to: &Path,
) -> Result<(), CertError> {
    if to.exists() {
        fs::remove_dir_all(to).map_err(io_err("clear", to))?;
    }
    let copy = |from_site: &SiteName, name: &str, mode: u32| {
        let source = from.join(from_site.as_str()).join(name);
        let bytes = fs::read(&source).map_err(io_err("read", &source))?;
        let dir = to.join(from_site.as_str());
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        write_file(&dir.join(name), &bytes, mode)
    };
    for trusted in sites {
        copy(trusted, "ca.pem", 0o644)?;
    }
    copy(site, &format!("{node}.pem"), 0o644)?;
    copy(site, &format!("{node}.key"), 0o600)
}

/// What [`init`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertsSummary {
    /// The output directory.
    pub out: PathBuf,
    /// Per site: whether its CA was created, and the node certificates issued and kept.
    pub sites: Vec<SiteSummary>,
}

/// What [`init`] did for one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSummary {
    /// The site.
    pub site: SiteName,
    /// True if the CA was generated now, false if an existing one was reused.
    pub ca_created: bool,
    /// Node certificates written now.
    pub issued: Vec<NodeId>,
    /// Node certificates left as they were.
    pub kept: Vec<NodeId>,
}

impl fmt::Display for CertsSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "certificates in {}", self.out.display())?;
        for site in &self.sites {
            let ca = if site.ca_created { "created" } else { "kept" };
            write!(f, "  site {}: CA {ca}", site.site)?;
            if !site.issued.is_empty() {
                write!(f, "; issued {}", join(&site.issued))?;
            }
            if !site.kept.is_empty() {
                write!(f, "; kept {}", join(&site.kept))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn join(ids: &[NodeId]) -> String {
    ids.iter().map(NodeId::as_str).collect::<Vec<_>>().join(", ")
}

/// Creates or completes the certificate directory `out` for every site and node of `sites`.
pub fn init(sites: &[SiteMembers], out: &Path) -> Result<CertsSummary, CertError> {
    let mut summaries = Vec::new();
    for members in sites {
        let site = &members.site;
        let site_dir = out.join(site.as_str());
        fs::create_dir_all(&site_dir).map_err(io_err("create directory", &site_dir))?;
        let (ca, ca_created) = if site_dir.join("ca.pem").exists() {
            (CertificateAuthority::load(out, site)?, false)
        } else {
            let ca =
                CertificateAuthority::generate(site, Validity::days_from_now(CA_VALIDITY_DAYS))?;
            ca.write(&site_dir)?;
            (ca, true)
        };
        let mut summary =
            SiteSummary { site: site.clone(), ca_created, issued: Vec::new(), kept: Vec::new() };
        for node in &members.nodes {
            let identity = PeerIdentity::new(site.clone(), node.id.clone());
            let cert_path = site_dir.join(format!("{}.pem", node.id));
            if !ca_created && still_good(&cert_path, &identity) {
                summary.kept.push(node.id.clone());
                continue;
            }
            let mut ips = node.ips.clone();
            ips.sort_unstable();
            ips.dedup();
            let creds = ca.issue(&node.id, &ips, Validity::days_from_now(NODE_VALIDITY_DAYS))?;
            creds.write(&site_dir)?;
            summary.issued.push(node.id.clone());
        }
        summaries.push(summary);
    }
    Ok(CertsSummary { out: out.to_path_buf(), sites: summaries })
}

fn still_good(cert_path: &Path, identity: &PeerIdentity) -> bool {
    let Ok(der) = read_cert(cert_path) else {
        return false;
    };
    let Ok(info) = CertInfo::parse(&der) else {
        return false;
    };
    let renew_at = OffsetDateTime::now_utc() + Duration::days(RENEW_BEFORE_DAYS);
    info.identity.as_ref() == Some(identity) && info.not_after > renew_at
}

/// What one certificate says, as `ferry certs show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number (hex).
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The ferry identity of a node certificate.
    pub identity: Option<PeerIdentity>,
    /// DNS names and IP addresses.
    pub names: Vec<String>,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertInfo, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let mut identity = None;
        let mut names = Vec::new();
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => identity = PeerIdentity::from_uri(uri),
                        GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                        GeneralName::IPAddress(bytes) => {
                            if let Some(ip) = ip_from_bytes(bytes) {
                                names.push(ip.to_string());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let time = |t: x509_parser::time::ASN1Time| t.to_datetime();
        Ok(CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            identity,
            names,
        })
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}

/// One node certificate as [`show`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertReport {
    /// The file.
    pub path: PathBuf,
    /// What it says.
    pub info: CertInfo,
    /// Whether its signature verifies with the site CA's key.
    pub signed_by_site_ca: bool,
    /// Whether the key file exists with mode 0600 (always true off Unix).
    pub key_private: bool,
}

/// One site as [`show`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteCertReport {
    /// The site directory name.
    pub site: String,
    /// The CA certificate.
    pub ca: CertInfo,
    /// Node certificates, by file name.
    pub nodes: Vec<NodeCertReport>,
}

/// The contents of a certificate directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertsReport {
    /// The directory.
    pub dir: PathBuf,
    /// Its sites, by name.
    pub sites: Vec<SiteCertReport>,
    /// When the report was made (expiry is judged against it).
    pub now: OffsetDateTime,
}

/// Reads a certificate directory written by [`init`].
pub fn show(dir: &Path) -> Result<CertsReport, CertError> {
    let mut sites = Vec::new();
    let entries = fs::read_dir(dir).map_err(io_err("read directory", dir))?;
    let mut site_dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("ca.pem").is_file())
        .collect();
    site_dirs.sort();
    for site_dir in site_dirs {
        let ca_path = site_dir.join("ca.pem");
        let ca_der = read_cert(&ca_path)?;
        let ca = CertInfo::parse(&ca_der)
            .map_err(|reason| CertError::Parse { path: ca_path.clone(), reason })?;
        let mut node_files: Vec<PathBuf> = fs::read_dir(&site_dir)
            .map_err(io_err("read directory", &site_dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pem") && !p.ends_with("ca.pem"))
            .collect();
        node_files.sort();
        let mut nodes = Vec::new();
        for path in node_files {
            let der = read_cert(&path)?;
            let info = CertInfo::parse(&der)
                .map_err(|reason| CertError::Parse { path: path.clone(), reason })?;
            nodes.push(NodeCertReport {
                signed_by_site_ca: signed_by(&der, &ca_der),
                key_private: key_is_private(&path.with_extension("key")),
                path,
                info,
            });
        }
        sites.push(SiteCertReport {
            site: site_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ca,
            nodes,
        });
    }
    if sites.is_empty() {
        return Err(CertError::Empty(dir.to_path_buf()));
    }
    Ok(CertsReport { dir: dir.to_path_buf(), sites, now: OffsetDateTime::now_utc() })
}

fn signed_by(cert: &[u8], ca: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) =
        (X509Certificate::from_der(cert), X509Certificate::from_der(ca))
    else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

#[cfg(unix)]
fn key_is_private(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
}

#[cfg(not(unix))]
fn key_is_private(path: &Path) -> bool {
    path.is_file()
}

impl fmt::Display for CertsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let date = |t: OffsetDateTime| {
            format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
        };
        let state = |info: &CertInfo| {
            let days = (info.not_after - self.now).whole_days();
            if info.not_after <= self.now {
                "EXPIRED".to_owned()
            } else if info.not_before > self.now {
                "NOT YET VALID".to_owned()
            } else {
                format!("{days} days left")
            }
        };
        writeln!(f, "certificates in {}", self.dir.display())?;
        for site in &self.sites {
            writeln!(
                f,
                "site {}\n  CA  {}  valid {} .. {} ({})",
                site.site,
                site.ca.subject,
                date(site.ca.not_before),
                date(site.ca.not_after),
                state(&site.ca)
            )?;
            for node in &site.nodes {
                let who = node
                    .info
                    .identity
                    .as_ref()
                    .map_or_else(|| "no ferry identity".to_owned(), PeerIdentity::uri);
                writeln!(
                    f,
                    "  node {}  {}  valid {} .. {} ({})",
                    who,
                    node.info.names.join(" "),
                    date(node.info.not_before),
                    date(node.info.not_after),
                    state(&node.info)
                )?;
                if !node.signed_by_site_ca {
                    writeln!(f, "    WARNING: not signed by the CA of site {}", site.site)?;
                }
                if !node.key_private {
                    writeln!(
                        f,
                        "    WARNING: {} is missing or readable by others; chmod 600 it",
                        node.path.with_extension("key").display()
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, CertError> {
    if !path.exists() {
        return Err(CertError::Io {
            action: "read",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    CertificateDer::from_pem_file(path)
        .map_err(|e| CertError::Parse { path: path.to_path_buf(), reason: e.to_string() })
}

fn pem(label: &str, der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(TABLE[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `bytes` to `path` through a temporary file and a rename, with `mode` on Unix.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(bytes).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_matches_the_standard_base64() {
        assert_eq!(pem("X", b"foobar"), "-----BEGIN X-----\nZm9vYmFy\n-----END X-----\n");
        assert_eq!(pem("X", b"fo"), "-----BEGIN X-----\nZm8=\n-----END X-----\n");
        assert_eq!(pem("X", b"f"), "-----BEGIN X-----\nZg==\n-----END X-----\n");
    }

    #[test]
    fn issued_certificates_carry_the_identity_and_ips() {
        let site = SiteName::try_from("us-east").expect("site");
        let ca = CertificateAuthority::generate(&site, Validity::days_from_now(10)).expect("ca");
        let node = NodeId::try_from("use-a").expect("node");
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let creds = ca.issue(&node, &[ip], Validity::days_from_now(5)).expect("issue");
        let info = CertInfo::parse(&creds.cert_chain[0]).expect("parse");
        assert_eq!(info.identity, Some(PeerIdentity::new(site, node)));
        assert_eq!(info.names, vec!["use-a.us-east.ferry".to_owned(), "127.0.0.1".to_owned()]);
        assert!(signed_by(&creds.cert_chain[0], ca.cert_der()));
    }

    fn two_sites() -> Vec<SiteMembers> {
        ["a", "b"]
            .into_iter()
            .map(|site| SiteMembers {
                site: SiteName::try_from(site).expect("site"),
                nodes: (0..2)
                    .map(|i| NodeMember {
                        id: NodeId::try_from(format!("{site}-{i}").as_str()).expect("node"),
                        ips: Vec::new(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Every file under `dir`, relative to it.
    fn files(dir: &Path) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for site in fs::read_dir(dir).expect("dir").map(|e| e.expect("entry").path()) {
            for file in fs::read_dir(&site).expect("site dir").map(|e| e.expect("entry").path()) {
                let relative = file.strip_prefix(dir).expect("under dir");
                found.insert(relative.display().to_string());
            }
        }
        found
    }

    #[test]
    fn a_node_directory_holds_every_ca_certificate_and_only_its_own_key() {
        let operator = tempfile::tempdir().expect("tempdir");
        let sites = two_sites();
        init(&sites, operator.path()).expect("init");
        let node_dir = operator.path().join("nodes").join("a-1");
        let names: Vec<SiteName> = sites.iter().map(|s| s.site.clone()).collect();
        let (site, node) = (&sites[0].site, &sites[0].nodes[1].id);
        export_node(operator.path(), site, node, &names, &node_dir).expect("export");
        let expected = ["a/a-1.key", "a/a-1.pem", "a/ca.pem", "b/ca.pem"];
        assert_eq!(files(&node_dir), expected.map(String::from).into());
        NodeCredentials::load(&node_dir, site, node).expect("its own identity");
        TrustStore::load(&sites, &node_dir).expect("every site's CA");
        let other = NodeId::try_from("b-0").expect("node");
        assert!(NodeCredentials::load(&node_dir, &names[1], &other).is_err());
        assert!(
            CertificateAuthority::load(&node_dir, &names[1]).is_err(),
            "no CA key to mint with"
        );
        assert!(CertificateAuthority::load(&node_dir, site).is_err(), "not even its own site's");
    }

    #[test]
    fn a_trust_store_refuses_two_sites_sharing_a_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sites = two_sites();
        init(&sites, dir.path()).expect("init");
        fs::copy(dir.path().join("a/ca.pem"), dir.path().join("b/ca.pem")).expect("copy");
        let error = TrustStore::load(&sites, dir.path()).expect_err("shared CA");
        assert!(matches!(error, CertError::SharedCa(..)), "{error}");
    }
}
