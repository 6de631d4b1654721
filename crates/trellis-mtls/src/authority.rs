//! The certificate authority sidecars trust: trust anchors (root certificates) and the
//! issuer (an intermediate CA with its key) that signs workload certificates.
//!
//! Locally, [`Authority::load_or_create`] keeps one in a directory of the data dir, made
//! on first use: `ca.crt` (the root, the trust anchor), `issuer.crt` and `issuer.key` (mode
//! 0600), the file names Dapr's Sentry uses. The root's key is not kept: nothing signs
//! with it after the issuer exists, and a key that is not on disk cannot leak. Every
//! sidecar on the machine that shares the data dir trusts the same root. For more than one
//! machine, the same three PEM files come from the operator ([`Authority::from_pem`]).
//!
//! There is no Sentry: each sidecar signs its own workload certificate with the issuer
//! key it was given, so whoever can read that key can mint any identity in the trust
//! domain; keep it as private as a Sentry's.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use time::OffsetDateTime;

use crate::{MtlsError, SpiffeId};

/// How long a locally made root and issuer are valid; remade when expired.
const CA_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

pub struct Authority {
    anchors: Vec<CertificateDer<'static>>,
    issuer_cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authority({} trust anchors)", self.anchors.len())
    }
}

/// A workload certificate chain (leaf first, then the issuer) and its private key.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// When the leaf stops being valid.
    pub not_after: std::time::SystemTime,
}

fn err(what: &str) -> impl Fn(rcgen::Error) -> MtlsError + '_ {
    move |e| MtlsError::Authority(format!("{what}: {e}"))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> MtlsError + '_ {
    move |e| MtlsError::Authority(format!("{}: {e}", path.display()))
}

fn ca_params(common_name: &str, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = now - time::Duration::minutes(15);
    params.not_after = now + CA_TTL;
    params
}

impl Authority {
    /// A new root and issuer, in memory.
    pub fn create(trust_domain: &str) -> Result<Self, MtlsError> {
        let now = OffsetDateTime::now_utc();
        let root_key = KeyPair::generate().map_err(err("generating the root key"))?;
        let root_params = ca_params(&format!("trellis root ({trust_domain})"), now);
        let root_cert = root_params
            .self_signed(&root_key)
            .map_err(err("signing the root"))?;
        let root = Issuer::new(root_params, root_key);
        let issuer_key = KeyPair::generate().map_err(err("generating the issuer key"))?;
        let issuer_params = ca_params(&format!("trellis issuer ({trust_domain})"), now);
        let issuer_cert = issuer_params
            .signed_by(&issuer_key, &root)
            .map_err(err("signing the issuer"))?;
        Ok(Self {
            anchors: vec![root_cert.der().clone()],
            issuer_cert: issuer_cert.der().clone(),
            issuer: Issuer::new(issuer_params, issuer_key),
        })
    }

    /// The authority from PEM text: the trust anchors (one or more root certificates), the
    /// issuer certificate and the issuer's PKCS#8 key.
    pub fn from_pem(anchors: &str, issuer_cert: &str, issuer_key: &str) -> Result<Self, MtlsError> {
        let anchors: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(anchors.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| MtlsError::Authority(format!("trust anchors: {e}")))?;
        if anchors.is_empty() {
            return Err(MtlsError::Authority(
                "trust anchors: no certificate in the PEM text".into(),
            ));
        }
        let issuer_cert = CertificateDer::from_pem_slice(issuer_cert.as_bytes())
            .map_err(|e| MtlsError::Authority(format!("issuer certificate: {e}")))?;
        let key = KeyPair::from_pem(issuer_key).map_err(err("issuer key"))?;
        let issuer =
            Issuer::from_ca_cert_der(&issuer_cert, key).map_err(err("issuer certificate"))?;
        Ok(Self {
            anchors,
            issuer_cert,
            issuer,
        })
    }

    /// The authority kept in `dir`, made there first if missing or expired.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, MtlsError> {
        // Sidecars started together on a fresh data dir must not each make their own: the
        // first takes the lock and makes it, the others wait and read it.
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let (ca, cert, key) = (
            dir.join("ca.crt"),
            dir.join("issuer.crt"),
            dir.join("issuer.key"),
        );
        if ca.exists() && cert.exists() && key.exists() {
            let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err(p));
            let authority = Self::from_pem(&read(&ca)?, &read(&cert)?, &read(&key)?)?;
            if !authority.issuer_expires_within(Duration::from_secs(24 * 3600))? {
                return Ok(authority);
            }
            tracing::info!(dir = %dir.display(), "the local certificate authority expires soon; making a new one");
        }
        let authority = Self::create(trust_domain)?;
        authority.save(dir)?;
        tracing::info!(dir = %dir.display(), "created a local certificate authority for mTLS between sidecars");
        Ok(authority)
    }

    fn save(&self, dir: &Path) -> Result<(), MtlsError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let pem = |der: &CertificateDer<'_>| pem_block("CERTIFICATE", der);
        let anchors: String = self.anchors.iter().map(pem).collect();
        write_private(&dir.join("ca.crt"), &anchors)?;
        write_private(&dir.join("issuer.crt"), &pem(&self.issuer_cert))?;
        write_private(&dir.join("issuer.key"), &self.issuer.key().serialize_pem())?;
        Ok(())
    }

    fn issuer_expires_within(&self, margin: Duration) -> Result<bool, MtlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.issuer_cert)
            .map_err(|e| MtlsError::Authority(format!("issuer certificate: {e}")))?;
        let not_after = cert.validity().not_after.timestamp();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Ok(not_after - now < i64::try_from(margin.as_secs()).unwrap_or(i64::MAX))
    }

    /// The root certificates peers must chain to.
    pub fn trust_anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// A workload certificate for `id`, valid for `ttl` from `skew` ago (so a peer whose
    /// clock runs a little behind accepts it at once). Usable for both ends of a
    /// connection: every sidecar is a server to its callers and a client to its callees.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration, skew: Duration) -> Result<Issued, MtlsError> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let uri = id
            .to_string()
            .try_into()
            .map_err(|e| MtlsError::Identity(format!("{id}: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.app_id.as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - time::Duration::try_from(skew).unwrap_or(time::Duration::ZERO);
        let ttl = time::Duration::try_from(ttl).unwrap_or(time::Duration::hours(24));
        params.not_after = now + ttl;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(err("generating a workload key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(err("signing a workload certificate"))?;
        let not_after = std::time::SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(params.not_after.unix_timestamp()).unwrap_or(0));
        Ok(Issued {
            chain: vec![cert.der().clone(), self.issuer_cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after,
        })
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// Writes `text` to a file only its owner can read (created so, never world-readable for
/// an instant).
fn write_private(path: &Path, text: &str) -> Result<(), MtlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}
