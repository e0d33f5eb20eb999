//! Mutual TLS: rustls configurations whose verifiers accept exactly the site CAs of the topology
//! and map a verified certificate to a [`PeerIdentity`].
//!
//! A verifier first reads the identity the certificate claims (SAN URI), then checks the chain
//! against the CA of *that* site only — a CA can never vouch for another site's nodes — then the
//! node against the topology, then (inbound) the [`PeerAuthorizer`] or (outbound) the identity
//! the dialer expected. Each connection gets its own verifier instance with a [`Verdict`] slot,
//! so the endpoint can report a refusal as a typed [`PeerRejection`] with the peer's address
//! instead of a TLS alert string. Session resumption is disabled so that every connection runs
//! the verifier.
//!
//! What a connection trusts (each site's CA and nodes) and the key it presents are snapshots
//! taken when its configuration is built: [`TlsContext::reload`] swaps both for connections
//! made afterwards (a site added to the topology, a renewed certificate), and connections
//! already up keep what they were verified with.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::certs::{CertInfo, NodeCredentials, SiteMembers, TrustStore};
use crate::error::{PeerRejection, TransportError};
use crate::identity::{NodeId, PeerAuthorizer, PeerIdentity, SiteName};

/// The ALPN protocol name and version every ferry endpoint offers and requires.
pub const ALPN: &[u8] = b"ferry-xdr/1";

/// What a connection's verifier concluded about the peer certificate.
#[derive(Debug, Default)]
pub(crate) struct Verdict(Mutex<Option<Result<PeerIdentity, PeerRejection>>>);

impl Verdict {
    fn set(&self, outcome: Result<PeerIdentity, PeerRejection>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(outcome);
        }
    }

    /// The verifier's outcome, if it ran.
    pub(crate) fn get(&self) -> Option<Result<PeerIdentity, PeerRejection>> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

#[derive(Debug, Clone)]
struct SiteVerifiers {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

/// The sites a connection trusts: each one's CA (as verifiers) and nodes.
#[derive(Debug)]
struct Trust {
    sites: BTreeMap<SiteName, SiteVerifiers>,
    nodes: BTreeMap<SiteName, BTreeSet<NodeId>>,
    hints: Vec<DistinguishedName>,
}

impl Trust {
    fn build(provider: &Arc<CryptoProvider>, trust: TrustStore) -> Result<Trust, TransportError> {
        let mut sites = BTreeMap::new();
        let mut hints = Vec::new();
        for (site, trusted) in &trust.sites {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(trusted.ca.clone())
                .map_err(|e| TransportError::Tls(format!("load the CA of site '{site}': {e}")))?;
            hints.extend(roots.subjects());
            let roots = Arc::new(roots);
            let client =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(tls_error)?;
            let server = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(tls_error)?;
            sites.insert(site.clone(), SiteVerifiers { client, server });
        }
        let nodes = trust.sites.into_iter().map(|(site, trusted)| (site, trusted.nodes)).collect();
        Ok(Trust { sites, nodes, hints })
    }

    /// Steps shared by both directions: claimed identity, known site and node, chain.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        verify_chain: impl FnOnce(&SiteVerifiers, &PeerIdentity) -> Result<(), rustls::Error>,
    ) -> Result<PeerIdentity, PeerRejection> {
        let info = CertInfo::parse(end_entity).map_err(|reason| PeerRejection::Invalid {
            reason: format!("cannot be parsed: {reason}"),
        })?;
        let identity = info.identity.ok_or(PeerRejection::NoIdentity)?;
        let Some(verifiers) = self.sites.get(&identity.site) else {
            return Err(PeerRejection::UnknownSite { site: identity.site });
        };
        verify_chain(verifiers, &identity).map_err(|e| classify(e, &identity))?;
        if !self.nodes.get(&identity.site).is_some_and(|nodes| nodes.contains(&identity.node)) {
            return Err(PeerRejection::UnknownNode { identity });
        }
        Ok(identity)
    }
}

/// Everything an endpoint needs to build per-connection TLS configurations.
#[derive(Debug)]
pub(crate) struct TlsContext {
    provider: Arc<CryptoProvider>,
    /// This node's certificate and key: replaced when it is renewed.
    key: RwLock<Arc<CertifiedKey>>,
    local: PeerIdentity,
    /// What new connections trust: replaced as the topology adds nodes and sites.
    trust: RwLock<Arc<Trust>>,
    authorizer: Arc<dyn PeerAuthorizer>,
}

fn tls_error(e: impl fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

impl TlsContext {
    /// What both verifiers answer to a TLS 1.2 signature: the configurations offer TLS 1.3
    /// only (QUIC requires it).
    fn tls12_refused() -> rustls::Error {
        rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
    }

    /// Checks a TLS 1.3 handshake signature with this context's algorithms (both directions).
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    pub(crate) fn new(
        creds: &NodeCredentials,
        trust: TrustStore,
        authorizer: Arc<dyn PeerAuthorizer>,
    ) -> Result<TlsContext, TransportError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = certified_key(creds, &provider)?;
        let trust = Trust::build(&provider, trust)?;
        Ok(TlsContext {
            provider,
            key: RwLock::new(Arc::new(key)),
            local: creds.identity.clone(),
            trust: RwLock::new(Arc::new(trust)),
            authorizer,
        })
    }

    /// What new connections trust now.
    fn trust(&self) -> Arc<Trust> {
        self.trust.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The key new connections present now.
    fn key(&self) -> Arc<CertifiedKey> {
        self.key.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// From now on, connections present `creds` (the same identity, a renewed certificate)
    /// and trust exactly `trust`'s sites: CAs added or changed, sites and nodes added or
    /// removed. Nothing changes if either cannot be used.
    pub(crate) fn reload(
        &self,
        creds: &NodeCredentials,
        trust: TrustStore,
    ) -> Result<(), TransportError> {
        // What the certificate itself says, not what the credentials were loaded as.
        let info = creds
            .cert_chain
            .first()
            .ok_or_else(|| TransportError::Tls("the new credentials hold no certificate".into()))
            .and_then(|der| CertInfo::parse(der).map_err(tls_error))?;
        if info.identity.as_ref() != Some(&self.local) {
            let named = info.identity.map_or_else(|| "no node".to_owned(), |i| i.to_string());
            return Err(TransportError::Tls(format!(
                "the new certificate names {named}, this endpoint is {}",
                self.local
            )));
        }
        let now = time::OffsetDateTime::now_utc();
        if now < info.not_before || now > info.not_after {
            return Err(TransportError::Tls(format!(
                "the new certificate is valid from {} to {}, not now",
                info.not_before, info.not_after
            )));
        }
        let key = certified_key(creds, &self.provider)?;
        let trust = Trust::build(&self.provider, trust)?;
        *self.key.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        *self.trust.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(trust);
        Ok(())
    }

    pub(crate) fn local(&self) -> &PeerIdentity {
        &self.local
    }

    /// A rustls server configuration for one inbound connection.
    pub(crate) fn server_config(
        self: &Arc<Self>,
        remote: SocketAddr,
    ) -> Result<(rustls::ServerConfig, Arc<Verdict>), TransportError> {
        let verdict = Arc::new(Verdict::default());
        let verifier = InboundVerifier {
            ctx: self.clone(),
            trust: self.trust(),
            verdict: verdict.clone(),
            remote,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(OwnKey(self.key())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok((config, verdict))
    }

    /// A rustls client configuration for one outbound connection to `expected`.
    pub(crate) fn client_config(
        self: &Arc<Self>,
        expected: PeerIdentity,
        remote: SocketAddr,
    ) -> Result<(rustls::ClientConfig, Arc<Verdict>), TransportError> {
        let verdict = Arc::new(Verdict::default());
        let verifier = OutboundVerifier {
            ctx: self.clone(),
            trust: self.trust(),
            verdict: verdict.clone(),
            expected,
            remote,
        };
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(OwnKey(self.key())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_early_data = false;
        Ok((config, verdict))
    }

    /// Admits the nodes `sites` lists now, for every site already trusted (CAs unchanged).
    /// Returns the sites it could not trust (no CA known for them).
    pub(crate) fn set_members(&self, sites: &[SiteMembers]) -> Vec<SiteName> {
        let mut slot = self.trust.write().unwrap_or_else(PoisonError::into_inner);
        let mut nodes = slot.nodes.clone();
        let mut untrusted = Vec::new();
        for members in sites {
            match nodes.get_mut(&members.site) {
                Some(known) => *known = members.nodes.iter().map(|n| n.id.clone()).collect(),
                None => untrusted.push(members.site.clone()),
            }
        }
        *slot = Arc::new(Trust { sites: slot.sites.clone(), nodes, hints: slot.hints.clone() });
        untrusted
    }
}

fn certified_key(
    creds: &NodeCredentials,
    provider: &Arc<CryptoProvider>,
) -> Result<CertifiedKey, TransportError> {
    CertifiedKey::from_der(creds.cert_chain.clone(), creds.key.clone_key(), provider)
        .map_err(tls_error)
}

fn classify(err: rustls::Error, identity: &PeerIdentity) -> PeerRejection {
    use CertificateError as C;
    let identity = identity.clone();
    match err {
        rustls::Error::InvalidCertificate(C::Expired) => {
            PeerRejection::Expired { identity, not_after: None }
        }
        rustls::Error::InvalidCertificate(C::ExpiredContext { not_after, .. }) => {
            PeerRejection::Expired { identity, not_after: Some(not_after.as_secs()) }
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            PeerRejection::NotYetValid { identity }
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            PeerRejection::WrongCa { site: identity.site }
        }
        other => {
            PeerRejection::Invalid { reason: format!("of {identity} is not acceptable: {other}") }
        }
    }
}

fn reject(verdict: &Verdict, rejection: PeerRejection) -> rustls::Error {
    verdict.set(Err(rejection.clone()));
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        rejection,
    ))))
}

#[derive(Debug)]
struct OwnKey(Arc<CertifiedKey>);

impl ResolvesServerCert for OwnKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for OwnKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

struct InboundVerifier {
    ctx: Arc<TlsContext>,
    trust: Arc<Trust>,
    verdict: Arc<Verdict>,
    remote: SocketAddr,
}

impl fmt::Debug for InboundVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundVerifier").field("remote", &self.remote).finish_non_exhaustive()
    }
}

impl ClientCertVerifier for InboundVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.trust.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let outcome = self
            .trust
            .check(end_entity, |v, _| {
                v.client.verify_client_cert(end_entity, intermediates, now).map(drop)
            })
            .and_then(|identity| match self.ctx.authorizer.authorize(&identity) {
                Ok(()) => Ok(identity),
                Err(reason) => Err(PeerRejection::Unauthorized { site: identity.site, reason }),
            });
        match outcome {
            Ok(identity) => {
                self.verdict.set(Ok(identity));
                Ok(ClientCertVerified::assertion())
            }
            Err(rejection) => Err(reject(&self.verdict, rejection)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TlsContext::tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ctx.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ctx.provider.signature_verification_algorithms.supported_schemes()
    }
}

struct OutboundVerifier {
    ctx: Arc<TlsContext>,
    trust: Arc<Trust>,
    verdict: Arc<Verdict>,
    expected: PeerIdentity,
    remote: SocketAddr,
}

impl fmt::Debug for OutboundVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundVerifier")
            .field("expected", &self.expected)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for OutboundVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let outcome = self
            .trust
            .check(end_entity, |v, claimed| {
                // The chain and the name are checked for the identity the certificate claims;
                // comparing it with the dialed one below gives a precise error on mismatch.
                let claimed_name = ServerName::try_from(claimed.dns_name())
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                v.server
                    .verify_server_cert(
                        end_entity,
                        intermediates,
                        &claimed_name,
                        ocsp_response,
                        now,
                    )
                    .map(drop)
            })
            .and_then(|identity| {
                if identity == self.expected {
                    Ok(identity)
                } else {
                    Err(PeerRejection::UnexpectedPeer {
                        expected: self.expected.clone(),
                        found: identity,
                    })
                }
            });
        match outcome {
            Ok(identity) => {
                self.verdict.set(Ok(identity));
                Ok(ServerCertVerified::assertion())
            }
            Err(rejection) => Err(reject(&self.verdict, rejection)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TlsContext::tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ctx.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ctx.provider.signature_verification_algorithms.supported_schemes()
    }
}
