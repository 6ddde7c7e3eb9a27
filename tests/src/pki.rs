//! The certificates and keys one control plane needs: a CA, the apiserver's serving
//! certificate, and the service-account signing key.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::Error;

/// Paths of the PKI files written into an environment's directory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (PEM) that signed the serving certificate.
    pub ca_cert: PathBuf,
    /// The CA certificate in PEM, for clients.
    pub ca_pem: String,
    /// kube-apiserver serving certificate (PEM), valid for 127.0.0.1 and localhost.
    pub serving_cert: PathBuf,
    /// Key of the serving certificate (PEM).
    pub serving_key: PathBuf,
    /// Service-account token signing key (PEM, PKCS#8 ECDSA P-256).
    pub sa_signing_key: PathBuf,
    /// Public half of the service-account signing key (PEM).
    pub sa_public_key: PathBuf,
}

impl Pki {
    /// Generates fresh keys and certificates into `dir`; the serving certificate is also
    /// valid for `extra_ips` (the addresses real nodes reach the apiserver at).
    pub fn generate(dir: &Path, extra_ips: &[std::net::Ipv4Addr]) -> Result<Self, Error> {
        let pki_err = |e: rcgen::Error| Error::Pki(e.to_string());

        let ca_key = KeyPair::generate().map_err(pki_err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        ca_params.distinguished_name.push(DnType::CommonName, "phalanx-testenv-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(pki_err)?;
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate().map_err(pki_err)?;
        // 10.0.0.1: the `kubernetes` Service's ClusterIP, which pods on real nodes dial.
        let mut names = vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "10.0.0.1".to_owned(),
        ];
        names.extend(extra_ips.iter().map(|ip| ip.to_string()));
        let mut serving_params = CertificateParams::new(names).map_err(pki_err)?;
        serving_params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        let serving_cert = serving_params.signed_by(&serving_key, &issuer).map_err(pki_err)?;

        let sa_key = KeyPair::generate().map_err(pki_err)?;

        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            ca_pem: ca_pem.clone(),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            sa_signing_key: dir.join("sa.key"),
            sa_public_key: dir.join("sa.pub"),
        };
        write(&pki.ca_cert, &ca_pem)?;
        write(&pki.serving_cert, &serving_cert.pem())?;
        write(&pki.serving_key, &serving_key.serialize_pem())?;
        write(&pki.sa_signing_key, &sa_key.serialize_pem())?;
        write(&pki.sa_public_key, &sa_key.public_key_pem())?;
        Ok(pki)
    }
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Io { path: path.to_owned(), source })
}
